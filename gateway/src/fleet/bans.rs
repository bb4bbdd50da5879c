//! Bans and tier budgets for every node's kernel: each node publishes its
//! own policy updates (the guard's, the CLI's) to a Redis Stream and applies
//! everyone else's to its own maps.
//!
//! - The stream ([`STREAM`]) is replayable, unlike pub/sub: a follower reads
//!   on from the last id it applied.
//! - The active set ([`ACTIVE`], a hash: slot → entry) is the catch-up: after
//!   a start or a reconnect a node applies every active entry, lifts what
//!   the fleet wrote to its maps that is no longer active, then follows
//!   the stream from the id it saw before reading the set (see
//!   [`super::follow`]). An entry seen twice is applied twice, which
//!   changes nothing. [`EXPIRY`] indexes the set by deadline for pruning.
//! - Publishing never blocks the request path: [`Outbox::offer`] is a
//!   non-blocking send; what cannot be published while Redis is away is kept
//!   (bounded) and sent when it is back.
//! - A node skips the bans and budgets written to its own maps already
//!   (each entry names its node and that node's maps) and honours its own
//!   allow-list.
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use ipnet::IpNet;
use redis::aio::ConnectionManager;
use tokio::sync::mpsc;

use super::{
    follow::Follower,
    wire::{Clocks, Entry},
};
use crate::{
    guard::PolicyUpdate,
    xdp::{
        maps::PinnedMaps,
        policy::{PolicyHandle, Tee},
    },
};

/// The stream every node appends to.
pub const STREAM: &str = "gateway:fleet:policy";
/// Slot → the entry in force there (JSON, with its node).
pub const ACTIVE: &str = "gateway:fleet:policy:active";
/// Slot → its entry's deadline (Unix ms, the score): what pruning reads.
pub const EXPIRY: &str = "gateway:fleet:policy:expiry";
/// The stream keeps about this many entries (`MAXLEN ~`).
const STREAM_LEN: usize = 100_000;
/// Updates waiting to be published, at most.
const OUTBOX: usize = 4096;
/// Unpublished updates kept while Redis is away, at most (oldest dropped).
const PENDING: usize = 10_000;
/// Entries read or published per call.
pub(super) const BATCH: usize = 256;

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
    /// Bans and budgets already in this node's maps (its own, or the
    /// CLI's beside it).
    pub skipped_own: AtomicU64,
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
        let rows: [(&str, &str, &str, &AtomicU64); 8] = [
            ("gateway_fleet_policy_published_total", "counter", "Bans and budgets this node published to the fleet.", &self.published),
            ("gateway_fleet_policy_publish_dropped_total", "counter", "Bans and budgets not published: the outbox or the queue kept while Redis is away was full.", &self.publish_dropped),
            ("gateway_fleet_redis_errors_total", "counter", "Calls to Redis for the fleet's bans that failed.", &self.redis_errors),
            ("gateway_fleet_policy_applied_total", "counter", "Other nodes' bans and budgets applied here.", &self.applied),
            ("gateway_fleet_policy_skipped_allowed_total", "counter", "Other nodes' bans not applied: this node's allow-list covers them.", &self.skipped_allowed),
            ("gateway_fleet_policy_skipped_own_total", "counter", "Bans and budgets from the stream already in this node's maps (its own, or the CLI's beside it).", &self.skipped_own),
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

/// How a node (or the CLI) names itself in the stream: its id, and the
/// identity of the maps it wrote to ([`PinnedMaps::identity`]), if any.
pub fn origin(node: &str, maps: Option<&PinnedMaps>) -> String {
    let identity = maps.and_then(|maps| match maps.identity() {
        Ok(identity) => Some(identity),
        Err(error) => {
            tracing::warn!(%error, "cannot name the kernel maps for the fleet");
            None
        }
    });
    match identity {
        Some(identity) => format!("{node}@{identity}"),
        None => node.to_owned(),
    }
}

/// Starts publishing this node's updates and applying the fleet's; returns
/// the handle that publishes, for the guard and everything else. `maps`:
/// this node's kernel maps, when XDP is on (read to reconcile). Redis
/// need not be up: both sides connect (and reconnect) in the background.
pub fn start(
    url: &str,
    node: &str,
    allow: Vec<IpNet>,
    policy: PolicyHandle,
    maps: Option<PinnedMaps>,
) -> PolicyHandle {
    let counters = Arc::<FleetCounters>::default();
    let (tx, rx) = mpsc::channel(OUTBOX);
    let node = origin(node, maps.as_ref());
    let identity = (node.split_once('@')).map(|(_, identity)| identity.to_owned());
    let url = url.to_owned();
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
                identity,
                allow,
                policy,
                maps,
                counters,
                last_id: None,
                following: false,
                budgets: HashMap::new(),
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
            let until = entry.until_ms().unwrap_or(u64::MAX);
            pipe.zadd(EXPIRY, &slot, until).ignore();
            pipe.hset(ACTIVE, slot, active_value(node, &json)).ignore();
        }
        for slot in entry.removes() {
            pipe.zrem(EXPIRY, &slot).ignore();
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

/// An active-set value: the publishing node, a newline, the entry.
fn active_value(node: &str, json: &str) -> String {
    format!("{node}\n{json}")
}

/// The node and the entry of an active-set value (`None` node: written
/// without one).
pub(super) fn split_active(value: &[u8]) -> (Option<&[u8]>, &[u8]) {
    match value.iter().position(|&b| b == b'\n') {
        Some(at) => (value.get(..at), value.get(at + 1..).unwrap_or_default()),
        None => (None, value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
