//! `gateway` command line: `run` starts the gateway; `xdp ...` inspects and
//! changes the kernel path of a running gateway through its pinned maps.
use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use gateway::{
    clock::monotonic_ns,
    xdp::{
        self, Enforcement, KernelPath, MapSizes, Mode, PinnedMaps, PolicyWriter, XdpSettings,
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
}

#[derive(Args)]
struct RunArgs {
    /// Interface whose ingress the XDP program guards.
    #[arg(long, default_value = "lo")]
    interface: String,
    /// Protected destination ports (comma separated); other traffic passes untouched.
    #[arg(long, value_delimiter = ',', default_values_t = [8080u16, 8443])]
    ports: Vec<u16>,
    #[command(flatten)]
    pins: PinArgs,
    /// `enforce` drops; `monitor` only counts what would be dropped.
    #[arg(long, value_enum, default_value_t = Mode::Enforce)]
    mode: Mode,
    /// Fail to start if XDP cannot be attached, instead of enforcing in userspace only.
    #[arg(long)]
    require_xdp: bool,
    /// CIDRs that are never dropped (repeatable), e.g. health checkers.
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<IpNet>,
    /// Default budget for sources without a tier budget.
    #[command(flatten)]
    budget: BudgetArgs,
    /// Most banned sources held at once.
    #[arg(long, default_value_t = gateway_common::DEFAULT_BANS_ENTRIES)]
    max_bans: u32,
    /// Most sources with kernel state (LRU: the oldest are evicted).
    #[arg(long, default_value_t = gateway_common::DEFAULT_STATE_ENTRIES)]
    max_sources: u32,
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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Run(args) => run(args),
        Command::Xdp(command) => xdp_command(command),
    }
}

fn run(args: RunArgs) -> Result<()> {
    if args.ports.is_empty() {
        bail!("--ports needs at least one port to protect");
    }
    let settings = XdpSettings {
        interface: args.interface,
        ports: args.ports,
        pin_root: args.pins.pin_root,
        mode: args.mode,
        require_xdp: args.require_xdp,
        allow: args.allow,
        default_budget: args.budget.budget(),
        sizes: MapSizes {
            bans: args.max_bans,
            state: args.max_sources,
            ..MapSizes::default()
        },
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let kernel = KernelPath::start(&settings).context("starting the XDP kernel path")?;
        let (_policy, writer) = xdp::policy::channel(4096);
        spawn_writer(&kernel, writer)?;
        match kernel.enforcement() {
            Enforcement::Kernel { attach } => {
                println!(
                    "ready: XDP attached to {} in {} mode, {:?}, ports {:?}, maps pinned at {}",
                    settings.interface,
                    attach.name(),
                    settings.mode,
                    settings.ports,
                    settings.pin_root.display()
                );
            }
            Enforcement::UserspaceOnly { reason } => {
                println!("ready: userspace-only enforcement ({reason})");
            }
        }
        wait_for_shutdown().await?;
        tracing::info!("shutting down: detaching XDP and removing pins");
        drop(kernel);
        Ok(())
    })
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
    let attach = match config.attach_mode {
        attach_mode::NATIVE => "native",
        attach_mode::SKB => "skb",
        _ => "none",
    };
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
    let reason = |code| match code {
        ban_reason::RATE_LIMIT => "rate_limit",
        ban_reason::AUTH_FAILURES => "auth_failures",
        _ => "manual",
    };
    if json {
        let rows: Vec<_> = bans
            .iter()
            .map(|(ip, ban)| {
                serde_json::json!({
                    "source": ip,
                    "expires_in_ms": (ban.banned_until_ns - now) / 1_000_000,
                    "reason": reason(ban.reason),
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
            reason(ban.reason),
            ban.offences
        );
    }
    Ok(())
}
