//! `Authorization: Bearer KEY` for the dashboard API.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::AppError;

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Downlink,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Downlink, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Downlink => "downlink",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.as_str() == text.trim())
    }
}

/// The hash under which a key is stored and looked up.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The key of an `Authorization: Bearer KEY` value; the scheme is case-insensitive
/// (RFC 9110, section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.trim_start().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// A request carrying a live API key.
pub struct ApiKey {
    scopes: Vec<String>,
}

impl ApiKey {
    /// Fails with 403 unless the key has `scope` (`admin` implies every scope).
    pub fn require(&self, scope: Scope) -> Result<(), AppError> {
        let has = |s: Scope| self.scopes.iter().any(|x| x == s.as_str());
        if has(scope) || has(Scope::Admin) {
            Ok(())
        } else {
            Err(AppError::Forbidden(scope.as_str()))
        }
    }
}

impl FromRequestParts<Arc<AppState>> for ApiKey {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer)
            // No key is no guess: it costs nothing and is not counted.
            .ok_or(AppError::Unauthenticated)?;
        let hash = key_hash(key);
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        let limiter = &state.api.auth_limiter;
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
                Some(scopes) => return Ok(ApiKey { scopes }),
                None => return Err(e.into()),
            },
        };
        if let Some(scopes) = scopes {
            limiter.succeeded(hash, &scopes);
            return Ok(ApiKey { scopes });
        }
        // A wrong key: counted per client address; past the limit the answer says to wait.
        limiter.forget(&hash);
        if let Some(address) = address {
            limiter.failed(address);
        }
        Err(AppError::Unauthenticated)
    }
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
