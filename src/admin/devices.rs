//! Registering M2M and Internet devices for direct ingestion: adding, listing, rotating and
//! removing their secrets.
//!
//! Only the two URN forms KPN gives such devices are accepted (`urn:dev:IMEI:<15 digits>:`
//! and `urn:dev:DVNUUID:<uuid>:`): a registration under any other form could never match an
//! uplink's `bn`, and would only look like it works.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{AdminError, conflict_or};
use crate::secrets::{SecretKey, random_alphanumeric};
use crate::senml::{DeviceKind, device_key};
use crate::store::device_keys::{self, DeviceKeyRow, NewDeviceKey};

/// Length of a generated device secret: well inside KPN's `^[0-9a-zA-Z]{30,100}$`.
pub const GENERATED_SECRET_LEN: usize = 40;
/// Shortest and longest device secret KPN allows.
pub const SECRET_LEN: std::ops::RangeInclusive<usize> = 30..=100;
/// Longest rotation overlap, as for destinations: a previous secret that never expires is a
/// second permanent secret.
pub const MAX_OVERLAP: Duration = Duration::from_secs(366 * 24 * 3600);

/// The forms a device URN must take, for error messages.
const URN_FORMS: &str = "urn:dev:IMEI:<15 digits>: (M2M) or urn:dev:DVNUUID:<uuid>: \
                         (Internet devices), with the trailing colon";

/// A registered device as shown to people: never its secrets.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceKeyInfo {
    /// The URN as it was registered.
    pub urn: String,
    /// `IMEI` or `DVNUUID`.
    pub kind: String,
    pub created_at: DateTime<Utc>,
    /// Until when the previous secret is still accepted, during a rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
}

impl From<DeviceKeyRow> for DeviceKeyInfo {
    fn from(row: DeviceKeyRow) -> Self {
        DeviceKeyInfo {
            urn: row.urn,
            kind: row.kind,
            created_at: row.created_at,
            previous_secret_valid_until: row.previous_expires_at.filter(|t| *t > Utc::now()),
        }
    }
}

/// A registration together with its secret, returned once on creation or rotation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceWithSecret {
    #[serde(flatten)]
    pub device: DeviceKeyInfo,
    /// The secret, only when we generated it: it must then be put on the device, and it is
    /// never shown again. A secret the user gave is not echoed back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Why a device secret given by the user was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeviceSecretError {
    #[error("the device secret has {0} characters; KPN Things requires 30 to 100")]
    Length(usize),
    #[error("the device secret may contain printable ASCII characters only")]
    NotPrintable,
    #[error("the device secret must not start or end with a space")]
    SpaceAtEnd,
}

impl From<DeviceSecretError> for AdminError {
    fn from(error: DeviceSecretError) -> Self {
        AdminError::Invalid(error.to_string())
    }
}

/// Checks a URN for registration and returns its normalised key and kind.
pub fn check_urn(urn: &str) -> Result<(String, DeviceKind), AdminError> {
    let refuse = || AdminError::Invalid(format!("the device URN must be {URN_FORMS}"));
    // `device_key` normalises exactly `urn:dev:TYPE:ID:` and returns anything else verbatim,
    // so the prefixes below only match the exact form.
    let key = device_key(urn);
    let id = |prefix: &str| key.strip_prefix(prefix)?.strip_suffix(':');
    if let Some(imei) = id("urn:dev:IMEI:") {
        if imei.len() == 15 && imei.bytes().all(|b| b.is_ascii_digit()) {
            return Ok((key, DeviceKind::Imei));
        }
    } else if let Some(uuid) = id("urn:dev:DVNUUID:") {
        // Hyphenated only (36 characters): the form KPN writes in `bn`, so that the key of
        // the registration is the key of the uplinks.
        if uuid.len() == 36 && Uuid::try_parse(uuid).is_ok() {
            return Ok((key, DeviceKind::DvnUuid));
        }
    }
    Err(refuse())
}

/// Checks a device secret given by the user. KPN documents `^[0-9a-zA-Z]{30,100}$` but also
/// "all ASCII", so any printable ASCII is accepted; spaces at the ends are refused because
/// they are lost so easily on the way to a device configuration.
pub fn check_device_secret(secret: &str) -> Result<(), DeviceSecretError> {
    if !secret.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(DeviceSecretError::NotPrintable);
    }
    if !SECRET_LEN.contains(&secret.len()) {
        return Err(DeviceSecretError::Length(secret.len()));
    }
    if secret.starts_with(' ') || secret.ends_with(' ') {
        return Err(DeviceSecretError::SpaceAtEnd);
    }
    Ok(())
}

/// A fresh device secret: alphanumeric only, so it passes KPN's strictest reading.
pub fn generate_device_secret() -> String {
    random_alphanumeric(GENERATED_SECRET_LEN)
}

/// The secret to store and whether we generated it (and so must show it once).
fn choose_secret(given: Option<String>) -> Result<(String, bool), AdminError> {
    match given {
        Some(secret) => {
            check_device_secret(&secret)?;
            Ok((secret, false))
        }
        None => Ok((generate_device_secret(), true)),
    }
}

pub async fn add(
    pool: &PgPool,
    key: &SecretKey,
    urn: &str,
    secret: Option<String>,
) -> Result<DeviceWithSecret, AdminError> {
    let urn = urn.trim();
    let (urn_key, kind) = check_urn(urn)?;
    let (secret, generated) = choose_secret(secret)?;
    let id = Uuid::new_v4();
    let new = NewDeviceKey {
        id,
        urn_key,
        urn: urn.to_owned(),
        kind: kind.as_str(),
        secret_sealed: key.seal(secret.as_bytes(), id.as_bytes()),
    };
    let row = device_keys::insert(pool, &new)
        .await
        .map_err(|e| conflict_or(e, || format!("device {urn} is already registered")))?;
    Ok(DeviceWithSecret {
        device: row.into(),
        secret: generated.then_some(secret),
    })
}

pub async fn list(pool: &PgPool) -> Result<Vec<DeviceKeyInfo>, AdminError> {
    Ok(device_keys::list_live(pool)
        .await?
        .into_iter()
        .map(DeviceKeyInfo::from)
        .collect())
}

/// Replaces a device's secret; the previous one stays accepted for `overlap`.
pub async fn rotate(
    pool: &PgPool,
    key: &SecretKey,
    urn: &str,
    secret: Option<String>,
    overlap: Duration,
) -> Result<DeviceWithSecret, AdminError> {
    if overlap > MAX_OVERLAP {
        return Err(AdminError::Invalid(
            "overlap must be at most 366 days".into(),
        ));
    }
    let (secret, generated) = choose_secret(secret)?;
    let row = find(pool, urn).await?;
    let sealed = key.seal(secret.as_bytes(), row.id.as_bytes());
    let row = device_keys::rotate(pool, row.id, &sealed, overlap)
        .await?
        .ok_or_else(|| not_registered(urn))?;
    Ok(DeviceWithSecret {
        device: row.into(),
        secret: generated.then_some(secret),
    })
}

/// Ends a registration and cancels its queued downlinks; the device's stored data stays, and
/// it can be registered again.
pub async fn remove(pool: &PgPool, urn: &str) -> Result<DeviceKeyInfo, AdminError> {
    let row = find(pool, urn).await?;
    if !device_keys::remove(pool, row.id).await? {
        return Err(not_registered(urn));
    }
    // Nothing can carry them any more; a new registration of the URN starts afresh.
    let cancelled = crate::store::downlinks::cancel_for_registration(pool, row.id).await?;
    if cancelled > 0 {
        tracing::info!(device = %row.urn, cancelled, "cancelled the queued downlinks of a removed registration");
    }
    Ok(row.into())
}

/// The live registration of `urn`, in whatever case it is spelled.
async fn find(pool: &PgPool, urn: &str) -> Result<DeviceKeyRow, AdminError> {
    device_keys::get(pool, &device_key(urn.trim()))
        .await?
        .ok_or_else(|| not_registered(urn))
}

fn not_registered(urn: &str) -> AdminError {
    AdminError::NotFound(format!("registered device {:?}", urn.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(urn: &str) -> bool {
        matches!(check_urn(urn), Err(AdminError::Invalid(m)) if m.contains(URN_FORMS))
    }

    #[test]
    fn imei_urns_need_exactly_15_digits_and_the_colon() {
        let (key, kind) = check_urn("urn:dev:IMEI:123456789012345:").unwrap();
        assert_eq!(key, "urn:dev:IMEI:123456789012345:");
        assert_eq!(kind, DeviceKind::Imei);
        // The scheme and type may be in any case; the key is normalised as uplinks are.
        let (key, _) = check_urn("URN:Dev:imei:123456789012345:").unwrap();
        assert_eq!(key, "urn:dev:IMEI:123456789012345:");
        for urn in [
            "urn:dev:IMEI:123456789012345",
            "urn:dev:IMEI:12345678901234:",
            "urn:dev:IMEI:1234567890123456:",
            "urn:dev:IMEI:12345678901234a:",
            "urn:dev:IMEI:123456789012345:temperature",
            "urn:dev:IMEI:123456789012345::",
            "urn:dev:IMEI:+23456789012345:",
            "urn:dev:IMEI:１23456789012345:",
        ] {
            assert!(refused(urn), "{urn:?}");
        }
    }

    #[test]
    fn dvnuuid_urns_need_a_hyphenated_uuid_and_the_colon() {
        let (key, kind) =
            check_urn("urn:dev:DVNUUID:3F2504E0-4F89-41D3-9A0C-0305E82C3301:").unwrap();
        assert_eq!(key, "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:");
        assert_eq!(kind, DeviceKind::DvnUuid);
        for urn in [
            "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301",
            "urn:dev:DVNUUID:3f2504e04f8941d39a0c0305e82c3301:",
            "urn:dev:DVNUUID:{3f2504e0-4f89-41d3-9a0c-0305e82c330}:",
            "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c330g:",
            "urn:dev:DVNUUID::",
        ] {
            assert!(refused(urn), "{urn:?}");
        }
    }

    #[test]
    fn other_forms_are_refused_naming_the_accepted_ones() {
        for urn in [
            "",
            "urn:dev:DEVEUI:0018B21000008C47:",
            "urn:dev:mac:0024befffe804ff1:",
            "123456789012345",
            "urn:dev:IMEI",
        ] {
            assert!(refused(urn), "{urn:?}");
        }
    }

    #[test]
    fn given_secrets_are_30_to_100_printable_ascii_without_spaces_at_the_ends() {
        assert!(check_device_secret(&"a".repeat(30)).is_ok());
        assert!(check_device_secret(&"Z".repeat(100)).is_ok());
        assert!(check_device_secret(&format!("{}with inner space~!", "x".repeat(20))).is_ok());
        assert_eq!(
            check_device_secret(&"a".repeat(29)),
            Err(DeviceSecretError::Length(29))
        );
        assert_eq!(
            check_device_secret(&"a".repeat(101)),
            Err(DeviceSecretError::Length(101))
        );
        assert_eq!(
            check_device_secret(&format!(" {}", "a".repeat(40))),
            Err(DeviceSecretError::SpaceAtEnd)
        );
        assert_eq!(
            check_device_secret(&format!("{} ", "a".repeat(40))),
            Err(DeviceSecretError::SpaceAtEnd)
        );
        for bad in ["\t", "\n", "\u{7f}", "é"] {
            assert_eq!(
                check_device_secret(&format!("{}{bad}{}", "a".repeat(20), "b".repeat(20))),
                Err(DeviceSecretError::NotPrintable),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn generated_secrets_follow_kpns_strict_rule() {
        for _ in 0..200 {
            let s = generate_device_secret();
            assert_eq!(s.len(), GENERATED_SECRET_LEN);
            assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()), "{s}");
            assert!(check_device_secret(&s).is_ok());
        }
        assert_ne!(generate_device_secret(), generate_device_secret());
    }
}
