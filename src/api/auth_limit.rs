//! Rate limiting of failed API authentication, per client address.
//!
//! API keys are long random strings, so guessing is hopeless anyway; the limit makes a
//! client that keeps presenting wrong keys (a misconfigured dashboard, a scanner) back off
//! instead of hammering the service. Each address may present a wrong key [`MAX_FAILURES`]
//! times per [`WINDOW`]; after that wrong keys from it get 429 with `Retry-After` until the
//! window ends. Requests without a key are not counted (they cost no lookup), and a valid key
//! always works: many clients can share one address (a NAT, a reverse proxy), and one
//! misbehaving client must not lock the others out. Kept in memory per process: with several
//! replicas a client gets that many attempts per replica, which is still bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 100;
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; past this, expired entries are swept before inserting.
const MAX_TRACKED: usize = 100_000;

#[derive(Default)]
pub struct AuthLimiter {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
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
