//! Fleet bans: gateways sharing one Redis each protect their own host in
//! its own network namespaces (the same client addresses in each). A ban
//! one node's guard issues, or `gateway xdp ban --redis` on one node,
//! reaches every other node's kernel with its remaining time; a node that
//! starts later catches up; an unban travels too; a node whose allow-list
//! covers the address does not apply it; a node's own entries are not
//! applied twice; bans issued while Redis is away arrive once it is back.
//! `catch_up.rs`: what a stopped node missed, prefix unbans, budgets'
//! deadlines, the active set read a page at a time.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

#[path = "fleet_bans/catch_up.rs"]
mod catch_up;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{get_from, request, FakeUpstream, Reply},
    netns::{Topology, CLIENT2_V4, CLIENT_V4, SERVER_V4},
    redis::Redis,
    require_root,
};

const PORT: u16 = 18080;
/// Connects to a banned source's SYNs would retry for seconds.
const CONNECT: Duration = Duration::from_millis(700);
/// Bounded wait for something to reach another node.
const ARRIVES: Duration = Duration::from_secs(15);

/// One host: its namespaces, its upstream and its gateway with XDP on
/// `PORT`, sharing `redis`; `extra` goes into the `[xdp]` table.
struct Node {
    topology: Topology,
    gateway: Gateway,
    _upstream: FakeUpstream,
}

impl Node {
    fn start(redis: &Redis, xdp: &str) -> Self {
        let topology = Topology::new();
        let upstream = topology.server.run(|| FakeUpstream::start(None));
        let body = format!(
            r#"
[[listeners]]
address = "{SERVER_V4}:{PORT}"

[guard]
auth_failures = 5
auth_failure_window = "30s"
auth_failure_ban = "30s"

[redis]
url = "{url}"

[[upstreams]]
name = "app"
servers = ["{upstream}"]

[[routes]]
path_prefix = "/"
upstream = "app"
"#,
            url = redis.url(),
            upstream = upstream.addr
        );
        let body = match xdp {
            "" => body,
            xdp => format!("{body}\n[xdp]\n{xdp}\n"),
        };
        let gateway = Gateway::builder(&body)
            .in_namespace(&topology.server)
            .xdp(&PORT.to_string())
            .start();
        Node {
            topology,
            gateway,
            _upstream: upstream,
        }
    }

    /// `GET /` with `key` from `source` on this host's client side.
    fn get(&self, source: &str, key: &str) -> std::io::Result<Reply> {
        let source = source.parse().unwrap();
        let key = key.to_owned();
        let server = SocketAddr::new(SERVER_V4.parse().unwrap(), PORT);
        (self.topology.client)
            .run(move || get_from(source, server, "/", &[("x-api-key", &key)], CONNECT))
    }

    /// This node's kernel ban of `source`: (ms left, reason, offences).
    fn ban(&self, source: &str) -> Option<(u64, String, u64)> {
        let bans: serde_json::Value =
            serde_json::from_str(&self.gateway.xdp(&["bans", "--json"])).unwrap();
        let ban = bans
            .as_array()?
            .iter()
            .find(|ban| ban["source"] == source)?;
        Some((
            ban["expires_in_ms"].as_u64()?,
            ban["reason"].as_str()?.to_owned(),
            ban["offences"].as_u64()?,
        ))
    }

    fn wait_for_ban(&self, source: &str) -> (u64, String, u64) {
        let deadline = Instant::now() + ARRIVES;
        loop {
            if let Some(ban) = self.ban(source) {
                return ban;
            }
            assert!(Instant::now() < deadline, "{source}'s ban never arrived");
            gateway_tests::http::pause(Duration::from_millis(50));
        }
    }

    /// The same gateway again, on its config, state and pinned maps.
    fn restart(self) -> Self {
        let Node {
            topology,
            gateway,
            _upstream,
        } = self;
        Node {
            topology,
            gateway: gateway.restart(),
            _upstream,
        }
    }

    /// This node's kernel bans (`gateway xdp bans --json`).
    fn bans(&self) -> Vec<serde_json::Value> {
        let bans: serde_json::Value =
            serde_json::from_str(&self.gateway.xdp(&["bans", "--json"])).unwrap();
        bans.as_array().cloned().unwrap_or_default()
    }

    /// This node's kernel budget of `source`, if it has its own.
    fn budget(&self, source: &str) -> Option<serde_json::Value> {
        let budgets: serde_json::Value =
            serde_json::from_str(&self.gateway.xdp(&["budgets", "--json"])).unwrap();
        (budgets.as_array()?.iter())
            .find(|budget| budget["source"] == source)
            .cloned()
    }

    /// A metric's value, 0 while it is not exposed.
    fn metric_or_zero(&self, name: &str) -> u64 {
        let admin = self.gateway.admin.unwrap();
        let text = (self.topology.server).run(move || request(admin, "GET", "/metrics", &[]).body);
        (text.lines())
            .find(|line| line.split(' ').next() == Some(name))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    fn metric(&self, name: &str) -> u64 {
        let admin = self.gateway.admin.unwrap();
        let text = (self.topology.server).run(move || request(admin, "GET", "/metrics", &[]).body);
        let line = text
            .lines()
            .find(|line| line.split(' ').next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Guesses keys from `source` until its connects fail (bounded).
    fn guess_until_banned(&self, source: &str) {
        for i in 0..40 {
            match self.get(source, &format!("gk_guess{i:04}_x")) {
                Ok(reply) => assert_eq!(reply.status, 401),
                Err(_) => return,
            }
        }
        panic!("{source} was never banned");
    }
}

#[test]
fn a_guard_ban_reaches_every_other_nodes_kernel_but_not_an_allowed_one() {
    if !require_root("a_guard_ban_reaches_every_other_nodes_kernel_but_not_an_allowed_one") {
        return;
    }
    let Some(redis) = Redis::start("fleet_bans") else {
        return;
    };
    let a = Node::start(&redis, "");
    let b = Node::start(&redis, "");
    let c = Node::start(&redis, &format!("allow = [\"{CLIENT_V4}/32\"]"));
    let b_key = b.gateway.create_key("gold");
    let c_key = c.gateway.create_key("gold");
    // The nodes see a new key at their next store poll (`keys.refresh`, 1 s).
    gateway_tests::http::pause(Duration::from_millis(1500));
    assert_eq!(b.get(CLIENT_V4, &b_key).unwrap().status, 200);

    a.guess_until_banned(CLIENT_V4);
    let (left_a, reason, offences) = a.ban(CLIENT_V4).unwrap();
    assert_eq!((reason.as_str(), offences), ("auth_failures", 1));

    let (left_b, reason, offences) = b.wait_for_ban(CLIENT_V4);
    assert_eq!((reason.as_str(), offences), ("auth_failures", 1));
    // The time left travelled (wall clock through Redis, B's own monotonic clock).
    assert!(
        left_b <= left_a + 1000 && left_b + ARRIVES.as_millis() as u64 >= left_a,
        "{left_a} {left_b}"
    );
    assert!(
        !b.topology.connects(CLIENT_V4, SERVER_V4, PORT, CONNECT),
        "B still accepts the banned source"
    );
    assert!(b.gateway.counter("dropped_banned") > 0);
    assert_eq!(b.get(CLIENT2_V4, &b_key).unwrap().status, 200);
    assert!(b.metric("gateway_fleet_policy_applied_total") >= 1);

    // C's allow-list covers the address: nothing in its kernel, still served.
    let deadline = Instant::now() + ARRIVES;
    while c.metric("gateway_fleet_policy_skipped_allowed_total") == 0 {
        assert!(Instant::now() < deadline, "C never saw the ban");
        gateway_tests::http::pause(Duration::from_millis(50));
    }
    assert_eq!(c.ban(CLIENT_V4), None);
    assert_eq!(c.get(CLIENT_V4, &c_key).unwrap().status, 200);

    // A did not apply its own ban a second time, and Redis holds it.
    assert_eq!(a.ban(CLIENT_V4).unwrap().2, 1);
    let active = redis.command(&[
        "HGET",
        "gateway:fleet:policy:active",
        &format!("ban:source:{CLIENT_V4}/32"),
    ]);
    assert!(
        active.contains("auth_failures") || active.contains("\"reason\":2"),
        "{active}"
    );
}

#[test]
fn a_late_node_catches_up_and_cli_bans_and_unbans_travel() {
    if !require_root("a_late_node_catches_up_and_cli_bans_and_unbans_travel") {
        return;
    }
    let Some(redis) = Redis::start("fleet_bans") else {
        return;
    };
    let url = redis.url();
    let a = Node::start(&redis, "");
    a.gateway
        .xdp(&["ban", CLIENT2_V4, "--for", "60s", "--redis", &url]);
    assert!(a.ban(CLIENT2_V4).is_some());

    // B starts after the ban: it catches up from the active set.
    let b = Node::start(&redis, "");
    let (left, reason, _) = b.wait_for_ban(CLIENT2_V4);
    assert_eq!(reason, "manual");
    assert!((40_000..=60_000).contains(&left), "{left}");
    assert!(!b.topology.connects(CLIENT2_V4, SERVER_V4, PORT, CONNECT));

    a.gateway.xdp(&["unban", CLIENT2_V4, "--redis", &url]);
    let deadline = Instant::now() + ARRIVES;
    while b.ban(CLIENT2_V4).is_some() {
        assert!(Instant::now() < deadline, "the unban never reached B");
        gateway_tests::http::pause(Duration::from_millis(50));
    }
    assert!(b
        .topology
        .connects(CLIENT2_V4, SERVER_V4, PORT, Duration::from_secs(3)));
    let active = redis.command(&["HLEN", "gateway:fleet:policy:active"]);
    assert!(
        !redis
            .command(&["HKEYS", "gateway:fleet:policy:active"])
            .contains(CLIENT2_V4),
        "{active}"
    );
}

#[test]
fn bans_issued_while_redis_is_away_arrive_when_it_is_back() {
    if !require_root("bans_issued_while_redis_is_away_arrive_when_it_is_back") {
        return;
    }
    let Some(mut redis) = Redis::start("fleet_bans") else {
        return;
    };
    let a = Node::start(&redis, "");
    let b = Node::start(&redis, "");
    redis.kill();
    a.guess_until_banned(CLIENT_V4);
    assert!(a.ban(CLIENT_V4).is_some());
    assert_eq!(b.ban(CLIENT_V4), None);
    redis.restart();
    let (_, reason, _) = b.wait_for_ban(CLIENT_V4);
    assert_eq!(reason, "auth_failures");
    assert!(!b.topology.connects(CLIENT_V4, SERVER_V4, PORT, CONNECT));
    assert!(a.metric("gateway_fleet_redis_errors_total") > 0);
}

#[test]
fn hostile_stream_entries_are_ignored_and_the_node_keeps_serving() {
    if !require_root("hostile_stream_entries_are_ignored_and_the_node_keeps_serving") {
        return;
    }
    let Some(redis) = Redis::start("fleet_bans") else {
        return;
    };
    let b = Node::start(&redis, "");
    let key = b.gateway.create_key("gold");
    gateway_tests::http::pause(Duration::from_millis(1500));
    // Anyone who can write to the Redis: a ban of every IPv4 source (as
    // a source and as an IPv6 prefix holding the mapped range), garbage,
    // an oversized client id; then one valid ban.
    let far = "99999999999999";
    let hostile = [
        format!(
            r#"{{"op":"ban","target":{{"kind":"source","net":"0.0.0.0/0"}},"until_ms":{far},"reason":0}}"#
        ),
        format!(
            r#"{{"op":"ban","target":{{"kind":"source","net":"::/64"}},"until_ms":{far},"reason":0}}"#
        ),
        "not json at all".to_owned(),
        format!(
            r#"{{"op":"ban","target":{{"kind":"client","ip":"{CLIENT2_V4}","client":"{}"}},"until_ms":{far},"reason":0}}"#,
            "x".repeat(300)
        ),
    ];
    for entry in &hostile {
        redis.command(&[
            "XADD",
            "gateway:fleet:policy",
            "*",
            "node",
            "evil",
            "entry",
            entry,
        ]);
    }
    let valid = format!(
        r#"{{"op":"ban","target":{{"kind":"source","net":"{CLIENT_V4}/32"}},"until_ms":{far},"reason":0}}"#
    );
    redis.command(&[
        "XADD",
        "gateway:fleet:policy",
        "*",
        "node",
        "evil",
        "entry",
        &valid,
    ]);

    let (left, _, _) = b.wait_for_ban(CLIENT_V4);
    // The far deadline is clamped to about a year.
    assert!(left <= 366 * 24 * 3600 * 1000, "{left}");
    assert!(b.metric("gateway_fleet_policy_invalid_total") >= 4);
    let bans: serde_json::Value =
        serde_json::from_str(&b.gateway.xdp(&["bans", "--json"])).unwrap();
    assert_eq!(bans.as_array().unwrap().len(), 1, "{bans}");
    assert_eq!(b.get(CLIENT2_V4, &key).unwrap().status, 200);
}
