//! The follower: applies the fleet's bans and budgets to this node's maps.
//!
//! - After a start, or a reconnect that finds the stream trimmed past it,
//!   it applies the active set a page at a time (`HSCAN`), then
//!   reconciles: every entry the fleet wrote to the (pinned, surviving)
//!   kernel maps ([`FLEET_ORIGIN`]) whose slot the active set no longer
//!   holds was lifted while this node was not listening, and goes.
//! - A remote budget ends at its origin's wall-clock deadline here too.
//! - Every [`PRUNE_EVERY`], ended entries leave the active set through
//!   its expiry index ([`EXPIRY`]), a page at a time, atomically.
use std::{collections::HashMap, net::IpAddr, sync::atomic::Ordering, sync::Arc, time::Duration};

use ipnet::IpNet;
use redis::{aio::ConnectionManager, Value};

use super::{
    bans::{split_active, FleetCounters, ACTIVE, BATCH, EXPIRY, STREAM},
    reply::{field, first_id, later, scan_page, stream_entries},
    wire::{Clocks, Entry},
};
use crate::{
    guard::PolicyUpdate,
    net::{canonical_net, is_host},
    xdp::{maps::PinnedMaps, policy::PolicyHandle},
};

/// A follower's blocking read waits at most this long for new entries.
const BLOCK: Duration = Duration::from_millis(500);
/// Ended entries are removed from the active set this often.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Pages read per catch-up or prune, at most (of [`BATCH`] entries each).
const MAX_PAGES: usize = 100_000;
/// Remote budgets whose deadline this node keeps, at most.
const MAX_BUDGETS: usize = 1 << 20;

/// `HDEL key field` only while the field still holds the value read.
const COMPARE_AND_DELETE: &str = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then \
     return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0";

/// Removes up to ARGV[2] slots whose deadline (the index's score) is at
/// or before ARGV[1] from the active set and the index, in one atomic
/// step: a slot renewed meanwhile has a later score and stays.
const PRUNE: &str = "local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2])) \
     for _, slot in ipairs(due) do redis.call('HDEL', KEYS[1], slot) redis.call('ZREM', KEYS[2], slot) end \
     return #due";

/// Whether an entry from `node` was written to this node's maps already:
/// this process (`own`) published it, or another writer of the same maps
/// (`identity`) did: the CLI beside it, this node before a restart.
fn written_here(node: Option<&[u8]>, own: &str, identity: Option<&str>) -> bool {
    let Some(node) = node else {
        return false;
    };
    if node == own.as_bytes() {
        return true;
    }
    let maps = node.rsplit(|&b| b == b'@').next();
    node.contains(&b'@') && identity.is_some_and(|identity| maps == Some(identity.as_bytes()))
}

pub(super) struct Follower {
    pub(super) conn: ConnectionManager,
    /// What this node publishes as: its id and its maps' identity.
    pub(super) node: String,
    /// [`PinnedMaps::identity`] of this node's maps, when XDP is on.
    pub(super) identity: Option<String>,
    pub(super) allow: Vec<IpNet>,
    /// Applies without publishing back.
    pub(super) policy: PolicyHandle,
    /// This node's kernel maps, read to reconcile (writes go through
    /// `policy`); `None` without XDP (userspace bans do not outlive it).
    pub(super) maps: Option<PinnedMaps>,
    pub(super) counters: Arc<FleetCounters>,
    /// The last stream id applied; kept across a lost connection, so a
    /// reconnect resumes from it when the stream still holds what came
    /// after (unbans included).
    pub(super) last_id: Option<String>,
    /// Whether `last_id` is where the stream is being followed from.
    pub(super) following: bool,
    /// Remote budgets applied here → their deadline (Unix ms).
    pub(super) budgets: HashMap<IpAddr, u64>,
}

impl Follower {
    pub(super) async fn run(mut self) {
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
            self.expire_budgets().await;
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
    /// catches up from the active set.
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

    /// Applies every active entry a page at a time, lifts what the fleet
    /// wrote here that is no longer active, then follows from the id
    /// seen before.
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
        let mut cursor = 0u64;
        let mut applied = 0;
        for _ in 0..MAX_PAGES {
            let reply: Value = redis::cmd("HSCAN")
                .arg(ACTIVE)
                .arg(cursor)
                .arg("COUNT")
                .arg(BATCH)
                .query_async(&mut self.conn)
                .await?;
            let Some((next, page)) = scan_page(&reply) else {
                break;
            };
            let now = Clocks::now();
            for (slot, value) in &page {
                let (node, json) = split_active(value);
                let ended = Entry::parse(json)
                    .map_or(true, |e| e.until_ms().is_some_and(|u| u <= now.wall_ms));
                if ended {
                    // Written before the expiry index, or not by a node.
                    redis::Script::new(COMPARE_AND_DELETE)
                        .key(ACTIVE)
                        .arg(slot.as_slice())
                        .arg(value.as_slice())
                        .invoke_async::<()>(&mut self.conn)
                        .await?;
                }
                applied += usize::from(self.apply(json, node, now).await);
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let lifted = self.reconcile().await?;
        tracing::info!(applied, lifted, "caught up with the fleet's bans");
        self.last_id = Some(last_id);
        self.following = true;
        self.counters.following.store(1, Ordering::Relaxed);
        Ok(())
    }

    /// Lifts the bans and budgets the fleet wrote to this node's maps
    /// whose slot the active set no longer holds (unbanned, reset or
    /// pruned while this node was away; or Redis lost it: the active set
    /// is the truth), or holds for an address this node's allow-list
    /// now covers; returns how many.
    async fn reconcile(&mut self) -> redis::RedisResult<usize> {
        let Some(maps) = &self.maps else {
            return Ok(0);
        };
        let (bans, budgets) = match maps.fleet_entries() {
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%error, "cannot read the fleet's entries in the kernel maps");
                return Ok(0);
            }
        };
        let bans = bans.into_iter().map(|net| {
            let net = canonical_net(net);
            let lift = match is_host(&net) {
                true => PolicyUpdate::Unban { ip: net.addr() },
                false => PolicyUpdate::UnbanPrefix { net },
            };
            (format!("ban:source:{net}"), lift)
        });
        let budgets = budgets.into_iter().map(|ip| {
            let ip = ip.to_canonical();
            (format!("budget:{ip}"), PolicyUpdate::ClearBudget { ip })
        });
        let wanted: Vec<(String, PolicyUpdate)> = bans.chain(budgets).collect();
        let mut lifted = 0;
        for chunk in wanted.chunks(BATCH) {
            let mut hmget = redis::cmd("HMGET");
            hmget.arg(ACTIVE);
            for (slot, _) in chunk {
                hmget.arg(slot);
            }
            let values: Vec<Option<Vec<u8>>> = hmget.query_async(&mut self.conn).await?;
            for ((slot, lift), value) in chunk.iter().zip(values) {
                // Gone, or covered by an allow-list changed since.
                let keep = value.is_some_and(|value| {
                    let (_, json) = split_active(&value);
                    Entry::parse(json).is_ok_and(|entry| !entry.allowed_by(&self.allow))
                });
                if !keep {
                    tracing::info!(
                        slot,
                        "lifting what the fleet lifted while this node was away"
                    );
                    if let PolicyUpdate::ClearBudget { ip } = lift {
                        self.budgets.remove(ip);
                    }
                    lifted += usize::from(self.policy.submit_wait(lift.clone()).await);
                }
            }
        }
        Ok(lifted)
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
    /// allow-list, or a ban or budget already written to this node's
    /// maps (unbans and budget resets always apply: that changes nothing
    /// and wins over an own ban replayed from the active set); whether
    /// it was applied. Waits for room in the writer's queue: a background
    /// task, it must not drop what the fleet decided.
    async fn apply(&mut self, json: &[u8], node: Option<&[u8]>, now: Clocks) -> bool {
        let entry = match Entry::parse(json) {
            Ok(entry) => entry,
            Err(error) => {
                self.counters.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "ignored an invalid fleet entry");
                return false;
            }
        };
        if entry.slot().is_some() && written_here(node, &self.node, self.identity.as_deref()) {
            self.counters.skipped_own.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        if entry.allowed_by(&self.allow) {
            self.counters
                .skipped_allowed
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let Some(update) = entry.to_marked_update(now) else {
            return false;
        };
        match (&entry, &update) {
            (Entry::Budget { until_ms, .. }, PolicyUpdate::Budget { ip, .. })
                if self.budgets.len() < MAX_BUDGETS || self.budgets.contains_key(ip) =>
            {
                self.budgets.insert(*ip, *until_ms);
            }
            (_, PolicyUpdate::ClearBudget { ip }) => _ = self.budgets.remove(ip),
            _ => {}
        }
        let applied = self.policy.submit_wait(update).await;
        if applied {
            self.counters.applied.fetch_add(1, Ordering::Relaxed);
        }
        applied
    }

    /// Resets the remote budgets whose origin's deadline has passed (the
    /// origin's reset may never come: it stopped, or this node missed
    /// it), unless this node's own guard has replaced one since.
    async fn expire_budgets(&mut self) {
        let now = Clocks::now().wall_ms;
        if self.budgets.values().all(|until| *until > now) {
            return;
        }
        let due: Vec<IpAddr> = (self.budgets.iter())
            .filter(|(_, until)| **until <= now)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in due {
            self.budgets.remove(&ip);
            let still_remote = match &self.maps {
                Some(maps) => maps.fleet_budget(ip).unwrap_or(true),
                None => true,
            };
            if still_remote {
                tracing::debug!(%ip, "a remote budget ended");
                self.policy
                    .submit_wait(PolicyUpdate::ClearBudget { ip })
                    .await;
            }
        }
    }

    /// Removes ended entries from the active set, a page at a time.
    async fn prune(&mut self) -> redis::RedisResult<()> {
        let script = redis::Script::new(PRUNE);
        for _ in 0..MAX_PAGES {
            let removed: usize = script
                .key(ACTIVE)
                .key(EXPIRY)
                .arg(Clocks::now().wall_ms)
                .arg(BATCH)
                .invoke_async(&mut self.conn)
                .await?;
            if removed < BATCH {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::written_here;

    #[test]
    fn entries_written_to_these_maps_are_told_apart() {
        let own = "gw1-10-0000abcd@boot:7";
        let here = Some("boot:7");
        assert!(written_here(Some(own.as_bytes()), own, here));
        // The CLI beside it, or this node before a restart: same maps.
        assert!(written_here(Some(b"cli-gw1-99-1234@boot:7"), own, here));
        // Another node, other maps, or the same map id after a reboot.
        assert!(!written_here(Some(b"gw2-11-0000beef@boot:8"), own, here));
        assert!(!written_here(Some(b"gw2-11-0000beef@other:7"), own, here));
        // Without a node, or without maps here, only this process's own.
        assert!(!written_here(None, own, here));
        assert!(!written_here(Some(b"boot:7"), own, here));
        assert!(!written_here(Some(b"cli-x@boot:7"), "gw1", None));
        assert!(written_here(Some(b"gw1"), "gw1", None));
    }
}
