//! Open-loop load at a constant rate, for latency (wrk is closed-loop: a
//! slow answer delays the next request and hides itself). Request `i` is
//! due at `start + i / rate` whatever the answers do; connection `c` of `N`
//! keep-alive HTTP/1.1 connections sends requests `c, c + N, ...`, each at
//! its due time (see `timer`), or at once if the connection is still busy
//! with an earlier one. Latency runs from the due time, not the send time,
//! so waiting behind a slow answer counts (no coordinated omission). Bounded
//! by count (`rate * duration`) and by time (the duration plus `GRACE`).
//! It runs as a child process (`xtask bench open-loop`) so that it can be a
//! release build and be pinned like wrk; `run` is the parent's side.
use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{ensure, Context, Result};
use http_body_util::{BodyExt as _, Empty};
use hyper::{body::Bytes, client::conn::http1::SendRequest, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::timer::{now_ns, Timer, NS};
use crate::bench::{
    procs::{output_within, CpuPlan},
    stats,
};

/// How long answers are waited for after the last request is due.
const GRACE: Duration = Duration::from_secs(2);
/// The latency quantiles reported, in this order.
pub(super) const QUANTILES: [f64; 3] = [0.5, 0.99, 0.999];

/// The generator's command line: `xtask bench open-loop` (hidden), which
/// `bench proxy` runs from a release build pinned to the load CPUs (hyper
/// and tokio in a debug build could not keep up with the rates).
#[derive(clap::Args)]
pub(crate) struct Args {
    #[arg(long)]
    pub(crate) port: u16,
    /// Requests per second, across all connections.
    #[arg(long)]
    pub(crate) rate: f64,
    #[arg(long)]
    pub(crate) seconds: f64,
    #[arg(long, default_value_t = 32)]
    pub(crate) connections: usize,
    /// A file of API keys, one a line, rotated through one per request.
    #[arg(long)]
    pub(crate) keys: PathBuf,
}

/// What one run of the generator reports.
pub(super) struct Summary {
    pub(super) scheduled: u64,
    /// Answers other than 2xx.
    pub(super) refused: u64,
    /// Transport errors, or no answer by the deadline.
    pub(super) lost: u64,
    /// Microseconds, one per `QUANTILES` entry.
    pub(super) percentiles_us: [f64; 3],
}

/// Runs the generator (`exe`, a release xtask) on the load CPUs.
pub(super) fn run(cpus: &CpuPlan, exe: &str, args: &Args) -> Result<Summary> {
    let mut command = cpus.load_command(exe);
    command
        .args(["bench", "open-loop", "--port", &args.port.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--seconds", &args.seconds.to_string()])
        .args(["--connections", &args.connections.to_string()])
        .arg("--keys")
        .arg(&args.keys);
    let limit = Duration::from_secs_f64(args.seconds) + GRACE + Duration::from_secs(10);
    let text = output_within(command, limit)?;
    let value: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("the open-loop generator printed {text:?}"))?;
    let count = |name: &str| value[name].as_u64().unwrap_or(0);
    let scheduled = count("scheduled");
    Ok(Summary {
        scheduled,
        refused: count("refused"),
        lost: scheduled.saturating_sub(count("answered") + count("refused")),
        percentiles_us: [0, 1, 2].map(|i| value["percentiles_us"][i].as_f64().unwrap_or(f64::NAN)),
    })
}

/// The generator itself: prints one JSON line of counts and percentiles.
pub(crate) fn main(args: Args) -> Result<()> {
    let keys: Arc<[String]> = std::fs::read_to_string(&args.keys)
        .with_context(|| format!("reading {}", args.keys.display()))?
        .lines()
        .map(str::to_owned)
        .collect();
    ensure!(!keys.is_empty(), "no keys in {}", args.keys.display());
    ensure!(
        args.rate > 0.0 && args.seconds > 0.0,
        "rate and seconds must be positive"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let duration = Duration::from_secs_f64(args.seconds);
    let bound = duration + GRACE + Duration::from_secs(5);
    let outcome = runtime
        .block_on(async { tokio::time::timeout(bound, drive(&args, keys, duration)).await })
        .context("the open-loop run overran its time bound")??;
    println!(
        "{}",
        serde_json::json!({
            "scheduled": outcome.scheduled,
            "answered": outcome.latencies.len(),
            "refused": outcome.refused,
            "failed": outcome.failed,
            "percentiles_us": QUANTILES.map(|q| outcome.percentile_us(q)),
        })
    );
    Ok(())
}

#[derive(Default)]
struct Outcome {
    scheduled: u64,
    /// Nanoseconds from due time to the end of the answer, sorted.
    latencies: Vec<u64>,
    refused: u64,
    failed: u64,
}

impl Outcome {
    /// The `q` quantile (0..1) of the latencies, in microseconds.
    fn percentile_us(&self, q: f64) -> f64 {
        stats::rank(self.latencies.len(), q).map_or(f64::NAN, |i| self.latencies[i] as f64 / 1e3)
    }

    fn merge(&mut self, other: Outcome) {
        self.latencies.extend(other.latencies);
        self.refused += other.refused;
        self.failed += other.failed;
    }
}

/// When connection `first` of `step` sends its requests.
#[derive(Clone, Copy)]
struct Schedule {
    first: u64,
    step: u64,
    total: u64,
    start_ns: u64,
    interval_ns: f64,
    deadline_ns: u64,
}

async fn drive(args: &Args, keys: Arc<[String]>, duration: Duration) -> Result<Outcome> {
    let total = (args.rate * duration.as_secs_f64()).round() as u64;
    let mut senders = Vec::with_capacity(args.connections);
    for _ in 0..args.connections.max(1) {
        senders.push(connect(args.port).await?);
    }
    let start_ns = now_ns() + NS / 50;
    let schedule = Schedule {
        first: 0,
        step: senders.len() as u64,
        total,
        start_ns,
        interval_ns: 1e9 / args.rate,
        deadline_ns: start_ns + duration.as_nanos() as u64 + GRACE.as_nanos() as u64,
    };
    let tasks: Vec<_> = senders
        .into_iter()
        .zip(0..)
        .map(|(sender, first)| {
            let schedule = Schedule { first, ..schedule };
            tokio::spawn(connection(sender, schedule, keys.clone()))
        })
        .collect();
    let mut outcome = Outcome {
        scheduled: total,
        ..Outcome::default()
    };
    for task in tasks {
        outcome.merge(task.await??);
    }
    outcome.latencies.sort_unstable();
    Ok(outcome)
}

async fn connect(port: u16) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .context("connecting timed out")??;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Runs until the sender is dropped (or the runtime ends).
    tokio::spawn(connection);
    Ok(sender)
}

/// One connection's share of the schedule.
async fn connection(
    mut sender: SendRequest<Empty<Bytes>>,
    schedule: Schedule,
    keys: Arc<[String]>,
) -> Result<Outcome> {
    let timer = Timer::new()?;
    let remaining = Duration::from_nanos(schedule.deadline_ns.saturating_sub(now_ns()));
    let deadline = tokio::time::Instant::now() + remaining;
    let mut outcome = Outcome::default();
    for i in (schedule.first..schedule.total).step_by(schedule.step as usize) {
        let due = schedule.start_ns + (i as f64 * schedule.interval_ns) as u64;
        timer.wait_until(due).await?;
        let key = &keys[i as usize % keys.len()];
        let request = Request::get("/bench")
            .header("host", "127.0.0.1")
            .header("x-api-key", key)
            .body(Empty::new())?;
        match tokio::time::timeout_at(deadline, exchange(&mut sender, request)).await {
            Err(_) => break,
            Ok(Err(_)) if sender.is_closed() => {
                outcome.failed += 1;
                break;
            }
            Ok(Err(_)) => outcome.failed += 1,
            Ok(Ok(status)) if status.is_success() => {
                outcome.latencies.push(now_ns().saturating_sub(due))
            }
            Ok(Ok(_)) => outcome.refused += 1,
        }
    }
    Ok(outcome)
}

async fn exchange(
    sender: &mut SendRequest<Empty<Bytes>>,
    request: Request<Empty<Bytes>>,
) -> Result<StatusCode> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_latencies() {
        let outcome = Outcome {
            scheduled: 1000,
            latencies: (1..=1000).map(|us| us * 1000).collect(),
            ..Outcome::default()
        };
        assert_eq!(outcome.percentile_us(0.5), 500.0);
        assert_eq!(outcome.percentile_us(0.99), 990.0);
        assert_eq!(outcome.percentile_us(0.999), 999.0);
        assert!(Outcome::default().percentile_us(0.5).is_nan());
    }
}
