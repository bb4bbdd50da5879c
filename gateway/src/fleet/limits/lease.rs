//! One client's lease on one node: tokens Redis granted that this node
//! spends locally. Plain data with the clock passed in; the request path
//! only ever touches this, never Redis.
use std::time::Duration;

use crate::limits::{Decision, Quota};

/// What a node holds for one limit key.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The key in Redis (hashed, see [`super::redis_key`]).
    pub redis_key: String,
    /// Tokens granted and not spent yet.
    pub balance: u32,
    /// Tokens spent without a grant (the provisional allowance of a key
    /// seen for the first time), charged to Redis with the next refill.
    pub debt: u32,
    /// Tokens to hold after a refill: the lease size, or one request's
    /// cost if larger.
    pub size: u32,
    /// The quota in force, as the refill script needs it.
    pub interval_us: u64,
    pub burst: u32,
    /// A refill is on its way: ask no other.
    pub in_flight: bool,
    /// Redis had no token before this (local ns): do not ask earlier.
    pub next_ask_ns: u64,
    /// Redis's quota for the key is whole again at this time (local ns):
    /// a key idle past it may be forgotten.
    pub whole_at_ns: u64,
    pub last_seen_ns: u64,
    /// The local fallback admitted requests for this key while Redis was
    /// unreachable: what it still holds is charged to Redis on recovery.
    pub fallback_used: bool,
}

/// What a refill sends for one key, and Redis's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    pub want: u32,
    pub debt: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub granted: u32,
    /// Until Redis has a token again (µs), when fewer than asked.
    pub wait_us: u64,
    /// Until Redis's quota for the key is whole again (µs).
    pub used_us: u64,
}

impl Lease {
    /// A key this node has not seen: `provisional` tokens to spend before
    /// the first grant arrives, charged to Redis as debt.
    pub fn new(redis_key: String, quota: &Quota, size: u32, provisional: u32, now: u64) -> Self {
        Self {
            redis_key,
            balance: provisional,
            debt: provisional,
            size: size.max(1),
            interval_us: interval_us(quota),
            burst: quota.burst,
            in_flight: false,
            next_ask_ns: now,
            whole_at_ns: now,
            last_seen_ns: now,
            fallback_used: false,
        }
    }

    /// Spends `cost` tokens if held. Refused, it reports when Redis might
    /// have more (the next refill's answer is not known yet).
    pub fn take(&mut self, quota: &Quota, cost: u32, lease: u32, now: u64) -> Decision {
        self.last_seen_ns = now;
        self.size = lease.max(cost).max(1);
        self.interval_us = interval_us(quota);
        self.burst = quota.burst;
        let reset = Duration::from_nanos(self.whole_at_ns.saturating_sub(now));
        if self.balance >= cost {
            self.balance -= cost;
            return Decision {
                allowed: true,
                remaining: self.balance,
                reset,
                retry_after: Duration::ZERO,
            };
        }
        let wait = Duration::from_nanos(self.next_ask_ns.saturating_sub(now));
        Decision {
            allowed: false,
            remaining: 0,
            reset,
            retry_after: wait.max(quota.interval()),
        }
    }

    /// Low (half the lease or less) or owing, and free to ask. Asked
    /// ahead of running out, so a refill can wait for the next batch.
    pub fn wants_refill(&self, now: u64) -> bool {
        !self.in_flight
            && now >= self.next_ask_ns
            && (self.balance <= self.size / 2 || self.debt > 0)
    }

    /// The refill to send; it is in flight until answered.
    pub fn ask(&mut self) -> Ask {
        self.in_flight = true;
        Ask {
            want: self.size.saturating_sub(self.balance),
            debt: self.debt,
        }
    }

    /// Redis answered `ask` with `grant` at `now`.
    pub fn granted(&mut self, ask: Ask, grant: Grant, now: u64) {
        self.in_flight = false;
        self.debt -= ask.debt.min(self.debt);
        self.balance = self.balance.saturating_add(grant.granted.min(ask.want));
        self.next_ask_ns = match grant.granted < ask.want {
            true => now.saturating_add(grant.wait_us.saturating_mul(1000)),
            false => now,
        };
        self.whole_at_ns = now.saturating_add(grant.used_us.saturating_mul(1000));
    }

    /// The refill failed: nothing was granted (a debt stays owed).
    pub fn failed(&mut self) {
        self.in_flight = false;
    }

    /// Out of tokens (or owing a provisional allowance): the refill
    /// should not wait for the next batch.
    pub fn urgent(&self) -> bool {
        self.balance == 0 || self.debt > 0
    }

    /// Idle, owing nothing and whole again in Redis as last heard: what
    /// it holds is worth forgetting, and a new provisional allowance then
    /// is what exact GCRA would allow anyway.
    pub fn forgettable(&self, now: u64, idle: Duration) -> bool {
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        !self.in_flight
            && self.debt == 0
            && !self.fallback_used
            && now >= self.whole_at_ns
            && now.saturating_sub(self.last_seen_ns) >= idle_ns
    }
}

pub fn interval_us(quota: &Quota) -> u64 {
    u64::try_from(quota.interval().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn quota() -> Quota {
        Quota::new("t", 10, Duration::from_secs(1), 10)
    }

    #[test]
    fn provisional_tokens_are_spent_then_owed_and_refills_top_up() {
        let quota = quota();
        let mut lease = Lease::new("k".into(), &quota, 4, 2, 0);
        assert!(lease.wants_refill(0), "a debt is owed at once");
        assert!(lease.take(&quota, 1, 4, 0).allowed);
        let ask = lease.ask();
        assert_eq!(ask, Ask { want: 3, debt: 2 });
        assert!(!lease.wants_refill(0), "one refill in flight at a time");
        assert!(lease.take(&quota, 1, 4, 0).allowed);
        // Spent out before the answer: refused locally, never waiting.
        let refused = lease.take(&quota, 1, 4, 0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, quota.interval());
        let grant = Grant {
            granted: 3,
            wait_us: 0,
            used_us: 500_000,
        };
        lease.granted(ask, grant, MS);
        assert_eq!((lease.balance, lease.debt), (3, 0));
        assert!(lease.take(&quota, 1, 4, MS).allowed);
        assert!(lease.take(&quota, 1, 4, MS).allowed);
        assert!(lease.wants_refill(MS), "half the lease left or less");
    }

    #[test]
    fn an_empty_redis_holds_the_next_ask_back_until_it_has_tokens() {
        let quota = quota();
        let mut lease = Lease::new("k".into(), &quota, 4, 0, 0);
        let ask = lease.ask();
        let grant = Grant {
            granted: 0,
            wait_us: 100_000,
            used_us: 1_000_000,
        };
        lease.granted(ask, grant, 0);
        assert!(!lease.wants_refill(99 * MS));
        assert!(lease.wants_refill(100 * MS));
        assert!(!lease.take(&quota, 1, 4, 0).allowed);
        assert!(!lease.forgettable(999 * MS, Duration::ZERO));
        assert!(lease.forgettable(1000 * MS, Duration::ZERO));
        // A failed refill leaves the debt owed.
        let mut owing = Lease::new("k".into(), &quota, 4, 2, 0);
        owing.ask();
        owing.failed();
        assert!(!owing.forgettable(10_000 * MS, Duration::ZERO));
        assert!(owing.wants_refill(0));
    }

    #[test]
    fn a_request_costing_more_than_the_lease_asks_for_its_cost() {
        let quota = quota();
        let mut lease = Lease::new("k".into(), &quota, 2, 0, 0);
        assert!(!lease.take(&quota, 5, 2, 0).allowed);
        assert_eq!(lease.ask().want, 5);
    }
}
