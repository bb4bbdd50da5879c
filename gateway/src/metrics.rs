//! Prometheus metrics, served as text by the admin listener's `/metrics`.
//!
//! Request counts live per worker (see [`recorders`]), gauges and kernel
//! counters are read at scrape time. Labels are bounded by configuration: route, tier, status, reason,
//! upstream; never a client id or an address.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    sync::{atomic::Ordering, Arc, Mutex},
};

pub mod ops;
mod recorders;

use recorders::{Labels, Named, Recorders, Registry};
pub use recorders::{Outcome, Recorder};

use crate::{
    guard::GuardCounters,
    histogram::{Histogram, BUCKETS_US},
    xdp::{Counters, FullCounters},
};

/// Everything read at scrape time rather than counted per request.
pub struct Gauges<'a> {
    pub pools: Vec<PoolGauge<'a>>,
    pub guard: &'a GuardCounters,
    pub bans_active: Option<usize>,
    pub kernel: Option<Counters>,
    pub policy_dropped: u64,
    /// Bans evicted or refused because a ban map was full.
    pub bans_full: &'a FullCounters,
    pub keys: usize,
}

/// One upstream pool as a scrape sees it.
pub struct PoolGauge<'a> {
    pub name: &'a str,
    /// How many of the lowest tiers its load signal sheds now.
    pub shed_tiers: usize,
    pub latency: &'a Histogram,
}

pub struct Metrics {
    /// The names the next recorders' indices mean.
    labels: Mutex<Arc<Labels>>,
    /// Every live recorder's counts with the names they are counted
    /// under (so a reload that reorders routes or tiers keeps each
    /// count's labels), and what dropped recorders counted.
    recorders: Registry,
}

impl Metrics {
    pub fn new(routes: Vec<String>, tiers: Vec<String>) -> Self {
        Self {
            labels: Mutex::new(Arc::new(Labels { routes, tiers })),
            recorders: Registry::default(),
        }
    }

    /// The routes and tiers of a reloaded configuration, for recorders made
    /// from now on; what was counted keeps its names.
    pub fn relabel(&self, routes: Vec<String>, tiers: Vec<String>) {
        *self.labels.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(Labels { routes, tiers });
    }

    /// A recorder for one worker's gateway; its counts join the totals
    /// when it is dropped.
    pub fn recorder(&self) -> Recorder {
        let labels = self
            .labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Recorders::recorder(&self.recorders, labels)
    }

    /// How many recorders are live (one per worker gateway in use).
    pub fn recorders(&self) -> usize {
        Recorders::live(&self.recorders)
    }

    /// Requests answered so far by (route, tier, status), every worker's
    /// counts under the names they were counted with.
    pub fn requests(&self) -> BTreeMap<(String, String, u16), u64> {
        Recorders::named(&self.recorders).requests
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &Gauges<'_>) -> String {
        let Named {
            requests,
            auth_failures: auth,
            mut shed,
            mut banned,
        } = Recorders::named(&self.recorders);
        let current = self
            .labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Every tier has a rate-limited line, 0 included.
        let mut tiers: Vec<String> = (0..=current.tiers.len())
            .map(|i| current.tier(i).to_owned())
            .collect();
        let mut out = String::new();
        header(
            &mut out,
            "gateway_requests_total",
            "counter",
            "Requests answered, by route, tier and status.",
        );
        for ((route, tier, status), n) in &requests {
            if !tiers.contains(tier) {
                tiers.push(tier.clone());
            }
            let _ = writeln!(
                out,
                "gateway_requests_total{{route=\"{}\",tier=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(tier)
            );
        }
        header(
            &mut out,
            "gateway_rate_limited_total",
            "counter",
            "Requests refused with 429, by tier.",
        );
        for tier in &tiers {
            let n: u64 = requests
                .iter()
                .filter(|((_, t, status), _)| t == tier && *status == 429)
                .map(|(_, n)| n)
                .sum();
            let _ = writeln!(
                out,
                "gateway_rate_limited_total{{tier=\"{}\"}} {n}",
                escape(tier)
            );
        }
        header(
            &mut out,
            "gateway_auth_failures_total",
            "counter",
            "Requests refused for their credential, by reason.",
        );
        for (reason, n) in &auth {
            let _ = writeln!(
                out,
                "gateway_auth_failures_total{{reason=\"{reason}\"}} {n}"
            );
        }
        header(
            &mut out,
            "gateway_shed_total",
            "counter",
            "Requests refused with 503 because an upstream was overloaded, by tier.",
        );
        // Every tier at zero too, so a dashboard and an alert have a series.
        for tier in &current.tiers {
            shed.entry(tier.clone()).or_insert(0);
        }
        for (tier, n) in &shed {
            let _ = writeln!(out, "gateway_shed_total{{tier=\"{}\"}} {n}", escape(tier));
        }
        header(
            &mut out,
            "gateway_banned_requests_total",
            "counter",
            "Requests the gateway refused for a ban, by what is banned: source (without XDP), \
             forwarded_address, client_at_address.",
        );
        // Each kind at zero from the start too (the names `record` uses).
        for ban in ["source", "forwarded_address", "client_at_address"] {
            banned.entry(ban).or_insert(0);
        }
        for (ban, n) in &banned {
            let _ = writeln!(out, "gateway_banned_requests_total{{ban=\"{ban}\"}} {n}");
        }
        self.render_gauges(&mut out, gauges);
        out
    }

    fn render_gauges(&self, out: &mut String, gauges: &Gauges<'_>) {
        header(
            out,
            "gateway_shed_tiers",
            "gauge",
            "How many of the lowest tiers an upstream's latency or error signal sheds now.",
        );
        for pool in &gauges.pools {
            let _ = writeln!(
                out,
                "gateway_shed_tiers{{upstream=\"{}\"}} {}",
                escape(pool.name),
                pool.shed_tiers
            );
        }
        header(
            out,
            "gateway_upstream_latency_seconds",
            "histogram",
            "Time to the upstream's response headers.",
        );
        for pool in &gauges.pools {
            let (counts, sum_us) = pool.latency.snapshot();
            let name = escape(pool.name);
            let mut cumulative = 0;
            for (i, count) in counts.iter().enumerate() {
                cumulative += count;
                let le = BUCKETS_US
                    .get(i)
                    .map_or("+Inf".to_owned(), |us| format!("{}", *us as f64 / 1e6));
                let _ = writeln!(out, "gateway_upstream_latency_seconds_bucket{{upstream=\"{name}\",le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "gateway_upstream_latency_seconds_sum{{upstream=\"{name}\"}} {}",
                sum_us as f64 / 1e6
            );
            let _ = writeln!(
                out,
                "gateway_upstream_latency_seconds_count{{upstream=\"{name}\"}} {cumulative}"
            );
        }
        let guard = gauges.guard;
        header(
            out,
            "gateway_bans_issued_total",
            "counter",
            "Sources banned by the guard, by reason.",
        );
        use gateway_common::{ban_reason, maps};
        for (reason, counter) in [
            (
                ban_reason::name(ban_reason::PREFIX_ESCALATION),
                &guard.prefix_bans,
            ),
            (
                ban_reason::name(ban_reason::RATE_LIMIT),
                &guard.rate_limit_bans,
            ),
            (
                ban_reason::name(ban_reason::AUTH_FAILURES),
                &guard.auth_failure_bans,
            ),
        ] {
            let _ = writeln!(
                out,
                "gateway_bans_issued_total{{reason=\"{reason}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "gateway_userspace_bans_issued_total",
            "counter",
            "Of the bans issued, those only the gateway enforces, by what is banned: \
             a client address from X-Forwarded-For, or one client at an address.",
        );
        for (kind, counter) in [
            ("forwarded", &guard.forwarded_bans),
            ("client", &guard.client_bans),
        ] {
            let _ = writeln!(
                out,
                "gateway_userspace_bans_issued_total{{ban=\"{kind}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        header(
            out,
            "gateway_bans_monitored_total",
            "counter",
            "Bans not issued because the guard is in monitor mode.",
        );
        let _ = writeln!(
            out,
            "gateway_bans_monitored_total {}",
            guard.monitored_bans.load(Ordering::Relaxed)
        );
        header(
            out,
            "gateway_bans_spared_total",
            "counter",
            "Bans not issued because the address is allow-listed or a trusted proxy.",
        );
        let _ = writeln!(
            out,
            "gateway_bans_spared_total {}",
            guard.allowed_sources_spared.load(Ordering::Relaxed)
        );
        if let Some(active) = gauges.bans_active {
            header(out, "gateway_bans_active", "gauge", "Bans in force now.");
            let _ = writeln!(out, "gateway_bans_active {active}");
        }
        header(
            out,
            "gateway_policy_updates_dropped_total",
            "counter",
            "Kernel policy updates dropped because the writer was behind.",
        );
        let _ = writeln!(
            out,
            "gateway_policy_updates_dropped_total {}",
            gauges.policy_dropped
        );
        let full = gauges.bans_full;
        for (name, what, bans, prefixes) in [
            (
                "evicted",
                "evicted to make room",
                &full.bans_evicted,
                &full.prefix_bans_evicted,
            ),
            (
                "refused",
                "not written",
                &full.bans_refused,
                &full.prefix_bans_refused,
            ),
        ] {
            let metric = format!("gateway_xdp_bans_{name}_total");
            let help = format!("Bans {what} because the kernel's ban map was full, by map.");
            header(out, &metric, "counter", &help);
            for (map, n) in [(maps::BANS, bans), (maps::PREFIX_BANS, prefixes)] {
                let n = n.load(Ordering::Relaxed);
                let _ = writeln!(out, "{metric}{{map=\"{map}\"}} {n}");
            }
        }
        header(
            out,
            "gateway_api_keys",
            "gauge",
            "API keys in the in-memory index.",
        );
        let _ = writeln!(out, "gateway_api_keys {}", gauges.keys);
        if let Some(kernel) = &gauges.kernel {
            header(
                out,
                "gateway_xdp_packets_total",
                "counter",
                "Packets the XDP program saw, by verdict and reason.",
            );
            for (name, n) in kernel.named() {
                let _ = writeln!(out, "gateway_xdp_packets_total{{reason=\"{name}\"}} {n}");
            }
        }
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label values: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn workers_are_summed_and_labels_stay_bounded() {
        let metrics = Metrics::new(vec!["*/api".into()], vec!["bronze".into(), "gold".into()]);
        let (a, b) = (metrics.recorder(), metrics.recorder());
        let ok = Outcome {
            route: Some(0),
            tier: Some(1),
            status: 200,
            error: None,
            detail: None,
        };
        a.record(&ok);
        b.record(&ok);
        b.record(&Outcome {
            tier: Some(0),
            status: 429,
            error: Some("rate_limited"),
            ..ok
        });
        a.record(&Outcome {
            route: Some(0),
            tier: None,
            status: 401,
            error: Some("invalid_credential"),
            detail: Some("wrong_secret"),
        });
        b.record(&Outcome {
            route: None,
            tier: None,
            status: 401,
            error: Some("invalid_client"),
            detail: Some("wrong_secret"),
        });
        a.record(&Outcome {
            route: None,
            tier: None,
            status: 401,
            error: Some("invalid_token"),
            detail: None,
        });
        let latency = Histogram::default();
        latency.observe(Duration::from_millis(3));
        let guard = GuardCounters::default();
        let text = metrics.render(&Gauges {
            pools: vec![PoolGauge {
                name: "app",
                shed_tiers: 0,
                latency: &latency,
            }],
            guard: &guard,
            bans_active: Some(0),
            kernel: None,
            policy_dropped: 0,
            bans_full: &FullCounters::default(),
            keys: 3,
        });
        for line in [
            "gateway_requests_total{route=\"*/api\",tier=\"gold\",status=\"200\"} 2",
            "gateway_rate_limited_total{tier=\"bronze\"} 1",
            "gateway_rate_limited_total{tier=\"gold\"} 0",
            "gateway_shed_total{tier=\"gold\"} 0",
            "gateway_banned_requests_total{ban=\"client_at_address\"} 0",
            "gateway_auth_failures_total{reason=\"wrong_secret\"} 2",
            "gateway_auth_failures_total{reason=\"invalid_token\"} 1",
            "gateway_upstream_latency_seconds_bucket{upstream=\"app\",le=\"0.005\"} 1",
            "gateway_upstream_latency_seconds_count{upstream=\"app\"} 1",
            "gateway_api_keys 3",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    /// Each reload gives every worker a new gateway and recorder: the old
    /// ones are dropped and their counts kept, under their names.
    #[test]
    fn reloads_do_not_pile_up_recorders_and_keep_the_counts() {
        let metrics = Metrics::new(vec!["a".into()], vec!["gold".into()]);
        let ok = |route| Outcome {
            route: Some(route),
            tier: Some(0),
            status: 200,
            error: None,
            detail: None,
        };
        let mut workers = vec![metrics.recorder(), metrics.recorder()];
        workers[0].record(&ok(0));
        let after_start = metrics.recorders();
        for reload in 0..50 {
            // Route "a" moves to index 1 under the new names.
            metrics.relabel(
                vec![format!("new{reload}"), "a".into()],
                vec!["gold".into()],
            );
            workers = workers.iter().map(|_| metrics.recorder()).collect();
            workers[1].record(&ok(1));
        }
        assert_eq!(metrics.recorders(), after_start);
        assert_eq!(metrics.recorders(), 2);
        let requests = metrics.requests();
        assert_eq!(requests[&("a".into(), "gold".into(), 200)], 51);
        drop(workers);
        assert_eq!(metrics.recorders(), 0);
        assert_eq!(metrics.requests()[&("a".into(), "gold".into(), 200)], 51);
    }
}
