//! `cargo xtask bench limits`: the gateway's request limiter against
//! HAProxy 2.6 stick tables (`http_req_rate`) and nginx `limit_req`, all in
//! front of the same nginx upstream, in one run. Owns the peers' limiter
//! configurations, each algorithm's ideal (and its exact count for the
//! schedule sent), the accuracy run (one key at 3x its limit for one window,
//! interleaved rounds), the isolation run (one key floods, another sends
//! steadily within its limit) and the `limits` section of bench/RESULTS.md.
mod configs;

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};

use self::configs::{haproxy_config, peer_config, upstream_config};
use super::{
    http1::get,
    keys, nginx,
    procs::{ensure_packages, free_port, wait_for_port, Running},
    results, scratch,
    stats::{median, percentile},
    wrk::requests_per_sec,
};

/// Accuracy: LIMIT requests per WINDOW, bursts of BURST (the gateway's tier).
const LIMIT: u32 = 10;
const WINDOW_S: u32 = 10;
const BURST: u32 = 5;
/// nginx lets `burst + 1` through back to back (its first request leaves
/// excess 0), so one less gives the same full-window ideal.
const NGINX_BURST: u32 = BURST - 1;
/// HAProxy has no burst: its ideal over one window is the threshold itself.
const HAPROXY_MAX: u32 = LIMIT + BURST;
const OVER: u32 = 3;
/// Isolation: a roomier tier, and key B's steady rate (half its limit).
const ISO_LIMIT: u32 = 1000;
const ISO_BURST: u32 = 100;
const B_RATE: u32 = 50;
const PEERS: [&str; 3] = ["gateway", "HAProxy", "nginx"];
/// Keys every peer looks the flooding key up among (as in `bench proxy`).
const KEYS: usize = 10_000;

pub(super) fn run(rounds: usize, seconds: u32) -> Result<()> {
    ensure_packages()?;
    let gateway_bin = crate::build(true)?;
    let dir = scratch::dir("gateway-bench-limits-")?;
    bench(&gateway_bin, dir.path(), rounds, seconds)
}

#[allow(clippy::disallowed_methods, reason = "the bench is synchronous")]
fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

/// Each algorithm's full-window ideal from rest.
fn ideal(peer: usize) -> u32 {
    match peer {
        0 => LIMIT + BURST,
        1 => HAPROXY_MAX,
        _ => 1 + NGINX_BURST + LIMIT,
    }
}

/// What each algorithm, run exactly, allows for requests at `times` (ns from
/// the first): GCRA, HAProxy's counter of every request (refused ones
/// too) over a period starting at the first, nginx's leaky bucket in ms.
fn exact(peer: usize, times: &[u64]) -> u32 {
    let interval = u64::from(WINDOW_S) * 1_000_000_000 / u64::from(LIMIT);
    // nginx's first request leaves excess 0.
    let (mut tat, mut excess, mut last, mut allowed) = (0u64, -1000i64, 0i64, 0u32);
    for (seen, &t) in (1u32..).zip(times) {
        let ok = match peer {
            0 => {
                let new_tat = tat.max(t) + interval;
                let ok = new_tat - t <= interval * u64::from(BURST);
                tat = if ok { new_tat } else { tat };
                ok
            }
            1 => seen <= HAPROXY_MAX,
            _ => {
                let ms = (t / 1_000_000) as i64;
                let e = (excess - (ms - last) * i64::from(LIMIT / WINDOW_S) + 1000).max(0);
                let ok = e <= i64::from(NGINX_BURST) * 1000;
                (excess, last) = if ok { (e, ms) } else { (excess, last) };
                ok
            }
        };
        allowed += u32::from(ok);
    }
    allowed
}

fn bench(gateway_bin: &Path, dir: &Path, rounds: usize, seconds: u32) -> Result<()> {
    let d = dir.display();
    let upstream = free_port()?;
    let write = |name: &str, text: String| -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let conf = write("upstream.conf", upstream_config(dir, upstream))?;
    let start_nginx =
        |conf: &Path| Running::quiet(nginx::foreground(&mut Command::new("nginx"), conf));
    let _upstream = start_nginx(&conf)?;
    wait_for_port(upstream)?;

    // The gateway: XDP off and guard off, or the flooding key's source would
    // be banned in the kernel after `excess` 429s, which is the product's
    // point but would end the isolation run before it measured anything.
    let gw = free_port()?;
    let config = write(
        "gateway.toml",
        format!(
            "state_dir = \"{d}/state\"\n[xdp]\nenabled = false\n[admin]\nenabled = false\n\
             [guard]\nmode = \"off\"\n[keys]\nstore = \"{d}/keys.db\"\n\
             [[tiers]]\nname = \"acc\"\nrequests = {LIMIT}\nwindow = \"{WINDOW_S}s\"\nburst = {BURST}\n\
             [[tiers]]\nname = \"iso\"\nrequests = {ISO_LIMIT}\nwindow = \"{WINDOW_S}s\"\nburst = {ISO_BURST}\n\
             [[listeners]]\naddress = \"127.0.0.1:{gw}\"\n\
             [[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:{upstream}\"]\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"api_key\"\nrate_limit = true\n"
        ),
    )?;
    let keys = |tier: &str, count: usize| -> Result<Vec<(String, String)>> {
        let created = keys::create(gateway_bin, &config, "x", tier, count)?;
        Ok(created
            .into_iter()
            .map(|key| (key.api_key, key.id))
            .collect())
    };
    // A fresh key per round, so each round starts from rest everywhere;
    // every peer authenticates against the same map of all of them.
    ensure!(2 * rounds <= KEYS, "at most {} rounds", KEYS / 2);
    let acc_keys = keys("acc", rounds)?;
    let iso_keys = keys("iso", KEYS)?;
    let (sha_map, raw_map) = (dir.join("keys.sha.map"), dir.join("keys.nginx.map"));
    let every_key: Vec<_> = acc_keys.iter().chain(&iso_keys).cloned().collect();
    keys::write_maps(&sha_map, &raw_map, &every_key)?;
    let _gateway = Running::quiet(
        Command::new(gateway_bin)
            .args(["run", "--config"])
            .arg(&config),
    )?;
    wait_for_port(gw)?;

    let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
    let [ha_acc, ha_iso, ng_acc, ng_iso] = ports;
    let haproxy_conf = write(
        "haproxy.cfg",
        haproxy_config(upstream, [ha_acc, ha_iso], &sha_map),
    )?;
    let _haproxy = Running::quiet(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_conf),
    )?;

    let peer_conf = write(
        "nginx.conf",
        peer_config(dir, upstream, [ng_acc, ng_iso], &raw_map),
    )?;
    let _nginx = start_nginx(&peer_conf)?;
    for port in ports {
        wait_for_port(port)?;
    }

    // Accuracy: OVER x LIMIT requests evenly spaced over one window, the
    // three proxies' sends interleaved in each slot (order rotated per round).
    let n = OVER * LIMIT;
    let spacing = u64::from(WINDOW_S) * 1_000_000_000 / u64::from(n);
    let times: Vec<u64> = (0..u64::from(n)).map(|i| i * spacing).collect();
    let configs = [
        format!("{LIMIT} per {WINDOW_S}s, burst {BURST} (GCRA)"),
        format!("`http_req_rate({WINDOW_S}s)` > {HAPROXY_MAX}: 429"),
        format!("`rate={}r/s burst={NGINX_BURST} nodelay`", LIMIT / WINDOW_S),
    ];
    println!("accuracy: {n} requests over {WINDOW_S} s per round, {rounds} interleaved rounds");
    let mut allowed = vec![Vec::new(); 3];
    for (round, (key, _)) in acc_keys.iter().enumerate() {
        let (ports, mut conns) = ([gw, ha_acc, ng_acc], [None, None, None]);
        let mut counts = [[0u32; 3]; 3];
        let start = Instant::now() + Duration::from_millis(100);
        for &t in &times {
            for slot in 0..3 {
                let peer = (slot + round) % 3;
                sleep_until(start + Duration::from_nanos(t + slot as u64 * spacing / 3));
                let class = match get(&mut conns[peer], ports[peer], key) {
                    Ok(200..=299) => 0,
                    Ok(429) => 1,
                    _ => 2,
                };
                counts[peer][class] += 1;
            }
        }
        print!("  round {}:", round + 1);
        for (peer, [ok, limited, other]) in counts.into_iter().enumerate() {
            print!(" {} {ok} 2xx / {limited} 429 / {other} other;", PEERS[peer]);
            allowed[peer].push(f64::from(ok));
        }
        println!();
    }

    // Isolation: key A floods with wrk (closed loop) while key B sends
    // steadily at half its limit on its own connection.
    println!(
        "isolation: key A floods (wrk -t1 -c16), key B sends {B_RATE} req/s (limit {}/s) for {seconds} s, \
         {rounds} interleaved rounds",
        ISO_LIMIT / WINDOW_S
    );
    let mut runs: [Vec<Isolation>; 3] = Default::default();
    for round in 0..rounds {
        for slot in 0..3 {
            let peer = (slot + round) % 3;
            // A fresh pair each round: HAProxy counts refused requests
            // too, so a reused flooder would start over its limit.
            let [a, b] = [&iso_keys[2 * round].0, &iso_keys[2 * round + 1].0];
            let run = isolation([gw, ha_iso, ng_iso][peer], a, b, seconds)?;
            println!(
                "  round {}: {:<8} B {:>5.1}% 2xx, p99 {:>6.2} ms, p50 {:>5.2} ms | A's flood {:>7.0} req/s",
                round + 1,
                PEERS[peer],
                run.success,
                run.p99,
                run.p50,
                run.flood
            );
            runs[peer].push(run);
        }
    }
    let isolation: Vec<[f64; 3]> = (runs.iter())
        .map(|runs| {
            let of = |f: fn(&Isolation) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
            [of(|r| r.success), of(|r| r.p99), of(|r| r.flood)]
        })
        .collect();

    // Summary: the RESULTS.md section, printed too.
    let cells = |f: &dyn Fn(usize) -> String| (0..3).map(f).collect::<Vec<_>>().join(" | ");
    let medians: Vec<f64> = allowed.iter_mut().map(|counts| median(counts)).collect();
    let deviation = |p: usize| medians[p] - f64::from(ideal(p));
    let met = ["NOT met", "met"][usize::from(deviation(0).abs() <= 1.0)];
    let ratio = |v: &dyn Fn(usize) -> f64| cells(&|p| format!("{:.2} ({:.2}x)", v(p), v(0) / v(p)));
    let table = format!(
        "## Rate limits (`cargo xtask bench limits`)\n\n\
         Accuracy: one key at {OVER}x its limit ({n} requests evenly spaced over {WINDOW_S} s, from \
         rest); allowed = 2xx, median of {rounds} interleaved rounds (min-max). Isolation: key A \
         floods (wrk -t1 -c16, closed loop) while key B sends {B_RATE} req/s (limit {}/s) for \
         {seconds} s; medians of {rounds} interleaved rounds. Every peer does the same work per \
         request: the key looked up among {KEYS} and one per accuracy round (HAProxy: its SHA-256 in a `map`; nginx: the raw \
         key in a `map`, it has no SHA-256), 401 for an unknown key, the client's rate limited, \
         identity header set and key header removed on what is forwarded. Gateway guard off: it \
         would otherwise ban A's source in the kernel.\n\n\
         | | gateway | HAProxy 2.6 | nginx |\n|---|---|---|---|\n\
         | limiter | {} |\n| ideal over the window | {} |\n| exact algorithm on this schedule | {} |\n\
         | allowed | {} |\n| deviation from ideal (gateway target ±1: {met}) | {} |\n\
         | B success % (gateway/peer) | {} |\n| B p99 ms (gateway/peer) | {} |\n\
         | A's flood req/s (gateway/peer; target vs HAProxy >= 1.0) | {} |\n",
        ISO_LIMIT / WINDOW_S,
        cells(&|p| configs[p].clone()),
        cells(&|p| ideal(p).to_string()),
        cells(&|p| exact(p, &times).to_string()),
        cells(&|p| format!("{} ({}-{})", medians[p], allowed[p][0], allowed[p][rounds - 1])),
        cells(&|p| format!("{:+}", deviation(p))),
        ratio(&|p| isolation[p][0]),
        ratio(&|p| isolation[p][1]),
        cells(&|p| format!("{:.0} ({:.2}x)", isolation[p][2], isolation[0][2] / isolation[p][2])),
    );
    println!(
        "\n{table}\nnote: HAProxy counts refused requests too, so a key that keeps sending over its \
         limit stays refused after the first window, which one window does not show. The last \
         request arrives one spacing before the window closes, so GCRA and nginx's leaky bucket \
         allow ideal - 1 on this schedule."
    );
    results::record("limits", &table)
}

/// One isolation run against one proxy.
struct Isolation {
    /// B's share of 2xx answers, %.
    success: f64,
    p99: f64,
    p50: f64,
    /// A's answers per second (429s once its burst is spent).
    flood: f64,
}

/// Key `a` floods the proxy at `port` (wrk, closed loop) while key `b`
/// sends [`B_RATE`] requests a second on its own connection.
fn isolation(port: u16, a: &str, b: &str, seconds: u32) -> Result<Isolation> {
    let mut wrk = Running(
        Command::new("wrk")
            .args(["-t1", "-c16", &format!("-d{}s", seconds + 1), "-H"])
            .arg(format!("x-api-key: {a}"))
            .arg(format!("http://127.0.0.1:{port}/flood"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting wrk")?,
    );
    let start = Instant::now() + Duration::from_millis(500);
    let mut conn = None;
    let (mut ok, mut latencies) = (0u32, Vec::new());
    let period = 1_000_000_000 / u64::from(B_RATE);
    for i in 0..u64::from(seconds * B_RATE) {
        sleep_until(start + Duration::from_nanos(i * period));
        let sent = Instant::now();
        let status = get(&mut conn, port, b);
        latencies.push(sent.elapsed().as_secs_f64() * 1e3);
        ok += u32::from(matches!(status, Ok(200..=299)));
    }
    let mut out = String::new();
    if let Some(mut stdout) = wrk.0.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    drop(wrk);
    let flood = requests_per_sec(&out).with_context(|| format!("wrk printed no rate:\n{out}"))?;
    latencies.sort_by(f64::total_cmp);
    Ok(Isolation {
        success: 100.0 * f64::from(ok) / latencies.len() as f64,
        p99: percentile(&latencies, 0.99),
        p50: median(&mut latencies),
        flood,
    })
}
