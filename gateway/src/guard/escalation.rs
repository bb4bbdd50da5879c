//! Prefix escalation: an attacker rotating through its IPv6 /64 (or IPv4
//! /24) gets each address banned in turn and is never stopped, while its
//! bans fill `GW_BANS`. Once `threshold` addresses of one prefix hold a
//! ban at the same time, the guard bans the prefix instead, until the
//! latest of theirs ends (doubling per repeat offence of the prefix, up to
//! `max_ban`), and lifts the address bans it covers.
//!
//! A prefix overlapping the allow-list or a trusted proxy is never banned
//! (its addresses stay banned one by one), nor one holding the IPv4-mapped
//! range the kernel keys IPv4 under. Memory is bounded: at most
//! `threshold` addresses per prefix and [`PREFIXES`] prefixes, idle ones
//! forgotten first.
use std::{collections::HashMap, net::IpAddr, sync::atomic::Ordering, time::Duration};

use gateway_common::ban_reason;
use ipnet::IpNet;

use super::{duration_ns, BanTarget, GuardMode, PolicyUpdate};

/// Prefixes remembered at once.
pub(super) const PREFIXES: usize = 64 * 1024;

/// When and how wide to escalate (config `[guard] prefix_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixSettings {
    /// Banned addresses of one prefix that ban the prefix; 0: never.
    pub threshold: u32,
    pub v4_len: u8,
    pub v6_len: u8,
    /// Refusals that suggest guessing a prefix may send, all its addresses
    /// together, within `auth_failure_window`; 0: never (see [`super::pressure`]).
    pub auth_failures: u32,
}

impl Default for PrefixSettings {
    fn default() -> Self {
        Self {
            threshold: 8,
            v4_len: 24,
            v6_len: 64,
            auth_failures: super::pressure::PREFIX_AUTH_FAILURES_SCALE * 20,
        }
    }
}

impl PrefixSettings {
    /// The prefix `ip` (canonical) is judged in.
    pub fn prefix_of(&self, ip: IpAddr) -> IpNet {
        let len = match ip {
            IpAddr::V4(_) => self.v4_len,
            IpAddr::V6(_) => self.v6_len,
        };
        IpNet::new(ip, len)
            .unwrap_or_else(|_| IpNet::from(ip))
            .trunc()
    }
}

/// One prefix: its banned addresses (each until when), its own ban, and
/// its guessing window (see [`super::pressure`]).
#[derive(Clone, Debug, Default)]
pub(super) struct PrefixState {
    members: Vec<(IpAddr, u64)>,
    pub banned_until_ns: u64,
    pub offences: u32,
    pub auth_failures: u32,
    pub auth_window_until_ns: u64,
}

impl PrefixState {
    fn idle(&self, now_ns: u64) -> bool {
        self.banned_until_ns <= now_ns
            && self.auth_window_until_ns <= now_ns
            && self.members.iter().all(|(_, until)| *until <= now_ns)
    }

    /// When the last of the address bans it holds ends (0: none).
    pub fn members_until_ns(&self) -> u64 {
        self.members
            .iter()
            .map(|(_, until)| *until)
            .max()
            .unwrap_or(0)
    }

    /// The addresses it holds banned, forgotten (their bans to be lifted:
    /// the prefix's own ban covers them).
    pub fn take_members(&mut self) -> Vec<IpAddr> {
        self.members.drain(..).map(|(ip, _)| ip).collect()
    }

    /// `ip` is banned until `until_ns`: the covered addresses and the
    /// latest of their bans when that makes `threshold`, else `None`.
    pub fn banned(
        &mut self,
        ip: IpAddr,
        until_ns: u64,
        threshold: u32,
        now_ns: u64,
    ) -> Option<(Vec<IpAddr>, u64)> {
        if threshold == 0 || self.banned_until_ns > now_ns {
            return None;
        }
        self.members.retain(|(_, until)| *until > now_ns);
        match self.members.iter_mut().find(|(member, _)| *member == ip) {
            Some(member) => member.1 = member.1.max(until_ns),
            None => self.members.push((ip, until_ns)),
        }
        if self.members.len() < threshold as usize {
            return None;
        }
        let latest = self.members.iter().map(|(_, until)| *until).max()?;
        Some((self.take_members(), latest))
    }
}

/// Every prefix the guard follows, by prefix and whether its addresses
/// are forwarded (banned in userspace) or packet sources (in the kernel).
#[derive(Debug, Default)]
pub(super) struct Prefixes {
    map: HashMap<(IpNet, bool), PrefixState>,
    /// When a full table last looked for idle prefixes: at most once a
    /// second, so a flood of bans does not scan it for each one.
    pruned_ns: u64,
}

impl Prefixes {
    /// The state of `key`, made room for (idle prefixes go first); `None`
    /// if the table is still full.
    pub fn get(&mut self, key: (IpNet, bool), now_ns: u64) -> Option<&mut PrefixState> {
        if !self.map.contains_key(&key) && self.map.len() >= PREFIXES {
            if now_ns.saturating_sub(self.pruned_ns) < 1_000_000_000 {
                return None;
            }
            self.pruned_ns = now_ns;
            self.forget_idle(now_ns);
            if self.map.len() >= PREFIXES {
                return None;
            }
        }
        Some(self.map.entry(key).or_default())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Forgets prefixes with nothing left to remember.
    pub fn forget_idle(&mut self, now_ns: u64) {
        self.map.retain(|_, prefix| !prefix.idle(now_ns));
    }
}

impl super::SourceGuard {
    /// What follows from a ban the guard issued (`update`, as returned by
    /// [`super::SourceGuard::rate_limited`] or `auth_failed`): when it
    /// makes its prefix's `threshold`, the prefix's ban and the lifting of
    /// the address bans it covers; for a prefix's own ban (guessing across
    /// it), the lifting of those it covers. Feed it every ban the guard issues.
    pub fn escalate(&self, update: &PolicyUpdate, now_ns: u64) -> Vec<PolicyUpdate> {
        let settings = self.settings.load();
        let (ip, forwarded, until_ns) = match update {
            PolicyUpdate::Ban {
                target: BanTarget::SourcePrefix(net),
                ..
            } => return self.lift_covered(*net, false, now_ns),
            PolicyUpdate::Ban {
                target: BanTarget::ForwardedPrefix(net),
                ..
            } => return self.lift_covered(*net, true, now_ns),
            PolicyUpdate::Ban {
                target: BanTarget::Source(ip),
                until_ns,
                ..
            } => (*ip, false, *until_ns),
            PolicyUpdate::Ban {
                target: BanTarget::Forwarded(ip),
                until_ns,
                ..
            } => (*ip, true, *until_ns),
            _ => return Vec::new(),
        };
        let ip = ip.to_canonical();
        if settings.prefix.threshold == 0 || settings.mode != GuardMode::Enforce {
            return Vec::new();
        }
        let net = settings.prefix.prefix_of(ip);
        // Its addresses stay banned one by one; so do those of a prefix
        // whose ban would drop every IPv4 source (`::/64`).
        if self.overlaps_spared(&net) || crate::net::covers_every_v4(&net) {
            return Vec::new();
        }
        let (covered, length) = {
            let mut prefixes = self.prefixes.lock().unwrap_or_else(|p| p.into_inner());
            let Some(prefix) = prefixes.get((net, forwarded), now_ns) else {
                return Vec::new();
            };
            let Some((covered, latest)) =
                prefix.banned(ip, until_ns, settings.prefix.threshold, now_ns)
            else {
                return Vec::new();
            };
            let base = Duration::from_nanos(latest.saturating_sub(now_ns));
            let length = self.ban_length(&mut prefix.offences, base);
            prefix.banned_until_ns = now_ns.saturating_add(duration_ns(length)).max(latest);
            (
                covered,
                Duration::from_nanos(prefix.banned_until_ns - now_ns),
            )
        };
        let target = match forwarded {
            true => BanTarget::ForwardedPrefix(net),
            false => BanTarget::SourcePrefix(net),
        };
        self.counters.prefix_bans.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%net, addresses = covered.len(), forwarded, seconds = length.as_secs_f64(), "banning the prefix (prefix_escalation)");
        let ban = PolicyUpdate::Ban {
            target,
            until_ns: now_ns.saturating_add(duration_ns(length)),
            reason: ban_reason::PREFIX_ESCALATION,
        };
        std::iter::once(ban)
            .chain(covered.into_iter().map(|ip| PolicyUpdate::Unban { ip }))
            .collect()
    }

    /// Unbans the addresses of `net` the guard holds banned, now that the
    /// prefix is.
    fn lift_covered(&self, net: IpNet, forwarded: bool, now_ns: u64) -> Vec<PolicyUpdate> {
        let mut prefixes = self.prefixes.lock().unwrap_or_else(|p| p.into_inner());
        let covered = match prefixes.get((net, forwarded), now_ns) {
            Some(prefix) => prefix.take_members(),
            None => Vec::new(),
        };
        covered
            .into_iter()
            .map(|ip| PolicyUpdate::Unban { ip })
            .collect()
    }

    /// Whether `net` holds (or lies inside) an allow-listed or trusted network.
    pub(super) fn overlaps_spared(&self, net: &IpNet) -> bool {
        let settings = self.settings.load();
        let canonical = |n: &IpNet| crate::net::canonical_net(*n);
        (settings.allow.iter())
            .chain(&settings.trusted_proxies)
            .map(canonical)
            .any(|spared| spared.contains(&net.network()) || net.contains(&spared.network()))
    }
}
