//! The `gateway` command line: clap's view of every subcommand, each
//! implemented in its own module. Only the binary uses clap; the library
//! types it fills stay free of it.
pub mod keys;
pub mod limits;
pub mod reload;
pub mod run;
pub mod store;
pub mod takeover;
pub mod tokens;
pub mod top;
pub mod xdp;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "API gateway with an XDP kernel path"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the gateway (proxy, admin API, token endpoint and XDP kernel
    /// path) until SIGINT, SIGTERM or SIGQUIT, then drain; SIGHUP reloads
    /// its configuration file. Started while a gateway runs on the same
    /// state dir, it takes that one's listening sockets (and XDP pin root)
    /// over.
    Run(run::RunArgs),
    /// Inspect or change the kernel path of a running gateway.
    #[command(subcommand)]
    Xdp(xdp::XdpCommand),
    /// Validate a configuration file; errors name the offending key path.
    CheckConfig { file: std::path::PathBuf },
    /// Make the running gateway re-read its configuration file (like
    /// SIGHUP), through its admin API; an invalid file is refused with
    /// check-config's message and a non-zero exit, and nothing changes.
    Reload(reload::ReloadArgs),
    /// Manage API clients and keys: in the store, or through a running
    /// gateway's admin API (`--admin-url`).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// A client's rate-limit state on a running gateway (admin API; the
    /// admin key comes from GATEWAY_ADMIN_KEY).
    #[command(subcommand)]
    Limits(limits::LimitsCommand),
    /// A live view of a running gateway (admin API, refreshed every
    /// second): requests/s and error rates by route and tier, the busiest
    /// clients, bans, XDP packets by verdict, upstream health. `q` quits.
    Top(top::TopArgs),
    /// The token endpoint's signing keys.
    #[command(subcommand)]
    Tokens(tokens::TokensCommand),
    /// The shared key store (PostgreSQL): schema migrations, and copying
    /// a SQLite store into it.
    #[command(subcommand)]
    Store(store::StoreCommand),
}

impl Command {
    pub fn run(self) -> Result<()> {
        match self {
            Command::Run(args) => run::run(args),
            Command::Xdp(command) => xdp::xdp_command(command),
            Command::CheckConfig { file } => run::check_config(&file),
            Command::Reload(args) => reload::reload(args),
            Command::Keys(command) => keys::keys_command(command),
            Command::Limits(command) => limits::limits_command(command),
            Command::Tokens(command) => tokens::tokens_command(command),
            Command::Top(args) => top::top(args),
            Command::Store(command) => store::store_command(command),
        }
    }
}

/// The admin API's client collection, for commands that go through it.
const CLIENTS: &str = "/v1/management/api-clients";

/// One admin API call from a synchronous command.
fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future))
}
