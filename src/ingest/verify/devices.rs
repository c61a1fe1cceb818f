//! The in-memory table of registered devices and their opened secrets, for the device doors.
//!
//! As for destinations, verifying an uplink must not touch the database. Every process keeps
//! the live registrations in memory, keyed by the normalised URN an uplink's first `bn`
//! gives, reloads them when PostgreSQL announces a change (`things_device_keys_changed`,
//! fired by a trigger, so the CLI in another process and other replicas reach us), after
//! every reconnection of the listener, and every minute regardless (`verify::refresher`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::secrets::SecretKey;
use crate::store::device_keys::{self, LiveDeviceKey};
use crate::token::{BodyDigest, Token};

/// What the `device_keys` trigger notifies.
pub const CHANNEL: &str = "things_device_keys_changed";
/// Stands in for a missing previous secret, so a rotation in progress costs no extra time.
const DECOY_SECRET: &[u8] = b"things-receiver decoy secret, never valid for any device";

/// A registration as the device doors need it.
pub struct DeviceKey {
    pub id: Uuid,
    /// The normalised URN (`senml::device_key`).
    pub urn_key: String,
    current: Vec<u8>,
    previous: Option<(Vec<u8>, DateTime<Utc>)>,
}

impl DeviceKey {
    /// Whether `token` signs the body under the current secret, or the previous one while its
    /// overlap lasts; always two finishes.
    fn verify(&self, digest: &BodyDigest, token: &Token, now: DateTime<Utc>) -> bool {
        let current = digest.verify(&self.current, token);
        let previous = match &self.previous {
            Some((secret, until)) => digest.verify(secret, token) && now < *until,
            None => {
                std::hint::black_box(digest.verify(DECOY_SECRET, token));
                false
            }
        };
        current | previous
    }
}

/// Why an uplink did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceVerifyFailure {
    /// No live registration for the pack's device (KPN answers 404).
    Unknown,
    /// Registered, but the token does not sign the body with its secret (401).
    WrongToken,
}

impl DeviceVerifyFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceVerifyFailure::Unknown => "unknown_device",
            DeviceVerifyFailure::WrongToken => "wrong_token",
        }
    }
}

#[derive(Default)]
struct Snapshot {
    by_urn: HashMap<String, Arc<DeviceKey>>,
    version: u64,
}

pub struct DeviceKeyCache {
    pool: PgPool,
    key: SecretKey,
    snapshot: RwLock<Arc<Snapshot>>,
    current: AtomicBool,
    /// One reload at a time, so an older read can never overwrite a newer one.
    reloading: tokio::sync::Mutex<()>,
}

impl DeviceKeyCache {
    /// Loads every live registration; fails if the database cannot be read.
    pub async fn load(pool: PgPool, key: SecretKey) -> Result<Arc<Self>, sqlx::Error> {
        let cache = Arc::new(DeviceKeyCache {
            pool,
            key,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            current: AtomicBool::new(true),
            reloading: tokio::sync::Mutex::new(()),
        });
        cache.reload().await?;
        Ok(cache)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Number of registrations and the cache version (changes with any registration or
    /// secret), for `/readyz`.
    pub fn stats(&self) -> (usize, u64) {
        let s = self.snapshot();
        (s.by_urn.len(), s.version)
    }

    /// Re-reads every live registration and swaps them in atomically.
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let rows = device_keys::load_live(&self.pool).await?;
        let mut version = std::collections::hash_map::DefaultHasher::new();
        let mut snapshot = Snapshot::default();
        for row in rows {
            (
                row.id,
                &row.urn_key,
                &row.secret_sealed,
                &row.previous_sealed,
                row.previous_expires_at,
            )
                .hash(&mut version);
            if let Some(device) = self.open(row) {
                snapshot
                    .by_urn
                    .insert(device.urn_key.clone(), Arc::new(device));
            }
        }
        snapshot.version = version.finish();
        *self
            .snapshot
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(snapshot);
        Ok(())
    }

    fn open(&self, row: LiveDeviceKey) -> Option<DeviceKey> {
        let opened = super::open_secrets(
            &self.key,
            row.id,
            &row.secret_sealed,
            row.previous_sealed.as_deref(),
            row.previous_expires_at,
        );
        let (current, previous) = match opened {
            Ok(secrets) => secrets,
            Err(e) => {
                tracing::error!(device = %row.urn_key, error = %e, "skipping device registration");
                return None;
            }
        };
        Some(DeviceKey {
            id: row.id,
            urn_key: row.urn_key,
            current,
            previous,
        })
    }

    /// The registration of `urn_key` whose secret signed this body.
    pub fn verify(
        &self,
        urn_key: &str,
        digest: &BodyDigest,
        token: &Token,
    ) -> Result<Arc<DeviceKey>, DeviceVerifyFailure> {
        let snapshot = self.snapshot();
        let Some(device) = snapshot.by_urn.get(urn_key) else {
            // The same two finishes as a registered device.
            std::hint::black_box(digest.verify(DECOY_SECRET, token));
            std::hint::black_box(digest.verify(DECOY_SECRET, token));
            return Err(DeviceVerifyFailure::Unknown);
        };
        if device.verify(digest, token, Utc::now()) {
            Ok(device.clone())
        } else {
            Err(DeviceVerifyFailure::WrongToken)
        }
    }

    /// Whether the cache is known to match the database: false while the change listener is
    /// disconnected, when a device may have been registered or rotated without our knowing.
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire)
    }

    /// Set by the refresher (`verify::refresher`) as its listener connects and is lost.
    pub(super) fn set_current(&self, current: bool) {
        self.current.store(current, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(current: &[u8], previous: Option<(&[u8], DateTime<Utc>)>) -> DeviceKey {
        DeviceKey {
            id: Uuid::new_v4(),
            urn_key: "urn:dev:imei:351234567890123:".into(),
            current: current.to_vec(),
            previous: previous.map(|(s, t)| (s.to_vec(), t)),
        }
    }

    #[test]
    fn current_and_previous_secrets_until_the_overlap_ends() {
        let body = b"[{\"bn\":\"urn:dev:IMEI:351234567890123:\",\"n\":\"t\",\"v\":1}]";
        let digest = BodyDigest::new(body);
        let now = Utc::now();
        let later = now + chrono::TimeDelta::hours(1);
        let device = key(b"new secret", Some((b"old secret", later)));
        assert!(device.verify(&digest, &Token::sign(body, b"new secret"), now));
        assert!(device.verify(&digest, &Token::sign(body, b"old secret"), now));
        assert!(!device.verify(&digest, &Token::sign(body, b"old secret"), later));
        assert!(!device.verify(&digest, &Token::sign(body, b"other"), now));
        assert!(!key(b"new secret", None).verify(&digest, &Token::sign(body, b"other"), now));
    }
}
