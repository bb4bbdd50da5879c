//! `cargo xtask bench proxy --callgrind`: instructions per request of the
//! whole release gateway process (every thread) under `valgrind
//! --tool=callgrind`, for the proxied 200 and the 429 path. Exact and
//! repeatable where wall-clock figures on a shared machine are not: what
//! a change to the request path is judged by (issue 14).
//!
//! Per path: one worker, guard and admin off, the limiter on; a raw
//! keep-alive upstream answering every request head with a fixed 200;
//! one client sending sequential keep-alive requests. Instrumentation is
//! switched on (`callgrind_control -i on`) after [`WARM_UP`] requests and
//! off after [`MEASURED`] more, so start-up, warm-up and shutdown are not
//! counted. valgrind hides SHA-NI: SHA-256 runs its software path here.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::bench::{
    keys,
    procs::{free_port, Running},
};

/// Requests before instrumentation starts (connections, pools, caches warm).
const WARM_UP: usize = 300;
/// Requests counted.
const MEASURED: usize = 2_000;
/// Keys the proxied path rotates through.
const KEYS: usize = 1_000;

/// Both paths, printed as they are measured.
pub(super) fn run(gateway_bin: &Path, dir: &Path) -> Result<()> {
    ensure!(
        Command::new("valgrind").arg("--version").output().is_ok(),
        "valgrind is not installed (apt-get install valgrind)"
    );
    let upstream = Upstream::start()?;
    // The proxied path: a tier no request comes near, keys rotating.
    // The 429 path: one key, one request an hour.
    for (path, tier, keys, status) in [
        (
            "proxied 200",
            "requests = 100000000\nwindow = \"1s\"\nburst = 100000000",
            KEYS,
            200,
        ),
        ("429", "requests = 1\nwindow = \"1h\"\nburst = 1", 1, 429),
    ] {
        let case = dir.join(if status == 200 { "ok" } else { "limited" });
        std::fs::create_dir_all(&case)?;
        let instructions = measure(gateway_bin, &case, upstream.port, tier, keys, status)?;
        println!(
            "callgrind, {path}: {} instructions per request ({instructions} over {MEASURED} requests)",
            instructions / MEASURED as u64
        );
    }
    Ok(())
}

/// Instructions of the whole gateway process over [`MEASURED`] requests
/// that must each be answered `status`.
fn measure(
    gateway_bin: &Path,
    dir: &Path,
    upstream: u16,
    tier: &str,
    key_count: usize,
    status: u16,
) -> Result<u64> {
    let port = free_port()?;
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{dir}/state\"\n\
             [xdp]\nenabled = false\n[admin]\nenabled = false\n[guard]\nmode = \"off\"\n\
             [keys]\nstore = \"{dir}/keys.db\"\n\
             [limits]\nworkers = 1\n\
             [[tiers]]\nname = \"gold\"\n{tier}\n\
             [[listeners]]\naddress = \"127.0.0.1:{port}\"\n\
             [[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:{upstream}\"]\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"api_key\"\n",
            dir = dir.display(),
        ),
    )?;
    let keys: Vec<String> = keys::create(gateway_bin, &config, "callgrind", "gold", key_count)?
        .into_iter()
        .map(|key| key.api_key)
        .collect();
    let out = dir.join("callgrind.out");
    let mut command = Command::new("valgrind");
    command
        .args(["--tool=callgrind", "--instr-atstart=no"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(gateway_bin)
        .args(["run", "--config"])
        .arg(&config)
        .stderr(Stdio::null());
    let gateway = Running::listening_within(command, port, Duration::from_secs(120))?;
    let pid = gateway.pid().to_string();
    let mut client = Client::connect(port)?;
    // The 429 path's key gets its one allowed request in the warm-up.
    for i in 0..WARM_UP {
        client.get(&keys[i % keys.len()])?;
    }
    control(&pid, "on")?;
    for i in 0..MEASURED {
        let got = client.get(&keys[i % keys.len()])?;
        ensure!(
            got == status,
            "request {i}: status {got}, expected {status}"
        );
    }
    control(&pid, "off")?;
    drop(client);
    gateway.stop_within(Duration::from_secs(120))?;
    let text = std::fs::read_to_string(&out).context("reading callgrind's output")?;
    keep_profile(&out, dir)?;
    totals(&text)
}

/// Copies the profile to `target/bench-callgrind/<case>.out`, where it
/// outlives the scratch directory, for `callgrind_annotate` to break down.
fn keep_profile(out: &Path, case_dir: &Path) -> Result<()> {
    let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-callgrind");
    std::fs::create_dir_all(&kept)?;
    let case = case_dir
        .file_name()
        .context("a case directory has a name")?;
    let to = kept.join(case).with_extension("out");
    std::fs::copy(out, &to).with_context(|| format!("keeping the profile as {}", to.display()))?;
    println!("callgrind profile kept: {}", to.display());
    Ok(())
}

/// `callgrind_control -i on|off` for the gateway's process.
fn control(pid: &str, switch: &str) -> Result<()> {
    let status = Command::new("callgrind_control")
        .args(["-i", switch, pid])
        .stdout(Stdio::null())
        .status()
        .context("running callgrind_control")?;
    ensure!(status.success(), "callgrind_control -i {switch} failed");
    Ok(())
}

/// The instructions a callgrind output file counts in all: its `totals:`
/// line (the header's `summary:` says 0 when collection started off).
fn totals(output: &str) -> Result<u64> {
    output
        .lines()
        .filter_map(|line| {
            line.strip_prefix("totals:")
                .or(line.strip_prefix("summary:"))
        })
        .filter_map(|n| n.split_whitespace().next()?.parse().ok())
        .max()
        .context("no totals in callgrind's output")
}

/// One sequential keep-alive HTTP/1.1 client connection.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// `GET /bench` with `key`; the response's status (its body read).
    fn get(&mut self, key: &str) -> Result<u16> {
        let request = format!("GET /bench HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {key}\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        let (status, length) = read_head(&mut self.reader)?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

/// A response or request head: the status (0 for a request) and the
/// `Content-Length` (0 when absent).
fn read_head(reader: &mut BufReader<TcpStream>) -> Result<(u16, usize)> {
    let (mut status, mut length) = (0, 0);
    let mut line = String::new();
    for n in 0..200 {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed");
        }
        let text = line.trim_end();
        if text.is_empty() {
            return Ok((status, length));
        }
        if n == 0 {
            status = (text.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some((name, value)) = text.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().context("content-length")?;
            }
        }
    }
    bail!("a head of over 200 lines")
}

/// A keep-alive upstream that answers every request head (no bodies) with
/// the same small 200, a thread per connection, for the bench's lifetime.
struct Upstream {
    port: u16,
}

impl Upstream {
    fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream));
            }
        });
        Ok(Self { port })
    }
}

/// One upstream connection, until the gateway closes it.
fn serve(stream: TcpStream) -> Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3600) {
        read_head(&mut reader)?;
        writer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_read_from_either_line() {
        assert_eq!(totals("events: Ir\nsummary: 123\n").unwrap(), 123);
        assert_eq!(totals("events: Ir\ntotals: 456 7\n").unwrap(), 456);
        assert_eq!(totals("summary: 0\nfn=x\n1 5\ntotals: 789\n").unwrap(), 789);
        assert!(totals("events: Ir\n").is_err());
    }
}
