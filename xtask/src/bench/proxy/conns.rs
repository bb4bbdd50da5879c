//! `cargo xtask bench conns`: memory per open client connection, the
//! gateway against HAProxy set up as for `bench proxy` (same
//! 10,000-key maps, same upstream). For each proxy in turn: its resident
//! memory (VmRSS of its process tree) settled, then with `connections`
//! connections each holding a request head sent up to its last line
//! ("waiting for its head"), then with the same connections after that
//! request was finished and answered ("idle keep-alive"); bytes per
//! connection are the growth over the first figure, divided.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    os::fd::FromRawFd as _,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};

use super::peers::{Proxy, Setup, KEYS};
use crate::bench::{
    procs::{ensure_packages, tree_rss_bytes, CpuPlan},
    scratch,
};

/// How long the connections are idle before the idle figure: past the
/// gateway's `limits.park_idle_after` (1 s), so its figure is of parked
/// connections; HAProxy's does not move with it.
const IDLE: Duration = Duration::from_secs(3);

/// Connections per source address: under the gateway's default
/// `limits.max_connections_per_source` (256), which the bench keeps.
const PER_SOURCE: usize = 200;

/// Resident memory of one proxy: settled, with every connection waiting
/// for the rest of its head, and with every connection idle after one
/// answered request.
struct Sample {
    before: u64,
    waiting: u64,
    idle: u64,
}

impl Sample {
    fn per_connection(&self, connections: usize) -> (f64, f64) {
        let per = |rss: u64| rss.saturating_sub(self.before) as f64 / connections as f64;
        (per(self.waiting), per(self.idle))
    }
}

pub(crate) fn run(connections: usize) -> Result<()> {
    ensure_packages()?;
    let connections = connections.clamp(100, 4000);
    raise_open_files(connections * 2 + 256)?;
    let (gateway_bin, record) = super::gateway_bin()?;
    let dir = scratch::dir("gateway-bench-conns-")?;
    let cpus = CpuPlan::new();
    let setup = Setup::start(
        &gateway_bin,
        dir.path(),
        &cpus,
        super::configs::PER_KEY_RATE,
    )?;
    let intro = format!(
        "Memory per open client connection: {connections} connections per proxy, one proxy at a time, \
         {KEYS} keys loaded. {}.",
        cpus.describe()
    );
    println!("{intro}");
    let mut rows = Vec::new();
    // nginx (4,096 worker_connections shared with its upstream side) resets
    // connections at this count: the peer is HAProxy.
    for proxy in setup.peers.iter().filter(|p| p.name != "nginx") {
        let sample = measure(proxy, &setup.keys, connections)
            .with_context(|| format!("measuring {}", proxy.name))?;
        let (waiting, idle) = sample.per_connection(connections);
        println!(
            "  {}: RSS {:.1} MB settled; {waiting:.0} B per connection waiting for its head, \
             {idle:.0} B per idle keep-alive connection",
            proxy.name,
            sample.before as f64 / 1e6
        );
        rows.push((proxy.name, sample));
    }
    let markdown = markdown(&intro, &rows, connections)?;
    println!("{markdown}");
    super::record_if(record, "conns", &markdown)
}

/// Opens `connections` connections to `proxy`, measures, and closes them.
fn measure(proxy: &Proxy, keys: &[(String, String)], connections: usize) -> Result<Sample> {
    let pid = proxy.pid();
    let before = settled_rss(pid)?;
    let mut open = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut stream = connect_from(source(i), proxy.listen.port)?;
        let (key, _) = &keys[i % keys.len()];
        let head = format!("GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Api-Key: {key}\r\n");
        stream.write_all(head.as_bytes())?;
        open.push(stream);
    }
    let waiting = settled_rss(pid)?;
    for stream in &mut open {
        stream.write_all(b"\r\n")?;
        read_response(stream)?;
    }
    #[allow(clippy::disallowed_methods, reason = "the bench is synchronous")]
    std::thread::sleep(IDLE);
    let idle = settled_rss(pid)?;
    drop(open);
    Ok(Sample {
        before,
        waiting,
        idle,
    })
}

/// 127.0.0.2, .3, ...: `PER_SOURCE` connections each.
fn source(i: usize) -> Ipv4Addr {
    let host = u32::try_from(2 + i / PER_SOURCE)
        .unwrap_or(u32::MAX)
        .min(254);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) | host)
}

/// The proxy's RSS once it stops moving (two reads 200 ms apart within
/// 16 KiB), after at most 5 s.
fn settled_rss(pid: u32) -> Result<u64> {
    let mut last = tree_rss_bytes(pid)?;
    for _ in 0..25 {
        #[allow(clippy::disallowed_methods, reason = "the bench is synchronous")]
        std::thread::sleep(Duration::from_millis(200));
        let now = tree_rss_bytes(pid)?;
        if now.abs_diff(last) < 16 << 10 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Reads one response (status line, headers, `Content-Length` body) and
/// checks it is a 200: the connection did the bench's work.
fn read_response(stream: &mut TcpStream) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut got = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        ensure!(got.len() < 64 << 10, "response head over 64 KiB");
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "connection closed before the response head");
        got.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    ensure!(
        head.starts_with("http/1.1 200"),
        "expected a 200, got {:?}",
        head.lines().next().unwrap_or_default()
    );
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .context("response without Content-Length")?;
    while got.len() < head_end + length {
        let n = stream.read(&mut chunk)?;
        ensure!(n > 0, "connection closed in the response body");
        got.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// A TCP connection to 127.0.0.1:`port` from `source`.
fn connect_from(source: Ipv4Addr, port: u16) -> Result<TcpStream> {
    let address = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a new socket, owned by the TcpStream at once (closed on any
    // error); bind and connect read a sockaddr_in of the length given.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        let stream = TcpStream::from_raw_fd(fd);
        let from = address(source, 0);
        if libc::bind(fd, std::ptr::from_ref(&from).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("binding {source}"));
        }
        let to = address(Ipv4Addr::LOCALHOST, port);
        if libc::connect(fd, std::ptr::from_ref(&to).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("connecting from {source} to port {port}"));
        }
        Ok(stream)
    }
}

/// Raises this process's open-file limit to `wanted`, within its hard limit.
fn raise_open_files(wanted: usize) -> Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        let wanted = wanted as libc::rlim_t;
        if limit.rlim_cur >= wanted {
            return Ok(());
        }
        if limit.rlim_max < wanted {
            bail!(
                "open-file hard limit {} is under the {wanted} this bench needs: pass fewer --connections",
                limit.rlim_max
            );
        }
        limit.rlim_cur = wanted;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit");
        }
    }
    Ok(())
}

fn markdown(intro: &str, rows: &[(&str, Sample)], connections: usize) -> Result<String> {
    use std::fmt::Write as _;
    let Some((_, gateway)) = rows.iter().find(|(name, _)| *name == "gateway") else {
        bail!("no gateway row");
    };
    let (gw_waiting, gw_idle) = gateway.per_connection(connections);
    let mut out = format!(
        "## Memory per connection (`cargo xtask bench conns`)\n\n{intro}\n\n\
         | proxy | RSS settled | B per connection waiting for its head | ratio gateway/peer | \
         B per idle keep-alive connection | ratio gateway/peer |\n|---|---|---|---|---|---|\n"
    );
    for (name, sample) in rows {
        let (waiting, idle) = sample.per_connection(connections);
        let ratio = |ours: f64, theirs: f64| match *name {
            "gateway" => "".to_string(),
            _ if theirs > 0.0 => format!("{:.2}×", ours / theirs),
            _ => "n/a".to_string(),
        };
        writeln!(
            out,
            "| {name} | {:.1} MB | {waiting:.0} | {} | {idle:.0} | {} |",
            sample.before as f64 / 1e6,
            ratio(gw_waiting, waiting),
            ratio(gw_idle, idle)
        )?;
    }
    writeln!(
        out,
        "\nNotes: bytes per connection = (VmRSS of the proxy's process tree with the connections open, settled \
         \u{2212} VmRSS settled before they opened) / {connections}; kernel socket buffers are not in RSS and not \
         counted. \"Waiting for its head\": each connection sent `GET /bench`, Host and its API key, but not the \
         blank line that ends the head. \"Idle keep-alive\": the same connections after that blank line, each \
         request answered 200 through the upstream (one of the {KEYS} keys each), then {} s without a byte \
         (past the gateway's `limits.park_idle_after`: its idle connections are parked). Connections come from \
         127.0.0.2 upwards, {PER_SOURCE} per address, under the gateway's default per-source cap. One run, \
         one proxy at a time.",
        IDLE.as_secs()
    )?;
    Ok(out)
}
