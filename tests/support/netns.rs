//! Network namespaces joined by veth, for the privileged tests: RAII guards
//! ([`NetNs`], [`Topology`], [`Listener`]) that remove what they made on
//! drop, even when a test fails, and connects from chosen sources.
use std::{
    fs::File,
    net::{IpAddr, SocketAddr, TcpListener},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use crate::{cmd::sh, packet, unique};

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

    /// The server veth's MAC: frames sent to it are taken by the server's
    /// IP stack as for this host (TCP ignores broadcast-addressed ones).
    pub fn server_mac(&self) -> [u8; 6] {
        let output = sh(
            "ip",
            &["-n", &self.server.name, "-j", "link", "show", SERVER_IF],
        );
        let links: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let text = links[0]["address"].as_str().unwrap().to_owned();
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(text.split(':')) {
            *byte = u8::from_str_radix(part, 16).unwrap();
        }
        mac
    }

    /// One of the server namespace's IP stack counters: `Ip:ReasmReqds`,
    /// `Tcp:InCsumErrors` (from `/proc/net/snmp`), `TcpExt:SyncookiesSent`
    /// (from `/proc/net/netstat`) or `Ip6ReasmReqds` (from
    /// `/proc/net/snmp6`): what reached the stack behind XDP.
    pub fn server_stat(&self, name: &str) -> u64 {
        let name = name.to_owned();
        self.server.run(move || {
            // thread-self: this thread's namespace, not the process's.
            for file in ["snmp", "netstat"] {
                let path = format!("/proc/thread-self/net/{file}");
                let snmp = std::fs::read_to_string(path).unwrap();
                let lines: Vec<&str> = snmp.lines().collect();
                for pair in lines.chunks(2) {
                    let [names, values] = pair else { continue };
                    let (prefix, names) = names.split_once(' ').unwrap_or_default();
                    let values = values.split_whitespace().skip(1);
                    for (key, value) in names.split_whitespace().zip(values) {
                        if format!("{prefix}{key}") == name {
                            return value.parse().unwrap();
                        }
                    }
                }
            }
            let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap();
            snmp6
                .lines()
                .filter_map(|line| line.split_once(char::is_whitespace))
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.trim().parse().unwrap())
                .unwrap_or_else(|| panic!("no stack counter {name}"))
        })
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

/// The ids of the XDP programs attached to `interface` in `ns`.
pub fn attached_xdp_program_ids(ns: &NetNs, interface: &str) -> Vec<u32> {
    let output = sh(
        "ip",
        &["-n", &ns.name, "-d", "link", "show", "dev", interface],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|line| line.trim_start().strip_prefix("prog/xdp id "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}
