//! The least-privilege unit, `packaging/gateway.service`, held to the real
//! binary. Its capability list is read from the unit itself (so the two
//! cannot drift), and the gateway runs as an unprivileged user (`nobody`)
//! with exactly those capabilities (ambient, inheritable and bounding set,
//! no_new_privs, via `setpriv`) in a test network namespace: XDP attaches,
//! the unprivileged process pins its maps, writes tier budgets and the
//! `tcp_syncookies` sysctl, and a ban from the CLI (same user, same
//! capabilities) drops its source in the kernel. Then each capability is
//! taken away in turn and the start fails naming it: the set is minimal.
//! Last, the same run inside the unit's file-system view (read-only `/`,
//! its pin root alone in `/sys/fs/bpf`), with `MemoryDenyWriteExecute`,
//! under strace: what it did fits the unit's system call filter, address
//! families, `PrivateDevices` and `RestrictNamespaces` (see `sandbox.rs`).
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

#[path = "systemd/sandbox.rs"]
mod sandbox;
#[path = "systemd/unit.rs"]
mod unit;

use std::{
    collections::BTreeSet,
    fs,
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use gateway_tests::{
    cmd::checked,
    gateway::{gateway_bin, Gateway},
    http::{get_from, pause, FakeUpstream},
    netns::{Topology, CLIENT2_V4, CLIENT_V4, SERVER_IF, SERVER_V4},
    require_root,
};
use unit::{PinRoot, Unit, UID};

/// A port below 1024, which only CAP_NET_BIND_SERVICE may bind; fixed, as
/// it lives only in the namespace the test creates.
const PORT: u16 = 80;
const OK: Duration = Duration::from_secs(2);
const DROPPED: Duration = Duration::from_millis(700);

/// The gateway's config body: a listener on the server veth at [`PORT`]
/// forwarding to `upstream`.
fn body(upstream: SocketAddr) -> String {
    format!(
        r#"
[[listeners]]
address = "{SERVER_V4}:{PORT}"

[[upstreams]]
name = "app"
servers = ["{upstream}"]

[[routes]]
path_prefix = "/"
upstream = "app"
"#
    )
}

#[test]
fn the_unit_verifies_and_matches_the_packaged_config() {
    let unit = Unit::packaged();
    // The capability set, stated once, the same ambient and bounding.
    assert_eq!(
        unit.capabilities(),
        [
            "CAP_BPF",
            "CAP_NET_ADMIN",
            "CAP_NET_BIND_SERVICE",
            "CAP_PERFMON"
        ]
    );
    assert_eq!(unit.values("NoNewPrivileges"), ["yes"]);
    assert!(!unit.values("User").contains(&"root".to_owned()));

    // The installed config's paths are the unit's.
    let config = unit.config_path();
    assert_eq!(config, Path::new("/etc/gateway/gateway.toml"));
    let packaged = unit::packaged_config();
    let state_dir = PathBuf::from("/var/lib").join(&unit.values("StateDirectory")[0]);
    assert_eq!(unit::toml_string(&packaged, "state_dir"), state_dir);
    assert!(Path::new(&unit::toml_string(&packaged, "store")).starts_with(&state_dir));
    let pin_root = unit::toml_string(&packaged, "pin_root")
        .display()
        .to_string();
    assert_eq!(unit.values("BindPaths"), std::slice::from_ref(&pin_root));
    assert_eq!(
        unit.values("ReadWritePaths"),
        std::slice::from_ref(&pin_root)
    );
    assert!(unit.values("ExecStartPre")[0].ends_with(&format!(" {pin_root}")));
    let check = Command::new(gateway_bin())
        .arg("check-config")
        .arg(unit::packaged_config_path())
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    unit.verify_with_systemd_analyze();
}

#[test]
fn unprivileged_user_with_the_units_capabilities_runs_the_kernel_path() {
    if !require_root("unprivileged_user_with_the_units_capabilities_runs_the_kernel_path") {
        return;
    }
    let unit = Unit::packaged();
    let caps = unit.capabilities();
    let topology = Topology::new();
    let upstream = topology.server.run(|| FakeUpstream::start(None));
    let pins = PinRoot::new();
    let builder = Gateway::builder(&body(upstream.addr))
        .in_namespace(&topology.server)
        .xdp(&PORT.to_string())
        .pin_root(pins.path.clone())
        .args(&["--syn-cookies", "kernel"])
        .wrapper(&unit::setpriv(&caps))
        .capture_stderr();
    let key = builder.create_key("gold");
    unit::give_to_user(builder.config.parent().unwrap());
    let gateway = builder.start();

    // Kernel enforcement, not the userspace fallback.
    assert!(
        gateway
            .ready_line
            .contains("XDP attached to veth-srv in native mode"),
        "{}",
        gateway.ready_line
    );
    // The process is who the unit says: not root, those capabilities, no
    // way to gain more.
    let status = fs::read_to_string(format!("/proc/{}/status", gateway.pid().unwrap())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(field("Uid:"), vec![UID.to_string(); 4], "{status}");
    assert_eq!(field("NoNewPrivs:"), ["1"]);
    let mask = unit::cap_mask(&caps);
    for name in ["CapEff:", "CapPrm:", "CapAmb:", "CapBnd:"] {
        assert_eq!(
            u64::from_str_radix(&field(name)[0], 16).unwrap(),
            mask,
            "{name} {status}"
        );
    }

    // Its pins, made by the unprivileged user.
    for pin in ["GW_BANS", "GW_BUDGETS", "GW_CONFIG", "gateway_xdp_link"] {
        let meta = fs::metadata(pins.path.join(pin)).unwrap();
        assert_eq!(meta.uid(), UID, "{pin}");
    }
    assert_eq!(gateway.status()["attached"], true);
    // xdp.syn_cookies set the namespace's sysctl with CAP_NET_ADMIN alone.
    let syncookies = topology
        .server
        .run(|| fs::read_to_string("/proc/sys/net/ipv4/tcp_syncookies").unwrap());
    assert_eq!(syncookies.trim(), "2");

    serves_and_bans(&topology, &gateway, &upstream, &key, &pins.path, &caps);

    // Killed and started again (Restart=on-failure), the same user with the
    // same capabilities adopts its pins: the ban holds, the link is reused.
    let link = gateway.status()["link_id"].clone();
    assert!(link.is_u64(), "no pinned link: {link}");
    let gateway = gateway.restart();
    assert!(
        gateway.ready_line.contains("native mode"),
        "{}",
        gateway.ready_line
    );
    assert_eq!(gateway.status()["link_id"], link);
    let bans: serde_json::Value = serde_json::from_str(&gateway.xdp(&["bans", "--json"])).unwrap();
    assert_eq!(bans[0]["source"], CLIENT_V4, "{bans}");
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PORT, DROPPED));
}

/// Through `gateway` (run as the unit would): a client is served on port
/// 80, its tier budget reaches the kernel map through the unprivileged
/// policy writer, and a ban from the CLI, run as the service user with the
/// same capabilities, reaches the kernel map and drops the source there.
fn serves_and_bans(
    topology: &Topology,
    gateway: &Gateway,
    upstream: &FakeUpstream,
    key: &str,
    pins: &Path,
    caps: &[String],
) {
    let server = SocketAddr::from((SERVER_V4.parse::<std::net::IpAddr>().unwrap(), PORT));
    let key = key.to_owned();
    let reply = topology
        .client
        .run(move || {
            get_from(
                CLIENT_V4.parse().unwrap(),
                server,
                "/hello",
                &[("x-api-key", &key)],
                OK,
            )
        })
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/hello");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gateway.xdp(&["budgets", "--json"]).contains(CLIENT_V4) {
        assert!(
            Instant::now() < deadline,
            "no kernel budget for {CLIENT_V4}"
        );
        pause(Duration::from_millis(50));
    }

    // A ban from the CLI, run as the service user with the same
    // capabilities, reaches the kernel map; the source is dropped there.
    let ban = checked(
        Command::new("setpriv")
            .args(&unit::setpriv(caps)[1..])
            .arg(gateway_bin())
            .args(["xdp", "ban", CLIENT_V4, "--for", "60s", "--pin-root"])
            .arg(pins),
    );
    assert!(String::from_utf8_lossy(&ban.stdout).contains("banned"));
    let bans: serde_json::Value = serde_json::from_str(&gateway.xdp(&["bans", "--json"])).unwrap();
    assert_eq!(bans[0]["source"], CLIENT_V4, "{bans}");
    let before = gateway.counter("dropped_banned");
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PORT, DROPPED));
    assert!(gateway.counter("dropped_banned") > before);
    assert!(topology.connects(CLIENT2_V4, SERVER_V4, PORT, OK));
}

#[test]
fn the_units_sandbox_leaves_the_kernel_path_working() {
    if !require_root("the_units_sandbox_leaves_the_kernel_path_working") {
        return;
    }
    let unit = Unit::packaged();
    let caps = unit.capabilities();
    let topology = Topology::new();
    let upstream = topology.server.run(|| FakeUpstream::start(None));
    let pins = PinRoot::new();
    let builder = Gateway::builder(&body(upstream.addr))
        .in_namespace(&topology.server)
        .xdp(&PORT.to_string())
        .pin_root(pins.path.clone())
        .args(&["--syn-cookies", "kernel"]);
    let state = builder.config.parent().unwrap().to_owned();
    let log = state.join("strace.log");
    let mut wrapper = sandbox::wrapper(&pins.path, &state, &log);
    wrapper.extend(unit.prlimit());
    wrapper.extend(unit::setpriv(&caps));
    assert_eq!(unit.values("MemoryDenyWriteExecute"), ["yes"]);
    let key = builder.create_key("gold");
    unit::give_to_user(&state);
    let mut gateway = builder.wrapper(&wrapper).deny_write_execute().start();
    assert!(
        gateway.ready_line.contains(&format!(
            "XDP attached to veth-srv in native mode, Enforce, ports [{PORT}], maps pinned at {}",
            sandbox::SERVICE_PIN_ROOT
        )),
        "{}",
        gateway.ready_line
    );
    serves_and_bans(&topology, &gateway, &upstream, &key, &pins.path, &caps);
    let admin = gateway.admin.unwrap();
    let metrics = topology
        .server
        .run(move || gateway_tests::http::request(admin, "GET", "/metrics", &[]));
    assert_eq!(metrics.status, 200);

    // Stop the traced gateway (strace's child) so the trace is complete.
    let tracer = gateway.pid().unwrap();
    let children = fs::read_to_string(format!("/proc/{tracer}/task/{tracer}/children")).unwrap();
    let traced: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
    // SAFETY: signalling a process this test started.
    unsafe { libc::kill(traced, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{traced}")).exists() && Instant::now() < deadline {
        pause(Duration::from_millis(50));
    }
    assert!(gateway.stop(), "the traced gateway did not stop cleanly");
    let trace = sandbox::Trace::parse(&fs::read_to_string(&log).unwrap(), &gateway_bin());

    let families: BTreeSet<String> = unit.values("RestrictAddressFamilies").into_iter().collect();
    let used = trace.socket_families();
    assert!(
        used.is_subset(&families),
        "sockets {used:?}, unit allows {families:?}"
    );
    let devices = trace.device_opens();
    let private = [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
    ];
    assert!(
        devices.iter().all(|d| private.contains(&d.as_str())),
        "PrivateDevices= hides {devices:?}"
    );
    // PrivateTmp=: nothing in /tmp or /var/tmp but the state dir (which
    // is /var/lib/gateway in the unit). The binary's own build tree is not
    // temporary use: a checkout under /tmp has the loader search it (cargo's
    // LD_LIBRARY_PATH); the unit runs /usr/bin/gateway.
    let built = gateway_bin();
    let built = built.parent().unwrap_or(Path::new("/"));
    let temporary: Vec<String> = trace
        .opened()
        .into_iter()
        .filter(|path| path.starts_with("/tmp/") || path.starts_with("/var/tmp/"))
        .filter(|path| !Path::new(path).starts_with(&state))
        .filter(|path| !Path::new(path).starts_with(built))
        .collect();
    assert!(temporary.is_empty(), "PrivateTmp= hides {temporary:?}");
    assert_eq!(trace.namespace_calls(), Vec::<String>::new());
    assert_eq!(unit.values("RestrictNamespaces"), ["yes"]);

    let Some(groups) = sandbox::syscall_groups() else {
        unit::skipped("SystemCallFilter= check (systemd-analyze not installed)");
        return;
    };
    let allowed = sandbox::allowed(&unit.values("SystemCallFilter"), &groups);
    // `bpf` is in @privileged, not @system-service: the unit names it.
    assert!(!sandbox::allowed(&["@system-service".to_owned()], &groups).contains("bpf"));
    assert!(trace.syscalls().contains("bpf"));
    // What the other settings refuse by system call, none of it used.
    for setting in [
        "ProtectClock",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectHostname",
        "LockPersonality",
        "RestrictRealtime",
    ] {
        assert_eq!(unit.values(setting), ["yes"], "{setting}");
    }
    let mut refused_elsewhere = sandbox::allowed(&["@clock".into(), "@module".into()], &groups);
    refused_elsewhere.extend(
        [
            "syslog",
            "sethostname",
            "setdomainname",
            "personality",
            "sched_setscheduler",
        ]
        .map(str::to_owned),
    );
    let used: Vec<String> = trace
        .syscalls()
        .intersection(&refused_elsewhere)
        .cloned()
        .collect();
    assert!(
        used.is_empty(),
        "refused by the unit's Protect*/Restrict*: {used:?}"
    );
    let refused: Vec<String> = trace.syscalls().difference(&allowed).cloned().collect();
    assert!(
        refused.is_empty(),
        "SystemCallFilter= would refuse {refused:?} (used: {:?})",
        trace.syscalls()
    );
}

/// `gateway run` with `caps`, as the unit would start it, in the server
/// namespace; it must fail to start within 30 s. Its output.
fn failed_start(topology: &Topology, caps: &[String], extra: &[&str]) -> Output {
    failed_start_in(topology, None, caps, extra)
}

/// [`failed_start`], wrapped by `view(pin root)` (a mount namespace).
fn failed_start_in(
    topology: &Topology,
    view: Option<fn(&Path) -> Vec<String>>,
    caps: &[String],
    extra: &[&str],
) -> Output {
    let dir = gateway_tests::fs::TempDir::new("systemd");
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = dir.write(
        "gateway.toml",
        &format!(
            "state_dir = \"{}\"\n[admin]\naddress = \"127.0.0.1:0\"\n[keys]\nstore = \"{}\"\n{}",
            dir.path.join("state").display(),
            dir.path.join("keys.db").display(),
            body(upstream)
        ),
    );
    unit::give_to_user(&dir.path);
    let pins = PinRoot::new();
    let mut wrapper = view.map(|view| view(&pins.path)).unwrap_or_default();
    wrapper.extend(unit::setpriv(caps));
    let mut command = Command::new(&wrapper[0]);
    command
        .args(&wrapper[1..])
        .arg(gateway_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--interface", SERVER_IF, "--ports", "80", "--require-xdp"])
        .arg("--pin-root")
        .arg(&pins.path)
        .args(extra)
        .env("NO_COLOR", "1");
    let output = unit::run_in(&topology.server, command, Duration::from_secs(30));
    assert!(!output.status.success(), "started without {caps:?}");
    output
}

#[test]
fn each_capability_of_the_unit_is_needed() {
    if !require_root("each_capability_of_the_unit_is_needed") {
        return;
    }
    let all = Unit::packaged().capabilities();
    let topology = Topology::new();
    // (the capability left out, gateway flags, what the error must say)
    let cases: &[(&str, &[&str], &str)] = &[
        ("CAP_BPF", &[], "creating the BPF maps needs CAP_BPF"),
        (
            "CAP_PERFMON",
            &[],
            "loading the XDP program needs CAP_PERFMON",
        ),
        // XDP is a network program type: BPF_PROG_LOAD itself checks.
        (
            "CAP_NET_ADMIN",
            &[],
            "loading the XDP program needs CAP_NET_ADMIN",
        ),
        (
            "CAP_NET_ADMIN",
            &["--syn-cookies", "kernel"],
            "tcp_syncookies = 2 and it could not be set",
        ),
        (
            "CAP_NET_BIND_SERVICE",
            &[],
            "port 80 needs CAP_NET_BIND_SERVICE",
        ),
    ];
    let mut missing: BTreeSet<&str> = all.iter().map(String::as_str).collect();
    for (left_out, extra, expected) in cases {
        missing.remove(left_out);
        let caps: Vec<String> = all.iter().filter(|c| c != left_out).cloned().collect();
        let output = failed_start(&topology, &caps, extra);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected) && stderr.contains(left_out),
            "without {left_out} ({extra:?}) the error should say {expected:?}: {stderr}"
        );
    }
    assert!(missing.is_empty(), "no case leaves out {missing:?}");
}

#[test]
fn a_pin_root_behind_systemds_bpffs_mount_is_named() {
    if !require_root("a_pin_root_behind_systemds_bpffs_mount_is_named") {
        return;
    }
    // /sys/fs/bpf as systemd mounts it (0700 root), without the unit's
    // TemporaryFileSystem= + BindPaths=: bpffs is there, only unreachable.
    let topology = Topology::new();
    let caps = Unit::packaged().capabilities();
    let output = failed_start_in(&topology, Some(sandbox::systemd_bpffs), &caps, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "cannot reach the pin root /sys/fs/bpf/gateway: /sys/fs/bpf is not searchable"
        ) && stderr.contains("TemporaryFileSystem=/sys/fs/bpf"),
        "{stderr}"
    );
}
