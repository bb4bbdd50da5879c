//! `gateway xdp events`: follows the kernel events of a running gateway
//! like `tail -f`. The program's ring buffer has one reader, the gateway,
//! so this goes through its admin API (`GET /v1/xdp/events`, an admin key
//! in GATEWAY_ADMIN_KEY) rather than the pinned maps.
use std::{
    io::Write,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use clap::Args;
use gateway::admin_client;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::cli::block_on;

#[derive(Args)]
pub struct EventsArgs {
    /// The running gateway's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    admin_url: String,
    /// Print each event as the API's JSON line.
    #[arg(long)]
    json: bool,
    /// How many recent events to print first (the gateway keeps the last
    /// 64); the default prints all it kept.
    #[arg(long)]
    replay: Option<usize>,
}

/// Prints events until Ctrl-C or until the gateway closes the stream.
pub fn follow(args: &EventsArgs) -> Result<()> {
    let path = match args.replay {
        Some(n) => format!("/v1/xdp/events?replay={n}"),
        None => "/v1/xdp/events".to_owned(),
    };
    block_on(async {
        let body = admin_client::stream(&args.admin_url, &path)
            .await
            .context("cannot follow the kernel events")?;
        tokio::select! {
            ended = print_lines(body, args.json) => {
                match ended {
                    Ok(()) => eprintln!("the gateway closed the event stream"),
                    Err(error) => eprintln!("the gateway closed the event stream: {error}"),
                }
            }
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })?
}

/// Prints each complete line of `body`; returns when it ends (or stdout
/// is closed, e.g. by `| head`).
async fn print_lines(mut body: Incoming, json: bool) -> Result<(), hyper::Error> {
    let mut pending = Vec::new();
    let mut stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..end]);
            let shown = if json {
                line.into_owned()
            } else {
                human(&line)
            };
            if writeln!(stdout, "{shown}").is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// `2026-01-01T00:00:00Z ban_first_drop expires_in_ms=59000 monitor=false
/// reason=manual source=10.77.0.2`; a line that is not an event object is
/// shown as it came.
fn human(line: &str) -> String {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(line) else {
        return line.to_owned();
    };
    let mut out = String::new();
    if let Some(time) = fields.remove("time").and_then(|t| t.as_u64()) {
        let at = UNIX_EPOCH + Duration::from_secs(time);
        out.push_str(&humantime::format_rfc3339_seconds(at).to_string());
        out.push(' ');
    }
    if let Some(serde_json::Value::String(event)) = fields.remove("event") {
        out.push_str(&event);
    }
    for (key, value) in fields {
        let value = match value {
            serde_json::Value::String(text) => text,
            other => other.to_string(),
        };
        out.push_str(&format!(" {key}={value}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn an_event_line_reads_as_time_kind_and_fields() {
        let line = r#"{"time":0,"event":"ban_first_drop","source":"10.77.0.2","reason":"manual","expires_in_ms":5,"monitor":false}"#;
        assert_eq!(
            human(line),
            "1970-01-01T00:00:00Z ban_first_drop expires_in_ms=5 monitor=false reason=manual \
             source=10.77.0.2"
        );
        assert_eq!(human("not json"), "not json");
    }
}
