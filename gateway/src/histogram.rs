//! A fixed-bucket latency histogram of atomics (one add per observation),
//! shared by load shedding, which judges p99 from it, and metrics, which
//! export it. Plain data: no clock, no I/O.
use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Upper bounds of the latency buckets, in microseconds (the last is +Inf).
pub const BUCKETS_US: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000,
];

/// A fixed-bucket histogram of atomics: one add per observation.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS_US.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative) and the sum in microseconds.
    pub fn snapshot(&self) -> ([u64; BUCKETS_US.len() + 1], u64) {
        let counts = std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed));
        (counts, self.sum_us.load(Ordering::Relaxed))
    }

    /// The snapshot, zeroing the histogram (for windowed signals).
    pub fn take(&self) -> [u64; BUCKETS_US.len() + 1] {
        self.sum_us.store(0, Ordering::Relaxed);
        std::array::from_fn(|i| self.counts[i].swap(0, Ordering::Relaxed))
    }
}

/// The upper bound (µs) of the bucket holding quantile `q`; `None` if empty.
pub fn quantile_us(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(BUCKETS_US.get(i).copied().unwrap_or(u64::MAX));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_reads_the_bucket_bound() {
        let mut counts = [0u64; BUCKETS_US.len() + 1];
        counts[0] = 98;
        counts[5] = 2;
        assert_eq!(quantile_us(&counts, 0.99), Some(50_000));
        assert_eq!(quantile_us(&counts, 0.5), Some(1_000));
        assert_eq!(quantile_us(&[0; 3], 0.99), None);
    }
}
