//! The admin listener end to end: `/healthz`, `/metrics` counting what
//! the proxy did, and a client's limit state read and reset through
//! `gateway limits show|reset`, with admin-key scopes enforced.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use gateway_tests::http::{FakeUpstream, ProxyGateway};

const CONFIG: &str = r#"
[[tiers]]
name = "bronze"
requests = 3
window = "60s"

[[tiers]]
name = "gold"
requests = 1000

[[upstreams]]
name = "app"
servers = ["UPSTREAM"]

[[routes]]
path_prefix = "/api/"
upstream = "app"
"#;

#[test]
fn limits_are_shown_and_reset_by_admins_only_and_metrics_count_requests() {
    let upstream = FakeUpstream::start(None);
    let gateway = ProxyGateway::new(&CONFIG.replace("UPSTREAM", &upstream.addr.to_string()));
    let (client_id, key) = gateway.create_client("bronze", &[]);
    let admin_key = gateway.create_key("gold", &["--admin"]);
    let reader_key = gateway.create_key("gold", &["--admin", "--scopes", "admin:read"]);
    let gateway = gateway.start();
    let admin_url = format!("http://{}", gateway.admin.unwrap());
    for _ in 0..2 {
        assert_eq!(gateway.get("/api/x", &[("x-api-key", &key)]).status, 200);
    }
    assert_eq!(
        gateway.get("/api/x", &[("x-api-key", "gk_nope")]).status,
        401
    );

    let limits = |command: &str, admin_key: &str| {
        gateway.cli(
            &[
                "limits",
                command,
                &client_id,
                "--admin-url",
                &admin_url,
                "--json",
            ],
            &[("GATEWAY_ADMIN_KEY", admin_key)],
        )
    };
    let shown = limits("show", &reader_key);
    assert!(shown.status.success(), "{shown:?}");
    let state: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(state["tier"], "bronze");
    assert_eq!(state["limit"], 3);
    assert_eq!(state["remaining"], 1);
    assert!(state["reset_seconds"].as_f64().unwrap() > 30.0);

    // A read-only admin key cannot reset; a client key cannot even read.
    let refused = limits("reset", &reader_key);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("may only read"));
    let direct = gateway.admin_get(
        &format!("/v1/management/api-clients/{client_id}/limits"),
        &[("authorization", &format!("Bearer {key}"))],
    );
    assert_eq!(direct.status, 403);
    assert_eq!(
        gateway
            .admin_get(
                &format!("/v1/management/api-clients/{client_id}/limits"),
                &[]
            )
            .status,
        401
    );
    let no_key = gateway.cli(
        &["limits", "show", &client_id, "--admin-url", &admin_url],
        &[],
    );
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("GATEWAY_ADMIN_KEY"));

    let reset = limits("reset", &admin_key);
    assert!(reset.status.success(), "{reset:?}");
    let state: serde_json::Value = serde_json::from_slice(&reset.stdout).unwrap();
    assert_eq!(state["remaining"], 3);
    let after = gateway.get("/api/x", &[("x-api-key", &key)]);
    assert_eq!(after.header("x-ratelimit-remaining"), Some("2"));

    assert_eq!(gateway.admin_get("/healthz", &[]).json()["status"], "ok");
    let metrics = gateway.admin_get("/metrics", &[]).body;
    for line in [
        "gateway_requests_total{route=\"*/api/\",tier=\"bronze\",status=\"200\"} 3",
        "gateway_requests_total{route=\"*/api/\",tier=\"none\",status=\"401\"} 1",
        "gateway_auth_failures_total{reason=\"malformed\"} 1",
        "gateway_upstream_latency_seconds_count{upstream=\"app\"} 3",
        "gateway_rate_limited_total{tier=\"bronze\"} 0",
        "gateway_bans_issued_total{reason=\"auth_failures\"} 0",
        "gateway_bans_active 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    assert!(!metrics.contains(&client_id), "client ids are never labels");
}
