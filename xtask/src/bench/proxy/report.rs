//! The figures of the proxy bench: one series of per-round values per
//! metric and proxy, their medians and max/min spreads (noise), the
//! gateway/peer ratios judged against the targets, and the markdown table
//! recorded in `bench/RESULTS.md`.
use std::fmt::Write as _;

use crate::bench::stats::{median, spread_ratio, NOISY};

pub(super) const GATEWAY: &str = "gateway";
/// The peers, in table order.
pub(super) const PEERS: [&str; 2] = ["haproxy", "nginx"];
/// The gateway without its limiter: only its throughput is reported.
pub(super) const UNLIMITED: &str = "gateway, no limiter";
pub(super) const LIMITER_TARGET: f64 = 0.95;

/// What a ratio gateway/peer should be (issue 14's targets).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Target {
    /// No target (shown for comparison).
    None,
    /// Throughput: at least this much of HAProxy's and of nginx's.
    AtLeast { haproxy: f64, nginx: f64 },
    /// CPU per request, latency: at most this much of HAProxy's.
    AtMostHaproxy(f64),
}

pub(super) struct Metric {
    pub(super) workload: &'static str,
    pub(super) name: &'static str,
    pub(super) target: Target,
}

const HTTP: &str = "1. max throughput, HTTP";
const LATENCY: &str = "2. latency at a fixed rate";
const TLS: &str = "3. max throughput, TLS";
const THROUGHPUT: Target = Target::AtLeast {
    haproxy: 1.1,
    nginx: 1.0,
};
const CPU_TARGET: Target = Target::AtMostHaproxy(0.9);
pub(super) const RPS: Metric = metric(HTTP, "req/s", THROUGHPUT);
pub(super) const CPU: Metric = metric(HTTP, "CPU us/req", CPU_TARGET);
pub(super) const TLS_RPS: Metric = metric(TLS, "req/s", THROUGHPUT);
pub(super) const TLS_CPU: Metric = metric(TLS, "CPU us/req", CPU_TARGET);
/// One per `openloop::QUANTILES` entry.
pub(super) const PERCENTILES: [Metric; 3] = [
    metric(LATENCY, "p50 us", Target::None),
    metric(LATENCY, "p99 us", Target::AtMostHaproxy(1.2)),
    metric(LATENCY, "p99.9 us", Target::AtMostHaproxy(1.5)),
];

const fn metric(workload: &'static str, name: &'static str, target: Target) -> Metric {
    Metric {
        workload,
        name,
        target,
    }
}

struct Series {
    workload: &'static str,
    metric: &'static str,
    target: Target,
    proxy: &'static str,
    values: Vec<f64>,
}

#[derive(Default)]
pub(super) struct Report {
    /// In the order first measured, which is the table's.
    series: Vec<Series>,
}

impl Report {
    pub(super) fn add(&mut self, metric: &Metric, proxy: &'static str, value: f64) {
        match self.find(metric, proxy) {
            Some(i) => self.series[i].values.push(value),
            None => self.series.push(Series {
                workload: metric.workload,
                metric: metric.name,
                target: metric.target,
                proxy,
                values: vec![value],
            }),
        }
    }

    fn find(&self, metric: &Metric, proxy: &str) -> Option<usize> {
        self.series.iter().position(|s| {
            s.workload == metric.workload && s.metric == metric.name && s.proxy == proxy
        })
    }

    pub(super) fn median(&self, metric: &Metric, proxy: &str) -> f64 {
        self.find(metric, proxy)
            .map_or(f64::NAN, |i| median(&mut self.series[i].values.clone()))
    }

    /// `gateway` with its limiter over without (throughput).
    fn limiter_ratio(&self) -> f64 {
        self.median(&RPS, GATEWAY) / self.median(&RPS, UNLIMITED)
    }

    /// The metrics, in table order: by workload, then as first measured.
    fn metrics(&self) -> Vec<Metric> {
        let mut metrics: Vec<Metric> = Vec::new();
        for s in &self.series {
            if !metrics
                .iter()
                .any(|m| m.workload == s.workload && m.name == s.metric)
            {
                metrics.push(metric(s.workload, s.metric, s.target));
            }
        }
        metrics.sort_by_key(|m| m.workload);
        metrics
    }

    /// Lines naming every series whose spread says the machine was noisy.
    pub(super) fn noise(&self) -> Vec<String> {
        self.series
            .iter()
            .filter_map(|s| {
                let spread = spread_ratio(&s.values);
                (spread > NOISY).then(|| {
                    format!(
                        "noisy: {} {} of {}: max/min {spread:.2} over {} rounds (> {NOISY}); compare with care",
                        s.workload,
                        s.metric,
                        s.proxy,
                        s.values.len()
                    )
                })
            })
            .collect()
    }

    /// The medians and ratios with their targets, for the terminal.
    pub(super) fn print(&self) {
        println!("\nmedians (gateway / haproxy / nginx) and ratios gateway/peer:");
        for m in self.metrics() {
            let [ours, haproxy, nginx] = self.medians(&m);
            println!(
                "  {:<28} {:<11} {:>9.1} {:>9.1} {:>9.1}   vs haproxy {}   vs nginx {}",
                m.workload,
                m.name,
                ours,
                haproxy,
                nginx,
                ratio(ours, haproxy, m.target, PEERS[0]),
                ratio(ours, nginx, m.target, PEERS[1])
            );
        }
        println!("  {}", self.limiter_line());
    }

    fn medians(&self, m: &Metric) -> [f64; 3] {
        [GATEWAY, PEERS[0], PEERS[1]].map(|proxy| self.median(m, proxy))
    }

    fn limiter_line(&self) -> String {
        let limiter = self.limiter_ratio();
        format!(
            "limiter overhead: throughput with / without the gateway's limiter {limiter:.2}x (target >= {LIMITER_TARGET:.2}: {})",
            verdict(limiter >= LIMITER_TARGET)
        )
    }

    /// The section of `bench/RESULTS.md`: heading, `intro`, the table, the
    /// limiter overhead and `notes`.
    pub(super) fn markdown(&self, title: &str, intro: &str, notes: &[String]) -> String {
        let mut out = format!(
            "## {title}\n\n{intro}\n\n\
             | workload | metric | gateway | haproxy | nginx | gateway/haproxy | gateway/nginx |\n\
             |---|---|---|---|---|---|---|\n"
        );
        for m in self.metrics() {
            let [ours, haproxy, nginx] = self.medians(&m);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                m.workload,
                m.name,
                value(ours),
                value(haproxy),
                value(nginx),
                ratio(ours, haproxy, m.target, PEERS[0]),
                ratio(ours, nginx, m.target, PEERS[1])
            );
        }
        let unlimited = self.median(&RPS, UNLIMITED);
        let _ = writeln!(
            out,
            "| limiter overhead | gateway req/s without its limiter | {} | – | – | – | – |\n\n{}.\n",
            value(unlimited),
            self.limiter_line()
        );
        for note in notes {
            let _ = writeln!(out, "- {note}");
        }
        out
    }
}

fn value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// `ours / theirs`, with the target against `peer` if there is one.
fn ratio(ours: f64, theirs: f64, target: Target, peer: &str) -> String {
    let r = ours / theirs;
    match target {
        Target::AtLeast { haproxy, nginx } => {
            let at_least = if peer == PEERS[0] { haproxy } else { nginx };
            format!("{r:.2}x (>= {at_least:.2}: {})", verdict(r >= at_least))
        }
        Target::AtMostHaproxy(at_most) if peer == PEERS[0] => {
            format!("{r:.2}x (<= {at_most:.2}: {})", verdict(r <= at_most))
        }
        _ => format!("{r:.2}x"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_ratios_and_noise() {
        let mut report = Report::default();
        for (proxy, values) in [
            (GATEWAY, [100.0, 300.0, 200.0]),
            ("haproxy", [100.0, 100.0, 100.0]),
            ("nginx", [400.0, 400.0, 400.0]),
            (UNLIMITED, [200.0, 200.0, 200.0]),
        ] {
            for v in values {
                report.add(&RPS, proxy, v);
            }
        }
        assert_eq!(report.median(&RPS, GATEWAY), 200.0);
        assert_eq!(report.limiter_ratio(), 1.0);
        assert_eq!(report.noise().len(), 1);
        let table = report.markdown("Proxy", "intro", &[]);
        assert!(
            table.contains("| 200 | 100 | 400 | 2.00x (>= 1.10: met) | 0.50x (>= 1.00: NOT met) |")
        );
        assert_eq!(ratio(2.0, 1.0, CPU_TARGET, "nginx"), "2.00x");
        assert_eq!(
            ratio(0.9, 1.0, CPU_TARGET, "haproxy"),
            "0.90x (<= 0.90: met)"
        );
    }
}
