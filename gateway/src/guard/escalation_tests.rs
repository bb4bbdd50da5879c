//! Prefix escalation and the guard's memory under address rotation.
use std::{net::IpAddr, sync::atomic::Ordering};

use gateway_common::ban_reason;
use ipnet::IpNet;

use super::{
    escalation,
    tests::{ban_target, direct, ip, settings, SEC},
    BanTarget, GuardMode, GuardSettings, PolicyUpdate, Remote, SourceGuard, PER_SHARD, SHARDS,
};

/// Bans `remote` for guessing (4 refusals from `now` on): the guard's update.
fn guessing_ban(guard: &SourceGuard, remote: Remote, now: u64) -> PolicyUpdate {
    (0..4)
        .find_map(|i| guard.auth_failed(remote, now + i))
        .expect("banned after 4 refusals")
}

/// Bans `remote` and returns what escalation makes of it.
fn escalated(guard: &SourceGuard, remote: Remote, now: u64) -> Vec<PolicyUpdate> {
    let ban = guessing_ban(guard, remote, now);
    guard.escalate(&ban, now + 4)
}

#[test]
fn the_third_banned_address_of_a_64_bans_the_prefix_and_lifts_their_bans() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let t0 = 1_000 * SEC;
    assert_eq!(escalated(&guard, direct("2001:db8:0:1::a"), t0), vec![]);
    // Another /64 does not count towards this one.
    assert_eq!(escalated(&guard, direct("2001:db8:0:2::a"), t0), vec![]);
    assert_eq!(
        escalated(&guard, direct("2001:db8:0:1::b"), t0 + SEC),
        vec![]
    );
    let updates = escalated(&guard, direct("2001:db8:0:1::c"), t0 + 2 * SEC);
    let prefix: IpNet = "2001:db8:0:1::/64".parse().unwrap();
    // Until the latest of theirs (the third's: t0 + 2 s + 3 + 30 s).
    let latest = t0 + 2 * SEC + 3 + 30 * SEC;
    assert_eq!(
        updates,
        vec![
            PolicyUpdate::Ban {
                target: BanTarget::SourcePrefix(prefix),
                until_ns: latest,
                reason: ban_reason::PREFIX_ESCALATION,
            },
            PolicyUpdate::Unban {
                ip: ip("2001:db8:0:1::a")
            },
            PolicyUpdate::Unban {
                ip: ip("2001:db8:0:1::b")
            },
            PolicyUpdate::Unban {
                ip: ip("2001:db8:0:1::c")
            },
        ]
    );
    assert_eq!(
        ban_reason::name(ban_reason::PREFIX_ESCALATION),
        "prefix_escalation"
    );
    assert_eq!(guard.counters.prefix_bans.load(Ordering::Relaxed), 1);
    // While the prefix is banned, a late address ban inside it escalates nothing.
    assert_eq!(
        escalated(&guard, direct("2001:db8:0:1::d"), t0 + 3 * SEC),
        vec![]
    );
}

#[test]
fn expired_bans_do_not_count_and_a_repeat_prefix_offence_doubles() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let t0 = 1_000 * SEC;
    escalated(&guard, direct("203.0.113.1"), t0);
    escalated(&guard, direct("203.0.113.2"), t0);
    // 31 s later both 30 s bans are over: the third is the first again.
    assert_eq!(
        escalated(&guard, direct("203.0.113.3"), t0 + 31 * SEC),
        vec![]
    );
    escalated(&guard, direct("203.0.113.4"), t0 + 32 * SEC);
    let first = escalated(&guard, direct("203.0.113.5"), t0 + 33 * SEC);
    let prefix = BanTarget::SourcePrefix("203.0.113.0/24".parse().unwrap());
    assert!(matches!(&first[0], PolicyUpdate::Ban { target, .. } if *target == prefix));
    assert_eq!(first.len(), 4, "{first:?}");
    // After the prefix ban, the next escalation bans it twice as long.
    let t1 = t0 + 200 * SEC;
    for (i, addr) in ["203.0.113.6", "203.0.113.7"].into_iter().enumerate() {
        escalated(&guard, direct(addr), t1 + i as u64);
    }
    let second = escalated(&guard, direct("203.0.113.8"), t1 + 2);
    let now = t1 + 2 + 4;
    match &second[0] {
        PolicyUpdate::Ban { until_ns, .. } => assert!(
            *until_ns > now + 30 * SEC && *until_ns <= now + 60 * SEC,
            "doubled, from {now}: {second:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn prefixes_holding_allowed_or_trusted_addresses_and_monitor_mode_never_escalate() {
    let t0 = 1_000 * SEC;
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    // 10.9.3.0/24 lies inside the trusted 10.9.0.0/16; with a trusted
    // proxy that forwards nothing usable, its addresses are spared anyway.
    let allowed = GuardSettings {
        allow: vec!["2001:db8:0:1::5/128".parse().unwrap()],
        ..settings(GuardMode::Enforce)
    };
    let holding = SourceGuard::new(allowed);
    for i in 0..6 {
        let addr = format!("2001:db8:0:1::{:x}", 0x10 + i);
        assert_eq!(escalated(&holding, direct(&addr), t0 + i * SEC), vec![]);
    }
    assert_eq!(holding.counters.prefix_bans.load(Ordering::Relaxed), 0);
    assert_eq!(
        holding.counters.auth_failure_bans.load(Ordering::Relaxed),
        6
    );
    // Monitor mode bans nothing, prefixes included.
    let monitor = SourceGuard::new(settings(GuardMode::Monitor));
    let ban = PolicyUpdate::Ban {
        target: BanTarget::Source(ip("10.1.1.1")),
        until_ns: t0 + 10 * SEC,
        reason: 0,
    };
    for _ in 0..5 {
        assert_eq!(monitor.escalate(&ban, t0), vec![]);
    }
    // Client bans never escalate.
    let client = PolicyUpdate::Ban {
        target: BanTarget::Client {
            client: "a".into(),
            ip: ip("10.1.1.2"),
        },
        until_ns: t0 + 10 * SEC,
        reason: 0,
    };
    assert_eq!(guard.escalate(&client, t0), vec![]);
}

#[test]
fn forwarded_addresses_escalate_to_a_userspace_prefix_ban() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let t0 = 1_000 * SEC;
    let behind = |addr: &str| Remote::new(ip("10.9.0.1"), ip(addr));
    escalated(&guard, behind("198.51.100.1"), t0);
    escalated(&guard, behind("198.51.100.2"), t0);
    let updates = escalated(&guard, behind("198.51.100.3"), t0);
    let target = BanTarget::ForwardedPrefix("198.51.100.0/24".parse().unwrap());
    assert!(matches!(&updates[0], PolicyUpdate::Ban { target: t, .. } if *t == target));
    assert!(
        !updates[0].in_kernel(),
        "the proxy's packets must not be dropped"
    );
}

#[test]
fn a_rotation_through_many_prefixes_keeps_the_guard_bounded() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let t0 = 1_000 * SEC;
    let count = escalation::PREFIXES + 100;
    for i in 0..count as u64 {
        let ban = PolicyUpdate::Ban {
            target: BanTarget::Source(IpAddr::from([
                0x2001,
                0xdb8,
                (i >> 16) as u16,
                i as u16,
                0,
                0,
                0,
                1,
            ])),
            until_ns: t0 + 60 * SEC,
            reason: 0,
        };
        guard.escalate(&ban, t0);
    }
    assert_eq!(guard.prefixes.lock().unwrap().len(), escalation::PREFIXES);
    // Once their bans are over, a sweep forgets them.
    guard.sweep(t0 + 61 * SEC);
    assert_eq!(guard.prefixes.lock().unwrap().len(), 0);
}

#[test]
fn with_the_guard_full_a_rotation_is_counted_on_its_prefix() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let t0 = 1_000 * SEC;
    // Fill every shard with addresses inside their failure window.
    for i in 0..(SHARDS * PER_SHARD) as u32 * 2 {
        guard.auth_failed(
            Remote::direct(IpAddr::from((0x0a00_0000 + i).to_be_bytes())),
            t0,
        );
    }
    let held: usize = guard.shards.iter().map(|s| s.lock().unwrap().len()).sum();
    assert!(held <= SHARDS * PER_SHARD, "{held}");
    // One guess per address of one /64: the fourth (auth_failures 3) is banned.
    let rotating = |n: u16| direct(&format!("2001:db8:0:7::{n:x}"));
    let bans: Vec<_> = (1..=8)
        .filter_map(|n| guard.auth_failed(rotating(n), t0 + u64::from(n)))
        .collect();
    assert_eq!(bans.len(), 2, "{bans:?}");
    assert_eq!(
        ban_target(bans.first().cloned()),
        BanTarget::Source(ip("2001:db8:0:7::4"))
    );
    let after: usize = guard.shards.iter().map(|s| s.lock().unwrap().len()).sum();
    assert!(after <= SHARDS * PER_SHARD, "bounded: {after}");
}

#[test]
fn a_prefix_holding_the_ipv4_mapped_range_never_escalates() {
    // `::/64` holds `::ffff:0:0/96`, where the kernel keys every IPv4
    // source: banning it would drop all IPv4 traffic.
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let t0 = 1_000 * SEC;
    for (i, addr) in ["::a", "::b", "::c", "::d"].into_iter().enumerate() {
        assert_eq!(
            escalated(&guard, direct(addr), t0 + i as u64 * SEC),
            vec![],
            "{addr}"
        );
    }
    assert_eq!(guard.counters.prefix_bans.load(Ordering::Relaxed), 0);
}
