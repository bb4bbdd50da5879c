//! Upstream pools: their servers, how requests are spread over them,
//! health checks, and when to shed load.
use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use super::{
    bounds::{At, DAY, HOUR, MS},
    durations, ConfigError,
};

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `host:port` of each server (plain HTTP).
    pub servers: Vec<SocketAddr>,
    #[serde(default)]
    pub balance: Balance,
    /// Active health checks; without them only passive ejection applies.
    pub health_check: Option<HealthCheckConfig>,
    /// When to shed load by tier (see `upstream::overload`); no
    /// signal configured means no shedding.
    #[serde(default)]
    pub overload: OverloadConfig,
}

impl UpstreamConfig {
    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        if let Some(check) = &self.health_check {
            check.check(&at.child("health_check"))?;
        }
        self.overload.check(&at.child("overload"))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverloadConfig {
    /// Requests in flight to the pool at which gold is refused too.
    pub max_in_flight: Option<usize>,
    /// p99 upstream latency over this in an interval sheds one more tier.
    #[serde(with = "durations::option")]
    pub p99_latency: Option<Duration>,
    /// Fraction of 5xx answers (0 to 1) over which one more tier is shed.
    pub error_rate: Option<f64>,
    /// Fewer requests than this in an interval count as no signal.
    pub min_requests: u64,
    /// How often the latency and error signals are judged.
    #[serde(with = "durations")]
    pub interval: Duration,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            max_in_flight: None,
            p99_latency: None,
            error_rate: None,
            min_requests: 20,
            interval: Duration::from_secs(1),
        }
    }
}

impl OverloadConfig {
    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        at.within_opt("max_in_flight", self.max_in_flight, 1..=10_000_000)?;
        at.within_opt("p99_latency", self.p99_latency, MS..=HOUR)?;
        at.within_opt("error_rate", self.error_rate, 0.0..=1.0)?;
        at.within("interval", self.interval, MS..=DAY)
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path probed with GET; any 2xx or 3xx is healthy.
    pub path: String,
    #[serde(default = "default_check_interval", with = "durations")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "durations")]
    pub timeout: Duration,
    /// Consecutive failures that take a server out.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes that bring it back.
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
}

impl HealthCheckConfig {
    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        if !self.path.starts_with('/') {
            return Err(at.invalid("path", "must start with '/'"));
        }
        at.within("interval", self.interval, MS..=DAY)?;
        at.within("timeout", self.timeout, MS..=HOUR)?;
        at.within("unhealthy_threshold", self.unhealthy_threshold, 1..=1000)?;
        at.within("healthy_threshold", self.healthy_threshold, 1..=1000)
    }
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_threshold() -> u32 {
    2
}

/// Every pool has servers, and no two pools share a name (routes name them).
pub(super) fn validate(upstreams: &[UpstreamConfig]) -> Result<(), ConfigError> {
    for (index, upstream) in upstreams.iter().enumerate() {
        if upstream.servers.is_empty() {
            return Err(ConfigError::invalid(
                format!("upstreams[{index}].servers"),
                format!("upstream {:?} has no servers", upstream.name),
            ));
        }
        if upstreams[..index].iter().any(|u| u.name == upstream.name) {
            return Err(ConfigError::invalid(
                format!("upstreams[{index}].name"),
                format!("upstream {:?} is defined twice", upstream.name),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::error;

    const LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:1\"\n";

    #[test]
    fn a_pool_needs_servers_and_a_name_of_its_own() {
        let message = error(&format!(
            "{LISTENER}[[upstreams]]\nname = \"app\"\nservers = []\n"
        ));
        assert!(message.starts_with("upstreams[0].servers"), "{message}");
        let message = error(&format!(
            "{LISTENER}[[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:2\"]\n[[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:3\"]\n"
        ));
        assert!(message.starts_with("upstreams[1].name"), "{message}");
    }
}
