//! Reloading the configuration (SIGHUP, `POST /v1/reload`, `gateway
//! reload`) end to end: traffic on keep-alive and new connections sees no
//! error through 20 reloads, half of them invalid; a changed tier limit is
//! in force at once while an unchanged tier keeps its limiter state;
//! listeners are added and removed; invalid files are refused naming the
//! key path, and the CLI exits non-zero on them; a refused reload leaves
//! the kernel's maps as they were, and a gateway draining after a restart
//! refuses reloads; each route reaches its own pool, before and after a
//! reload that swaps two routes' pools.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

#[path = "reload/support.rs"]
mod support;

#[path = "reload/listeners.rs"]
mod listeners;

#[path = "reload/files.rs"]
mod files;

#[path = "reload/kernel.rs"]
mod kernel;

#[path = "reload/draining.rs"]
mod draining;

#[path = "reload/routes.rs"]
mod routes;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{get_from, pause, FakeUpstream},
};
use support::{hangup, load_config, reload, ConfigFile, KeepAlive};

#[test]
fn traffic_on_kept_and_new_connections_sees_no_error_through_twenty_reloads() {
    let upstream = FakeUpstream::start(None);
    let body = load_config(&upstream, "/v0/");
    let builder = Gateway::builder(&body).capture_stderr();
    let key = builder.create_key("gold");
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let gateway = builder.start();
    let file = ConfigFile::of(&gateway, &body);

    // The client: one request on a kept-alive connection, one on a new
    // connection, until stopped (bounded: 20,000 requests, 120 s).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, ok, errors, key, addr) = (
            stop.clone(),
            ok.clone(),
            errors.clone(),
            key.clone(),
            gateway.addr,
        );
        thread::spawn(move || {
            let mut kept = KeepAlive::open(addr).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            let headers = [("x-api-key", key.as_str())];
            let mut failures = Vec::new();
            for i in 0..10_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let target = format!("/api/{i}");
                let kept_status = kept.get(&target, &headers);
                let new_status =
                    get_from(addr.ip(), addr, &target, &headers, Duration::from_secs(5))
                        .map(|reply| reply.status);
                for status in [kept_status, new_status] {
                    match status {
                        Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            failures.push(format!("{target}: {other:?}"));
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }
            failures
        })
    };
    let progress = |since: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while ok.load(Ordering::Relaxed) < since + 10 {
            assert!(Instant::now() < deadline, "the client made no progress");
            pause(Duration::from_millis(5));
        }
    };

    let mut refused_paths = Vec::new();
    for round in 0..20u32 {
        progress(ok.load(Ordering::Relaxed));
        let valid = round % 2 == 0;
        if valid {
            file.write(&load_config(&upstream, &format!("/v{}/", round + 1)));
        } else {
            // routes[1] names an upstream that does not exist.
            file.write(&load_config(&upstream, "/v0/").replacen(
                "path_prefix = \"/v0/\"\nupstream = \"app\"",
                "path_prefix = \"/v0/\"\nupstream = \"nowhere\"",
                1,
            ));
        }
        // Half through the admin API, half by SIGHUP.
        if round % 4 < 2 {
            let reply = reload(&gateway, &admin_key);
            if valid {
                assert_eq!(reply.status, 200, "{}", reply.body);
                assert_eq!(reply.json()["changed"], serde_json::json!(["routes"]));
            } else {
                assert_eq!(reply.status, 422, "{}", reply.body);
                refused_paths.push(reply.json()["message"].as_str().unwrap().to_owned());
            }
        } else {
            let outcome = hangup(&gateway);
            match valid {
                true => assert!(outcome.contains("configuration reloaded"), "{outcome}"),
                false => {
                    assert!(outcome.contains("reload refused"), "{outcome}");
                    refused_paths.push(outcome);
                }
            }
        }
    }
    progress(ok.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().unwrap();

    assert_eq!(errors.load(Ordering::Relaxed), 0, "{failures:?}");
    assert!(failures.is_empty(), "{failures:?}");
    let ok = ok.load(Ordering::Relaxed);
    eprintln!("{ok} requests answered through 20 reloads, half of them on new connections");
    // At least 10 between reloads (the rounds wait for them).
    assert!(ok >= 10 * 21, "{ok} requests answered");
    // The upstream saw every answered request, once.
    let seen = upstream.requests();
    assert_eq!(seen.len() as u64, ok);
    assert!(seen.iter().all(|s| s.target.starts_with("/api/")));
    // Every refusal named the key path, as check-config does.
    assert_eq!(refused_paths.len(), 10);
    for refusal in &refused_paths {
        assert!(refusal.contains("routes[1].upstream"), "{refusal}");
    }
    let check = gateway.cli(&["check-config", gateway.config.to_str().unwrap()], &[]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("routes[1].upstream"));
    // The last valid file (round 18) is in force: its route serves, older ones 404.
    let get = |path: &str| gateway.get(path, &[("x-api-key", &key)]).status;
    assert_eq!(
        (get("/v19/x"), get("/v17/x"), get("/v0/x")),
        (200, 404, 404)
    );
}

/// Tiers whose limits the test changes; a window of an hour, so nothing
/// refills while it runs.
fn tier_config(upstream: &FakeUpstream, bronze: u32, gold: u32) -> String {
    format!(
        "[[tiers]]\nname = \"bronze\"\nrequests = {bronze}\nwindow = \"1h\"\n\n\
         [[tiers]]\nname = \"silver\"\nrequests = 3\nwindow = \"1h\"\n\n\
         [[tiers]]\nname = \"gold\"\nrequests = {gold}\nwindow = \"1h\"\n\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n",
        upstream.addr
    )
}

#[test]
fn a_changed_tier_limit_is_in_force_and_an_unchanged_tier_keeps_its_state() {
    let upstream = FakeUpstream::start(None);
    let body = tier_config(&upstream, 3, 1000);
    let builder = Gateway::builder(&body);
    let (bronze, silver, gold) = (
        builder.create_key("bronze"),
        builder.create_key("silver"),
        builder.create_key("gold"),
    );
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let gateway = builder.start();
    let file = ConfigFile::of(&gateway, &body);
    let statuses = |key: &str, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| gateway.get("/api/x", &[("x-api-key", key)]).status)
            .collect()
    };

    // Before: silver spends its whole quota, bronze one of 3, gold 3 of 1000.
    assert_eq!(statuses(&silver, 4), [200, 200, 200, 429]);
    assert_eq!(statuses(&bronze, 1), [200]);
    assert_eq!(statuses(&gold, 3), [200, 200, 200]);

    // Bronze raised to 6 an hour, gold lowered to 5; silver unchanged.
    file.write(&tier_config(&upstream, 6, 5));
    let reply = reload(&gateway, &admin_key);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["changed"], serde_json::json!(["tiers"]));

    // Silver's state survived: still refused.
    assert_eq!(statuses(&silver, 1), [429]);
    // Bronze: 1 spent of 6, so 5 more; gold: 3 spent of 5, so 2 more.
    assert_eq!(statuses(&bronze, 6), [200, 200, 200, 200, 200, 429]);
    assert_eq!(statuses(&gold, 3), [200, 200, 429]);
    let limited = gateway.get("/api/x", &[("x-api-key", &gold)]);
    assert_eq!(limited.header("x-ratelimit-limit"), Some("5"));
    // The upstream saw exactly the allowed requests.
    assert_eq!(upstream.requests().len(), 3 + 1 + 3 + 5 + 2);
}

#[test]
fn gateway_reload_exits_non_zero_naming_the_key_and_warns_of_restart_keys() {
    let upstream = FakeUpstream::start(None);
    let body = load_config(&upstream, "/v0/");
    let builder = Gateway::builder(&body);
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let client_key = builder.create_key("gold");
    let gateway = builder.start();
    let file = ConfigFile::of(&gateway, &body);
    let url = format!("http://{}", gateway.admin.unwrap());
    let cli = |key: &str| {
        let output = gateway.cli(
            &["reload", "--admin-url", &url],
            &[("GATEWAY_ADMIN_KEY", key)],
        );
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (
            output.status.code(),
            text(&output.stdout),
            text(&output.stderr),
        )
    };

    // Nothing changed: exit 0.
    let (code, out, _) = cli(&admin_key);
    assert_eq!(code, Some(0));
    assert!(out.contains("nothing changed"), "{out}");

    // Invalid: exit 1 with check-config's message; the old routes serve.
    file.write(&body.replace("rate_limit = false", "rate_limit = \"no\""));
    let (code, _, err) = cli(&admin_key);
    assert_eq!(code, Some(1));
    assert!(err.contains("routes[0].rate_limit"), "{err}");
    assert_eq!(
        gateway.get("/v0/x", &[("x-api-key", &client_key)]).status,
        200
    );

    // Not an admin key: refused, exit 1.
    file.write(&load_config(&upstream, "/v1/"));
    let (code, _, err) = cli(&client_key);
    assert_eq!(code, Some(1));
    assert!(err.contains("403"), "{err}");
    assert_eq!(
        gateway.get("/v1/x", &[("x-api-key", &client_key)]).status,
        404
    );

    // A key read only at start: applied without it, named, exit 0.
    file.write(&(load_config(&upstream, "/v1/") + "\n[xdp]\ninterface = \"eth9\"\n"));
    let (code, out, err) = cli(&admin_key);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("changed routes"), "{out}");
    assert!(
        err.contains("xdp.interface") && err.contains("restart"),
        "{err}"
    );
    assert_eq!(
        gateway.get("/v1/x", &[("x-api-key", &client_key)]).status,
        200
    );
    let reply = reload(&gateway, &admin_key);
    assert_eq!(
        reply.json()["restart_required"],
        serde_json::json!(["xdp.interface"])
    );
    assert_eq!(reply.json()["changed"], serde_json::json!([]));
}
