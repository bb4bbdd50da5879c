//! The gateway: today its kernel path (XDP program, pinned maps, CLI);
//! the proxy, authentication and limits build on it.
pub mod clock;
pub mod net;
pub mod xdp;
