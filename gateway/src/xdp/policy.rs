//! Policy updates (bans, budgets) from many tasks, applied in batches by one
//! writer task, so the request path never makes a syscall: it only does a
//! non-blocking channel send.
use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use gateway_common::{Ban, Budget};
use ipnet::IpNet;
use tokio::sync::mpsc;

use super::{
    full::{FullCounters, Written},
    maps::{MapsError, PinnedMaps},
};
use crate::{
    clock::monotonic_ns,
    guard::{BanTarget, PolicyUpdate},
    net::canonical_net,
};

/// Updates with the same slot overwrite each other within a batch.
fn slot(update: &PolicyUpdate) -> (BanTarget, bool) {
    match update {
        PolicyUpdate::Ban { target, .. } => (target.clone(), true),
        PolicyUpdate::Unban { ip } => (BanTarget::Source(*ip), true),
        PolicyUpdate::UnbanPrefix { net } => (BanTarget::SourcePrefix(*net), true),
        PolicyUpdate::Budget { ip, .. } | PolicyUpdate::ClearBudget { ip } => {
            (BanTarget::Source(*ip), false)
        }
    }
}

/// Where the writer applies updates: the kernel's maps, or the userspace
/// fallback when XDP is unavailable.
pub trait PolicySink: Send {
    /// Applies one update; says whether a full ban map evicted or refused.
    fn apply(&mut self, update: &PolicyUpdate) -> Result<Written, MapsError>;
    /// Makes a batch of applied updates visible (the kernel's policy caches).
    fn commit(&mut self) -> Result<(), MapsError> {
        Ok(())
    }
    /// Forgets bans that ended before `now_ns`; returns how many.
    fn remove_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError>;
}

impl PolicySink for PinnedMaps {
    fn apply(&mut self, update: &PolicyUpdate) -> Result<Written, MapsError> {
        let done = |result: Result<(), MapsError>| result.map(|()| Written::Done);
        match *update {
            PolicyUpdate::Ban {
                target: BanTarget::Source(ip),
                until_ns,
                reason,
            } => Ok(self.write_ban(IpNet::from(ip), until_ns, reason)?.1),
            PolicyUpdate::Ban {
                target: BanTarget::SourcePrefix(net),
                until_ns,
                reason,
            } => Ok(self.write_ban(net, until_ns, reason)?.1),
            // Never the kernel's: a forwarded address's packets are its
            // proxy's. [`Split`] sends these to userspace.
            PolicyUpdate::Ban { .. } => Ok(Written::Done),
            PolicyUpdate::Unban { ip } => done(self.remove_ban(ip).map(drop)),
            PolicyUpdate::UnbanPrefix { net } => done(self.remove_prefix_ban(net).map(drop)),
            PolicyUpdate::Budget { ip, budget } => done(self.write_budget(ip, budget)),
            PolicyUpdate::ClearBudget { ip } => done(self.remove_budget(ip)),
        }
    }

    fn commit(&mut self) -> Result<(), MapsError> {
        self.publish()
    }

    fn remove_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        PinnedMaps::remove_expired_bans(self, now_ns)
    }
}

/// Bans the proxy enforces itself, per request (and at accept for
/// addresses): every ban when XDP is unavailable; with XDP, those the
/// kernel cannot enforce (a forwarded client address, one client at an
/// address). Readers load a snapshot without a lock (no cache line shared
/// between cores per request); the writer changes a private copy and
/// publishes it once per batch.
#[derive(Clone, Default)]
pub struct UserspaceBans {
    published: Arc<ArcSwap<BanTable>>,
    /// The writer's copy while a batch is applied; `None` for readers.
    working: Option<BanTable>,
}

#[derive(Clone, Debug, Default)]
struct BanTable {
    /// Banned addresses: packet sources, or forwarded client addresses.
    addresses: HashMap<IpAddr, Ban>,
    /// Banned prefixes (canonical: IPv4 as IPv4), and the lengths in use,
    /// so a lookup costs one hash probe per length, not one per prefix.
    prefixes: HashMap<IpNet, Ban>,
    lengths: BTreeSet<(bool, u8)>,
    /// Clients banned at one address, by address, then client id.
    clients: HashMap<IpAddr, HashMap<Arc<str>, Ban>>,
}

impl BanTable {
    /// The latest of `ip`'s own ban and those of the prefixes covering it.
    fn address_ban(&self, ip: IpAddr) -> Option<&Ban> {
        let own = self.addresses.get(&ip);
        let covering = (self.lengths.iter())
            .filter(|(v6, _)| *v6 == ip.is_ipv6())
            .filter_map(|(_, len)| IpNet::new(ip, *len).ok())
            .filter_map(|net| self.prefixes.get(&net.trunc()));
        own.into_iter()
            .chain(covering)
            .max_by_key(|ban| ban.banned_until_ns)
    }

    fn reindex(&mut self) {
        self.lengths = (self.prefixes.keys())
            .map(|net| (matches!(net, IpNet::V6(_)), net.prefix_len()))
            .collect();
    }
}

/// How long a ban ending at `until_ns` still lasts at `now_ns`, if at all.
fn left(ban: &Ban, now_ns: u64) -> Option<Duration> {
    (ban.banned_until_ns > now_ns).then(|| Duration::from_nanos(ban.banned_until_ns - now_ns))
}

impl UserspaceBans {
    pub fn is_banned(&self, ip: IpAddr, now_ns: u64) -> bool {
        self.ban_left(ip, now_ns).is_some()
    }

    /// How long the address `ip` stays banned, if it is.
    pub fn ban_left(&self, ip: IpAddr, now_ns: u64) -> Option<Duration> {
        let table = self.published.load();
        if table.addresses.is_empty() && table.prefixes.is_empty() {
            return None;
        }
        left(table.address_ban(ip.to_canonical())?, now_ns)
    }

    /// How long `client` stays banned at the address `ip`, if it is.
    pub fn client_ban_left(&self, client: &str, ip: IpAddr, now_ns: u64) -> Option<Duration> {
        let table = self.published.load();
        if table.clients.is_empty() {
            return None;
        }
        left(table.clients.get(&ip.to_canonical())?.get(client)?, now_ns)
    }

    /// Up to `n` bans in force at `now_ns`, the longest-lasting first: the
    /// banned address, prefix, or `client@address`.
    pub fn list(&self, n: usize, now_ns: u64) -> Vec<(String, Ban)> {
        let table = self.published.load();
        let nets = (table
            .addresses
            .iter()
            .map(|(ip, ban)| (ip.to_string(), *ban)))
        .chain(
            table
                .prefixes
                .iter()
                .map(|(net, ban)| (net.to_string(), *ban)),
        );
        let clients = table.clients.iter().flat_map(|(ip, clients)| {
            (clients.iter()).map(move |(client, ban)| (format!("{client}@{ip}"), *ban))
        });
        let mut bans: Vec<(String, Ban)> = nets
            .chain(clients)
            .filter(|(_, ban)| ban.banned_until_ns > now_ns)
            .collect();
        bans.sort_unstable_by_key(|(_, ban)| std::cmp::Reverse(ban.banned_until_ns));
        bans.truncate(n);
        bans
    }

    /// Bans in force at `now_ns`.
    pub fn active(&self, now_ns: u64) -> usize {
        let table = self.published.load();
        let clients = table.clients.values().flat_map(HashMap::values);
        (table.addresses.values().chain(table.prefixes.values()))
            .chain(clients)
            .filter(|ban| ban.banned_until_ns > now_ns)
            .count()
    }

    fn working(&mut self) -> &mut BanTable {
        let published = &self.published;
        self.working
            .get_or_insert_with(|| BanTable::clone(&published.load()))
    }
}

impl PolicySink for UserspaceBans {
    fn apply(&mut self, update: &PolicyUpdate) -> Result<Written, MapsError> {
        match update {
            PolicyUpdate::Ban {
                target,
                until_ns,
                reason,
            } => {
                let table = self.working();
                let entry = match target {
                    BanTarget::Source(ip) | BanTarget::Forwarded(ip) => {
                        table.addresses.entry(ip.to_canonical()).or_default()
                    }
                    BanTarget::SourcePrefix(net) | BanTarget::ForwardedPrefix(net) => {
                        let net = canonical_net(*net);
                        table
                            .lengths
                            .insert((matches!(net, IpNet::V6(_)), net.prefix_len()));
                        table.prefixes.entry(net).or_default()
                    }
                    BanTarget::Client { client, ip } => (table.clients)
                        .entry(ip.to_canonical())
                        .or_default()
                        .entry(client.clone())
                        .or_default(),
                };
                *entry = Ban {
                    banned_until_ns: *until_ns,
                    reason: *reason,
                    offences: entry.offences.saturating_add(1),
                };
            }
            PolicyUpdate::Unban { ip } => {
                self.working().addresses.remove(&ip.to_canonical());
            }
            PolicyUpdate::UnbanPrefix { net } => {
                let table = self.working();
                if table.prefixes.remove(&canonical_net(*net)).is_some() {
                    table.reindex();
                }
            }
            // Budgets are packet-level; without XDP the request limiter covers them.
            PolicyUpdate::Budget { .. } | PolicyUpdate::ClearBudget { .. } => {}
        }
        Ok(Written::Done)
    }

    fn commit(&mut self) -> Result<(), MapsError> {
        if let Some(bans) = self.working.take() {
            self.published.store(Arc::new(bans));
        }
        Ok(())
    }

    fn remove_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        let table = self.working();
        let before = table.addresses.len();
        table
            .addresses
            .retain(|_, ban| ban.banned_until_ns > now_ns);
        let mut removed = before - table.addresses.len();
        let before = table.prefixes.len();
        table.prefixes.retain(|_, ban| ban.banned_until_ns > now_ns);
        removed += before - table.prefixes.len();
        table.reindex();
        for clients in table.clients.values_mut() {
            let before = clients.len();
            clients.retain(|_, ban| ban.banned_until_ns > now_ns);
            removed += before - clients.len();
        }
        table.clients.retain(|_, clients| !clients.is_empty());
        self.commit()?;
        Ok(removed)
    }
}

/// The writer's sink with XDP attached: what the kernel can enforce goes
/// to `kernel`, the bans only userspace can enforce to `userspace`.
pub struct Split<K> {
    pub kernel: K,
    pub userspace: UserspaceBans,
}

impl<K: PolicySink> PolicySink for Split<K> {
    fn apply(&mut self, update: &PolicyUpdate) -> Result<Written, MapsError> {
        if let PolicyUpdate::Unban { .. } | PolicyUpdate::UnbanPrefix { .. } = update {
            self.userspace.apply(update)?;
        }
        match update.in_kernel() {
            true => self.kernel.apply(update),
            false => self.userspace.apply(update),
        }
    }

    fn commit(&mut self) -> Result<(), MapsError> {
        self.userspace.commit()?;
        self.kernel.commit()
    }

    fn remove_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        let userspace = self.userspace.remove_expired_bans(now_ns)?;
        Ok(userspace + self.kernel.remove_expired_bans(now_ns)?)
    }
}

/// A second destination for this node's own updates (the fleet's
/// outbox): offered each update without waiting.
pub trait Tee: Send + Sync {
    fn offer(&self, update: PolicyUpdate);
    /// Appends its metrics' exposition to `out`.
    fn render_metrics(&self, out: &mut String);
}

/// The cheap, cloneable side that request tasks hold.
#[derive(Clone)]
pub struct PolicyHandle {
    tx: mpsc::Sender<PolicyUpdate>,
    overflowed: Arc<AtomicU64>,
    full: Arc<FullCounters>,
    failed: Arc<AtomicU64>,
    /// In fleet mode, where this node's own updates also go to be
    /// published to the other nodes.
    fleet: Option<Arc<dyn Tee>>,
}

impl PolicyHandle {
    /// Queues an update without waiting. `false` (and a counted overflow)
    /// when the writer is behind: the request path must never stall on it.
    pub fn submit(&self, update: PolicyUpdate) -> bool {
        // The fleet hears only what this node applies itself.
        let offered = self.fleet.as_ref().map(|fleet| (fleet, update.clone()));
        let queued = self.tx.try_send(update).is_ok();
        match (queued, offered) {
            (true, Some((fleet, update))) => fleet.offer(update),
            (true, None) => {}
            (false, _) => {
                self.overflowed.fetch_add(1, Ordering::Relaxed);
            }
        }
        queued
    }

    /// Queues an update, waiting for room: for a background task that
    /// must not drop one (the fleet's follower). Never published to the
    /// fleet. `false`: the writer has stopped.
    pub async fn submit_wait(&self, update: PolicyUpdate) -> bool {
        self.tx.send(update).await.is_ok()
    }

    /// This handle, with every update it submits also published to the
    /// fleet through `outbox`.
    pub fn publishing_to(mut self, outbox: Arc<dyn Tee>) -> Self {
        self.fleet = Some(outbox);
        self
    }

    /// This handle without the fleet: what the fleet's own updates are
    /// applied through, so they are never published back.
    pub fn local(&self) -> Self {
        Self {
            fleet: None,
            ..self.clone()
        }
    }

    /// Where updates are also published, in fleet mode.
    pub fn fleet(&self) -> Option<&dyn Tee> {
        self.fleet.as_deref()
    }

    /// Updates dropped because the queue was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Bans the writer evicted or refused because a ban map was full.
    pub fn full_counters(&self) -> &FullCounters {
        &self.full
    }

    /// Writes the writer could not make (an update, a publish or a sweep
    /// the kernel refused): each is also logged at warn, this is what an
    /// alert watches.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The writer side: owns the sink and applies queued updates in batches.
pub struct PolicyWriter {
    rx: mpsc::Receiver<PolicyUpdate>,
    /// Budgets last written per source, to skip rewriting unchanged ones.
    written_budgets: HashMap<IpAddr, Budget>,
    full: Arc<FullCounters>,
    failed: Arc<AtomicU64>,
}

/// Largest batch applied at once, and the bound on remembered budgets.
const BATCH: usize = 256;
const REMEMBERED_BUDGETS: usize = 100_000;

pub fn channel(capacity: usize) -> (PolicyHandle, PolicyWriter) {
    let (tx, rx) = mpsc::channel(capacity);
    let full = Arc::<FullCounters>::default();
    let failed = Arc::<AtomicU64>::default();
    (
        PolicyHandle {
            tx,
            overflowed: Arc::default(),
            full: full.clone(),
            failed: failed.clone(),
            fleet: None,
        },
        PolicyWriter {
            rx,
            written_budgets: HashMap::new(),
            full,
            failed,
        },
    )
}

impl PolicyWriter {
    /// Runs until every handle is dropped, sweeping expired bans every `sweep`.
    pub async fn run(mut self, mut sink: impl PolicySink, sweep: Duration) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut ticker = tokio::time::interval(sweep);
        loop {
            tokio::select! {
                received = self.rx.recv_many(&mut batch, BATCH) => {
                    if received == 0 {
                        return;
                    }
                    self.apply_batch(&mut sink, &mut batch);
                }
                _ = ticker.tick() => {
                    match sink.remove_expired_bans(monotonic_ns()) {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(expired = n, "removed expired bans"),
                        Err(error) => {
                            self.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%error, "sweeping expired bans failed");
                        }
                    }
                }
            }
        }
    }

    /// Applies the last update per slot, in the order those last updates
    /// arrived, skipping budgets that are already in place.
    fn apply_batch(&mut self, sink: &mut impl PolicySink, batch: &mut Vec<PolicyUpdate>) {
        let mut last: HashMap<(BanTarget, bool), usize> = HashMap::with_capacity(batch.len());
        for (index, update) in batch.iter().enumerate() {
            last.insert(slot(update), index);
        }
        for (index, update) in batch.drain(..).enumerate() {
            if last.get(&slot(&update)) != Some(&index) {
                continue;
            }
            match &update {
                &PolicyUpdate::Budget { ip, budget } => {
                    if self.written_budgets.get(&ip) == Some(&budget) {
                        continue;
                    }
                    if self.written_budgets.len() >= REMEMBERED_BUDGETS {
                        self.written_budgets.clear();
                    }
                    self.written_budgets.insert(ip, budget);
                }
                PolicyUpdate::ClearBudget { ip } => {
                    self.written_budgets.remove(ip);
                }
                _ => {}
            }
            match sink.apply(&update) {
                Ok(written) => self.full.record(&written, monotonic_ns()),
                Err(error) => {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, ?update, "applying a policy update failed");
                }
            }
        }
        if let Err(error) = sink.commit() {
            self.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "publishing policy updates failed");
        }
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
