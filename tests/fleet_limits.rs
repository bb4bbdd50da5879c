//! `[limits] backend = "redis"` end to end: three gateways on one real
//! Redis share a client's quota within the README's bound
//! (admitted ≤ exact GCRA + N·(L + P)), spread evenly and 80/10/10; with
//! Redis killed each node limits at quota / N and says so in its metrics,
//! and goes back to shared limits by itself when Redis returns.
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

fn metric(gateway: &Gateway, name: &str) -> Option<u64> {
    let text = gateway.admin_get("/metrics", &[]).body;
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Until every node shows `name` = `value` (bounded: 15 s).
fn wait_for(gateways: &[Gateway], name: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for gateway in gateways {
        while metric(gateway, name) != Some(value) {
            assert!(
                Instant::now() < deadline,
                "{name} never became {value}: {:?}",
                metric(gateway, name)
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

#[test]
fn a_client_over_its_limit_on_three_nodes_stays_within_the_bound() {
    let Some(redis) = Redis::start("a_client_over_its_limit_on_three_nodes_stays_within_the_bound")
    else {
        return;
    };
    let upstream = FakeUpstream::start(None);
    // 10 requests/s (T = 100 ms), burst B = 10; lease L = 2.
    let tier = "[[tiers]]\nname = \"bronze\"\nrequests = 20\nwindow = \"2s\"\nburst = 10\n";
    let (lease, burst, interval) = (2u64, 10u64, Duration::from_millis(100));
    let (gateways, keys) = fleet(&config(&redis, &upstream, tier, lease as u32), 2);
    wait_for(&gateways, "gateway_limits_backend_fallback", 0);
    wait_for(&gateways, "gateway_limits_fleet_nodes", NODES as u64);
    let n = NODES as u64;
    // P = min(L, ⌈B/N⌉).
    let provisional = lease.min(burst.div_ceil(n));
    let spreads: [(&str, Pick); 2] = [
        ("evenly", |i| i as usize % NODES),
        ("80/10/10", |i| match i % 10 {
            0..=7 => 0,
            8 => 1,
            _ => 2,
        }),
    ];
    let mut served = 0;
    for ((spread, pick), key) in spreads.into_iter().zip(&keys) {
        // Three times the limit (30/s) for 3 s.
        let (admitted, elapsed) = flood(&gateways, key, 90, Duration::from_millis(33), pick);
        // Exact GCRA from rest over the run: the burst plus one per interval.
        let exact = burst + (elapsed.as_nanos() / interval.as_nanos()) as u64 + 1;
        let bound = exact + n * (lease + provisional);
        println!(
            "{spread}: admitted {admitted} of 90 in {elapsed:?}; exact GCRA {exact}; \
             bound exact + N·(L+P) = {bound}"
        );
        assert!(admitted <= bound, "{spread}: {admitted} > {bound}");
        assert!(admitted >= burst / 2, "{spread}: only {admitted} admitted");
        served += admitted;
        // The quota lives in Redis, under hashed keys (each expires once whole).
        let count = redis.command(&["EVAL", "return #redis.call('KEYS', 'gw:limit:*')", "0"]);
        assert_ne!(count, ":0", "{spread}: no limit key in redis");
    }
    assert_eq!(
        upstream.requests().len() as u64,
        served,
        "the upstream saw the admitted"
    );
    // Redis saw batches, not requests.
    let calls: u64 = (gateways.iter())
        .map(|g| metric(g, "gateway_limits_redis_calls_total").unwrap())
        .sum();
    println!("redis calls (all nodes, with heartbeats): {calls} for 180 requests");
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
        assert!(metric(gateway, "gateway_limits_backend_fallbacks_total").unwrap() >= 1);
        served += admitted as usize;
    }
    assert_eq!(upstream.requests().len() - before, served);

    redis.restart();
    wait_for(&gateways, "gateway_limits_backend_fallback", 0);
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
