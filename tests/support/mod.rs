//! Support for end-to-end tests: the real `gateway` binary run by one
//! harness ([`gateway::Gateway`]), on loopback or inside network namespaces
//! joined by veth ([`netns`], RAII: removed even when a test fails), fake
//! upstreams and a small HTTP client ([`http`]), hand-built frames
//! ([`packet`]), temp dirs ([`fs`]), commands ([`cmd`]) and throwaway
//! Redis ([`redis`]) and PostgreSQL ([`postgres`]) servers.
//!
//! Addresses live only on loopback or inside the namespaces a test
//! creates; listeners bind port 0. Every name carries the test process id
//! and a counter, so tests run in parallel.
#![allow(
    clippy::unwrap_used,
    reason = "test support: a panic is the failure report"
)]

pub mod bpf;
pub mod cmd;
pub mod fs;
pub mod gateway;
pub mod http;
pub mod netns;
pub mod openapi;
pub mod packet;
pub mod postgres;
pub mod redis;

use std::{
    io::Write,
    sync::atomic::{AtomicU32, Ordering},
};

// The flat paths xtask's benches (and older tests) import.
pub use cmd::{openssl, sh};
pub use gateway::{gateway_bin, minimal_config, Gateway};
pub use netns::{
    attached_xdp_programs, Listener, NetNs, Topology, CLIENT2_V4, CLIENT2_V6, CLIENT_IF, CLIENT_V4,
    CLIENT_V6, SERVER_IF, SERVER_V4, SERVER_V6,
};

/// Set by `.ci/run`: a privileged test that would skip fails instead.
pub const REQUIRE_PRIVILEGED: &str = "GATEWAY_TEST_REQUIRE_PRIVILEGED";

/// `true` if the test may go on. Without root it skips, or panics when
/// [`REQUIRE_PRIVILEGED`] is set (CI must never skip these).
///
/// A skip still reports `ok` to libtest, so it is made visible: one line
/// `SKIPPED <binary>::<test> (...)` written straight to the process's
/// stderr, which libtest's output capture (of `print!`/`eprint!` only)
/// does not swallow.
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let name = format!("{}::{test}", test_binary());
    if std::env::var_os(REQUIRE_PRIVILEGED).is_some_and(|v| !v.is_empty() && v != "0") {
        panic!("{name} needs root (XDP, network namespaces) and {REQUIRE_PRIVILEGED} is set");
    }
    let line = format!(
        "SKIPPED {name} (needs root for XDP and network namespaces: run as root, \
         e.g. `sudo cargo xtask test`; {REQUIRE_PRIVILEGED}=1 makes this a failure)\n"
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    false
}

/// The test executable's name without cargo's hash: `xdp` for `xdp-1a2b..`.
fn test_binary() -> String {
    let exe = std::env::current_exe().ok();
    let stem = exe
        .as_deref()
        .and_then(|p| p.file_stem())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.rsplit_once('-') {
        Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
        _ => stem,
    }
}

/// `prefix`, this process's id and a counter: unique among parallel tests.
pub(crate) fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
