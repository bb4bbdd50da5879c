//! `gateway top`: a live view of a running gateway through its admin API
//! (`GET /v1/top` once a second): requests/s and error rates by route and
//! tier, the busiest clients, bans, XDP packets by verdict, upstream
//! health. [`view`] turns two snapshots into rates; [`screen`] draws.
mod screen;
mod view;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use gateway::admin_client;
use http::Method;

use view::Snapshot;

/// How often the view refreshes, and the interval `--once` measures over.
const REFRESH: Duration = Duration::from_secs(1);

#[derive(Args)]
pub struct TopArgs {
    /// The running gateway's admin listener (the admin key comes from
    /// GATEWAY_ADMIN_KEY; a read-only one will do).
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    admin_url: String,
    /// Print one view (rates over one second) and exit, instead of the
    /// live screen.
    #[arg(long)]
    once: bool,
    /// With --once: print it as JSON, for scripts.
    #[arg(long, requires = "once")]
    json: bool,
}

pub fn top(args: TopArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let fetch = || -> Result<Snapshot> {
        let value = runtime.block_on(admin_client::call(
            &args.admin_url,
            Method::GET,
            "/v1/top",
            None,
        ))?;
        serde_json::from_value(value).context("reading the admin API's /v1/top answer")
    };
    if args.once {
        let first = fetch()?;
        runtime.block_on(async { tokio::time::sleep(REFRESH).await });
        let view = view::view(Some(&first), &fetch()?);
        if args.json {
            println!("{}", screen::json(&view)?);
        } else {
            for line in screen::lines(&view, &args.admin_url) {
                println!("{line}");
            }
        }
        return Ok(());
    }
    // Fails early (no key, no gateway) before the screen is taken over.
    let mut previous = fetch()?;
    let mut terminal = screen::Terminal::enter()?;
    let mut lines = screen::lines(&view::view(None, &previous), &args.admin_url);
    loop {
        terminal.draw(&lines)?;
        let next = Instant::now() + REFRESH;
        if terminal.quit_requested(next)? {
            return Ok(());
        }
        lines = match fetch() {
            Ok(current) => {
                let lines = screen::lines(&view::view(Some(&previous), &current), &args.admin_url);
                previous = current;
                lines
            }
            Err(error) => {
                let mut lines = lines;
                // The admin API's answer may quote what a client sent.
                lines.push(format!("error: {}", screen::visible(&format!("{error:#}"))));
                lines
            }
        };
    }
}
