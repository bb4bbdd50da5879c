//! Kernel state across restarts: a clean stop leaves the program attached
//! with its maps (bans keep being enforced while no gateway runs), the next
//! gateway on the same pin root adopts them and swaps its program into the
//! pinned link; `--detach-on-exit` and `gateway xdp detach` remove it all.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use gateway_tests::{
    fs::TempDir,
    gateway::{gateway_bin, minimal_config, Gateway, GatewayBuilder},
    netns::{
        attached_xdp_program_ids, Listener, Topology, CLIENT2_V4, CLIENT_V4, SERVER_IF, SERVER_V4,
    },
    require_root,
};

const PROTECTED: u16 = 8080;
const OK: Duration = Duration::from_secs(3);
const DROPPED: Duration = Duration::from_millis(400);
const LINK_PIN: &str = "gateway_xdp_link";

/// A gateway in the server namespace with XDP protecting 8080.
fn protecting(topology: &Topology, body: &str, extra: &[&str]) -> GatewayBuilder {
    Gateway::builder(body)
        .in_namespace(&topology.server)
        .xdp(&PROTECTED.to_string())
        .args(extra)
}

/// The kernel id of the map pinned at `root/name`.
fn map_id(root: &Path, name: &str) -> u64 {
    let output = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(root.join(name))
        .output()
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    value["id"].as_u64().unwrap()
}

/// How long `source`'s ban has left, per `gateway xdp bans --json`.
fn ban_left_ms(gateway: &Gateway, source: &str) -> u64 {
    let bans: serde_json::Value = serde_json::from_str(&gateway.xdp(&["bans", "--json"])).unwrap();
    let ban = bans
        .as_array()
        .unwrap()
        .iter()
        .find(|ban| ban["source"] == source)
        .unwrap_or_else(|| panic!("{source} not banned: {bans}"));
    ban["expires_in_ms"].as_u64().unwrap()
}

fn budget_syn_rate(gateway: &Gateway, source: &str) -> Option<u64> {
    let budgets: serde_json::Value =
        serde_json::from_str(&gateway.xdp(&["budgets", "--json"])).unwrap();
    budgets
        .as_array()
        .unwrap()
        .iter()
        .find(|budget| budget["source"] == source)
        .and_then(|budget| budget["syn_per_sec"].as_u64())
}

/// Sets the flag when dropped, so a failing assertion stops the watcher.
struct Done<'a>(&'a AtomicBool);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Looks at the server interface until `done` (at most 60 s, 5000 looks):
/// returns how many looks were made and those that did not see exactly one
/// program attached.
fn watch_attached(topology: &Topology, done: &AtomicBool) -> (usize, Vec<Vec<u32>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut looks = 0;
    let mut odd = Vec::new();
    while !done.load(Ordering::Relaxed) && Instant::now() < deadline && looks < 5000 {
        let ids = attached_xdp_program_ids(&topology.server, SERVER_IF);
        looks += 1;
        if ids.len() != 1 {
            odd.push(ids);
        }
    }
    (looks, odd)
}

#[test]
fn a_clean_restart_keeps_bans_budgets_and_the_attached_program() {
    if !require_root("a_clean_restart_keeps_bans_budgets_and_the_attached_program") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let mut first = protecting(&topology, "", &[]).start();
    first.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    first.xdp(&["budget", CLIENT2_V4, "--syn-rate", "7", "--syn-burst", "9"]);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    assert!(topology.connects(CLIENT2_V4, SERVER_V4, PROTECTED, OK));
    let before = attached_xdp_program_ids(&topology.server, SERVER_IF);
    assert_eq!(before.len(), 1, "{before:?}");
    let bans_map = map_id(&first.pin_root, "GW_BANS");
    let left_before = ban_left_ms(&first, CLIENT_V4);
    let link_before = first.status()["link_id"].as_u64().unwrap();

    let done = AtomicBool::new(false);
    let (second, (looks, odd), dropped_while_stopped) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch_attached(&topology, &done));
        let done_guard = Done(&done);
        assert!(first.stop(), "SIGTERM: a clean exit");
        assert!(
            first.pin_root.join(LINK_PIN).exists(),
            "a clean stop keeps the link pinned"
        );
        let status = first.status();
        assert_eq!(status["owner_pid"], 0, "{status}");
        assert_eq!(status["attached"], true, "{status}");
        assert_eq!(status["kernel_only"], true, "{status}");
        // No gateway runs: the kernel alone drops the banned source.
        let dropped = first.counter("dropped_banned");
        assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
        let dropped_while_stopped = first.counter("dropped_banned");
        assert!(dropped_while_stopped > dropped);
        assert!(topology.connects(CLIENT2_V4, SERVER_V4, PROTECTED, OK));

        let second = protecting(&topology, "", &[])
            .pin_root(first.pin_root.clone())
            .start();
        drop(done_guard);
        (second, watcher.join().unwrap(), dropped_while_stopped)
    });
    assert!(looks > 0);
    assert!(
        odd.is_empty(),
        "exactly one program attached in each of {looks} looks: {odd:?}"
    );
    let after = attached_xdp_program_ids(&topology.server, SERVER_IF);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "the program was replaced");
    assert_eq!(
        second.status()["link_id"].as_u64(),
        Some(link_before),
        "in the same link"
    );

    // The maps were adopted as they are, counters included.
    assert_eq!(map_id(&second.pin_root, "GW_BANS"), bans_map);
    let left_after = ban_left_ms(&second, CLIENT_V4);
    assert!(
        left_after > 0 && left_after < left_before,
        "the ban keeps its deadline: {left_after} ms left, {left_before} ms before"
    );
    assert_eq!(budget_syn_rate(&second, CLIENT2_V4), Some(7));
    assert!(second.counter("dropped_banned") >= dropped_while_stopped);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    assert!(topology.connects(CLIENT2_V4, SERVER_V4, PROTECTED, OK));
    let status = second.status();
    assert_eq!(status["owner_running"], true, "{status}");
    assert_eq!(status["kernel_only"], false, "{status}");
}

#[test]
fn detach_on_exit_removes_the_program_and_its_pins() {
    if !require_root("detach_on_exit_removes_the_program_and_its_pins") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let mut gateway = protecting(&topology, "", &["--detach-on-exit"]).start();
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    assert!(gateway.stop(), "SIGTERM: a clean exit");
    assert_all_removed(&topology, &gateway);
}

#[test]
fn xdp_detach_removes_a_stopped_gateways_program_but_not_a_running_ones() {
    if !require_root("xdp_detach_removes_a_stopped_gateways_program_but_not_a_running_ones") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let mut gateway = protecting(&topology, "", &[]).start();
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    let root = gateway.pin_root.to_str().unwrap().to_owned();
    let refused = gateway.cli(&["xdp", "detach", "--pin-root", &root], &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("still runs"), "{stderr}");
    assert_eq!(
        attached_xdp_program_ids(&topology.server, SERVER_IF).len(),
        1
    );

    assert!(gateway.stop(), "SIGTERM: a clean exit");
    assert_eq!(
        attached_xdp_program_ids(&topology.server, SERVER_IF).len(),
        1
    );
    let out = gateway.xdp(&["detach"]);
    assert!(out.contains("detached XDP"), "{out}");
    assert_all_removed(&topology, &gateway);
}

/// Nothing is left: no pins, no program on the interface, and the banned
/// client connects again.
fn assert_all_removed(topology: &Topology, gateway: &Gateway) {
    assert!(!gateway.pin_root.exists(), "pins and pin root removed");
    assert_eq!(
        attached_xdp_program_ids(&topology.server, SERVER_IF),
        Vec::<u32>::new()
    );
    assert!(topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, OK));
}

#[test]
fn a_restart_on_another_interface_moves_the_program_and_keeps_the_bans() {
    if !require_root("a_restart_on_another_interface_moves_the_program_and_keeps_the_bans") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let mut first = protecting(&topology, "", &[]).start();
    first.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    assert!(first.stop(), "SIGTERM: a clean exit");

    let second = protecting(&topology, "", &[])
        .interface("lo")
        .pin_root(first.pin_root.clone())
        .start();
    assert_eq!(
        attached_xdp_program_ids(&topology.server, SERVER_IF),
        Vec::<u32>::new(),
        "detached from the old interface"
    );
    assert_eq!(attached_xdp_program_ids(&topology.server, "lo").len(), 1);
    assert!(ban_left_ms(&second, CLIENT_V4) > 0);
    // The veth is not guarded any more.
    assert!(topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, OK));
}

#[test]
fn a_restart_with_a_resized_map_carries_its_entries_into_a_new_one() {
    if !require_root("a_restart_with_a_resized_map_carries_its_entries_into_a_new_one") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let mut first = protecting(&topology, "[xdp]\nmax_bans = 1000\n", &[]).start();
    first.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    first.xdp(&["budget", CLIENT2_V4, "--syn-rate", "7"]);
    let bans_map = map_id(&first.pin_root, "GW_BANS");
    let budgets_map = map_id(&first.pin_root, "GW_BUDGETS");
    let left_before = ban_left_ms(&first, CLIENT_V4);
    assert!(first.stop(), "SIGTERM: a clean exit");

    // The default max_bans: GW_BANS no longer fits and is recreated.
    let second = protecting(&topology, "", &[])
        .pin_root(first.pin_root.clone())
        .start();
    assert_ne!(map_id(&second.pin_root, "GW_BANS"), bans_map);
    assert_eq!(map_id(&second.pin_root, "GW_BUDGETS"), budgets_map);
    let left_after = ban_left_ms(&second, CLIENT_V4);
    assert!(left_after > 0 && left_after < left_before);
    assert_eq!(budget_syn_rate(&second, CLIENT2_V4), Some(7));
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    assert_eq!(
        attached_xdp_program_ids(&topology.server, SERVER_IF).len(),
        1
    );
}

#[test]
fn a_second_gateway_on_a_pin_root_in_use_is_refused() {
    if !require_root("a_second_gateway_on_a_pin_root_in_use_is_refused") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let gateway = protecting(&topology, "", &[]).start();
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    let before = attached_xdp_program_ids(&topology.server, SERVER_IF);
    // Refused before it looks for the interface, so it may run here.
    let dir = TempDir::new("second");
    let second = Command::new(gateway_bin())
        .args([
            "run",
            "--interface",
            SERVER_IF,
            "--require-xdp",
            "--pin-root",
        ])
        .arg(&gateway.pin_root)
        .arg("--config")
        .arg(minimal_config(&dir))
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("belongs to a running gateway"), "{stderr}");
    assert_eq!(
        attached_xdp_program_ids(&topology.server, SERVER_IF),
        before
    );
    assert!(ban_left_ms(&gateway, CLIENT_V4) > 0);
    assert_eq!(gateway.status()["owner_running"], true);
}

#[test]
fn xdp_detach_force_detaches_a_running_gateways_program() {
    if !require_root("xdp_detach_force_detaches_a_running_gateways_program") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let mut gateway = protecting(&topology, "", &[]).start();
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    let out = gateway.xdp(&["detach", "--force"]);
    assert!(out.contains("detached XDP"), "{out}");
    assert!(!gateway.pin_root.exists(), "pins and pin root removed");
    assert_eq!(
        attached_xdp_program_ids(&topology.server, SERVER_IF),
        Vec::<u32>::new(),
        "detached although the gateway holds its link open"
    );
    assert!(topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, OK));
    assert!(gateway.stop(), "the gateway still stops cleanly");
    assert!(!gateway.pin_root.exists(), "and pins nothing again");
}

#[test]
fn a_gateway_is_refused_a_pin_root_another_one_is_still_starting_on() {
    if !require_root("a_gateway_is_refused_a_pin_root_another_one_is_still_starting_on") {
        return;
    }
    // A gateway in the middle of its start has not written its pid yet:
    // what it holds is the pin root's lock, taken here the same way.
    let root = std::path::PathBuf::from(format!("/sys/fs/bpf/gwtest-lock-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let held = std::fs::File::open(&root).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    let rc = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&held),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(rc, 0);
    let dir = TempDir::new("starting");
    // No such interface: were it not refused, it could attach nowhere.
    let second = Command::new(gateway_bin())
        .args([
            "run",
            "--interface",
            "gwnone0",
            "--require-xdp",
            "--pin-root",
        ])
        .arg(&root)
        .arg("--config")
        .arg(minimal_config(&dir))
        .output()
        .unwrap();
    let pins: Result<Vec<_>, _> =
        std::fs::read_dir(&root).map(|dir| dir.flatten().map(|entry| entry.file_name()).collect());
    let detach = Command::new(gateway_bin())
        .args(["xdp", "detach", "--pin-root"])
        .arg(&root)
        .output()
        .unwrap();
    drop(held);
    let _ = std::fs::remove_dir(&root);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(stderr.contains("held by another gateway"), "{stderr}");
    assert!(
        pins.is_ok_and(|pins| pins.is_empty()),
        "the refused gateway left the pin root as it found it"
    );
    let stderr = String::from_utf8_lossy(&detach.stderr);
    assert!(!detach.status.success(), "detach during a start");
    assert!(stderr.contains("held by another gateway"), "{stderr}");
}

#[test]
fn an_overlapping_restart_hands_the_kernel_path_over_and_the_ban_holds_throughout() {
    if !require_root(
        "an_overlapping_restart_hands_the_kernel_path_over_and_the_ban_holds_throughout",
    ) {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let mut gateway = protecting(&topology, "", &[]).capture_stderr().start();
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    let before = attached_xdp_program_ids(&topology.server, SERVER_IF);
    assert_eq!(before.len(), 1, "{before:?}");
    let bans_map = map_id(&gateway.pin_root, "GW_BANS");
    let link_before = gateway.status()["link_id"].as_u64().unwrap();
    let left_before = ban_left_ms(&gateway, CLIENT_V4);

    let done = AtomicBool::new(false);
    let (mut old, (looks, odd)) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch_attached(&topology, &done));
        let done_guard = Done(&done);
        // The new gateway starts while the old one runs: it is handed the
        // pin root (not refused, not userspace-only) and swaps its program in.
        let old = gateway.start_successor();
        assert!(
            gateway.ready_line.starts_with("ready: XDP attached"),
            "{}",
            gateway.ready_line
        );
        // Logged just after the ready line (stderr is read on another
        // thread): wait for it, bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gateway
            .stderr_text()
            .contains("handed off the XDP pin root")
        {
            assert!(Instant::now() < deadline, "{}", gateway.stderr_text());
            gateway_tests::http::pause(Duration::from_millis(20));
        }
        let status = gateway.status();
        assert_eq!(status["owner_pid"], gateway.pid().unwrap(), "{status}");
        assert_eq!(status["owner_running"], true, "{status}");
        // Both run: the kernel drops the banned source.
        assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
        assert!(topology.connects(CLIENT2_V4, SERVER_V4, PROTECTED, OK));
        drop(done_guard);
        (old, watcher.join().unwrap())
    });
    assert!(looks > 0);
    assert!(
        odd.is_empty(),
        "exactly one program attached in each of {looks} looks: {odd:?}"
    );
    let status =
        gateway_tests::gateway::signal_and_wait(&mut old, libc::SIGTERM, Duration::from_secs(20))
            .expect("the old gateway exits");
    assert!(status.success(), "the old gateway exited with {status}");

    // The old one's exit left the new one's kernel path alone.
    let after = attached_xdp_program_ids(&topology.server, SERVER_IF);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "the program was replaced");
    let status = gateway.status();
    assert_eq!(
        status["link_id"].as_u64(),
        Some(link_before),
        "in the same link"
    );
    assert_eq!(status["owner_pid"], gateway.pid().unwrap(), "{status}");
    assert_eq!(status["kernel_only"], false, "{status}");
    assert_eq!(map_id(&gateway.pin_root, "GW_BANS"), bans_map);
    let left_after = ban_left_ms(&gateway, CLIENT_V4);
    assert!(
        left_after > 0 && left_after <= left_before,
        "the ban keeps its deadline: {left_after} ms left, {left_before} ms before"
    );
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    assert!(topology.connects(CLIENT2_V4, SERVER_V4, PROTECTED, OK));
}
