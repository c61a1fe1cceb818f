//! The check value that ties a database to its secret key.
//!
//! The first process to open a database seals a known plaintext with its key; every later
//! process must open it. A wrong or regenerated key thus fails at start with a clear message
//! instead of silently rejecting every delivery as "wrong token".

use sqlx::PgPool;

use crate::secrets::{KeyError, SecretKey};

const PLAINTEXT: &[u8] = b"things-receiver secret key check v1";
const CONTEXT: &[u8] = b"secret_key_check";

#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot read the secret key check value: {0}")]
    Database(#[from] sqlx::Error),
}

/// Verifies `key` against the database, recording it first if the database has no check value.
pub async fn verify_or_init(pool: &PgPool, key: &SecretKey) -> Result<(), KeyCheckError> {
    sqlx::query(
        "INSERT INTO secret_key_check (id, sealed) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
    )
    .bind(key.seal(PLAINTEXT, CONTEXT))
    .execute(pool)
    .await?;
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT sealed FROM secret_key_check WHERE id = 1")
        .fetch_one(pool)
        .await?;
    match key.open(&sealed, CONTEXT) {
        Ok(plain) if plain == PLAINTEXT => Ok(()),
        _ => Err(key.wrong_key().into()),
    }
}
