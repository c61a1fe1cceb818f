//! Firmware images: add (size, SHA-256 and CRC-32 computed once, here), list, remove. One
//! implementation for the CLI and the API.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::FirmwareError;
use crate::store::firmware::{self, FirmwareRow, NewFirmware, Removed};

/// Longest version or name.
const MAX_TEXT: usize = 100;

/// An image as shown: never its bytes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FirmwareView {
    pub version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Bytes.
    pub size: i64,
    /// Lower-case hex, also the download's strong `ETag`.
    pub sha256: String,
    /// CRC-32 (zlib/IEEE) of the whole image, 8 lower-case hex digits.
    pub crc32: String,
    pub created_at: DateTime<Utc>,
}

impl From<FirmwareRow> for FirmwareView {
    fn from(row: FirmwareRow) -> Self {
        FirmwareView {
            version: row.version,
            name: row.name,
            size: row.size,
            sha256: hex::encode(&row.sha256),
            crc32: format!("{:08x}", row.crc32),
            created_at: row.created_at,
        }
    }
}

/// A version or name: trimmed, not empty, at most 100 characters, no control characters.
pub fn checked_text<'a>(what: &str, text: &'a str) -> Result<&'a str, FirmwareError> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT || text.chars().any(char::is_control) {
        return Err(FirmwareError::Invalid(format!(
            "the {what} must be 1 to {MAX_TEXT} characters without control characters"
        )));
    }
    Ok(text)
}

/// Stores `image` as `version`. `expected_sha256` (hex, any case) refuses an image whose
/// hash differs, e.g. one truncated on its way; the same version twice is a conflict.
pub async fn add(
    pool: &PgPool,
    version: &str,
    name: Option<&str>,
    image: &[u8],
    max: usize,
    expected_sha256: Option<&str>,
) -> Result<FirmwareView, FirmwareError> {
    let version = checked_text("version", version)?;
    let name = name.map(|n| checked_text("name", n)).transpose()?;
    if image.is_empty() {
        return Err(FirmwareError::Invalid("the firmware image is empty".into()));
    }
    if image.len() > max {
        return Err(FirmwareError::TooLarge(max));
    }
    let sha256: [u8; 32] = Sha256::digest(image).into();
    if let Some(expected) = expected_sha256 {
        let expected = expected.trim().to_ascii_lowercase();
        if expected != hex::encode(sha256) {
            return Err(FirmwareError::Invalid(format!(
                "the image's SHA-256 is {}, not {expected}: refusing it",
                hex::encode(sha256)
            )));
        }
    }
    let new = NewFirmware {
        id: Uuid::new_v4(),
        version,
        name,
        sha256,
        crc32: crc32fast::hash(image),
        image,
    };
    match firmware::insert(pool, &new).await {
        Ok(row) => Ok(row.into()),
        Err(e)
            if e.as_database_error()
                .is_some_and(|d| d.is_unique_violation()) =>
        {
            Err(FirmwareError::Conflict(format!(
                "firmware version {version} already exists"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn list(pool: &PgPool) -> Result<Vec<FirmwareView>, FirmwareError> {
    Ok(firmware::list(pool)
        .await?
        .into_iter()
        .map(FirmwareView::from)
        .collect())
}

/// Removes a version, unless a campaign that is not finished uses it.
pub async fn remove(pool: &PgPool, version: &str) -> Result<(), FirmwareError> {
    match firmware::remove(pool, version.trim()).await? {
        Removed::Removed => Ok(()),
        Removed::NotFound => Err(FirmwareError::NotFound(format!(
            "firmware version {version}"
        ))),
        Removed::InUse => Err(FirmwareError::Conflict(format!(
            "firmware version {version} is used by a campaign that is not finished; \
             cancel it first (fota cancel)"
        ))),
    }
}
