//! `--max-connections-per-ip`: one address cannot take every slot of `--max-connections`.
//!
//! Counts open connections per client address in a map that holds only addresses with at
//! least one open connection, so its size is bounded by `--max-connections`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Open connections per client address.
pub(super) struct PerIpLimit {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIpLimit {
    pub(super) fn new(max: usize) -> PerIpLimit {
        PerIpLimit {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `max` open.
    pub(super) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        // IPv4 clients reaching a dual-stack socket appear as mapped IPv6 addresses: count
        // them under their IPv4 address either way.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            limit: self.clone(),
            ip,
        })
    }
}

/// One open connection from an address; freed when dropped.
pub(super) struct IpSlot {
    limit: Arc<PerIpLimit>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self
            .limit
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_at_most_max_slots_and_frees_them() {
        let limit = Arc::new(PerIpLimit::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limit.try_acquire(a).unwrap();
        let _second = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(a).is_none());
        // Another address is not affected, and the mapped form is the same address.
        assert!(limit.try_acquire(b).is_some());
        assert!(
            limit
                .try_acquire("::ffff:192.0.2.1".parse().unwrap())
                .is_none()
        );
        drop(first);
        assert!(limit.try_acquire(a).is_some());
    }

    #[test]
    fn the_map_forgets_addresses_without_connections() {
        let limit = Arc::new(PerIpLimit::new(1));
        drop(limit.try_acquire("192.0.2.1".parse().unwrap()));
        assert!(limit.open.lock().unwrap().is_empty());
    }
}
