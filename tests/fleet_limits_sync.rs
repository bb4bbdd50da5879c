//! `[limits] backend = "redis_sync"`, the per-request baseline of `cargo
//! xtask bench fleet`: three gateways on one real Redis ask it on every
//! request, so a client spread over the nodes gets exactly what one GCRA
//! allows on the schedule sent (no lease, no error bound), and each
//! request is one script call in Redis.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::time::{Duration, Instant};

use gateway_tests::{
    gateway::Gateway,
    http::{pause, FakeUpstream},
    redis::Redis,
};

const NODES: usize = 3;
/// 2 per second (one per 500 ms), burst 4.
const TIER: &str = "[[tiers]]\nname = \"bronze\"\nrequests = 2\nwindow = \"1s\"\nburst = 4\n";
const INTERVAL_MS: u64 = 500;
const BURST: u64 = 4;
/// Bursts of back-to-back requests at these offsets (ms): each lands a
/// quarter interval (250 ms) away from any GCRA boundary, so the machine's
/// noise cannot move a decision.
const BURSTS_MS: [u64; 3] = [0, 1250, 2750];
const PER_BURST: usize = 8;

/// GCRA run exactly on `times` (ms), cost 1: how many it admits.
fn exact(times: &[u64]) -> u64 {
    let (mut tat, mut admitted) = (0u64, 0);
    for &t in times {
        let new = tat.max(t) + INTERVAL_MS;
        if new - t <= INTERVAL_MS * BURST {
            tat = new;
            admitted += 1;
        }
    }
    admitted
}

#[test]
fn per_request_redis_admits_exactly_the_gcra_across_three_nodes() {
    let Some(redis) = Redis::start("per_request_redis_admits_exactly_the_gcra_across_three_nodes")
    else {
        return;
    };
    let upstream = FakeUpstream::start(None);
    let body = format!(
        "[limits]\nbackend = \"redis_sync\"\nnodes = {NODES}\n\n[guard]\nmode = \"off\"\n\n\
         [redis]\nurl = \"{}\"\n\n{TIER}\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        redis.url(),
        upstream.addr
    );
    // One key store, copied to every node: the same client everywhere.
    let builders: Vec<_> = (0..NODES).map(|_| Gateway::builder(&body)).collect();
    let key = builders[0].create_key("bronze");
    let store = builders[0].config.parent().unwrap().join("keys.db");
    for builder in &builders[1..] {
        for suffix in ["", "-wal", "-shm"] {
            let from = store.with_file_name(format!("keys.db{suffix}"));
            if from.exists() {
                let dir = builder.config.parent().unwrap();
                std::fs::copy(&from, dir.join(format!("keys.db{suffix}"))).unwrap();
            }
        }
    }
    let gateways: Vec<Gateway> = builders.into_iter().map(|b| b.start()).collect();

    let start = Instant::now();
    let (mut times, mut admitted, mut sent) = (Vec::new(), Vec::new(), 0usize);
    for at in BURSTS_MS {
        if let Some(wait) =
            (start + Duration::from_millis(at)).checked_duration_since(Instant::now())
        {
            pause(wait);
        }
        let mut ok = 0;
        for _ in 0..PER_BURST {
            // Round robin: every node asks the one state in Redis.
            let reply = gateways[sent % NODES].get("/", &[("x-api-key", &key)]);
            sent += 1;
            match reply.status {
                200 => ok += 1,
                429 => {}
                other => panic!("request {sent}: {other} {}", reply.body),
            }
        }
        times.extend([at; PER_BURST]);
        admitted.push(ok);
    }
    // Each burst: what the GCRA admits by then, less the bursts before.
    let want: Vec<u64> = (1..=BURSTS_MS.len())
        .map(|n| exact(&times[..n * PER_BURST]) - exact(&times[..(n - 1) * PER_BURST]))
        .collect();
    assert_eq!(want, [4, 2, 3], "the schedule's GCRA");
    assert_eq!(admitted, want, "admitted per burst on three nodes");
    assert_eq!(
        upstream.requests().len() as u64,
        want.iter().sum::<u64>(),
        "the upstream saw exactly the admitted"
    );
    // One script call per request, and the state is in Redis.
    let calls: u64 = (gateways.iter())
        .map(|g| g.metric("gateway_limits_redis_calls_total").unwrap())
        .sum();
    assert_eq!(calls, sent as u64, "one Redis call per request");
    for gateway in &gateways {
        assert_eq!(gateway.metric("gateway_limits_backend_fallback"), Some(0));
    }
    let count = redis.command(&["EVAL", "return #redis.call('KEYS', 'gw:limit:*')", "0"]);
    assert_eq!(count, ":1", "one GCRA state in redis");
}
