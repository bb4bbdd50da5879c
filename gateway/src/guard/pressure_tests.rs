//! Guessing spread across a prefix's addresses (settings: 3 refusals per
//! address, so 15 per prefix unless a test says otherwise).
use std::{net::IpAddr, sync::atomic::Ordering};

use gateway_common::ban_reason;
use ipnet::IpNet;

use super::{
    escalation,
    tests::{direct, ip, settings, SEC},
    BanTarget, GuardMode, GuardSettings, PolicyUpdate, PrefixSettings, Remote, SourceGuard,
    PREFIX_AUTH_FAILURES_SCALE,
};

fn guard_with(mode: GuardMode, prefix_auth_failures: u32) -> SourceGuard {
    let settings = settings(mode);
    SourceGuard::new(GuardSettings {
        prefix: PrefixSettings {
            auth_failures: prefix_auth_failures,
            ..settings.prefix
        },
        ..settings
    })
}

/// The guard of the tests, its prefix allowance the default scale.
fn guard() -> SourceGuard {
    guard_with(GuardMode::Enforce, PREFIX_AUTH_FAILURES_SCALE * 3)
}

/// Two guesses (one fewer than the address's allowance allows) from each
/// of `addresses`, from `now` on, a millisecond apart: the bans returned.
fn rotate(guard: &SourceGuard, addresses: &[Remote], now: u64) -> Vec<PolicyUpdate> {
    let guesses = addresses.iter().flat_map(|remote| [*remote, *remote]);
    (guesses.zip(0u64..))
        .filter_map(|(remote, i)| guard.auth_failed(remote, now + i * 1_000_000))
        .collect()
}

fn in_64(n: u16) -> Remote {
    direct(&format!("2001:db8:0:7::{n:x}"))
}

#[test]
fn a_rotation_below_the_address_threshold_gets_its_64_banned() {
    let guard = guard();
    let t0 = 1_000 * SEC;
    let addresses: Vec<Remote> = (1..=12).map(in_64).collect();
    // 7 addresses × 2 = 14 guesses: within the prefix's 15, nobody banned.
    assert_eq!(rotate(&guard, &addresses[..7], t0), vec![]);
    // The 16th guess of the /64 bans it, for auth_failure_ban (30 s).
    let bans = rotate(&guard, &addresses[7..], t0 + SEC);
    let prefix: IpNet = "2001:db8:0:7::/64".parse().unwrap();
    assert_eq!(
        bans,
        vec![PolicyUpdate::Ban {
            target: BanTarget::SourcePrefix(prefix),
            until_ns: t0 + SEC + SEC / 1000 + 30 * SEC,
            reason: ban_reason::AUTH_FAILURES,
        }],
        "one ban, of the prefix: more guesses while it holds ban nothing"
    );
    assert!(bans[0].in_kernel());
    assert_eq!(guard.counters.auth_failure_bans.load(Ordering::Relaxed), 1);
    // Not escalation: no address was banned.
    assert_eq!(guard.counters.prefix_bans.load(Ordering::Relaxed), 0);
    // An IPv4 /24 likewise; another /24 does not count towards it.
    let v4: Vec<Remote> = (1..=8).map(|n| direct(&format!("203.0.113.{n}"))).collect();
    assert_eq!(rotate(&guard, &[direct("198.51.100.1")], t0), vec![]);
    let bans = rotate(&guard, &v4, t0);
    let prefix = BanTarget::SourcePrefix("203.0.113.0/24".parse().unwrap());
    assert!(matches!(&bans[..], [PolicyUpdate::Ban { target, .. }] if *target == prefix));
}

#[test]
fn a_repeat_offence_of_the_prefix_doubles_its_ban() {
    let guard = guard();
    let t0 = 1_000 * SEC;
    let addresses: Vec<Remote> = (1..=8).map(in_64).collect();
    assert_eq!(rotate(&guard, &addresses, t0).len(), 1);
    let t1 = t0 + 40 * SEC;
    let again = rotate(&guard, &addresses, t1);
    match &again[..] {
        [PolicyUpdate::Ban { until_ns, .. }] => {
            assert_eq!(*until_ns, t1 + 15 * SEC / 1000 + 60 * SEC, "{again:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn honest_low_rate_failures_from_many_addresses_ban_nothing() {
    // The defaults: 20 per address, 100 per prefix, per 10 s.
    let defaults = GuardSettings {
        auth_failures: 20,
        prefix: PrefixSettings::default(),
        ..settings(GuardMode::Enforce)
    };
    assert_eq!(defaults.prefix.auth_failures, 100);
    let guard = SourceGuard::new(defaults);
    let t0 = 1_000 * SEC;
    // A NAT'd /24 and a shared /64: for ten minutes, a mistyped key every
    // 200 ms somewhere in each (50 per window), each address now and then.
    for i in 0..3_000u64 {
        let now = t0 + i * SEC / 5;
        let v4 = direct(&format!("198.51.100.{}", i % 250 + 1));
        let v6 = direct(&format!("2001:db8:0:9::{:x}", i % 4_000 + 1));
        assert_eq!(guard.auth_failed(v4, now), None, "at {i}");
        assert_eq!(guard.auth_failed(v6, now), None, "at {i}");
    }
    // Ninety addresses failing once within one window: still nothing.
    let burst: Vec<Remote> = (1..=90)
        .map(|n| direct(&format!("203.0.113.{n}")))
        .collect();
    for (i, remote) in burst.iter().enumerate() {
        assert_eq!(guard.auth_failed(*remote, t0 + i as u64), None);
    }
    assert_eq!(guard.counters.auth_failure_bans.load(Ordering::Relaxed), 0);
}

#[test]
fn allowed_and_trusted_prefixes_off_and_monitor_modes_never_ban_a_prefix() {
    let t0 = 1_000 * SEC;
    let guard = guard();
    // 192.0.2.0/24 is allow-listed; 10.9.3.0/24 lies in the trusted /16;
    // 2001:db8:0:1::/64 holds an allow-listed address.
    let holding = SourceGuard::new(GuardSettings {
        allow: vec!["2001:db8:0:1::5/128".parse().unwrap()],
        ..settings(GuardMode::Enforce)
    });
    let spread = |prefix: &str| -> Vec<Remote> {
        (1..=20).map(|n| direct(&format!("{prefix}{n}"))).collect()
    };
    assert_eq!(rotate(&guard, &spread("192.0.2."), t0), vec![]);
    assert_eq!(rotate(&guard, &spread("10.9.3."), t0), vec![]);
    assert_eq!(rotate(&holding, &spread("2001:db8:0:1::"), t0), vec![]);
    // 0: never; off: no bans; monitor: counted, not issued.
    let never = guard_with(GuardMode::Enforce, 0);
    assert_eq!(rotate(&never, &spread("203.0.113."), t0), vec![]);
    let off = guard_with(GuardMode::Off, 15);
    assert_eq!(rotate(&off, &spread("203.0.113."), t0), vec![]);
    let monitor = guard_with(GuardMode::Monitor, 15);
    assert_eq!(rotate(&monitor, &spread("203.0.113."), t0), vec![]);
    assert_eq!(monitor.counters.monitored_bans.load(Ordering::Relaxed), 2);
}

#[test]
fn behind_a_trusted_proxy_the_forwarded_prefix_is_banned_in_userspace() {
    let guard = guard();
    let behind: Vec<Remote> = (1..=8)
        .map(|n| Remote::new(ip("10.9.0.1"), ip(&format!("198.51.100.{n}"))))
        .collect();
    let bans = rotate(&guard, &behind, 1_000 * SEC);
    let target = BanTarget::ForwardedPrefix("198.51.100.0/24".parse().unwrap());
    assert!(matches!(&bans[..], [PolicyUpdate::Ban { target: t, .. }] if *t == target));
    assert!(!bans[0].in_kernel(), "the proxy must not be dropped");
}

#[test]
fn the_prefix_ban_lifts_the_address_bans_it_covers() {
    let guard = guard();
    let t0 = 1_000 * SEC;
    // One address guesses past its allowance (4 guesses): banned alone,
    // twice, the second time for 60 s.
    let loud = in_64(0xff);
    let mut loud_until = 0;
    for at in [t0, t0 + 31 * SEC] {
        let ban = (0..4)
            .find_map(|i| guard.auth_failed(loud, at + i))
            .expect("the address is banned");
        assert_eq!(guard.escalate(&ban, at), vec![]);
        if let PolicyUpdate::Ban { until_ns, .. } = ban {
            loud_until = until_ns;
        }
    }
    assert_eq!(loud_until, t0 + 31 * SEC + 3 + 60 * SEC);
    // The rest of the /64 rotates below it; the prefix's ban (30 s) lifts
    // the address's, so it lasts as long.
    let t1 = t0 + 32 * SEC;
    let bans = rotate(&guard, &(1..=6).map(in_64).collect::<Vec<_>>(), t1);
    match &bans[..] {
        [PolicyUpdate::Ban { until_ns, .. }] => assert_eq!(*until_ns, loud_until),
        other => panic!("one prefix ban: {other:?}"),
    }
    assert_eq!(
        guard.escalate(&bans[0], t1 + SEC),
        vec![PolicyUpdate::Unban {
            ip: ip("2001:db8:0:7::ff")
        }]
    );
}

#[test]
fn a_rotation_through_many_prefixes_keeps_the_prefix_table_bounded() {
    let guard = guard();
    let t0 = 1_000 * SEC;
    for i in 0..(escalation::PREFIXES + 100) as u64 {
        let addr = IpAddr::from([0x2001, 0xdb8, (i >> 16) as u16, i as u16, 0, 0, 0, 1]);
        assert_eq!(guard.auth_failed(Remote::direct(addr), t0), None);
    }
    assert_eq!(guard.prefixes.lock().unwrap().len(), escalation::PREFIXES);
    // Once their windows are over, a sweep forgets them.
    guard.sweep(t0 + 11 * SEC);
    assert_eq!(guard.prefixes.lock().unwrap().len(), 0);
}
