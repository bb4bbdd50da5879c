//! Catching up with the fleet: what a node missed while it was stopped
//! (its maps stay pinned) is lifted when it starts again; prefix unbans
//! travel; the CLI's ban is applied once on its own host; a remote budget
//! ends at its origin's deadline; the active set is read a page at a time
//! and indexed by deadline.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway_tests::{
    netns::{CLIENT2_V4, CLIENT_V4, SERVER_V4},
    redis::Redis,
    require_root,
};

use super::{Node, ARRIVES, CONNECT, PORT};

/// A prefix holding both client addresses (not the server's).
const PREFIX: &str = "10.77.0.2/31";

fn wall_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// Waits (bounded) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + ARRIVES;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        gateway_tests::http::pause(Duration::from_millis(50));
    }
}

#[test]
fn unbans_missed_while_a_node_was_stopped_are_lifted_when_it_starts() {
    if !require_root("unbans_missed_while_a_node_was_stopped_are_lifted_when_it_starts") {
        return;
    }
    let Some(redis) = Redis::start("fleet_bans") else {
        return;
    };
    let url = redis.url();
    let a = Node::start(&redis, "");
    let mut b = Node::start(&redis, "");
    a.gateway
        .xdp(&["ban", CLIENT2_V4, "--for", "120s", "--redis", &url]);
    a.gateway
        .xdp(&["ban", PREFIX, "--for", "120s", "--redis", &url]);
    b.wait_for_ban(CLIENT2_V4);
    b.wait_for_ban(PREFIX);

    // The CLI wrote A's maps itself: A's own follower does not again.
    wait_until("A's follower never saw the CLI's entries", || {
        a.metric_or_zero("gateway_fleet_policy_skipped_own_total")
            + a.metric_or_zero("gateway_fleet_policy_applied_total")
            >= 2
    });
    assert_eq!(a.ban(CLIENT2_V4).unwrap().2, 1, "offences on A");
    assert_eq!(a.metric_or_zero("gateway_fleet_policy_applied_total"), 0);

    // B stops; its program and maps stay, and so do the bans.
    assert!(b.gateway.stop());
    a.gateway.xdp(&["unban", CLIENT2_V4, "--redis", &url]);
    a.gateway.xdp(&["unban", PREFIX, "--redis", &url]);
    assert!(b.ban(CLIENT2_V4).is_some(), "the pinned ban went with B");
    assert!(b.ban(PREFIX).is_some());
    assert!(!b.topology.connects(CLIENT2_V4, SERVER_V4, PORT, CONNECT));

    // B starts again: it catches up from the active set and lifts what
    // the fleet lifted meanwhile.
    let b = b.restart();
    wait_until("B kept bans the fleet lifted while it was stopped", || {
        b.ban(CLIENT2_V4).is_none() && b.ban(PREFIX).is_none()
    });
    assert!(b
        .topology
        .connects(CLIENT2_V4, SERVER_V4, PORT, Duration::from_secs(3)));

    // A prefix's unban travels live too.
    a.gateway
        .xdp(&["ban", PREFIX, "--for", "120s", "--redis", &url]);
    b.wait_for_ban(PREFIX);
    assert!(!b.topology.connects(CLIENT_V4, SERVER_V4, PORT, CONNECT));
    a.gateway.xdp(&["unban", PREFIX, "--redis", &url]);
    wait_until("the prefix's unban never reached B", || {
        b.ban(PREFIX).is_none()
    });
    assert!(b
        .topology
        .connects(CLIENT_V4, SERVER_V4, PORT, Duration::from_secs(3)));
    assert!(!redis
        .command(&["HKEYS", "gateway:fleet:policy:active"])
        .contains("10.77.0.2/31"));
}

#[test]
fn a_remote_budget_ends_at_its_deadline_and_catch_up_pages_through_the_active_set() {
    if !require_root(
        "a_remote_budget_ends_at_its_deadline_and_catch_up_pages_through_the_active_set",
    ) {
        return;
    }
    let Some(redis) = Redis::start("fleet_bans") else {
        return;
    };
    // More active bans than one page holds, and one that ended (written
    // before the expiry index existed): all applied, the ended one gone.
    let far = wall_ms() + 600_000;
    let mut hset = vec!["HSET".to_owned(), "gateway:fleet:policy:active".to_owned()];
    for i in 0..600u32 {
        let net = format!("10.200.{}.{}/32", i / 250, i % 250 + 1);
        hset.push(format!("ban:source:{net}"));
        hset.push(format!(
            "node-x\n{{\"op\":\"ban\",\"target\":{{\"kind\":\"source\",\"net\":\"{net}\"}},\"until_ms\":{far},\"reason\":0}}"
        ));
    }
    hset.push("ban:source:10.201.0.1/32".to_owned());
    hset.push(format!(
        "node-x\n{{\"op\":\"ban\",\"target\":{{\"kind\":\"source\",\"net\":\"10.201.0.1/32\"}},\"until_ms\":{},\"reason\":0}}",
        wall_ms() - 1000
    ));
    let args: Vec<&str> = hset.iter().map(String::as_str).collect();
    redis.command(&args);

    let b = Node::start(&redis, "");
    wait_until("B never applied every active ban", || b.bans().len() == 600);
    wait_until("the ended entry stayed in the active set", || {
        redis.command(&[
            "HEXISTS",
            "gateway:fleet:policy:active",
            "ban:source:10.201.0.1/32",
        ]) == ":0"
    });

    // A peer's budget with 3 s left: B applies it, then ends it.
    let budget = format!(
        r#"{{"op":"budget","ip":"{CLIENT_V4}","syn_per_sec":7,"syn_burst":8,"pkt_per_sec":900,"pkt_burst":901,"tier":3,"until_ms":{}}}"#,
        wall_ms() + 3000
    );
    redis.command(&[
        "XADD",
        "gateway:fleet:policy",
        "*",
        "node",
        "node-x",
        "entry",
        &budget,
    ]);
    wait_until("the peer's budget never arrived", || {
        b.budget(CLIENT_V4).is_some()
    });
    assert_eq!(b.budget(CLIENT_V4).unwrap()["tier"], 3);
    wait_until("the peer's budget never ended", || {
        b.budget(CLIENT_V4).is_none()
    });

    // What a node publishes is indexed by its deadline, for pruning.
    let a = Node::start(&redis, "");
    a.gateway
        .xdp(&["ban", CLIENT2_V4, "--for", "60s", "--redis", &redis.url()]);
    let score = redis.command(&[
        "ZSCORE",
        "gateway:fleet:policy:expiry",
        &format!("ban:source:{CLIENT2_V4}/32"),
    ]);
    let until: u64 = score.lines().last().unwrap().parse().unwrap();
    assert!(until > wall_ms() && until <= wall_ms() + 61_000, "{score}");
}
