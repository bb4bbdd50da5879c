//! `[limits] backend = "redis"` end to end: three gateways on one real
//! Redis share a client's quota within the README's bound
//! (admitted ≤ exact GCRA + N·(L + P)), spread evenly, 80/10/10 and on one
//! node, with far fewer Redis calls than requests; hostile values in the
//! limiter's keys never fail open; with Redis killed or hung each node
//! limits at quota / N and says so in its metrics, goes back to shared
//! limits by itself when Redis returns, and charges what it admitted
//! meanwhile.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::time::{Duration, Instant};

use gateway_tests::{
    gateway::Gateway,
    http::{pause, FakeUpstream},
    redis::Redis,
};

const NODES: usize = 3;

/// Which node serves the i-th request.
type Pick = fn(u32) -> usize;

fn config(redis: &Redis, upstream: &FakeUpstream, tier: &str, lease: u32) -> String {
    format!(
        "[limits]\nbackend = \"redis\"\nlease = {lease}\n\n\
         [guard]\nmode = \"off\"\n\n\
         [redis]\nurl = \"{}\"\n\n{tier}\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        redis.url(),
        upstream.addr
    )
}

/// The guard is off: its bans of a source ignoring 429s are not the subject.
/// `NODES` gateways with one key store (copied from the first), so the
/// same clients (one key per entry of `tiers`) authenticate on every node.
fn fleet(body: &str, clients: usize) -> (Vec<Gateway>, Vec<String>) {
    let builders: Vec<_> = (0..NODES).map(|_| Gateway::builder(body)).collect();
    let keys: Vec<String> = (0..clients)
        .map(|_| builders[0].create_key("bronze"))
        .collect();
    let store = builders[0].config.parent().unwrap().join("keys.db");
    for builder in &builders[1..] {
        let dir = builder.config.parent().unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let from = store.with_file_name(format!("keys.db{suffix}"));
            if from.exists() {
                std::fs::copy(&from, dir.join(format!("keys.db{suffix}"))).unwrap();
            }
        }
    }
    let gateways = builders.into_iter().map(|b| b.start()).collect();
    (gateways, keys)
}

/// Until every node shows `name` = `value` (bounded: 15 s).
fn wait_for(gateways: &[Gateway], name: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for gateway in gateways {
        while gateway.metric(name) != Some(value) {
            assert!(
                Instant::now() < deadline,
                "{name} never became {value}: {:?}",
                gateway.metric(name)
            );
            pause(Duration::from_millis(50));
        }
    }
}

/// `count` requests paced at `every`, node `pick(i)` for the i-th; the
/// admitted count and how long the run took. Anything but 200 or 429 fails.
fn flood(
    gateways: &[Gateway],
    key: &str,
    count: u32,
    every: Duration,
    pick: impl Fn(u32) -> usize,
) -> (u64, Duration) {
    let start = Instant::now();
    let mut admitted = 0;
    for i in 0..count {
        let due = start + every * i;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            pause(wait);
        }
        let reply = gateways[pick(i)].get("/", &[("x-api-key", key)]);
        match reply.status {
            200 => admitted += 1,
            429 => {}
            other => panic!("request {i}: {other} {}", reply.body),
        }
    }
    (admitted, start.elapsed())
}

/// Calls all nodes made to Redis so far.
fn calls(gateways: &[Gateway]) -> u64 {
    (gateways.iter())
        .map(|g| g.metric("gateway_limits_redis_calls_total").unwrap())
        .sum()
}

#[test]
fn a_client_over_its_limit_on_three_nodes_stays_within_the_bound() {
    let Some(redis) = Redis::start("a_client_over_its_limit_on_three_nodes_stays_within_the_bound")
    else {
        return;
    };
    let upstream = FakeUpstream::start(None);
    // 10 requests/s (T = 100 ms), burst B = 10; the default lease:
    // L = min(10/s · 1 s, ⌈B/N⌉) = 4.
    let tier = "[[tiers]]\nname = \"bronze\"\nrequests = 20\nwindow = \"2s\"\nburst = 10\n";
    let (lease, burst, interval) = (4u64, 10u64, Duration::from_millis(100));
    let spreads: [(&str, Pick); 3] = [
        ("evenly", |i| i as usize % NODES),
        ("80/10/10", |i| match i % 10 {
            0..=7 => 0,
            8 => 1,
            _ => 2,
        }),
        ("one node only", |_| 0),
    ];
    let (gateways, keys) = fleet(&config(&redis, &upstream, tier, 0), spreads.len());
    wait_for(&gateways, "gateway_limits_backend_fallback", 0);
    wait_for(&gateways, "gateway_limits_fleet_nodes", NODES as u64);
    let n = NODES as u64;
    // P = min(L, ⌈B/N⌉).
    let provisional = lease.min(burst.div_ceil(n));
    let mut served = 0;
    let (mut requests, mut spent) = (0, 0);
    for ((spread, pick), key) in spreads.into_iter().zip(&keys) {
        let before = calls(&gateways);
        // Three times the limit (30/s) for 3 s, from rest.
        let (admitted, elapsed) = flood(&gateways, key, 90, Duration::from_millis(33), pick);
        let made = calls(&gateways) - before;
        // Exact GCRA from rest over the run: the burst plus one per interval.
        let exact = burst + (elapsed.as_nanos() / interval.as_nanos()) as u64 + 1;
        let bound = exact + n * (lease + provisional);
        println!(
            "{spread}: admitted {admitted} of 90 in {elapsed:?}; exact GCRA {exact}; \
             bound exact + N·(L+P) = {bound}; redis calls {made} (heartbeats included), \
             {:.2} per request",
            made as f64 / 90.0
        );
        assert!(admitted <= bound, "{spread}: {admitted} > {bound}");
        assert!(admitted >= burst / 2, "{spread}: only {admitted} admitted");
        served += admitted;
        (requests, spent) = (requests + 90, spent + made);
        // The quota lives in Redis, under hashed keys (each expires once whole).
        let count = redis.command(&["EVAL", "return #redis.call('KEYS', 'gw:limit:*')", "0"]);
        assert_ne!(count, ":0", "{spread}: no limit key in redis");
    }
    assert_eq!(
        upstream.requests().len() as u64,
        served,
        "the upstream saw the admitted"
    );
    // Redis saw batches, not requests: a refill takes up to a lease, the
    // heartbeat rides along, a node short of tokens waits for enough.
    println!(
        "redis calls (all nodes, with heartbeats): {spent} for {requests} requests, {:.2} per request",
        spent as f64 / requests as f64
    );
    assert!(
        spent * 3 <= requests,
        "{spent} calls for {requests} requests"
    );
}

/// The GCRA key Redis holds for the one client seen so far.
fn limit_key(redis: &Redis) -> String {
    let reply = redis.command(&["KEYS", "gw:limit:*"]);
    let key = reply.lines().find(|l| l.starts_with("gw:limit:"));
    key.unwrap_or_else(|| panic!("no limit key: {reply:?}"))
        .to_owned()
}

#[test]
fn hostile_values_in_redis_are_read_as_a_quota_used_and_never_stop_the_fleet() {
    let Some(redis) =
        Redis::start("hostile_values_in_redis_are_read_as_a_quota_used_and_never_stop_the_fleet")
    else {
        return;
    };
    let upstream = FakeUpstream::start(None);
    // 6 a minute (one per 10 s), burst 5: no token comes back during the test.
    let tier = "[[tiers]]\nname = \"bronze\"\nrequests = 6\nwindow = \"60s\"\nburst = 5\n";
    let (gateways, keys) = fleet(&config(&redis, &upstream, tier, 0), 1);
    let key = &keys[0];
    wait_for(&gateways, "gateway_limits_backend_fallback", 0);
    wait_for(&gateways, "gateway_limits_fleet_nodes", NODES as u64);
    // Node 0 makes the key exist in Redis.
    assert_eq!(gateways[0].get("/", &[("x-api-key", key)]).status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.command(&["EVAL", "return #redis.call('KEYS', 'gw:limit:*')", "0"]) != ":1" {
        assert!(Instant::now() < deadline, "no limit key in redis");
        pause(Duration::from_millis(20));
    }
    let redis_key = limit_key(&redis);
    let k = redis_key.as_str();
    let before = upstream.requests().len();
    // Garbage where a number was; then a key of the wrong type. A node
    // that never saw the client (its provisional allowance, L = P = 1,
    // is all it may admit) meets each on its first refill.
    let hostile: [(&str, &[&[&str]]); 2] = [
        ("garbage", &[&["SET", k, "garbage"]]),
        ("a list", &[&["DEL", k], &["RPUSH", k, "x", "y"]]),
    ];
    for (node, (what, commands)) in (1..).zip(hostile) {
        for command in commands {
            redis.command(command);
        }
        let gateway = std::slice::from_ref(&gateways[node]);
        let (admitted, _) = flood(gateway, key, 20, Duration::from_millis(20), |_| 0);
        println!("{what}: node {node} admitted {admitted} of 20 (its provisional 1)");
        assert!(admitted <= 1, "{what}: {admitted} admitted: failed open");
        let seen = gateways[node].metric("gateway_limits_redis_hostile_total");
        assert_eq!(seen, Some(1), "{what}: counted");
        // Never a breaker open for every key over one key's value.
        assert_eq!(
            gateways[node].metric("gateway_limits_backend_fallbacks_total"),
            Some(0),
            "{what}"
        );
        // Overwritten with a number (the quota fully used).
        let value = redis.command(&["GET", k]);
        let number = value.lines().nth(1).and_then(|v| v.parse::<u64>().ok());
        assert!(number.is_some(), "{what}: {value:?}");
    }
    assert_eq!(upstream.requests().len() - before, 2);
}

#[test]
fn a_hung_redis_falls_back_and_its_recovery_charges_what_the_fallback_admitted() {
    let Some(redis) =
        Redis::start("a_hung_redis_falls_back_and_its_recovery_charges_what_the_fallback_admitted")
    else {
        return;
    };
    let upstream = FakeUpstream::start(None);
    // 30 a minute (one per 2 s), burst 30: 10 per node while Redis hangs;
    // the default lease L = P = 1.
    let tier = "[[tiers]]\nname = \"bronze\"\nrequests = 30\nwindow = \"60s\"\nburst = 30\n";
    let (gateways, keys) = fleet(&config(&redis, &upstream, tier, 0), 1);
    let key = &keys[0];
    wait_for(&gateways, "gateway_limits_backend_fallback", 0);
    wait_for(&gateways, "gateway_limits_fleet_nodes", NODES as u64);

    // Accepts, keeps its data, answers nothing: the calls time out.
    redis.pause();
    wait_for(&gateways, "gateway_limits_backend_fallback", 1);
    let start = Instant::now();
    let mut during = 0;
    for gateway in &gateways {
        let (admitted, _) = flood(
            std::slice::from_ref(gateway),
            key,
            15,
            Duration::ZERO,
            |_| 0,
        );
        during += admitted;
    }
    println!("redis hung: admitted {during} of 45 (shares 3 × 10)");
    assert!((30..=33).contains(&during), "{during}");

    redis.resume();
    wait_for(&gateways, "gateway_limits_backend_fallback", 0);
    // The whole burst was spent while it hung: exact GCRA has one token
    // per 2 s since; each node may add its lease and provisional.
    let (after, _) = flood(&gateways, key, 30, Duration::from_millis(20), |i| {
        i as usize % NODES
    });
    let exact = start.elapsed().as_secs() / 2 + 1;
    let bound = exact + NODES as u64 * 2;
    println!("redis back: admitted {after} of 30; exact GCRA {exact}, bound {bound}");
    assert!(
        after <= bound,
        "{after} > {bound}: the quota was handed out twice"
    );
    assert_eq!(upstream.requests().len() as u64, during + after);
}

#[test]
fn with_redis_down_each_node_limits_at_its_share_and_recovers() {
    let Some(mut redis) =
        Redis::start("with_redis_down_each_node_limits_at_its_share_and_recovers")
    else {
        return;
    };
    let upstream = FakeUpstream::start(None);
    // 30 a minute, burst 30: 10 per node while Redis is down.
    let tier = "[[tiers]]\nname = \"bronze\"\nrequests = 30\nwindow = \"60s\"\nburst = 30\n";
    let (gateways, keys) = fleet(&config(&redis, &upstream, tier, 2), 1);
    let key = &keys[0];
    wait_for(&gateways, "gateway_limits_backend_fallback", 0);
    wait_for(&gateways, "gateway_limits_fleet_nodes", NODES as u64);

    redis.kill();
    wait_for(&gateways, "gateway_limits_backend_fallback", 1);
    let before = upstream.requests().len();
    let mut served = 0;
    for (node, gateway) in gateways.iter().enumerate() {
        let (admitted, _) = flood(
            std::slice::from_ref(gateway),
            key,
            20,
            Duration::ZERO,
            |_| 0,
        );
        println!("redis down: node {node} admitted {admitted} of 20 (share 30 / 3 = 10)");
        // 10, or 11 if a token came back (one per 6 s per node) meanwhile.
        assert!((10..=11).contains(&admitted), "node {node}: {admitted}");
        assert!(
            gateway
                .metric("gateway_limits_backend_fallbacks_total")
                .unwrap()
                >= 1
        );
        served += admitted as usize;
    }
    assert_eq!(upstream.requests().len() - before, served);

    redis.restart();
    let back = Instant::now();
    wait_for(&gateways, "gateway_limits_backend_fallback", 0);
    // Printed, not asserted (a shared machine): the breaker probes every 250 ms.
    println!(
        "redis back: every node off its fallback {:?} after Redis answered PING",
        back.elapsed()
    );
    let reply = gateways[1].get("/", &[("x-api-key", key)]);
    assert_eq!(
        reply.status, 200,
        "shared again: a fresh Redis has the whole quota"
    );
    // The refill reached the new server: the quota is shared again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.command(&["EVAL", "return #redis.call('KEYS', 'gw:limit:*')", "0"]) != ":1" {
        assert!(Instant::now() < deadline, "no limit key in the new redis");
        pause(Duration::from_millis(50));
    }
}
