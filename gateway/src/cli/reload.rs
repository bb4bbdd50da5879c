//! `gateway reload`: asks the running gateway (its admin API) to re-read
//! its configuration file, like SIGHUP, and prints what changed, or why
//! the file was refused (then exits non-zero; nothing changed).
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use gateway::admin_client::{self, AdminClientError};
use http::{Method, StatusCode};

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

/// Tries of a reload a draining gateway answers 503: during a restart's
/// overlap the old one may still hold the connection; a new one reaches
/// the gateway that took over.
const ATTEMPTS: u32 = 5;
const RETRY_AFTER: Duration = Duration::from_millis(200);

pub fn reload(args: ReloadArgs) -> Result<()> {
    let report = block_on(async {
        let mut attempt = 1;
        loop {
            let answer =
                admin_client::call(&args.admin_url, Method::POST, "/v1/reload", None).await;
            match answer {
                Err(AdminClientError::Refused {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message,
                }) if attempt < ATTEMPTS => {
                    eprintln!("{message}; retrying");
                    tokio::time::sleep(RETRY_AFTER).await;
                    attempt += 1;
                }
                answer => return answer,
            }
        }
    })??;
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
