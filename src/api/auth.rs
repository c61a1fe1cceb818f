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
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            // No key is no guess: it costs nothing and is not counted.
            .ok_or(AppError::Unauthenticated)?;
        let scopes = crate::store::api_keys::authenticate(&state.pool, &key_hash(key)).await?;
        if let Some(scopes) = scopes {
            return Ok(ApiKey { scopes });
        }
        // A wrong key: counted per client address; past the limit the answer says to wait.
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0.ip());
        if let Some(address) = address {
            let limiter = &state.api.auth_limiter;
            limiter.check(address).map_err(AppError::TooManyAttempts)?;
            limiter.failed(address);
        }
        Err(AppError::Unauthenticated)
    }
}
