//! `GET /v1/top`: one snapshot of what `gateway top` shows — requests by
//! route, tier and status (counters since start), the busiest clients by
//! quota in use, bans in force, the XDP program's counters and upstream
//! health. Read from what the gateway holds anyway (metrics, limiter,
//! bans, pools); bounded: at most [`MAX_CLIENTS`] clients and [`MAX_BANS`]
//! bans. Rates are the caller's: two snapshots and the gateway's own
//! monotonic `now_ns` in each.
use serde_json::{json, Value};

use super::Admin;
use crate::{clock::monotonic_ns, xdp::PinnedMaps};
use gateway_common::ban_reason;

/// Busiest clients in one snapshot.
pub const MAX_CLIENTS: usize = 20;
/// Bans in one snapshot (the longest-lasting).
pub const MAX_BANS: usize = 50;

impl Admin {
    pub(super) fn top(&self) -> Value {
        let shared = self.current();
        let now = monotonic_ns();
        let requests: Vec<Value> = (shared.metrics.requests().into_iter())
            .map(|((route, tier, status), count)| {
                json!({ "route": route, "tier": tier, "status": status, "count": count })
            })
            .collect();
        let clients: Vec<Value> = (shared.limiter.busiest(MAX_CLIENTS, now).into_iter())
            .map(|(id, tat_ns)| {
                let tier = (shared.keys.client(&id)).map_or_else(String::new, |c| c.tier.clone());
                let (_, quota) = shared.tier(&tier);
                let key = crate::limits::LimitKey::Client(id.clone());
                let state = shared.limiter.peek(&key, quota, now);
                json!({
                    "id": id,
                    "tier": quota.name,
                    "limit": quota.requests,
                    "window_ns": u64::try_from(quota.window.as_nanos()).unwrap_or(u64::MAX),
                    "remaining": state.remaining,
                    "tat_ns": tat_ns,
                })
            })
            .collect();
        let maps = (self.pin_root.as_deref()).and_then(|root| PinnedMaps::open(root).ok());
        let ban = |target: String, ban: gateway_common::Ban, place: &str| {
            json!({
                "target": target,
                "reason": ban_reason::name(ban.reason),
                "seconds_left": ban.banned_until_ns.saturating_sub(now) as f64 / 1e9,
                "enforced_in": place,
            })
        };
        let mut bans: Vec<Value> = (shared.userspace_bans.list(MAX_BANS, now).into_iter())
            .map(|(target, b)| ban(target, b, "userspace"))
            .collect();
        if let Some(kernel) = maps.as_ref().and_then(|m| m.all_bans().ok()) {
            let mut kernel: Vec<_> = (kernel.into_iter())
                .filter(|(_, b)| b.banned_until_ns > now)
                .collect();
            kernel.sort_unstable_by_key(|(_, b)| std::cmp::Reverse(b.banned_until_ns));
            kernel.truncate(MAX_BANS.saturating_sub(bans.len()));
            bans.extend((kernel.into_iter()).map(|(net, b)| ban(net.to_string(), b, "kernel")));
        }
        let xdp = (maps.as_ref().and_then(|m| m.counters().ok())).map(|counters| {
            let named: serde_json::Map<String, Value> = (counters.named())
                .map(|(name, n)| (name.to_owned(), json!(n)))
                .collect();
            Value::Object(named)
        });
        let mut upstreams: Vec<Value> = (shared.pools.values())
            .map(|pool| {
                let (usable, servers) = pool.usable(now);
                json!({
                    "name": pool.name,
                    "usable": usable,
                    "servers": servers,
                    "shed_tiers": pool.load.level(),
                })
            })
            .collect();
        upstreams.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        json!({
            "now_ns": now,
            "requests": requests,
            "clients": clients,
            "bans": bans,
            "xdp": xdp,
            "upstreams": upstreams,
        })
    }
}
