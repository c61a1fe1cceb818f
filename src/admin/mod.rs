//! Administrative operations (destinations, API keys), one implementation shared by the CLI
//! and the HTTP API so both enforce the same rules.

pub mod api_keys;
pub mod destinations;
pub mod devices;

/// Longest name of a destination or API key.
pub const MAX_NAME_CHARS: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    InvalidSecret(#[from] crate::secrets::SecretRuleError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Maps a unique-constraint violation to a readable conflict.
fn conflict_or(error: sqlx::Error, message: impl FnOnce() -> String) -> AdminError {
    let unique = error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation());
    if unique {
        AdminError::Conflict(message())
    } else {
        AdminError::Database(error)
    }
}
