//! An XDP program that passes every packet and has no maps, so `ip link set
//! ... xdpdrv obj` (libbpf) can load it. Tests and `bench flood` attach it
//! to the client end of a veth pair: a veth runs NAPI, and so receives the
//! frames the gateway's program sends back with `XDP_TX`, only while an XDP
//! program is attached to it. Not embedded in the gateway.
#![no_std]
#![no_main]

#[path = "../runtime.rs"]
mod runtime;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn pass_all(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
