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
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, StatusCode};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::secrets::SecretKey;
use crate::store::destinations::{self, DestinationRow};
use crate::token::{BodyDigest, Token};

const CHANNEL: &str = "things_destinations_changed";
const FALLBACK_RELOAD: Duration = Duration::from_secs(60);

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
    /// overlap lasts. Both are always computed so timing does not reveal which one matched.
    fn verify(&self, digest: &BodyDigest, token: &Token, now: DateTime<Utc>) -> bool {
        let current = digest.verify(&self.current, token);
        // Always two finishes (the decoy stands in for a missing previous secret), so that
        // a rotation in progress does not change the timing either.
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
        snapshot.version = version.finish();
        *self
            .snapshot
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(snapshot);
        Ok(())
    }

    fn open(&self, row: DestinationRow) -> Option<Destination> {
        let context = row.id.as_bytes();
        let current = match self.key.open(&row.secret_sealed, context) {
            Ok(secret) => secret,
            Err(e) => {
                tracing::error!(destination = %row.name, error = %e, "skipping destination");
                return None;
            }
        };
        let previous = match (&row.previous_sealed, row.previous_expires_at) {
            (Some(sealed), Some(until)) => self.key.open(sealed, context).ok().map(|s| (s, until)),
            _ => None,
        };
        let required_headers = row
            .required_headers
            .0
            .iter()
            .filter_map(|(name, value)| {
                Some((HeaderName::from_bytes(name.as_bytes()).ok()?, value.clone()))
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
    /// secrets are tried; for an unknown plug, the secrets of pending destinations (or a decoy,
    /// so that the work done is the same).
    pub fn verify(
        &self,
        plug: Uuid,
        digest: &BodyDigest,
        token: &Token,
    ) -> Result<Verified, VerifyFailure> {
        let snapshot = self.snapshot();
        let now = Utc::now();
        if let Some(destination) = snapshot.by_plug.get(&plug) {
            return if destination.verify(digest, token, now) {
                Ok(Verified {
                    destination: destination.clone(),
                    bind_plug: None,
                })
            } else {
                Err(VerifyFailure::WrongToken)
            };
        }
        if snapshot.pending.is_empty() {
            // The same two finishes a known destination costs.
            std::hint::black_box(digest.verify(DECOY_SECRET, token));
            std::hint::black_box(digest.verify(DECOY_SECRET, token));
            return Err(VerifyFailure::UnknownPlug);
        }
        let mut found = None;
        for destination in &snapshot.pending {
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
    }

    /// Whether the cache is known to match the database: false while the change listener is
    /// disconnected, when a destination may have been added or rotated without our knowing.
    pub fn is_current(&self) -> bool {
        self.current.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Keeps the cache current until `shutdown`: reloads on every notification, after every
    /// reconnection of the listener, and every minute regardless.
    pub fn spawn_refresher(self: Arc<Self>, shutdown: CancellationToken) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    result = self.listen() => {
                        self.current.store(false, std::sync::atomic::Ordering::Release);
                        if let Err(e) = result && !shutdown.is_cancelled() {
                            tracing::warn!(error = %e, "destination change listener failed; retrying");
                        }
                    }
                }
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }

    async fn listen(&self) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(CHANNEL).await?;
        // Anything may have changed while we were not listening.
        self.reload().await?;
        self.current
            .store(true, std::sync::atomic::Ordering::Release);
        loop {
            match tokio::time::timeout(FALLBACK_RELOAD, listener.try_recv()).await {
                Ok(Ok(Some(_))) | Err(_) => self.reload().await?,
                // The connection dropped and was re-established: notifications may be lost.
                Ok(Ok(None)) => {
                    self.current
                        .store(false, std::sync::atomic::Ordering::Release);
                    self.reload().await?;
                    self.current
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}
