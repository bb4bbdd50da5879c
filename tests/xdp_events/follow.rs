//! What the kernel-event tests share: a gateway with XDP and a read-only
//! admin key, and a `gateway xdp events` follower reading its stream.
#![allow(dead_code, reason = "shared by two test files; each uses a part")]

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{gateway_bin, Gateway, GatewayBuilder},
    netns::{Topology, SERVER_V4},
    packet::TcpFrame,
};
use serde_json::Value;

pub const PROTECTED: u16 = 8080;
pub const DROPPED: Duration = Duration::from_millis(400);
/// Every wait in this file gives up after this long.
pub const WITHIN: Duration = Duration::from_secs(15);
/// A tier for the admin key.
pub const TIERS: &str = "[[tiers]]\nname = \"gold\"\nrequests = 1000\n";

pub fn pause(duration: Duration) {
    #[allow(
        clippy::disallowed_methods,
        reason = "sync test, waiting on another process"
    )]
    thread::sleep(duration);
}

/// Polls `done` until it holds; fails with `what` after [`WITHIN`].
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        pause(Duration::from_millis(20));
    }
}

pub fn syn(src: &str, dst: &str) -> TcpFrame {
    TcpFrame::syn(src.parse().unwrap(), dst.parse().unwrap(), PROTECTED)
}

/// XDP protecting 8080 in the server namespace, its log kept, with a
/// read-only admin key (enough to follow events).
pub fn gateway(topology: &Topology) -> (Gateway, String) {
    gateway_with(topology, &[])
}

/// [`gateway`] with more `gateway run` arguments.
pub fn gateway_with(topology: &Topology, args: &[&str]) -> (Gateway, String) {
    let builder: GatewayBuilder = Gateway::builder(TIERS)
        .in_namespace(&topology.server)
        .xdp(&PROTECTED.to_string())
        .args(args)
        .capture_stderr();
    let key = builder.create_key_with("gold", &["--admin", "--scopes", "admin:read"]);
    (builder.start(), key)
}

/// Gateway log lines of `source`'s first drop after its ban.
pub fn logged_ban_drops(gateway: &Gateway, source: &str) -> usize {
    let needle = format!("source={source} ");
    gateway
        .stderr_text()
        .lines()
        .filter(|l| l.contains("gateway::xdp::events") && l.contains("ban_first_drop"))
        .filter(|l| l.contains(&needle))
        .count()
}

/// A running `gateway xdp events --json` in the gateway's namespace.
pub struct Follower {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Follower {
    pub fn start(topology: &Topology, gateway: &Gateway, key: &str) -> Self {
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
    pub fn events(&self) -> Vec<Value> {
        let lines = self.lines.lock().unwrap();
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
            .collect()
    }

    pub fn count(&self, event: &str, field: &str, value: &str) -> usize {
        self.events()
            .iter()
            .filter(|e| e["event"] == event && e[field] == value)
            .count()
    }

    /// Waits (bounded) for it to exit; its status and stderr.
    pub fn wait(mut self) -> (ExitStatus, String) {
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
    pub fn interrupt(self) -> (ExitStatus, String) {
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
pub fn sentinel(topology: &Topology, gateway: &Gateway, follower: &Follower, source: &str) {
    gateway.xdp(&["ban", source, "--for", "60s"]);
    topology.send_frames(vec![syn(source, SERVER_V4).build()]);
    wait_until("the sentinel's event", || {
        follower.count("ban_first_drop", "source", source) == 1
    });
}
