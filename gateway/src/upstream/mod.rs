//! Upstream pools: server choice (round-robin or least connections),
//! passive ejection of servers that refuse connections, and active health
//! checks that take failing servers out and bring them back; and each
//! pool's load, which sheds tiers when it is overloaded ([`overload`]).
//! Shared by every worker, so a pool's state is the same for all of them.
pub mod overload;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use self::overload::Load;
use crate::{
    clock::monotonic_ns,
    config::{Balance, HealthCheckConfig, UpstreamConfig},
};

/// How long a server that refused a connection is skipped.
const EJECTION: Duration = Duration::from_secs(10);

pub struct Server {
    pub addr: SocketAddr,
    in_flight: AtomicUsize,
    ejected_until_ns: AtomicU64,
    /// Cleared by active health checks after `unhealthy_threshold` failures.
    healthy: AtomicBool,
}

impl Server {
    fn usable(&self, now_ns: u64) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && self.ejected_until_ns.load(Ordering::Relaxed) <= now_ns
    }
}

pub struct Pool {
    pub name: String,
    servers: Vec<Server>,
    balance: Balance,
    next: AtomicUsize,
    health_check: Option<HealthCheckConfig>,
    /// In-flight requests, latency and errors: what load shedding reads.
    pub load: Load,
    /// Its configuration as written (`Debug`), which a reload compares.
    configured: String,
    /// Whether its checks run ([`Pool::start_checks`]).
    checks_started: AtomicBool,
}

/// A chosen server; counts as in flight until dropped.
pub struct Lease<'a> {
    pub server: &'a Server,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.server.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lease<'_> {
    /// The server refused or reset the connection: skip it for a while.
    pub fn eject(&self) {
        let until = monotonic_ns() + EJECTION.as_nanos() as u64;
        self.server.ejected_until_ns.store(until, Ordering::Relaxed);
        tracing::warn!(server = %self.server.addr, "upstream server ejected for {EJECTION:?} after a connect failure");
    }
}

impl Pool {
    pub fn new(config: &UpstreamConfig) -> Self {
        Self {
            name: config.name.clone(),
            servers: config
                .servers
                .iter()
                .map(|&addr| Server {
                    addr,
                    in_flight: AtomicUsize::new(0),
                    ejected_until_ns: AtomicU64::new(0),
                    healthy: AtomicBool::new(true),
                })
                .collect(),
            balance: config.balance,
            next: AtomicUsize::new(0),
            health_check: config.health_check.clone(),
            load: Load::new(config.overload.clone()),
            configured: format!("{config:?}"),
            checks_started: AtomicBool::new(false),
        }
    }

    /// Servers usable now, of all the pool's servers.
    pub fn usable(&self, now_ns: u64) -> (usize, usize) {
        let usable = self.servers.iter().filter(|s| s.usable(now_ns)).count();
        (usable, self.servers.len())
    }

    /// Whether `config` is what this pool was built from.
    pub fn configured_as(&self, config: &UpstreamConfig) -> bool {
        self.configured == format!("{config:?}")
    }

    /// True once: whether the caller should start this pool's checks.
    pub fn start_checks(&self) -> bool {
        !self.checks_started.swap(true, Ordering::Relaxed)
    }

    /// Judges the latency and error signals each interval, if configured;
    /// until the pool is dropped (a reload removed or replaced it).
    pub fn spawn_overload_checks(self: &Arc<Self>, tiers: usize) {
        if !self.load.judges_rates() {
            return;
        }
        let weak = Arc::downgrade(self);
        let interval = self.load.interval();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            loop {
                ticker.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.load.evaluate(tiers);
            }
        });
    }

    /// Probes every server each interval; runs until the runtime stops or
    /// the pool is dropped (a reload removed or replaced it).
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let Some(check) = self.health_check.clone() else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let client: Client<HttpConnector, Empty<Bytes>> =
                Client::builder(TokioExecutor::new()).build(HttpConnector::new());
            let servers = weak.upgrade().map_or(0, |pool| pool.servers.len());
            let mut failures = vec![0u32; servers];
            let mut successes = vec![0u32; servers];
            let mut ticker = tokio::time::interval(check.interval);
            loop {
                ticker.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                for (index, server) in pool.servers.iter().enumerate() {
                    let ok = probe(&client, server.addr, &check).await;
                    let (hits, misses) = if ok {
                        (&mut successes[index], &mut failures[index])
                    } else {
                        (&mut failures[index], &mut successes[index])
                    };
                    *hits = hits.saturating_add(1);
                    *misses = 0;
                    let healthy = server.healthy.load(Ordering::Relaxed);
                    if healthy && !ok && failures[index] >= check.unhealthy_threshold {
                        server.healthy.store(false, Ordering::Relaxed);
                        tracing::warn!(pool = %pool.name, server = %server.addr, "health check failing: server taken out");
                    } else if !healthy && ok && successes[index] >= check.healthy_threshold {
                        server.healthy.store(true, Ordering::Relaxed);
                        tracing::info!(pool = %pool.name, server = %server.addr, "health check passing: server back in");
                    }
                }
            }
        });
    }

    /// A server that is not ejected at `now` (`monotonic_ns`), or `None`
    /// when all are.
    pub fn pick(&self, now: u64) -> Option<Lease<'_>> {
        let healthy = |s: &&Server| s.usable(now);
        let server = match self.balance {
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                let n = self.servers.len();
                (0..n)
                    .map(|i| &self.servers[(start + i) % n])
                    .find(|s| healthy(s))
            }
            Balance::LeastConnections => self
                .servers
                .iter()
                .filter(healthy)
                .min_by_key(|s| s.in_flight.load(Ordering::Relaxed)),
        }?;
        server.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Lease { server })
    }
}

async fn probe(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    check: &HealthCheckConfig,
) -> bool {
    let Ok(uri) = format!("http://{addr}{}", check.path).parse::<http::Uri>() else {
        return false;
    };
    matches!(
        tokio::time::timeout(check.timeout, client.get(uri)).await,
        Ok(Ok(response)) if response.status().is_success() || response.status().is_redirection()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(balance: Balance) -> Pool {
        Pool::new(&UpstreamConfig {
            name: "p".into(),
            servers: vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
            balance,
            health_check: None,
            overload: Default::default(),
        })
    }

    #[test]
    fn round_robin_alternates_and_skips_ejected() {
        let pool = pool(Balance::RoundRobin);
        let a = pool.pick(monotonic_ns()).unwrap().server.addr;
        let b = pool.pick(monotonic_ns()).unwrap().server.addr;
        assert_ne!(a, b);
        pool.pick(monotonic_ns()).unwrap().eject();
        let left: Vec<_> = (0..4)
            .map(|_| pool.pick(monotonic_ns()).unwrap().server.addr)
            .collect();
        assert!(left.windows(2).all(|w| w[0] == w[1]));
        pool.pick(monotonic_ns()).unwrap().eject();
        assert!(pool.pick(monotonic_ns()).is_none());
    }

    #[test]
    fn least_connections_prefers_the_idle_server() {
        let pool = pool(Balance::LeastConnections);
        let busy = pool.pick(monotonic_ns()).unwrap();
        let other = pool.pick(monotonic_ns()).unwrap();
        assert_ne!(busy.server.addr, other.server.addr);
        drop(other);
        assert_ne!(
            pool.pick(monotonic_ns()).unwrap().server.addr,
            busy.server.addr
        );
    }
}
