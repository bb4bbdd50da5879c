//! `[limits] backend = "redis"`: tier quotas shared by a fleet.
//!
//! Redis holds each key's GCRA arrival time, advanced by a Lua script on
//! Redis's own clock (`TIME`), so node clocks do not matter. A node never
//! asks Redis per request: it holds a small lease of tokens per active key
//! ([`lease::Lease`]) and spends them locally; a background task
//! ([`sync`]) refills low leases in batches (one script call for many
//! keys). A key seen for the first time is admitted from a provisional
//! allowance of min(L, ⌈B/N⌉) tokens, charged to Redis with the first
//! refill. Error bound, over any window: admitted ≤ exact GCRA + N·(L + P)
//! (leases held at its start plus provisional allowances); see README.
//!
//! Redis unreachable (an error, garbage or a timeout): a circuit breaker
//! switches this node to a local limiter at quota / N (N from the nodes'
//! heartbeats or `[limits] nodes`), logged once per transition and shown
//! by `gateway_limits_backend_fallback`; a probe closes it again.
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

/// How the limiter is set up (`[limits]`, `[redis]`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    /// Tokens per lease; 0 = a tenth of the burst.
    pub lease: u32,
    /// Fleet size for the fallback; 0 = from heartbeats.
    pub nodes: u32,
}

pub struct RedisLimiter {
    leases: Vec<Mutex<HashMap<LimitKey, Lease>>>,
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
    settings: Settings,
}

impl RedisLimiter {
    /// Starts on the local fallback until Redis first answers.
    pub fn new(settings: Settings) -> Self {
        Self {
            leases: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            pending: Mutex::new(Vec::new()),
            resets: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            fallback: LocalLimiter::new(1_000_000),
            open: AtomicBool::new(true),
            fallbacks: AtomicU64::new(0),
            seen_nodes: AtomicU32::new(1),
            calls: AtomicU64::new(0),
            settings,
        }
    }

    fn shard(&self, key: &LimitKey) -> MutexGuard<'_, HashMap<LimitKey, Lease>> {
        self.leases[(self.hasher.hash_one(key) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// N: configured, else the heartbeats' count.
    pub fn nodes(&self) -> u32 {
        match self.settings.nodes {
            0 => self.seen_nodes.load(Ordering::Relaxed).max(1),
            n => n,
        }
    }

    /// L for `quota`.
    pub fn lease_size(&self, quota: &Quota) -> u32 {
        match self.settings.lease {
            0 => quota.burst.div_ceil(10).max(1),
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
}

impl RateLimiter for RedisLimiter {
    fn check(&self, key: &LimitKey, quota: &Quota, cost: u32, now_ns: u64) -> Decision {
        if self.is_open() {
            return self.fallback.check(key, &self.share(quota), cost, now_ns);
        }
        let size = self.lease_size(quota);
        let mut shard = self.shard(key);
        if !shard.contains_key(key) {
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
            drop(shard);
            Self::lock(&self.pending).push(key.clone());
            self.wake.notify_one();
        }
        decision
    }

    fn peek(&self, key: &LimitKey, quota: &Quota, now_ns: u64) -> Decision {
        if self.is_open() {
            return self.fallback.peek(key, &self.share(quota), now_ns);
        }
        let held = self.shard(key).get(key).map(|lease| lease.balance);
        let mut decision = self.fallback.peek(key, quota, now_ns);
        if let Some(balance) = held {
            decision.remaining = balance;
            decision.allowed = balance > 0;
        }
        decision
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
mod tests {
    use super::*;

    fn limiter(nodes: u32, lease: u32) -> RedisLimiter {
        RedisLimiter::new(Settings {
            url: "redis+unix:///nonexistent".into(),
            lease,
            nodes,
        })
    }

    #[test]
    fn hostile_client_ids_never_share_a_key() {
        let quota = Quota::new("gold", 10, Duration::from_secs(1), 10);
        let other_tier = Quota::new("b:gold", 10, Duration::from_secs(1), 10);
        let ids = [
            "a",
            "a:b",
            "a:b:gold",
            "{a}",
            "a b",
            "a\nb",
            "a\r\n*1\r\n$4\r\nPING",
            "",
            ":",
            "*",
        ];
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            for quota in [&quota, &other_tier] {
                let key = redis_key(&LimitKey::Client(id.into()), quota);
                assert!(
                    key.bytes()
                        .all(|b| b.is_ascii_hexdigit() || b"gw:limit".contains(&b)),
                    "{key:?}"
                );
                assert!(seen.insert(key), "{id:?} collides");
            }
        }
        let ip: IpAddr = [127, 0, 0, 1].into();
        let source = redis_key(&LimitKey::Source(ip), &quota);
        let both = redis_key(&LimitKey::ClientAtSource("a".into(), ip), &quota);
        assert!(seen.insert(source) && seen.insert(both));
        // A tier's key is under its client's reset pattern.
        let key = LimitKey::Client("a:b".into());
        let pattern = reset_pattern(&key);
        assert!(redis_key(&key, &quota).starts_with(pattern.trim_end_matches('*')));
    }

    #[test]
    fn until_redis_answers_a_node_limits_at_its_share() {
        let limiter = limiter(3, 2);
        let quota = Quota::new("t", 30, Duration::from_secs(60), 30);
        let key = LimitKey::Client("c".into());
        let allowed = (0..100)
            .filter(|_| limiter.check(&key, &quota, 1, 1_000_000_000).allowed)
            .count();
        assert_eq!(allowed, 10, "30 / 3 nodes");
        assert_eq!(limiter.backend().map(|s| s.fallback), Some(true));
    }

    #[test]
    fn shared_checks_spend_leases_and_queue_one_refill() {
        let limiter = limiter(3, 4);
        limiter.open.store(false, Ordering::Release);
        let quota = Quota::new("t", 30, Duration::from_secs(60), 30);
        let key = LimitKey::Client("c".into());
        // Provisional: min(L = 4, ⌈30 / 3⌉) tokens, then refused locally.
        let allowed = (0..100)
            .filter(|_| limiter.check(&key, &quota, 1, 1).allowed)
            .count();
        assert_eq!(allowed, 4);
        assert_eq!(RedisLimiter::lock(&limiter.pending).len(), 1);
        let auto = self::limiter(3, 0);
        assert_eq!(
            auto.lease_size(&Quota::new("t", 1, Duration::from_secs(1), 95)),
            10
        );
    }
}
