//! The spoofed half of `bench flood`: SYNs carrying the legit client's own
//! source address (rotating ports) flood the gateway's port while the
//! client opens a new connection per request (`Connection: close`), with
//! `--syn-cookies xdp`, `kernel` and `off`. Without cookies the flood
//! spends the client's SYN budget and its connects are dropped; with them
//! the flood's SYNs are answered with SYN cookies (by XDP itself, or by
//! the kernel) and only the client's completed handshakes are charged.
use anyhow::Result;

use super::{median, results, setup, spread, wrk, Kernel};

/// The paced flood: five times the client's SYN budget, which veth's
/// rings carry with the SYN-ACKs XDP sends back.
const RATE: u64 = 50_000;

pub(super) fn run(rounds: usize, seconds: u32) -> Result<()> {
    let modes = [
        setup("xdp", Kernel::Spoofed { cookies: "xdp" })?,
        setup("kernel", Kernel::Spoofed { cookies: "kernel" })?,
        setup("off", Kernel::Spoofed { cookies: "off" })?,
    ];
    println!(
        "spoofed SYN flood: the legit client's own address (gold budget: 10,000 SYN/s), rotating \
         source ports, at {RATE} pps and as fast as the flood CPU sends; the client opens a \
         connection per request; {rounds} interleaved rounds"
    );
    let mut table = String::from(
        "## Spoofed SYN flood (`cargo xtask bench flood`)\n\n\
         The flood carries the legit client's own address; the client opens a connection per request.\n\n\
         | SYN cookies | flood | legit conn/s alone | under flood | ratio | flood pps |\n|---|---|---|---|---|---|\n",
    );
    for (rate, label) in [(RATE, "50k pps"), (0, "max")] {
        let mut quiet = [Vec::new(), Vec::new(), Vec::new()];
        let mut flooded = [Vec::new(), Vec::new(), Vec::new()];
        let mut flood_pps = [Vec::new(), Vec::new(), Vec::new()];
        for _ in 0..rounds {
            for (index, mode) in modes.iter().enumerate() {
                quiet[index].push(wrk(mode, seconds)?.rps);
                let (under, pps) = mode
                    .flood
                    .during(&mode.topology.client, rate, || wrk(mode, seconds))?;
                flooded[index].push(under?.rps);
                flood_pps[index].push(pps);
            }
        }
        for (index, mode) in modes.iter().enumerate() {
            let (alone, under) = (median(&mut quiet[index]), median(&mut flooded[index]));
            let pps = median(&mut flood_pps[index]);
            let ratio = under / alone.max(1.0);
            println!(
                "{:<7} {label:<8} legit {alone:>8.0} conn/s alone, {under:>8.0} under a {pps:.0} pps spoofed flood: \
                 {ratio:.2}x  (spread {} / {})",
                mode.name,
                spread(&quiet[index]),
                spread(&flooded[index]),
            );
            table.push_str(&format!(
                "| {} | {label} | {alone:.0} | {under:.0} | {ratio:.2}x | {pps:.0} |\n",
                mode.name
            ));
        }
    }
    table.push_str("\nKernel counters over the whole run:\n\n");
    for mode in &modes {
        let counters = format!(
            "dropped_conn_budget {}, syn_cookies_sent {} (by XDP {}), syn_cookies_valid {}",
            mode.gateway.counter("dropped_conn_budget"),
            mode.gateway.counter("syn_cookies_sent"),
            mode.gateway.counter("syn_cookies_xdp"),
            mode.gateway.counter("syn_cookies_valid"),
        );
        println!("{:<7} {counters}", mode.name);
        table.push_str(&format!("- {}: {counters}\n", mode.name));
    }
    println!(
        "note: with `xdp` the SYN-ACKs leave from XDP on the flood's CPU; with `kernel` the flood's \
         SYNs reach the TCP stack on the server CPU (RPS); with `off` XDP drops them, along with \
         the client's."
    );
    results::record("flood-spoofed", &table)
}
