//! `cargo xtask bench proxy`: the gateway against HAProxy 2.6 and nginx
//! doing the equivalent work (API key from a header looked up in a map of
//! 10,000 keys, 401 when absent, a per-key limit answering 429, identity
//! header set, key header removed, tier, request id and `X-Forwarded-*`
//! forwarded, keep-alive pool to the same nginx upstream), on the same
//! machine, in interleaved rounds, medians reported
//! as ratios gateway/peer.
//!
//! This module owns the run: the workloads, their order and what is
//! printed and recorded. 1: closed-loop maximum throughput with rotating
//! keys (wrk), requests/s and CPU time per request; 2: latency percentiles
//! at a fixed open-loop rate, a fraction of the slowest peer's throughput;
//! 3: workload 1 over TLS. The peers' configurations are in `configs`,
//! bringing them up in `peers`, the load in `closedloop` (wrk) and
//! `openloop`, the figures in `report`; CPU pinning and process plumbing
//! are the benches' shared `procs`. `h2` is `bench h2`: the same work over
//! HTTP/2 and TLS against HAProxy, on the same configurations and setup.
//! `conns` (`cargo xtask bench conns`) brings up the same peers to measure
//! memory per open connection. `callgrind` (`--callgrind`) counts the
//! instructions per request of the gateway and HAProxy instead.
mod callgrind;
mod closedloop;
mod configs;
mod conns;
mod h2;
mod openloop;
mod peers;
mod report;
mod timer;

use std::path::Path;

use anyhow::{bail, Context, Result};

pub(crate) use conns::run as conns;
pub(crate) use h2::run as h2;
pub(crate) use openloop::{main as open_loop, Args as OpenLoopArgs};

use self::{
    configs::PER_KEY_RATE,
    peers::{Proxy, Setup, KEYS},
    report::{Report, CPU, PEERS, PERCENTILES, RPS, TLS_CPU, TLS_RPS},
};
use super::{
    procs::{ensure_packages, CpuPlan},
    results, scratch,
};

/// Workload 2's rate, as a fraction of the slowest peer's throughput.
const LATENCY_FRACTION: f64 = 0.5;
/// Keep-alive connections of the open-loop generator.
const LATENCY_CONNECTIONS: usize = 32;

/// `unpinned`: everything shares every CPU (see [`CpuPlan::unpinned`]),
/// recorded in its own section. With `GATEWAY_BIN` (another build, to
/// compare) the figures are printed, not recorded.
pub(super) fn run(rounds: usize, seconds: u32, unpinned: bool) -> Result<()> {
    ensure_packages()?;
    let (gateway_bin, record) = gateway_bin()?;
    // The open-loop generator runs from a release build of this program.
    crate::run_cmd(crate::cargo(None).args(["build", "--release", "--package", "xtask"]))?;
    let dir = scratch::dir("gateway-bench-proxy-")?;
    let (cpus, section) = match unpinned {
        false => (CpuPlan::new(), Section::PINNED),
        true => (CpuPlan::unpinned(), Section::UNPINNED),
    };
    let report = bench(&gateway_bin, dir.path(), (rounds, seconds), &cpus, &section)?;
    record_if(record, section.name, &report)
}

/// `bench proxy --callgrind`: instructions per request (see [`callgrind`])
/// of the release build and of HAProxy, or of the binary `GATEWAY_BIN`
/// names (an older build to compare with: printed, not recorded);
/// `--unpinned` is refused, nothing runs concurrently here.
pub(super) fn callgrind(unpinned: bool) -> Result<()> {
    if unpinned {
        bail!("--callgrind counts instructions: --unpinned means nothing to it");
    }
    // HAProxy is measured beside the gateway: on a fresh machine it is not there yet.
    ensure_packages()?;
    let (gateway_bin, record) = gateway_bin()?;
    let dir = scratch::dir("gateway-bench-callgrind-")?;
    callgrind::run(&gateway_bin, dir.path(), record)
}

/// `markdown` as `bench/RESULTS.md`'s section `name` when `record` (see
/// [`gateway_bin`]); a `GATEWAY_BIN` build's figures are printed only.
fn record_if(record: bool, name: &str, markdown: &str) -> Result<()> {
    match record {
        true => results::record(name, markdown),
        false => {
            println!("GATEWAY_BIN given: bench/RESULTS.md left as it is");
            Ok(())
        }
    }
}

/// The binary to measure and whether its figures are recorded: the release
/// build (recorded), or the one `GATEWAY_BIN` names (an older build, or one
/// with another allocator, to compare: printed only).
fn gateway_bin() -> Result<(std::path::PathBuf, bool)> {
    match std::env::var_os("GATEWAY_BIN") {
        Some(path) => Ok((path.into(), false)),
        None => Ok((crate::build(true)?, true)),
    }
}

/// Where a run's figures go in `bench/RESULTS.md`.
struct Section {
    name: &'static str,
    title: &'static str,
}

impl Section {
    const PINNED: Self = Self {
        name: "proxy",
        title: "Proxy (`cargo xtask bench proxy`)",
    };
    const UNPINNED: Self = Self {
        name: "proxy-unpinned",
        title: "Proxy, unpinned (`cargo xtask bench proxy --unpinned`)",
    };
}

/// The three workloads; returns the section's text.
fn bench(
    gateway_bin: &Path,
    dir: &Path,
    (rounds, seconds): (usize, u32),
    cpus: &CpuPlan,
    section: &Section,
) -> Result<String> {
    let load_before = load_average();
    let setup = Setup::start(gateway_bin, dir, cpus, PER_KEY_RATE)?;
    let script = closedloop::script(dir, &setup.keys_file)?;
    let intro = format!(
        "Authenticated GET, {KEYS} rotating keys; {rounds} interleaved round(s) of {seconds} s \
         per proxy and workload; medians. {}.",
        cpus.describe()
    );
    let version = |program| results::first_line(program, &["-v"]);
    println!(
        "{intro}\npeers: {}; {}",
        version("haproxy"),
        version("nginx")
    );
    let all: Vec<&Proxy> = setup.peers.iter().chain([&setup.unlimited]).collect();
    println!("warm-up: 1 s per proxy and listener, not counted");
    for proxy in &all {
        for url in [proxy.url(false), proxy.url(true)].into_iter().flatten() {
            closedloop::run(cpus, &url, &script, 1, proxy.pid())?;
        }
    }

    let mut report = Report::default();
    println!(
        "workloads 1 and 3: wrk -c{} closed loop, HTTP then TLS (req/s, CPU us/req):",
        closedloop::CONNECTIONS
    );
    for round in 0..rounds {
        let mut line = format!("  round {}:", round + 1);
        for proxy in rotated(&all, round) {
            line += &format!(" | {}", proxy.name);
            for (tls, rps, cpu) in [(false, &RPS, &CPU), (true, &TLS_RPS, &TLS_CPU)] {
                let Some(url) = proxy.url(tls) else { continue };
                let sample = closedloop::run(cpus, &url, &script, seconds, proxy.pid())?;
                report.add(rps, proxy.name, sample.rps);
                report.add(cpu, proxy.name, sample.cpu_us_per_request);
                line += &format!(" {:.0} {:.1}", sample.rps, sample.cpu_us_per_request);
            }
        }
        println!("{line}");
    }

    let slowest = PEERS
        .iter()
        .chain([&report::GATEWAY])
        .map(|proxy| report.median(&RPS, proxy))
        .fold(f64::INFINITY, f64::min);
    if !slowest.is_finite() || slowest < 1.0 {
        bail!("no usable throughput to derive the latency workload's rate from ({slowest})");
    }
    let rate = (LATENCY_FRACTION * slowest).round();
    let generator = crate::target_dir().join("release/xtask");
    let generator = generator.to_str().context("target path is not UTF-8")?;
    latency(
        cpus,
        &setup,
        generator,
        rate,
        (rounds, seconds),
        &mut report,
    )?;

    report.print();
    let mut notes = notes(&setup, &report, rate);
    notes.push(format!(
        "1-minute load average {load_before} before the run and {} after, on {} CPUs: beyond the bench's \
         own load, that is other work sharing the machine.",
        load_average(),
        std::thread::available_parallelism().map_or(1, usize::from)
    ));
    for note in &notes {
        println!("note: {note}");
    }
    Ok(report.markdown(section.title, &intro, &notes))
}

/// Workload 2: open-loop latency at `rate` requests/s against each peer.
fn latency(
    cpus: &CpuPlan,
    setup: &Setup,
    generator: &str,
    rate: f64,
    (rounds, seconds): (usize, u32),
    report: &mut Report,
) -> Result<()> {
    println!(
        "workload 2: open loop at {rate:.0} req/s ({:.0}% of the slowest median throughput), \
         {LATENCY_CONNECTIONS} connections (p50/p99/p99.9 us):",
        LATENCY_FRACTION * 100.0
    );
    let peers: Vec<&Proxy> = setup.peers.iter().collect();
    for round in 0..rounds {
        let mut line = format!("  round {}:", round + 1);
        for proxy in rotated(&peers, round) {
            let args = OpenLoopArgs {
                port: proxy.listen.port,
                rate,
                seconds: seconds.into(),
                connections: LATENCY_CONNECTIONS,
                keys: setup.keys_file.clone(),
            };
            let summary = openloop::run(cpus, generator, &args)?;
            if summary.refused > 0 {
                bail!(
                    "{}: {} requests refused: the bench would measure the wrong path",
                    proxy.name,
                    summary.refused
                );
            }
            line += &format!(" | {}", proxy.name);
            for (metric, us) in PERCENTILES.iter().zip(summary.percentiles_us) {
                report.add(metric, proxy.name, us);
                line += &format!(" {us:.0}");
            }
            if summary.lost > 0 {
                line += &format!(
                    " ({} of {} failed or unanswered)",
                    summary.lost, summary.scheduled
                );
            }
        }
        println!("{line}");
    }
    Ok(())
}

/// The proxies in an order that moves by one each round, so none is
/// always measured first.
fn rotated<'a>(proxies: &[&'a Proxy], round: usize) -> Vec<&'a Proxy> {
    let mut order = proxies.to_vec();
    order.rotate_left(round % proxies.len().max(1));
    order
}

/// What the figures mean and how far the peers' work is the gateway's.
fn notes(setup: &Setup, report: &Report, rate: f64) -> Vec<String> {
    let tls: Vec<String> = setup
        .peers
        .iter()
        .map(|p| format!("{}: {}", p.name, peers::tls_parameters(p)))
        .collect();
    let mut notes = vec![
        format!(
            "equivalent work: a {KEYS}-key map, 401 for unknown keys, a per-client limit of {PER_KEY_RATE} req/s \
             (bursts of {PER_KEY_RATE}) answering 429 that the runs never reach, X-Client-Id set, the key header \
             removed, the other fields the design has a gateway forward but `traceparent` (X-Client-Tier, \
             for the peers a constant as every key is in one tier; an X-Request-Id also given to the client, \
             nginx's `$request_id` from OpenSSL's RAND_bytes, HAProxy's a UUID; X-Forwarded-For and -Proto \
             from the connection), keep-alive connections to the same \
             nginx upstream (whose answers the startup check reads to confirm the headers). Gateway: SHA-256 of the key's secret in its index, GCRA limiter. HAProxy: \
             `sha2(256),hex` of the key in a `map`, stick-table `http_req_rate(1s)`. nginx: the raw keys in a \
             `map $http_x_api_key $client_id` (stock nginx has no SHA-256 without extra modules such as njs, \
             perl or Lua, so it keeps the keys themselves, and `map` compares strings case-insensitively), \
             `limit_req` (leaky bucket)."
        ),
        "the gateway also writes a JSON access-log line per request (to /dev/null), sends the upstream a \
         `traceparent` (~70 bytes) and the client its five rate-limit fields (~145 bytes), which the upstream \
         nginx and the load generator parse; the peers do none of these."
            .into(),
        "CPU per request: utime + stime of the proxy's process tree (nginx: master and workers) from /proc \
         over each wrk run, divided by the requests wrk counted."
            .into(),
        format!(
            "workload 2 ran at {rate:.0} req/s, {:.0}% of the slowest proxy's median workload-1 throughput: \
             {LATENCY_CONNECTIONS} keep-alive connections, requests due at a constant rate whatever the answers \
             do, latency from each request's due time (no coordinated omission).",
            LATENCY_FRACTION * 100.0
        ),
        format!(
            "TLS: each proxy presents an ECDSA P-256 certificate (the gateway its own self-signed one, the peers \
             one made with openssl); negotiated with OpenSSL's defaults as wrk uses them: {}.",
            tls.join("; ")
        ),
        "load generator and proxies share one machine; compare ratios, not absolutes.".into(),
    ];
    notes.extend(report.noise());
    notes
}

/// The 1-minute load average, from /proc/loadavg.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}
