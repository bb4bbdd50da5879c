//! `gateway` command line: `run` starts the gateway; `check-config` validates
//! a configuration; `keys ...` manages API clients in the store; `xdp ...`
//! inspects and changes the kernel path of a running gateway through its
//! pinned maps.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

mod cli_keys;

/// Without `RUST_LOG`: info, but rustls only for errors (it warns on every
/// handshake whose SNI is an IP address, which clients such as wrk send).
const DEFAULT_LOG_FILTER: &str = "info,rustls=error";

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use gateway::{
    admin::Admin,
    clock::{monotonic_ns, unix_now},
    config::{Config, IssuerConfig},
    jwt::JwtVerifier,
    keys::{KeyIndex, KeyStore, SqliteStore},
    proxy::{workers, Shared},
    tokens::TokenIssuer,
    xdp::{
        self, Enforcement, KernelPath, Mode, PinnedMaps, PolicyWriter, UserspaceBans,
        DEFAULT_BUDGET, DEFAULT_PIN_ROOT,
    },
};
use gateway_common::{attach_mode, ban_reason, Budget};
use ipnet::IpNet;

#[derive(Parser)]
#[command(
    name = "gateway",
    version,
    about = "API gateway with an XDP kernel path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (today: the kernel path) until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Inspect or change the kernel path of a running gateway.
    #[command(subcommand)]
    Xdp(XdpCommand),
    /// Validate a configuration file; errors name the offending key path.
    CheckConfig { file: PathBuf },
    /// Manage API clients and keys in the store.
    #[command(subcommand)]
    Keys(cli_keys::KeysCommand),
    /// A client's rate-limit state on a running gateway (admin API; the
    /// admin key comes from GATEWAY_ADMIN_KEY).
    #[command(subcommand)]
    Limits(cli_keys::LimitsCommand),
    /// The token endpoint's signing keys.
    #[command(subcommand)]
    Tokens(cli_keys::TokensCommand),
}

#[derive(Args)]
struct RunArgs {
    /// Configuration file (TOML); without it, the embedded defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `xdp.interface`: the interface whose ingress XDP guards.
    #[arg(long)]
    interface: Option<String>,
    /// Overrides `xdp.ports` (comma separated); default: the listeners' ports.
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
    /// Overrides `xdp.pin_root`.
    #[arg(long)]
    pin_root: Option<PathBuf>,
    /// Overrides `xdp.mode`: `enforce` drops; `monitor` only counts.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Fail to start if XDP cannot be attached, instead of enforcing in userspace only.
    #[arg(long)]
    require_xdp: bool,
    /// Run without the kernel path at all.
    #[arg(long, conflicts_with = "require_xdp")]
    no_xdp: bool,
    /// Adds to `xdp.allow`: CIDRs that are never dropped (repeatable).
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<IpNet>,
    /// Overrides the default kernel budget (0 = unlimited).
    #[arg(long)]
    syn_rate: Option<u32>,
    #[arg(long)]
    syn_burst: Option<u32>,
    #[arg(long)]
    pkt_rate: Option<u32>,
    #[arg(long)]
    pkt_burst: Option<u32>,
}

impl RunArgs {
    /// Applies command-line overrides on top of the file (or defaults).
    fn apply(&self, config: &mut Config) {
        let xdp = &mut config.xdp;
        if let Some(interface) = &self.interface {
            xdp.interface = interface.clone();
        }
        if !self.ports.is_empty() {
            xdp.ports = self.ports.clone();
        }
        if let Some(pin_root) = &self.pin_root {
            xdp.pin_root = pin_root.clone();
        }
        if let Some(mode) = self.mode {
            xdp.mode = mode;
        }
        xdp.require_xdp |= self.require_xdp;
        if self.no_xdp {
            xdp.enabled = false;
        }
        xdp.allow.extend(self.allow.iter().cloned());
        for (value, target) in [
            (self.syn_rate, &mut xdp.default_syn_rate),
            (self.syn_burst, &mut xdp.default_syn_burst),
            (self.pkt_rate, &mut xdp.default_pkt_rate),
            (self.pkt_burst, &mut xdp.default_pkt_burst),
        ] {
            if let Some(value) = value {
                *target = value;
            }
        }
    }
}

#[derive(Args)]
struct PinArgs {
    /// Where the program's maps are pinned (on bpffs; mounted if absent).
    #[arg(long, default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
}

#[derive(Args, Clone, Copy)]
struct BudgetArgs {
    /// New TCP connections per second (0 = unlimited).
    #[arg(long, default_value_t = DEFAULT_BUDGET.syn_per_sec)]
    syn_rate: u32,
    /// New connections allowed back to back.
    #[arg(long, default_value_t = DEFAULT_BUDGET.syn_burst)]
    syn_burst: u32,
    /// Packets per second (0 = unlimited).
    #[arg(long, default_value_t = DEFAULT_BUDGET.pkt_per_sec)]
    pkt_rate: u32,
    /// Packets allowed back to back.
    #[arg(long, default_value_t = DEFAULT_BUDGET.pkt_burst)]
    pkt_burst: u32,
}

impl BudgetArgs {
    fn budget(self) -> Budget {
        Budget {
            syn_per_sec: self.syn_rate,
            syn_burst: self.syn_burst,
            pkt_per_sec: self.pkt_rate,
            pkt_burst: self.pkt_burst,
            tier: 0,
        }
    }
}

#[derive(Subcommand)]
enum XdpCommand {
    /// Attached interface, mode and counters by reason.
    Status {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(long)]
        json: bool,
    },
    /// Banned sources and when their bans expire.
    Bans {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(long)]
        json: bool,
    },
    /// Sources with their own kernel budget (from their clients' tier).
    Budgets {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(long)]
        json: bool,
    },
    /// Drop everything from ADDR in the kernel for a while.
    Ban {
        addr: IpAddr,
        /// How long, e.g. `60s`, `10m`, `1h`.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Lift a ban at once.
    Unban {
        addr: IpAddr,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Set the kernel budget of one source (as the gateway does from its tier).
    Budget {
        addr: IpAddr,
        #[command(flatten)]
        budget: BudgetArgs,
        #[command(flatten)]
        pins: PinArgs,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .init();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Xdp(command) => xdp_command(command),
        Command::CheckConfig { file } => {
            let config = Config::load(Some(&file))
                .with_context(|| format!("{} is not a valid configuration", file.display()))?;
            println!(
                "{}: valid ({} listeners, {} upstreams, {} routes)",
                file.display(),
                config.listeners.len(),
                config.upstreams.len(),
                config.routes.len()
            );
            Ok(())
        }
        Command::Keys(command) => cli_keys::keys_command(command),
        Command::Limits(command) => cli_keys::limits_command(command),
        Command::Tokens(command) => cli_keys::tokens_command(command),
    }
}

fn run(args: RunArgs) -> Result<()> {
    let mut config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    args.apply(&mut config);
    let settings = config.xdp_settings();
    if config.xdp.enabled && settings.ports.is_empty() {
        bail!("the kernel path needs at least one port to protect (xdp.ports or a listener)");
    }
    // The control runtime: kernel policy, key and JWKS refresh, health
    // checks. Requests are served by the worker threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let kernel = if config.xdp.enabled {
            Some(KernelPath::start(&settings).context("starting the XDP kernel path")?)
        } else {
            None
        };
        let (policy, writer) = xdp::policy::channel(4096);
        let userspace_bans = match &kernel {
            Some(kernel) => {
                spawn_writer(kernel, writer)?;
                kernel.userspace_bans()
            }
            None => {
                let bans = UserspaceBans::default();
                tokio::spawn(writer.run(bans.clone(), Duration::from_secs(1)));
                Some(bans)
            }
        };

        let store: Arc<dyn KeyStore> =
            Arc::new(SqliteStore::open(&config.keys.store).context("opening the key store")?);
        let index = Arc::new(KeyIndex::default());
        let count = index.load(store.as_ref()).context("loading API keys")?;
        tracing::info!(keys = count, store = %config.keys.store.display(), "API keys loaded");
        tokio::spawn(refresh_keys(
            store.clone(),
            index.clone(),
            config.keys.refresh,
        ));

        let workers = match config.limits.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let (listeners, first_url) = bind_listeners(&config, workers)?;

        let tiers = config.tiers.iter().map(|t| t.name.clone()).collect();
        let mut jwt =
            JwtVerifier::new(&config.issuers, tiers).context("configuring JWT issuers")?;
        let tokens = match (config.tokens.enabled, first_url) {
            (true, Some(url)) => Some(start_tokens(&config, url, &mut jwt)?),
            _ => None,
        };
        let jwt = Arc::new(jwt);
        jwt.spawn_refresh();
        if let Some(tokens) = &tokens {
            tokio::spawn(follow_token_keys(tokens.clone(), jwt.clone()));
        }
        let shared = Shared::new(&config, index, jwt, userspace_bans, policy, tokens);
        shared.spawn_health_checks();
        tokio::spawn(shared.clone().sweep_guard(Duration::from_secs(5)));
        let (stop, stopped) = tokio::sync::watch::channel(false);
        if config.admin.enabled {
            let listener = tokio::net::TcpListener::bind(config.admin.address)
                .await
                .with_context(|| format!("cannot listen on {} (admin)", config.admin.address))?;
            println!("admin: http://{}", listener.local_addr()?);
            let pin_root = kernel
                .as_ref()
                .and_then(KernelPath::pin_root)
                .map(Path::to_path_buf);
            let admin = Admin::new(&config, shared.clone(), store.clone(), pin_root).with_context(
                || format!("opening the audit log {}", config.admin.audit_log.display()),
            )?;
            let admin = Arc::new(admin);
            tokio::spawn(admin.serve(listener));
        }
        let servers = workers::spawn(&config, &shared, listeners, workers, stopped)
            .context("starting worker threads")?;
        match kernel.as_ref().map(KernelPath::enforcement) {
            Some(Enforcement::Kernel { attach }) => println!(
                "ready: XDP attached to {} in {} mode, {:?}, ports {:?}, maps pinned at {}",
                settings.interface,
                attach.name(),
                settings.mode,
                settings.ports,
                settings.pin_root.display()
            ),
            Some(Enforcement::UserspaceOnly { reason }) => {
                println!("ready: userspace-only enforcement ({reason})")
            }
            None => println!("ready: kernel path disabled (xdp.enabled = false)"),
        }
        wait_for_shutdown().await?;
        tracing::info!("shutting down: closing listeners, detaching XDP and removing pins");
        let _ = stop.send(true);
        for server in servers {
            let _ = tokio::task::spawn_blocking(move || server.join()).await;
        }
        drop(kernel);
        Ok(())
    })
}

/// Binds every listener (one socket per worker) and prints its address;
/// returns them with the first one's URL (the default token issuer).
fn bind_listeners(
    config: &Config,
    workers: usize,
) -> Result<(Vec<workers::Listener>, Option<String>)> {
    let mut listeners = Vec::new();
    let mut first_url = None;
    for listener in &config.listeners {
        let tls = match &listener.tls {
            None => None,
            Some(tls) => {
                let mut names = tls.names.clone();
                if names.is_empty() {
                    names = vec!["localhost".into(), listener.address.ip().to_string()];
                }
                Some(
                    gateway::proxy::tls::acceptor(tls, &config.state_dir, &names)
                        .with_context(|| format!("TLS for listener {}", listener.address))?,
                )
            }
        };
        let sockets = workers::bind(listener.address, workers)
            .with_context(|| format!("cannot listen on {}", listener.address))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        if let Some(first) = sockets.first() {
            let url = format!("{scheme}://{}", first.local_addr()?);
            println!("listening: {url}");
            first_url.get_or_insert(url);
        }
        listeners.push(workers::Listener { sockets, tls });
    }
    Ok((listeners, first_url))
}

/// The gateway's own token issuer, trusted by its own JWT verifier.
fn start_tokens(config: &Config, url: String, jwt: &mut JwtVerifier) -> Result<Arc<TokenIssuer>> {
    let issuer = config.tokens.issuer.clone().unwrap_or(url);
    let path = config.state_dir.join("token-keys.json");
    let tokens = TokenIssuer::open(&config.tokens, issuer.clone(), &path, unix_now())
        .context("loading the token signing keys")?;
    jwt.add_static_issuer(
        IssuerConfig::own(&issuer, &config.tokens.audience),
        tokens.verification_keys(),
    )
    .context("trusting the gateway's own tokens")?;
    tracing::info!(%issuer, "token endpoint ready");
    Ok(Arc::new(tokens))
}

/// Follows key rotations (`gateway tokens rotate-key`) and retired keys
/// ageing out of the JWKS.
async fn follow_token_keys(tokens: Arc<TokenIssuer>, jwt: Arc<JwtVerifier>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last_reload = unix_now();
    loop {
        ticker.tick().await;
        let now = unix_now();
        if !tokens.changed() && now - last_reload < 60 {
            continue;
        }
        last_reload = now;
        match tokens.reload(now) {
            Ok(keys) => jwt.set_keys(&tokens.issuer, keys),
            Err(error) => tracing::warn!(%error, "reloading the token signing keys failed"),
        }
    }
}

/// Picks up keys another process (the CLI) wrote to the store.
async fn refresh_keys(store: Arc<dyn KeyStore>, index: Arc<KeyIndex>, every: Duration) {
    let mut seen = store.version().ok();
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let version = match store.version() {
            Ok(version) => version,
            Err(error) => {
                tracing::warn!(%error, "checking the key store failed");
                continue;
            }
        };
        if seen == Some(version) {
            continue;
        }
        match index.load(store.as_ref()) {
            Ok(count) => {
                seen = Some(version);
                tracing::info!(keys = count, "API keys reloaded");
            }
            Err(error) => tracing::warn!(%error, "reloading API keys failed"),
        }
    }
}

fn spawn_writer(kernel: &KernelPath, writer: PolicyWriter) -> Result<()> {
    let sink = kernel.policy_sink()?;
    tokio::spawn(writer.run(sink, Duration::from_secs(1)));
    Ok(())
}

async fn wait_for_shutdown() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

fn xdp_command(command: XdpCommand) -> Result<()> {
    match command {
        XdpCommand::Status { pins, json } => status(&pins, json),
        XdpCommand::Bans { pins, json } => list_bans(&pins, json),
        XdpCommand::Budgets { pins, json } => {
            let mut budgets = open(&pins)?.budgets()?;
            budgets.sort_by_key(|(ip, _)| *ip);
            if json {
                let rows: Vec<_> = budgets
                    .iter()
                    .map(|(ip, b)| {
                        serde_json::json!({
                            "source": ip,
                            "tier": b.tier,
                            "syn_per_sec": b.syn_per_sec,
                            "syn_burst": b.syn_burst,
                            "pkt_per_sec": b.pkt_per_sec,
                            "pkt_burst": b.pkt_burst,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
                return Ok(());
            }
            for (ip, b) in budgets {
                println!(
                    "{ip:<40} tier {:<3} syn {}/s (burst {})  packets {}/s (burst {})",
                    b.tier, b.syn_per_sec, b.syn_burst, b.pkt_per_sec, b.pkt_burst
                );
            }
            Ok(())
        }
        XdpCommand::Ban {
            addr,
            duration,
            pins,
        } => {
            let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
            let until = monotonic_ns().saturating_add(nanos);
            let ban = open(&pins)?.ban(addr, until, ban_reason::MANUAL)?;
            println!(
                "banned {addr} for {} (offence {})",
                humantime::format_duration(duration),
                ban.offences
            );
            Ok(())
        }
        XdpCommand::Unban { addr, pins } => {
            if open(&pins)?.unban(addr)? {
                println!("unbanned {addr}");
            } else {
                println!("{addr} was not banned");
            }
            Ok(())
        }
        XdpCommand::Budget { addr, budget, pins } => {
            open(&pins)?.set_budget(addr, budget.budget())?;
            println!("budget for {addr} set");
            Ok(())
        }
    }
}

fn open(pins: &PinArgs) -> Result<PinnedMaps> {
    Ok(PinnedMaps::open(&pins.pin_root)?)
}

fn status(pins: &PinArgs, json: bool) -> Result<()> {
    let maps = open(pins)?;
    let config = maps.config()?;
    let counters = maps.counters()?;
    let now = monotonic_ns();
    let active_bans = maps
        .bans()?
        .iter()
        .filter(|(_, ban)| ban.banned_until_ns > now)
        .count();
    let interface = String::from_utf8_lossy(&config.ifname)
        .trim_end_matches('\0')
        .to_owned();
    let attach = attach_mode::name(config.attach_mode);
    let mode = Mode::from_kernel(config.mode);
    let owner_running = config.owner_pid != 0
        && std::path::Path::new(&format!("/proc/{}", config.owner_pid)).exists();
    if json {
        let counters: serde_json::Map<String, serde_json::Value> = counters
            .named()
            .map(|(name, value)| (name.to_owned(), value.into()))
            .collect();
        let value = serde_json::json!({
            "pin_root": pins.pin_root,
            "interface": interface,
            "ifindex": config.ifindex,
            "attach": attach,
            "mode": mode,
            "owner_pid": config.owner_pid,
            "owner_running": owner_running,
            "active_bans": active_bans,
            "default_budget": {
                "syn_per_sec": config.default_budget.syn_per_sec,
                "syn_burst": config.default_budget.syn_burst,
                "pkt_per_sec": config.default_budget.pkt_per_sec,
                "pkt_burst": config.default_budget.pkt_burst,
            },
            "counters": counters,
        });
        println!("{value}");
        return Ok(());
    }
    println!("pin root:   {}", pins.pin_root.display());
    println!("interface:  {interface} (ifindex {})", config.ifindex);
    println!("attach:     {attach}");
    println!("mode:       {mode:?}");
    println!(
        "owner:      pid {} ({})",
        config.owner_pid,
        if owner_running {
            "running"
        } else {
            "not running: stale pins"
        }
    );
    println!("bans:       {active_bans} active");
    println!("counters:");
    for (name, value) in counters.named() {
        println!("  {name:<32} {value}");
    }
    Ok(())
}

fn list_bans(pins: &PinArgs, json: bool) -> Result<()> {
    let maps = open(pins)?;
    let now = monotonic_ns();
    let mut bans: Vec<_> = maps
        .bans()?
        .into_iter()
        .filter(|(_, ban)| ban.banned_until_ns > now)
        .collect();
    bans.sort_by_key(|(_, ban)| ban.banned_until_ns);
    if json {
        let rows: Vec<_> = bans
            .iter()
            .map(|(ip, ban)| {
                serde_json::json!({
                    "source": ip,
                    "expires_in_ms": (ban.banned_until_ns - now) / 1_000_000,
                    "reason": ban_reason::name(ban.reason),
                    "offences": ban.offences,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if bans.is_empty() {
        println!("no active bans");
    }
    for (ip, ban) in bans {
        let left = Duration::from_secs((ban.banned_until_ns - now).div_ceil(1_000_000_000));
        println!(
            "{ip:<40} expires in {:<10} reason {:<14} offences {}",
            humantime::format_duration(left).to_string(),
            ban_reason::name(ban.reason),
            ban.offences
        );
    }
    Ok(())
}
