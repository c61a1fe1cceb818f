//! The in-memory table of destinations and their opened secrets.
//!
//! Verification must not touch the database: an unauthenticated request may cost us a hash
//! and nothing else, and an unknown plug must cost the same as a known one with a wrong token.
//! So every process keeps all active destinations in memory, reloads them when PostgreSQL
//! announces a change (`LISTEN things_destinations_changed`, fired by a trigger on the
//! table, so a CLI in another process or another replica reaches us too), and also reloads
//! periodically in case a notification was missed while the listener reconnected.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, RwLock};

use axum::http::{HeaderMap, HeaderName, StatusCode};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::secrets::SecretKey;
use crate::store::destinations::{self, DestinationRow};
use crate::token::{BodyDigest, Token};

/// What the `destinations` trigger notifies.
pub const CHANNEL: &str = "things_destinations_changed";

/// Pending destinations an unknown plug is tried against, at most. Every verification,
/// known plug or not, costs the finishes of this many candidates, so the number of pending
/// destinations cannot be read from the timing; `destinations add` refuses a pending
/// destination beyond it.
pub const MAX_PENDING: usize = 8;
/// Finishes one candidate destination costs: its current and its previous (or a decoy) secret.
const FINISHES_PER_CANDIDATE: usize = 2;
/// Finishes every verification costs, whatever it finds.
const FINISHES: usize = FINISHES_PER_CANDIDATE * MAX_PENDING;

/// A destination as the ingest path needs it: secrets opened, headers parsed.
pub struct Destination {
    pub id: Uuid,
    pub plug: Option<Uuid>,
    pub name: String,
    pub response_code: StatusCode,
    current: Vec<u8>,
    previous: Option<(Vec<u8>, DateTime<Utc>)>,
    required_headers: Vec<(HeaderName, String)>,
}

impl Destination {
    /// Whether `token` signs the body under the current secret, or the previous one while its
    /// overlap lasts. Always exactly [`FINISHES_PER_CANDIDATE`] finishes (a decoy stands in
    /// for a missing previous secret), so that a rotation in progress does not change the
    /// timing either.
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

    /// Whether the request carries every static header this destination requires.
    pub fn headers_match(&self, headers: &HeaderMap) -> bool {
        self.required_headers.iter().all(|(name, expected)| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim() == expected)
        })
    }
}

/// Why a delivery did not verify (for metrics and logs only: the answer is the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyFailure {
    UnknownPlug,
    WrongToken,
}

impl VerifyFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyFailure::UnknownPlug => "unknown_plug",
            VerifyFailure::WrongToken => "wrong_token",
        }
    }
}

/// The outcome of a successful verification.
pub struct Verified {
    pub destination: Arc<Destination>,
    /// Set when a pending destination matched: the delivery's plug is to be bound to it.
    pub bind_plug: Option<Uuid>,
}

#[derive(Default)]
struct Snapshot {
    by_plug: HashMap<Uuid, Arc<Destination>>,
    pending: Vec<Arc<Destination>>,
    /// Changes whenever the set of destinations or their secrets change; shown on `/readyz`
    /// so operators (and tests) can see that a change has reached this process.
    version: u64,
}

impl Snapshot {
    /// Tries the plug's own destination, or else up to [`MAX_PENDING`] pending ones, then
    /// pads with decoys to exactly [`FINISHES`] finishes: a known plug, an unknown one and
    /// any number of pending destinations all cost the same.
    fn verify(
        &self,
        plug: Uuid,
        digest: &BodyDigest,
        token: &Token,
        now: DateTime<Utc>,
    ) -> Result<Verified, VerifyFailure> {
        let mut candidates = 0;
        let result = if let Some(destination) = self.by_plug.get(&plug) {
            candidates = 1;
            if destination.verify(digest, token, now) {
                Ok(Verified {
                    destination: destination.clone(),
                    bind_plug: None,
                })
            } else {
                Err(VerifyFailure::WrongToken)
            }
        } else {
            let mut found = None;
            for destination in self.pending.iter().take(MAX_PENDING) {
                candidates += 1;
                if destination.verify(digest, token, now) && found.is_none() {
                    found = Some(destination.clone());
                }
            }
            found
                .map(|destination| Verified {
                    destination,
                    bind_plug: Some(plug),
                })
                .ok_or(VerifyFailure::UnknownPlug)
        };
        for _ in candidates * FINISHES_PER_CANDIDATE..FINISHES {
            std::hint::black_box(digest.verify(DECOY_SECRET, token));
        }
        result
    }
}

pub struct SecretCache {
    pool: PgPool,
    key: SecretKey,
    snapshot: RwLock<Arc<Snapshot>>,
    current: std::sync::atomic::AtomicBool,
    /// One reload at a time, so an older read can never overwrite a newer one.
    reloading: tokio::sync::Mutex<()>,
}

/// Stands in for a secret when no candidate exists, so an unknown plug still costs a hash.
const DECOY_SECRET: &[u8] = b"things-receiver decoy secret, never valid for any destination";

impl SecretCache {
    /// Loads every active destination; fails if the database cannot be read.
    pub async fn load(pool: PgPool, key: SecretKey) -> Result<Arc<Self>, sqlx::Error> {
        let cache = Arc::new(SecretCache {
            pool,
            key,
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            current: std::sync::atomic::AtomicBool::new(true),
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

    /// Number of (bound, pending) destinations and the cache version.
    pub fn stats(&self) -> (usize, usize, u64) {
        let s = self.snapshot();
        (s.by_plug.len(), s.pending.len(), s.version)
    }

    /// Re-reads all destinations from the database and swaps them in atomically.
    pub async fn reload(&self) -> Result<(), sqlx::Error> {
        let _one_at_a_time = self.reloading.lock().await;
        let rows = destinations::list_active(&self.pool).await?;
        let mut version = std::collections::hash_map::DefaultHasher::new();
        let mut snapshot = Snapshot::default();
        for row in rows {
            (row.id, row.plug, &row.secret_sealed, &row.previous_sealed).hash(&mut version);
            (
                row.response_code,
                row.previous_expires_at,
                &row.required_headers.0,
            )
                .hash(&mut version);
            let Some(destination) = self.open(row) else {
                continue;
            };
            let destination = Arc::new(destination);
            match destination.plug {
                Some(plug) => {
                    snapshot.by_plug.insert(plug, destination);
                }
                None => snapshot.pending.push(destination),
            }
        }
        if snapshot.pending.len() > MAX_PENDING {
            tracing::warn!(
                pending = snapshot.pending.len(),
                tried = MAX_PENDING,
                "more pending destinations than are tried; the newest wait until older ones are bound"
            );
        }
        snapshot.version = version.finish();
        *self
            .snapshot
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(snapshot);
        Ok(())
    }

    fn open(&self, row: DestinationRow) -> Option<Destination> {
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
                tracing::error!(destination = %row.name, error = %e, "skipping destination");
                return None;
            }
        };
        let required_headers = row
            .required_headers
            .0
            .iter()
            .filter_map(|(name, value)| {
                // Trimmed like the value received, which HTTP strips of surrounding spaces.
                let value = value.trim().to_owned();
                Some((HeaderName::from_bytes(name.as_bytes()).ok()?, value))
            })
            .collect();
        Some(Destination {
            id: row.id,
            plug: row.plug,
            name: row.name,
            response_code: StatusCode::from_u16(row.response_code as u16).unwrap_or(StatusCode::OK),
            current,
            previous,
            required_headers,
        })
    }

    /// Finds the destination whose secret signed this body. For a known plug only its own
    /// secrets are tried; for an unknown plug, the secrets of pending destinations. Either
    /// way the work done is the same (see [`Snapshot::verify`]).
    pub fn verify(
        &self,
        plug: Uuid,
        digest: &BodyDigest,
        token: &Token,
    ) -> Result<Verified, VerifyFailure> {
        self.snapshot().verify(plug, digest, token, Utc::now())
    }

    /// The door's whole check of a delivery: [`verify`](Self::verify), then the required
    /// static headers of the destination found. The destination door and a replay of a
    /// recorded request both call this, so a replay is accepted exactly when the door would.
    pub fn verify_request(
        &self,
        plug: Uuid,
        headers: &HeaderMap,
        digest: &BodyDigest,
        token: &Token,
    ) -> Result<Verified, VerifyFailure> {
        self.verify(plug, digest, token).and_then(|v| {
            if v.destination.headers_match(headers) {
                Ok(v)
            } else {
                Err(VerifyFailure::WrongToken)
            }
        })
    }

    /// Whether the cache is known to match the database: false while the change listener is
    /// disconnected, when a destination may have been added or rotated without our knowing.
    pub fn is_current(&self) -> bool {
        self.current.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Set by the refresher (`verify::refresher`) as its listener connects and is lost.
    pub(super) fn set_current(&self, current: bool) {
        self.current
            .store(current, std::sync::atomic::Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn destination(plug: Option<Uuid>, secret: &[u8]) -> Arc<Destination> {
        Arc::new(Destination {
            id: Uuid::new_v4(),
            plug,
            name: "d".into(),
            response_code: StatusCode::OK,
            current: secret.to_vec(),
            previous: None,
            required_headers: Vec::new(),
        })
    }

    fn snapshot(known: &[(Uuid, &[u8])], pending: &[&[u8]]) -> Snapshot {
        Snapshot {
            by_plug: known
                .iter()
                .map(|(plug, secret)| (*plug, destination(Some(*plug), secret)))
                .collect(),
            pending: pending.iter().map(|s| destination(None, s)).collect(),
            version: 0,
        }
    }

    /// Finishes one verification of `body` signed with `signer` for `plug` costs.
    fn cost(snapshot: &Snapshot, plug: Uuid, signer: &[u8]) -> (usize, bool) {
        let body = b"[{\"n\":\"t\",\"v\":1}]";
        let digest = BodyDigest::new(body);
        let token = Token::sign(body, signer);
        let ok = snapshot.verify(plug, &digest, &token, Utc::now()).is_ok();
        (digest.finishes(), ok)
    }

    #[test]
    fn every_path_costs_the_same_number_of_finishes() {
        let known = Uuid::new_v4();
        let unknown = Uuid::new_v4();
        let secrets: Vec<Vec<u8>> = (0..MAX_PENDING + 3)
            .map(|i| format!("pending secret number {i}").into_bytes())
            .collect();
        for pending in [0, 1, 3, MAX_PENDING, MAX_PENDING + 3] {
            let pending: Vec<&[u8]> = secrets[..pending].iter().map(Vec::as_slice).collect();
            let s = snapshot(&[(known, b"known secret")], &pending);
            assert_eq!(cost(&s, known, b"known secret"), (FINISHES, true));
            assert_eq!(cost(&s, known, b"wrong secret"), (FINISHES, false));
            assert_eq!(cost(&s, unknown, b"wrong secret"), (FINISHES, false));
            if let Some(last) = pending.get(pending.len().min(MAX_PENDING).wrapping_sub(1)) {
                assert_eq!(
                    cost(&s, unknown, last),
                    (FINISHES, true),
                    "{}",
                    pending.len()
                );
            }
        }
    }

    #[test]
    fn pending_destinations_beyond_the_limit_are_not_tried() {
        let secrets: Vec<Vec<u8>> = (0..=MAX_PENDING)
            .map(|i| format!("pending secret number {i}").into_bytes())
            .collect();
        let pending: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
        let s = snapshot(&[], &pending);
        assert_eq!(
            cost(&s, Uuid::new_v4(), &secrets[MAX_PENDING]),
            (FINISHES, false)
        );
    }
}
