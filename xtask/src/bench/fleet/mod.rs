//! `cargo xtask bench fleet`: fleet mode measured in one run (root, for
//! the throwaway PostgreSQL). Three gateways on one PostgreSQL store with
//! the leased Redis limiter (`[limits] backend = "redis"`), three with the
//! per-request baseline (`backend = "redis_sync"`: one Redis round trip per
//! request, as Envoy's global rate limit and Kong's synchronous policies
//! do), each fleet on a Redis of its own so its commands can be counted,
//! and one single node (SQLite, local limiter); all in front of one
//! upstream, release builds. Owns the `fleet` section of bench/RESULTS.md.
mod measure;

use std::{path::Path, process::Command, time::Duration};

use anyhow::{bail, Context, Result};
use gateway_tests::{gateway::Gateway, http::FakeUpstream, postgres::Postgres, redis::Redis};

use super::{results, stats::median};
use measure::{Limiter, Spread};

pub(crate) const NODES: usize = 3;
/// Accuracy tier: 10 per second (T = 100 ms), burst B = 10.
const ACC: (u32, u32, u32) = (20, 2, 10);
/// The default lease (`fleet::limits::auto_lease`): what the quota allows
/// in one second, at most ⌈B/N⌉ (4 for the accuracy tier).
const LEASE: u32 = {
    let per_second = ACC.0.div_ceil(ACC.1);
    let share = ACC.2.div_ceil(NODES as u32);
    if per_second < share {
        per_second
    } else {
        share
    }
};
/// The client sends at OVER x its rate for ACC_SECONDS.
const OVER: u32 = 3;
const ACC_SECONDS: u32 = 3;

pub(super) fn run(rounds: usize, seconds: u32, propagations: usize) -> Result<()> {
    let gateway_bin = crate::build(true)?;
    // The test harness starts the gateways: this binary, not the debug one.
    std::env::set_var("GATEWAY_BIN", &gateway_bin);
    let postgres = Postgres::start("bench fleet")
        .context("bench fleet needs root and PostgreSQL 15 (cargo xtask setup)")?;
    let start_redis = || Redis::start("bench fleet").context("redis-server is not installed");
    let (leased_redis, sync_redis) = (start_redis()?, start_redis()?);
    let url = postgres.url();
    migrate(&gateway_bin, &url)?;
    let upstream = FakeUpstream::start(None);
    let body = |limits: &str, redis: &Redis| {
        format!(
            "{limits}\n[guard]\nmode = \"off\"\n\n[redis]\nurl = \"{}\"\n\n{}",
            redis.url(),
            common(&upstream)
        )
    };
    let leased_body = body(
        &format!("[limits]\nbackend = \"redis\"\nnodes = {NODES}\n"),
        &leased_redis,
    );
    let sync_body = body(
        &format!("[limits]\nbackend = \"redis_sync\"\nnodes = {NODES}\n"),
        &sync_redis,
    );
    let single_body = format!("[guard]\nmode = \"off\"\n\n{}", common(&upstream));
    let node = |body: &str| Gateway::builder(body).shared_store(&url);
    // Every client before the nodes start: they load them from the store.
    let first = node(&leased_body);
    let acc_keys: Vec<String> = (0..2 * 2 * rounds)
        .map(|_| first.create_key("acc"))
        .collect();
    let lat_key = first.create_key("lat");
    let single = Gateway::builder(&single_body);
    let single_key = single.create_key("lat");
    let mut leased = vec![first.start()];
    leased.extend((1..NODES).map(|_| node(&leased_body).start()));
    let sync: Vec<Gateway> = (0..NODES).map(|_| node(&sync_body).start()).collect();
    let single = single.start();
    measure::wait_for_fleet(&leased)?;

    let uptime = results::first_line("uptime", &[]);
    println!("bench fleet: 3 + 3 + 1 gateways up ({uptime})");
    // Accuracy: a fresh client per limiter, spread and round.
    let (requests, window_s, burst) = ACC;
    let interval = Duration::from_secs(window_s.into()) / requests;
    let count = OVER * requests / window_s * ACC_SECONDS;
    let every = interval / OVER;
    let mut keys = acc_keys.iter();
    let mut admitted = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    let mut ideal = [[Vec::new(), Vec::new()], [Vec::new(), Vec::new()]];
    for round in 0..rounds {
        for (l, fleet) in [&leased, &sync].into_iter().enumerate() {
            for (s, spread) in [Spread::Even, Spread::Skewed].into_iter().enumerate() {
                let key = keys.next().context("a key per run")?;
                let run = measure::accuracy(fleet, key, count, every, spread)?;
                let exact = measure::exact_gcra(&run.times, interval, burst);
                println!(
                    "  round {} {:<9} {:<8}: admitted {} of {count}, exact GCRA {exact}",
                    round + 1,
                    Limiter::ALL[l].name(),
                    spread.name(),
                    run.admitted
                );
                admitted[l][s].push(f64::from(run.admitted));
                ideal[l][s].push(f64::from(exact));
            }
        }
    }

    // Latency and Redis commands: the same paced load on each target.
    let rate = 200;
    println!("latency: {rate} req/s per target for {seconds} s, interleaved");
    let targets: [(&[Gateway], &str, Option<&Redis>); 3] = [
        (&leased, &lat_key, Some(&leased_redis)),
        (&sync, &lat_key, Some(&sync_redis)),
        (std::slice::from_ref(&single), &single_key, None),
    ];
    let load = measure::latency(&targets, rate, seconds)?;
    for (name, l) in ["leased", "per-request", "single"].iter().zip(&load) {
        println!(
            "  {name:<11} p50 {:.3} ms p99 {:.3} ms, {} non-2xx, redis {:.1} cmd/s per node, {:.1} limiter calls/s per node",
            l.p50_ms, l.p99_ms, l.failed, l.redis_per_node, l.calls_per_node
        );
    }
    if load.iter().any(|l| l.failed > 0) {
        bail!("requests failed under the latency load: {load:?}");
    }

    // Propagation through PostgreSQL: create and revoke on A, poll B and C.
    let admin = measure::bootstrap(&leased[0])?;
    let prop = measure::propagation(&leased, &admin, propagations)?;
    println!(
        "propagation over {} rounds: create p50 {:.1} ms p99 {:.1} ms; revoke p50 {:.1} ms p99 {:.1} ms",
        propagations, prop.create.0, prop.create.1, prop.revoke.0, prop.revoke.1
    );

    let table = summary(
        &mut admitted,
        &mut ideal,
        &load,
        &prop,
        (rounds, count, seconds, rate, propagations),
        &uptime,
    );
    println!("\n{table}");
    results::record("fleet", &table)
}

/// Tiers, upstream and route every node shares: `acc` for accuracy, `lat`
/// so roomy no latency request is refused.
fn common(upstream: &FakeUpstream) -> String {
    let (requests, window_s, burst) = ACC;
    format!(
        "[[tiers]]\nname = \"acc\"\nrequests = {requests}\nwindow = \"{window_s}s\"\nburst = {burst}\n\n\
         [[tiers]]\nname = \"lat\"\nrequests = 100000\nwindow = \"1s\"\nburst = 100000\n\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"api_key\"\nrate_limit = true\n",
        upstream.addr
    )
}

/// `gateway store migrate --url URL`.
fn migrate(gateway: &Path, url: &str) -> Result<()> {
    let output = Command::new(gateway)
        .args(["store", "migrate", "--url", url])
        .output()
        .context("gateway store migrate")?;
    if !output.status.success() {
        bail!("gateway store migrate: {output:?}");
    }
    Ok(())
}

type Series = [[Vec<f64>; 2]; 2];

/// The RESULTS.md section.
fn summary(
    admitted: &mut Series,
    ideal: &mut Series,
    load: &[measure::Load],
    prop: &measure::Propagation,
    (rounds, count, seconds, rate, propagations): (usize, u32, u32, u32, usize),
    uptime: &str,
) -> String {
    let (requests, window_s, burst) = ACC;
    let n = NODES as u32;
    // P = min(L, ⌈B/N⌉); the README's bound adds N·(L + P) to exact GCRA.
    let slack = n * (LEASE + LEASE.min(burst.div_ceil(n)));
    let mut rows = String::new();
    for (l, limiter) in Limiter::ALL.iter().enumerate() {
        for (s, spread) in [Spread::Even, Spread::Skewed].iter().enumerate() {
            let (got, exact) = (median(&mut admitted[l][s]), median(&mut ideal[l][s]));
            let bound = match limiter {
                Limiter::Leased => format!("≤ {}", exact + f64::from(slack)),
                Limiter::PerRequest => format!("= {exact}"),
            };
            rows += &format!(
                "| {} | {} | {got} | {exact} | {:+} | {bound} |\n",
                limiter.name(),
                spread.name(),
                got - exact
            );
        }
    }
    let [leased, sync, single] = [&load[0], &load[1], &load[2]];
    let ratio = |a: f64, b: f64| format!("{a:.3} ({:.2}x)", a / b);
    format!(
        "## Fleet mode (`cargo xtask bench fleet`)\n\n\
         Three gateways on one PostgreSQL store (release builds, loopback, one upstream). \
         Load while measured: `{uptime}` (2 CPUs shared with other builds: wall-clock figures \
         are noisy).\n\n\
         Accuracy: a client at {OVER}x its limit ({requests} per {window_s} s, burst {burst}) for \
         {ACC_SECONDS} s ({count} requests), spread over the three nodes evenly or 80/10/10; \
         admitted = 2xx, median of {rounds} round(s); exact = GCRA run on the send times. \
         Leased: `backend = \"redis\"`, default lease L = min(rate × 1 s, ⌈B/N⌉) = {LEASE}, bound exact + N·(L + P) = exact + \
         {slack}. Per request: `backend = \"redis_sync\"`, one Redis round trip per request.\n\n\
         | limiter | spread | admitted | exact GCRA | deviation | bound |\n|---|---|---|---|---|---|\n\
         {rows}\n\
         Latency: {rate} req/s per target for {seconds} s on keep-alive connections (paced, \
         one request at a time, targets interleaved), a tier no request reaches; each fleet's \
         load spread evenly over its nodes. Redis commands: `total_commands_processed` delta \
         on the fleet's own Redis / nodes / seconds (heartbeats, refills, the ban stream's \
         reads, and the TIME/GET/SET inside each script call included; idle before the load: \
         leased {:.1}, per request {:.1} per node); limiter round trips: the nodes' \
         `gateway_limits_redis_calls_total` delta / nodes / seconds (the lat tier's default \
         lease is 10,000 tokens).\n\n\
         | | fleet, leased | fleet, per request | single node (SQLite, local) |\n|---|---|---|---|\n\
         | p50 ms (x single) | {} | {} | {:.3} |\n\
         | p99 ms (x single) | {} | {} | {:.3} |\n\
         | added p50 / p99 ms | {:+.3} / {:+.3} | {:+.3} / {:+.3} | |\n\
         | Redis commands/s per node | {:.1} | {:.1} | - |\n\
         | limiter round trips/s per node | {:.1} | {:.1} | - |\n\n\
         Propagation through PostgreSQL (LISTEN/NOTIFY), {propagations} rounds: from node A's \
         answer to the first 200 (created) or 401 (revoked) on B and C, each polled every \
         ms ({} samples each).\n\n\
         | | p50 ms | p99 ms |\n|---|---|---|\n\
         | key creation | {:.1} | {:.1} |\n| revocation | {:.1} | {:.1} |\n",
        leased.redis_idle_per_node,
        sync.redis_idle_per_node,
        ratio(leased.p50_ms, single.p50_ms),
        ratio(sync.p50_ms, single.p50_ms),
        single.p50_ms,
        ratio(leased.p99_ms, single.p99_ms),
        ratio(sync.p99_ms, single.p99_ms),
        single.p99_ms,
        leased.p50_ms - single.p50_ms,
        leased.p99_ms - single.p99_ms,
        sync.p50_ms - single.p50_ms,
        sync.p99_ms - single.p99_ms,
        leased.redis_per_node,
        sync.redis_per_node,
        leased.calls_per_node,
        sync.calls_per_node,
        2 * propagations,
        prop.create.0,
        prop.create.1,
        prop.revoke.0,
        prop.revoke.1,
    )
}
