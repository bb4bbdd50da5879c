//! The guard's thresholds (config `[guard]`, swapped whole by a reload)
//! and the counters it keeps for metrics.
use std::{sync::atomic::AtomicU64, time::Duration};

use gateway_common::Budget;
use ipnet::IpNet;
use serde::Deserialize;

use super::PrefixSettings;

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
    /// Requests refused with 429 that a client may still send before its
    /// window frees up; one more is a ban.
    pub excess: u32,
    pub auth_failures: u32,
    /// Also how recently another client must have been served for a
    /// source to be in good standing.
    pub auth_failure_window: Duration,
    pub auth_failure_ban: Duration,
    /// Shortest and longest ban.
    pub min_ban: Duration,
    pub max_ban: Duration,
    /// How long a tier budget outlives the last authenticated request.
    pub budget_idle: Duration,
    /// Never banned (the kernel's allow-list, too).
    pub allow: Vec<IpNet>,
    /// Never banned either: `forwarding.trusted_proxies`.
    pub trusted_proxies: Vec<IpNet>,
    /// Kernel budgets by tier, lowest tier first (as config lists them).
    pub tier_budgets: Vec<Budget>,
    /// When banned addresses get their prefix banned.
    pub prefix: PrefixSettings,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct GuardCounters {
    pub rate_limit_bans: AtomicU64,
    pub auth_failure_bans: AtomicU64,
    /// Of those, bans only userspace enforces: of a forwarded address, of
    /// one client at an address.
    pub forwarded_bans: AtomicU64,
    pub client_bans: AtomicU64,
    /// Bans not issued because of `monitor` mode.
    pub monitored_bans: AtomicU64,
    /// Address (or prefix) bans not issued because the address is
    /// allow-listed or a trusted proxy (or the prefix holds one).
    pub allowed_sources_spared: AtomicU64,
    /// Prefixes banned because too many of their addresses were.
    pub prefix_bans: AtomicU64,
}
