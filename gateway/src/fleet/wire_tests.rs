use std::{net::IpAddr, sync::Arc};

use gateway_common::{Budget, FLEET_ORIGIN};
use ipnet::IpNet;

use super::wire::{Clocks, Entry, Target, WireError, BUDGET_TTL_MS};
use crate::guard::{BanTarget, PolicyUpdate};

/// Node A at wall 1,000,000 ms, monotonic 5 s; node B's monotonic clock
/// started elsewhere (900 s).
const A: Clocks = Clocks {
    wall_ms: 1_000_000,
    mono_ns: 5_000_000_000,
};
const B: Clocks = Clocks {
    wall_ms: 1_000_000,
    mono_ns: 900_000_000_000,
};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn ban(target: BanTarget, left_s: u64) -> PolicyUpdate {
    PolicyUpdate::Ban {
        target,
        until_ns: A.mono_ns + left_s * 1_000_000_000,
        reason: 2,
    }
}

#[test]
fn a_ban_keeps_its_time_left_on_another_host() {
    let entry = Entry::from_update(&ban(BanTarget::Source(ip("10.0.0.7")), 60), A);
    let json = entry.to_json();
    let Some(PolicyUpdate::Ban {
        target,
        until_ns,
        reason,
    }) = Entry::parse(json.as_bytes()).unwrap().to_update(B)
    else {
        panic!("not a ban: {json}");
    };
    assert_eq!(target, BanTarget::Source(ip("10.0.0.7")));
    assert_eq!(until_ns, B.mono_ns + 60_000_000_000);
    assert_eq!(reason, 2);
    // 40 s later on B's wall clock, 20 s are left.
    let later = Clocks {
        wall_ms: B.wall_ms + 40_000,
        mono_ns: B.mono_ns + 40_000_000_000,
    };
    let Some(PolicyUpdate::Ban { until_ns, .. }) = entry.to_update(later) else {
        panic!("expired early");
    };
    assert_eq!(until_ns - later.mono_ns, 20_000_000_000);
    // After the deadline nothing is applied.
    let after = Clocks {
        wall_ms: B.wall_ms + 60_000,
        mono_ns: B.mono_ns,
    };
    assert_eq!(entry.to_update(after), None);
}

#[test]
fn every_target_round_trips() {
    let targets = [
        BanTarget::Source(ip("10.0.0.7")),
        BanTarget::Source(ip("2001:db8::1")),
        BanTarget::SourcePrefix("2001:db8:1::/64".parse().unwrap()),
        BanTarget::Forwarded(ip("192.0.2.9")),
        BanTarget::ForwardedPrefix("192.0.2.0/24".parse().unwrap()),
        BanTarget::Client {
            client: Arc::from("issuer#sub:with spaces"),
            ip: ip("10.0.0.8"),
        },
    ];
    for target in targets {
        let entry = Entry::from_update(&ban(target.clone(), 10), A);
        let back = Entry::parse(entry.to_json().as_bytes()).unwrap();
        let Some(PolicyUpdate::Ban { target: got, .. }) = back.to_update(A) else {
            panic!("{target:?}");
        };
        assert_eq!(got, target);
    }
}

#[test]
fn mapped_addresses_become_plain_v4() {
    let entry = Entry::from_update(&ban(BanTarget::Source(ip("::ffff:10.0.0.7")), 10), A);
    let Some(PolicyUpdate::Ban { target, .. }) = entry.to_update(A) else {
        panic!();
    };
    assert_eq!(target, BanTarget::Source(ip("10.0.0.7")));
    assert_eq!(entry.slot().unwrap(), "ban:source:10.0.0.7/32");
}

#[test]
fn budgets_and_unbans_travel_and_name_their_slots() {
    let budget = Budget {
        syn_per_sec: 10,
        syn_burst: 20,
        pkt_per_sec: 1000,
        pkt_burst: 2000,
        tier: 3,
    };
    let update = PolicyUpdate::Budget {
        ip: ip("10.0.0.9"),
        budget,
    };
    let entry = Entry::from_update(&update, A);
    assert_eq!(entry.until_ms(), Some(A.wall_ms + BUDGET_TTL_MS));
    assert_eq!(entry.slot().as_deref(), Some("budget:10.0.0.9"));
    assert_eq!(entry.to_update(B), Some(update));
    let unban = Entry::from_update(&PolicyUpdate::Unban { ip: ip("10.0.0.9") }, A);
    assert_eq!(unban.slot(), None);
    assert_eq!(
        unban.removes(),
        ["ban:source:10.0.0.9/32", "ban:forwarded:10.0.0.9/32"]
    );
    assert_eq!(
        unban.to_update(B),
        Some(PolicyUpdate::Unban { ip: ip("10.0.0.9") })
    );
}

#[test]
fn the_allow_list_wins_over_a_remote_ban() {
    let allow: Vec<IpNet> = vec!["10.1.0.0/16".parse().unwrap()];
    let inside = Entry::from_update(&ban(BanTarget::Source(ip("10.1.2.3")), 10), A);
    let prefix_inside = Entry::from_update(
        &ban(BanTarget::SourcePrefix("10.1.2.0/24".parse().unwrap()), 10),
        A,
    );
    let wider = Entry::from_update(
        &ban(BanTarget::SourcePrefix("10.0.0.0/8".parse().unwrap()), 10),
        A,
    );
    let outside = Entry::from_update(&ban(BanTarget::Source(ip("10.2.0.1")), 10), A);
    assert!(inside.allowed_by(&allow));
    assert!(prefix_inside.allowed_by(&allow));
    // A wider prefix applies: the allow-list exempts its own part per packet.
    assert!(!wider.allowed_by(&allow));
    assert!(!outside.allowed_by(&allow));
}

#[test]
fn hostile_entries_are_refused_or_clamped() {
    for text in [
        "",
        "{}",
        "null",
        r#"{"op":"ban"}"#,
        r#"{"op":"ban","target":{"kind":"source","net":"10.0.0.1/33"},"until_ms":1,"reason":0}"#,
        r#"{"op":"unban","ip":"10.0.0.1","extra":1}"#,
        r#"{"op":"ban","target":{"kind":"client","ip":"10.0.0.1","client":""},"until_ms":1,"reason":0}"#,
    ] {
        assert!(Entry::parse(text.as_bytes()).is_err(), "{text}");
    }
    let long = format!(
        r#"{{"op":"ban","target":{{"kind":"client","ip":"10.0.0.1","client":"{}"}},"until_ms":1,"reason":0}}"#,
        "x".repeat(5000)
    );
    assert!(matches!(
        Entry::parse(long.as_bytes()),
        Err(WireError::TooLong(_))
    ));
    let client = format!(
        r#"{{"op":"ban","target":{{"kind":"client","ip":"10.0.0.1","client":"{}"}},"until_ms":1,"reason":0}}"#,
        "x".repeat(300)
    );
    assert!(matches!(
        Entry::parse(client.as_bytes()),
        Err(WireError::Client)
    ));
    // Bans that would drop every IPv4 source, however spelt.
    for net in ["0.0.0.0/0", "::/0", "::ffff:0:0/96", "::/64"] {
        for kind in ["source", "forwarded"] {
            let text = format!(
                r#"{{"op":"ban","target":{{"kind":"{kind}","net":"{net}"}},"until_ms":1,"reason":0}}"#
            );
            assert!(
                matches!(Entry::parse(text.as_bytes()), Err(WireError::EveryV4(_))),
                "{text}"
            );
        }
    }
    // A deadline in the far future is clamped to about a year.
    let forever = Entry::Ban {
        target: Target::Source {
            net: "10.0.0.1/32".parse().unwrap(),
        },
        until_ms: u64::MAX,
        reason: 0,
    };
    let Some(PolicyUpdate::Ban { until_ns, .. }) = forever.to_update(B) else {
        panic!();
    };
    let left_days = (until_ns - B.mono_ns) / 1_000_000_000 / 86_400;
    assert!((365..=366).contains(&left_days), "{left_days}");
}

#[test]
fn prefix_unbans_travel_and_empty_their_slots() {
    let net: IpNet = "2001:db8:1::/64".parse().unwrap();
    let entry = Entry::from_update(&PolicyUpdate::UnbanPrefix { net }, A);
    assert_eq!(entry, Entry::UnbanPrefix { net });
    let back = Entry::parse(entry.to_json().as_bytes()).unwrap();
    assert_eq!(back.to_update(B), Some(PolicyUpdate::UnbanPrefix { net }));
    assert_eq!(back.slot(), None);
    assert_eq!(
        back.removes(),
        [
            "ban:source:2001:db8:1::/64",
            "ban:forwarded:2001:db8:1::/64"
        ]
    );
    // The slot a ban of the same prefix fills is the one emptied.
    let ban = Entry::from_update(&ban(BanTarget::SourcePrefix(net), 10), A);
    assert_eq!(ban.slot().unwrap(), back.removes()[0]);
    // A mapped IPv4 prefix is the IPv4 one; a one-address "prefix" is an
    // address's unban.
    let mapped = Entry::UnbanPrefix {
        net: "::ffff:10.1.0.0/112".parse().unwrap(),
    };
    assert_eq!(
        mapped.to_update(B),
        Some(PolicyUpdate::UnbanPrefix {
            net: "10.1.0.0/16".parse().unwrap()
        })
    );
    let one = Entry::UnbanPrefix {
        net: "10.0.0.9/32".parse().unwrap(),
    };
    assert_eq!(
        one.to_update(B),
        Some(PolicyUpdate::Unban { ip: ip("10.0.0.9") })
    );
}

#[test]
fn what_a_node_applies_is_marked_as_the_fleets_and_never_published_marked() {
    let entry = Entry::from_update(&ban(BanTarget::Source(ip("10.0.0.7")), 60), A);
    let Some(PolicyUpdate::Ban { reason, .. }) = entry.to_marked_update(B) else {
        panic!();
    };
    assert_eq!(reason, 2 | FLEET_ORIGIN);
    assert_eq!(gateway_common::ban_reason::name(reason), "auth_failures");
    // Re-published (e.g. read back from the maps), the mark is dropped.
    let marked = PolicyUpdate::Ban {
        target: BanTarget::Source(ip("10.0.0.7")),
        until_ns: A.mono_ns + 1_000_000_000,
        reason,
    };
    assert!(matches!(
        Entry::from_update(&marked, A),
        Entry::Ban { reason: 2, .. }
    ));
    let budget = PolicyUpdate::Budget {
        ip: ip("10.0.0.9"),
        budget: Budget {
            tier: 3,
            ..Budget::default()
        },
    };
    let Some(PolicyUpdate::Budget { budget, .. }) =
        Entry::from_update(&budget, A).to_marked_update(B)
    else {
        panic!();
    };
    assert_eq!(budget.tier, 3 | FLEET_ORIGIN);
    let unban = Entry::Unban { ip: ip("10.0.0.9") };
    assert_eq!(unban.to_marked_update(B), unban.to_update(B));
}
