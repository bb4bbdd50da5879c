//! The gateway binary under test, run by one harness for every test file:
//! [`Gateway::builder`] writes a config (listeners and admin on port 0, a
//! key store and state dir in a temp dir, then the test's own tables),
//! keys may be created in its store, then [`GatewayBuilder::start`] runs
//! `gateway run` (on loopback with `--no-xdp`, or inside a test namespace
//! with XDP on its veth) and waits for its `ready:` line.
mod builder;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Output},
    sync::{mpsc, Arc, Mutex, Once},
    thread,
    time::{Duration, Instant},
};

use builder::{cli, create_client, Launch};
pub use builder::{minimal_config, GatewayBuilder};

use crate::{
    cmd::{checked, sh},
    fs::TempDir,
    http::{pause, request, Reply},
};

/// How long a gateway may take to print `ready:`.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Stdout lines (access log, ...) kept for [`Gateway::access_log`]; more
/// than any test makes, and a bound for long benchmark runs.
const KEPT_LINES: usize = 10_000;

/// The gateway binary under test: `GATEWAY_BIN` (set by `cargo xtask test`),
/// else `target/debug/gateway` next to this test executable.
pub fn gateway_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/xdp-HASH -> target/debug/gateway
    let path = exe.parent().unwrap().parent().unwrap().join("gateway");
    assert!(
        path.is_file(),
        "{} not found: run `cargo xtask test` (it builds the gateway with its XDP object)",
        path.display()
    );
    path
}

/// Mounts bpffs at /sys/fs/bpf once per test process, before any gateway
/// starts, so parallel gateways never race to stack two mounts.
fn ensure_bpffs() {
    static MOUNT: Once = Once::new();
    MOUNT.call_once(|| {
        let mounted = Command::new("stat")
            .args(["-f", "-c", "%T", "/sys/fs/bpf"])
            .output()
            .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "bpf_fs")
            .unwrap_or(false);
        if !mounted {
            sh("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"]);
        }
    });
}

/// A running `gateway run`. Dropping it stops the gateway (with XDP:
/// SIGTERM, then SIGKILL after 10 s; then it removes the pins a stopped
/// gateway keeps, its link included, which detaches the program; without:
/// SIGKILL) and removes its temp dir.
pub struct Gateway {
    child: Option<Child>,
    launch: Launch,
    /// The first listener: the base config's plain HTTP one.
    pub addr: SocketAddr,
    /// Every listener, as printed: `http://..` or `https://..`.
    pub listeners: Vec<String>,
    /// The admin listener (`/metrics`, management API); inside the
    /// gateway's namespace if it runs in one.
    pub admin: Option<SocketAddr>,
    /// The `ready: ...` line (how bans are enforced).
    pub ready_line: String,
    /// The gateway's `state_dir` (self-signed certificate, audit log, ...).
    pub state_dir: PathBuf,
    pub config: PathBuf,
    /// Where XDP pins its maps (with [`GatewayBuilder::xdp`]).
    pub pin_root: PathBuf,
    /// Stdout lines so far (at most [`KEPT_LINES`]).
    lines: Arc<Mutex<Vec<String>>>,
    /// With [`GatewayBuilder::capture_stderr`]: stderr lines so far, ANSI
    /// colours removed (at most [`KEPT_LINES`]).
    stderr_lines: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Gateway {
    /// A gateway on `body` (listeners, upstreams, routes, tiers, ...)
    /// appended to the base config; on loopback with `--no-xdp` unless the
    /// builder says otherwise.
    pub fn builder(body: &str) -> GatewayBuilder {
        GatewayBuilder::new(body)
    }

    fn spawn(&mut self) {
        let mut child = self.launch.spawn(&self.config);
        let stdout = child.stdout.take().unwrap();
        if let Some(stderr) = child.stderr.take() {
            let sink = self.stderr_lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    let mut kept = sink.lock().unwrap();
                    if kept.len() < KEPT_LINES {
                        kept.push(strip_ansi(&line));
                    }
                }
            });
        }
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        let sink = self.lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                {
                    let mut kept = sink.lock().unwrap();
                    if kept.len() < KEPT_LINES {
                        kept.push(line.clone());
                    }
                }
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let exited = self
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok())
                    .flatten();
                panic!(
                    "gateway did not report ready within {READY_WITHIN:?} (exited: {exited:?}; \
                     see its stderr above)"
                );
            };
            if let Some(url) = line.strip_prefix("listening: ") {
                if self.listeners.is_empty() {
                    let plain = url
                        .strip_prefix("http://")
                        .expect("first listener is plain HTTP");
                    self.addr = plain.parse().unwrap();
                }
                self.listeners.push(url.to_owned());
            }
            if let Some(url) = line.strip_prefix("admin: http://") {
                self.admin = Some(url.parse().unwrap());
            }
            if line.starts_with("ready:") {
                assert_ne!(self.addr.port(), 0, "gateway printed no listening address");
                self.ready_line = line;
                return;
            }
        }
    }

    /// Kills the gateway and starts it again on the same config and state.
    pub fn restart(mut self) -> Self {
        self.crash();
        self.listeners.clear();
        self.admin = None;
        self.lines.lock().unwrap().clear();
        self.spawn();
        self
    }

    /// This gateway's config with its `127.0.0.1:0` addresses (admin
    /// first, then the listeners in order) pinned to the ports in use.
    fn successor_config(&self) -> String {
        let mut text = std::fs::read_to_string(&self.config).unwrap();
        let ports: Vec<String> = self
            .admin
            .iter()
            .map(ToString::to_string)
            .chain(
                self.listeners
                    .iter()
                    .map(|url| url.split("://").nth(1).unwrap().to_owned()),
            )
            .collect();
        for port in ports {
            text = text.replacen("\"127.0.0.1:0\"", &format!("\"{port}\""), 1);
        }
        text
    }

    /// Runs a second `gateway run` as [`Gateway::start_successor`] does,
    /// on that config as `edit` changes it (in a file of its own) and on
    /// `interface` if given, expecting it to fail after taking the sockets
    /// over; waits (at most 60 s, then kills it) for it to exit. This
    /// still stands for the running gateway.
    pub fn failed_successor(
        &self,
        edit: impl FnOnce(String) -> String,
        interface: Option<&str>,
    ) -> Output {
        let config = self
            ._dir
            .write("successor.toml", &edit(self.successor_config()));
        let mut launch = self.launch.clone();
        launch.capture_stderr = true;
        if let Some(interface) = interface {
            launch.interface = Some(interface.to_owned());
        }
        let child = launch.spawn(&config);
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(output) => output.unwrap(),
            Err(_) => {
                // SAFETY: killing our own child, still running.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the failing successor did not exit within 60 s");
            }
        }
    }

    /// Starts a second `gateway run` on the same config and state while
    /// this one still serves (a restart or an upgrade): the config's
    /// `127.0.0.1:0` addresses (admin first, then the listeners in order)
    /// are pinned to the ports in use. This then stands for the new
    /// process; the old one is returned for the test to stop.
    pub fn start_successor(&mut self) -> Child {
        let text = self.successor_config();
        std::fs::write(&self.config, text).unwrap();
        let old = self.child.take().expect("the gateway is running");
        let addr = self.addr;
        self.listeners.clear();
        self.admin = None;
        // The old process's output keeps going to the old buffers.
        self.lines = Arc::new(Mutex::new(Vec::new()));
        self.stderr_lines = Arc::new(Mutex::new(Vec::new()));
        self.spawn();
        assert_eq!(
            self.addr, addr,
            "the successor listens where the old one did"
        );
        old
    }

    pub fn get(&self, target: &str, headers: &[(&str, &str)]) -> Reply {
        request(self.addr, "GET", target, headers)
    }

    /// The value of an unlabelled series in the admin `/metrics`, if shown.
    pub fn metric(&self, name: &str) -> Option<u64> {
        let text = self.admin_get("/metrics", &[]).body;
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// `GET path` on the admin listener.
    pub fn admin_get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        request(self.admin.expect("no admin listener"), "GET", path, headers)
    }

    /// A new client of `tier` in this gateway's store; returns its key. The
    /// running gateway picks it up within `keys.refresh` (100 ms).
    pub fn create_key(&self, tier: &str) -> String {
        create_client(&self.config, tier, &[]).1
    }

    /// [`Gateway::create_key`] with more `keys create` arguments.
    pub fn create_key_with(&self, tier: &str, extra: &[&str]) -> String {
        create_client(&self.config, tier, extra).1
    }

    /// Like [`Gateway::create_key_with`]: the client id and the key.
    pub fn create_client(&self, tier: &str, extra: &[&str]) -> (String, String) {
        create_client(&self.config, tier, extra)
    }

    /// `gateway <args>` with `env` set (not checked: tests look at failures).
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        cli(args, env)
    }

    /// Runs `gateway xdp <args> --pin-root <root>` and returns stdout.
    pub fn xdp(&self, args: &[&str]) -> String {
        let output = checked(
            Command::new(gateway_bin())
                .arg("xdp")
                .args(args)
                .arg("--pin-root")
                .arg(&self.pin_root),
        );
        String::from_utf8(output.stdout).unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.xdp(&["status", "--json"])).unwrap()
    }

    /// Counter totals by name, read from the pinned per-CPU map.
    pub fn counter(&self, name: &str) -> u64 {
        let status = self.status();
        status["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {status}"))
    }

    /// The gateway process, e.g. to pin it to a CPU.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Access-log lines (JSON objects) printed so far.
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The first access-log line matching `predicate`, waiting up to 5 s
    /// for it (stdout is read on another thread).
    pub fn wait_for_log(
        &self,
        predicate: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.access_log().into_iter().find(|l| predicate(l)) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no matching access-log line: {}",
                self.log_text()
            );
            pause(Duration::from_millis(20));
        }
    }

    /// Everything printed on stdout so far.
    pub fn log_text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The log (stderr) so far, with [`GatewayBuilder::capture_stderr`].
    pub fn stderr_text(&self) -> String {
        self.stderr_lines.lock().unwrap().join("\n")
    }

    /// This process's log (stderr, with [`GatewayBuilder::capture_stderr`]),
    /// still readable after [`Gateway::start_successor`] makes this stand
    /// for the new process.
    pub fn stderr_log(&self) -> StderrLog {
        StderrLog(self.stderr_lines.clone())
    }

    /// The gateway process, for a test to signal and wait for itself.
    pub fn take_child(&mut self) -> Child {
        self.child.take().expect("the gateway is running")
    }

    /// Kills the gateway without letting it clean up (a crash).
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the gateway with SIGTERM and returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            pause(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

/// One process's log lines (see [`Gateway::stderr_log`]).
pub struct StderrLog(Arc<Mutex<Vec<String>>>);

impl StderrLog {
    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }
}

/// Sends `signal` to `child` and waits up to `within` for it to exit; its
/// exit status, or `None` if it was still running (then it is killed).
pub fn signal_and_wait(
    child: &mut Child,
    signal: libc::c_int,
    within: Duration,
) -> Option<std::process::ExitStatus> {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        pause(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `line` without ANSI colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.launch.xdp_ports.is_none() {
            self.crash();
            return;
        }
        self.stop();
        if let Ok(entries) = std::fs::read_dir(&self.pin_root) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
            let _ = std::fs::remove_dir(&self.pin_root);
        }
    }
}

/// A well-formed API key (its check digits right) with key id `id` (12
/// base62 characters) and a secret no key has: what a guesser who knows
/// or invents an id sends.
pub fn forged_key(id: &str) -> String {
    const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let body = format!("gk_{id}_{}", "Z".repeat(43));
    let mut value = crc32fast::hash(body.as_bytes());
    let mut digits = [b'0'; 6];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    body + &String::from_utf8_lossy(&digits)
}
