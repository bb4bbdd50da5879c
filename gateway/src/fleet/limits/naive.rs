//! `[limits] backend = "redis_sync"`: one Redis round trip per request,
//! waiting for its answer, as Envoy's global rate limit service and Kong's
//! synchronous Redis policy do. Exact (one GCRA state in Redis, on
//! Redis's clock) but every request waits for Redis, and this node's
//! worker thread waits with it: the accuracy and latency baseline of
//! `cargo xtask bench fleet`, not the fleet's limiter (that is the leased
//! one in this module's parent).
//!
//! Redis unreachable: the node limits locally at quota / `[limits] nodes`
//! (counted in `gateway_limits_backend_fallback`) and asks Redis again
//! after [`RETRY`], so a dead Redis does not cost every request a timeout.
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use redis::{Client, Connection, Script};

use super::{lease::interval_us, redis_key, reset_pattern};
use crate::limits::{BackendStatus, Decision, LimitKey, LocalLimiter, Quota, RateLimiter};

/// Longest wait for one answer (or a connection).
const TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, how long this node limits locally before asking again.
const RETRY: Duration = Duration::from_secs(1);

/// KEYS[1]; ARGV interval µs, burst, cost, dry (1 = only look). Returns
/// allowed (0/1) and µs until the quota is whole again, GCRA on `TIME`.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local capacity = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
if tat < now then tat = now end
local new = tat + tonumber(ARGV[3]) * interval
if new - now > capacity then return {0, tat - now} end
if ARGV[4] == '1' then return {1, tat - now} end
redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.floor((new - now) / 1000) + 1000)
return {1, new - now}
"#;

#[derive(Debug, thiserror::Error)]
pub enum NaiveError {
    #[error("{0}")]
    Url(#[from] crate::fleet::redis::RedisError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("a reply that is not ours")]
    Shape,
}

pub struct SyncLimiter {
    client: Client,
    /// Connections not in use: one request takes one, so workers never
    /// wait for each other, only for Redis.
    idle: Mutex<Vec<Connection>>,
    script: Script,
    fallback: LocalLimiter,
    nodes: u32,
    /// Monotonic ns before which the fallback is used without asking.
    retry_at: AtomicU64,
    down: AtomicBool,
    fallbacks: AtomicU64,
    calls: AtomicU64,
}

impl SyncLimiter {
    /// Checks `url` without connecting; `nodes` (at least 1) divides
    /// quotas while Redis is unreachable.
    pub fn new(url: &str, nodes: u32) -> Result<Self, NaiveError> {
        let info = crate::fleet::redis::parse_url(url)?;
        Ok(Self {
            client: Client::open(info)?,
            idle: Mutex::new(Vec::new()),
            script: Script::new(GCRA),
            fallback: LocalLimiter::new(1_000_000),
            nodes: nodes.max(1),
            retry_at: AtomicU64::new(0),
            down: AtomicBool::new(false),
            fallbacks: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        })
    }

    fn connection(&self) -> Result<Connection, NaiveError> {
        let idle = self.idle.lock().map(|mut idle| idle.pop());
        if let Ok(Some(conn)) = idle {
            return Ok(conn);
        }
        let conn = self.client.get_connection_with_timeout(TIMEOUT)?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        conn.set_write_timeout(Some(TIMEOUT))?;
        Ok(conn)
    }

    /// One script call: (allowed, µs until whole again).
    fn ask(
        &self,
        key: &str,
        quota: &Quota,
        cost: u32,
        dry: bool,
    ) -> Result<(bool, u64), NaiveError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.connection()?;
        let mut invocation = self.script.key(key);
        invocation
            .arg(interval_us(quota))
            .arg(quota.burst)
            .arg(cost)
            .arg(u8::from(dry));
        let reply: Vec<i64> = invocation.invoke(&mut conn)?;
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
        match reply[..] {
            [allowed @ (0 | 1), used] if used >= 0 => Ok((allowed == 1, used as u64)),
            _ => Err(NaiveError::Shape),
        }
    }

    fn share(&self, quota: &Quota) -> Quota {
        let n = self.nodes;
        let (requests, burst) = ((quota.requests / n).max(1), (quota.burst / n).max(1));
        Quota::new(&quota.name, requests, quota.window, burst)
    }

    /// Asks Redis unless it failed within [`RETRY`]; `None` = use the
    /// fallback (the failure counted and logged once per outage).
    fn shared(
        &self,
        key: &LimitKey,
        quota: &Quota,
        cost: u32,
        dry: bool,
        now: u64,
    ) -> Option<(bool, u64)> {
        if self.retry_at.load(Ordering::Relaxed) > now {
            return None;
        }
        match self.ask(&redis_key(key, quota), quota, cost, dry) {
            Ok(answer) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("limits: redis answers again; one round trip per request");
                }
                Some(answer)
            }
            Err(error) => {
                let retry = u64::try_from(RETRY.as_nanos()).unwrap_or(u64::MAX);
                self.retry_at
                    .store(now.saturating_add(retry), Ordering::Relaxed);
                if !self.down.swap(true, Ordering::Relaxed) {
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, nodes = self.nodes,
                        "limits: redis unreachable; limiting locally at quota / nodes");
                }
                None
            }
        }
    }
}

/// The local limiter's answer for what Redis said.
fn decision(quota: &Quota, cost: u32, allowed: bool, used_us: u64) -> Decision {
    let interval = interval_us(quota);
    let capacity = interval.saturating_mul(u64::from(quota.burst));
    let after_one = used_us.saturating_add(interval.saturating_mul(u64::from(cost)));
    Decision {
        allowed,
        remaining: u32::try_from(capacity.saturating_sub(used_us) / interval).unwrap_or(u32::MAX),
        reset: Duration::from_micros(used_us),
        retry_after: match allowed {
            true => Duration::ZERO,
            false => Duration::from_micros(after_one.saturating_sub(capacity)),
        },
    }
}

impl RateLimiter for SyncLimiter {
    fn check(&self, key: &LimitKey, quota: &Quota, cost: u32, now_ns: u64) -> Decision {
        match self.shared(key, quota, cost, false, now_ns) {
            Some((allowed, used)) => decision(quota, cost, allowed, used),
            None => self.fallback.check(key, &self.share(quota), cost, now_ns),
        }
    }

    fn peek(&self, key: &LimitKey, quota: &Quota, now_ns: u64) -> Decision {
        match self.shared(key, quota, 1, true, now_ns) {
            Some((allowed, used)) => decision(quota, 1, allowed, used),
            None => self.fallback.peek(key, &self.share(quota), now_ns),
        }
    }

    fn reset(&self, key: &LimitKey) {
        self.fallback.reset(key);
        let Ok(mut conn) = self.connection() else {
            return;
        };
        let mut cursor = 0u64;
        for _ in 0..1_000 {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(reset_pattern(key))
                .arg("COUNT")
                .arg(1_000)
                .query::<(u64, Vec<String>)>(&mut conn);
            let Ok((next, keys)) = scan else {
                return;
            };
            if !keys.is_empty()
                && redis::cmd("DEL")
                    .arg(&keys)
                    .query::<i64>(&mut conn)
                    .is_err()
            {
                return;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }

    fn backend(&self) -> Option<BackendStatus> {
        Some(BackendStatus {
            fallback: self.down.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            nodes: self.nodes,
            calls: self.calls.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_answers_map_to_the_local_limiters_decisions() {
        // 10 per second (100 ms), burst 5: 200 ms used leaves 3.
        let quota = Quota::new("t", 10, Duration::from_secs(1), 5);
        let ok = decision(&quota, 1, true, 200_000);
        assert_eq!((ok.allowed, ok.remaining), (true, 3));
        assert_eq!(ok.reset, Duration::from_millis(200));
        let refused = decision(&quota, 1, false, 500_000);
        assert_eq!((refused.allowed, refused.remaining), (false, 0));
        assert_eq!(refused.retry_after, Duration::from_millis(100));
    }

    #[test]
    fn without_redis_a_node_limits_at_its_share_and_says_so() {
        let limiter = SyncLimiter::new("redis+unix:///nonexistent/redis.sock", 3).unwrap();
        let quota = Quota::new("t", 30, Duration::from_secs(60), 30);
        let key = LimitKey::Client("c".into());
        let allowed = (0..100)
            .filter(|_| limiter.check(&key, &quota, 1, 1_000).allowed)
            .count();
        assert_eq!(allowed, 10, "30 / 3 nodes");
        let status = limiter.backend().unwrap();
        assert!(status.fallback);
        assert_eq!(
            (status.fallbacks, status.calls),
            (1, 1),
            "one try per {RETRY:?}"
        );
        assert!(SyncLimiter::new("http://x", 1).is_err());
    }
}
