//! `gateway limits ...`: a client's rate-limit state lives in the running
//! gateway's memory, so these always go through its admin API.
use anyhow::Result;
use clap::{Args, Subcommand};
use gateway::admin_client;
use http::Method;

use super::{block_on, CLIENTS};

#[derive(Subcommand)]
pub enum LimitsCommand {
    /// Limit, remaining requests and time until the quota is whole.
    Show {
        client_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the client's quota whole again now.
    Reset {
        client_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args)]
pub struct AdminArgs {
    /// The running gateway's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    admin_url: String,
    #[arg(long)]
    json: bool,
}

pub fn limits_command(command: LimitsCommand) -> Result<()> {
    let (method, client_id, admin) = match command {
        LimitsCommand::Show { client_id, admin } => (Method::GET, client_id, admin),
        LimitsCommand::Reset { client_id, admin } => (Method::DELETE, client_id, admin),
    };
    let path = format!("{CLIENTS}/{client_id}/limits");
    let state = block_on(admin_client::call(&admin.admin_url, method, &path, None))??;
    // Fleet mode: a node answers for its own lease, and says so.
    let scope = match state["scope"].as_str() {
        Some("node_lease") => {
            "  (this node's lease of the fleet's shared quota; redis holds the rest)"
        }
        Some("node_fallback") => "  (this node's share: redis is unreachable)",
        _ => "",
    };
    if admin.json {
        println!("{state}");
    } else {
        println!(
            "client {}  tier {}  limit {} per {} s (burst {})  remaining {}  whole again in {:.1} s{scope}",
            state["client_id"].as_str().unwrap_or("?"),
            state["tier"].as_str().unwrap_or("?"),
            state["limit"],
            state["window_seconds"],
            state["burst"],
            state["remaining"],
            state["reset_seconds"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
