//! `cargo xtask bench proxy`: the gateway against HAProxy doing the
//! equivalent work (API key from a header, SHA-256 of it looked up in a map
//! of 10,000 keys, 401 when absent, identity header set, key header removed,
//! keep-alive pool to the upstream), same nginx upstream, same wrk load with
//! rotating keys, same machine, interleaved rounds, medians.
use std::{
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::setup;

const KEYS: u32 = 10_000;

/// A child process stopped on drop: SIGTERM first (so nginx's master takes
/// its workers down), SIGKILL after a grace period.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..100 {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    return;
                }
                #[allow(clippy::disallowed_methods, reason = "the bench is synchronous")]
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_for_port(port: u16) -> Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::yield_now();
        #[allow(clippy::disallowed_methods, reason = "the bench is synchronous")]
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 5 s")
}

pub(crate) fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = [
        ("haproxy", "haproxy"),
        ("wrk", "wrk"),
        ("nginx", "nginx-light"),
    ]
    .into_iter()
    .filter(|(binary, _)| !setup::have(binary))
    .map(|(_, package)| package)
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !setup::is_root() {
        bail!("the proxy bench needs {missing:?}: install them (apt-get install -y ...) or run as root");
    }
    println!("bench: installing {missing:?}");
    setup::apt_install(&missing)
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11) + ticks(12)) / hz)
}

struct Sample {
    rps: f64,
    cpu_us_per_request: f64,
}

fn run_wrk(port: u16, script: &Path, seconds: u32, pid: u32) -> Result<Sample> {
    let before = cpu_seconds(pid)?;
    let output = Command::new("wrk")
        .args(["-t1", "-c32", &format!("-d{seconds}s"), "-s"])
        .arg(script)
        .arg(format!("http://127.0.0.1:{port}/bench"))
        .output()
        .context("running wrk")?;
    let cpu = cpu_seconds(pid)? - before;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") {
        bail!("some requests were refused: the bench would measure the wrong path\n{text}");
    }
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("wrk printed no request count:\n{text}"))?;
    let rps: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("wrk printed no rate:\n{text}"))?;
    Ok(Sample {
        rps,
        cpu_us_per_request: cpu * 1e6 / requests.max(1.0),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run(rounds: usize, seconds: u32) -> Result<()> {
    ensure_packages()?;
    let gateway_bin = crate::build(true)?;
    let dir = std::env::temp_dir().join(format!("gateway-bench-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = bench(&gateway_bin, &dir, rounds, seconds);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn bench(gateway_bin: &Path, dir: &Path, rounds: usize, seconds: u32) -> Result<()> {
    // The shared upstream.
    let nginx_port = free_port()?;
    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; keepalive_requests 1000000;\n\
               server {{ listen 127.0.0.1:{nginx_port}; location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            dir = dir.display()
        ),
    )?;
    let _nginx = Running(
        Command::new("nginx")
            .arg("-c")
            .arg(&nginx_conf)
            .args(["-g", "daemon off;"])
            .spawn()
            .context("starting nginx")?,
    );
    wait_for_port(nginx_port)?;

    // The gateway: 10,000 keys in its store, XDP off (this measures the
    // proxy). A second one on the same store runs without its limiter, for
    // the limiter's overhead.
    let gateway_config = |port: u16, rate_limit: bool, name: &str| -> Result<std::path::PathBuf> {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "state_dir = \"{dir}/state\"\n[xdp]\nenabled = false\n[admin]\nenabled = false\n[keys]\nstore = \"{dir}/keys.db\"\n\
                 [[listeners]]\naddress = \"127.0.0.1:{port}\"\n\
                 [[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:{nginx_port}\"]\n\
                 [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"api_key\"\nrate_limit = {rate_limit}\n",
                dir = dir.display()
            ),
        )?;
        Ok(path)
    };
    let gateway_port = free_port()?;
    let config = gateway_config(gateway_port, true, "gateway.toml")?;
    let unlimited_port = free_port()?;
    let unlimited_config = gateway_config(unlimited_port, false, "unlimited.toml")?;
    let created = Command::new(gateway_bin)
        .args([
            "keys", "create", "--name", "bench", "--tier", "gold", "--json",
        ])
        .args(["--count", &KEYS.to_string(), "--config"])
        .arg(&config)
        .output()
        .context("creating keys")?;
    if !created.status.success() {
        bail!(
            "gateway keys create failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
    }
    let mut keys = Vec::new();
    let mut map = String::new();
    for line in String::from_utf8_lossy(&created.stdout).lines() {
        let value: serde_json::Value = serde_json::from_str(line)?;
        let key = value["api_key"].as_str().context("no key")?.to_owned();
        let client = value["id"].as_str().context("no client id")?;
        map.push_str(&format!("{} {client}\n", sha256_hex_upper(&key)?));
        keys.push(key);
    }
    let keys_file = dir.join("keys.txt");
    std::fs::write(&keys_file, keys.join("\n") + "\n")?;
    let map_file = dir.join("keys.map");
    std::fs::write(&map_file, map)?;
    let script = dir.join("rotate.lua");
    std::fs::write(
        &script,
        format!(
            "local keys = {{}}\nfor line in io.lines(\"{}\") do keys[#keys + 1] = line end\n\
             local i = math.random(#keys)\n\
             request = function()\n  i = i % #keys + 1\n  \
             return wrk.format(\"GET\", \"/bench\", {{[\"x-api-key\"] = keys[i]}})\nend\n",
            keys_file.display()
        ),
    )?;
    let start_gateway = |config: &Path| -> Result<Running> {
        Ok(Running(
            Command::new(gateway_bin)
                .args(["run", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting the gateway")?,
        ))
    };
    let gateway = start_gateway(&config)?;
    wait_for_port(gateway_port)?;
    let unlimited = start_gateway(&unlimited_config)?;
    wait_for_port(unlimited_port)?;

    // HAProxy doing the same work.
    let haproxy_port = free_port()?;
    let haproxy_conf = dir.join("haproxy.cfg");
    std::fs::write(
        &haproxy_conf,
        format!(
            "global\n  maxconn 4096\n  nbthread 2\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n\
             frontend fe\n  bind 127.0.0.1:{haproxy_port}\n\
               http-request set-var(txn.key) req.hdr(x-api-key),sha2(256),hex\n\
               http-request deny deny_status 401 unless {{ var(txn.key),map({map}) -m found }}\n\
               http-request set-header x-client-id %[var(txn.key),map({map})]\n\
               http-request del-header x-api-key\n\
               default_backend be\n\
             backend be\n  server s1 127.0.0.1:{nginx_port}\n",
            map = map_file.display()
        ),
    )?;
    let haproxy = Running(
        Command::new("haproxy")
            .arg("-f")
            .arg(&haproxy_conf)
            .arg("-db")
            .stdout(Stdio::null())
            .spawn()
            .context("starting haproxy")?,
    );
    wait_for_port(haproxy_port)?;

    let version = Command::new("haproxy").arg("-v").output()?;
    let version = String::from_utf8_lossy(&version.stdout);
    println!(
        "authenticated GET, {KEYS} rotating keys, wrk -t1 -c32, {seconds} s x {rounds} interleaved rounds\n\
         peer: {}",
        version.lines().next().unwrap_or("haproxy")
    );
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut without_limiter = Vec::new();
    for round in 1..=rounds {
        let g = run_wrk(gateway_port, &script, seconds, gateway.0.id())?;
        let u = run_wrk(unlimited_port, &script, seconds, unlimited.0.id())?;
        let h = run_wrk(haproxy_port, &script, seconds, haproxy.0.id())?;
        println!(
            "  round {round}: gateway {:>8.0} req/s {:>5.1} us CPU/req | without limiter {:>8.0} req/s | haproxy {:>8.0} req/s {:>5.1} us CPU/req",
            g.rps, g.cpu_us_per_request, u.rps, h.rps, h.cpu_us_per_request
        );
        ours.push(g);
        without_limiter.push(u);
        theirs.push(h);
    }
    let rps = |s: &[Sample]| median(s.iter().map(|x| x.rps).collect());
    let cpu = |s: &[Sample]| median(s.iter().map(|x| x.cpu_us_per_request).collect());
    let rps_ratio = rps(&ours) / rps(&theirs);
    let cpu_ratio = cpu(&ours) / cpu(&theirs);
    println!(
        "median: gateway {:.0} req/s, {:.1} us CPU/req; haproxy {:.0} req/s, {:.1} us CPU/req",
        rps(&ours),
        cpu(&ours),
        rps(&theirs),
        cpu(&theirs)
    );
    println!(
        "ratios (gateway/haproxy): throughput {rps_ratio:.2}x (target >= 1.00: {}), CPU per request {cpu_ratio:.2}x (target <= 1.00: {})",
        if rps_ratio >= 1.0 { "met" } else { "NOT met" },
        if cpu_ratio <= 1.0 { "met" } else { "NOT met" },
    );
    let limiter_ratio = rps(&ours) / rps(&without_limiter);
    println!(
        "limiter overhead: throughput with / without the limiter {limiter_ratio:.2}x (target >= 0.95: {})",
        if limiter_ratio >= 0.95 { "met" } else { "NOT met" }
    );
    println!("note: load generator and the proxies share this machine's cores; compare ratios, not absolutes.");
    Ok(())
}

/// What HAProxy's `sha2(256),hex` yields for a key: uppercase hex.
fn sha256_hex_upper(text: &str) -> Result<String> {
    use sha2::Digest;
    Ok(sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect())
}
