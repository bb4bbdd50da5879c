//! The admin listener end to end: `/healthz`, `/metrics` counting what
//! the proxy did, a client's limit state through `gateway limits`, the
//! client lifecycle through the management API (checked against its
//! OpenAPI document) and the CLI, bootstrap, rotation grace, expiry,
//! revocation under load, admin-key scopes and the audit log.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{pause, request, request_with_body, tiers_and_app, FakeUpstream},
    openapi::Conformance,
};
use serde_json::{json, Value};

/// The shared tiers and pool, and one route.
fn config(upstream: &FakeUpstream) -> String {
    tiers_and_app(upstream.addr) + "\n[[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n"
}

#[test]
fn limits_are_shown_and_reset_by_admins_only_and_metrics_count_requests() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let (client_id, key) = gateway.create_client("bronze", &[]);
    let admin_key = gateway.create_key_with("gold", &["--admin"]);
    let reader_key = gateway.create_key_with("gold", &["--admin", "--scopes", "admin:read"]);
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

/// The admin API with one admin key, checked against its own OpenAPI
/// document on every answer.
struct Api<'a> {
    gateway: &'a Gateway,
    key: String,
    spec: Conformance,
}

impl Api<'_> {
    /// `method path` with `body`; `template` names the documented path.
    fn call(&self, method: &str, path: &str, template: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.key.clone(), method, path, template, body)
    }

    fn call_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        template: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let auth = format!("Bearer {key}");
        let text = body.map_or(String::new(), |b| b.to_string());
        let reply = request_with_body(
            self.gateway.admin.unwrap(),
            method,
            path,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            &text,
        );
        let value = reply.json();
        self.spec.check(method, template, reply.status, &value);
        (reply.status, value)
    }
}

const ONE: &str = "/v1/management/api-clients/{id}";

fn wait_for_status(gateway: &Gateway, key: &str, status: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if gateway.get("/api/x", &[("x-api-key", key)]).status == status {
            return;
        }
        assert!(Instant::now() < deadline, "never got {status}");
        pause(Duration::from_millis(100));
    }
}

#[test]
fn the_client_lifecycle_through_the_api_matches_its_openapi_document() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let bootstrap = |extra: &[&str]| {
        let mut args = vec!["keys", "bootstrap", "--json", "--config"];
        let config = gateway.config.display().to_string();
        args.push(&config);
        args.extend_from_slice(extra);
        gateway.cli(&args, &[])
    };
    let first = bootstrap(&[]);
    assert!(first.status.success(), "{first:?}");
    let admin_key = serde_json::from_slice::<Value>(&first.stdout).unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let again = bootstrap(&[]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("admin client exists"));
    assert!(bootstrap(&["--force"]).status.success());
    let reader = gateway.create_key_with("gold", &["--admin", "--scopes", "admin:read"]);
    let plain = gateway.create_key("gold");
    let gateway = gateway.start();
    let doc = gateway.admin_get("/v1/management/openapi.json", &[]).json();
    let api = Api {
        gateway: &gateway,
        key: admin_key,
        spec: Conformance::new(doc),
    };
    let list = "/v1/management/api-clients";

    // Create: the key is in force when the answer arrives.
    let (status, created) = api.call(
        "POST",
        list,
        list,
        Some(json!({ "name": "svc", "tier": "bronze", "scopes": ["read"] })),
    );
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["api_key"].as_str().unwrap().to_owned();
    let one = format!("{list}/{id}");
    let reply = gateway.get("/api/x", &[("x-api-key", &key)]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-ratelimit-limit"), Some("3"));

    let (status, page) = api.call("GET", &format!("{list}?tier=bronze&limit=10"), list, None);
    assert_eq!(status, 200);
    assert_eq!(page["total"], 1);
    assert_eq!(page["items"][0]["id"], id.as_str());
    let (_, shown) = api.call("GET", &one, ONE, None);
    assert!(shown.get("api_key").is_none(), "a key is shown only once");
    assert_eq!(shown["keys"].as_array().unwrap().len(), 1);

    // Update: a tier change applies to the next request.
    let (status, _) = api.call("PATCH", &one, ONE, Some(json!({ "tier": "gold" })));
    assert_eq!(status, 200);
    let reply = gateway.get("/api/x", &[("x-api-key", &key)]);
    assert_eq!(reply.header("x-ratelimit-limit"), Some("1000"));

    // Limits read and reset, as in the CLI test.
    let limits = format!("{one}/limits");
    let template = "/v1/management/api-clients/{id}/limits";
    assert_eq!(api.call("GET", &limits, template, None).0, 200);
    assert_eq!(
        api.call("DELETE", &limits, template, None).1["remaining"],
        1000
    );

    // Rotate with grace: both keys work, then only the new one.
    let (status, rotated) = api.call(
        "POST",
        &format!("{one}/rotate"),
        "/v1/management/api-clients/{id}/rotate",
        Some(json!({ "grace_seconds": 2 })),
    );
    assert_eq!(status, 200, "{rotated}");
    let new_key = rotated["api_key"].as_str().unwrap().to_owned();
    assert_ne!(new_key, key);
    assert_eq!(
        gateway.get("/api/x", &[("x-api-key", &new_key)]).status,
        200
    );
    assert_eq!(gateway.get("/api/x", &[("x-api-key", &key)]).status, 200);
    wait_for_status(&gateway, &key, 401, Duration::from_secs(6));
    assert_eq!(
        gateway.get("/api/x", &[("x-api-key", &new_key)]).status,
        200
    );

    // Expiry: a client made with a one-second ttl stops working by itself.
    let (_, short) = api.call(
        "POST",
        list,
        list,
        Some(json!({ "name": "short", "tier": "gold", "ttl": 1 })),
    );
    let short_key = short["api_key"].as_str().unwrap().to_owned();
    assert_eq!(
        gateway.get("/api/x", &[("x-api-key", &short_key)]).status,
        200
    );
    wait_for_status(&gateway, &short_key, 401, Duration::from_secs(5));

    // Refusals, each as documented.
    let bad_tier = api.call(
        "POST",
        list,
        list,
        Some(json!({ "name": "x", "tier": "platinum" })),
    );
    assert_eq!(bad_tier.0, 400);
    assert!(bad_tier.1["message"].as_str().unwrap().contains("platinum"));
    assert_eq!(api.call_as(&reader, "GET", &one, ONE, None).0, 200);
    assert_eq!(
        api.call_as(&reader, "PATCH", &one, ONE, Some(json!({}))).0,
        403
    );
    assert_eq!(api.call_as(&plain, "GET", list, list, None).0, 403);
    assert_eq!(api.call_as("gk_nope", "GET", list, list, None).0, 401);

    // Delete revokes every key at once.
    let (status, _) = api.call("DELETE", &one, ONE, None);
    assert_eq!(status, 200);
    assert_eq!(
        gateway.get("/api/x", &[("x-api-key", &new_key)]).status,
        401
    );
    assert_eq!(api.call("GET", &one, ONE, None).0, 404);
    // Reloading the unchanged file (tests/reload.rs covers the rest).
    let reload = "/v1/reload";
    assert_eq!(api.call("POST", reload, reload, None).0, 200);
    assert_eq!(api.call_as(&reader, "POST", reload, reload, None).0, 403);
    // The `gateway top` snapshot (tests/top.rs covers what is in it).
    let (status, top) = api.call_as(&reader, "GET", "/v1/top", "/v1/top", None);
    assert_eq!(status, 200, "{top}");
    assert!(top["now_ns"].as_u64() > Some(0), "{top}");
    assert_eq!(api.spec.unexercised(), Vec::<String>::new());

    // The audit log: every change, who made it, never a key.
    let audit = std::fs::read_to_string(gateway.state_dir.join("audit.log")).unwrap();
    let entries: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .filter(|e| e["client_id"] == id.as_str())
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["create", "update", "limits.reset", "rotate", "delete"]
    );
    assert!(entries
        .iter()
        .all(|e| e["actor"].as_str().unwrap().starts_with("cl_")));
    for secret in [&key, &new_key, &short_key, &api.key] {
        assert!(
            !audit.contains(secret.as_str()),
            "a key leaked into the audit log"
        );
    }
}

#[test]
fn revocation_is_in_force_when_the_api_answers_even_under_load() {
    let upstream = FakeUpstream::start(None);
    // Hundreds of refused requests from one source would get it banned.
    let gateway = Gateway::builder(&(config(&upstream) + "\n[guard]\nmode = \"off\"\n"));
    let admin_key = gateway.create_key_with("gold", &["--admin"]);
    let (id, key) = gateway.create_client("gold", &[]);
    let gateway = gateway.start();
    let addr = gateway.addr;
    let stop = Arc::new(AtomicBool::new(false));
    // Two clients in a loop, bounded in count and time; each request's
    // start time and status.
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (key, stop) = (key.clone(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed)
                    && Instant::now() < deadline
                    && seen.len() < 5000
                {
                    let started = Instant::now();
                    seen.push((
                        started,
                        request(addr, "GET", "/api/x", &[("x-api-key", &key)]).status,
                    ));
                }
                seen
            })
        })
        .collect();
    pause(Duration::from_millis(300));
    let sent = Instant::now();
    let reply = request(
        gateway.admin.unwrap(),
        "DELETE",
        &format!("/v1/management/api-clients/{id}"),
        &[("authorization", &format!("Bearer {admin_key}"))],
    );
    let answered = Instant::now();
    assert_eq!(reply.status, 200);
    pause(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<(Instant, u16)> = load.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert!(
        seen.iter().any(|(at, s)| *at < sent && *s == 200),
        "no load before"
    );
    let after: Vec<u16> = seen
        .iter()
        .filter(|(at, _)| *at >= answered)
        .map(|(_, s)| *s)
        .collect();
    assert!(!after.is_empty(), "no load after the revocation");
    assert!(
        after.iter().all(|s| *s == 401),
        "served after revocation: {after:?}"
    );
    eprintln!(
        "revocation answered in {:?} with {} requests in flight around it",
        answered - sent,
        seen.len()
    );
}

#[test]
fn the_cli_does_the_same_on_the_store_and_through_the_admin_api() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let admin_key = gateway.create_key_with("gold", &["--admin"]);
    let gateway = gateway.start();
    let config = gateway.config.display().to_string();
    let url = format!("http://{}", gateway.admin.unwrap());
    let env = [("GATEWAY_ADMIN_KEY", admin_key.as_str())];
    let keys = |args: &[&str], remote: bool| -> Value {
        let mut full = vec!["keys"];
        full.extend_from_slice(args);
        full.push("--json");
        if remote {
            full.extend_from_slice(&["--admin-url", &url]);
        } else {
            full.extend_from_slice(&["--config", &config]);
        }
        let output = gateway.cli(&full, &env);
        assert!(output.status.success(), "{full:?}: {output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    };
    for remote in [false, true] {
        let created = keys(&["create", "--name", "cli", "--tier", "bronze"], remote);
        let id = created["id"].as_str().unwrap().to_owned();
        let key = created["api_key"].as_str().unwrap().to_owned();
        wait_for_status(&gateway, &key, 200, Duration::from_secs(3));
        let listed = keys(&["list", "--tier", "bronze"], remote);
        assert!(listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id.as_str()));
        assert_eq!(keys(&["show", &id], remote)["tier"], "bronze");
        assert_eq!(
            keys(&["update", &id, "--tier", "gold"], remote)["tier"],
            "gold"
        );
        let rotated = keys(&["rotate", &id, "--grace", "0s"], remote);
        let new_key = rotated["api_key"].as_str().unwrap().to_owned();
        wait_for_status(&gateway, &key, 401, Duration::from_secs(3));
        wait_for_status(&gateway, &new_key, 200, Duration::from_secs(3));
        keys(&["revoke", &id], remote);
        wait_for_status(&gateway, &new_key, 401, Duration::from_secs(3));
    }
}
