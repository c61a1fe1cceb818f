//! Rate limiting of failed API authentication, per client address.
//!
//! API keys are long random strings, so guessing is hopeless anyway; the limit makes a
//! client that keeps presenting wrong keys (a misconfigured dashboard, a scanner) back off
//! instead of hammering the service. Each address may present a wrong key [`MAX_FAILURES`]
//! times per [`WINDOW`]; after that wrong keys from it get 429 with `Retry-After` until the
//! window ends, without a database lookup per key. Requests without a key are not counted
//! (they cost no lookup), and a valid key keeps working: many clients can share one address
//! (a NAT, a reverse proxy), and one misbehaving client must not lock the others out. Kept in memory per process: with several
//! replicas a client gets that many attempts per replica, which is still bounded.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 100;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; past this, expired entries are swept before inserting.
const MAX_TRACKED: usize = 100_000;

/// Keys remembered as valid at most; past this the set starts again (they are only a way
/// past the limit, never a substitute for the lookup).
const MAX_KNOWN: usize = 10_000;
/// Key hash -> its scopes and when it last authenticated.
type KnownKeys = HashMap<[u8; 32], (Vec<String>, Instant)>;

/// How long a key that authenticated stays usable while the database cannot be reached.
pub const OUTAGE_GRACE: Duration = Duration::from_secs(600);

#[derive(Default)]
pub struct AuthLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Keys (by hash) that authenticated in this process, with their scopes and when. An
    /// address over the limit is refused before any database lookup, except with one of
    /// these, so that a valid key keeps working for the other clients behind the same
    /// address; the lookup still decides (a revoked key fails and is forgotten). While the
    /// database cannot be reached, a key seen within [`OUTAGE_GRACE`] is taken at its word,
    /// so that `/readyz` details and `/metrics` stay readable during an outage.
    known: Mutex<KnownKeys>,
    /// Every live key's hash as the database last listed them (and when), read at most once
    /// per [`WINDOW`], only for addresses over the limit: a valid key that has not been used
    /// in this process yet still gets through, while wrong keys cost no lookup each.
    live: Mutex<(HashSet<[u8; 32]>, Option<Instant>)>,
    relisting: tokio::sync::Mutex<()>,
}

impl AuthLimiter {
    /// `Err(seconds to wait)` when `address` has failed too often in the current window.
    pub fn check(&self, address: IpAddr) -> Result<(), u64> {
        let now = Instant::now();
        let map = self.lock();
        match map.get(&address) {
            Some((count, start)) if *count >= MAX_FAILURES && now < *start + WINDOW => {
                let left = (*start + WINDOW).saturating_duration_since(now);
                Err(left.as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed attempt from `address`.
    pub fn failed(&self, address: IpAddr) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_TRACKED && !map.contains_key(&address) {
            map.retain(|_, (_, start)| now < *start + WINDOW);
        }
        let entry = map.entry(address).or_insert((0, now));
        if now >= entry.1 + WINDOW {
            *entry = (0, now);
        }
        entry.0 = entry.0.saturating_add(1);
    }

    /// Whether the key with this hash is worth a lookup although its address is over the
    /// limit: it authenticated here before, or it was live when the keys were last listed
    /// (listed again when that is older than [`WINDOW`]; one query for all keys tried).
    pub async fn may_be_valid(&self, hash: &[u8; 32], pool: &sqlx::PgPool) -> bool {
        if self.known_keys().contains_key(hash) {
            return true;
        }
        let stale = |live: &(HashSet<[u8; 32]>, Option<Instant>)| {
            live.1.is_none_or(|at| at.elapsed() >= WINDOW)
        };
        if stale(&self.live_keys())
            && let Ok(_one_at_a_time) = self.relisting.try_lock()
            && stale(&self.live_keys())
        {
            match crate::store::api_keys::live_hashes(pool).await {
                Ok(hashes) => {
                    let hashes = hashes
                        .into_iter()
                        .filter_map(|h| <[u8; 32]>::try_from(h).ok())
                        .collect();
                    *self.live_keys() = (hashes, Some(Instant::now()));
                }
                Err(e) => tracing::debug!(error = %e, "cannot list live API keys"),
            }
        }
        self.live_keys().0.contains(hash)
    }

    fn live_keys(&self) -> std::sync::MutexGuard<'_, (HashSet<[u8; 32]>, Option<Instant>)> {
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The scopes of a key that authenticated within [`OUTAGE_GRACE`], for when the
    /// database cannot say.
    pub fn recent_scopes(&self, hash: &[u8; 32]) -> Option<Vec<String>> {
        self.known_keys()
            .get(hash)
            .filter(|(_, at)| at.elapsed() < OUTAGE_GRACE)
            .map(|(scopes, _)| scopes.clone())
    }

    pub fn succeeded(&self, hash: [u8; 32], scopes: &[String]) {
        let mut known = self.known_keys();
        if known.len() >= MAX_KNOWN && !known.contains_key(&hash) {
            known.clear();
        }
        known.insert(hash, (scopes.to_vec(), Instant::now()));
    }

    pub fn forget(&self, hash: &[u8; 32]) {
        self.known_keys().remove(hash);
    }

    fn known_keys(&self) -> std::sync::MutexGuard<'_, KnownKeys> {
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_too_many_failures_and_only_that_address() {
        let limiter = AuthLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(limiter.check(a).is_ok());
            limiter.failed(a);
        }
        let wait = limiter.check(a).unwrap_err();
        assert!((1..=WINDOW.as_secs()).contains(&wait));
        assert!(limiter.check(b).is_ok());
    }
}
