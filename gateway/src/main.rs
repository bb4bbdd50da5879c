//! `gateway` command line: `run` starts the gateway; `check-config` validates
//! a configuration; `keys ...` manages API clients in the store; `limits ...`
//! and `tokens ...` act on a running gateway's limits and signing keys;
//! `xdp ...` inspects and changes the kernel path of a running gateway
//! through its pinned maps. This file only wires [`cli`] up.
use anyhow::Result;
use clap::Parser;

mod cli;

/// jemalloc: fewer instructions per request than glibc's malloc (issue 14:
/// 58,172 against 60,449 per proxied request, 32,783 against 35,100 per
/// 429, callgrind), and it gives freed memory back to the kernel, which
/// glibc's arenas keep: buffers freed by parked connections (see
/// `proxy::park`) leave the process's RSS instead of staying in it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read at its start: unused dirty pages go back to
/// the kernel after about a second (default 10 s), straight away rather
/// than through `MADV_FREE` (whose pages still count in RSS), by a
/// background thread rather than by whichever request frees next. An idle
/// keep-alive connection then costs ~2.6 KB of RSS instead of ~7.9 KB
/// (`cargo xtask bench conns`). `_RJEM_MALLOC_CONF` in the environment
/// overrides it.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Without `RUST_LOG`: info, but rustls only for errors (it warns on every
/// handshake whose SNI is an IP address, which clients such as wrk send).
const DEFAULT_LOG_FILTER: &str = "info,rustls=error";

fn main() -> Result<()> {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
    cli.command.run()
}
