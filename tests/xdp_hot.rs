//! The XDP program's per-CPU hot-source cache (`gateway-ebpf/src/hot.rs`):
//! a source holding a token lease on a CPU is judged afresh on its very
//! next packet there once policy changes. Frames go through
//! `BPF_PROG_TEST_RUN` from a thread pinned to one CPU, so they meet the
//! lease that CPU holds; what the program decided is read back from the
//! kernel counters.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::process::Command;

use gateway_tests::{
    bpf::{PinnedMap, TestRunner},
    gateway::Gateway,
    netns::{Topology, CLIENT2_V4, CLIENT_V4, SERVER_V4},
    packet::TcpFrame,
    require_root,
};

const PROTECTED: u16 = 8080;
const PROGRAM_PIN: &str = "gateway_xdp_prog";
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// A budget far above what the test sends: leases of the largest size.
const LARGE: [&str; 8] = [
    "--syn-rate",
    "1000000000",
    "--syn-burst",
    "1000000",
    "--pkt-rate",
    "1000000000",
    "--pkt-burst",
    "1000000",
];

/// Pins the calling thread (the test's) to CPU 0, so every test run below
/// executes there and meets that CPU's cache.
fn pin_to_cpu0() {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only touch the set we own (pid 0: this thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

fn syn(src: &str) -> Vec<u8> {
    TcpFrame::syn(src.parse().unwrap(), SERVER_V4.parse().unwrap(), PROTECTED).build()
}

/// The SYN and packet tokens CPU 0's cache holds for `src` (IPv4), if any:
/// read from the program's `GW_HOT` map (not pinned; found by its id).
fn leased_on_cpu0(gateway: &Gateway, src: &str) -> Option<(u64, u64)> {
    let prog = gateway.pin_root.join(PROGRAM_PIN);
    let show = Command::new("bpftool")
        .args(["-j", "prog", "show", "pinned"])
        .arg(&prog)
        .output()
        .unwrap();
    let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let hot = show["map_ids"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|id| {
            let id = id.as_u64().unwrap().to_string();
            let map = Command::new("bpftool")
                .args(["-j", "map", "show", "id", &id])
                .output()
                .unwrap();
            let map: serde_json::Value = serde_json::from_slice(&map.stdout).unwrap();
            (map["name"] == "GW_HOT").then_some(id)
        })
        .expect("the program has a GW_HOT map");
    let dump = Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &hot])
        .output()
        .unwrap();
    let dump: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    let octets: std::net::Ipv4Addr = src.parse().unwrap();
    // The low word of the IPv4-mapped address `::ffff:a.b.c.d`.
    let [a, b, c, d] = octets.octets();
    let low = u64::from_ne_bytes([0, 0, 0xff, 0xff, a, b, c, d]);
    dump.as_array().unwrap().iter().find_map(|entry| {
        let slot = entry["formatted"]["values"]
            .as_array()?
            .iter()
            .find(|value| value["cpu"] == 0)?;
        let slot = &slot["value"];
        let live = slot["until_jiffies"].as_u64()? != 0 && slot["banned"] == 0;
        (live && slot["src"][1].as_u64()? == low).then(|| {
            (
                slot["syn_left"].as_u64().unwrap(),
                slot["pkt_left"].as_u64().unwrap(),
            )
        })
    })
}

/// The IPv4-mapped key of `src` in the source-keyed maps.
fn key(src: &str) -> [u8; 16] {
    let octets: std::net::Ipv4Addr = src.parse().unwrap();
    let mut key = [0u8; 16];
    key[10..12].copy_from_slice(&[0xff, 0xff]);
    key[12..].copy_from_slice(&octets.octets());
    key
}

/// Writes `value` under `src` in the policy map `map` and restamps
/// `GW_GENERATION`, as the gateway's policy writer does, straight through
/// the syscall: within the lease's 1-2 tick life, where the CLI (a
/// process) would let it expire first and prove nothing.
fn write_policy(gateway: &Gateway, map: &str, src: &str, value: &[u8]) {
    let map = PinnedMap::open(&gateway.pin_root.join(map)).unwrap();
    let generation = PinnedMap::open(&gateway.pin_root.join("GW_GENERATION")).unwrap();
    map.set(&key(src), value).unwrap();
    let stamp = u64::from_ne_bytes(generation.get::<8>(&0u32.to_ne_bytes()).unwrap());
    generation
        .set(&0u32.to_ne_bytes(), &(stamp + 1).to_ne_bytes())
        .unwrap();
}

/// CLOCK_MONOTONIC in ns, the clock bans are written in.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Lets the lease taken so far expire (its deadline is 1-2 ticks, at most
/// 20 ms at HZ = 100), then renews it with one SYN, which takes a new one
/// good for at least a tick: the policy write and the next SYN that follow
/// at once meet a live lease.
fn renew_lease(runner: &TestRunner, frame: &[u8]) {
    #[allow(
        clippy::disallowed_methods,
        reason = "sync test, waiting on a kernel tick"
    )]
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(run(runner, frame, 1), vec![XDP_PASS]);
}

/// Runs `frame` through the program `times` times; the verdicts.
fn run(runner: &TestRunner, frame: &[u8], times: usize) -> Vec<u32> {
    (0..times).map(|_| runner.run(frame).unwrap()).collect()
}

/// Counters by name, to compare before and after.
fn counters(gateway: &Gateway, names: &[&'static str]) -> Vec<u64> {
    names.iter().map(|name| gateway.counter(name)).collect()
}

#[test]
fn a_source_with_a_lease_is_dropped_on_its_next_packet_once_banned() {
    if !require_root("a_source_with_a_lease_is_dropped_on_its_next_packet_once_banned") {
        return;
    }
    pin_to_cpu0();
    let topology = Topology::new();
    let gateway = Gateway::builder("")
        .in_namespace(&topology.server)
        .xdp(&PROTECTED.to_string())
        .start();
    let mut budget = vec!["budget", CLIENT2_V4];
    budget.extend(LARGE);
    gateway.xdp(&budget);
    let runner = TestRunner::open(&gateway.pin_root.join(PROGRAM_PIN)).unwrap();
    let frame = syn(CLIENT2_V4);
    assert_eq!(run(&runner, &frame, 10), vec![XDP_PASS; 10]);
    let (syn_left, pkt_left) = leased_on_cpu0(&gateway, CLIENT2_V4).expect("a lease on CPU 0");
    assert!(syn_left > 0 && pkt_left > 0, "{syn_left} {pkt_left}");

    let names = ["passed", "dropped_banned"];
    let before = counters(&gateway, &names);
    // A fresh lease, then the ban (a `Ban`: until, reason, offences), then
    // the next SYN.
    renew_lease(&runner, &frame);
    let mut ban = (monotonic_ns() + 3_600_000_000_000).to_ne_bytes().to_vec();
    ban.extend([0u8; 8]);
    write_policy(&gateway, "GW_BANS", CLIENT2_V4, &ban);
    assert_eq!(run(&runner, &frame, 1), vec![XDP_DROP]);
    let after = counters(&gateway, &names);
    assert_eq!(
        (after[0] - before[0], after[1] - before[1]),
        (1, 1),
        "passed, dropped_banned"
    );
    assert_eq!(leased_on_cpu0(&gateway, CLIENT2_V4), None);
}

#[test]
fn a_source_with_a_lease_is_limited_on_its_next_packet_once_its_budget_is_lowered() {
    if !require_root(
        "a_source_with_a_lease_is_limited_on_its_next_packet_once_its_budget_is_lowered",
    ) {
        return;
    }
    pin_to_cpu0();
    let topology = Topology::new();
    let gateway = Gateway::builder("")
        .in_namespace(&topology.server)
        .xdp(&PROTECTED.to_string())
        .start();
    let mut budget = vec!["budget", CLIENT_V4];
    budget.extend(LARGE);
    gateway.xdp(&budget);
    let runner = TestRunner::open(&gateway.pin_root.join(PROGRAM_PIN)).unwrap();
    let frame = syn(CLIENT_V4);
    assert_eq!(run(&runner, &frame, 10), vec![XDP_PASS; 10]);
    let (syn_left, _) = leased_on_cpu0(&gateway, CLIENT_V4).expect("a lease on CPU 0");
    assert!(syn_left >= 5, "{syn_left} SYN tokens leased");

    // One SYN a second, no burst, packets unlimited (a `Budget`: SYN rate
    // and burst, packet rate and burst, tier): of five SYNs at once, at
    // most the first passes (the bucket may have refilled), never the
    // leased tokens. Written right after a SYN that refreshed the lease.
    let names = ["passed", "dropped_conn_budget"];
    let before = counters(&gateway, &names);
    renew_lease(&runner, &frame);
    let budget: Vec<u8> = [1u32, 1, 0, 1, 0]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
    write_policy(&gateway, "GW_BUDGETS", CLIENT_V4, &budget);
    let verdicts = run(&runner, &frame, 5);
    let after = counters(&gateway, &names);
    let (passed, limited) = (after[0] - before[0], after[1] - before[1]);
    // One of them the SYN that renewed the lease.
    assert!(
        passed <= 2 && passed + limited == 6,
        "{verdicts:?}: passed {passed}, limited {limited}"
    );
    assert_eq!(verdicts[1..], [XDP_DROP; 4]);
}
