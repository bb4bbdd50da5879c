//! Kernel feedback: what the request path learns about a source address,
//! turned into kernel policy. Plain data, no HTTP, time from the caller.
//!
//! - A source a client authenticated from gets its tier's kernel budget
//!   (the highest tier seen there wins), back to the default once no client
//!   has authenticated from it for `budget_idle`.
//! - A source that keeps sending after its 429s (more than `excess` refused
//!   requests before its window frees up) is banned until its quota is
//!   whole again; each repeat offence doubles the ban, up to `max_ban`.
//! - A source with more than `auth_failures` refused credentials within
//!   `auth_failure_window` (key or token guessing) is banned for
//!   `auth_failure_ban`, doubling likewise.
//! - Allow-listed networks are never banned; in `monitor` mode nothing is
//!   banned, the would-be bans are only logged and counted.
//!
//! The guard only decides: it returns [`PolicyUpdate`]s, which the caller
//! hands to the batched policy writer, so the request path makes no syscall.
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use gateway_common::{ban_reason, Budget};
use ipnet::IpNet;
use serde::Deserialize;

/// One change to kernel policy for a source: what the guard decides and
/// the policy writer (`xdp::policy`) applies, to the kernel's maps or to
/// the userspace fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyUpdate {
    Ban {
        ip: IpAddr,
        until_ns: u64,
        reason: u32,
    },
    Unban {
        ip: IpAddr,
    },
    Budget {
        ip: IpAddr,
        budget: Budget,
    },
    /// Back to the default budget.
    ClearBudget {
        ip: IpAddr,
    },
}

/// Whether the guard bans.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Bans are issued.
    #[default]
    Enforce,
    /// Would-be bans are logged and counted; nothing is banned.
    Monitor,
    /// No bans at all (tier budgets still follow clients).
    Off,
}

/// The guard's thresholds (config `[guard]`).
#[derive(Clone, Debug)]
pub struct GuardSettings {
    pub mode: GuardMode,
    /// Requests refused with 429 that a source may still send before its
    /// window frees up; one more is a ban.
    pub excess: u32,
    pub auth_failures: u32,
    pub auth_failure_window: Duration,
    pub auth_failure_ban: Duration,
    /// Shortest and longest ban.
    pub min_ban: Duration,
    pub max_ban: Duration,
    /// How long a tier budget outlives the last authenticated request.
    pub budget_idle: Duration,
    /// Never banned (the kernel's allow-list, too).
    pub allow: Vec<IpNet>,
    /// Kernel budgets by tier, lowest tier first (as config lists them).
    pub tier_budgets: Vec<Budget>,
}

/// What the guard remembers about one source.
#[derive(Clone, Debug, Default)]
struct Source {
    /// Rank + 1 of the tier whose budget is in place; 0: the default.
    budget_tier: u32,
    last_authenticated_ns: u64,
    /// Refusals (429) since `excess_since_ns`, until `excess_until_ns`.
    excess: u32,
    excess_until_ns: u64,
    auth_failures: u32,
    auth_window_until_ns: u64,
    banned_until_ns: u64,
    offences: u32,
}

impl Source {
    fn idle(&self, now_ns: u64, keep_ns: u64) -> bool {
        self.budget_tier == 0
            && self.banned_until_ns <= now_ns
            && self.excess_until_ns <= now_ns
            && self.auth_window_until_ns <= now_ns
            && self.last_authenticated_ns.saturating_add(keep_ns) <= now_ns
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct GuardCounters {
    pub rate_limit_bans: AtomicU64,
    pub auth_failure_bans: AtomicU64,
    /// Bans not issued because of `monitor` mode.
    pub monitored_bans: AtomicU64,
    /// Bans not issued because the source is allow-listed.
    pub allowed_sources_spared: AtomicU64,
}

const SHARDS: usize = 64;
/// Sources remembered per shard before idle ones are dropped.
const PER_SHARD: usize = 16 * 1024;

pub struct SourceGuard {
    settings: GuardSettings,
    shards: Vec<Mutex<HashMap<IpAddr, Source>>>,
    hasher: RandomState,
    pub counters: GuardCounters,
}

impl SourceGuard {
    pub fn new(settings: GuardSettings) -> Self {
        Self {
            settings,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            counters: GuardCounters::default(),
        }
    }

    pub fn settings(&self) -> &GuardSettings {
        &self.settings
    }

    /// Runs `f` on the state of `ip`. Memory stays bounded under floods
    /// of new sources: a full shard drops its idle sources first, and if
    /// it is still full the new source is judged on a blank state that is
    /// not kept.
    fn with_source<T>(&self, ip: IpAddr, now_ns: u64, f: impl FnOnce(&mut Source) -> T) -> T {
        let ip = ip.to_canonical();
        let mut shard = self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if shard.len() >= PER_SHARD && !shard.contains_key(&ip) {
            shard.retain(|_, source| !source.idle(now_ns, 0));
            if shard.len() >= PER_SHARD {
                return f(&mut Source::default());
            }
        }
        f(shard.entry(ip).or_default())
    }

    /// A client of tier `rank` (0 = lowest) authenticated from `ip`. Returns
    /// the budget to write when it raises the source's budget. The hot path:
    /// one sharded lock, usually no update.
    pub fn authenticated(&self, ip: IpAddr, rank: usize, now_ns: u64) -> Option<PolicyUpdate> {
        let budget = *self.settings.tier_budgets.get(rank)?;
        let tier = rank as u32 + 1;
        self.with_source(ip, now_ns, |source| {
            source.last_authenticated_ns = now_ns;
            (source.budget_tier < tier).then(|| {
                source.budget_tier = tier;
                PolicyUpdate::Budget {
                    ip: ip.to_canonical(),
                    budget: Budget { tier, ..budget },
                }
            })
        })
    }

    /// A request from `ip` was refused with 429; `reset` is how long until
    /// its quota is whole again. Returns a ban once the source has sent
    /// more than `excess` refused requests in that time.
    pub fn rate_limited(&self, ip: IpAddr, reset: Duration, now_ns: u64) -> Option<PolicyUpdate> {
        let excess = self.settings.excess;
        let ban = self.with_source(ip, now_ns, |source| {
            if source.excess_until_ns <= now_ns {
                source.excess = 0;
            }
            source.excess += 1;
            source.excess_until_ns = now_ns.saturating_add(duration_ns(reset));
            (source.excess > excess && source.banned_until_ns <= now_ns).then(|| {
                source.excess = 0;
                self.ban_length(source, reset)
            })
        })?;
        self.ban(ip, ban, ban_reason::RATE_LIMIT, now_ns)
    }

    /// A credential from `ip` was refused (401 other than "no credential").
    pub fn auth_failed(&self, ip: IpAddr, now_ns: u64) -> Option<PolicyUpdate> {
        let settings = &self.settings;
        let ban = self.with_source(ip, now_ns, |source| {
            if source.auth_window_until_ns <= now_ns {
                source.auth_failures = 0;
                source.auth_window_until_ns =
                    now_ns.saturating_add(duration_ns(settings.auth_failure_window));
            }
            source.auth_failures += 1;
            (source.auth_failures > settings.auth_failures && source.banned_until_ns <= now_ns)
                .then(|| {
                    source.auth_failures = 0;
                    self.ban_length(source, settings.auth_failure_ban)
                })
        })?;
        self.ban(ip, ban, ban_reason::AUTH_FAILURES, now_ns)
    }

    /// Counts the offence and returns the ban's length: `base` (at least
    /// `min_ban`) doubled per earlier offence, at most `max_ban`.
    fn ban_length(&self, source: &mut Source, base: Duration) -> Duration {
        source.offences = source.offences.saturating_add(1);
        let doubled = base
            .max(self.settings.min_ban)
            .saturating_mul(1u32 << (source.offences - 1).min(20));
        doubled.min(self.settings.max_ban)
    }

    fn ban(&self, ip: IpAddr, length: Duration, reason: u32, now_ns: u64) -> Option<PolicyUpdate> {
        let ip = ip.to_canonical();
        let counters = &self.counters;
        if self.settings.allow.iter().any(|net| net.contains(&ip)) {
            counters
                .allowed_sources_spared
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%ip, reason, "allow-listed source not banned");
            return None;
        }
        match self.settings.mode {
            GuardMode::Off => return None,
            GuardMode::Monitor => {
                counters.monitored_bans.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%ip, reason, seconds = length.as_secs_f64(), "would ban (monitor mode)");
                return None;
            }
            GuardMode::Enforce => {}
        }
        let until_ns = now_ns.saturating_add(duration_ns(length));
        self.with_source(ip, now_ns, |source| source.banned_until_ns = until_ns);
        let counter = if reason == ban_reason::AUTH_FAILURES {
            &counters.auth_failure_bans
        } else {
            &counters.rate_limit_bans
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%ip, reason, seconds = length.as_secs_f64(), "banning source");
        Some(PolicyUpdate::Ban {
            ip,
            until_ns,
            reason,
        })
    }

    /// Returns tier budgets that went idle to the default, and forgets
    /// sources with nothing left to remember. Run every few seconds.
    pub fn sweep(&self, now_ns: u64) -> Vec<PolicyUpdate> {
        let idle_ns = duration_ns(self.settings.budget_idle);
        // Offences are remembered for as long as the longest ban.
        let keep_ns = duration_ns(self.settings.max_ban).max(idle_ns);
        let mut updates = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (ip, source) in shard.iter_mut() {
                if source.budget_tier > 0
                    && source.last_authenticated_ns.saturating_add(idle_ns) <= now_ns
                {
                    source.budget_tier = 0;
                    updates.push(PolicyUpdate::ClearBudget { ip: *ip });
                }
            }
            if shard.len() > PER_SHARD / 2 {
                shard.retain(|_, source| !source.idle(now_ns, 0));
            } else {
                shard.retain(|_, source| !source.idle(now_ns, keep_ns));
            }
        }
        updates
    }
}

/// One worker's memory of which sources it told the guard about, so a
/// busy source does not make every worker queue on the same guard shard:
/// a worker reports a source at most once per [`ReportMemo::EVERY_NS`],
/// or sooner when a higher tier authenticates from it. Budgets decay over
/// minutes, so a second is plenty. Bounded: a full memo starts over.
#[derive(Debug, Default)]
pub struct ReportMemo {
    reported: Mutex<HashMap<IpAddr, (usize, u64)>>,
}

impl ReportMemo {
    pub const EVERY_NS: u64 = 1_000_000_000;
    const REMEMBERED: usize = 4096;

    /// Whether a client of tier `rank` authenticating from `ip` at `now_ns`
    /// should be reported to the guard; if so, remembers that it was.
    pub fn due(&self, ip: IpAddr, rank: usize, now_ns: u64) -> bool {
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        match reported.get(&ip) {
            Some(&(seen, at)) if seen >= rank && now_ns.saturating_sub(at) < Self::EVERY_NS => {
                false
            }
            _ => {
                if reported.len() >= Self::REMEMBERED {
                    reported.clear();
                }
                reported.insert(ip, (rank, now_ns));
                true
            }
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn settings(mode: GuardMode) -> GuardSettings {
        GuardSettings {
            mode,
            excess: 5,
            auth_failures: 3,
            auth_failure_window: Duration::from_secs(10),
            auth_failure_ban: Duration::from_secs(30),
            min_ban: Duration::from_secs(1),
            max_ban: Duration::from_secs(100),
            budget_idle: Duration::from_secs(60),
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            tier_budgets: (1..=3)
                .map(|n| Budget {
                    syn_per_sec: 100 * n,
                    ..Budget::default()
                })
                .collect(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ban_until(update: Option<PolicyUpdate>) -> u64 {
        match update {
            Some(PolicyUpdate::Ban { until_ns, .. }) => until_ns,
            other => panic!("expected a ban, got {other:?}"),
        }
    }

    #[test]
    fn ignoring_429s_bans_until_the_window_frees_up_then_doubles_to_the_cap() {
        let guard = SourceGuard::new(settings(GuardMode::Enforce));
        let src = ip("10.0.0.1");
        let reset = Duration::from_secs(20);
        let t0 = 1_000 * SEC;
        for i in 0..5 {
            assert_eq!(guard.rate_limited(src, reset, t0 + i), None);
        }
        assert_eq!(
            ban_until(guard.rate_limited(src, reset, t0 + 5)),
            t0 + 5 + 20 * SEC
        );
        // While banned, more refusals (in flight) do not ban again.
        for i in 0..10 {
            assert_eq!(guard.rate_limited(src, reset, t0 + 10 + i), None);
        }
        let t1 = t0 + 30 * SEC;
        let again = (0..6).find_map(|i| guard.rate_limited(src, reset, t1 + i));
        assert_eq!(ban_until(again), t1 + 5 + 40 * SEC);
        let t2 = t1 + 50 * SEC;
        let third = (0..6).find_map(|i| guard.rate_limited(src, reset, t2 + i));
        assert_eq!(ban_until(third), t2 + 5 + 80 * SEC);
        let t3 = t2 + 90 * SEC;
        let capped = (0..6).find_map(|i| guard.rate_limited(src, reset, t3 + i));
        assert_eq!(ban_until(capped), t3 + 5 + 100 * SEC);
        assert_eq!(guard.counters.rate_limit_bans.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn refusals_spread_beyond_the_window_do_not_ban() {
        let guard = SourceGuard::new(settings(GuardMode::Enforce));
        let src = ip("10.0.0.2");
        for i in 0..100 {
            // Each refusal arrives after the previous one's window freed up.
            assert_eq!(
                guard.rate_limited(src, Duration::from_secs(1), i * 2 * SEC),
                None
            );
        }
    }

    #[test]
    fn auth_failure_bursts_ban_but_a_slow_trickle_does_not() {
        let guard = SourceGuard::new(settings(GuardMode::Enforce));
        let src = ip("fd00::7");
        let t0 = 1_000 * SEC;
        for i in 0..3 {
            assert_eq!(guard.auth_failed(src, t0 + i), None);
        }
        assert_eq!(ban_until(guard.auth_failed(src, t0 + 3)), t0 + 3 + 30 * SEC);
        let slow = ip("fd00::8");
        for i in 0..20 {
            assert_eq!(guard.auth_failed(slow, t0 + i * 4 * SEC), None);
        }
    }

    #[test]
    fn allow_listed_and_monitored_sources_are_never_banned() {
        let guard = SourceGuard::new(settings(GuardMode::Enforce));
        for i in 0..20 {
            assert_eq!(guard.auth_failed(ip("::ffff:192.0.2.9"), i), None);
        }
        assert!(
            guard
                .counters
                .allowed_sources_spared
                .load(Ordering::Relaxed)
                > 0
        );
        let monitor = SourceGuard::new(settings(GuardMode::Monitor));
        for i in 0..20 {
            assert_eq!(monitor.auth_failed(ip("10.1.1.1"), i), None);
        }
        assert!(monitor.counters.monitored_bans.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn highest_tier_budget_wins_and_decays_when_idle() {
        let guard = SourceGuard::new(settings(GuardMode::Enforce));
        let src = ip("10.0.0.3");
        let t0 = 1_000 * SEC;
        let silver = guard.authenticated(src, 1, t0);
        assert!(matches!(
            silver,
            Some(PolicyUpdate::Budget { budget, .. }) if budget.syn_per_sec == 200 && budget.tier == 2
        ));
        // Same or lower tier: nothing to write.
        assert_eq!(guard.authenticated(src, 1, t0 + SEC), None);
        assert_eq!(guard.authenticated(src, 0, t0 + SEC), None);
        assert!(matches!(
            guard.authenticated(src, 2, t0 + 2 * SEC),
            Some(PolicyUpdate::Budget { budget, .. }) if budget.tier == 3
        ));
        assert_eq!(guard.sweep(t0 + 30 * SEC), vec![]);
        let swept = guard.sweep(t0 + 2 * SEC + 60 * SEC);
        assert_eq!(swept, vec![PolicyUpdate::ClearBudget { ip: src }]);
        // After decay, a bronze client sets the bronze budget again.
        assert!(guard.authenticated(src, 0, t0 + 100 * SEC).is_some());
    }

    #[test]
    fn sweep_forgets_idle_sources() {
        let guard = SourceGuard::new(settings(GuardMode::Enforce));
        for i in 0..1000u32 {
            guard.auth_failed(IpAddr::from(i.to_be_bytes()), SEC);
        }
        guard.sweep(1_000 * SEC);
        let held: usize = guard.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(held, 0);
    }

    #[test]
    fn a_worker_reports_a_source_once_a_second_unless_its_tier_rises() {
        let memo = ReportMemo::default();
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let t0 = 1_000 * SEC;
        assert!(memo.due(a, 0, t0));
        assert!(!memo.due(a, 0, t0 + SEC - 1));
        assert!(memo.due(b, 0, t0 + 1), "another source is reported");
        assert!(memo.due(a, 2, t0 + 2), "a higher tier is reported at once");
        assert!(!memo.due(a, 1, t0 + 3), "a lower tier is not");
        assert!(memo.due(a, 2, t0 + 2 + SEC), "and again after a second");
    }
}
