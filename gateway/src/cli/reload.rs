//! `gateway reload`: asks the running gateway (its admin API) to re-read
//! its configuration file, like SIGHUP, and prints what changed, or why
//! the file was refused (then exits non-zero; nothing changed).
use anyhow::Result;
use clap::Args;
use gateway::admin_client;
use http::Method;

use super::block_on;

#[derive(Args)]
pub struct ReloadArgs {
    /// The running gateway's admin listener (the admin key comes from
    /// GATEWAY_ADMIN_KEY).
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    admin_url: String,
    /// Print the admin API's JSON answer.
    #[arg(long)]
    json: bool,
}

pub fn reload(args: ReloadArgs) -> Result<()> {
    let report = block_on(admin_client::call(
        &args.admin_url,
        Method::POST,
        "/v1/reload",
        None,
    ))??;
    if args.json {
        println!("{report}");
        return Ok(());
    }
    let list = |key: &str| -> Vec<String> {
        (report[key].as_array().into_iter().flatten())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let changed = list("changed");
    println!(
        "reloaded {}: {}",
        report["file"].as_str().unwrap_or("?"),
        if changed.is_empty() {
            "nothing changed".to_owned()
        } else {
            format!("changed {}", changed.join(", "))
        }
    );
    for address in list("listeners_added") {
        println!("listening: {address}");
    }
    for address in list("listeners_removed") {
        println!("stopped listening: {address}");
    }
    for key in list("restart_required") {
        eprintln!("warning: {key} changed but needs a restart; the running value is kept");
    }
    Ok(())
}
