//! `Authorization: Bearer KEY` for the dashboard API, `/readyz` details and `/metrics`, or the
//! console's session cookie (`web::session`), which stands for the key it was opened with.
//!
//! Authentication is HTTP's business and lives here; what a key may do ([`ApiKey`],
//! scopes) is the admin domain's. Handlers below the web layer just take an [`ApiKey`]
//! argument: this impl works for any state that offers an [`ApiKeyState`].

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use std::net::SocketAddr;

use crate::admin::{ApiKey, key_hash};
use crate::error::AppError;
use crate::store::console_sessions;
use crate::web::session;
use crate::web::state::ApiKeyState;

/// The key of an `Authorization: Bearer KEY` value; the scheme is case-insensitive
/// (RFC 9110, section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim_start().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

impl<S> FromRequestParts<S> for ApiKey
where
    ApiKeyState: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let state = ApiKeyState::from_ref(state);
        let Some(authorization) = parts.headers.get(AUTHORIZATION) else {
            return match session::cookie_value(&parts.headers) {
                Some(cookie) => from_session(&state, parts, cookie).await,
                // No key is no guess: it costs nothing and is not counted.
                None => Err(AppError::Unauthenticated),
            };
        };
        let key = authorization
            .to_str()
            .ok()
            .and_then(bearer)
            .ok_or(AppError::Unauthenticated)?;
        let hash = key_hash(key);
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let limiter = &state.limiter;
        // An address over the limit costs no lookup per key, but a valid key still works
        // (clients behind one NAT or proxy share an address).
        if let Some(address) = address
            && let Err(wait) = limiter.check(address)
            && !limiter.may_be_valid(&hash, &state.pool).await
        {
            return Err(AppError::TooManyAttempts(wait));
        }
        let scopes = match crate::store::api_keys::authenticate(&state.pool, &hash).await {
            Ok(scopes) => scopes,
            // The database cannot say; a key it accepted a moment ago is still good.
            Err(e) => match limiter.recent_scopes(&hash) {
                Some(scopes) => return Ok(ApiKey::authenticated(scopes)),
                None => return Err(e.into()),
            },
        };
        if let Some(scopes) = scopes {
            limiter.succeeded(hash, &scopes);
            return Ok(ApiKey::authenticated(scopes));
        }
        // A wrong key: counted per client address; past the limit the answer says to wait.
        limiter.forget(&hash);
        if let Some(address) = address {
            limiter.failed(address);
        }
        Err(AppError::Unauthenticated)
    }
}

/// The key behind a console session cookie; a state-changing request must also pass the
/// CSRF defence. A cookie is 256 random bits, so guessing one is hopeless and an unknown or
/// expired cookie is not counted against its address (the sign-in form's key is).
async fn from_session(
    state: &ApiKeyState,
    parts: &Parts,
    cookie: &str,
) -> Result<ApiKey, AppError> {
    let found = console_sessions::find(&state.pool, &session::token_hash(cookie))
        .await?
        .ok_or(AppError::Unauthenticated)?;
    if !session::is_safe(&parts.method) {
        session::same_origin(parts)?;
        session::check_token(&parts.headers, &found.csrf)?;
    }
    Ok(ApiKey::authenticated(found.scopes))
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer k1", "bearer k1", "BEARER k1", "bEaReR   k1 "] {
            assert_eq!(bearer(value), Some("k1"), "{value:?}");
        }
        for value in ["Basic k1", "Bearer", "Bearer ", "Bearerk1", "k1"] {
            assert_eq!(bearer(value), None, "{value:?}");
        }
    }
}
