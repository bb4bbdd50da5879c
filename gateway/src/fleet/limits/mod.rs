//! `[limits] backend = "redis"`: tier quotas shared by a fleet.
//!
//! Redis holds each key's GCRA arrival time, advanced by a Lua script on
//! Redis's own clock (`TIME`), so node clocks do not matter. A node never
//! asks Redis per request: it holds a small lease of tokens per active key
//! ([`lease::Lease`]) and spends them locally; a background task
//! ([`sync`]) refills leases half spent in batches (one script call, one
//! round trip, for every key due, the heartbeat riding along). The
//! default lease L is what the client may spend in [`LEASE_PERIOD`] at
//! its rate, at most ⌈B/N⌉; a node Redis cannot serve in full comes back
//! when there is enough for every node's ask, so a client over its limit
//! costs about one call per lease, not one per request. A key seen for
//! the first time is admitted from a provisional allowance of
//! min(L, ⌈B/N⌉) tokens, charged to Redis with the first refill. Error
//! bound, over any window: admitted ≤ exact GCRA + N·(L + P) (leases held
//! at its start plus provisional allowances); see README.
//!
//! Redis unreachable (an error, garbage or a timeout): a circuit breaker
//! switches this node to a local limiter at quota / N (N from the nodes'
//! heartbeats or `[limits] nodes`), logged once per transition and shown
//! by `gateway_limits_backend_fallback`; a probe closes it again, and what
//! the fallback still holds of each key it admitted is charged to Redis,
//! so a recovery does not hand out the quota a second time.
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Mutex, MutexGuard,
    },
    time::Duration,
};

use sha2::{Digest, Sha256};

use crate::limits::{BackendStatus, Decision, LimitKey, LocalLimiter, Quota, RateLimiter};

pub mod breaker;
pub mod lease;
pub mod naive;
pub mod sync;

use lease::Lease;

const SHARDS: usize = 64;
/// A key idle this long (and whole again in Redis) is forgotten.
const IDLE: Duration = Duration::from_secs(10);
/// Leases a node holds at most (about 250 bytes each); past it, a key
/// without one is limited locally at its share, never unlimited.
const MAX_LEASES: usize = 256 * 1024;
/// A full shard is searched for leases to forget at most this often, so a
/// flood of new keys does not cost a scan each.
const EVICT_EVERY_NS: u64 = 100_000_000;
/// The default lease lasts about this long at the client's full rate.
pub const LEASE_PERIOD: Duration = Duration::from_secs(1);

/// How the limiter is set up (`[limits]`, `[redis]`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    /// Tokens per lease; 0 = [`auto_lease`].
    pub lease: u32,
    /// Fleet size for the fallback; 0 = from heartbeats.
    pub nodes: u32,
}

pub struct RedisLimiter {
    leases: Vec<Mutex<HashMap<LimitKey, Lease>>>,
    /// Per shard: when a full one may next be searched ([`EVICT_EVERY_NS`]).
    evict_at: Vec<AtomicU64>,
    hasher: RandomState,
    /// Keys whose lease wants a refill, for the next batch.
    pending: Mutex<Vec<LimitKey>>,
    /// Redis keys `limits reset` asked to clear.
    resets: Mutex<Vec<String>>,
    wake: tokio::sync::Notify,
    fallback: LocalLimiter,
    open: AtomicBool,
    fallbacks: AtomicU64,
    /// Nodes seen in the last heartbeat (at least 1).
    seen_nodes: AtomicU32,
    calls: AtomicU64,
    /// Values found in the limiter's Redis keys that no gateway wrote.
    hostile: AtomicU64,
    settings: Settings,
}

impl RedisLimiter {
    /// Starts on the local fallback until Redis first answers.
    pub fn new(settings: Settings) -> Self {
        Self {
            leases: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            evict_at: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
            pending: Mutex::new(Vec::new()),
            resets: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            fallback: LocalLimiter::new(1_000_000),
            open: AtomicBool::new(true),
            fallbacks: AtomicU64::new(0),
            seen_nodes: AtomicU32::new(0),
            calls: AtomicU64::new(0),
            hostile: AtomicU64::new(0),
            settings,
        }
    }

    fn index(&self, key: &LimitKey) -> usize {
        (self.hasher.hash_one(key) as usize) % SHARDS
    }

    fn shard(&self, key: &LimitKey) -> MutexGuard<'_, HashMap<LimitKey, Lease>> {
        self.leases[self.index(key)]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// N: configured, else the heartbeats' count (1 before any is heard).
    pub fn nodes(&self) -> u32 {
        match self.settings.nodes {
            0 => self.seen_nodes.load(Ordering::Relaxed).max(1),
            n => n,
        }
    }

    /// Neither configured nor heard from Redis: the fallback cannot divide.
    fn nodes_unknown(&self) -> bool {
        self.settings.nodes == 0 && self.seen_nodes.load(Ordering::Relaxed) == 0
    }

    /// L for `quota`: configured, else [`auto_lease`].
    pub fn lease_size(&self, quota: &Quota) -> u32 {
        match self.settings.lease {
            0 => auto_lease(quota, self.nodes()),
            n => n,
        }
    }

    /// P: a new key's tokens before its first grant, min(L, ⌈B/N⌉).
    fn provisional(&self, quota: &Quota) -> u32 {
        self.lease_size(quota)
            .min(quota.burst.div_ceil(self.nodes()))
    }

    /// This node's share of `quota` while Redis is unreachable.
    fn share(&self, quota: &Quota) -> Quota {
        let n = self.nodes();
        Quota::new(
            &quota.name,
            (quota.requests / n).max(1),
            quota.window,
            (quota.burst / n).max(1),
        )
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Room for `key`'s lease in its `shard`: idle, settled leases go
    /// first; false when it is full of leases still in use.
    fn make_room(&self, key: &LimitKey, shard: &mut HashMap<LimitKey, Lease>, now: u64) -> bool {
        if shard.len() < MAX_LEASES / SHARDS {
            return true;
        }
        let evict_at = &self.evict_at[self.index(key)];
        if now < evict_at.load(Ordering::Relaxed) {
            return false;
        }
        evict_at.store(now.saturating_add(EVICT_EVERY_NS), Ordering::Relaxed);
        shard.retain(|_, lease| !lease.forgettable(now, Duration::ZERO));
        shard.len() < MAX_LEASES / SHARDS
    }

    /// The fallback admitted a request for `key`: remember to charge it.
    fn mark_fallback(&self, key: &LimitKey, quota: &Quota, now: u64) {
        let mut shard = self.shard(key);
        if !shard.contains_key(key) {
            if !self.make_room(key, &mut shard, now) {
                return;
            }
            let (size, provisional) = (self.lease_size(quota), self.provisional(quota));
            let lease = Lease::new(redis_key(key, quota), quota, size, provisional, now);
            shard.insert(key.clone(), lease);
        }
        if let Some(lease) = shard.get_mut(key) {
            lease.fallback_used = true;
            lease.last_seen_ns = now;
        }
    }

    /// Back from the fallback: what it still holds of each key it admitted
    /// is owed to Redis (requests at the share's rate, as GCRA counts them
    /// at `now`), queued for the next refill.
    fn charge_fallback(&self, now: u64) {
        let mut owing = Vec::new();
        for shard in &self.leases {
            for (key, lease) in Self::lock(shard).iter_mut() {
                if !std::mem::take(&mut lease.fallback_used) {
                    continue;
                }
                lease.debt = lease.debt.saturating_add(self.fallback.in_use(key, now));
                if lease.wants_refill(now) {
                    lease.in_flight = true;
                    owing.push(key.clone());
                }
            }
        }
        Self::lock(&self.pending).extend(owing);
        self.wake.notify_one();
    }
}

/// The default lease: what `quota` allows in [`LEASE_PERIOD`] (so a busy
/// client costs a node about two refills a period), at most ⌈B/N⌉ (so the
/// leases together never hold more than about the burst).
pub fn auto_lease(quota: &Quota, nodes: u32) -> u32 {
    let per_period = LEASE_PERIOD
        .as_nanos()
        .div_ceil(quota.interval().as_nanos().max(1));
    let per_period = u32::try_from(per_period).unwrap_or(u32::MAX);
    per_period.min(quota.burst.div_ceil(nodes.max(1))).max(1)
}

impl RateLimiter for RedisLimiter {
    fn check(&self, key: &LimitKey, quota: &Quota, cost: u32, now_ns: u64) -> Decision {
        if self.is_open() {
            let decision = self.fallback.check(key, &self.share(quota), cost, now_ns);
            if decision.allowed {
                self.mark_fallback(key, quota, now_ns);
            }
            return decision;
        }
        let size = self.lease_size(quota);
        let mut shard = self.shard(key);
        if !shard.contains_key(key) {
            if !self.make_room(key, &mut shard, now_ns) {
                drop(shard);
                return self.fallback.check(key, &self.share(quota), cost, now_ns);
            }
            let provisional = self.provisional(quota);
            let lease = Lease::new(redis_key(key, quota), quota, size, provisional, now_ns);
            shard.insert(key.clone(), lease);
        }
        let Some(lease) = shard.get_mut(key) else {
            return self.fallback.check(key, &self.share(quota), cost, now_ns);
        };
        let decision = lease.take(quota, cost, size, now_ns);
        if lease.wants_refill(now_ns) {
            lease.in_flight = true;
            // Not out yet: the next tick's batch takes it along.
            let urgent = lease.urgent();
            drop(shard);
            Self::lock(&self.pending).push(key.clone());
            if urgent {
                self.wake.notify_one();
            }
        }
        decision
    }

    fn peek(&self, key: &LimitKey, quota: &Quota, now_ns: u64) -> Decision {
        if self.is_open() {
            return self.fallback.peek(key, &self.share(quota), now_ns);
        }
        // This node's lease (what it admits without asking Redis), or the
        // provisional allowance a key it does not hold would get.
        let held = (self.shard(key).get(key)).map(|l| (l.balance, l.whole_at_ns));
        let (remaining, whole_at) = held.unwrap_or((self.provisional(quota), now_ns));
        Decision {
            allowed: remaining > 0,
            remaining,
            reset: Duration::from_nanos(whole_at.saturating_sub(now_ns)),
            retry_after: Duration::ZERO,
        }
    }

    fn reset(&self, key: &LimitKey) {
        self.fallback.reset(key);
        self.shard(key).remove(key);
        Self::lock(&self.resets).push(reset_pattern(key));
        self.wake.notify_one();
    }

    fn backend(&self) -> Option<BackendStatus> {
        Some(BackendStatus {
            fallback: self.is_open(),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            nodes: self.nodes(),
            calls: self.calls.load(Ordering::Relaxed),
        })
    }

    fn hostile_values(&self) -> u64 {
        self.hostile.load(Ordering::Relaxed)
    }
}

/// The Redis key of `key` under `quota`'s tier: hashes, so no client id
/// (with `:`, `{}`, spaces, newlines, ...) can name another's key, and the
/// client part comes first so `limits reset` finds every tier's key.
pub fn redis_key(key: &LimitKey, quota: &Quota) -> String {
    let tier = hex(&Sha256::digest(quota.name.as_bytes())[..8]);
    format!("{}{tier}", reset_prefix(key))
}

fn reset_prefix(key: &LimitKey) -> String {
    let mut hash = Sha256::new();
    let field = |hash: &mut Sha256, bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    let ip = |ip: &IpAddr| match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    match key {
        LimitKey::Client(id) => {
            field(&mut hash, b"client");
            field(&mut hash, id.as_bytes());
        }
        LimitKey::Source(addr) => {
            field(&mut hash, b"source");
            field(&mut hash, &ip(addr));
        }
        LimitKey::ClientAtSource(id, addr) => {
            field(&mut hash, b"client_at_source");
            field(&mut hash, id.as_bytes());
            field(&mut hash, &ip(addr));
        }
    }
    format!("gw:limit:{}:", hex(&hash.finalize()[..16]))
}

/// What `SCAN MATCH` finds for every tier of `key`.
fn reset_pattern(key: &LimitKey) -> String {
    format!("{}*", reset_prefix(key))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
