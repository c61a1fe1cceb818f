//! Administrative operations (destinations, API keys), one implementation shared by the CLI
//! and the HTTP API so both enforce the same rules.

pub mod api_keys;
pub mod destinations;
pub mod devices;
pub mod scopes;

pub use scopes::{ApiKey, Scope, key_hash};

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

/// The name of a new destination or API key (`what`), trimmed: not empty, at most
/// [`MAX_NAME_CHARS`], no control characters (names are shown in listings and logs).
fn checked_name<'a>(what: &str, name: &'a str) -> Result<&'a str, AdminError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(AdminError::Invalid(format!(
            "the {what} name must not be empty"
        )));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(AdminError::Invalid(format!(
            "the {what} name must be at most {MAX_NAME_CHARS} characters"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(AdminError::Invalid(format!(
            "the {what} name must not contain control characters"
        )));
    }
    Ok(name)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_bounded_and_printable() {
        assert_eq!(checked_name("key", "  dashboard ").unwrap(), "dashboard");
        let refused = |name: &str| match checked_name("destination", name) {
            Err(AdminError::Invalid(reason)) => reason,
            other => panic!("{name:?} gave {other:?}"),
        };
        assert_eq!(refused("  "), "the destination name must not be empty");
        assert!(refused(&"x".repeat(MAX_NAME_CHARS + 1)).contains("at most 200 characters"));
        assert!(refused("a\nb").contains("control characters"));
        assert!(checked_name("key", &"é".repeat(MAX_NAME_CHARS)).is_ok());
    }
}
