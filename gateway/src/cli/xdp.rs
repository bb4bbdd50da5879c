//! `gateway xdp ...`: a running gateway's kernel path, read and changed
//! through its pinned maps (no admin API needed, so it works when the
//! gateway does not answer).
use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Args, Subcommand};
use gateway::{
    clock::monotonic_ns,
    xdp::{Mode, PinnedMaps, DEFAULT_BUDGET, DEFAULT_PIN_ROOT},
};
use gateway_common::{attach_mode, ban_reason, syn_cookies, Budget};

#[derive(Args)]
pub struct PinArgs {
    /// Where the program's maps are pinned (on bpffs; mounted if absent).
    #[arg(long, default_value = DEFAULT_PIN_ROOT)]
    pin_root: PathBuf,
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

pub fn xdp_command(command: XdpCommand) -> Result<()> {
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

/// The `xdp.syn_cookies` spelling of the kernel's value.
fn syn_cookies_name(code: u32) -> &'static str {
    match code {
        syn_cookies::KERNEL => "kernel",
        syn_cookies::XDP => "xdp",
        _ => "off",
    }
}
