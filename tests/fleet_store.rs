//! Fleet mode's shared key store end to end: three gateways on one real
//! PostgreSQL (a throwaway server on a unix socket). A key made on one
//! node works on the others; a revocation on one reaches the others (the
//! time from node A's answer to the first 401 on B and C is printed, not
//! asserted); a node without its database serves keys from memory and
//! refuses admin writes with 503, and follows changes again once the
//! database is back; `gateway store copy` moves a SQLite store's keys;
//! bad store URLs are refused naming `store.url`, never the password.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{gateway_bin, Gateway},
    http::{pause, request, request_with_body, tiers_and_app, FakeUpstream},
    postgres::Postgres,
};
use serde_json::{json, Value};

#[path = "fleet_store/hostile.rs"]
mod hostile;

/// Longest wait for anything to propagate (the contract is 100 ms; the
/// machine is shared and noisy, so the tests only bound it generously).
const PROPAGATION: Duration = Duration::from_secs(10);

/// The tiers, pool and one route; the guard off, since polling with a
/// revoked key looks like guessing keys from 127.0.0.1.
fn config(upstream: &FakeUpstream) -> String {
    tiers_and_app(upstream.addr)
        + "\n[[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\n[guard]\nmode = \"off\"\n"
}

/// `gateway store migrate --url URL`, checked.
fn migrate(url: &str) -> String {
    let output = Command::new(gateway_bin())
        .args(["store", "migrate", "--url", url])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// A gateway on the shared store at `url`.
fn node(upstream: &FakeUpstream, url: &str) -> Gateway {
    Gateway::builder(&config(upstream))
        .shared_store(url)
        .capture_stderr()
        .start()
}

/// The first admin key, made with the CLI on `node`'s (shared) store;
/// returned once `node` has heard of it.
fn bootstrap(node: &Gateway) -> String {
    let config = node.config.to_str().unwrap();
    let output = node.cli(&["keys", "bootstrap", "--json", "--config", config], &[]);
    assert!(output.status.success(), "{output:?}");
    let value: Value = serde_json::from_slice(&output.stdout).unwrap();
    let key = value["api_key"].as_str().unwrap().to_owned();
    let start = Instant::now();
    while admin(node, "GET", "", &key, &Value::Null).0 != 200 {
        assert!(
            start.elapsed() < PROPAGATION,
            "the node never heard of its admin key"
        );
        pause(Duration::from_millis(5));
    }
    key
}

fn admin(
    node: &Gateway,
    method: &str,
    path: &str,
    key: &str,
    body: &Value,
) -> (u16, Value, Option<String>) {
    let bearer = format!("Bearer {key}");
    let reply = request_with_body(
        node.admin.unwrap(),
        method,
        &format!("/v1/management/api-clients{path}"),
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        &body.to_string(),
    );
    let retry = reply.header("retry-after").map(str::to_owned);
    let value = serde_json::from_str(&reply.body).unwrap_or(Value::Null);
    (reply.status, value, retry)
}

fn status(node: &Gateway, key: &str) -> u16 {
    request(node.addr, "GET", "/api/x", &[("x-api-key", key)]).status
}

/// Polls `node` with `key` until it answers `want`; how long that took,
/// or `None` after `within`.
fn until_status(node: &Gateway, key: &str, want: u16, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    for _ in 0..100_000 {
        if status(node, key) == want {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        pause(Duration::from_millis(1));
    }
    None
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[test]
fn keys_and_revocations_reach_every_node() {
    let Some(postgres) = Postgres::start("fleet_store::keys_and_revocations_reach_every_node")
    else {
        return;
    };
    let url = postgres.url();
    assert!(migrate(&url).contains("from version 0 to 1"));
    assert!(migrate(&url).contains("up to date"));
    let upstream = FakeUpstream::start(None);
    let nodes: Vec<Gateway> = (0..3).map(|_| node(&upstream, &url)).collect();
    let admin_key = bootstrap(&nodes[0]);
    let (a, others) = (&nodes[0], &nodes[1..]);

    let mut propagation = Vec::new();
    for round in 0..20 {
        let (created, client, _) = admin(
            a,
            "POST",
            "",
            &admin_key,
            &json!({"name": format!("c{round}"), "tier": "gold"}),
        );
        assert_eq!(created, 201, "{client}");
        let key = client["api_key"].as_str().unwrap().to_owned();
        let id = client["id"].as_str().unwrap().to_owned();
        assert_eq!(status(a, &key), 200, "in force on A when A answers");
        for node in others {
            assert!(
                until_status(node, &key, 200, PROPAGATION).is_some(),
                "a key made on A works on every node"
            );
        }
        let seen = upstream.requests().len();
        let (deleted, _, _) = admin(a, "DELETE", &format!("/{id}"), &admin_key, &Value::Null);
        let answered = Instant::now();
        assert_eq!(deleted, 200);
        // Each node polled by its own thread: the first 401 on each.
        let waits: Vec<Option<Duration>> = std::thread::scope(|scope| {
            let polls: Vec<_> = others
                .iter()
                .map(|node| {
                    let key = &key;
                    scope.spawn(move || {
                        until_status(node, key, 401, PROPAGATION).map(|_| answered.elapsed())
                    })
                })
                .collect();
            polls.into_iter().map(|p| p.join().unwrap()).collect()
        });
        for wait in waits {
            propagation.push(wait.expect("a key revoked on A is refused on every node"));
        }
        assert_eq!(status(a, &key), 401);
        // Nothing reached the upstream with the revoked key after the 401s.
        let after = upstream.requests().len();
        assert!(after >= seen, "the upstream saw the key's requests before");
    }
    propagation.sort();
    eprintln!(
        "FIGURE revocation propagation A answer -> first 401 on B and C: n={} p50={:?} p99={:?} max={:?} (uptime: {})",
        propagation.len(),
        percentile(&propagation, 0.5),
        percentile(&propagation, 0.99),
        propagation.last().unwrap(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    // The store holds the revocations: no client but the admin, no key text.
    assert_eq!(postgres.sql("SELECT count(*) FROM api_clients"), "1");
    assert_eq!(postgres.sql("SELECT count(*) FROM api_keys"), "1");
}

#[test]
fn a_node_without_its_database_serves_from_memory_and_refuses_writes() {
    let Some(mut postgres) = Postgres::start(
        "fleet_store::a_node_without_its_database_serves_from_memory_and_refuses_writes",
    ) else {
        return;
    };
    let url = postgres.url();
    migrate(&url);
    let upstream = FakeUpstream::start(None);
    let a = node(&upstream, &url);
    let b = node(&upstream, &url);
    // C refuses keys once it has been without the database for a second.
    let c = Gateway::builder(&config(&upstream)).shared_store(&url);
    let text = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(&c.config, text + "max_staleness = \"1s\"\n").unwrap();
    let c = c.capture_stderr().start();
    let admin_key = bootstrap(&a);
    let (_, kept, _) = admin(
        &a,
        "POST",
        "",
        &admin_key,
        &json!({"name": "kept", "tier": "gold"}),
    );
    let kept_key = kept["api_key"].as_str().unwrap().to_owned();
    let (_, doomed, _) = admin(
        &a,
        "POST",
        "",
        &admin_key,
        &json!({"name": "doomed", "tier": "gold"}),
    );
    let doomed_key = doomed["api_key"].as_str().unwrap().to_owned();
    let doomed_id = doomed["id"].as_str().unwrap().to_owned();
    assert!(until_status(&b, &kept_key, 200, PROPAGATION).is_some());
    assert!(until_status(&b, &doomed_key, 200, PROPAGATION).is_some());
    assert!(until_status(&c, &kept_key, 200, PROPAGATION).is_some());

    postgres.kill();
    let before = upstream.requests().len();
    for _ in 0..5 {
        assert_eq!(status(&b, &kept_key), 200, "served from memory");
    }
    assert_eq!(upstream.requests().len(), before + 5, "and forwarded");
    let (refused, body, retry) = admin(
        &a,
        "PATCH",
        &format!("/{doomed_id}"),
        &admin_key,
        &json!({"disabled": true}),
    );
    assert_eq!(refused, 503, "{body}");
    assert_eq!(body["error"], "store_unavailable");
    assert!(retry.is_some(), "503 says when to retry");
    assert_eq!(status(&b, &doomed_key), 200, "nothing changed");
    let stale = request(c.addr, "GET", "/api/x", &[("x-api-key", &kept_key)]);
    let waited = until_status(&c, &kept_key, 503, PROPAGATION);
    assert!(
        waited.is_some(),
        "C refuses keys after max_staleness ({stale:?})"
    );
    let refused = request(c.addr, "GET", "/api/x", &[("x-api-key", &kept_key)]);
    assert_eq!(refused.json()["error"], "key_store_unavailable");
    assert!(refused.header("retry-after").is_some());
    let before = upstream.requests().len();
    assert_eq!(status(&b, &kept_key), 200, "B still serves from memory");
    assert_eq!(upstream.requests().len(), before + 1);

    postgres.restart();
    // The pools reconnect on their own: a write goes through again.
    let start = Instant::now();
    let mut deleted = 0;
    while start.elapsed() < PROPAGATION && deleted != 200 {
        deleted = admin(
            &a,
            "DELETE",
            &format!("/{doomed_id}"),
            &admin_key,
            &Value::Null,
        )
        .0;
        pause(Duration::from_millis(50));
    }
    assert_eq!(deleted, 200, "admin writes work once the database is back");
    assert!(
        until_status(&b, &doomed_key, 401, PROPAGATION).is_some(),
        "changes flow to B again"
    );
    assert_eq!(status(&b, &kept_key), 200);
    assert!(
        until_status(&c, &kept_key, 200, PROPAGATION).is_some(),
        "C checks keys again"
    );

    // The notification connections killed under the nodes: still caught.
    postgres.sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'gateway'");
    let (_, revoked, _) = admin(
        &a,
        "DELETE",
        &format!("/{}", kept["id"].as_str().unwrap()),
        &admin_key,
        &Value::Null,
    );
    assert!(
        revoked.get("deleted").is_some() || revoked["error"] == "store_unavailable",
        "{revoked}"
    );
    let start = Instant::now();
    while start.elapsed() < PROPAGATION && status(&b, &kept_key) != 401 {
        // A write refused while the pool's connections were dying is retried.
        admin(
            &a,
            "DELETE",
            &format!("/{}", kept["id"].as_str().unwrap()),
            &admin_key,
            &Value::Null,
        );
        pause(Duration::from_millis(50));
    }
    assert_eq!(
        status(&b, &kept_key),
        401,
        "revoked after the connections were killed"
    );
}

#[test]
fn store_copy_moves_sqlite_keys_to_postgres() {
    let Some(postgres) = Postgres::start("fleet_store::store_copy_moves_sqlite_keys_to_postgres")
    else {
        return;
    };
    let url = postgres.url();
    let upstream = FakeUpstream::start(None);
    let sqlite = Gateway::builder(&config(&upstream));
    let key = sqlite.create_key("gold");
    let other = sqlite.create_key_with("bronze", &["--scopes", "read,write"]);
    let sqlite_file = sqlite.state_dir.parent().unwrap().join("keys.db");
    let copy = |to: &str| {
        Command::new(gateway_bin())
            .args(["store", "copy", "--from"])
            .arg(format!("sqlite:{}", sqlite_file.display()))
            .args(["--to", to])
            .output()
            .unwrap()
    };
    // Not migrated yet: refused, saying what to do.
    let refused = copy(&format!("postgres:{url}"));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("gateway store migrate"),
        "{refused:?}"
    );
    migrate(&url);
    let copied = copy(&format!("postgres:{url}"));
    assert!(copied.status.success(), "{copied:?}");
    let out = String::from_utf8_lossy(&copied.stdout);
    assert!(
        out.contains("2 clients, 2 keys") && out.contains("match"),
        "{out}"
    );
    assert_eq!(postgres.sql("SELECT count(*) FROM api_keys"), "2");
    let stored =
        postgres.sql("SELECT string_agg(encode(secret_hash, 'hex') || key_id, ',') FROM api_keys");
    for secret in [&key, &other] {
        assert!(
            !stored.contains(&secret[secret.len() - 20..]),
            "no key text is stored"
        );
    }
    // Again: the target is not empty, so nothing is copied twice.
    assert!(!copy(&format!("postgres:{url}")).status.success());

    let shared = node(&upstream, &url);
    assert_eq!(status(&shared, &key), 200);
    assert_eq!(status(&shared, &other), 200);
    assert_eq!(upstream.requests().len(), 2);
    assert_eq!(status(&shared, "gk_nope"), 401);
}

/// `gateway run` on `config` that must fail: its stderr (killed after a
/// bounded wait if it does not).
fn run_fails(config: &std::path::Path) -> String {
    let mut child = Command::new(gateway_bin())
        .args(["run", "--no-xdp", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("gateway run did not refuse its store");
        }
        pause(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn hostile_store_urls_are_refused_naming_the_key_and_never_the_password() {
    let dir = gateway_tests::fs::TempDir::new("store-url");
    for (url, expect) in [
        ("mysql://gw:hunter2@db/keys", "store.url"),
        ("postgres://gw:hunter2@127.0.0.1:1/keys", "store.url"),
        (
            "postgres://gw:hunter2@192.0.2.1:5432/keys?connect_timeout=1",
            "store.url",
        ),
    ] {
        let config = dir.write(
            "gateway.toml",
            &format!(
                "state_dir = \"{}\"\n[admin]\nenabled = false\n[[listeners]]\naddress = \"127.0.0.1:0\"\n[store]\nurl = \"{url}\"\n",
                dir.path().join("state").display()
            ),
        );
        let stderr = run_fails(&config);
        assert!(stderr.contains(expect), "{url}: {stderr}");
        assert!(!stderr.contains("hunter2"), "{url}: {stderr}");
        let migrate = Command::new(gateway_bin())
            .args(["store", "migrate", "--url", url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&migrate.stderr);
        assert!(
            !migrate.status.success() && text.contains("store.url") && !text.contains("hunter2"),
            "{text}"
        );
    }
}

#[test]
fn schemas_older_or_newer_than_the_gateway_are_refused() {
    let Some(postgres) =
        Postgres::start("fleet_store::schemas_older_or_newer_than_the_gateway_are_refused")
    else {
        return;
    };
    let url = postgres.url();
    let upstream = FakeUpstream::start(None);
    let unmigrated = Gateway::builder(&config(&upstream)).shared_store(&url);
    let stderr = run_fails(&unmigrated.config);
    assert!(stderr.contains("gateway store migrate"), "{stderr}");
    migrate(&url);
    postgres.sql("INSERT INTO gateway_schema (version, name) VALUES (99, 'from the future')");
    let stderr = run_fails(&unmigrated.config);
    assert!(
        stderr.contains("version 99") && stderr.contains("upgrade"),
        "{stderr}"
    );
    let refused = Command::new(gateway_bin())
        .args(["store", "migrate", "--url", &url])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("newer than this gateway"));
}
