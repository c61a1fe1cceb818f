//! What an API key may do, how keys are stored, and the proof that a request carries one.
//!
//! This is domain knowledge shared by the CLI (`api-keys create`), the admin operations and
//! the HTTP layer, so it lives below HTTP: the web layer authenticates a request and hands
//! handlers an [`ApiKey`], which they ask for the scope they need.

use sha2::{Digest, Sha256};

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

/// A request carrying a live API key, with the scopes it was granted.
pub struct ApiKey {
    scopes: Vec<String>,
}

impl ApiKey {
    /// A key the caller has authenticated (looked up by its [`key_hash`]).
    pub(crate) fn authenticated(scopes: Vec<String>) -> ApiKey {
        ApiKey { scopes }
    }

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
