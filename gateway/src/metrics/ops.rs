//! Gauges for what is about to go wrong rather than what happened: the
//! kernel's ban maps filling up, policy writes the kernel refused, TLS
//! certificates nearing their end. `packaging/prometheus/alerts.yml` alerts
//! on each.
use std::fmt::Write as _;

use super::{escape, header};

/// One kernel ban map's fill level. Expired bans count until the writer's
/// next sweep removes them: they take room until then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanMapFill {
    pub map: &'static str,
    pub entries: usize,
    pub capacity: u32,
}

/// The certificate a TLS listener serves.
#[derive(Clone)]
pub struct Certificate {
    /// The listener's configured address.
    pub listener: String,
    /// Its `notAfter`, Unix seconds.
    pub expires_at: i64,
}

pub struct Ops<'a> {
    /// [`crate::xdp::policy::PolicyHandle::failed`].
    pub policy_failed: u64,
    /// `None` without the kernel path.
    pub ban_maps: Option<Vec<BanMapFill>>,
    pub certificates: &'a [Certificate],
}

/// Appends the exposition of `ops` to `out`.
pub fn render(out: &mut String, ops: &Ops<'_>) {
    header(
        out,
        "gateway_policy_writes_failed_total",
        "counter",
        "Kernel policy writes (bans, budgets, publishes, sweeps) that failed.",
    );
    let _ = writeln!(
        out,
        "gateway_policy_writes_failed_total {}",
        ops.policy_failed
    );
    if let Some(maps) = &ops.ban_maps {
        header(
            out,
            "gateway_xdp_ban_map_entries",
            "gauge",
            "Entries in a kernel ban map (expired ones until swept), by map.",
        );
        for fill in maps {
            let _ = writeln!(
                out,
                "gateway_xdp_ban_map_entries{{map=\"{}\"}} {}",
                fill.map, fill.entries
            );
        }
        header(
            out,
            "gateway_xdp_ban_map_capacity",
            "gauge",
            "Entries a kernel ban map holds (xdp.max_bans, xdp.max_prefix_bans), by map.",
        );
        for fill in maps {
            let _ = writeln!(
                out,
                "gateway_xdp_ban_map_capacity{{map=\"{}\"}} {}",
                fill.map, fill.capacity
            );
        }
    }
    header(
        out,
        "gateway_tls_certificate_expiry_timestamp_seconds",
        "gauge",
        "When the certificate a TLS listener serves expires (notAfter, Unix seconds).",
    );
    for cert in ops.certificates {
        let _ = writeln!(
            out,
            "gateway_tls_certificate_expiry_timestamp_seconds{{listener=\"{}\"}} {}",
            escape(&cert.listener),
            cert.expires_at
        );
    }
}

/// The rate limiter's backend: `gateway_limits_backend_fallback` is 0
/// for a local limiter (nothing to fall back from); a shared one adds its
/// fallbacks, the nodes it divides by, its calls to Redis and the values
/// it found there that no gateway wrote (`hostile`).
/// Parked connections (`limits.park_idle_after`): parked now, and times
/// any was parked.
pub fn render_parked(out: &mut String, (now, total): (u64, u64)) {
    header(
        out,
        "gateway_connections_parked",
        "gauge",
        "Idle plain HTTP/1.1 connections parked now (their socket kept, hyper's buffers freed).",
    );
    let _ = writeln!(out, "gateway_connections_parked {now}");
    header(
        out,
        "gateway_connections_parked_total",
        "counter",
        "Times an idle plain HTTP/1.1 connection was parked.",
    );
    let _ = writeln!(out, "gateway_connections_parked_total {total}");
}

pub fn render_limits(out: &mut String, status: Option<crate::limits::BackendStatus>, hostile: u64) {
    header(
        out,
        "gateway_limits_backend_fallback",
        "gauge",
        "1 while the shared limiter's Redis is unreachable and this node limits locally at quota / nodes.",
    );
    let fallback = status.is_some_and(|s| s.fallback);
    let _ = writeln!(
        out,
        "gateway_limits_backend_fallback {}",
        u8::from(fallback)
    );
    let Some(status) = status else {
        return;
    };
    header(
        out,
        "gateway_limits_backend_fallbacks_total",
        "counter",
        "Times the shared limiter switched to the local fallback.",
    );
    let _ = writeln!(
        out,
        "gateway_limits_backend_fallbacks_total {}",
        status.fallbacks
    );
    header(
        out,
        "gateway_limits_fleet_nodes",
        "gauge",
        "Nodes the local fallback divides quotas by (heartbeats in Redis or limits.nodes).",
    );
    let _ = writeln!(out, "gateway_limits_fleet_nodes {}", status.nodes);
    header(
        out,
        "gateway_limits_redis_calls_total",
        "counter",
        "Calls the shared limiter made to Redis (batched refills, heartbeats, probes).",
    );
    let _ = writeln!(out, "gateway_limits_redis_calls_total {}", status.calls);
    header(
        out,
        "gateway_limits_redis_hostile_total",
        "counter",
        "Limiter values in Redis no gateway wrote (garbage, wrong type, far future): read as a quota fully used and overwritten.",
    );
    let _ = writeln!(out, "gateway_limits_redis_hostile_total {}", hostile);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_limiter_never_falls_back_and_a_shared_one_says_so() {
        let mut local = String::new();
        render_limits(&mut local, None, 0);
        assert!(
            local.contains("gateway_limits_backend_fallback 0"),
            "{local}"
        );
        assert!(!local.contains("gateway_limits_fleet_nodes"), "{local}");
        let mut shared = String::new();
        let status = crate::limits::BackendStatus {
            fallback: true,
            fallbacks: 2,
            nodes: 3,
            calls: 40,
        };
        render_limits(&mut shared, Some(status), 1);
        for line in [
            "gateway_limits_backend_fallback 1",
            "gateway_limits_backend_fallbacks_total 2",
            "gateway_limits_fleet_nodes 3",
            "gateway_limits_redis_calls_total 40",
            "gateway_limits_redis_hostile_total 1",
        ] {
            assert!(shared.contains(line), "missing {line:?} in\n{shared}");
        }
    }

    #[test]
    fn fill_levels_failures_and_certificates() {
        let mut out = String::new();
        render(
            &mut out,
            &Ops {
                policy_failed: 2,
                ban_maps: Some(vec![BanMapFill {
                    map: "GW_BANS",
                    entries: 3,
                    capacity: 65536,
                }]),
                certificates: &[Certificate {
                    listener: "127.0.0.1:8443".into(),
                    expires_at: 1_900_000_000,
                }],
            },
        );
        for line in [
            "gateway_policy_writes_failed_total 2",
            "gateway_xdp_ban_map_entries{map=\"GW_BANS\"} 3",
            "gateway_xdp_ban_map_capacity{map=\"GW_BANS\"} 65536",
            "gateway_tls_certificate_expiry_timestamp_seconds{listener=\"127.0.0.1:8443\"} 1900000000",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        let mut without = String::new();
        render(
            &mut without,
            &Ops {
                policy_failed: 0,
                ban_maps: None,
                certificates: &[],
            },
        );
        assert!(!without.contains("gateway_xdp_ban_map_entries"));
    }
}
