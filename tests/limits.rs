//! Tier limits end to end: rate-limit headers on every response of a
//! limited route, 429 with Retry-After once over quota, refused requests
//! not consuming quota, per-source limits shared by clients, and load
//! shedding by tier when an upstream is overloaded, and bans enforced in
//! userspace when the kernel path is off.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::time::{Duration, Instant};

use gateway_tests::{
    gateway::Gateway,
    http::{get_from, pause, request, tiers_and_app, FakeUpstream},
};

fn config(upstream: &FakeUpstream) -> String {
    tiers_and_app(upstream.addr)
        + r#"
[[routes]]
path_prefix = "/api/"
upstream = "app"

[[routes]]
path_prefix = "/admin/"
upstream = "app"
required_scopes = ["admin"]

[[routes]]
path_prefix = "/shared/"
upstream = "app"
limit_by = "source"
"#
}

#[test]
fn over_quota_is_429_with_headers_and_refusals_cost_nothing() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let key = gateway.create_key("bronze");
    let gateway = gateway.start();
    let get = |path: &str| gateway.get(path, &[("x-api-key", &key)]);

    let first = get("/api/a");
    assert_eq!(first.status, 200);
    assert_eq!(first.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("2"));
    assert_eq!(
        first.header("ratelimit-policy"),
        Some("\"bronze\";q=3;w=60")
    );
    assert_eq!(first.header("ratelimit"), Some("\"bronze\";r=2;t=20"));

    // Forbidden requests are refused before the limit: they cost nothing.
    for _ in 0..5 {
        assert_eq!(get("/admin/x").status, 403);
    }
    assert_eq!(get("/api/a").header("x-ratelimit-remaining"), Some("1"));
    assert_eq!(get("/api/a").header("x-ratelimit-remaining"), Some("0"));

    let refused = get("/api/a");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "rate_limited");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        upstream.requests().len(),
        3,
        "nothing over quota reached the upstream"
    );

    // Another tier, another quota.
    let gold = {
        let fresh = FakeUpstream::start(None);
        let gateway = Gateway::builder(&config(&fresh));
        let key = gateway.create_key("gold");
        let gateway = gateway.start();
        let reply = gateway.get("/api/a", &[("x-api-key", &key)]);
        (
            reply.status,
            reply.header("x-ratelimit-limit").map(str::to_owned),
        )
    };
    assert_eq!(gold, (200, Some("1000".to_owned())));
}

/// The whole 429 a client over quota sees, pinned: the over-limit path is
/// built from per-tier parts made once (`proxy/tier_reply.rs`), and must
/// answer exactly what it answered when it built every part per request.
#[test]
fn the_429_answer_is_exactly_this() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let key = gateway.create_key("bronze");
    let gateway = gateway.start();
    let headers = [("x-api-key", key.as_str()), ("x-request-id", "pin-429")];
    for _ in 0..3 {
        assert_eq!(gateway.get("/api/a", &headers).status, 200);
    }
    let refused = gateway.get("/api/a", &headers);
    assert_eq!(refused.status, 429);
    let body = r#"{"error":"rate_limited","message":"over the bronze tier's limit of 3 requests per 60 s"}"#;
    assert_eq!(refused.body, body);
    let names: Vec<&str> = refused.headers.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            // hyper's answer to the harness's `Connection: close`.
            "connection",
            "content-length",
            "content-type",
            "date",
            "ratelimit",
            "ratelimit-policy",
            "retry-after",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
            "x-request-id",
        ]
    );
    let reset = refused.header("x-ratelimit-reset").unwrap();
    assert!(["59", "60"].contains(&reset), "reset {reset}");
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    let ratelimit = format!("\"bronze\";r=0;t={reset}");
    for (name, value) in [
        ("content-length", body.len().to_string().as_str()),
        ("content-type", "application/json"),
        ("ratelimit", &ratelimit),
        ("ratelimit-policy", "\"bronze\";q=3;w=60"),
        ("x-ratelimit-limit", "3"),
        ("x-ratelimit-remaining", "0"),
        ("x-request-id", "pin-429"),
    ] {
        assert_eq!(refused.header(name), Some(value), "{name}");
    }
    assert_eq!(upstream.requests().len(), 3, "the 429 reached no upstream");
}

#[test]
fn per_source_limits_are_shared_by_clients_at_that_source() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let a = gateway.create_key("bronze");
    let b = gateway.create_key("bronze");
    let gateway = gateway.start();
    let statuses: Vec<u16> = [&a, &b, &a, &b]
        .iter()
        .map(|key| gateway.get("/shared/x", &[("x-api-key", key)]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    // The per-client route still has each client's own quota.
    assert_eq!(gateway.get("/api/a", &[("x-api-key", &b)]).status, 200);
}

#[test]
fn an_overloaded_upstream_sheds_bronze_before_gold_and_recovers() {
    let upstream = FakeUpstream::start(Some(Duration::from_millis(1500)));
    // Bronze may have one request in flight, gold all three.
    let gateway = Gateway::builder(&format!(
        r#"
[[tiers]]
name = "bronze"
requests = 100
window = "1h"

[[tiers]]
name = "silver"
requests = 100

[[tiers]]
name = "gold"
requests = 100

[[upstreams]]
name = "app"
servers = ["{addr}"]
[upstreams.overload]
max_in_flight = 3

[[routes]]
path_prefix = "/"
upstream = "app"
"#,
        addr = upstream.addr
    ));
    let bronze = gateway.create_key("bronze");
    let gold = gateway.create_key("gold");
    let gateway = gateway.start();
    let addr = gateway.addr;
    let slow = {
        let bronze = bronze.clone();
        std::thread::spawn(move || request(addr, "GET", "/slow", &[("x-api-key", &bronze)]))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while upstream.requests().is_empty() {
        assert!(Instant::now() < deadline, "the slow request never arrived");
        std::thread::yield_now();
    }

    let shed = gateway.get("/x", &[("x-api-key", &bronze)]);
    assert_eq!(shed.status, 503);
    assert_eq!(shed.json()["error"], "overloaded");
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(
        gateway.get("/x", &[("x-api-key", &gold)]).status,
        200,
        "gold is served while bronze is shed"
    );
    assert_eq!(slow.join().unwrap().status, 200);
    let recovered = gateway.get("/x", &[("x-api-key", &bronze)]);
    assert_eq!(recovered.status, 200);
    assert_eq!(
        recovered.header("x-ratelimit-remaining"),
        Some("98"),
        "the shed request cost no quota"
    );
    let logged = gateway.wait_for_log(|l| l["error"] == "overloaded");
    assert_eq!(logged["tier"], "bronze");
    let metrics = gateway.admin_get("/metrics", &[]).body;
    assert!(
        metrics.contains("gateway_shed_total{tier=\"bronze\"} 1"),
        "{metrics}"
    );
}

#[test]
fn upstream_errors_after_the_limit_phase_still_carry_the_rate_limit_headers() {
    // A port nothing listens on: the upstream refuses, 502.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gateway = Gateway::builder(&format!(
        "[[upstreams]]\nname = \"app\"\nservers = [\"{closed}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n"
    ));
    let key = gateway.create_key("silver");
    let gateway = gateway.start();
    let reply = gateway.get("/x", &[("x-api-key", &key)]);
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-ratelimit-limit"), Some("100"));
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("99"));
}

#[test]
fn without_xdp_a_guessing_source_is_refused_in_userspace_until_its_ban_ends() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        "[guard]\nauth_failures = 3\nauth_failure_ban = \"2s\"\n\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"{}\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        upstream.addr
    ));
    let key = gateway.create_key("gold");
    let gateway = gateway.start();
    let local = "127.0.0.1".parse().unwrap();
    let get = |key: &str| {
        get_from(
            local,
            gateway.addr,
            "/",
            &[("x-api-key", key)],
            Duration::from_secs(2),
        )
    };
    let mut refused = 0;
    // Banned: the connection is closed at accept, or, if it was accepted
    // just before the ban landed, the request gets 403 "banned".
    let banned = (0..20).any(|i| match get(&format!("gk_guess{i}_x")) {
        Ok(reply) if reply.status == 403 => {
            assert_eq!(reply.json()["error"], "banned");
            true
        }
        Ok(reply) => {
            assert_eq!(reply.status, 401);
            refused += 1;
            false
        }
        Err(_) => true,
    });
    assert!(banned, "never banned after {refused} refusals");
    assert!(refused >= 4, "banned after only {refused} refusals");
    let metrics = gateway.admin_get("/metrics", &[]).body;
    assert!(metrics.contains("gateway_bans_active 1"), "{metrics}");
    assert!(metrics.contains("gateway_bans_issued_total{reason=\"auth_failures\"} 1"));
    // Even the right key is refused while the ban lasts; then served again.
    assert!(get(&key).is_err());
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&key).map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "the ban never ended");
        pause(Duration::from_millis(200));
    }
}
