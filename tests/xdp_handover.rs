//! A restart that fails: a new `gateway run` that takes the running one's
//! sockets over and then fails to start (a certificate it cannot load, an
//! XDP attach refused) leaves the running gateway with its kernel path. It
//! lent its pin root only when the new one was about to adopt it, and
//! takes it back when the new one goes away before saying it is ready: its
//! bans stay dropped by the kernel and the bans it decides afterwards are
//! written into the kernel's maps, not kept in userspace.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use gateway_tests::{
    gateway::Gateway,
    http::{get_from, pause, FakeUpstream},
    netns::{attached_xdp_program_ids, Topology, CLIENT2_V4, CLIENT_V4, SERVER_IF, SERVER_V4},
    require_root,
};

const PORT: u16 = 18080;
/// A banned source's SYNs would be retried for seconds.
const DROPPED: Duration = Duration::from_millis(700);

/// A gateway proxying on `0.0.0.0:PORT` in the server namespace, XDP on
/// its veth, banning a source after two failed key guesses.
fn start(topology: &Topology, extra: &str) -> (Gateway, FakeUpstream) {
    let upstream = topology.server.run(|| FakeUpstream::start(None));
    let body = format!(
        "{extra}\n[[listeners]]\naddress = \"0.0.0.0:{PORT}\"\n\n\
         [guard]\nauth_failures = 2\nauth_failure_window = \"60s\"\n\
         auth_failure_ban = \"60s\"\nprefix_auth_failures = 0\n\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        upstream.addr
    );
    let gateway = Gateway::builder(&body)
        .in_namespace(&topology.server)
        .xdp(&PORT.to_string())
        .capture_stderr()
        .start();
    (gateway, upstream)
}

/// Wrong keys from `source` until its connects fail (at most 100
/// guesses); how many were answered.
fn guess_until_dropped(topology: &Topology, source: &str) -> usize {
    let from = source.parse().unwrap();
    let server = SocketAddr::new(SERVER_V4.parse().unwrap(), PORT);
    for i in 0..100 {
        let key = format!("gk_guess{i:04}_x");
        let answered = topology
            .client
            .run(move || get_from(from, server, "/", &[("x-api-key", &key)], DROPPED));
        if answered.is_err() {
            return i;
        }
        // The guard's ban reaches the kernel in the policy writer's next batch.
        pause(Duration::from_millis(50));
    }
    panic!("{source} was never dropped");
}

/// Whether `source` is in the pinned ban map (`gateway xdp bans`), waiting
/// (at most 5 s) for the policy writer's next batch.
fn kernel_bans(gateway: &Gateway, source: &str) -> bool {
    for _ in 0..50 {
        let bans: serde_json::Value =
            serde_json::from_str(&gateway.xdp(&["bans", "--json"])).unwrap();
        if bans
            .as_array()
            .unwrap()
            .iter()
            .any(|ban| ban["source"] == source)
        {
            return true;
        }
        pause(Duration::from_millis(100));
    }
    false
}

/// Waits (at most 20 s) until the running gateway owns its pin root again
/// with one program attached: it takes a lent one back once the failed
/// gateway's lock is free.
fn owned_again(topology: &Topology, gateway: &Gateway) {
    let pid = u64::from(gateway.pid().unwrap());
    for _ in 0..200 {
        let status = gateway.status();
        let attached = attached_xdp_program_ids(&topology.server, SERVER_IF);
        if status["owner_pid"].as_u64() == Some(pid) && attached.len() == 1 {
            return;
        }
        pause(Duration::from_millis(100));
    }
    panic!(
        "the running gateway never owned its pin root again: {}; attached {:?}",
        gateway.status(),
        attached_xdp_program_ids(&topology.server, SERVER_IF)
    );
}

/// What every failed restart must leave: the old gateway owns the pin
/// root, the kernel still drops the banned source, and a ban the old
/// gateway's guard decides now lands in the kernel's map and is dropped
/// there.
fn still_enforced_in_the_kernel(topology: &Topology, gateway: &Gateway) {
    owned_again(topology, gateway);
    let status = gateway.status();
    assert_eq!(status["owner_running"], true, "{status}");
    assert_eq!(status["kernel_only"], false, "{status}");
    let dropped = gateway.counter("dropped_banned");
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PORT, DROPPED));
    assert!(
        gateway.counter("dropped_banned") > dropped,
        "the kernel dropped the banned source"
    );

    let answered = guess_until_dropped(topology, CLIENT2_V4);
    assert!(answered >= 2, "{answered} guesses answered before the ban");
    assert!(
        kernel_bans(gateway, CLIENT2_V4),
        "the old gateway's new ban is in the kernel's map: {}",
        gateway.xdp(&["bans", "--json"])
    );
    let dropped = gateway.counter("dropped_banned");
    assert!(!topology.connects(CLIENT2_V4, SERVER_V4, PORT, DROPPED));
    assert!(gateway.counter("dropped_banned") > dropped);
}

#[test]
fn a_new_gateway_with_a_certificate_it_cannot_load_leaves_the_old_one_its_kernel_path() {
    if !require_root(
        "a_new_gateway_with_a_certificate_it_cannot_load_leaves_the_old_one_its_kernel_path",
    ) {
        return;
    }
    let topology = Topology::new();
    let (gateway, _upstream) = start(&topology, "");
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PORT, DROPPED));

    let failed = gateway.failed_successor(
        |config| {
            config
                + "\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\n\
                   cert = \"/nonexistent/gateway.crt\"\nkey = \"/nonexistent/gateway.key\"\n"
        },
        None,
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(
        stderr.contains("took over the listening sockets"),
        "it failed after taking the sockets: {stderr}"
    );
    assert!(stderr.contains("/nonexistent/gateway.crt"), "{stderr}");

    still_enforced_in_the_kernel(&topology, &gateway);
}

#[test]
fn a_new_gateway_whose_xdp_attach_fails_leaves_the_old_one_its_kernel_path() {
    if !require_root("a_new_gateway_whose_xdp_attach_fails_leaves_the_old_one_its_kernel_path") {
        return;
    }
    let topology = Topology::new();
    let (gateway, _upstream) = start(&topology, "");
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PORT, DROPPED));
    let before = attached_xdp_program_ids(&topology.server, SERVER_IF);
    assert_eq!(before.len(), 1, "{before:?}");

    // An interface that is not there: its attach fails (`--require-xdp`),
    // after it adopted the maps and let go of the old gateway's link.
    let failed = gateway.failed_successor(|config| config, Some("gwnone0"));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{stderr}");
    assert!(
        stderr.contains("took over the listening sockets"),
        "it failed after taking the sockets: {stderr}"
    );
    assert!(stderr.contains("gwnone0"), "{stderr}");

    still_enforced_in_the_kernel(&topology, &gateway);
    assert!(
        gateway.stderr_text().contains("took the XDP pin root back"),
        "{}",
        gateway.stderr_text()
    );
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

#[test]
fn a_failed_new_gateway_that_resized_a_map_leaves_the_old_ones_map_pinned() {
    if !require_root("a_failed_new_gateway_that_resized_a_map_leaves_the_old_ones_map_pinned") {
        return;
    }
    let topology = Topology::new();
    let (gateway, _upstream) = start(&topology, "[xdp]\nmax_bans = 1000\n");
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    let bans_map = map_id(&gateway.pin_root, "GW_BANS");

    // Another size: it pins a fresh GW_BANS (the old entries carried over),
    // then its attach fails.
    let failed = gateway.failed_successor(
        |config| config.replace("max_bans = 1000", "max_bans = 2000"),
        Some("gwnone0"),
    );
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("recreating it"), "{stderr}");

    still_enforced_in_the_kernel(&topology, &gateway);
    assert_eq!(
        map_id(&gateway.pin_root, "GW_BANS"),
        bans_map,
        "the old gateway's map, which its program reads, is pinned again"
    );
}
