//! Open connections per source address (`limits.max_connections_per_source`),
//! checked at accept so one address cannot take every connection slot.
//! Sharded so workers accepting at once do not serialise on one lock; an
//! entry is removed when its count drops to zero, so the map never holds
//! more entries than there are open connections.
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex, MutexGuard,
    },
};

const SHARDS: usize = 16;

pub struct SourceConnections {
    /// 0 = no per-source cap.
    max: usize,
    shards: Vec<Mutex<HashMap<IpAddr, usize>>>,
    hasher: RandomState,
}

/// One open connection from a source; dropping it frees the slot.
pub struct SourcePermit {
    /// `None` when there is no cap (nothing is counted).
    counted: Option<(Arc<SourceConnections>, IpAddr)>,
}

impl SourcePermit {
    /// For a source the cap does not apply to (a trusted proxy or an
    /// allow-listed network: many clients share its address).
    pub fn uncounted() -> Self {
        Self { counted: None }
    }
}

impl SourceConnections {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, ip: &IpAddr) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for one more connection from `ip`, or `None` if it has
    /// `max` open already. IPv4-mapped IPv6 counts as its IPv4 address.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<SourcePermit> {
        if self.max == 0 {
            return Some(SourcePermit { counted: None });
        }
        let ip = ip.to_canonical();
        let mut shard = self.shard(&ip);
        let count = shard.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourcePermit {
            counted: Some((self.clone(), ip)),
        })
    }

    /// Sources with a connection open (for tests and metrics).
    pub fn sources(&self) -> usize {
        (self.shards.iter())
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let Some((owner, ip)) = self.counted.take() else {
            return;
        };
        let mut shard = owner.shard(&ip);
        if let Some(count) = shard.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shard.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_gets_max_slots_and_entries_go_at_zero() {
        let slots = Arc::new(SourceConnections::new(2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let first = slots.try_acquire(ip).unwrap();
        let second = slots.try_acquire(mapped).unwrap();
        assert!(slots.try_acquire(ip).is_none(), "the third is refused");
        assert!(slots.try_acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        let third = slots.try_acquire(ip).unwrap();
        drop((second, third));
        assert_eq!(slots.sources(), 0, "no entry left behind");
    }

    #[test]
    fn zero_means_no_cap() {
        let slots = Arc::new(SourceConnections::new(0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<_> = (0..1000).filter_map(|_| slots.try_acquire(ip)).collect();
        assert_eq!(held.len(), 1000);
        assert_eq!(slots.sources(), 0);
    }
}

/// Plain HTTP/1.1 connections parked while idle (`limits.park_idle_after`),
/// for `/metrics`.
#[derive(Default)]
pub struct Parked {
    now: AtomicU64,
    total: AtomicU64,
}

/// One parked connection; dropping it (served again, or closed) unparks it.
pub struct ParkedPermit(Arc<Parked>);

impl Parked {
    pub fn park(self: &Arc<Self>) -> ParkedPermit {
        self.now.fetch_add(1, Relaxed);
        self.total.fetch_add(1, Relaxed);
        ParkedPermit(self.clone())
    }

    /// Connections parked now, and times any was parked.
    pub fn counts(&self) -> (u64, u64) {
        (self.now.load(Relaxed), self.total.load(Relaxed))
    }
}

impl Drop for ParkedPermit {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Relaxed);
    }
}
