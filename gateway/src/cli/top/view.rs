//! What `gateway top` shows, from two `GET /v1/top` snapshots: plain data
//! in, plain data out. The clock is the gateway's own (`now_ns` in each
//! snapshot), so rates do not depend on when the answers arrived.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One `GET /v1/top` answer (see the admin module's `top`).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Snapshot {
    pub now_ns: u64,
    #[serde(default)]
    pub requests: Vec<RequestCount>,
    #[serde(default)]
    pub clients: Vec<ClientState>,
    #[serde(default)]
    pub bans: Vec<Value>,
    #[serde(default)]
    pub xdp: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    pub upstreams: Vec<Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RequestCount {
    pub route: String,
    pub tier: String,
    pub status: u16,
    pub count: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ClientState {
    pub id: String,
    pub tier: String,
    pub limit: u64,
    pub window_ns: u64,
    pub remaining: u64,
    pub tat_ns: u64,
}

/// Requests of one route and tier.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteRow {
    pub route: String,
    pub tier: String,
    pub requests: u64,
    pub per_sec: f64,
    /// Share of the interval's answers that were 4xx / 5xx (0 when idle).
    pub client_error_rate: f64,
    pub server_error_rate: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClientRow {
    pub id: String,
    pub tier: String,
    pub per_sec: f64,
    pub remaining: u64,
    pub limit: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct XdpRow {
    pub verdict: String,
    pub packets: u64,
    pub per_sec: f64,
}

/// One screen's worth.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct View {
    /// Seconds between the two snapshots (0 for the first).
    pub interval_seconds: f64,
    pub routes: Vec<RouteRow>,
    pub clients: Vec<ClientRow>,
    pub bans: Vec<Value>,
    pub xdp: Option<Vec<XdpRow>>,
    pub upstreams: Vec<Value>,
}

/// Counts per (route, tier): (all, 4xx, 5xx).
fn by_route(snapshot: &Snapshot) -> BTreeMap<(String, String), [u64; 3]> {
    let mut rows: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
    for r in &snapshot.requests {
        let row = rows.entry((r.route.clone(), r.tier.clone())).or_default();
        row[0] += r.count;
        match r.status {
            400..=499 => row[1] += r.count,
            500..=599 => row[2] += r.count,
            _ => {}
        }
    }
    rows
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The view of `current`, with rates since `previous` (none without one,
/// or when the gateway restarted in between: its clock went back).
pub fn view(previous: Option<&Snapshot>, current: &Snapshot) -> View {
    let previous = previous.filter(|p| p.now_ns < current.now_ns);
    let seconds = previous.map_or(0.0, |p| (current.now_ns - p.now_ns) as f64 / 1e9);
    let rate = |n: u64| {
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    };
    let before = previous.map(by_route).unwrap_or_default();
    let routes = (by_route(current).into_iter())
        .map(|(key, now)| {
            let then = before.get(&key).copied().unwrap_or_default();
            let delta = [0, 1, 2].map(|i| now[i].saturating_sub(then[i]));
            RouteRow {
                route: key.0,
                tier: key.1,
                requests: now[0],
                per_sec: rate(delta[0]),
                client_error_rate: share(delta[1], delta[0]),
                server_error_rate: share(delta[2], delta[0]),
            }
        })
        .collect();
    let clients = (current.clients.iter())
        .map(|c| ClientRow {
            id: c.id.clone(),
            tier: c.tier.clone(),
            per_sec: previous.map_or(0.0, |p| rate(admitted(p, c))),
            remaining: c.remaining,
            limit: c.limit,
        })
        .collect();
    let xdp = current.xdp.as_ref().map(|now| {
        let then = previous.and_then(|p| p.xdp.as_ref());
        (now.iter())
            .map(|(verdict, packets)| {
                let before = then.and_then(|t| t.get(verdict)).copied().unwrap_or(0);
                XdpRow {
                    verdict: verdict.clone(),
                    packets: *packets,
                    per_sec: rate(packets.saturating_sub(before)),
                }
            })
            .collect()
    });
    View {
        interval_seconds: seconds,
        routes,
        clients,
        bans: current.bans.clone(),
        xdp,
        upstreams: current.upstreams.clone(),
    }
}

/// Requests admitted for `client` since `previous`: each one moves the
/// limiter's arrival time on by one interval, from `previous.now_ns` at
/// the earliest (an idle client's time lags the clock). A client not in
/// `previous` (idle, or not among the busiest) counts from then.
fn admitted(previous: &Snapshot, client: &ClientState) -> u64 {
    let interval = (client.window_ns / client.limit.max(1)).max(1);
    let then = (previous.clients.iter())
        .find(|p| p.id == client.id)
        .map_or(previous.now_ns, |p| p.tat_ns.max(previous.now_ns));
    client.tat_ns.saturating_sub(then) / interval
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn count(route: &str, status: u16, count: u64) -> RequestCount {
        RequestCount {
            route: route.into(),
            tier: "gold".into(),
            status,
            count,
        }
    }

    fn client(id: &str, tat_ns: u64, remaining: u64) -> ClientState {
        // 100 requests a minute: one interval is 0.6 s.
        ClientState {
            id: id.into(),
            tier: "gold".into(),
            limit: 100,
            window_ns: 60 * SEC,
            remaining,
            tat_ns,
        }
    }

    fn at(now_ns: u64, requests: Vec<RequestCount>, clients: Vec<ClientState>) -> Snapshot {
        Snapshot {
            now_ns,
            requests,
            clients,
            ..Snapshot::default()
        }
    }

    #[test]
    fn rates_come_from_the_difference_over_the_gateways_clock() {
        let first = at(
            10 * SEC,
            vec![count("api", 200, 100), count("api", 429, 0)],
            vec![],
        );
        let second = at(
            12 * SEC,
            vec![
                count("api", 200, 116),
                count("api", 429, 2),
                count("api", 502, 2),
            ],
            vec![],
        );
        let view = view(Some(&first), &second);
        assert_eq!(view.interval_seconds, 2.0);
        assert_eq!(
            view.routes,
            [RouteRow {
                route: "api".into(),
                tier: "gold".into(),
                requests: 120,
                per_sec: 10.0,
                client_error_rate: 0.1,
                server_error_rate: 0.1,
            }]
        );
    }

    #[test]
    fn the_first_snapshot_and_a_restart_have_no_rates() {
        let now = at(
            5 * SEC,
            vec![count("api", 200, 7)],
            vec![client("c", 6 * SEC, 9)],
        );
        for previous in [None, Some(&at(50 * SEC, vec![], vec![]))] {
            let view = view(previous, &now);
            assert_eq!(view.routes[0].per_sec, 0.0);
            assert_eq!(view.routes[0].requests, 7);
            assert_eq!(view.clients[0].per_sec, 0.0);
            assert_eq!(view.clients[0].remaining, 9);
        }
    }

    #[test]
    fn a_clients_rate_is_its_limiter_time_moving_ahead() {
        // Busy: its time was ahead of the clock and moved 3 intervals.
        let busy_before = client("busy", 11 * SEC, 5);
        let busy_after = client("busy", 11 * SEC + 3 * 600_000_000, 2);
        // Idle before (behind the clock): counted from the first snapshot.
        let idle_before = client("idle", 2 * SEC, 10);
        let idle_after = client("idle", 10 * SEC + 2 * 600_000_000, 8);
        // New among the busiest.
        let new = client("new", 10 * SEC + 600_000_000, 9);
        let first = at(10 * SEC, vec![], vec![busy_before, idle_before]);
        let second = at(11 * SEC, vec![], vec![busy_after, idle_after, new]);
        let rates: Vec<(String, f64)> = (view(Some(&first), &second).clients.into_iter())
            .map(|c| (c.id, c.per_sec))
            .collect();
        assert_eq!(
            rates,
            [
                ("busy".into(), 3.0),
                ("idle".into(), 2.0),
                ("new".into(), 1.0)
            ]
        );
    }

    #[test]
    fn xdp_packets_by_verdict_per_second() {
        let mut first = at(SEC, vec![], vec![]);
        first.xdp = Some(BTreeMap::from([
            ("pass".into(), 10),
            ("drop_banned".into(), 0),
        ]));
        let mut second = at(2 * SEC, vec![], vec![]);
        second.xdp = Some(BTreeMap::from([
            ("pass".into(), 40),
            ("drop_banned".into(), 5),
        ]));
        let rows = view(Some(&first), &second).xdp.unwrap_or_default();
        let rates: Vec<(&str, f64)> = rows
            .iter()
            .map(|r| (r.verdict.as_str(), r.per_sec))
            .collect();
        assert_eq!(rates, [("drop_banned", 5.0), ("pass", 30.0)]);
    }
}
