//! When to try a downlink again: exponential backoff with jitter.
//!
//! The delay doubles per attempt up to a ceiling; each delay is drawn from its upper half, so
//! replicas that failed together (KPN was down) do not all come back at the same instant,
//! while no retry comes much sooner than planned. A `Retry-After` from KPN is a floor.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after failed attempt number `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let planned = self.ceiling(attempt);
        let jittered = planned.mul_f64(rand::rng().random_range(0.5..=1.0));
        jittered.max(retry_after.unwrap_or_default())
    }

    /// The delay before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        self.base.saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_with_jitter() {
        let b = Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
        };
        assert_eq!(b.ceiling(1), Duration::from_secs(2));
        assert_eq!(b.ceiling(2), Duration::from_secs(4));
        assert_eq!(b.ceiling(5), Duration::from_secs(32));
        assert_eq!(b.ceiling(6), Duration::from_secs(60));
        assert_eq!(b.ceiling(1000), Duration::from_secs(60));
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(3, None)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(4) && *d <= Duration::from_secs(8))
        );
        assert!(delays.iter().any(|d| *d != delays[0]), "no jitter");
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }
}
