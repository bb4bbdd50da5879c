//! Load shedding by tier: when an upstream pool is overloaded, the lowest
//! tier is refused (503 + `Retry-After`) first and the highest last, and
//! everyone is served again once the signal clears. The pool's latency
//! histogram lives here too; metrics read it at scrape time.
//!
//! Two kinds of signal, both optional per pool (`[upstreams.overload]`):
//! - in-flight requests: tier `r` of `n` (0 = lowest) is refused while the
//!   pool has `max_in_flight * (r + 1) / n` or more requests in flight, so
//!   bronze gets a third of the room, gold all of it; immediate, no state.
//! - p99 latency and 5xx rate over the last `interval`: each interval over
//!   a threshold sheds one more tier, each interval under it brings one back.
use std::{
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
    time::Duration,
};

use crate::{
    config::OverloadConfig,
    histogram::{quantile_us, Histogram},
};

/// One pool's load: what shedding decides from, and what metrics show.
#[derive(Debug, Default)]
pub struct Load {
    config: OverloadConfig,
    in_flight: AtomicUsize,
    /// Since start, for metrics.
    pub latency: Histogram,
    /// Since the last evaluation, for the p99 signal.
    window: Histogram,
    window_errors: AtomicU64,
    /// How many of the lowest tiers the rate signals shed now.
    level: AtomicUsize,
}

/// Counts a request in flight until dropped.
pub struct InFlight<'a>(&'a Load);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Load {
    pub fn new(config: OverloadConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Admits a request of tier `rank` out of `tiers`, or says how long to
    /// come back after (`Err`).
    pub fn admit(&self, rank: usize, tiers: usize) -> Result<InFlight<'_>, Duration> {
        let tiers = tiers.max(1);
        let retry = self.config.interval.max(Duration::from_secs(1));
        if rank < self.level.load(Ordering::Relaxed) {
            return Err(retry);
        }
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(self);
        if let Some(max) = self.config.max_in_flight {
            let room = (max.saturating_mul(rank + 1) / tiers).max(1);
            if in_flight >= room {
                return Err(retry);
            }
        }
        Ok(guard)
    }

    /// An upstream answered (or failed) after `latency`.
    pub fn observe(&self, latency: Duration, server_error: bool) {
        self.latency.observe(latency);
        self.window.observe(latency);
        if server_error {
            self.window_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn level(&self) -> usize {
        self.level.load(Ordering::Relaxed)
    }

    pub fn interval(&self) -> Duration {
        self.config.interval
    }

    /// Whether a latency or error signal is configured.
    pub fn judges_rates(&self) -> bool {
        self.config.p99_latency.is_some() || self.config.error_rate.is_some()
    }

    /// Once per `interval`: sheds one more tier (up to `tiers`) while a rate
    /// signal is over its threshold, one fewer when all are under.
    pub fn evaluate(&self, tiers: usize) {
        let counts = self.window.take();
        let errors = self.window_errors.swap(0, Ordering::Relaxed);
        let total: u64 = counts.iter().sum();
        let config = &self.config;
        let enough = total >= config.min_requests;
        let slow = config.p99_latency.is_some_and(|limit| {
            enough
                && quantile_us(&counts, 0.99)
                    .is_some_and(|p99| p99 > u64::try_from(limit.as_micros()).unwrap_or(u64::MAX))
        });
        let failing = config
            .error_rate
            .is_some_and(|limit| enough && errors as f64 > limit * total as f64);
        let level = self.level.load(Ordering::Relaxed);
        let next = if slow || failing {
            (level + 1).min(tiers)
        } else {
            level.saturating_sub(1)
        };
        if next != level {
            tracing::warn!(
                shed_tiers = next,
                slow,
                failing,
                "upstream overload: shedding level changed"
            );
            self.level.store(next, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(config: OverloadConfig) -> Load {
        Load::new(config)
    }

    #[test]
    fn in_flight_sheds_the_lowest_tier_first() {
        let load = load(OverloadConfig {
            max_in_flight: Some(6),
            ..OverloadConfig::default()
        });
        let held: Vec<_> = (0..2).map(|_| load.admit(0, 3).unwrap()).collect();
        assert!(load.admit(0, 3).is_err(), "bronze is out of room");
        let silver: Vec<_> = (0..2).map(|_| load.admit(1, 3).unwrap()).collect();
        assert!(load.admit(1, 3).is_err(), "silver is out of room");
        let gold: Vec<_> = (0..2).map(|_| load.admit(2, 3).unwrap()).collect();
        assert!(load.admit(2, 3).is_err(), "the pool is full");
        drop((held, silver, gold));
        assert!(load.admit(0, 3).is_ok(), "recovers once requests finish");
    }

    #[test]
    fn slow_or_failing_windows_shed_one_more_tier_each_and_recover() {
        let load = load(OverloadConfig {
            p99_latency: Some(Duration::from_millis(100)),
            error_rate: Some(0.5),
            min_requests: 10,
            ..OverloadConfig::default()
        });
        for _ in 0..20 {
            load.observe(Duration::from_millis(400), false);
        }
        load.evaluate(3);
        assert_eq!(load.level(), 1);
        assert!(load.admit(0, 3).is_err());
        assert!(load.admit(1, 3).is_ok());
        for _ in 0..20 {
            load.observe(Duration::from_millis(1), true);
        }
        load.evaluate(3);
        assert_eq!(load.level(), 2);
        assert!(load.admit(1, 3).is_err());
        assert!(load.admit(2, 3).is_ok(), "gold goes last");
        // Too few requests to judge counts as clear.
        load.observe(Duration::from_secs(3), true);
        load.evaluate(3);
        load.evaluate(3);
        assert_eq!(load.level(), 0);
        assert_eq!(load.latency.snapshot().0.iter().sum::<u64>(), 41);
    }
}
