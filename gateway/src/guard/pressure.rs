//! Guessing spread across a prefix. An attacker that sends fewer than
//! `auth_failures` guesses per address and rotates through its IPv6 /64
//! (or IPv4 /24) gets no address banned, so [`super::escalation`] never
//! starts. The prefix is therefore also counted as a whole: more than
//! `prefix.auth_failures` refusals that suggest guessing from all its
//! addresses together within `auth_failure_window` ban the prefix for
//! `auth_failure_ban`, doubling per repeat offence of the prefix (shared
//! with escalation), up to `max_ban`, and at least until the address bans
//! it lifts would have ended.
//!
//! Unset, the prefix's allowance is [`PREFIX_AUTH_FAILURES_SCALE`]
//! addresses' worth, so a NAT'd /24 or a shared /64 needs several clients
//! guessing at once (expired or rotated-away credentials never count) to
//! reach it. A prefix overlapping the allow-list or a trusted proxy is
//! never counted. The state lives in escalation's bounded prefix table.
use std::{sync::atomic::Ordering, time::Duration};

use gateway_common::ban_reason;

use super::{
    duration_ns, escalation::PrefixState, BanTarget, GuardMode, PolicyUpdate, Remote, SourceGuard,
};

/// An unset `prefix_auth_failures` is this many times `auth_failures`.
pub const PREFIX_AUTH_FAILURES_SCALE: u32 = 5;

impl PrefixState {
    /// A refusal that suggests guessing from one of its addresses: whether
    /// it is one too many within the window (`window_ns` from the first),
    /// the prefix not banned already.
    fn guessed(&mut self, allowance: u32, window_ns: u64, now_ns: u64) -> bool {
        if self.auth_window_until_ns <= now_ns {
            self.auth_failures = 0;
            self.auth_window_until_ns = now_ns.saturating_add(window_ns);
        }
        self.auth_failures = self.auth_failures.saturating_add(1);
        if self.auth_failures > allowance && self.banned_until_ns <= now_ns {
            self.auth_failures = 0;
            return true;
        }
        false
    }
}

impl SourceGuard {
    /// Counts a refusal that suggests guessing from `remote` against its
    /// client address's prefix; returns the prefix's ban when the prefix
    /// as a whole is over its allowance.
    pub(super) fn prefix_guessed(&self, remote: Remote, now_ns: u64) -> Option<PolicyUpdate> {
        let settings = self.settings.load();
        let allowance = settings.prefix.auth_failures;
        if allowance == 0 || settings.mode == GuardMode::Off {
            return None;
        }
        let net = settings.prefix.prefix_of(remote.client);
        if self.overlaps_spared(&net) {
            return None;
        }
        let window_ns = duration_ns(settings.auth_failure_window);
        let until_ns = {
            let mut prefixes = self.prefixes.lock().unwrap_or_else(|p| p.into_inner());
            // A full table of busy prefixes: its addresses are still
            // counted one by one.
            let prefix = prefixes.get((net, remote.forwarded()), now_ns)?;
            if !prefix.guessed(allowance, window_ns, now_ns) {
                return None;
            }
            if settings.mode == GuardMode::Monitor {
                None
            } else {
                let length = self.ban_length(&mut prefix.offences, settings.auth_failure_ban);
                // It lifts the address bans it covers: not sooner than they end.
                prefix.banned_until_ns =
                    (now_ns.saturating_add(duration_ns(length))).max(prefix.members_until_ns());
                Some(prefix.banned_until_ns)
            }
        };
        let Some(until_ns) = until_ns else {
            self.counters.monitored_bans.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%net, "would ban the prefix for guessing (monitor mode)");
            return None;
        };
        let target = match remote.forwarded() {
            true => BanTarget::ForwardedPrefix(net),
            false => BanTarget::SourcePrefix(net),
        };
        self.counters
            .auth_failure_bans
            .fetch_add(1, Ordering::Relaxed);
        let seconds = Duration::from_nanos(until_ns.saturating_sub(now_ns)).as_secs_f64();
        tracing::warn!(%net, kind = target.kind(), seconds, "banning the prefix: guessing across its addresses");
        Some(PolicyUpdate::Ban {
            target,
            until_ns,
            reason: ban_reason::AUTH_FAILURES,
        })
    }
}
