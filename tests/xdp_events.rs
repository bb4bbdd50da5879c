//! Kernel events end to end: the XDP program logs a ban's first drop once,
//! its parse give-ups at most once a second, the gateway forwards them to
//! its log, and `gateway xdp events` follows them through the admin API.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{gateway_bin, Gateway, GatewayBuilder},
    netns::{Listener, Topology, CLIENT2_V4, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    packet::{Ipv6Ext, TcpFrame},
    require_root,
};
use serde_json::Value;

const PROTECTED: u16 = 8080;
const DROPPED: Duration = Duration::from_millis(400);
/// Every wait in this file gives up after this long.
const WITHIN: Duration = Duration::from_secs(15);
/// A tier for the admin key.
const TIERS: &str = "[[tiers]]\nname = \"gold\"\nrequests = 1000\n";

fn pause(duration: Duration) {
    #[allow(
        clippy::disallowed_methods,
        reason = "sync test, waiting on another process"
    )]
    thread::sleep(duration);
}

/// Polls `done` until it holds; fails with `what` after [`WITHIN`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        pause(Duration::from_millis(20));
    }
}

fn syn(src: &str, dst: &str) -> TcpFrame {
    TcpFrame::syn(src.parse().unwrap(), dst.parse().unwrap(), PROTECTED)
}

/// XDP protecting 8080 in the server namespace, its log kept, with a
/// read-only admin key (enough to follow events).
fn gateway(topology: &Topology) -> (Gateway, String) {
    gateway_with(topology, &[])
}

/// [`gateway`] with more `gateway run` arguments.
fn gateway_with(topology: &Topology, args: &[&str]) -> (Gateway, String) {
    let builder: GatewayBuilder = Gateway::builder(TIERS)
        .in_namespace(&topology.server)
        .xdp(&PROTECTED.to_string())
        .args(args)
        .capture_stderr();
    let key = builder.create_key_with("gold", &["--admin", "--scopes", "admin:read"]);
    (builder.start(), key)
}

/// Gateway log lines of `source`'s first drop after its ban.
fn logged_ban_drops(gateway: &Gateway, source: &str) -> usize {
    let needle = format!("source={source} ");
    gateway
        .stderr_text()
        .lines()
        .filter(|l| l.contains("gateway::xdp::events") && l.contains("ban_first_drop"))
        .filter(|l| l.contains(&needle))
        .count()
}

/// A running `gateway xdp events --json` in the gateway's namespace.
struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Follower {
    fn start(topology: &Topology, gateway: &Gateway, key: &str) -> Self {
        let url = format!("http://{}", gateway.admin.unwrap());
        let key = key.to_owned();
        // Spawned from a thread inside the namespace, so it runs there.
        let mut child = topology.server.run(move || {
            Command::new(gateway_bin())
                .args(["xdp", "events", "--json", "--admin-url", &url])
                .env("GATEWAY_ADMIN_KEY", key)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        });
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let stdout = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            sink.lock().unwrap().push_str(&text);
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    /// The events printed so far.
    fn events(&self) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect()
    }

    fn count(&self, event: &str, field: &str, value: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["event"] == event && e[field] == value)
            .count()
    }

    /// Waits (bounded) for it to exit; its status and stderr.
    fn wait(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + WITHIN;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("gateway xdp events did not exit");
            }
            pause(Duration::from_millis(20));
        };
        // The stderr reader finishes at the pipe's end.
        pause(Duration::from_millis(100));
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stderr)
    }

    /// Ctrl-C, then [`Follower::wait`].
    fn interrupt(self) -> (ExitStatus, String) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        self.wait()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bans `source` and sends it one SYN; its first-drop event is then the
/// last the kernel logs, so every event before it has been read once it
/// shows up.
fn sentinel(topology: &Topology, gateway: &Gateway, follower: &Follower, source: &str) {
    gateway.xdp(&["ban", source, "--for", "60s"]);
    topology.send_frames(vec![syn(source, SERVER_V4).build()]);
    wait_until("the sentinel's event", || {
        follower.count("ban_first_drop", "source", source) == 1
    });
}

#[test]
fn a_bans_first_drop_is_logged_once_and_followed_live() {
    if !require_root("a_bans_first_drop_is_logged_once_and_followed_live") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let (gateway, key) = gateway(&topology);
    let follower = Follower::start(&topology, &gateway, &key);

    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    let before = gateway.counter("dropped_banned");
    topology.send_frames(vec![syn(CLIENT_V4, SERVER_V4).build(); 5]);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    wait_until("the drops to be counted", || {
        gateway.counter("dropped_banned") >= before + 6
    });
    sentinel(&topology, &gateway, &follower, CLIENT2_V4);

    assert_eq!(
        logged_ban_drops(&gateway, CLIENT_V4),
        1,
        "one log line for the ban, not one per packet:\n{}",
        gateway.stderr_text()
    );
    let line = gateway.stderr_text();
    let line = line
        .lines()
        .find(|l| l.contains(&format!("source={CLIENT_V4} ")))
        .unwrap();
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("reason=\"manual\""), "{line}");

    assert_eq!(follower.count("ban_first_drop", "source", CLIENT_V4), 1);
    let event = follower
        .events()
        .into_iter()
        .find(|e| e["source"] == CLIENT_V4)
        .unwrap();
    assert_eq!(event["reason"], "manual");
    assert_eq!(event["monitor"], false);
    assert!(event["expires_in_ms"].as_u64().unwrap() > 30_000, "{event}");

    // A follower that starts now gets the recent events first.
    let late = Follower::start(&topology, &gateway, &key);
    wait_until("the replay", || {
        late.count("ban_first_drop", "source", CLIENT_V4) == 1
    });

    let (status, stderr) = follower.interrupt();
    assert!(
        status.success(),
        "Ctrl-C is a clean exit: {status:?} {stderr}"
    );
}

#[test]
fn in_monitor_mode_the_first_packet_under_a_ban_is_reported_as_passed() {
    if !require_root("in_monitor_mode_the_first_packet_under_a_ban_is_reported_as_passed") {
        return;
    }
    let topology = Topology::new();
    let (gateway, key) = gateway_with(&topology, &["--mode", "monitor"]);
    let follower = Follower::start(&topology, &gateway, &key);
    sentinel(&topology, &gateway, &follower, CLIENT_V4);
    let event = follower
        .events()
        .into_iter()
        .find(|e| e["source"] == CLIENT_V4)
        .unwrap();
    assert_eq!(event["monitor"], true, "{event}");
    assert!(gateway.counter("monitor_would_drop_banned") >= 1);
    assert!(
        gateway.stderr_text().contains("(monitor mode: passed)"),
        "{}",
        gateway.stderr_text()
    );
}

#[test]
fn parse_give_ups_are_rate_limited_in_the_kernel() {
    if !require_root("parse_give_ups_are_rate_limited_in_the_kernel") {
        return;
    }
    let topology = Topology::new();
    let (gateway, key) = gateway(&topology);
    let follower = Follower::start(&topology, &gateway, &key);

    // Frames cut inside the TCP header (the parser reads 14 of its bytes),
    // in bursts over about two seconds.
    let mut truncated = syn(CLIENT2_V4, SERVER_V4).build();
    truncated.truncate(14 + 20 + 6);
    let mut long_chain = syn(CLIENT_V6, SERVER_V6);
    long_chain.ipv6_ext = vec![Ipv6Ext::DestinationOptions; 5];
    let started = Instant::now();
    for _ in 0..4 {
        topology.send_frames(vec![truncated.clone(); 500]);
        pause(Duration::from_millis(500));
    }
    topology.send_frames(vec![long_chain.build(); 20]);
    sentinel(&topology, &gateway, &follower, CLIENT_V4);
    let elapsed = started.elapsed();

    let truncations = follower.count("parse_gave_up", "why", "truncated");
    // Documented: one a second per kind, one more per CPU racing.
    let cpus = thread::available_parallelism().map_or(64, usize::from);
    let bound = cpus * (usize::try_from(elapsed.as_secs()).unwrap() + 2);
    assert!(
        (1..=bound).contains(&truncations),
        "{truncations} truncation events for 2000 frames in {elapsed:?} (bound {bound})"
    );
    assert!(follower.count("parse_gave_up", "why", "ipv6_ext_chain") >= 1);
    assert!(
        follower.count("parse_gave_up", "why", "ipv6_ext_chain") <= bound,
        "20 long chains, rate-limited"
    );
    // Debug level: streamed, but not in the default log.
    assert!(
        !gateway.stderr_text().contains("parse_gave_up"),
        "{}",
        gateway.stderr_text()
    );
}

#[test]
fn the_follower_exits_when_the_gateway_stops() {
    if !require_root("the_follower_exits_when_the_gateway_stops") {
        return;
    }
    let topology = Topology::new();
    let (mut gateway, key) = gateway(&topology);
    let follower = Follower::start(&topology, &gateway, &key);
    // Connected once it has printed an event.
    sentinel(&topology, &gateway, &follower, CLIENT_V4);
    assert!(gateway.stop(), "SIGTERM: a clean exit");
    let (status, stderr) = follower.wait();
    assert!(status.success(), "{status:?} {stderr}");
    assert!(stderr.contains("closed the event stream"), "{stderr}");
}

#[test]
fn following_needs_a_reachable_gateway_an_admin_key_and_a_loaded_program() {
    // No root needed: a gateway without XDP on loopback.
    let builder = Gateway::builder(TIERS);
    let admin = builder.create_key_with("gold", &["--admin"]);
    let user = builder.create_key("gold");
    let gateway = builder.start();
    let url = format!("http://{}", gateway.admin.unwrap());
    let follow = |url: &str, key: Option<&str>| {
        let mut command = Command::new(gateway_bin());
        command.args(["xdp", "events", "--admin-url", url]);
        command.env_remove("GATEWAY_ADMIN_KEY");
        if let Some(key) = key {
            command.env("GATEWAY_ADMIN_KEY", key);
        }
        let output = command.output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (status, stderr) = follow(&url, Some(&admin));
    assert!(!status.success());
    assert!(stderr.contains("no XDP program is loaded"), "{stderr}");
    let (status, stderr) = follow(&url, Some(&user));
    assert!(!status.success());
    assert!(stderr.contains("may not use the admin API"), "{stderr}");
    let (status, stderr) = follow(&url, None);
    assert!(!status.success());
    assert!(stderr.contains("GATEWAY_ADMIN_KEY"), "{stderr}");

    // A port nothing listens on (the admin listener's, once it is gone).
    drop(gateway);
    let (status, stderr) = follow(&url, Some(&admin));
    assert!(!status.success());
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
    assert!(stderr.contains("is the gateway running?"), "{stderr}");
}

/// Sends `GET path` on a new admin connection; the status code (0: the
/// connection was closed first) and the open connection.
fn admin_get(admin: std::net::SocketAddr, path: &str, key: &str) -> (u16, std::net::TcpStream) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&admin, WITHIN).unwrap();
    stream.set_read_timeout(Some(WITHIN)).unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {key}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // The status line, one byte at a time, bounded.
    while head.len() < 256 && !head.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, stream)
}

#[test]
fn followers_are_capped_so_they_never_take_every_admin_connection() {
    if !require_root("followers_are_capped_so_they_never_take_every_admin_connection") {
        return;
    }
    let topology = Topology::new();
    let (gateway, key) = gateway(&topology);
    let admin = gateway.admin.unwrap();
    let (following, refused, health) = topology.server.run(move || {
        // The admin listener's connection limit (admin::MAX_CONNECTIONS).
        let mut streams = Vec::new();
        let mut refused = 0;
        while streams.len() < 64 {
            match admin_get(admin, "/v1/xdp/events", &key) {
                (200, stream) => streams.push(stream),
                (status, _) => {
                    refused = status;
                    break;
                }
            }
        }
        let (health, _) = admin_get(admin, "/healthz", "");
        (streams.len(), refused, health)
    });
    assert!(
        following < 64,
        "{following} followers took every admin connection"
    );
    assert_eq!(refused, 503, "the follower past the limit is told why");
    assert_eq!(health, 200, "the admin API still answers");
}

#[test]
fn a_follower_whose_key_expires_gets_no_more_events() {
    if !require_root("a_follower_whose_key_expires_gets_no_more_events") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let builder: GatewayBuilder = Gateway::builder(TIERS)
        .in_namespace(&topology.server)
        .xdp(&PROTECTED.to_string());
    let lasting = builder.create_key_with("gold", &["--admin", "--scopes", "admin:read"]);
    // Standing in for a key revoked or disabled while its holder follows.
    let expiring = builder.create_key_with(
        "gold",
        &["--admin", "--scopes", "admin:read", "--expires-in", "10s"],
    );
    let gateway = builder.start();
    let witness = Follower::start(&topology, &gateway, &lasting);
    let follower = Follower::start(&topology, &gateway, &expiring);
    sentinel(&topology, &gateway, &witness, CLIENT2_V4);
    wait_until("the expiring key's follower to follow", || {
        follower.count("ban_first_drop", "source", CLIENT2_V4) == 1
    });
    let admin = gateway.admin.unwrap();
    let key = expiring.clone();
    wait_until("the key to expire", || {
        let key = key.clone();
        topology
            .server
            .run(move || admin_get(admin, "/v1/xdp/events", &key).0)
            == 401
    });
    sentinel(&topology, &gateway, &witness, CLIENT_V4);
    assert_eq!(
        follower.count("ban_first_drop", "source", CLIENT_V4),
        0,
        "an expired key still follows: {:?}",
        follower.events()
    );
    wait_until("the stream to say why it closed", || {
        follower.events().iter().any(|e| e["event"] == "closed")
    });
    follower.wait();
}

/// A source dropped under a prefix ban reports that ban's reason.
#[test]
fn a_prefix_bans_first_drop_names_its_reason() {
    if !require_root("a_prefix_bans_first_drop_names_its_reason") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let (gateway, key) = gateway(&topology);
    let follower = Follower::start(&topology, &gateway, &key);

    gateway.xdp(&["ban", "10.77.0.0/30", "--for", "60s"]);
    topology.send_frames(vec![syn(CLIENT_V4, SERVER_V4).build()]);
    wait_until("the first drop's event", || {
        follower.count("ban_first_drop", "source", CLIENT_V4) == 1
    });
    let event = follower
        .events()
        .into_iter()
        .find(|e| e["source"] == CLIENT_V4)
        .unwrap();
    assert_eq!(event["reason"], "manual", "{event}");
}

/// Sources under a prefix ban are as many as an attacker rotates through
/// (a /64 is 2^64 of them): their first drops are rate-limited in the
/// program, or each new address would be a log line.
#[test]
fn first_drops_under_a_prefix_ban_are_rate_limited() {
    if !require_root("first_drops_under_a_prefix_ban_are_rate_limited") {
        return;
    }
    let topology = Topology::new();
    let (gateway, key) = gateway(&topology);
    let follower = Follower::start(&topology, &gateway, &key);
    gateway.xdp(&["ban", "fd77:0:0:0:1::/80", "--for", "60s"]);
    let started = Instant::now();
    let rotating: Vec<Vec<u8>> = (1..=300u16)
        .map(|i| syn(&format!("fd77::1:0:0:{i:x}"), SERVER_V6).build())
        .collect();
    topology.send_frames(rotating);
    sentinel(&topology, &gateway, &follower, CLIENT_V4);
    let elapsed = started.elapsed();

    let in_prefix = follower
        .events()
        .iter()
        .filter(|e| e["event"] == "ban_first_drop")
        .filter(|e| {
            e["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("fd77::1:0:0:"))
        })
        .count();
    // As documented for every rate-limited kind: one a second, one more per CPU racing.
    let cpus = thread::available_parallelism().map_or(64, usize::from);
    let bound = cpus * (usize::try_from(elapsed.as_secs()).unwrap() + 2);
    assert!(
        (1..=bound).contains(&in_prefix),
        "{in_prefix} first-drop events for 300 addresses of a banned prefix in {elapsed:?} \
         (bound {bound})"
    );
    assert!(gateway.counter("dropped_banned") >= 300);
}
