//! `gateway xdp ...`: a running gateway's kernel path, read and changed
//! through its pinned maps (no admin API needed, so it works when the
//! gateway does not answer); only `events` asks the gateway (see [`events`]).
mod events;

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use gateway::{
    clock::monotonic_ns,
    guard::{BanTarget, PolicyUpdate},
    net::{is_host, parse_ban_net, parse_net},
    xdp::{self, Mode, PinnedMaps, UdpPolicy, WhenFull, Written, DEFAULT_BUDGET, DEFAULT_PIN_ROOT},
};
use gateway_common::{attach_mode, ban_reason, syn_cookies, Ban, Budget, FLEET_ORIGIN};
use ipnet::IpNet;

#[derive(Args)]
pub struct PinArgs {
    /// Where the program's maps are pinned (on bpffs; mounted if absent).
    #[arg(long, default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
}

#[derive(Args, Clone)]
pub struct FleetArgs {
    /// Also tell every gateway of the fleet sharing this Redis (the
    /// `[redis] url` of their configuration), so each applies it to its own
    /// kernel.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
}

#[derive(Args, Clone, Copy)]
pub struct BudgetArgs {
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
pub enum XdpCommand {
    /// Attached interface, mode and counters by reason.
    Status {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(long)]
        json: bool,
    },
    /// Banned sources and prefixes, and when their bans expire.
    Bans {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(long)]
        json: bool,
    },
    /// Sources and prefixes with their own kernel budget (a source's from its clients' tier).
    Budgets {
        #[command(flatten)]
        pins: PinArgs,
        #[arg(long)]
        json: bool,
    },
    /// Drop everything from ADDR (an address, or a CIDR such as
    /// `2001:db8::/64`) in the kernel for a while.
    Ban {
        #[arg(value_parser = parse_ban_net)]
        addr: IpNet,
        /// How long, e.g. `60s`, `10m`, `1h`.
        #[arg(long = "for", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// If the ban map is full, fail instead of evicting the ban closest to expiry.
        #[arg(long)]
        refuse_if_full: bool,
        #[command(flatten)]
        pins: PinArgs,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Lift the ban of exactly ADDR (an address or a CIDR) at once.
    Unban {
        #[arg(value_parser = parse_net)]
        addr: IpNet,
        #[command(flatten)]
        pins: PinArgs,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Detach a stopped gateway's program and remove its pins (bans,
    /// budgets and counters go with them).
    Detach {
        /// Even while the gateway that owns the pins runs (it keeps
        /// serving, without the kernel path).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Set the kernel budget of one source (as the gateway does from its
    /// tier), or of every source in a CIDR without its own.
    Budget {
        #[arg(value_parser = parse_net)]
        addr: IpNet,
        #[command(flatten)]
        budget: BudgetArgs,
        #[command(flatten)]
        pins: PinArgs,
    },
    /// Follow the kernel's rare events live (a ban's first drop, a full
    /// map, a parse given up), through the running gateway's admin API
    /// (the admin key comes from GATEWAY_ADMIN_KEY); Ctrl-C stops.
    Events(events::EventsArgs),
}

pub fn xdp_command(command: XdpCommand) -> Result<()> {
    match command {
        XdpCommand::Status { pins, json } => status(&pins, json),
        XdpCommand::Bans { pins, json } => list_bans(&pins, json),
        XdpCommand::Budgets { pins, json } => {
            let maps = open(&pins)?;
            let mut budgets: Vec<(IpNet, Budget)> = (maps.budgets()?.into_iter())
                .map(|(ip, budget)| (IpNet::from(ip), budget))
                .chain(maps.prefix_budgets()?)
                .collect();
            budgets.sort_by_key(|(net, _)| *net);
            if json {
                let rows: Vec<_> = budgets
                    .iter()
                    .map(|(net, b)| {
                        serde_json::json!({
                            "source": show(net),
                            "tier": b.tier & !FLEET_ORIGIN,
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
            for (net, b) in budgets {
                println!(
                    "{:<43} tier {:<3} syn {}/s (burst {})  packets {}/s (burst {})",
                    show(&net),
                    b.tier & !FLEET_ORIGIN,
                    b.syn_per_sec,
                    b.syn_burst,
                    b.pkt_per_sec,
                    b.pkt_burst
                );
            }
            Ok(())
        }
        XdpCommand::Ban {
            addr,
            duration,
            refuse_if_full,
            pins,
            fleet,
        } => {
            let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
            let until = monotonic_ns().saturating_add(nanos);
            let when_full = match refuse_if_full {
                true => WhenFull::Refuse,
                false => WhenFull::Evict,
            };
            let mut maps = open(&pins)?.when_full(when_full);
            let (ban, written) = maps.ban(addr, until, ban_reason::MANUAL)?;
            match written {
                Written::Done => {}
                Written::Evicted { map, key, .. } => {
                    eprintln!(
                        "{map} was full: evicted the ban of {} (closest to expiry)",
                        show(&key)
                    )
                }
                Written::Refused { map } => bail!("{map} is full: {} not banned", show(&addr)),
            }
            println!(
                "banned {} for {} (offence {})",
                show(&addr),
                humantime::format_duration(duration),
                ban.offences
            );
            let target = match is_host(&addr) {
                true => BanTarget::Source(addr.addr()),
                false => BanTarget::SourcePrefix(addr),
            };
            let update = PolicyUpdate::Ban {
                target,
                until_ns: until,
                reason: ban_reason::MANUAL,
            };
            tell_fleet(&fleet, &update, &maps)
        }
        XdpCommand::Unban { addr, pins, fleet } => {
            let mut maps = open(&pins)?;
            if maps.unban(addr)? {
                println!("unbanned {}", show(&addr));
            } else {
                println!("{} was not banned", show(&addr));
            }
            let update = match is_host(&addr) {
                true => PolicyUpdate::Unban { ip: addr.addr() },
                false => PolicyUpdate::UnbanPrefix { net: addr },
            };
            tell_fleet(&fleet, &update, &maps)
        }
        XdpCommand::Detach { force, pins } => detach(&pins, force),
        XdpCommand::Budget { addr, budget, pins } => {
            open(&pins)?.set_budget(addr, budget.budget())?;
            println!("budget for {} set", show(&addr));
            Ok(())
        }
        XdpCommand::Events(args) => events::follow(&args),
    }
}

/// Publishes `update` to the fleet's Redis, when `--redis` is given, as
/// written to `maps` already: the gateway on these maps does not apply it
/// a second time.
fn tell_fleet(fleet: &FleetArgs, update: &PolicyUpdate, maps: &PinnedMaps) -> Result<()> {
    let Some(url) = &fleet.redis else {
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let node =
        gateway::fleet::bans::origin(&format!("cli-{}", gateway::fleet::node_id()), Some(maps));
    runtime
        .block_on(gateway::fleet::bans::publish_once(url, &node, update))
        .context("telling the fleet")?;
    println!("told the fleet ({})", gateway::fleet::redis::redacted(url));
    Ok(())
}

/// An address as itself, a prefix as a CIDR.
fn show(net: &IpNet) -> String {
    match is_host(net) {
        true => net.addr().to_string(),
        false => net.to_string(),
    }
}

/// Bans in force at `now`, soonest to expire first.
fn active_bans(maps: &PinnedMaps, now: u64) -> Result<Vec<(IpNet, Ban)>> {
    let mut bans: Vec<_> = (maps.all_bans()?.into_iter())
        .filter(|(_, ban)| ban.banned_until_ns > now)
        .collect();
    bans.sort_by_key(|(_, ban)| ban.banned_until_ns);
    Ok(bans)
}

fn open(pins: &PinArgs) -> Result<PinnedMaps> {
    Ok(PinnedMaps::open(&pins.pin_root)?)
}

fn detach(pins: &PinArgs, force: bool) -> Result<()> {
    let root = &pins.pin_root;
    if let Ok(config) = open(pins).and_then(|maps| Ok(maps.config()?)) {
        let pid = config.owner_pid;
        if pid != 0 && xdp::process_alive(pid) && !force {
            bail!(
                "the gateway owning {} still runs (pid {pid}); stop it first, or use --force",
                root.display()
            );
        }
    }
    if !root.exists() {
        println!("nothing pinned at {}", root.display());
        return Ok(());
    }
    // A gateway still starting holds the lock before it writes its pid.
    let _lock = match xdp::bpffs::lock(root) {
        Err(error @ xdp::bpffs::BpffsError::Locked { .. }) if !force => {
            bail!("{error}; or use --force")
        }
        held => held.ok(),
    };
    let detached = xdp::remove_pins(root)?;
    println!(
        "{} and removed the pins under {}",
        if detached {
            "detached XDP"
        } else {
            "no program was attached"
        },
        root.display()
    );
    Ok(())
}

fn status(pins: &PinArgs, json: bool) -> Result<()> {
    let maps = open(pins)?;
    let config = maps.config()?;
    let counters = maps.counters()?;
    let now = monotonic_ns();
    let active_bans = active_bans(&maps, now)?.len();
    let interface = String::from_utf8_lossy(&config.ifname)
        .trim_end_matches('\0')
        .to_owned();
    let attach = attach_mode::name(config.attach_mode);
    let mode = Mode::from_kernel(config.mode);
    let udp = UdpPolicy::from_kernel(config.udp);
    let owner_running = config.owner_pid != 0 && xdp::process_alive(config.owner_pid);
    let link = xdp::pinned_link(&pins.pin_root)?;
    let attached = link.is_some_and(|link| link.ifindex != 0);
    // No gateway, but the pinned link keeps the program on its interface.
    let kernel_only = attached && !owner_running;
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
            "udp": udp,
            "owner_pid": config.owner_pid,
            "owner_running": owner_running,
            "attached": attached,
            "kernel_only": kernel_only,
            "program_id": link.map(|link| link.prog_id),
            "link_id": link.map(|link| link.id),
            "active_bans": active_bans,
            "default_budget": {
                "syn_per_sec": config.default_budget.syn_per_sec,
                "syn_burst": config.default_budget.syn_burst,
                "pkt_per_sec": config.default_budget.pkt_per_sec,
                "pkt_burst": config.default_budget.pkt_burst,
            },
            "counters": counters,
            "syn_cookies": syn_cookies_name(config.syn_cookies),
            "syn_flood_rate": config.syn_flood_rate,
        });
        println!("{value}");
        return Ok(());
    }
    println!("pin root:   {}", pins.pin_root.display());
    println!("interface:  {interface} (ifindex {})", config.ifindex);
    println!("attach:     {attach}");
    println!("mode:       {mode:?}");
    println!("udp:        {udp:?} (UDP to protected ports, never metered)");
    let owner = match (config.owner_pid, owner_running) {
        (0, _) => "no gateway (stopped cleanly)".to_owned(),
        (pid, true) => format!("pid {pid} (running)"),
        (pid, false) => format!("pid {pid} (not running: it did not stop cleanly)"),
    };
    println!("owner:      {owner}");
    match link {
        Some(link) if attached => println!(
            "program:    id {} attached (link {}){}",
            link.prog_id,
            link.id,
            if kernel_only {
                "; no gateway runs: bans are enforced by the kernel alone"
            } else {
                ""
            }
        ),
        _ => println!("program:    not attached"),
    }
    println!("bans:       {active_bans} active");
    if config.syn_cookies != syn_cookies::OFF {
        println!(
            "syn cookies: {} (listener-wide past {} SYN/s; 0 = per source only)",
            syn_cookies_name(config.syn_cookies),
            config.syn_flood_rate
        );
    }
    println!("counters:");
    for (name, value) in counters.named() {
        println!("  {name:<32} {value}");
    }
    Ok(())
}

fn list_bans(pins: &PinArgs, json: bool) -> Result<()> {
    let maps = open(pins)?;
    let now = monotonic_ns();
    let bans = active_bans(&maps, now)?;
    if json {
        let rows: Vec<_> = bans
            .iter()
            .map(|(net, ban)| {
                serde_json::json!({
                    "source": show(net),
                    "prefix_len": net.prefix_len(),
                    "expires_in_ms": (ban.banned_until_ns - now) / 1_000_000,
                    "reason": ban_reason::name(ban.reason),
                    "offences": ban.offences,
                    "fleet": ban.reason & FLEET_ORIGIN != 0,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if bans.is_empty() {
        println!("no active bans");
    }
    for (net, ban) in bans {
        let left = Duration::from_secs((ban.banned_until_ns - now).div_ceil(1_000_000_000));
        println!(
            "{:<43} expires in {:<10} reason {:<17} offences {}",
            show(&net),
            humantime::format_duration(left).to_string(),
            ban_reason::name(ban.reason),
            ban.offences
        );
    }
    Ok(())
}

/// The `xdp.syn_cookies` spelling of the kernel's value.
fn syn_cookies_name(code: u32) -> &'static str {
    match code {
        syn_cookies::KERNEL => "kernel",
        syn_cookies::XDP => "xdp",
        _ => "off",
    }
}
