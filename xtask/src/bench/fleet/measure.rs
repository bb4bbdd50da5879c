//! What `bench fleet` measures, on gateways already running: a paced
//! client over a fleet's nodes (admitted, send times), the exact GCRA on
//! those times, per-request latency and Redis's command count under a
//! paced load, and key creation and revocation propagation.
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gateway_tests::{
    gateway::Gateway,
    http::{pause, request, request_with_body},
    redis::Redis,
};
use serde_json::{json, Value};

use super::NODES;
use crate::bench::{
    http1::{get, Conn},
    stats::percentile,
};

#[derive(Clone, Copy)]
pub(super) enum Limiter {
    Leased,
    PerRequest,
}

impl Limiter {
    pub(super) const ALL: [Limiter; 2] = [Limiter::Leased, Limiter::PerRequest];

    pub(super) fn name(self) -> &'static str {
        match self {
            Limiter::Leased => "leased",
            Limiter::PerRequest => "per-request",
        }
    }
}

/// How a client's requests fall on the nodes.
#[derive(Clone, Copy)]
pub(super) enum Spread {
    Even,
    /// 80% on the first node, 10% on each other.
    Skewed,
}

impl Spread {
    pub(super) fn name(self) -> &'static str {
        match self {
            Spread::Even => "evenly",
            Spread::Skewed => "80/10/10",
        }
    }

    fn node(self, i: u32) -> usize {
        match (self, i % 10) {
            (Spread::Even, _) => i as usize % NODES,
            (Spread::Skewed, 0..=7) => 0,
            (Spread::Skewed, 8) => 1,
            (Spread::Skewed, _) => 2,
        }
    }
}

pub(super) struct Run {
    pub(super) admitted: u32,
    /// When each request was sent, from the first (ns).
    pub(super) times: Vec<u64>,
}

/// `count` requests with `key`, one every `every`, on the nodes `spread`
/// picks (a keep-alive connection each). Anything but 200 or 429 fails.
pub(super) fn accuracy(
    fleet: &[Gateway],
    key: &str,
    count: u32,
    every: Duration,
    spread: Spread,
) -> Result<Run> {
    let mut conns: Vec<Conn> = fleet.iter().map(|_| None).collect();
    let start = Instant::now() + Duration::from_millis(50);
    let mut run = Run {
        admitted: 0,
        times: Vec::new(),
    };
    for i in 0..count {
        pause((start + every * i).saturating_duration_since(Instant::now()));
        let node = spread.node(i);
        run.times.push(start.elapsed().as_nanos() as u64);
        match get(&mut conns[node], fleet[node].addr.port(), key)? {
            200 => run.admitted += 1,
            429 => {}
            other => bail!("request {i} on node {node}: {other}"),
        }
    }
    Ok(run)
}

/// What one exact GCRA (cost 1) admits for requests at `times` (ns).
pub(super) fn exact_gcra(times: &[u64], interval: Duration, burst: u32) -> u32 {
    let interval = interval.as_nanos() as u64;
    let (mut tat, mut admitted) = (0u64, 0);
    for &t in times {
        let new = tat.max(t) + interval;
        if new - t <= interval * u64::from(burst) {
            tat = new;
            admitted += 1;
        }
    }
    admitted
}

/// Until every leased node counts the whole fleet and shares through
/// Redis (bounded: 15 s).
pub(super) fn wait_for_fleet(fleet: &[Gateway]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    for gateway in fleet {
        while gateway.metric("gateway_limits_fleet_nodes") != Some(NODES as u64)
            || gateway.metric("gateway_limits_backend_fallback") != Some(0)
        {
            if Instant::now() > deadline {
                bail!("the leased fleet never saw {NODES} nodes through Redis");
            }
            pause(Duration::from_millis(50));
        }
    }
    Ok(())
}

#[derive(Debug)]
pub(super) struct Load {
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) failed: usize,
    pub(super) redis_per_node: f64,
    pub(super) redis_idle_per_node: f64,
    /// The limiter's own Redis calls (`gateway_limits_redis_calls_total`).
    pub(super) calls_per_node: f64,
}

/// The fleet's limiter calls to Redis so far, all nodes.
fn limiter_calls(nodes: &[Gateway]) -> u64 {
    (nodes.iter())
        .filter_map(|n| n.metric("gateway_limits_redis_calls_total"))
        .sum()
}

/// Commands Redis has processed since it started.
fn commands(redis: &Redis) -> Result<u64> {
    let info = redis.command(&["INFO", "stats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .context("no total_commands_processed in INFO stats")
}

fn per_node_rate(redis: Option<&Redis>, before: u64, seconds: f64) -> Result<f64> {
    let Some(redis) = redis else {
        return Ok(0.0);
    };
    Ok((commands(redis)? - before) as f64 / seconds / NODES as f64)
}

/// `rate` requests a second to each target for `seconds` (one slot per
/// request: the targets in turn, the order rotated, a target's nodes in
/// turn), after an idle count of each Redis and a warm-up.
pub(super) fn latency(
    targets: &[(&[Gateway], &str, Option<&Redis>)],
    rate: u32,
    seconds: u32,
) -> Result<Vec<Load>> {
    let count = |r: Option<&Redis>| r.map_or(Ok(0), commands);
    let idle_for = Duration::from_secs(2);
    let idle: Vec<u64> = (targets.iter())
        .map(|t| count(t.2))
        .collect::<Result<_>>()?;
    pause(idle_for);
    let idle: Vec<f64> = (targets.iter().zip(idle))
        .map(|(t, before)| per_node_rate(t.2, before, idle_for.as_secs_f64()))
        .collect::<Result<_>>()?;
    let mut conns: Vec<Vec<Conn>> = (targets.iter())
        .map(|t| t.0.iter().map(|_| None).collect())
        .collect();
    let mut one = |t: usize, i: u32| -> Result<(f64, bool)> {
        let (nodes, key, _) = targets[t];
        let node = i as usize % nodes.len();
        let sent = Instant::now();
        let status = get(&mut conns[t][node], nodes[node].addr.port(), key)?;
        Ok((sent.elapsed().as_secs_f64() * 1e3, status == 200))
    };
    for i in 0..50 {
        for t in 0..targets.len() {
            one(t, i)?;
        }
    }
    let before: Vec<u64> = (targets.iter())
        .map(|t| count(t.2))
        .collect::<Result<_>>()?;
    let calls_before: Vec<u64> = targets.iter().map(|t| limiter_calls(t.0)).collect();
    let mut samples = vec![Vec::new(); targets.len()];
    let mut failed = vec![0; targets.len()];
    let period = Duration::from_secs(1) / rate;
    let start = Instant::now();
    for i in 0..rate * seconds {
        pause((start + period * i).saturating_duration_since(Instant::now()));
        for k in 0..targets.len() {
            let t = (k + i as usize) % targets.len();
            let (ms, ok) = one(t, i)?;
            samples[t].push(ms);
            failed[t] += usize::from(!ok);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut loads = Vec::new();
    for (t, mut sorted) in samples.into_iter().enumerate() {
        sorted.sort_by(f64::total_cmp);
        loads.push(Load {
            p50_ms: percentile(&sorted, 0.5),
            p99_ms: percentile(&sorted, 0.99),
            failed: failed[t],
            redis_per_node: per_node_rate(targets[t].2, before[t], elapsed)?,
            redis_idle_per_node: idle[t],
            calls_per_node: (limiter_calls(targets[t].0) - calls_before[t]) as f64
                / elapsed
                / targets[t].0.len() as f64,
        });
    }
    Ok(loads)
}

/// `gateway keys bootstrap` on `node`'s store: the admin key, once the
/// node accepts it (bounded: 10 s).
pub(super) fn bootstrap(node: &Gateway) -> Result<String> {
    let config = node.config.to_str().context("config path")?;
    let output = node.cli(&["keys", "bootstrap", "--json", "--config", config], &[]);
    if !output.status.success() {
        bail!("gateway keys bootstrap: {output:?}");
    }
    let value: Value = serde_json::from_slice(&output.stdout)?;
    let key = value["api_key"].as_str().context("no api_key")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin(node, "GET", "", &key, &Value::Null)?.0 != 200 {
        if Instant::now() > deadline {
            bail!("the node never accepted its bootstrap admin key");
        }
        pause(Duration::from_millis(5));
    }
    Ok(key)
}

fn admin(
    node: &Gateway,
    method: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> Result<(u16, Value)> {
    let bearer = format!("Bearer {key}");
    let reply = request_with_body(
        node.admin.context("no admin listener")?,
        method,
        &format!("/v1/management/api-clients{path}"),
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    );
    Ok((
        reply.status,
        serde_json::from_str(&reply.body).unwrap_or(Value::Null),
    ))
}

/// p50 and p99 (ms) of key creation and of revocation.
pub(super) struct Propagation {
    pub(super) create: (f64, f64),
    pub(super) revoke: (f64, f64),
}

/// Per round: a client made on node A, then revoked on A; from A's answer,
/// the time to the first 200 (then 401) on every other node, each polled
/// by its own thread every millisecond (bounded: 10 s).
pub(super) fn propagation(
    nodes: &[Gateway],
    admin_key: &str,
    rounds: usize,
) -> Result<Propagation> {
    let (a, others) = nodes.split_first().context("no nodes")?;
    let (mut created, mut revoked) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let body = json!({"name": format!("prop{round}"), "tier": "lat"});
        let (status, client) = admin(a, "POST", "", admin_key, &body)?;
        let answered = Instant::now();
        if status != 201 {
            bail!("creating a client on A: {status} {client}");
        }
        let key = client["api_key"].as_str().context("no api_key")?.to_owned();
        let id = client["id"].as_str().context("no id")?.to_owned();
        created.extend(first_status(others, &key, 200, answered)?);
        let (status, _) = admin(a, "DELETE", &format!("/{id}"), admin_key, &Value::Null)?;
        let answered = Instant::now();
        if status != 200 {
            bail!("revoking on A: {status}");
        }
        revoked.extend(first_status(others, &key, 401, answered)?);
    }
    let p = |samples: &mut Vec<f64>| {
        samples.sort_by(f64::total_cmp);
        (percentile(samples, 0.5), percentile(samples, 0.99))
    };
    Ok(Propagation {
        create: p(&mut created),
        revoke: p(&mut revoked),
    })
}

/// Per node, ms from `since` to its first `want` for `key`.
fn first_status(nodes: &[Gateway], key: &str, want: u16, since: Instant) -> Result<Vec<f64>> {
    std::thread::scope(|scope| {
        let polls: Vec<_> = (nodes.iter())
            .map(|node| {
                scope.spawn(move || {
                    for _ in 0..10_000 {
                        let reply = request(node.addr, "GET", "/", &[("x-api-key", key)]);
                        if reply.status == want {
                            return Some(since.elapsed().as_secs_f64() * 1e3);
                        }
                        pause(Duration::from_millis(1));
                    }
                    None
                })
            })
            .collect();
        polls
            .into_iter()
            .map(|poll| {
                poll.join()
                    .ok()
                    .flatten()
                    .with_context(|| format!("no {want} within 10,000 polls"))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_gcra_admits_the_burst_then_one_per_interval() {
        let ms = 1_000_000;
        // Burst 3, one per 100 ms: three at once, then one 100 ms later.
        let times = [0, 0, 0, 0, 50 * ms, 100 * ms, 150 * ms];
        assert_eq!(exact_gcra(&times, Duration::from_millis(100), 3), 4);
    }

    #[test]
    fn spreads_put_requests_where_they_say() {
        let on = |spread: Spread| {
            let mut nodes = [0; NODES];
            (0..100).for_each(|i| nodes[spread.node(i)] += 1);
            nodes
        };
        assert_eq!(on(Spread::Skewed), [80, 10, 10]);
        assert_eq!(on(Spread::Even), [34, 33, 33]);
    }
}
