//! Per-client request limits: plain policy, no HTTP here.
//!
//! GCRA (the generic cell rate algorithm): one timestamp per key, exact,
//! no fixed-window double burst at window edges. A tier allows `requests`
//! per `window` with bursts up to `burst`; over a full window a client
//! flooding from rest gets `burst + requests` (±1) through. A refused
//! request changes nothing, so denials never consume quota. Time comes from
//! the caller (nanoseconds on any monotonic clock), so tests need no sleeps.
//!
//! [`RateLimiter`] is the seam for a shared limiter (Redis, for fleets);
//! [`LocalLimiter`] is sharded so cores do not serialise on one lock, and
//! forgets idle keys (a key at rest needs no state) to stay bounded.
//!
//! A key's state outlives a configuration reload: under an unchanged quota
//! it is used as it is; under a changed one (the tier's limit was
//! reloaded, or the client moved tiers) the requests it had spent are
//! carried over at the new rate, so a raised limit lets a throttled client
//! through and a lowered one is in force at once.
use std::{
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::Mutex,
    time::Duration,
};

use hashbrown::HashTable;

/// A tier's limit, with its GCRA constants precomputed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    pub name: String,
    pub requests: u32,
    pub window: Duration,
    pub burst: u32,
    /// Nanoseconds per request at the steady rate.
    interval_ns: u64,
}

impl Quota {
    pub fn new(name: &str, requests: u32, window: Duration, burst: u32) -> Self {
        let requests = requests.max(1);
        Self {
            name: name.to_owned(),
            requests,
            window,
            burst: burst.max(1),
            interval_ns: (window.as_nanos() / u128::from(requests)).max(1) as u64,
        }
    }

    /// Between two requests at the steady rate.
    pub fn interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    fn capacity_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(u64::from(self.burst))
    }
}

/// Whose requests count together.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LimitKey {
    Client(String),
    Source(IpAddr),
    ClientAtSource(String, IpAddr),
}

/// A [`LimitKey`] borrowed from the request: what the request path looks
/// up (no owned client id per request). Same variants in the same order,
/// so both hash alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LimitKeyRef<'a> {
    Client(&'a str),
    Source(IpAddr),
    ClientAtSource(&'a str, IpAddr),
}

impl LimitKey {
    pub fn borrowed(&self) -> LimitKeyRef<'_> {
        match self {
            LimitKey::Client(id) => LimitKeyRef::Client(id),
            LimitKey::Source(ip) => LimitKeyRef::Source(*ip),
            LimitKey::ClientAtSource(id, ip) => LimitKeyRef::ClientAtSource(id, *ip),
        }
    }
}

impl LimitKeyRef<'_> {
    pub fn owned(self) -> LimitKey {
        match self {
            LimitKeyRef::Client(id) => LimitKey::Client(id.to_owned()),
            LimitKeyRef::Source(ip) => LimitKey::Source(ip),
            LimitKeyRef::ClientAtSource(id, ip) => LimitKey::ClientAtSource(id.to_owned(), ip),
        }
    }
}

/// The outcome, with what the rate-limit headers report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still allowed right now.
    pub remaining: u32,
    /// Until the quota is whole again.
    pub reset: Duration,
    /// Refused only: until the request would be allowed.
    pub retry_after: Duration,
}

pub trait RateLimiter: Send + Sync {
    /// Counts `cost` requests for `key` at `now_ns` if the quota allows.
    fn check(&self, key: &LimitKey, quota: &Quota, cost: u32, now_ns: u64) -> Decision;
    /// [`RateLimiter::check`] with a borrowed key (the request path's); a
    /// limiter that needs the owned key gets it made here.
    fn check_ref(&self, key: LimitKeyRef<'_>, quota: &Quota, cost: u32, now_ns: u64) -> Decision {
        self.check(&key.owned(), quota, cost, now_ns)
    }
    /// The state without counting anything.
    fn peek(&self, key: &LimitKey, quota: &Quota, now_ns: u64) -> Decision;
    /// Forgets `key`: its quota is whole again.
    fn reset(&self, key: &LimitKey);
    /// Up to `n` clients (their own quota, `LimitKey::Client`) with the
    /// most quota in use at `now_ns`, busiest first, with their theoretical
    /// arrival time (ns): what `GET /v1/top` shows. A limiter that cannot
    /// list its keys answers none.
    fn busiest(&self, _n: usize, _now_ns: u64) -> Vec<(String, u64)> {
        Vec::new()
    }
    /// A shared limiter's state for `/metrics`; a local one has none.
    fn backend(&self) -> Option<BackendStatus> {
        None
    }
    /// Values in a shared store's limiter keys that no gateway wrote (each
    /// read as a quota fully used, then overwritten).
    fn hostile_values(&self) -> u64 {
        0
    }
}

/// How a shared limiter stands (see `fleet::limits`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendStatus {
    /// Limiting locally at quota / nodes: the shared store is unreachable.
    pub fallback: bool,
    /// Times it switched to the local fallback since start.
    pub fallbacks: u64,
    /// Nodes the fallback divides quotas by.
    pub nodes: u32,
    /// Calls made to the shared store (refills, heartbeats, probes).
    pub calls: u64,
}

const SHARDS: usize = 64;

/// Keys with their state, found by a hash computed once per request.
type Shard = HashTable<(LimitKey, Cell)>;

/// Keys are hashed once, with SipHash under a random key (client ids and
/// source addresses are attacker-influenced): the hash picks the shard
/// (from its middle bits) and the slot in it (the table's own bits).
pub struct LocalLimiter {
    shards: Vec<Mutex<Shard>>,
    hasher: RandomState,
    per_shard: usize,
}

impl LocalLimiter {
    /// Holds state for about `capacity` busy keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(16),
        }
    }

    /// Requests `key` spent that still hold its quota at `now_ns` (at the
    /// rate they were counted at): what a shared limiter's fallback
    /// charges to the shared state when it is back.
    pub fn in_use(&self, key: &LimitKey, now_ns: u64) -> u32 {
        let (shard, hash) = self.shard(key.borrowed());
        let Some(cell) = shard.find(hash, is(key.borrowed())).map(|(_, cell)| *cell) else {
            return 0;
        };
        drop(shard);
        let held = cell.tat.saturating_sub(now_ns);
        u32::try_from(held.div_ceil(cell.interval_ns.max(1))).unwrap_or(u32::MAX)
    }

    fn hash(&self, key: LimitKeyRef<'_>) -> u64 {
        self.hasher.hash_one(key)
    }

    /// `key`'s shard, locked, and its hash.
    fn shard(&self, key: LimitKeyRef<'_>) -> (std::sync::MutexGuard<'_, Shard>, u64) {
        let hash = self.hash(key);
        let shard = self.shards[((hash >> 32) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (shard, hash)
    }
}

/// Whether an entry is `key`'s.
fn is<'k>(key: LimitKeyRef<'k>) -> impl Fn(&(LimitKey, Cell)) -> bool + 'k {
    move |(held, _)| held.borrowed() == key
}

/// One key's state.
#[derive(Clone, Copy)]
struct Cell {
    /// Theoretical arrival time: when its quota is whole again.
    tat: u64,
    /// The quota's interval when `tat` was set.
    interval_ns: u64,
}

impl Cell {
    /// The arrival time under `quota`: the same spent requests, at its rate.
    fn tat(self, quota: &Quota, now: u64) -> u64 {
        if self.interval_ns == quota.interval_ns || self.tat <= now {
            return self.tat;
        }
        let used = u128::from(self.tat - now) * u128::from(quota.interval_ns)
            / u128::from(self.interval_ns.max(1));
        now.saturating_add(u64::try_from(used).unwrap_or(u64::MAX))
    }
}

fn decide(tat: u64, quota: &Quota, cost: u32, now: u64) -> (Decision, Option<u64>) {
    let start = tat.max(now);
    let new_tat = start.saturating_add(quota.interval_ns.saturating_mul(u64::from(cost)));
    let capacity = quota.capacity_ns();
    let allowed = new_tat - now <= capacity;
    let after = if allowed { new_tat } else { start };
    let used = after - now;
    let decision = Decision {
        allowed,
        remaining: ((capacity - used.min(capacity)) / quota.interval_ns) as u32,
        reset: Duration::from_nanos(used),
        retry_after: if allowed {
            Duration::ZERO
        } else {
            Duration::from_nanos(new_tat - now - capacity)
        },
    };
    (decision, allowed.then_some(new_tat))
}

impl RateLimiter for LocalLimiter {
    fn check(&self, key: &LimitKey, quota: &Quota, cost: u32, now_ns: u64) -> Decision {
        self.check_ref(key.borrowed(), quota, cost, now_ns)
    }

    fn check_ref(&self, key: LimitKeyRef<'_>, quota: &Quota, cost: u32, now_ns: u64) -> Decision {
        let (mut shard, hash) = self.shard(key);
        // A known key is updated in place: no owned copy of it per request.
        if let Some((_, cell)) = shard.find_mut(hash, is(key)) {
            let (decision, update) = decide(cell.tat(quota, now_ns), quota, cost, now_ns);
            if let Some(new_tat) = update {
                *cell = Cell {
                    tat: new_tat,
                    interval_ns: quota.interval_ns,
                };
            }
            return decision;
        }
        let (decision, update) = decide(0, quota, cost, now_ns);
        if let Some(new_tat) = update {
            if shard.len() >= self.per_shard {
                // Keys whose quota is whole again carry no information.
                shard.retain(|(_, cell)| cell.tat > now_ns);
            }
            let cell = Cell {
                tat: new_tat,
                interval_ns: quota.interval_ns,
            };
            let rehash = |(held, _): &(LimitKey, Cell)| self.hash(held.borrowed());
            shard.insert_unique(hash, (key.owned(), cell), rehash);
        }
        decision
    }

    fn peek(&self, key: &LimitKey, quota: &Quota, now_ns: u64) -> Decision {
        let (shard, hash) = self.shard(key.borrowed());
        let cell = shard.find(hash, is(key.borrowed())).map(|(_, cell)| *cell);
        drop(shard);
        let tat = cell.map_or(0, |cell| cell.tat(quota, now_ns));
        let (mut decision, _) = decide(tat, quota, 0, now_ns);
        decision.allowed = decision.remaining > 0;
        decision
    }

    fn reset(&self, key: &LimitKey) {
        let (mut shard, hash) = self.shard(key.borrowed());
        if let Ok(found) = shard.find_entry(hash, is(key.borrowed())) {
            found.remove();
        }
    }

    fn busiest(&self, n: usize, now_ns: u64) -> Vec<(String, u64)> {
        let mut busiest: Vec<(String, u64)> = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (key, cell) in shard.iter() {
                let LimitKey::Client(id) = key else { continue };
                if cell.tat <= now_ns {
                    continue;
                }
                busiest.push((id.clone(), cell.tat));
            }
            // Bounded: keep the top `n` after each shard.
            busiest.sort_unstable_by_key(|(_, tat)| std::cmp::Reverse(*tat));
            busiest.truncate(n);
        }
        busiest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn busiest_lists_clients_by_quota_in_use() {
        let limiter = LocalLimiter::new(100);
        let quota = bronze();
        let client = |id: &str| LimitKey::Client(id.to_owned());
        for _ in 0..3 {
            limiter.check(&client("a"), &quota, 1, SEC);
        }
        limiter.check(&client("b"), &quota, 1, SEC);
        limiter.check(&LimitKey::Source([127, 0, 0, 1].into()), &quota, 5, SEC);
        let busiest = limiter.busiest(10, SEC);
        let ids: Vec<&str> = busiest.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(limiter.busiest(1, SEC).len(), 1);
        // Long after, nothing is in use.
        assert!(limiter.busiest(10, 3600 * SEC).is_empty());
    }

    #[test]
    fn a_borrowed_key_finds_the_owned_keys_state() {
        let limiter = LocalLimiter::new(1024);
        let quota = Quota::new("t", 10, Duration::from_secs(10), 10);
        let ip: IpAddr = [192, 0, 2, 1].into();
        for (owned, borrowed) in [
            (LimitKey::Client("c".into()), LimitKeyRef::Client("c")),
            (LimitKey::Source(ip), LimitKeyRef::Source(ip)),
            (
                LimitKey::ClientAtSource("c".into(), ip),
                LimitKeyRef::ClientAtSource("c", ip),
            ),
        ] {
            assert_eq!(limiter.check_ref(borrowed, &quota, 3, SEC).remaining, 7);
            assert_eq!(limiter.check(&owned, &quota, 2, SEC).remaining, 5);
            assert_eq!(limiter.peek(&owned, &quota, SEC).remaining, 5);
            assert_eq!(owned.borrowed(), borrowed);
            assert_eq!(borrowed.owned(), owned);
        }
        // Three keys, each counted apart.
        let held: usize = limiter.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(held, 3);
    }

    fn bronze() -> Quota {
        Quota::new("bronze", 10, Duration::from_secs(60), 10)
    }

    fn key() -> LimitKey {
        LimitKey::Client("c".into())
    }

    #[test]
    fn three_times_the_rate_for_a_window_gets_limit_plus_burst() {
        let limiter = LocalLimiter::new(1024);
        let quota = bronze();
        // 30 requests/min for 60 s, evenly spread, starting at rest.
        let allowed = (0..30)
            .filter(|i| {
                limiter
                    .check(&key(), &quota, 1, 1_000 * SEC + i * 2 * SEC)
                    .allowed
            })
            .count() as i64;
        let ideal = i64::from(quota.requests + quota.burst);
        assert!(
            (allowed - ideal).abs() <= 1,
            "allowed {allowed}, ideal {ideal}"
        );
    }

    #[test]
    fn no_double_burst_at_a_window_edge() {
        let limiter = LocalLimiter::new(1024);
        let quota = Quota::new("t", 10, Duration::from_secs(60), 10);
        let t0 = 1_000 * SEC;
        let first = (0..10)
            .filter(|_| limiter.check(&key(), &quota, 1, t0).allowed)
            .count();
        // A fixed window would allow 10 more right after its boundary.
        let after_edge = (0..10)
            .filter(|_| limiter.check(&key(), &quota, 1, t0 + 6 * SEC).allowed)
            .count();
        assert_eq!((first, after_edge), (10, 1));
    }

    #[test]
    fn refusals_consume_nothing_and_report_when_to_retry() {
        let limiter = LocalLimiter::new(1024);
        let quota = Quota::new("t", 1, Duration::from_secs(10), 1);
        let t0 = 1_000 * SEC;
        assert!(limiter.check(&key(), &quota, 1, t0).allowed);
        for _ in 0..100 {
            let refused = limiter.check(&key(), &quota, 1, t0 + SEC);
            assert!(!refused.allowed);
            assert_eq!(refused.retry_after, Duration::from_secs(9));
            assert_eq!(refused.remaining, 0);
        }
        // Had refusals counted, this would still be refused.
        assert!(limiter.check(&key(), &quota, 1, t0 + 10 * SEC).allowed);
    }

    #[test]
    fn cost_weighs_requests_and_headers_count_down() {
        let limiter = LocalLimiter::new(1024);
        let quota = Quota::new("t", 10, Duration::from_secs(10), 10);
        let t0 = 1_000 * SEC;
        let d = limiter.check(&key(), &quota, 3, t0);
        assert!(d.allowed);
        assert_eq!(d.remaining, 7);
        assert_eq!(d.reset, Duration::from_secs(3));
        assert!(!limiter.check(&key(), &quota, 8, t0).allowed);
        assert_eq!(limiter.peek(&key(), &quota, t0).remaining, 7);
        limiter.reset(&key());
        assert_eq!(limiter.peek(&key(), &quota, t0).remaining, 10);
    }

    #[test]
    fn a_changed_quota_carries_the_spent_requests_over() {
        let limiter = LocalLimiter::new(1024);
        let strict = Quota::new("t", 3, Duration::from_secs(60), 3);
        let t0 = 1_000 * SEC;
        let spent = (0..5)
            .filter(|_| limiter.check(&key(), &strict, 1, t0).allowed)
            .count();
        assert_eq!(spent, 3);
        // Raised: 3 spent of 10, so 7 more now.
        let raised = Quota::new("t", 10, Duration::from_secs(60), 10);
        let more = (0..20)
            .filter(|_| limiter.check(&key(), &raised, 1, t0).allowed)
            .count();
        assert_eq!(more, 7);
        // Lowered again: 10 spent of 3, refused.
        assert!(!limiter.check(&key(), &strict, 1, t0).allowed);
        assert_eq!(limiter.peek(&key(), &raised, t0).remaining, 0);
        // Unchanged: the state is used as it is.
        let other = LimitKey::Client("other".into());
        assert!(limiter.check(&other, &raised, 9, t0).allowed);
        assert_eq!(limiter.peek(&other, &raised, t0).remaining, 1);
    }

    #[test]
    fn keys_are_independent_and_idle_state_is_dropped() {
        let limiter = LocalLimiter::new(16);
        let quota = Quota::new("t", 1, Duration::from_secs(1), 1);
        let t0 = 1_000 * SEC;
        for i in 0..10_000u32 {
            let key = LimitKey::Client(i.to_string());
            assert!(
                limiter
                    .check(&key, &quota, 1, t0 + u64::from(i) * SEC)
                    .allowed
            );
        }
        let held: usize = limiter.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * 16 + SHARDS, "{held} keys held");
    }
}
