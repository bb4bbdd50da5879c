//! The limiter's background task: the only place that talks to Redis.
//! Refills every pending lease in batched script calls, refreshes this
//! node's heartbeat, clears keys `limits reset` asked for, and drives the
//! circuit breaker. Every call is bounded by [`CALL_TIMEOUT`]; an error, a
//! reply of the wrong shape or a timeout opens the breaker, never panics.
use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use redis::{aio::ConnectionManager, Script};

use super::{
    breaker::{Breaker, Transition},
    lease::{Ask, Grant},
    RedisLimiter,
};
use crate::{clock::monotonic_ns, limits::LimitKey};

pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
const TICK: Duration = Duration::from_millis(50);
/// After a lease ran out: how long the task gathers others for the batch.
const BATCH_DELAY: Duration = Duration::from_millis(5);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this no longer counts.
const HEARTBEAT_TTL_MS: u64 = 3_000;
const NODES_KEY: &str = "gw:nodes";
/// Keys per script call.
const BATCH: usize = 128;
/// Numbers before the per-key ones in a reply: nodes heard, hostile values.
const HEAD: usize = 2;

/// One round trip: this node's heartbeat (ARGV[1] node id, '' for none;
/// ARGV[2] TTL ms) and the refills of KEYS[2..] (ARGV[3] nodes N, then per
/// key interval µs, burst, want, debt). Returns nodes heard (0 without a
/// heartbeat), hostile values met, then per key granted, µs until a node
/// may ask again (when short: enough for all N nodes' asks), µs until
/// whole again. A value no gateway wrote (not a number, negative, a wrong
/// type, a far future) is read as a quota fully used and overwritten:
/// never a quota made whole, never an error that would stop every key.
const REFILL: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {0, 0}
if ARGV[1] ~= '' then
  local ms = math.floor(now / 1000)
  local ttl = tonumber(ARGV[2])
  local added = redis.pcall('ZADD', KEYS[1], ms, ARGV[1])
  if type(added) == 'table' then
    out[2] = out[2] + 1
    redis.call('DEL', KEYS[1])
    redis.call('ZADD', KEYS[1], ms, ARGV[1])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms - ttl)
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  out[1] = redis.call('ZCARD', KEYS[1])
end
local n = math.max(tonumber(ARGV[3]) or 1, 1)
for i = 2, #KEYS do
  local key = KEYS[i]
  local b = 3 + (i - 2) * 4
  local interval = tonumber(ARGV[b + 1])
  local burst = tonumber(ARGV[b + 2])
  local want = tonumber(ARGV[b + 3])
  local debt = tonumber(ARGV[b + 4])
  local capacity = interval * burst
  local raw = redis.pcall('GET', key)
  local tat = now
  if type(raw) == 'string' then
    local v = tonumber(raw)
    if v and v >= 0 and v <= now + 4 * capacity then
      if v > now then tat = v end
    else
      tat = now + capacity
      out[2] = out[2] + 1
    end
  elseif type(raw) == 'table' then
    tat = now + capacity
    out[2] = out[2] + 1
  end
  tat = tat + debt * interval
  local room = math.floor((now + capacity - tat) / interval)
  local granted = math.min(want, math.max(room, 0))
  tat = tat + granted * interval
  local wait = 0
  if granted < want then
    local enough = math.min(want * n, burst)
    wait = math.max(0, tat + enough * interval - capacity - now)
  end
  local used = tat - now
  if used > 0 then
    redis.call('SET', key, string.format('%.0f', tat), 'PX', math.floor(used / 1000) + 1000)
  end
  out[#out + 1] = granted
  out[#out + 1] = wait
  out[#out + 1] = used
end
return out
"#;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Connect(#[from] crate::fleet::redis::RedisError),
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("no answer in time")]
    Timeout,
    #[error("a reply of {got} numbers for {keys} keys")]
    Shape { got: usize, keys: usize },
}

/// One key's refill as sent: its key, its Redis key, the script's
/// arguments and what was asked.
type Item = (LimitKey, String, [u64; 4], Ask);

/// What one call answered.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    /// Nodes heard within the TTL; 0 when the call carried no heartbeat.
    nodes: u64,
    hostile: u64,
    grants: Vec<Grant>,
}

/// The Redis side of [`RedisLimiter`]: the script and the connection.
pub struct Syncer {
    limiter: Arc<RedisLimiter>,
    conn: Option<ConnectionManager>,
    breaker: Breaker,
    refill: Script,
    next_beat_ns: u64,
    next_sweep_ns: u64,
}

impl Syncer {
    pub fn new(limiter: Arc<RedisLimiter>) -> Self {
        Self {
            limiter,
            conn: None,
            breaker: Breaker::new(),
            refill: Script::new(REFILL),
            next_beat_ns: 0,
            next_sweep_ns: 0,
        }
    }

    /// Forever, on the control runtime. A lease that ran out wakes it;
    /// it then waits [`BATCH_DELAY`] so one call takes every key due.
    pub async fn run(mut self) {
        tracing::info!(url = %crate::fleet::redis::redacted(&self.limiter.settings.url),
            "limits: shared through redis; limiting locally at quota / nodes until it answers");
        loop {
            tokio::select! {
                _ = self.limiter.wake.notified() => tokio::time::sleep(BATCH_DELAY).await,
                _ = tokio::time::sleep(TICK) => {}
            }
            self.step(monotonic_ns()).await;
        }
    }

    /// One round: a probe while open, else refills (with the heartbeat
    /// when due), resets.
    pub async fn step(&mut self, now: u64) {
        if self.breaker.is_open() {
            if !self.breaker.may_probe(now) {
                return;
            }
            match self.call(true, &[]).await {
                Ok(_) => {
                    let transition = self.breaker.succeeded();
                    self.transition(transition, None);
                }
                Err(error) => {
                    let transition = self.breaker.failed(now);
                    self.transition(transition, Some(&error));
                }
            }
            return;
        }
        let result = self.round(now).await;
        if let Err(error) = result {
            self.fail_pending();
            let transition = self.breaker.failed(now);
            self.transition(transition, Some(&error));
        }
    }

    async fn round(&mut self, now: u64) -> Result<(), SyncError> {
        self.refill_pending(now >= self.next_beat_ns).await?;
        self.clear_resets().await?;
        if now >= self.next_sweep_ns {
            self.next_sweep_ns = now + nanos(super::IDLE);
            self.limiter.sweep(now);
        }
        Ok(())
    }

    fn transition(&mut self, transition: Transition, error: Option<&SyncError>) {
        let limiter = &self.limiter;
        match transition {
            Transition::Unchanged => {}
            Transition::Opened => {
                limiter.open.store(true, Ordering::Release);
                limiter.fallbacks.fetch_add(1, Ordering::Relaxed);
                let error = error.map(ToString::to_string).unwrap_or_default();
                tracing::warn!(%error, nodes = limiter.nodes(),
                    "limits: redis unreachable; limiting locally at quota / nodes until it answers");
                if limiter.nodes_unknown() {
                    tracing::warn!("limits: no node count heard from redis yet and [limits] nodes unset: this node limits at the whole quota");
                }
            }
            Transition::Closed => {
                limiter.open.store(false, Ordering::Release);
                limiter.charge_fallback(monotonic_ns());
                tracing::info!(nodes = limiter.nodes(), "limits: shared through redis");
            }
        }
        if transition == Transition::Unchanged && self.breaker.is_open() {
            // Still down: a reconnect is tried by the next probe.
            if let Some(error) = error {
                tracing::debug!(%error, "limits: redis probe failed");
            }
        }
    }

    async fn conn(&mut self) -> Result<&mut ConnectionManager, SyncError> {
        if self.conn.is_none() {
            let url = self.limiter.settings.url.clone();
            let conn = tokio::time::timeout(CALL_TIMEOUT * 3, super::super::redis::connect(&url))
                .await
                .map_err(|_| SyncError::Timeout)??;
            self.conn = Some(conn);
        }
        self.conn.as_mut().ok_or(SyncError::Timeout)
    }

    /// Every pending lease's refill, [`BATCH`] keys per script call; the
    /// heartbeat rides on the first (alone when nothing is pending).
    async fn refill_pending(&mut self, mut beat: bool) -> Result<(), SyncError> {
        let pending = std::mem::take(&mut *RedisLimiter::lock(&self.limiter.pending));
        let mut asks = Vec::with_capacity(pending.len());
        for key in pending {
            let mut shard = self.limiter.shard(&key);
            let Some(lease) = shard.get_mut(&key) else {
                continue;
            };
            let ask = lease.ask();
            let args = [
                lease.interval_us,
                u64::from(lease.burst),
                u64::from(ask.want),
                u64::from(ask.debt),
            ];
            let redis_key = lease.redis_key.clone();
            drop(shard);
            asks.push((key, redis_key, args, ask));
        }
        let mut done = 0;
        let mut result = Ok(());
        while done < asks.len() || beat {
            let batch = &asks[done..(done + BATCH).min(asks.len())];
            match self.call(beat, batch).await {
                Ok(grants) => {
                    let now = monotonic_ns();
                    for ((key, _, _, ask), grant) in batch.iter().zip(grants) {
                        if let Some(lease) = self.limiter.shard(key).get_mut(key) {
                            lease.granted(*ask, grant, now);
                        }
                    }
                    done += batch.len();
                    beat = false;
                }
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        for (key, ..) in &asks[done..] {
            if let Some(lease) = self.limiter.shard(key).get_mut(key) {
                lease.failed();
            }
        }
        result
    }

    /// One round trip: `batch`'s refills, with this node's heartbeat if
    /// `beat` (then N is learnt from it).
    async fn call(&mut self, beat: bool, batch: &[Item]) -> Result<Vec<Grant>, SyncError> {
        self.limiter.calls.fetch_add(1, Ordering::Relaxed);
        let script = self.refill.clone();
        let mut invocation = script.key(NODES_KEY);
        let node = if beat { crate::fleet::node_id() } else { "" };
        (invocation.arg(node).arg(HEARTBEAT_TTL_MS)).arg(self.limiter.nodes());
        for (_, redis_key, args, _) in batch {
            invocation.key(redis_key);
            for arg in args {
                invocation.arg(*arg);
            }
        }
        let conn = self.conn().await?;
        let reply: Vec<i64> = tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(conn))
            .await
            .map_err(|_| SyncError::Timeout)??;
        let reply = parse_reply(&reply, batch.len())?;
        if reply.hostile > 0 {
            self.limiter
                .hostile
                .fetch_add(reply.hostile, Ordering::Relaxed);
            tracing::warn!(
                values = reply.hostile,
                "limits: values in redis no gateway wrote; read as quotas fully used and overwritten"
            );
        }
        if beat {
            let nodes = u32::try_from(reply.nodes).unwrap_or(u32::MAX).max(1);
            self.limiter.seen_nodes.store(nodes, Ordering::Relaxed);
            self.next_beat_ns = monotonic_ns() + nanos(HEARTBEAT_EVERY);
        }
        Ok(reply.grants)
    }

    /// `limits reset`: every tier's key of the client, by a bounded SCAN.
    async fn clear_resets(&mut self) -> Result<(), SyncError> {
        let patterns = std::mem::take(&mut *RedisLimiter::lock(&self.limiter.resets));
        for pattern in patterns {
            let mut cursor = 0u64;
            for _ in 0..1_000 {
                self.limiter.calls.fetch_add(1, Ordering::Relaxed);
                let conn = self.conn().await?;
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(1_000);
                let (next, keys): (u64, Vec<String>) =
                    tokio::time::timeout(CALL_TIMEOUT, scan.query_async(conn))
                        .await
                        .map_err(|_| SyncError::Timeout)??;
                if !keys.is_empty() {
                    let conn = self.conn().await?;
                    let mut del = redis::cmd("DEL");
                    del.arg(&keys);
                    tokio::time::timeout(CALL_TIMEOUT, del.query_async::<i64>(conn))
                        .await
                        .map_err(|_| SyncError::Timeout)??;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Leases asked for and not answered are free to ask again.
    fn fail_pending(&self) {
        RedisLimiter::lock(&self.limiter.pending).clear();
        for shard in &self.limiter.leases {
            for lease in RedisLimiter::lock(shard).values_mut() {
                lease.failed();
            }
        }
    }
}

impl RedisLimiter {
    /// Forgets idle keys whose quota is whole again.
    fn sweep(&self, now: u64) {
        for shard in &self.leases {
            Self::lock(shard).retain(|_, lease| !lease.forgettable(now, super::IDLE));
        }
    }
}

/// Two numbers, then three per key, none negative, or the reply is not
/// ours.
fn parse_reply(reply: &[i64], keys: usize) -> Result<Reply, SyncError> {
    let shape = SyncError::Shape {
        got: reply.len(),
        keys,
    };
    let number = |n: i64| u64::try_from(n).map_err(|_| ());
    let numbers: Result<Vec<u64>, ()> = reply.iter().map(|n| number(*n)).collect();
    let (Ok(numbers), true) = (numbers, reply.len() == HEAD + keys * 3) else {
        return Err(shape);
    };
    let grants = (numbers[HEAD..].chunks_exact(3))
        .map(|c| Grant {
            granted: u32::try_from(c[0]).unwrap_or(u32::MAX),
            wait_us: c[1],
            used_us: c[2],
        })
        .collect();
    Ok(Reply {
        nodes: numbers[0],
        hostile: numbers[1],
        grants,
    })
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// Starts the limiter and its task on the current runtime.
pub fn start(settings: super::Settings) -> Arc<RedisLimiter> {
    let limiter = Arc::new(RedisLimiter::new(settings));
    tokio::spawn(Syncer::new(limiter.clone()).run());
    limiter
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
