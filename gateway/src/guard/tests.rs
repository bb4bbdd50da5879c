use gateway_common::Budget;

use super::*;

pub(super) const SEC: u64 = 1_000_000_000;

pub(super) fn settings(mode: GuardMode) -> GuardSettings {
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
        trusted_proxies: vec!["10.9.0.0/16".parse().unwrap()],
        tier_budgets: (1..=3)
            .map(|n| Budget {
                syn_per_sec: 100 * n,
                ..Budget::default()
            })
            .collect(),
        prefix: PrefixSettings {
            threshold: 3,
            ..PrefixSettings::default()
        },
    }
}

pub(super) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub(super) fn direct(s: &str) -> Remote {
    Remote::direct(ip(s))
}

fn ban_until(update: Option<PolicyUpdate>) -> u64 {
    match update {
        Some(PolicyUpdate::Ban { until_ns, .. }) => until_ns,
        other => panic!("expected a ban, got {other:?}"),
    }
}

pub(super) fn ban_target(update: Option<PolicyUpdate>) -> BanTarget {
    match update {
        Some(PolicyUpdate::Ban { target, .. }) => target,
        other => panic!("expected a ban, got {other:?}"),
    }
}

fn spared(guard: &SourceGuard) -> u64 {
    guard
        .counters
        .allowed_sources_spared
        .load(Ordering::Relaxed)
}

#[test]
fn ignoring_429s_bans_until_the_window_frees_up_then_doubles_to_the_cap() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let src = direct("10.0.0.1");
    let reset = Duration::from_secs(20);
    let limited = |now| guard.rate_limited(src, "a", reset, now);
    let t0 = 1_000 * SEC;
    for i in 0..5 {
        assert_eq!(limited(t0 + i), None);
    }
    assert_eq!(ban_until(limited(t0 + 5)), t0 + 5 + 20 * SEC);
    // While banned, more refusals (in flight) do not ban again.
    for i in 0..10 {
        assert_eq!(limited(t0 + 10 + i), None);
    }
    let t1 = t0 + 30 * SEC;
    let again = (0..6).find_map(|i| limited(t1 + i));
    assert_eq!(ban_until(again), t1 + 5 + 40 * SEC);
    let t2 = t1 + 50 * SEC;
    let third = (0..6).find_map(|i| limited(t2 + i));
    assert_eq!(ban_until(third), t2 + 5 + 80 * SEC);
    let t3 = t2 + 90 * SEC;
    let capped = (0..6).find_map(|i| limited(t3 + i));
    assert_eq!(ban_target(capped.clone()), BanTarget::Source(src.peer));
    assert_eq!(ban_until(capped), t3 + 5 + 100 * SEC);
    assert_eq!(guard.counters.rate_limit_bans.load(Ordering::Relaxed), 4);
}

/// Off counts nothing towards a ban (a 429 or guessing flood costs no
/// shard lock), so switching to enforce by a reload starts every source
/// with a clean record: its first ban takes the full allowance again.
#[test]
fn off_counts_nothing_that_enforce_would_hold_against_a_source() {
    let guard = SourceGuard::new(settings(GuardMode::Off));
    let (src, guesser) = (direct("10.0.0.3"), direct("10.0.0.4"));
    let (reset, t0) = (Duration::from_secs(20), 1_000 * SEC);
    for i in 0..50 {
        assert_eq!(guard.rate_limited(src, "a", reset, t0 + i), None);
        assert_eq!(guard.auth_failed(guesser, t0 + i), None);
    }
    guard.set_settings(settings(GuardMode::Enforce));
    for i in 0..5 {
        assert_eq!(guard.rate_limited(src, "a", reset, t0 + 100 + i), None);
    }
    assert_eq!(
        ban_until(guard.rate_limited(src, "a", reset, t0 + 105)),
        t0 + 105 + 20 * SEC
    );
    // As many guesses to a ban as on a guard that was never off.
    let fresh = SourceGuard::new(settings(GuardMode::Enforce));
    let guesses_to_ban = |guard: &SourceGuard| {
        (0..10u64).position(|i| guard.auth_failed(guesser, t0 + 200 + i).is_some())
    };
    let on_fresh = guesses_to_ban(&fresh);
    assert!(on_fresh.is_some());
    assert_eq!(guesses_to_ban(&guard), on_fresh);
}

#[test]
fn refusals_spread_beyond_the_window_do_not_ban() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let src = direct("10.0.0.2");
    for i in 0..100 {
        // Each refusal arrives after the previous one's window freed up.
        let refused = guard.rate_limited(src, "a", Duration::from_secs(1), i * 2 * SEC);
        assert_eq!(refused, None);
    }
}

/// The 429-excess decision table: who is banned when a client at an
/// address ignores its 429s, by what the address's other clients did
/// within the window (10 s) and what the address is.
#[test]
fn a_429_storm_bans_the_client_alone_while_others_at_its_address_are_in_good_standing() {
    let reset = Duration::from_secs(20);
    let t0 = 1_000 * SEC;
    let storm = |guard: &SourceGuard, remote: Remote, at: u64| {
        (0..6).find_map(|i| guard.rate_limited(remote, "abuser", reset, at + i))
    };
    let client_ban = |ip: &str| BanTarget::Client {
        client: "abuser".into(),
        ip: ip.parse().unwrap(),
    };
    // (what the other client did, when, the address) → the ban.
    let cases: [(&str, Option<u64>, Remote, BanTarget); 7] = [
        // Nobody else here: the address (the kernel's, it is the peer).
        (
            "none",
            None,
            direct("10.0.0.1"),
            BanTarget::Source(ip("10.0.0.1")),
        ),
        // Another client served 2 s ago: the abuser alone.
        ("ok", Some(2), direct("10.0.0.1"), client_ban("10.0.0.1")),
        // Served, but 11 s ago: out of the window, the address.
        (
            "ok",
            Some(11),
            direct("10.0.0.1"),
            BanTarget::Source(ip("10.0.0.1")),
        ),
        // Served but also refused with 429 lately: not in good standing.
        (
            "ok+429",
            Some(2),
            direct("10.0.0.1"),
            BanTarget::Source(ip("10.0.0.1")),
        ),
        // Behind a trusted proxy, nobody else: the forwarded address, in userspace.
        (
            "none",
            None,
            Remote::new(ip("10.9.0.1"), ip("203.0.113.7")),
            BanTarget::Forwarded(ip("203.0.113.7")),
        ),
        // Behind a trusted proxy, another client fine: the abuser alone.
        (
            "ok",
            Some(2),
            Remote::new(ip("10.9.0.1"), ip("203.0.113.7")),
            client_ban("203.0.113.7"),
        ),
        // An allow-listed address is never banned: the abuser alone.
        ("none", None, direct("192.0.2.5"), client_ban("192.0.2.5")),
    ];
    for (other, ago, remote, expected) in cases {
        let guard = SourceGuard::new(settings(GuardMode::Enforce));
        if let Some(ago) = ago {
            let at = t0 - ago * SEC;
            guard.authenticated(remote, "fine", 0, at);
            if other == "ok+429" {
                guard.rate_limited(remote, "fine", reset, at + 1);
            }
        }
        let ban = storm(&guard, remote, t0);
        assert_eq!(ban_target(ban), expected, "{other} {ago:?} {remote:?}");
        assert!(ban_target(storm(&guard, remote, t0 + 100 * SEC)).ip() == remote.client);
    }
}

#[test]
fn client_bans_are_counted_and_double_per_client() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let src = direct("10.0.0.1");
    let reset = Duration::from_secs(20);
    let t0 = 1_000 * SEC;
    guard.authenticated(src, "fine", 0, t0);
    let first = (0..6).find_map(|i| guard.rate_limited(src, "abuser", reset, t0 + i));
    assert_eq!(ban_until(first), t0 + 5 + 20 * SEC);
    // Within the ban nothing more; after it, a repeat doubles.
    assert_eq!(
        guard.rate_limited(src, "abuser", reset, t0 + 10 * SEC),
        None
    );
    let t1 = t0 + 30 * SEC;
    guard.authenticated(src, "fine", 0, t1);
    let second = (0..6).find_map(|i| guard.rate_limited(src, "abuser", reset, t1 + i));
    assert_eq!(ban_until(second), t1 + 5 + 40 * SEC);
    assert_eq!(guard.counters.client_bans.load(Ordering::Relaxed), 2);
    assert_eq!(guard.counters.rate_limit_bans.load(Ordering::Relaxed), 2);
    // The address itself was never banned: its good client's 429s later
    // are judged on their own.
    assert_eq!(guard.rate_limited(src, "fine", reset, t1 + SEC), None);
}

#[test]
fn auth_failure_bursts_ban_but_a_slow_trickle_does_not() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let src = direct("fd00::7");
    let t0 = 1_000 * SEC;
    for i in 0..3 {
        assert_eq!(guard.auth_failed(src, t0 + i), None);
    }
    assert_eq!(ban_until(guard.auth_failed(src, t0 + 3)), t0 + 3 + 30 * SEC);
    let slow = direct("fd00::8");
    for i in 0..20 {
        assert_eq!(guard.auth_failed(slow, t0 + i * 4 * SEC), None);
    }
}

#[test]
fn guessing_behind_a_trusted_proxy_bans_the_forwarded_address_in_userspace_only() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let remote = Remote::new(ip("10.9.0.1"), ip("203.0.113.7"));
    let ban = (0..4).find_map(|i| guard.auth_failed(remote, SEC + i));
    let target = ban_target(ban.clone());
    assert_eq!(target, BanTarget::Forwarded(ip("203.0.113.7")));
    assert!(
        !ban.unwrap().in_kernel(),
        "the proxy's packets must not be dropped"
    );
    assert_eq!(guard.counters.forwarded_bans.load(Ordering::Relaxed), 1);
    // Another client behind the same proxy is judged on its own.
    let other = Remote::new(ip("10.9.0.1"), ip("203.0.113.8"));
    assert_eq!(guard.auth_failed(other, SEC + 5), None);
}

#[test]
fn allow_listed_trusted_and_monitored_addresses_are_never_banned() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    for i in 0..20 {
        assert_eq!(guard.auth_failed(direct("::ffff:192.0.2.9"), i), None);
    }
    let after_allow = spared(&guard);
    assert!(after_allow > 0);
    // A trusted proxy with no usable X-Forwarded-For is its own client.
    for i in 0..20 {
        assert_eq!(guard.auth_failed(direct("10.9.3.4"), i), None);
    }
    assert!(spared(&guard) > after_allow);
    let monitor = SourceGuard::new(settings(GuardMode::Monitor));
    for i in 0..20 {
        assert_eq!(monitor.auth_failed(direct("10.1.1.1"), i), None);
    }
    assert!(monitor.counters.monitored_bans.load(Ordering::Relaxed) > 0);
}

#[test]
fn highest_tier_budget_wins_and_decays_when_idle() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let src = direct("10.0.0.3");
    let t0 = 1_000 * SEC;
    let silver = guard.authenticated(src, "a", 1, t0);
    assert!(matches!(
        silver,
        Some(PolicyUpdate::Budget { budget, .. }) if budget.syn_per_sec == 200 && budget.tier == 2
    ));
    // Same or lower tier: nothing to write.
    assert_eq!(guard.authenticated(src, "a", 1, t0 + SEC), None);
    assert_eq!(guard.authenticated(src, "b", 0, t0 + SEC), None);
    assert!(matches!(
        guard.authenticated(src, "c", 2, t0 + 2 * SEC),
        Some(PolicyUpdate::Budget { budget, .. }) if budget.tier == 3
    ));
    assert_eq!(guard.sweep(t0 + 30 * SEC), vec![]);
    let swept = guard.sweep(t0 + 2 * SEC + 60 * SEC);
    assert_eq!(swept, vec![PolicyUpdate::ClearBudget { ip: src.peer }]);
    // After decay, a bronze client sets the bronze budget again.
    assert!(guard.authenticated(src, "a", 0, t0 + 100 * SEC).is_some());
}

#[test]
fn behind_a_proxy_the_budget_goes_to_the_packet_source() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    let remote = Remote::new(ip("10.9.0.1"), ip("203.0.113.7"));
    assert!(matches!(
        guard.authenticated(remote, "a", 1, SEC),
        Some(PolicyUpdate::Budget { ip, .. }) if ip == remote.peer
    ));
}

#[test]
fn sweep_forgets_idle_sources() {
    let guard = SourceGuard::new(settings(GuardMode::Enforce));
    for i in 0..1000u32 {
        guard.auth_failed(Remote::direct(IpAddr::from(i.to_be_bytes())), SEC);
        guard.rate_limited(
            Remote::direct(IpAddr::from(i.to_be_bytes())),
            "a",
            Duration::from_secs(1),
            SEC,
        );
    }
    guard.sweep(1_000 * SEC);
    let held: usize = guard.shards.iter().map(|s| s.lock().unwrap().len()).sum();
    assert_eq!(held, 0);
}

#[test]
fn a_worker_reports_a_client_at_an_address_once_a_second_unless_its_tier_rises() {
    let memo = ReportMemo::default();
    let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
    let t0 = 1_000 * SEC;
    assert!(memo.due(a, "x", 0, t0));
    assert!(!memo.due(a, "x", 0, t0 + SEC - 1));
    assert!(memo.due(b, "x", 0, t0 + 1), "another address is reported");
    assert!(memo.due(a, "y", 0, t0 + 1), "another client is reported");
    assert!(
        memo.due(a, "x", 2, t0 + 2),
        "a higher tier is reported at once"
    );
    assert!(!memo.due(a, "x", 1, t0 + 3), "a lower tier is not");
    assert!(
        memo.due(a, "x", 2, t0 + 2 + SEC),
        "and again after a second"
    );
}
