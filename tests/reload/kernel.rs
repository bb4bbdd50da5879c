//! A refused reload leaves the kernel's maps byte for byte as they were:
//! refused by validation before anything is written (an allow-list longer
//! than its trie), or refused by the kernel midway (then what was written
//! is put back).
use gateway_tests::{
    gateway::{Gateway, GatewayBuilder},
    require_root, Topology,
};

use super::support::{hangup, policy_maps, ConfigFile};

/// The running file: two allowed networks, enforce.
const BEFORE: &str = "[xdp]\nallow = [\"10.1.0.0/16\", \"fd00:1::/64\"]\n";

fn xdp_gateway(topology: &Topology) -> GatewayBuilder {
    Gateway::builder(BEFORE)
        .in_namespace(&topology.server)
        .xdp("8080")
        .capture_stderr()
}

#[test]
fn an_allow_list_longer_than_its_trie_is_refused_like_check_config_and_writes_nothing() {
    if !require_root(
        "an_allow_list_longer_than_its_trie_is_refused_like_check_config_and_writes_nothing",
    ) {
        return;
    }
    let topology = Topology::new();
    let gateway = xdp_gateway(&topology).start();
    let file = ConfigFile::of(&gateway, BEFORE);
    let before = policy_maps(&gateway.pin_root);

    // 1,025 networks (the trie holds 1,024), and a mode change with them.
    let nets: Vec<String> = (0..1025)
        .map(|i| format!("\"10.{}.{}.0/24\"", 100 + i / 256, i % 256))
        .collect();
    file.write(&format!(
        "[xdp]\nmode = \"monitor\"\nallow = [{}]\n",
        nets.join(", ")
    ));
    let refused = hangup(&gateway);
    assert_eq!(policy_maps(&gateway.pin_root), before, "{refused}");
    let message = "xdp.allow: lists 1025 networks; the kernel's allow-list holds at most 1024";
    assert!(
        refused.contains("reload refused") && refused.contains(message),
        "{refused}"
    );
    assert_eq!(gateway.status()["mode"], "enforce");
    // check-config says the same.
    let check = gateway.cli(&["check-config", gateway.config.to_str().unwrap()], &[]);
    assert!(!check.status.success());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(stderr.contains(message), "{stderr}");
}

#[test]
fn a_reload_the_kernel_refuses_midway_puts_the_maps_back_as_they_were() {
    if !require_root("a_reload_the_kernel_refuses_midway_puts_the_maps_back_as_they_were") {
        return;
    }
    let topology = Topology::new();
    let gateway = xdp_gateway(&topology).start();
    let file = ConfigFile::of(&gateway, BEFORE);
    // The config map refuses every update from now on: the reload's
    // last write fails after its allow-list was written.
    let config_pin = gateway.pin_root.join("GW_CONFIG");
    let frozen = std::process::Command::new("bpftool")
        .args(["map", "freeze", "pinned"])
        .arg(&config_pin)
        .output()
        .unwrap();
    assert!(frozen.status.success(), "{frozen:?}");
    let before = policy_maps(&gateway.pin_root);

    file.write("[xdp]\nmode = \"monitor\"\nallow = [\"10.2.0.0/16\", \"10.3.0.0/16\"]\n");
    let refused = hangup(&gateway);
    assert_eq!(policy_maps(&gateway.pin_root), before, "{refused}");
    assert!(
        refused.contains("reload refused")
            && refused.contains("GW_CONFIG")
            && refused.contains("put back as they were"),
        "{refused}"
    );
    // The running configuration serves on: a reload back to it writes nothing.
    file.write(BEFORE);
    let outcome = hangup(&gateway);
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
}
