//! Benchmark baseline: an XDP program that drops every packet and does
//! nothing else. `cargo xtask bench xdp` reports the gateway program's cost
//! as a ratio against this one. Not embedded in the gateway.
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn bench_drop_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}
