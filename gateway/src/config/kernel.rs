//! The kernel path: the XDP program's settings and the guard that feeds it
//! bans and tier budgets from what requests show.
use std::{path::PathBuf, time::Duration};

use gateway_common::Budget;
use ipnet::IpNet;
use serde::Deserialize;

use super::{
    bounds::{At, COUNT, DAY, MS, YEAR},
    durations,
    identity::TierConfig,
    listen::ListenerConfig,
    ConfigError,
};
use crate::guard::{GuardMode, GuardSettings, PrefixSettings, PREFIX_AUTH_FAILURES_SCALE};
use crate::xdp::{
    syncookies::SynCookies, MapSizes, Mode, UdpPolicy, WhenFull, XdpSettings, DEFAULT_BUDGET,
    DEFAULT_PIN_ROOT,
};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// `false`: no kernel path at all (bans are enforced in userspace).
    pub enabled: bool,
    pub interface: String,
    /// Protected ports; empty means the listeners' ports.
    pub ports: Vec<u16>,
    pub pin_root: PathBuf,
    pub mode: Mode,
    pub require_xdp: bool,
    pub allow: Vec<IpNet>,
    pub default_syn_rate: u32,
    pub default_syn_burst: u32,
    pub default_pkt_rate: u32,
    pub default_pkt_burst: u32,
    pub max_bans: u32,
    pub max_sources: u32,
    /// Detach and unpin on a clean stop (`false`: the program stays
    /// attached with its bans until the next gateway adopts them).
    pub detach_on_exit: bool,
    /// Entries of the prefix-ban map (`GW_PREFIX_BANS`).
    pub max_prefix_bans: u32,
    /// A full ban map: `evict` the ban closest to expiry, or `refuse` the new one.
    pub bans_full: WhenFull,
    /// UDP to a protected port: `pass` or `drop`; never charged to a source.
    pub udp: UdpPolicy,
    /// Spoof-resistant SYN budgets: a source over its SYN budget is
    /// answered with SYN cookies (by XDP or the kernel) and charged only
    /// for completed handshakes (sets `net.ipv4.tcp_syncookies = 2`).
    pub syn_cookies: SynCookies,
    /// Protected SYNs/s from all sources past which every source is in
    /// SYN-cookie mode (0 = per source only; needs `syn_cookies`).
    pub syn_flood_rate: u32,
}

impl Default for XdpConfig {
    fn default() -> Self {
        let sizes = MapSizes::default();
        Self {
            enabled: true,
            interface: "lo".into(),
            ports: Vec::new(),
            pin_root: DEFAULT_PIN_ROOT.into(),
            mode: Mode::Enforce,
            require_xdp: false,
            allow: Vec::new(),
            default_syn_rate: DEFAULT_BUDGET.syn_per_sec,
            default_syn_burst: DEFAULT_BUDGET.syn_burst,
            default_pkt_rate: DEFAULT_BUDGET.pkt_per_sec,
            default_pkt_burst: DEFAULT_BUDGET.pkt_burst,
            max_bans: sizes.bans,
            max_sources: sizes.state,
            detach_on_exit: false,
            max_prefix_bans: sizes.prefix_bans,
            bans_full: WhenFull::Evict,
            udp: UdpPolicy::Pass,
            syn_cookies: SynCookies::Off,
            syn_flood_rate: 0,
        }
    }
}

impl XdpConfig {
    /// Map sizes up to 16 Mi entries.
    const ENTRIES: std::ops::RangeInclusive<u32> = 1..=1 << 24;

    /// Rates may be 0 (unlimited); bursts admit at least one packet.
    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        at.within("default_syn_burst", self.default_syn_burst, 1..=u32::MAX)?;
        at.within("default_pkt_burst", self.default_pkt_burst, 1..=u32::MAX)?;
        at.within("max_bans", self.max_bans, Self::ENTRIES)?;
        at.within("max_prefix_bans", self.max_prefix_bans, Self::ENTRIES)?;
        at.within("max_sources", self.max_sources, Self::ENTRIES)?;
        // Refused here, not half-written by a reload that fills the trie.
        let capacity = MapSizes::default().allow as usize;
        if self.allow.len() > capacity {
            return Err(at.invalid(
                "allow",
                format!(
                    "lists {} networks; the kernel's allow-list holds at most {capacity}",
                    self.allow.len()
                ),
            ));
        }
        if self.syn_flood_rate != 0 && self.syn_cookies == SynCookies::Off {
            return Err(at.invalid(
                "syn_flood_rate",
                "needs syn_cookies = \"xdp\" or \"kernel\" (it switches every source to SYN-cookie mode)",
            ));
        }
        Ok(())
    }

    /// The kernel's budget for a source no tier has claimed.
    fn default_budget(&self) -> Budget {
        Budget {
            syn_per_sec: self.default_syn_rate,
            syn_burst: self.default_syn_burst,
            pkt_per_sec: self.default_pkt_rate,
            pkt_burst: self.default_pkt_burst,
            tier: 0,
        }
    }

    /// The kernel-path settings; no `ports` means the listeners' ports.
    pub(super) fn settings(&self, listeners: &[ListenerConfig]) -> XdpSettings {
        let ports = if self.ports.is_empty() {
            listeners.iter().map(|l| l.address.port()).collect()
        } else {
            self.ports.clone()
        };
        XdpSettings {
            interface: self.interface.clone(),
            ports,
            pin_root: self.pin_root.clone(),
            mode: self.mode,
            require_xdp: self.require_xdp,
            allow: self.allow.clone(),
            default_budget: self.default_budget(),
            sizes: MapSizes {
                bans: self.max_bans,
                state: self.max_sources,
                prefix_bans: self.max_prefix_bans,
                ..MapSizes::default()
            },
            detach_on_exit: self.detach_on_exit,
            bans_full: self.bans_full,
            udp: self.udp,
            syn_cookies: self.syn_cookies,
            syn_flood_rate: self.syn_flood_rate,
        }
    }
}

/// When a source is banned for what its requests do (see [`crate::guard`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// `enforce`, `monitor` (log and count would-be bans) or `off`.
    pub mode: GuardMode,
    /// Requests refused with 429 a source may still send before its
    /// window frees up; one more bans it until then.
    pub excess: u32,
    /// Refused credentials a source may present within
    /// `auth_failure_window`; one more bans it for `auth_failure_ban`.
    pub auth_failures: u32,
    #[serde(with = "durations")]
    pub auth_failure_window: Duration,
    #[serde(with = "durations")]
    pub auth_failure_ban: Duration,
    /// Every ban lasts at least this; repeat offences double it up to `max_ban`.
    #[serde(with = "durations")]
    pub min_ban: Duration,
    #[serde(with = "durations")]
    pub max_ban: Duration,
    /// A source's tier budget returns to the default this long after the
    /// last authenticated request from it.
    #[serde(with = "durations")]
    pub budget_idle: Duration,
    /// Banned addresses of one prefix that get the prefix banned (0: never) ...
    pub prefix_threshold: u32,
    /// ... the prefix: an IPv4 address's /24, an IPv6 address's /64 by default.
    pub prefix_len_v4: u8,
    pub prefix_len_v6: u8,
    /// Refused credentials that suggest guessing a whole prefix may
    /// present within `auth_failure_window`, however few each address
    /// sends; one more bans the prefix for `auth_failure_ban` (0: never).
    /// Unset: `PREFIX_AUTH_FAILURES_SCALE` × `auth_failures`.
    pub prefix_auth_failures: Option<u32>,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            mode: GuardMode::Enforce,
            excess: 20,
            auth_failures: 20,
            auth_failure_window: Duration::from_secs(10),
            auth_failure_ban: Duration::from_secs(60),
            min_ban: Duration::from_secs(1),
            max_ban: Duration::from_secs(3600),
            budget_idle: Duration::from_secs(300),
            prefix_threshold: PrefixSettings::default().threshold,
            prefix_len_v4: PrefixSettings::default().v4_len,
            prefix_len_v6: PrefixSettings::default().v6_len,
            prefix_auth_failures: None,
        }
    }
}

impl GuardConfig {
    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        at.within("excess", self.excess, 0..=COUNT)?;
        at.within("auth_failures", self.auth_failures, 0..=COUNT)?;
        at.within("auth_failure_window", self.auth_failure_window, MS..=DAY)?;
        at.within("auth_failure_ban", self.auth_failure_ban, MS..=YEAR)?;
        at.within("min_ban", self.min_ban, MS..=YEAR)?;
        at.within("max_ban", self.max_ban, MS..=YEAR)?;
        at.within("budget_idle", self.budget_idle, MS..=DAY)?;
        at.within("prefix_threshold", self.prefix_threshold, 0..=65_536)?;
        // A prefix, not one address, and not a whole region of the Internet.
        at.within("prefix_len_v4", u32::from(self.prefix_len_v4), 8..=31)?;
        at.within("prefix_len_v6", u32::from(self.prefix_len_v6), 16..=127)?;
        at.within_opt("prefix_auth_failures", self.prefix_auth_failures, 0..=COUNT)?;
        match self.prefix_auth_failures {
            // A prefix holds at least one address.
            Some(n) if n != 0 && n < self.auth_failures => Err(at.invalid(
                "prefix_auth_failures",
                format!(
                    "must be 0 (never) or at least auth_failures ({}), not {n}",
                    self.auth_failures
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `prefix_auth_failures`, or its default: several addresses' worth.
    fn prefix_auth_failures(&self) -> u32 {
        self.prefix_auth_failures.unwrap_or(
            self.auth_failures
                .saturating_mul(PREFIX_AUTH_FAILURES_SCALE),
        )
    }

    /// The guard's settings: its own section, the kernel's allow list and
    /// the trusted proxies (never banned), and one kernel budget per tier.
    pub(super) fn settings(
        &self,
        xdp: &XdpConfig,
        trusted_proxies: &[IpNet],
        tiers: &[TierConfig],
    ) -> GuardSettings {
        let base = xdp.default_budget();
        let tier_budgets = tiers
            .iter()
            .zip(1u32..)
            .map(|(tier, position)| {
                // Unset: the default budget times the tier's position.
                let scaled = |set: Option<u32>, default: u32| {
                    set.unwrap_or(default.saturating_mul(position))
                };
                Budget {
                    syn_per_sec: scaled(tier.syn_rate, base.syn_per_sec),
                    syn_burst: scaled(tier.syn_burst, base.syn_burst),
                    pkt_per_sec: scaled(tier.pkt_rate, base.pkt_per_sec),
                    pkt_burst: scaled(tier.pkt_burst, base.pkt_burst),
                    tier: position,
                }
            })
            .collect();
        GuardSettings {
            mode: self.mode,
            excess: self.excess,
            auth_failures: self.auth_failures,
            auth_failure_window: self.auth_failure_window,
            auth_failure_ban: self.auth_failure_ban,
            min_ban: self.min_ban,
            max_ban: self.max_ban.max(self.min_ban),
            budget_idle: self.budget_idle,
            allow: xdp.allow.clone(),
            trusted_proxies: trusted_proxies.to_vec(),
            tier_budgets,
            prefix: PrefixSettings {
                threshold: self.prefix_threshold,
                v4_len: self.prefix_len_v4,
                v6_len: self.prefix_len_v6,
                auth_failures: self.prefix_auth_failures(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    #[test]
    fn unset_tier_budgets_scale_with_the_tier_position() {
        let config = Config::parse(
            "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[xdp]\ndefault_syn_rate = 10\n",
        )
        .unwrap();
        let guard = config.guard_settings();
        let rates: Vec<u32> = guard.tier_budgets.iter().map(|b| b.syn_per_sec).collect();
        assert_eq!(rates, [10, 20, 30]);
        assert_eq!(config.xdp_settings().ports, [8080]);
    }

    #[test]
    fn a_full_ban_maps_policy_and_size_reach_the_kernel_settings() {
        let base = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[xdp]\n";
        let config =
            Config::parse(&format!("{base}max_bans = 3\nbans_full = \"refuse\"\n")).unwrap();
        let settings = config.xdp_settings();
        assert_eq!(settings.sizes.bans, 3);
        assert_eq!(settings.bans_full, crate::xdp::WhenFull::Refuse);
        let error = Config::parse(&format!("{base}bans_full = \"drop\"\n")).unwrap_err();
        assert!(error.to_string().contains("bans_full"), "{error}");
        let error = Config::parse(&format!("{base}max_prefix_bans = 0\n")).unwrap_err();
        assert!(error.to_string().contains("xdp.max_prefix_bans"), "{error}");
    }

    #[test]
    fn an_allow_list_longer_than_the_kernel_trie_is_refused_naming_its_key() {
        let allow = |n: usize| {
            let nets: Vec<String> = (0..n)
                .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
                .collect();
            let text = format!(
                "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[xdp]\nallow = [{}]\n",
                nets.join(", ")
            );
            Config::parse(&text)
        };
        let capacity = gateway_common::DEFAULT_ALLOW_ENTRIES as usize;
        assert_eq!(allow(capacity).unwrap().xdp.allow.len(), capacity);
        let error = allow(capacity + 1).unwrap_err().to_string();
        assert!(
            error.contains("xdp.allow") && error.contains("at most 1024"),
            "{error}"
        );
    }

    #[test]
    fn udp_policy_defaults_to_pass_and_names_its_key_when_wrong() {
        let base = "[[listeners]]\naddress = \"127.0.0.1:8080\"\n[xdp]\n";
        let config = Config::parse(base).unwrap();
        assert_eq!(config.xdp_settings().udp, crate::xdp::UdpPolicy::Pass);
        let config = Config::parse(&format!("{base}udp = \"drop\"\n")).unwrap();
        assert_eq!(config.xdp_settings().udp, crate::xdp::UdpPolicy::Drop);
        let error = Config::parse(&format!("{base}udp = \"reject\"\n")).unwrap_err();
        assert!(error.to_string().contains("xdp.udp"), "{error}");
    }

    #[test]
    fn an_unset_prefix_guessing_allowance_scales_with_the_address_s() {
        let parse = |guard: &str| {
            let text = format!("[[listeners]]\naddress = \"127.0.0.1:8080\"\n[guard]\n{guard}");
            Config::parse(&text).map(|c| c.guard_settings().prefix.auth_failures)
        };
        assert_eq!(parse("").unwrap(), 100);
        assert_eq!(parse("auth_failures = 2").unwrap(), 10);
        assert_eq!(
            parse("auth_failures = 2\nprefix_auth_failures = 0").unwrap(),
            0
        );
        assert_eq!(parse("prefix_auth_failures = 20").unwrap(), 20);
        let error = parse("auth_failures = 20\nprefix_auth_failures = 19").unwrap_err();
        assert!(
            error.to_string().contains("guard.prefix_auth_failures"),
            "{error}"
        );
    }
}
