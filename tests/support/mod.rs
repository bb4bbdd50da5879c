//! Support for end-to-end tests: network namespaces joined by veth (RAII,
//! removed even when a test fails), the real `gateway` binary started inside
//! the server namespace, TCP listeners and connects from either side.
//!
//! Addresses live only inside the namespaces a test creates. Every name
//! carries the test process id and a counter, so tests run in parallel.
#![allow(
    clippy::unwrap_used,
    reason = "test support: a panic is the failure report"
)]

pub mod http;
pub mod openapi;
pub mod packet;

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::AsRawFd,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        mpsc, Arc, Once,
    },
    thread,
    time::{Duration, Instant},
};

/// Set by `.ci/run`: a privileged test that would skip fails instead.
pub const REQUIRE_PRIVILEGED: &str = "GATEWAY_TEST_REQUIRE_PRIVILEGED";

/// `true` if the test may go on. Without root it skips with a message, or
/// panics when [`REQUIRE_PRIVILEGED`] is set (CI must never skip these).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os(REQUIRE_PRIVILEGED).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{test} needs root (XDP, network namespaces) and {REQUIRE_PRIVILEGED} is set");
    }
    eprintln!("SKIPPED {test}: needs root for XDP and network namespaces (run as root, or via `sudo cargo xtask test`)");
    false
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Runs `openssl` in `dir`; panics with its stderr if it fails. Returns stdout.
pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Runs a command and panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A network namespace, deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        sh("ip", &["netns", "add", &name]);
        sh("ip", &["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        sh("ip", &full);
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace (network only,
    /// so bpffs mounts stay visible).
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().unwrap()
    }

    /// Like [`NetNs::run`], without waiting for `f`.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path();
        thread::spawn(move || {
            enter_netns(&path);
            f()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn enter_netns(path: &Path) {
    let file = File::open(path).unwrap();
    // SAFETY: a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {}", path.display());
}

/// Interface names inside the namespaces (each namespace has its own names).
pub const SERVER_IF: &str = "veth-srv";
pub const CLIENT_IF: &str = "veth-cli";

/// Two namespaces joined by a veth pair: the server side (where XDP and the
/// listeners run) and the client side with two IPv4 and two IPv6 sources.
pub struct Topology {
    pub server: NetNs,
    pub client: NetNs,
}

pub const SERVER_V4: &str = "10.77.0.1";
pub const CLIENT_V4: &str = "10.77.0.2";
pub const CLIENT2_V4: &str = "10.77.0.3";
pub const SERVER_V6: &str = "fd77::1";
pub const CLIENT_V6: &str = "fd77::2";
pub const CLIENT2_V6: &str = "fd77::3";

impl Topology {
    pub fn new() -> Self {
        Self::with_queues(1)
    }

    /// With `queues` RX/TX queues per veth end, so traffic from different
    /// CPUs can land on different receive queues, as RSS spreads a NIC's.
    pub fn with_queues(queues: u32) -> Self {
        let server = NetNs::new("gws");
        let client = NetNs::new("gwc");
        let queues = queues.to_string();
        let end = |name: &str, ns: &str| {
            let mut args = vec![name, "netns", ns];
            args.extend(["numtxqueues", &queues, "numrxqueues", &queues]);
            args.iter().map(|a| a.to_string()).collect::<Vec<_>>()
        };
        let mut args: Vec<String> = vec!["link".into(), "add".into()];
        args.extend(end(SERVER_IF, &server.name));
        args.extend(["type".into(), "veth".into(), "peer".into(), "name".into()]);
        args.extend(end(CLIENT_IF, &client.name));
        sh("ip", &args.iter().map(String::as_str).collect::<Vec<_>>());
        server.ip(&["addr", "add", &format!("{SERVER_V4}/24"), "dev", SERVER_IF]);
        server.ip(&[
            "addr",
            "add",
            &format!("{SERVER_V6}/64"),
            "dev",
            SERVER_IF,
            "nodad",
        ]);
        for addr in [CLIENT_V4, CLIENT2_V4] {
            client.ip(&["addr", "add", &format!("{addr}/24"), "dev", CLIENT_IF]);
        }
        for addr in [CLIENT_V6, CLIENT2_V6] {
            client.ip(&[
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                CLIENT_IF,
                "nodad",
            ]);
        }
        server.ip(&["link", "set", SERVER_IF, "up"]);
        client.ip(&["link", "set", CLIENT_IF, "up"]);
        Self { server, client }
    }

    /// Sends hand-built frames from the client side of the veth.
    pub fn send_frames(&self, frames: Vec<Vec<u8>>) {
        self.client
            .run(move || packet::send_frames(CLIENT_IF, &frames))
            .unwrap();
    }

    /// A TCP connect from `source` (an address on the client side).
    pub fn connects(&self, source: &str, dest: &str, port: u16, timeout: Duration) -> bool {
        let source: IpAddr = source.parse().unwrap();
        let dest = SocketAddr::new(dest.parse().unwrap(), port);
        self.client.run(move || connect_from(source, dest, timeout))
    }

    /// `attempts` simultaneous connects from `source`; how many succeeded.
    pub fn parallel_connects(
        &self,
        source: &str,
        dest: &str,
        port: u16,
        attempts: usize,
        timeout: Duration,
    ) -> usize {
        let source: IpAddr = source.parse().unwrap();
        let dest = SocketAddr::new(dest.parse().unwrap(), port);
        let handles: Vec<_> = (0..attempts)
            .map(|_| {
                self.client
                    .spawn(move || connect_from(source, dest, timeout))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count()
    }
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

fn connect_from(source: IpAddr, dest: SocketAddr, timeout: Duration) -> bool {
    let domain = socket2::Domain::for_address(dest);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect_timeout(&dest.into(), timeout).is_ok()
}

/// Accepts (and closes) connections on `[::]:port` in a namespace until dropped.
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Listener {
    pub fn start(ns: &NetNs, port: u16) -> Self {
        let listener: TcpListener = ns
            .run(move || TcpListener::bind(SocketAddr::new("::".parse().unwrap(), port)).unwrap());
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => drop(stream),
                    #[allow(clippy::disallowed_methods, reason = "plain thread, not async")]
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

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

/// A config with a listener on port 0 and a throwaway key store in `dir`,
/// so a test gateway touches nothing in the repository or on fixed ports.
pub fn minimal_config(dir: &http::TempDir) -> PathBuf {
    let config = dir.path.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[admin]\naddress = \"127.0.0.1:0\"\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[keys]\nstore = \"{}\"\nrefresh = \"100ms\"\n",
            dir.path.join("state").display(),
            dir.path.join("keys.db").display()
        ),
    )
    .unwrap();
    config
}

/// A running `gateway run` inside the server namespace, with its own pin
/// root. Dropping it stops the gateway (SIGTERM, then SIGKILL) and removes
/// any pins it left.
pub struct Gateway {
    child: Option<Child>,
    pub pin_root: PathBuf,
    pub ready_line: String,
    /// The admin listener, inside the server namespace.
    pub admin: Option<SocketAddr>,
    pub config: PathBuf,
    _dir: http::TempDir,
}

impl Gateway {
    /// Starts the gateway on the server veth, protecting `ports`, with
    /// `extra` arguments; waits for its "ready:" line.
    pub fn start(topology: &Topology, ports: &str, extra: &[&str]) -> Self {
        let pin_root = PathBuf::from("/sys/fs/bpf").join(unique("gwtest"));
        Self::start_with_root(topology, ports, extra, pin_root)
    }

    pub fn start_with_root(
        topology: &Topology,
        ports: &str,
        extra: &[&str],
        pin_root: PathBuf,
    ) -> Self {
        Self::start_with_config(topology, ports, extra, pin_root, "")
    }

    /// Like [`Gateway::start`], with `body` (listeners, upstreams, routes,
    /// tiers, ...) appended to the minimal config.
    pub fn start_proxy(topology: &Topology, ports: &str, extra: &[&str], body: &str) -> Self {
        let pin_root = PathBuf::from("/sys/fs/bpf").join(unique("gwtest"));
        Self::start_with_config(topology, ports, extra, pin_root, body)
    }

    /// Like [`Gateway::start_proxy`] with the kernel path off (`--no-xdp`):
    /// bans are enforced in userspace only.
    pub fn start_proxy_without_xdp(topology: &Topology, body: &str) -> Self {
        let pin_root = PathBuf::from("/sys/fs/bpf").join(unique("gwtest"));
        Self::start_with_config(topology, "", &["--no-xdp"], pin_root, body)
    }

    fn start_with_config(
        topology: &Topology,
        ports: &str,
        extra: &[&str],
        pin_root: PathBuf,
        body: &str,
    ) -> Self {
        ensure_bpffs();
        let dir = http::TempDir::new("xdp");
        let config = minimal_config(&dir);
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(body);
        std::fs::write(&config, text).unwrap();
        let netns = File::open(topology.server.path()).unwrap();
        let mut command = Command::new(gateway_bin());
        command.arg("run");
        if !extra.contains(&"--no-xdp") {
            command
                .args(["--interface", SERVER_IF, "--ports", ports, "--require-xdp"])
                .arg("--pin-root")
                .arg(&pin_root);
        }
        command
            .arg("--config")
            .arg(&config)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let fd = netns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut gateway = Self {
            child: Some(child),
            pin_root,
            ready_line: String::new(),
            admin: None,
            config: config.clone(),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("ready:") => {
                    gateway.ready_line = line;
                    return gateway;
                }
                Ok(line) if line.starts_with("admin: http://") => {
                    gateway.admin = line["admin: http://".len()..].parse().ok();
                }
                Ok(_) => {}
                Err(_) => panic!("gateway did not report ready within 30 s (see its stderr above)"),
            }
        }
    }

    /// Runs `gateway xdp <args> --pin-root <root>` and returns stdout.
    pub fn xdp(&self, args: &[&str]) -> String {
        let output = Command::new(gateway_bin())
            .arg("xdp")
            .args(args)
            .arg("--pin-root")
            .arg(&self.pin_root)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "gateway xdp {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// A new client of `tier` in this gateway's store; returns its key. The
    /// running gateway picks it up within `keys.refresh` (100 ms).
    pub fn create_key(&self, tier: &str) -> String {
        let output = Command::new(gateway_bin())
            .args([
                "keys", "create", "--name", "t", "--tier", tier, "--json", "--config",
            ])
            .arg(&self.config)
            .output()
            .unwrap();
        assert!(output.status.success(), "keys create: {output:?}");
        let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        value["api_key"].as_str().unwrap().to_owned()
    }

    /// The gateway process, e.g. to pin it to a CPU.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Counter totals by name, read from the pinned per-CPU map.
    pub fn counter(&self, name: &str) -> u64 {
        let status: serde_json::Value =
            serde_json::from_str(&self.xdp(&["status", "--json"])).unwrap();
        status["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name} in {status}"))
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.xdp(&["status", "--json"])).unwrap()
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
            #[allow(clippy::disallowed_methods, reason = "plain thread, not async")]
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        if self.pin_root.exists() {
            if let Ok(entries) = std::fs::read_dir(&self.pin_root) {
                for entry in entries.flatten() {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            let _ = std::fs::remove_dir(&self.pin_root);
        }
    }
}

/// How many XDP programs are attached to `interface` in `ns` (native or skb).
pub fn attached_xdp_programs(ns: &NetNs, interface: &str) -> usize {
    let output = sh(
        "ip",
        &["-n", &ns.name, "-d", "link", "show", "dev", interface],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter(|line| line.trim_start().starts_with("prog/xdp"))
        .count()
}
