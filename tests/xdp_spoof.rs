//! Spoof-resistant SYN budgets (`xdp.syn_cookies`), end to end: a spoofer
//! sends SYNs with a real client's source address at many times the
//! client's SYN budget while the client keeps connecting. With SYN cookies
//! the client's connections are accepted by the server (not just
//! SYN-ACKed) and the spoofed SYNs are not charged; without, the client is
//! dropped as over budget, which is the defect this closes.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{gateway_bin, Gateway},
    http::pause,
    netns::{Listener, Topology, CLIENT_IF, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    packet::{RawSender, TcpFrame},
    require_root,
};

const PROTECTED: u16 = 8080;
/// The client's budget: 5 new connections back to back, then 1 a second.
const BUDGET: [&str; 6] = ["--syn-rate", "1", "--syn-burst", "5", "--pkt-rate", "0"];
/// Spoofed SYNs sent before the client's first connect: 200 times its burst.
const HEAD_START: usize = 1_000;
/// Connects the client makes while the flood runs (within its burst).
const CONNECTS: usize = 4;
/// Bounds on the background flood, whatever happens to the test.
const FLOOD_BATCHES: usize = 1_000_000;
const FLOOD_FOR: Duration = Duration::from_secs(30);
const FLOOD_PAUSE: Duration = Duration::from_millis(2);
/// A connect the server accepted is closed by it at once; one it never
/// accepted leaves the client's read waiting.
const ACCEPTED_WITHIN: Duration = Duration::from_secs(3);

/// Spoofed SYNs from `client` with rotating source ports, sent until
/// stopped (bounded in batches and time); counts what went out.
struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(topology: &Topology, client: &str, server: &str) -> Self {
        let mac = topology.server_mac();
        let frames: Vec<Vec<u8>> = (0..4096u16)
            .map(|i| {
                let mut frame =
                    TcpFrame::syn(client.parse().unwrap(), server.parse().unwrap(), PROTECTED);
                frame.src_port = 20_000 + i;
                frame.dst_mac = mac;
                frame.build()
            })
            .collect();
        // The head start goes out before the client's first connect.
        topology.send_frames(frames[..HEAD_START].to_vec());
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(HEAD_START as u64));
        let (flag, counter) = (stop.clone(), sent.clone());
        let thread = topology.client.spawn(move || {
            let socket = RawSender::open(CLIENT_IF).unwrap();
            let started = Instant::now();
            for batch in 0..FLOOD_BATCHES {
                if flag.load(Ordering::Relaxed) || started.elapsed() > FLOOD_FOR {
                    break;
                }
                let from = (batch * 64) % (frames.len() - 64);
                let batch: Vec<&[u8]> = frames[from..from + 64].iter().map(|f| &f[..]).collect();
                if let Ok(n) = socket.send_many(&batch) {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                // At most ~30,000 SYNs/s: thousands of times the budget,
                // without filling the veth's rings with the SYN-ACKs XDP
                // sends back (which would drop the client's too).
                #[allow(clippy::disallowed_methods, reason = "plain thread, not async")]
                std::thread::sleep(FLOOD_PAUSE);
            }
        });
        Self {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

/// A connect from `source` that the server accepted: the listener closes
/// it, so the client reads EOF. (A completed connect alone proves nothing:
/// the SYN-ACK may be a cookie whose final ACK XDP dropped.)
fn accepted(topology: &Topology, source: &str, dest: &str) -> bool {
    let source: IpAddr = source.parse().unwrap();
    let dest = SocketAddr::new(dest.parse().unwrap(), PROTECTED);
    topology.client.run(move || {
        let domain = socket2::Domain::for_address(dest);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
        if socket
            .connect_timeout(&dest.into(), ACCEPTED_WITHIN)
            .is_err()
        {
            return false;
        }
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(ACCEPTED_WITHIN)).unwrap();
        let mut byte = [0u8; 1];
        // EOF or a reset: the server had a socket for it.
        match stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    })
}

/// A frame XDP_TX sends on a veth reaches the peer only if the peer runs
/// NAPI, which an attached XDP program turns on (a NIC's transmit needs
/// nothing): the client end gets `pass-all`, built beside the gateway's
/// program.
fn peer_takes_xdp_tx(topology: &Topology) {
    let object = gateway_bin()
        .parent()
        .and_then(|debug| debug.parent())
        .unwrap()
        .join("bpfel-unknown-none/release/pass-all");
    let object = object.to_str().unwrap();
    let ns = &topology.client.name;
    let args = [
        "-n", ns, "link", "set", "dev", CLIENT_IF, "xdpdrv", "obj", object, "sec", "xdp",
    ];
    gateway_tests::sh("ip", &args);
}

/// `cookies`: the `--syn-cookies` mode (`off`, `kernel` or `xdp`).
fn gateway(topology: &Topology, cookies: &str) -> Gateway {
    peer_takes_xdp_tx(topology);
    Gateway::builder("")
        .in_namespace(&topology.server)
        .xdp(&PROTECTED.to_string())
        .args(&["--syn-cookies", cookies])
        .start()
}

/// Runs the flood against `client`'s budget; returns how many of the
/// client's connects the server accepted, and the gateway for its counters.
fn client_under_spoofed_flood(
    topology: &Topology,
    cookies: &str,
    client: &str,
    server: &str,
) -> (usize, Gateway) {
    let gateway = gateway(topology, cookies);
    let mut budget = vec!["budget", client];
    budget.extend(BUDGET);
    gateway.xdp(&budget);
    let flood = Flood::start(topology, client, server);
    let accepted = (0..CONNECTS)
        .filter(|_| accepted(topology, client, server))
        .count();
    let sent = flood.stop();
    eprintln!("spoofed SYNs sent: {sent}; client connects accepted: {accepted}/{CONNECTS}");
    assert!(sent >= HEAD_START as u64, "flood sent {sent}");
    (accepted, gateway)
}

fn spoofed_flood_does_not_cost_the_client_its_connects(cookies: &str, client: &str, server: &str) {
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let (accepted, gateway) = client_under_spoofed_flood(&topology, cookies, client, server);
    let status = gateway.status();
    eprintln!("counters: {}", status["counters"]);
    assert_eq!(accepted, CONNECTS, "status: {status}");
    // Spoofed SYNs took the cookie path (all but the few the budget
    // admitted before cookie mode), uncharged; every connect of the
    // client was a handshake completed with a valid cookie, charged.
    let counters = &status["counters"];
    assert!(
        counters["syn_cookies_sent"].as_u64().unwrap() >= HEAD_START as u64 - 5,
        "{status}"
    );
    assert!(
        counters["syn_cookies_valid"].as_u64().unwrap() >= CONNECTS as u64,
        "{status}"
    );
    assert_eq!(counters["dropped_conn_budget"], 0, "{status}");
    assert_eq!(status["syn_cookies"], cookies);
    // Who sent the SYN-ACKs: XDP (all but one SYN a second per port, left
    // to the kernel so its listener keeps accepting cookies), or the kernel.
    let by_xdp = counters["syn_cookies_xdp"].as_u64().unwrap();
    if cookies == "xdp" {
        assert!(by_xdp >= HEAD_START as u64 - 50, "{status}");
    } else {
        assert_eq!(by_xdp, 0, "{status}");
    }
}

#[test]
fn spoofed_ipv4_syn_flood_does_not_cost_the_client_its_connects() {
    if !require_root("spoofed_ipv4_syn_flood_does_not_cost_the_client_its_connects") {
        return;
    }
    spoofed_flood_does_not_cost_the_client_its_connects("xdp", CLIENT_V4, SERVER_V4);
}

#[test]
fn spoofed_ipv6_syn_flood_does_not_cost_the_client_its_connects() {
    if !require_root("spoofed_ipv6_syn_flood_does_not_cost_the_client_its_connects") {
        return;
    }
    spoofed_flood_does_not_cost_the_client_its_connects("xdp", CLIENT_V6, SERVER_V6);
}

#[test]
fn with_kernel_cookies_a_spoofed_syn_flood_does_not_cost_the_client_its_connects() {
    if !require_root(
        "with_kernel_cookies_a_spoofed_syn_flood_does_not_cost_the_client_its_connects",
    ) {
        return;
    }
    spoofed_flood_does_not_cost_the_client_its_connects("kernel", CLIENT_V4, SERVER_V4);
}

/// The defect, with cookies off (the default and the old behaviour): the
/// spoofed SYNs spend the client's budget and its connects are dropped.
#[test]
fn without_cookies_a_spoofed_flood_costs_the_client_its_connects() {
    if !require_root("without_cookies_a_spoofed_flood_costs_the_client_its_connects") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let (accepted, gateway) = client_under_spoofed_flood(&topology, "off", CLIENT_V4, SERVER_V4);
    eprintln!("counters: {}", gateway.status()["counters"]);
    assert!(accepted < CONNECTS, "accepted {accepted}");
    assert!(gateway.counter("dropped_conn_budget") >= HEAD_START as u64 - 5);
    assert_eq!(gateway.counter("syn_cookies_sent"), 0);
}

/// A real source that completes its handshakes is still held to its
/// budget: past it, its final ACKs are dropped in XDP, so the server never
/// accepts those connections.
#[test]
fn a_real_source_over_budget_is_still_stopped() {
    if !require_root("a_real_source_over_budget_is_still_stopped") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let gateway = gateway(&topology, "xdp");
    let mut budget = vec!["budget", CLIENT_V4];
    budget.extend(BUDGET);
    gateway.xdp(&budget);
    // Simultaneous, so the budget cannot refill meanwhile: 5 charged at
    // the SYN, then cookie mode (which forgives SYNs charged before it
    // once, as they may have been spoofed): 5 more, then drops.
    let attempts = 20;
    let topology = Arc::new(topology);
    let handles: Vec<_> = (0..attempts)
        .map(|_| {
            let topology = topology.clone();
            std::thread::spawn(move || accepted(&topology, CLIENT_V4, SERVER_V4))
        })
        .collect();
    let accepted = handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert!(accepted < attempts, "accepted {accepted} of {attempts}");
    assert!(gateway.counter("dropped_conn_budget") >= 1);
    assert!(gateway.counter("syn_cookies_sent") >= 1);
}

/// One SYN each from `count` distinct spoofed sources (10.77.1.0/24 up):
/// no source is over its own budget, so only the listener-wide meter
/// (`xdp.syn_flood_rate`) can see the flood.
fn one_syn_per_source(topology: &Topology, count: u16) -> Vec<Vec<u8>> {
    let mac = topology.server_mac();
    (0..count)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            let source = std::net::Ipv4Addr::new(10, 77, 1 + hi, lo.max(1));
            let mut frame = TcpFrame::syn(source.into(), SERVER_V4.parse().unwrap(), PROTECTED);
            frame.src_port = 30_000 + i;
            frame.dst_mac = mac;
            frame.build()
        })
        .collect()
}

/// A flood spread over many sources, each within its budget, switches every
/// source to cookie mode past `xdp.syn_flood_rate`: the flood's SYNs are
/// answered with cookies and charged to nobody, and a real client still
/// completes its connects (with a cookie). Without the listener-wide rate
/// the same SYNs all pass to the listener.
#[test]
fn a_flood_from_many_sources_puts_every_source_in_cookie_mode() {
    if !require_root("a_flood_from_many_sources_puts_every_source_in_cookie_mode") {
        return;
    }
    const SOURCES: u16 = 2_000;
    let cookies_for = |flood_rate: &str| {
        let topology = Topology::new();
        let _listener = Listener::start(&topology.server, PROTECTED);
        peer_takes_xdp_tx(&topology);
        let gateway = Gateway::builder("")
            .in_namespace(&topology.server)
            .xdp(&PROTECTED.to_string())
            .args(&["--syn-cookies", "xdp", "--syn-flood-rate", flood_rate])
            .start();
        topology.send_frames(one_syn_per_source(&topology, SOURCES));
        let accepted = (0..CONNECTS)
            .filter(|_| accepted(&topology, CLIENT_V4, SERVER_V4))
            .count();
        let status = gateway.status();
        eprintln!("flood rate {flood_rate}: counters {}", status["counters"]);
        let counters = &status["counters"];
        let count = |name: &str| counters[name].as_u64().unwrap();
        assert_eq!(accepted, CONNECTS, "{status}");
        assert_eq!(count("dropped_conn_budget"), 0, "{status}");
        (count("syn_cookies_sent"), count("syn_cookies_valid"))
    };
    // 2,000 SYNs at once against 100/s (burst 100): all but about the
    // first second's worth go the cookie path.
    let (sent, valid) = cookies_for("100");
    assert!(sent >= u64::from(SOURCES) - 200, "cookies sent: {sent}");
    // The client's connects were cookie handshakes too, then charged.
    assert!(valid >= CONNECTS as u64, "valid cookies: {valid}");
    assert_eq!(
        cookies_for("0"),
        (0, 0),
        "no listener-wide rate: no cookies"
    );
}

/// With `xdp.syn_cookies = "xdp"` the gateway connects to each protected
/// listener so that it keeps accepting XDP's cookies (a kernel stamp, set
/// when the listener itself sends a cookie). A listener a reload adds is
/// one of them at once: the reload is followed by the listener's own SYN
/// cookie (`TcpExt:SyncookiesSent`; `tcp_syncookies = 2` answers every
/// SYN with one), with no connect from the test in between.
#[test]
fn a_listener_added_by_a_reload_is_kept_accepting_xdp_cookies() {
    if !require_root("a_listener_added_by_a_reload_is_kept_accepting_xdp_cookies") {
        return;
    }
    const ADDED: u16 = 8090;
    let topology = Topology::new();
    let gateway = Gateway::builder("")
        .in_namespace(&topology.server)
        .xdp(&ADDED.to_string())
        .args(&["--syn-cookies", "xdp"])
        .capture_stderr()
        .start();
    let reloaded = |log: &str| log.matches("configuration reloaded").count();
    assert_eq!(reloaded(&gateway.stderr_text()), 0);
    let config = std::fs::read_to_string(&gateway.config).unwrap();
    let added = format!("\n[[listeners]]\naddress = \"{SERVER_V4}:{ADDED}\"\n");
    std::fs::write(&gateway.config, config + &added).unwrap();
    let before = topology.server_stat("TcpExt:SyncookiesSent");
    let pid = libc::pid_t::try_from(gateway.pid().unwrap()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloaded(&gateway.stderr_text()) == 0 {
        assert!(Instant::now() < deadline, "{}", gateway.stderr_text());
        pause(Duration::from_millis(20));
    }
    let log = gateway.stderr_text();
    assert!(log.contains(&format!("{SERVER_V4}:{ADDED}")), "{log}");
    // The refresh comes every 30 s otherwise: 10 s tells them apart.
    let deadline = Instant::now() + Duration::from_secs(10);
    while topology.server_stat("TcpExt:SyncookiesSent") == before {
        assert!(
            Instant::now() < deadline,
            "the added listener sent no SYN cookie after the reload"
        );
        pause(Duration::from_millis(50));
    }
}
