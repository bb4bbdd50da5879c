//! `cargo xtask bench h2`: HTTP/2 over TLS (h2load: many streams on each
//! connection) through the gateway against HAProxy 2.6 doing the same work
//! as in `bench proxy` (a 10,000-key map, 401 for unknown keys, a per-key
//! limit no run reaches, identity header set, key header removed, tier,
//! request id and `X-Forwarded-*` forwarded, keep-alive to the same nginx
//! upstream), in interleaved rounds, medians
//! reported as ratios gateway/HAProxy.
//!
//! h2load sends the same header set on every request of a run, so the key
//! cannot rotate per request as wrk's script does: every stream carries one
//! key of the 10,000 (a different one each round), the same for both
//! proxies, and the per-key limit is set far above what one key sees here.
use std::{fmt::Write as _, path::Path, process::Stdio};

use anyhow::{bail, ensure, Context, Result};

use super::peers::{self, Proxy, Setup, KEYS};
use crate::bench::{
    procs::{ensure_packages, tree_cpu_seconds, CpuPlan},
    results, scratch,
    stats::{median, spread, spread_ratio, NOISY},
};

/// Requests per second (bursts of as many) each key may make: one key
/// carries all of a run's requests, so this is far above any run's rate.
const PER_KEY_RATE: u32 = 10_000_000;
/// Connections h2load opens.
const CLIENTS: u32 = 16;
/// Concurrent streams h2load keeps open on each connection (below both
/// proxies' limits: HAProxy's default 100, the gateway's 200).
const STREAMS: u32 = 16;
const TARGET: f64 = 1.0;

pub(crate) fn run(rounds: usize, seconds: u32) -> Result<()> {
    ensure_packages()?;
    let gateway_bin = crate::build(true)?;
    let dir = scratch::dir("gateway-bench-h2-")?;
    bench(&gateway_bin, dir.path(), rounds, seconds)
}

/// The compared proxies of `bench proxy`'s setup: the gateway, then HAProxy.
fn compared(setup: &Setup) -> &[Proxy] {
    &setup.peers[..setup.peers.len().min(2)]
}

/// One h2load run's figures.
struct Sample {
    rps: f64,
    cpu_us_per_request: f64,
}

fn bench(gateway_bin: &Path, dir: &Path, rounds: usize, seconds: u32) -> Result<()> {
    let cpus = CpuPlan::new();
    let setup = start(gateway_bin, dir, &cpus)?;
    let (proxies, keys) = (compared(&setup), &setup.keys);
    let intro = format!(
        "Authenticated GET over HTTP/2 and TLS: h2load -c{CLIENTS} -m{STREAMS} ({CLIENTS} connections, \
         {STREAMS} concurrent streams each), one key of {KEYS} per round; {rounds} interleaved round(s) \
         of {seconds} s per proxy; medians. {}.",
        cpus.describe()
    );
    println!("{intro}\npeer: {}", results::first_line("haproxy", &["-v"]));
    println!("warm-up: 1 s per proxy, not counted");
    for proxy in proxies {
        h2load(&cpus, proxy, &keys[0].0, 1)?;
    }
    // Per metric, per proxy (in `proxies` order), one value per round.
    let mut rps = vec![Vec::new(); proxies.len()];
    let mut cpu = vec![Vec::new(); proxies.len()];
    for round in 0..rounds {
        let key = &keys[(round * 7919) % keys.len()].0;
        let mut line = format!("  round {}:", round + 1);
        for i in (0..proxies.len()).map(|i| (i + round) % proxies.len()) {
            let sample = h2load(&cpus, &proxies[i], key, seconds)?;
            rps[i].push(sample.rps);
            cpu[i].push(sample.cpu_us_per_request);
            line += &format!(
                " | {} {:.0} req/s {:.1} us/req",
                proxies[i].name, sample.rps, sample.cpu_us_per_request
            );
        }
        println!("{line}");
    }
    let haproxy = proxies.get(1).context("no HAProxy")?;
    let notes = notes(haproxy, &[&rps, &cpu]);
    let table = table(&mut rps, &mut cpu);
    println!("{table}");
    for note in &notes {
        println!("note: {note}");
    }
    let mut markdown =
        format!("## HTTP/2 over TLS (`cargo xtask bench h2`)\n\n{intro}\n\n{table}\n");
    for note in &notes {
        let _ = writeln!(markdown, "- {note}");
    }
    results::record("h2", &markdown)
}

/// `bench proxy`'s setup with this bench's per-key rate; the gateway's
/// and HAProxy's TLS listeners checked to speak h2.
fn start(gateway_bin: &Path, dir: &Path, cpus: &CpuPlan) -> Result<Setup> {
    let setup = Setup::start(gateway_bin, dir, cpus, PER_KEY_RATE)?;
    let (key, client) = setup.keys.first().context("no keys")?;
    for proxy in compared(&setup) {
        let url = tls_url(proxy)?;
        let (status, body) = peers::curl_over("--http2", &url, key)?;
        let expected = format!("ok id={client} key=");
        ensure!(
            status == 200 && body.trim_end() == expected,
            "{} at {url}: {status} {body:?}, expected 200 {expected:?}",
            proxy.name
        );
        let (status, _) = peers::curl_over("--http2", &url, "gk_unknown")?;
        ensure!(
            status == 401,
            "{} at {url}: {status} for an unknown key",
            proxy.name
        );
        peers::check_forwarded(proxy.name, "--http2", &url, key)?;
    }
    Ok(setup)
}

/// The URL of `/bench` on `proxy`'s TLS listener.
fn tls_url(proxy: &Proxy) -> Result<String> {
    proxy
        .url(true)
        .with_context(|| format!("{} has no TLS listener", proxy.name))
}

/// One h2load run of `seconds` against `proxy` with `key` on every stream,
/// charging the CPU time of its process tree to the requests that succeeded.
fn h2load(cpus: &CpuPlan, proxy: &Proxy, key: &str, seconds: u32) -> Result<Sample> {
    let url = tls_url(proxy)?;
    let before = tree_cpu_seconds(proxy.pid())?;
    let output = cpus
        .load_command("h2load")
        .arg(format!("-t{}", cpus.load_threads()))
        .arg(format!("-c{CLIENTS}"))
        .arg(format!("-m{STREAMS}"))
        .arg(format!("-D{seconds}"))
        .args(["-H", &format!("x-api-key: {key}")])
        .arg(url)
        .output()
        .context("running h2load")?;
    let cpu = tree_cpu_seconds(proxy.pid())? - before;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "h2load failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let figures = parse(&text).with_context(|| format!("h2load's output:\n{text}"))?;
    ensure!(
        figures.protocol == "h2",
        "{}: h2load spoke {:?}, not h2",
        proxy.name,
        figures.protocol
    );
    ensure!(
        figures.non_2xx == 0,
        "{}: {} answers were not 2xx: the bench would measure the wrong path\n{text}",
        proxy.name,
        figures.non_2xx
    );
    ensure!(
        figures.succeeded >= 1.0,
        "{}: no request succeeded\n{text}",
        proxy.name
    );
    Ok(Sample {
        rps: figures.rps,
        cpu_us_per_request: cpu * 1e6 / figures.succeeded,
    })
}

/// What the bench reads from h2load's summary.
#[derive(Debug, PartialEq)]
struct Figures {
    rps: f64,
    succeeded: f64,
    non_2xx: u64,
    protocol: String,
}

/// Reads `finished in ..., N req/s`, `requests: ... N succeeded`,
/// `status codes: N 2xx, N 3xx, N 4xx, N 5xx` and `Application protocol: P`.
fn parse(text: &str) -> Option<Figures> {
    let line = |prefix: &str| text.lines().find_map(|l| l.strip_prefix(prefix));
    // The number before `word` in a comma-separated list.
    let count = |list: &str, word: &str| -> Option<f64> {
        list.split(',').find_map(|part| {
            let (number, name) = part.trim().split_once(' ')?;
            (name == word).then(|| number.parse().ok())?
        })
    };
    let codes = line("status codes:")?;
    let non_2xx = ["3xx", "4xx", "5xx"]
        .iter()
        .map(|w| count(codes, w))
        .sum::<Option<f64>>()?;
    Some(Figures {
        rps: count(line("finished in ")?, "req/s")?,
        succeeded: count(line("requests:")?, "succeeded")?,
        non_2xx: non_2xx as u64,
        protocol: line("Application protocol:")?.trim().to_owned(),
    })
}

/// The markdown table: medians per proxy, gateway/HAProxy ratios, spreads.
fn table(rps: &mut [Vec<f64>], cpu: &mut [Vec<f64>]) -> String {
    let mut out = String::from(
        "| metric | gateway | haproxy | gateway/haproxy | target | spread (max/min) |\n|---|---|---|---|---|---|\n",
    );
    for (name, series, target, better_high) in [
        ("req/s", rps, format!("≥ {TARGET:.1}"), true),
        ("CPU us/req", cpu, "(lower is better)".to_owned(), false),
    ] {
        let spreads: Vec<String> = series.iter().map(|s| spread(s)).collect();
        let medians: Vec<f64> = series.iter_mut().map(|s| median(s)).collect();
        let (ours, theirs) = (medians[0], medians[1]);
        let ratio = ours / theirs;
        let met = if better_high && ratio >= TARGET {
            " (met)"
        } else if better_high {
            " (NOT met)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "| {name} | {ours:.1} | {theirs:.1} | {ratio:.2}{met} | {target} | {} |",
            spreads.join(" / ")
        );
    }
    out
}

/// What the figures mean and how far HAProxy's work is the gateway's.
fn notes(haproxy: &Proxy, series: &[&Vec<Vec<f64>>]) -> Vec<String> {
    let mut notes = vec![
        format!(
            "equivalent work: a {KEYS}-key map, 401 for unknown keys, a per-key limit of {PER_KEY_RATE} req/s \
             that the runs never reach, X-Client-Id set, the key header removed, X-Client-Tier (HAProxy: a \
             constant), an X-Request-Id (also to the client; HAProxy: a UUID) and X-Forwarded-For and -Proto \
             forwarded, keep-alive HTTP/1.1 \
             connections to the same nginx upstream. Gateway: SHA-256 of the key in its index, GCRA limiter, \
             its JSON access log on (to /dev/null), `traceparent` and the rate-limit fields sent (HAProxy \
             sends neither). HAProxy: `sha2(256),hex` of the key in a `map`, \
             stick-table `http_req_rate(1s)`, `alpn h2,http/1.1` on its TLS bind, logging nothing."
        ),
        "keys: h2load sends one header set for a whole run (`-H`; its `-i` file varies only the URI), so \
         every request of a round carries the same key (a different one of the 10,000 each round, the same \
         for both proxies); each request still hashes and looks it up."
            .into(),
        format!(
            "TLS: an ECDSA P-256 certificate each (the gateway its own, HAProxy one made with openssl), \
             ALPN h2 checked on every run; HAProxy negotiates {}.",
            tls_parameters(haproxy)
        ),
        "CPU per request: utime + stime of the proxy's process from /proc over each h2load run, divided \
         by the requests h2load counted as succeeded."
            .into(),
        "load generator and proxies share one machine; compare ratios, not absolutes.".into(),
    ];
    for (metric, per_proxy) in ["req/s", "CPU us/req"].iter().zip(series) {
        for (proxy, values) in ["gateway", "haproxy"].iter().zip(per_proxy.iter()) {
            if spread_ratio(values) > NOISY {
                notes.push(format!(
                    "{proxy} {metric}: rounds spread {} (max/min): the machine was noisy",
                    spread(values)
                ));
            }
        }
    }
    notes
}

/// The TLS version and cipher suite `openssl s_client` negotiates with
/// `proxy` when it offers h2.
fn tls_parameters(proxy: &Proxy) -> String {
    let Some(port) = proxy.listen.tls_port else {
        return "? (no TLS listener)".into();
    };
    let output = std::process::Command::new("timeout")
        .args([
            "5", "openssl", "s_client", "-brief", "-alpn", "h2", "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output();
    let Ok(output) = output else {
        return "? (openssl s_client failed)".into();
    };
    let text = String::from_utf8_lossy(&output.stderr) + String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or("?", |v| v.trim_start_matches(':').trim())
            .to_owned()
    };
    format!("{} {}", field("Protocol version"), field("Ciphersuite"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_h2load_summary() {
        let text = "starting benchmark...\n\
            finished in 5.00s, 23456.20 req/s, 1.23MB/s\n\
            requests: 117281 total, 117300 started, 117281 done, 117200 succeeded, 81 failed, 0 errored, 0 timeout\n\
            status codes: 117200 2xx, 0 3xx, 2 4xx, 1 5xx\n\
            traffic: 6.15MB (6449153) total\n\
            Application protocol: h2\n";
        assert_eq!(
            parse(text),
            Some(Figures {
                rps: 23456.2,
                succeeded: 117200.0,
                non_2xx: 3,
                protocol: "h2".into(),
            })
        );
        assert_eq!(parse("finished in 5.00s, 1 req/s\n"), None);
    }
}
