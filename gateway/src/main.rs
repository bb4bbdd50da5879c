//! `gateway` command line: `run` starts the gateway; `check-config` validates
//! a configuration; `keys ...` manages API clients in the store; `limits ...`
//! and `tokens ...` act on a running gateway's limits and signing keys;
//! `xdp ...` inspects and changes the kernel path of a running gateway
//! through its pinned maps. This file only wires [`cli`] up.
use anyhow::Result;
use clap::Parser;

mod cli;

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
