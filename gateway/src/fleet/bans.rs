//! Bans and tier budgets for every node's kernel: each node publishes its
//! own policy updates (the guard's, the CLI's) to a Redis Stream and applies
//! everyone else's to its own maps.
//!
//! - The stream ([`STREAM`]) is replayable, unlike pub/sub: a follower reads
//!   on from the last id it applied.
//! - The active set ([`ACTIVE`], a hash: slot → entry) is the catch-up: after
//!   a start or a reconnect a node applies every active entry, then follows
//!   the stream from the id it saw before reading the set. An entry seen
//!   twice is applied twice, which changes nothing.
//! - Publishing never blocks the request path: [`Outbox::offer`] is a
//!   non-blocking send; what cannot be published while Redis is away is kept
//!   (bounded) and sent when it is back.
//! - A node skips its own entries and honours its own allow-list.
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use ipnet::IpNet;
use redis::{aio::ConnectionManager, Value};
use tokio::sync::mpsc;

use super::wire::{Clocks, Entry};
use crate::{
    guard::PolicyUpdate,
    xdp::policy::{PolicyHandle, Tee},
};

/// The stream every node appends to.
pub const STREAM: &str = "gateway:fleet:policy";
/// Slot → the entry in force there (JSON, with its node).
pub const ACTIVE: &str = "gateway:fleet:policy:active";
/// The stream keeps about this many entries (`MAXLEN ~`).
const STREAM_LEN: usize = 100_000;
/// Updates waiting to be published, at most.
const OUTBOX: usize = 4096;
/// Unpublished updates kept while Redis is away, at most (oldest dropped).
const PENDING: usize = 10_000;
/// Entries read or published per call.
const BATCH: usize = 256;
/// A follower's blocking read waits at most this long for new entries.
const BLOCK: Duration = Duration::from_millis(500);
/// Expired entries are removed from the active set this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Counts for `/metrics`.
#[derive(Debug, Default)]
pub struct FleetCounters {
    pub published: AtomicU64,
    /// Updates not published: the outbox or the pending queue was full.
    pub publish_dropped: AtomicU64,
    /// Calls to Redis that failed (publishing or following).
    pub redis_errors: AtomicU64,
    /// Other nodes' entries applied here.
    pub applied: AtomicU64,
    /// Other nodes' bans of addresses this node's allow-list covers.
    pub skipped_allowed: AtomicU64,
    /// Stream entries that were not valid fleet entries.
    pub invalid: AtomicU64,
    /// 1 while the follower is caught up with the stream, 0 while not.
    pub following: AtomicU64,
}

/// The publishing side the policy handle holds.
pub struct Outbox {
    tx: mpsc::Sender<(Clocks, PolicyUpdate)>,
    pub counters: Arc<FleetCounters>,
}

impl Tee for Outbox {
    /// Queues `update` for the fleet without waiting.
    fn offer(&self, update: PolicyUpdate) {
        if self.tx.try_send((Clocks::now(), update)).is_err() {
            self.counters
                .publish_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn render_metrics(&self, out: &mut String) {
        self.counters.render(out);
    }
}

impl FleetCounters {
    /// The Prometheus exposition of these counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let rows: [(&str, &str, &str, &AtomicU64); 7] = [
            ("gateway_fleet_policy_published_total", "counter", "Bans and budgets this node published to the fleet.", &self.published),
            ("gateway_fleet_policy_publish_dropped_total", "counter", "Bans and budgets not published: the outbox or the queue kept while Redis is away was full.", &self.publish_dropped),
            ("gateway_fleet_redis_errors_total", "counter", "Calls to Redis for the fleet's bans that failed.", &self.redis_errors),
            ("gateway_fleet_policy_applied_total", "counter", "Other nodes' bans and budgets applied here.", &self.applied),
            ("gateway_fleet_policy_skipped_allowed_total", "counter", "Other nodes' bans not applied: this node's allow-list covers them.", &self.skipped_allowed),
            ("gateway_fleet_policy_invalid_total", "counter", "Entries in the fleet's stream that were not valid.", &self.invalid),
            ("gateway_fleet_policy_following", "gauge", "1 while this node follows the fleet's ban stream, 0 while it cannot.", &self.following),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
    }
}

/// Starts publishing this node's updates and applying the fleet's; returns
/// the handle that publishes, for the guard and everything else. Redis
/// need not be up: both sides connect (and reconnect) in the background.
pub fn start(url: &str, node: &str, allow: Vec<IpNet>, policy: PolicyHandle) -> PolicyHandle {
    let counters = Arc::<FleetCounters>::default();
    let (tx, rx) = mpsc::channel(OUTBOX);
    let (url, node) = (url.to_owned(), node.to_owned());
    let publisher = {
        let (url, node, counters) = (url.clone(), node.clone(), counters.clone());
        async move {
            let publisher = Publisher {
                conn: connected(&url, &counters).await,
                node,
                pending: VecDeque::new(),
                counters,
            };
            publisher.run(rx).await;
        }
    };
    tokio::spawn(publisher);
    let follower = {
        let (policy, counters) = (policy.local(), counters.clone());
        async move {
            let follower = Follower {
                conn: connected(&url, &counters).await,
                node,
                allow,
                policy,
                counters,
                last_id: None,
                following: false,
            };
            follower.run().await;
        }
    };
    tokio::spawn(follower);
    policy.publishing_to(Arc::new(Outbox { tx, counters }))
}

/// A connection to `url`, retrying with backoff until Redis answers.
async fn connected(url: &str, counters: &FleetCounters) -> ConnectionManager {
    let mut backoff = Duration::from_millis(100);
    let mut logged = false;
    loop {
        match super::redis::connect(url).await {
            Ok(conn) => return conn,
            Err(error) => {
                counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                if !std::mem::replace(&mut logged, true) {
                    tracing::warn!(%error, "fleet bans wait for Redis");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Publishes to Redis directly, for the CLI: `gateway xdp ban --redis`.
pub async fn publish_once(
    url: &str,
    node: &str,
    update: &PolicyUpdate,
) -> Result<(), super::redis::RedisError> {
    let mut conn = super::redis::connect(url).await?;
    let entry = Entry::from_update(update, Clocks::now());
    publish_pipeline(node, std::slice::from_ref(&entry))
        .query_async::<()>(&mut conn)
        .await?;
    Ok(())
}

/// One atomic call: append every entry to the stream and bring the active
/// set up to date.
fn publish_pipeline(node: &str, entries: &[Entry]) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.atomic();
    for entry in entries {
        let json = entry.to_json();
        pipe.cmd("XADD")
            .arg(STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_LEN)
            .arg("*")
            .arg("node")
            .arg(node)
            .arg("entry")
            .arg(&json)
            .ignore();
        if let Some(slot) = entry.slot() {
            pipe.hset(ACTIVE, slot, active_value(node, &json)).ignore();
        }
        for slot in entry.removes() {
            pipe.hdel(ACTIVE, slot).ignore();
        }
    }
    pipe
}

struct Publisher {
    conn: ConnectionManager,
    node: String,
    /// Converted entries Redis has not taken yet, oldest first.
    pending: VecDeque<Entry>,
    counters: Arc<FleetCounters>,
}

impl Publisher {
    async fn run(mut self, mut rx: mpsc::Receiver<(Clocks, PolicyUpdate)>) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        // After a failure, updates only queue until the next retry tick:
        // one failed call per second while Redis is away, not per update.
        let mut failing = false;
        loop {
            let tick = tokio::select! {
                received = rx.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    for (at, update) in batch.drain(..) {
                        self.keep(Entry::from_update(&update, at));
                    }
                    false
                }
                _ = retry.tick() => true,
            };
            if tick || !failing {
                failing = !self.flush(failing).await;
            }
        }
    }

    fn keep(&mut self, entry: Entry) {
        if self.pending.len() >= PENDING {
            self.pending.pop_front();
            self.counters
                .publish_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        self.pending.push_back(entry);
    }

    /// Sends what is pending, a batch at a time; `false` when Redis
    /// refused (logged unless it was `failing` already).
    async fn flush(&mut self, failing: bool) -> bool {
        while !self.pending.is_empty() {
            let now = Clocks::now().wall_ms;
            // An entry that ended while it waited tells nobody anything.
            self.pending
                .retain(|entry| entry.until_ms().is_none_or(|until| until > now));
            let n = self.pending.len().min(BATCH);
            let entries: Vec<Entry> = self.pending.range(..n).cloned().collect();
            let sent = publish_pipeline(&self.node, &entries)
                .query_async::<()>(&mut self.conn)
                .await;
            match sent {
                Ok(()) => {
                    self.pending.drain(..n);
                    (self.counters.published).fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(error) => {
                    self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                    if !failing {
                        tracing::warn!(%error, pending = self.pending.len(), "publishing bans to the fleet failed; retrying every second");
                    }
                    return false;
                }
            }
        }
        true
    }
}

struct Follower {
    conn: ConnectionManager,
    node: String,
    allow: Vec<IpNet>,
    /// Applies without publishing back.
    policy: PolicyHandle,
    counters: Arc<FleetCounters>,
    /// The last stream id applied; kept across a lost connection, so a
    /// reconnect resumes from it when the stream still holds what came
    /// after (unbans included).
    last_id: Option<String>,
    /// Whether `last_id` is where the stream is being followed from.
    following: bool,
}

impl Follower {
    async fn run(mut self) {
        let mut pruned = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let step = match self.following {
                false => self.resume().await,
                true => self.follow().await,
            };
            match step {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(error) => {
                    if std::mem::replace(&mut self.following, false) {
                        tracing::warn!(%error, "lost the fleet's ban stream; resuming when Redis is back");
                    }
                    self.counters.following.store(0, Ordering::Relaxed);
                    self.counters.redis_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = tokio::time::Instant::now();
                if let Err(error) = self.prune().await {
                    tracing::debug!(%error, "pruning the fleet's active bans failed");
                }
            }
        }
    }

    /// After a start or a lost connection: follows on from the last id
    /// applied when the stream still holds everything after it, else
    /// applies every active entry and follows from the newest id.
    async fn resume(&mut self) -> redis::RedisResult<()> {
        if let Some(last) = self.last_id.as_deref() {
            let oldest: Value = redis::cmd("XRANGE")
                .arg(STREAM)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut self.conn)
                .await?;
            // Nothing was trimmed past us (an empty stream: Redis lost it
            // all, and its new ids are later than ours).
            let kept = first_id(&oldest).is_none_or(|oldest| !later(&oldest, last));
            if kept {
                tracing::info!(from = last, "following the fleet's bans again");
                self.following = true;
                self.counters.following.store(1, Ordering::Relaxed);
                return Ok(());
            }
        }
        self.catch_up().await
    }

    /// Applies every active entry, then follows from the id seen before.
    async fn catch_up(&mut self) -> redis::RedisResult<()> {
        let newest: Value = redis::cmd("XREVRANGE")
            .arg(STREAM)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.conn)
            .await?;
        let last_id = first_id(&newest).unwrap_or_else(|| "0-0".to_owned());
        let active: HashMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
            .arg(ACTIVE)
            .query_async(&mut self.conn)
            .await?;
        let now = Clocks::now();
        let mut applied = 0;
        for value in active.values() {
            let (node, json) = split_active(value);
            applied += usize::from(self.apply(json, node, now).await);
        }
        tracing::info!(applied, "caught up with the fleet's bans");
        self.last_id = Some(last_id);
        self.following = true;
        self.counters.following.store(1, Ordering::Relaxed);
        Ok(())
    }

    /// One blocking read of the stream after the last id.
    async fn follow(&mut self) -> redis::RedisResult<()> {
        let last_id = self.last_id.clone().unwrap_or_else(|| "0-0".to_owned());
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(STREAM)
            .arg(&last_id)
            .query_async(&mut self.conn)
            .await?;
        let now = Clocks::now();
        for (id, fields) in stream_entries(&reply) {
            let node = field(&fields, "node");
            let entry = field(&fields, "entry").unwrap_or_default();
            self.apply(entry, node, now).await;
            self.last_id = Some(id);
        }
        Ok(())
    }

    /// Applies one entry unless it is invalid, expired, covered by the
    /// allow-list, or a ban or budget this node published itself (its
    /// own unbans and budget resets apply again, which changes nothing
    /// and wins over an own ban replayed from the active set); whether it
    /// was applied. Waits for room in the writer's queue: a background
    /// task, it must not drop what the fleet decided.
    async fn apply(&self, json: &[u8], node: Option<&[u8]>, now: Clocks) -> bool {
        let entry = match Entry::parse(json) {
            Ok(entry) => entry,
            Err(error) => {
                self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "ignored an invalid fleet entry");
                return false;
            }
        };
        if node == Some(self.node.as_bytes()) && entry.slot().is_some() {
            return false;
        }
        if entry.allowed_by(&self.allow) {
            self.counters
                .skipped_allowed
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let Some(update) = entry.to_update(now) else {
            return false;
        };
        let applied = self.policy.submit_wait(update).await;
        if applied {
            self.counters.applied.fetch_add(1, Ordering::Relaxed);
        }
        applied
    }

    /// Removes ended entries from the active set, each only if it is
    /// still the one read (a ban renewed meanwhile stays).
    async fn prune(&mut self) -> redis::RedisResult<()> {
        let active: HashMap<Vec<u8>, Vec<u8>> = redis::cmd("HGETALL")
            .arg(ACTIVE)
            .query_async(&mut self.conn)
            .await?;
        let now = Clocks::now().wall_ms;
        let script = redis::Script::new(COMPARE_AND_DELETE);
        for (slot, value) in &active {
            let (_, json) = split_active(value);
            let ended = Entry::parse(json).map_or(true, |e| e.until_ms().is_some_and(|u| u <= now));
            if ended {
                script
                    .key(ACTIVE)
                    .arg(slot.as_slice())
                    .arg(value.as_slice())
                    .invoke_async::<()>(&mut self.conn)
                    .await?;
            }
        }
        Ok(())
    }
}

/// `HDEL key field` only while the field still holds the value read.
const COMPARE_AND_DELETE: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
     return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

/// An active-set value: the publishing node, a newline, the entry.
fn active_value(node: &str, json: &str) -> String {
    format!("{node}\n{json}")
}

/// The node and the entry of an active-set value (`None` node: written
/// without one).
fn split_active(value: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match value.iter().position(|&b| b == b'\n') {
        Some(at) => (value.get(..at), value.get(at + 1..).unwrap_or_default()),
        None => (None, value),
    }
}

/// Whether stream id `a` is later than `b` (`ms-seq`, compared as numbers).
fn later(a: &str, b: &str) -> bool {
    let parse = |id: &str| -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    parse(a) > parse(b)
}

/// The id of the first entry of an `XREVRANGE`/`XRANGE` reply.
fn first_id(reply: &Value) -> Option<String> {
    let Value::Array(entries) = reply else {
        return None;
    };
    match entries.first()? {
        Value::Array(pair) => text(pair.first()?).map(str::to_owned),
        _ => None,
    }
}

/// `(id, [field, value, ...])` of every entry of an `XREAD` reply on one
/// stream. Anything shaped otherwise is skipped, never trusted.
fn stream_entries(reply: &Value) -> Vec<(String, Vec<Value>)> {
    let streams = match reply {
        Value::Array(streams) => streams.as_slice(),
        Value::Map(pairs) => return map_entries(pairs),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(pair) = stream else { continue };
        if let Some(Value::Array(entries)) = pair.get(1) {
            out.extend(entries.iter().filter_map(entry));
        }
    }
    out
}

/// RESP3 answers `XREAD` with a map of stream → entries.
fn map_entries(pairs: &[(Value, Value)]) -> Vec<(String, Vec<Value>)> {
    let mut out = Vec::new();
    for (_, entries) in pairs {
        if let Value::Array(entries) = entries {
            out.extend(entries.iter().filter_map(entry));
        }
    }
    out
}

fn entry(value: &Value) -> Option<(String, Vec<Value>)> {
    let Value::Array(pair) = value else {
        return None;
    };
    let id = text(pair.first()?)?.to_owned();
    match pair.get(1)? {
        Value::Array(fields) => Some((id, fields.clone())),
        _ => None,
    }
}

fn field<'a>(fields: &'a [Value], name: &str) -> Option<&'a [u8]> {
    fields.chunks_exact(2).find_map(|pair| match pair {
        [Value::BulkString(key), Value::BulkString(value)] if key == name.as_bytes() => {
            Some(value.as_slice())
        }
        _ => None,
    })
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_compare_as_numbers() {
        assert!(later("1700000000001-0", "1700000000000-9"));
        assert!(later("10-0", "9-0"), "not as text");
        assert!(later("5-10", "5-9"));
        assert!(!later("5-9", "5-9"));
    }

    #[test]
    fn active_values_carry_their_node() {
        let value = active_value("node-a", r#"{"op":"unban","ip":"10.0.0.1"}"#);
        let (node, json) = split_active(value.as_bytes());
        assert_eq!(node, Some(&b"node-a"[..]));
        assert!(Entry::parse(json).is_ok());
        // A value written without a node (or by anyone else) is all entry.
        assert_eq!(split_active(b"{}"), (None, &b"{}"[..]));
    }
}
