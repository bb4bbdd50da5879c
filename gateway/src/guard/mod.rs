//! Kernel feedback: what the request path learns about a client address,
//! turned into policy. Plain data, no HTTP, time from the caller.
//!
//! Requests are judged by their client address ([`Remote::client`]): the
//! TCP peer, or for a peer in `trusted_proxies` the address its
//! `X-Forwarded-For` names (see `proxy::source`).
//!
//! - A packet source a client authenticated from gets its tier's kernel
//!   budget (the highest tier seen there wins), back to the default once no
//!   client has authenticated from it for `budget_idle`.
//! - A client that keeps sending after its 429s (more than `excess` refused
//!   requests before its window frees up) is banned until its quota is
//!   whole again; each repeat offence doubles the ban, up to `max_ban`. If
//!   another client at its address is in good standing (authenticated
//!   there within `auth_failure_window`, no 429 within it), only that
//!   client at that address is banned, in userspace; otherwise the address.
//! - An address with more than `auth_failures` refusals that suggest
//!   guessing (`is_guessing`: not expired or rotated-away credentials)
//!   within `auth_failure_window` is banned for `auth_failure_ban`,
//!   doubling likewise.
//! - An address is banned in the kernel only when it is the packet source;
//!   one learnt from `X-Forwarded-For` is banned in userspace (its packets
//!   come from the proxy, which must not be dropped).
//! - A prefix whose addresses together send more than
//!   `prefix_auth_failures` such refusals within `auth_failure_window` is
//!   banned likewise, however few each address sends ([`pressure`]).
//! - When `prefix_threshold` addresses of one IPv6 /64 or IPv4 /24
//!   (`prefix_len_v6`, `prefix_len_v4`) are banned at once, the prefix is,
//!   and their own bans are lifted ([`escalation`]).
//! - `[xdp] allow` networks and `trusted_proxies` are never banned (a
//!   client there that ignores its 429s is banned alone instead); in
//!   `monitor` mode nothing is banned, the would-be bans are only logged
//!   and counted.
//!
//! The guard only decides: it returns [`PolicyUpdate`]s, which the caller
//! hands to the batched policy writer, so the request path makes no syscall.
mod escalation;
#[cfg(test)]
mod escalation_tests;
mod memo;
mod policy;
mod pressure;
#[cfg(test)]
mod pressure_tests;
mod settings;
mod state;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use gateway_common::ban_reason;

pub use self::escalation::PrefixSettings;
pub use self::memo::ReportMemo;
pub use self::policy::{BanTarget, PolicyUpdate, Remote};
pub use self::pressure::PREFIX_AUTH_FAILURES_SCALE;
pub use self::settings::{GuardCounters, GuardMode, GuardSettings};
use self::state::{Excess, SourceState};

const SHARDS: usize = 64;
/// Addresses remembered per shard before idle ones are dropped: at most
/// 1 Mi addresses, about 100 bytes each (more with clients, at most 8).
#[cfg(not(test))]
const PER_SHARD: usize = 16 * 1024;
#[cfg(test)]
const PER_SHARD: usize = 64;
/// Prefixes whose new addresses found their shard full, judged together.
const OVERFLOW: usize = 64 * 1024;

pub struct SourceGuard {
    /// Swapped whole by a configuration reload; the state stays.
    settings: arc_swap::ArcSwap<GuardSettings>,
    shards: Vec<Mutex<HashMap<IpAddr, SourceState>>>,
    /// By prefix network address: see [`SourceGuard::with_source`].
    overflow: Mutex<HashMap<IpAddr, SourceState>>,
    prefixes: Mutex<escalation::Prefixes>,
    hasher: RandomState,
    pub counters: GuardCounters,
}

impl SourceGuard {
    pub fn new(settings: GuardSettings) -> Self {
        Self {
            settings: arc_swap::ArcSwap::from_pointee(settings),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            overflow: Mutex::default(),
            prefixes: Mutex::default(),
            hasher: RandomState::new(),
            counters: GuardCounters::default(),
        }
    }

    pub fn settings(&self) -> Arc<GuardSettings> {
        self.settings.load_full()
    }

    /// New thresholds (a configuration reload); what the guard knows of
    /// sources is kept.
    pub fn set_settings(&self, settings: GuardSettings) {
        self.settings.store(Arc::new(settings));
    }

    /// Runs `f` on the state of `ip`. Memory stays bounded under floods
    /// of new addresses: a full shard drops its idle ones first; if it is
    /// still full, the new address is judged on the state of its prefix
    /// (`prefix_len_v4`/`_v6`) in a table of its own, so a rotation
    /// through a /64 costs one entry and is still counted; if that table
    /// is full too, on a blank state that is not kept.
    fn with_source<T>(&self, ip: IpAddr, now_ns: u64, f: impl FnOnce(&mut SourceState) -> T) -> T {
        self.with_state(ip, true, now_ns, f)
    }

    /// [`SourceGuard::with_source`]; `by_prefix: false` never falls back
    /// to the prefix's state (to record one address's ban).
    fn with_state<T>(
        &self,
        ip: IpAddr,
        by_prefix: bool,
        now_ns: u64,
        f: impl FnOnce(&mut SourceState) -> T,
    ) -> T {
        let ip = ip.to_canonical();
        let shard = &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS];
        let prefix = self.settings.load().prefix.prefix_of(ip).network();
        let tables = [(shard, ip, PER_SHARD), (&self.overflow, prefix, OVERFLOW)];
        for (table, key, room) in tables.into_iter().take(1 + usize::from(by_prefix)) {
            let mut table = table
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if table.len() >= room && !table.contains_key(&key) {
                table.retain(|_, source| !source.idle(now_ns, 0));
                if table.len() >= room {
                    continue;
                }
            }
            return f(table.entry(key).or_default());
        }
        f(&mut SourceState::default())
    }

    fn client_hash(&self, client: &str) -> u64 {
        self.hasher.hash_one(client)
    }

    /// Whether `ip` is allow-listed or a trusted proxy: never banned, and
    /// not held to the per-source connection cap (many clients share it).
    pub fn spared(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let settings = self.settings.load();
        (settings.allow.iter())
            .chain(&settings.trusted_proxies)
            .any(|net| net.contains(&ip))
    }

    /// Client `client` of tier `rank` (0 = lowest) authenticated from
    /// `remote`: it is in good standing at its address, and the packet
    /// source gets the tier's budget. Returns the budget to write when it
    /// rises. The hot path: one sharded lock (two behind a proxy).
    pub fn authenticated(
        &self,
        remote: Remote,
        client: &str,
        rank: usize,
        now_ns: u64,
    ) -> Option<PolicyUpdate> {
        let id = Some(self.client_hash(client));
        let raise = (self.settings.load().tier_budgets.get(rank)).map(|b| (rank as u32 + 1, *b));
        let budget = if remote.forwarded() {
            self.with_source(remote.client, now_ns, |s| s.authenticated(id, None, now_ns));
            self.with_source(remote.peer, now_ns, |s| {
                s.authenticated(None, raise, now_ns)
            })
        } else {
            self.with_source(remote.peer, now_ns, |s| s.authenticated(id, raise, now_ns))
        }?;
        Some(PolicyUpdate::Budget {
            ip: remote.peer,
            budget,
        })
    }

    /// A request of `client` from `remote` was refused with 429; `reset`
    /// is how long until its quota is whole again. Returns a ban once it
    /// has sent more than `excess` refused requests in that time: of the
    /// client alone at its address while others there are in good
    /// standing (or the address is spared), else of the address.
    pub fn rate_limited(
        &self,
        remote: Remote,
        client: &str,
        reset: Duration,
        now_ns: u64,
    ) -> Option<PolicyUpdate> {
        let settings = self.settings.load();
        // Off bans nothing, so there is nothing to count towards one: a
        // 429 flood costs no shard lock.
        if settings.mode == GuardMode::Off {
            return None;
        }
        let (id, standing_ns) = (
            self.client_hash(client),
            duration_ns(settings.auth_failure_window),
        );
        let spared = self.spared(remote.client);
        let (target, length) = self.with_source(remote.client, now_ns, |source| {
            match source.rate_limited(id, reset, settings.excess, standing_ns, now_ns) {
                Excess::Tolerated => None,
                Excess::Address if !spared => Some((
                    address(remote),
                    self.ban_length(&mut source.offences, reset),
                )),
                excess => {
                    if excess == Excess::Address {
                        self.counters
                            .allowed_sources_spared
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    let length = self.ban_length(&mut source.client(id).offences, reset);
                    let target = BanTarget::Client {
                        client: client.into(),
                        ip: remote.client,
                    };
                    Some((target, length))
                }
            }
        })?;
        self.ban(target, length, ban_reason::RATE_LIMIT, now_ns)
    }

    /// A credential from `remote` was refused in a way that suggests
    /// guessing (401, not "no credential", not expired): a ban of its
    /// address, or of its prefix when the prefix as a whole is guessing.
    pub fn auth_failed(&self, remote: Remote, now_ns: u64) -> Option<PolicyUpdate> {
        let settings = self.settings.load();
        if settings.mode == GuardMode::Off {
            return None;
        }
        let window_ns = duration_ns(settings.auth_failure_window);
        let ban = self.with_source(remote.client, now_ns, |source| {
            (source.auth_failed(settings.auth_failures, window_ns, now_ns))
                .then(|| self.ban_length(&mut source.offences, settings.auth_failure_ban))
        });
        if let Some(prefix) = self.prefix_guessed(remote, now_ns) {
            return Some(prefix);
        }
        self.ban(address(remote), ban?, ban_reason::AUTH_FAILURES, now_ns)
    }

    /// Counts the offence and returns the ban's length: `base` (at least
    /// `min_ban`) doubled per earlier offence, at most `max_ban`.
    fn ban_length(&self, offences: &mut u32, base: Duration) -> Duration {
        *offences = offences.saturating_add(1);
        let doubled = base
            .max(self.settings.load().min_ban)
            .saturating_mul(1u32 << (*offences - 1).min(20));
        doubled.min(self.settings.load().max_ban)
    }

    fn ban(
        &self,
        target: BanTarget,
        length: Duration,
        reason: u32,
        now_ns: u64,
    ) -> Option<PolicyUpdate> {
        let counters = &self.counters;
        let ip = target.ip();
        let kind = target.kind();
        if !matches!(target, BanTarget::Client { .. }) && self.spared(ip) {
            counters
                .allowed_sources_spared
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%ip, reason, "allow-listed or trusted address not banned");
            return None;
        }
        match self.settings.load().mode {
            GuardMode::Off => return None,
            GuardMode::Monitor => {
                counters.monitored_bans.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%ip, kind, reason, seconds = length.as_secs_f64(), "would ban (monitor mode)");
                return None;
            }
            GuardMode::Enforce => {}
        }
        let until_ns = now_ns.saturating_add(duration_ns(length));
        let client_hash = match &target {
            BanTarget::Client { client, .. } => Some(self.client_hash(client)),
            _ => None,
        };
        self.with_state(ip, false, now_ns, |source| match client_hash {
            Some(id) => source.client(id).banned_until_ns = until_ns,
            None => source.banned_until_ns = until_ns,
        });
        let counter = if reason == ban_reason::AUTH_FAILURES {
            &counters.auth_failure_bans
        } else {
            &counters.rate_limit_bans
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match &target {
            BanTarget::Source(_) | BanTarget::SourcePrefix(_) => {}
            BanTarget::ForwardedPrefix(_) => {}
            BanTarget::Forwarded(_) => _ = counters.forwarded_bans.fetch_add(1, Ordering::Relaxed),
            BanTarget::Client { .. } => _ = counters.client_bans.fetch_add(1, Ordering::Relaxed),
        }
        let client = match &target {
            BanTarget::Client { client, .. } => Some(client.as_ref()),
            _ => None,
        };
        tracing::warn!(%ip, kind, client, reason, seconds = length.as_secs_f64(), "banning");
        Some(PolicyUpdate::Ban {
            target,
            until_ns,
            reason,
        })
    }

    /// Returns tier budgets that went idle to the default, and forgets
    /// addresses and clients with nothing left to remember. Run every few
    /// seconds.
    pub fn sweep(&self, now_ns: u64) -> Vec<PolicyUpdate> {
        let idle_ns = duration_ns(self.settings.load().budget_idle);
        // Offences are remembered for as long as the longest ban.
        let keep_ns = duration_ns(self.settings.load().max_ban).max(idle_ns);
        let mut updates = Vec::new();
        for shard in self.shards.iter().chain([&self.overflow]) {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (ip, source) in shard.iter_mut() {
                if source.budget_tier > 0
                    && source.last_authenticated_ns.saturating_add(idle_ns) <= now_ns
                {
                    source.budget_tier = 0;
                    updates.push(PolicyUpdate::ClearBudget { ip: *ip });
                }
                source.forget_idle_clients(now_ns, keep_ns);
            }
            if shard.len() > PER_SHARD / 2 {
                shard.retain(|_, source| !source.idle(now_ns, 0));
            } else {
                shard.retain(|_, source| !source.idle(now_ns, keep_ns));
            }
        }
        let mut prefixes = self.prefixes.lock().unwrap_or_else(|p| p.into_inner());
        prefixes.forget_idle(now_ns);
        updates
    }
}

/// The ban of `remote`'s client address: in the kernel if it is the
/// packet source, else in userspace.
fn address(remote: Remote) -> BanTarget {
    match remote.forwarded() {
        true => BanTarget::Forwarded(remote.client),
        false => BanTarget::Source(remote.client),
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
