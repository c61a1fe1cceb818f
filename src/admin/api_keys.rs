//! Creating, listing and revoking API keys for the dashboard API.

use sqlx::PgPool;

use super::scopes::{Scope, key_hash};
use super::{AdminError, conflict_or};
use crate::secrets::random_alphanumeric;
use crate::store::api_keys::{self, ApiKeyRow};

/// Prefix that makes our keys recognisable in logs and secret scanners.
const KEY_PREFIX: &str = "trk_";

/// Creates a key and returns it; only its hash is stored.
pub async fn create(
    pool: &PgPool,
    name: &str,
    scopes: &[String],
) -> Result<(String, ApiKeyRow), AdminError> {
    let name = super::checked_name("key", name)?;
    let mut parsed: Vec<String> = Vec::new();
    for scope in scopes {
        let scope = Scope::parse(scope).ok_or_else(|| {
            AdminError::Invalid(format!(
                "unknown scope {scope:?}: use read, downlink or admin"
            ))
        })?;
        if !parsed.iter().any(|s| s == scope.as_str()) {
            parsed.push(scope.as_str().to_owned());
        }
    }
    if parsed.is_empty() {
        return Err(AdminError::Invalid("give at least one scope".into()));
    }
    let key = format!("{KEY_PREFIX}{}", random_alphanumeric(40));
    let row = api_keys::insert(pool, name, &key_hash(&key), &parsed)
        .await
        .map_err(|e| conflict_or(e, || format!("an API key named {name:?} already exists")))?;
    Ok((key, row))
}

pub async fn list(pool: &PgPool) -> Result<Vec<ApiKeyRow>, AdminError> {
    Ok(api_keys::list(pool).await?)
}

pub async fn revoke(pool: &PgPool, name: &str) -> Result<(), AdminError> {
    if api_keys::revoke(pool, name).await? {
        Ok(())
    } else {
        Err(AdminError::NotFound(format!("API key {name:?}")))
    }
}
