//! The shared store under attack and on a bad day: a database that hangs
//! instead of going away, notifications anyone who may connect can forge
//! or flood, a `keys.refresh` longer than `store.max_staleness`, and a
//! node past `max_staleness` asked for tokens.
use super::*;

/// A node whose version check runs every `refresh` (the base config's is
/// 100 ms), with more `[store]` lines and a `/tok/` route that takes the
/// gateway's own tokens.
fn node_with(upstream: &FakeUpstream, url: &str, refresh: &str, store: &str) -> Gateway {
    let routes = "\n[[routes]]\npath_prefix = \"/tok/\"\nupstream = \"app\"\nauth = \"both\"\n";
    let builder = Gateway::builder(&(config(upstream) + routes)).shared_store(url);
    let text = std::fs::read_to_string(&builder.config).unwrap();
    let text = text.replacen(
        "refresh = \"100ms\"",
        &format!("refresh = \"{refresh}\""),
        1,
    );
    std::fs::write(&builder.config, text + store).unwrap();
    builder.capture_stderr().start()
}

/// A new gold client made through `node`'s admin API: its id and key.
fn create(node: &Gateway, admin_key: &str, name: &str) -> (String, String) {
    let (status, client, _) = admin(
        node,
        "POST",
        "",
        admin_key,
        &json!({"name": name, "tier": "gold"}),
    );
    assert_eq!(status, 201, "{client}");
    let text = |field: &str| client[field].as_str().unwrap().to_owned();
    (text("id"), text("api_key"))
}

/// `POST /oauth2/token` with `key` as the client secret.
fn token_request(node: &Gateway, key: &str) -> gateway_tests::http::Reply {
    request_with_body(
        node.addr,
        "POST",
        "/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("grant_type=client_credentials&client_secret={key}"),
    )
}

/// Anyone who may connect to the database can `NOTIFY` the channel. A
/// forged notification must not count as a change seen: a later change
/// whose notification is lost with the node's connection is still found
/// when the node reconnects (the version check).
#[test]
fn a_forged_notification_hides_no_change_lost_with_its_connection() {
    let Some(postgres) = Postgres::start(
        "fleet_store::hostile::a_forged_notification_hides_no_change_lost_with_its_connection",
    ) else {
        return;
    };
    let url = postgres.url();
    migrate(&url);
    let upstream = FakeUpstream::start(None);
    let a = node(&upstream, &url);
    // B checks the version only when it (re)connects.
    let b = node_with(&upstream, &url, "1h", "");
    let admin_key = bootstrap(&a);
    let (x, x_key) = create(&a, &admin_key, "x");
    let (y, y_key) = create(&a, &admin_key, "y");
    assert!(until_status(&b, &x_key, 200, PROPAGATION).is_some());
    assert!(until_status(&b, &y_key, 200, PROPAGATION).is_some());

    // A change to x written without moving the version, then a
    // notification naming x: B follows it (so B has heard it).
    postgres.sql(&format!(
        "UPDATE api_clients SET disabled = true WHERE id = '{x}'"
    ));
    postgres.sql(&format!("NOTIFY gateway_keys, '{x}'"));
    assert!(
        until_status(&b, &x_key, 401, PROPAGATION).is_some(),
        "B follows a notification"
    );
    // y revoked, its notification lost with B's connection.
    postgres.sql(&format!(
        "BEGIN; UPDATE api_clients SET disabled = true WHERE id = '{y}'; \
         UPDATE store_version SET version = version + 1; COMMIT"
    ));
    postgres.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'gateway'",
    );
    assert!(
        until_status(&b, &y_key, 401, PROPAGATION).is_some(),
        "B finds the change when it reconnects: the forged notification counted for nothing"
    );
    let seen = upstream.requests().len();
    assert_eq!(status(&b, &y_key), 401);
    assert_eq!(upstream.requests().len(), seen, "nothing forwarded for y");
}

/// Half a million notifications naming no client (one `SELECT` anyone
/// who may connect can run) hold up no revocation: the node takes them
/// in bounded batches and reloads instead of reading each client.
#[test]
fn a_flood_of_notifications_holds_up_no_revocation() {
    let Some(postgres) =
        Postgres::start("fleet_store::hostile::a_flood_of_notifications_holds_up_no_revocation")
    else {
        return;
    };
    let url = postgres.url();
    migrate(&url);
    let upstream = FakeUpstream::start(None);
    let a = node(&upstream, &url);
    // Without a version check in the test's time: notifications alone.
    let b = node_with(&upstream, &url, "1h", "");
    let admin_key = bootstrap(&a);
    let (id, key) = create(&a, &admin_key, "flooded");
    assert!(until_status(&b, &key, 200, PROPAGATION).is_some());

    postgres.sql(
        "SELECT count(*) FROM (SELECT pg_notify('gateway_keys', 'cl_flood' || g) \
         FROM generate_series(1, 500000) g) AS sent",
    );
    let (deleted, _, _) = admin(&a, "DELETE", &format!("/{id}"), &admin_key, &Value::Null);
    assert_eq!(deleted, 200);
    assert!(
        until_status(&b, &key, 401, PROPAGATION).is_some(),
        "the revocation reaches B through the flood"
    );
    let seen = upstream.requests().len();
    assert_eq!(status(&b, &key), 401);
    assert_eq!(upstream.requests().len(), seen);
    // B still follows one client at a time.
    let (_, fresh) = create(&a, &admin_key, "after");
    assert!(until_status(&b, &fresh, 200, PROPAGATION).is_some());
}

/// A database that accepts connections and never answers (every
/// PostgreSQL process stopped): requests are served from memory without
/// waiting on it, admin calls answer 503 `store_unavailable` instead of
/// hanging, a node past `max_staleness` refuses tokens for stored clients
/// (minted there or presented there) as it refuses keys, and nothing a
/// refused admin call attempted is in the store afterwards.
#[test]
fn a_hung_database_stalls_no_request_and_no_admin_call() {
    let Some(postgres) = Postgres::start(
        "fleet_store::hostile::a_hung_database_stalls_no_request_and_no_admin_call",
    ) else {
        return;
    };
    let url = postgres.url();
    migrate(&url);
    let upstream = FakeUpstream::start(None);
    let a = node(&upstream, &url);
    let c = node_with(&upstream, &url, "100ms", "max_staleness = \"1s\"\n");
    let admin_key = bootstrap(&a);
    let (id, key) = create(&a, &admin_key, "steady");
    assert!(until_status(&c, &key, 200, PROPAGATION).is_some());
    let minted = token_request(&c, &key);
    assert_eq!(minted.status, 200, "{}", minted.body);
    let token = minted.json()["access_token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let with_token =
        |node: &Gateway| request(node.addr, "GET", "/tok/x", &[("authorization", &bearer)]).status;
    assert_eq!(with_token(&c), 200);

    postgres.freeze();
    let before = upstream.requests().len();
    for _ in 0..3 {
        assert_eq!(status(&a, &key), 200, "served from memory");
    }
    assert_eq!(upstream.requests().len(), before + 3);
    for (method, path, body) in [
        ("PATCH", format!("/{id}"), json!({"disabled": true})),
        (
            "POST",
            String::new(),
            json!({"name": "late", "tier": "gold"}),
        ),
        ("GET", String::new(), Value::Null),
    ] {
        let (code, body, retry) = admin(&a, method, &path, &admin_key, &body);
        assert_eq!(code, 503, "{method} {path}: {body}");
        assert_eq!(body["error"], "store_unavailable");
        assert!(retry.is_some(), "503 says when to retry");
    }
    assert!(
        until_status(&c, &key, 503, PROPAGATION).is_some(),
        "C refuses keys after max_staleness"
    );
    let before = upstream.requests().len();
    let refused = token_request(&c, &key);
    assert_eq!(refused.status, 503, "no token minted from a stale index");
    assert_eq!(refused.json()["error"], "key_store_unavailable");
    assert_eq!(with_token(&c), 503, "nor a token of a stored client taken");
    assert_eq!(upstream.requests().len(), before, "nothing forwarded");
    assert_eq!(status(&a, &key), 200, "A serves from memory all along");

    postgres.thaw();
    assert!(
        until_status(&c, &key, 200, PROPAGATION).is_some(),
        "C checks keys again"
    );
    assert_eq!(with_token(&c), 200);
    // Nothing the refused calls attempted was written.
    assert_eq!(
        postgres.sql(&format!(
            "SELECT disabled FROM api_clients WHERE id = '{id}'"
        )),
        "f"
    );
    assert_eq!(
        postgres.sql("SELECT count(*) FROM api_clients WHERE name = 'late'"),
        "0"
    );
}

/// With `keys.refresh` longer than `store.max_staleness`, a healthy
/// database must not look out of reach between two version checks.
#[test]
fn a_healthy_database_never_looks_out_of_reach() {
    let Some(postgres) =
        Postgres::start("fleet_store::hostile::a_healthy_database_never_looks_out_of_reach")
    else {
        return;
    };
    let url = postgres.url();
    migrate(&url);
    let upstream = FakeUpstream::start(None);
    let c = node_with(&upstream, &url, "5s", "max_staleness = \"1s\"\n");
    let admin_key = bootstrap(&c);
    let (_, key) = create(&c, &admin_key, "steady");
    let before = upstream.requests().len();
    // Three times max_staleness, within one keys.refresh.
    let start = Instant::now();
    let mut served = 0;
    while start.elapsed() < Duration::from_secs(3) {
        assert_eq!(status(&c, &key), 200, "after {:?}", start.elapsed());
        served += 1;
        pause(Duration::from_millis(50));
    }
    assert_eq!(upstream.requests().len(), before + served);
}

/// TLS to a database whose certificate a private CA issued (as most
/// have): refused with a message that says what to set, then trusted
/// through libpq's `sslrootcert` (`sslmode=verify-full` too); every
/// connection of the node is encrypted.
#[test]
fn a_private_ca_is_trusted_through_sslrootcert() {
    let Some((postgres, ca)) =
        Postgres::start_tls("fleet_store::hostile::a_private_ca_is_trusted_through_sslrootcert")
    else {
        return;
    };
    let store_migrate = |url: &str| {
        Command::new(gateway_bin())
            .args(["store", "migrate", "--url", url])
            .output()
            .unwrap()
    };
    // sslmode unset is `prefer`: the server offers TLS, so it is verified.
    for query in ["sslmode=require", ""] {
        let refused = store_migrate(&postgres.tcp_url(query));
        let text = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{query}: {text}");
        assert!(
            text.contains("store.url") && text.contains("sslrootcert"),
            "{query}: {text}"
        );
    }
    let ca = ca.display();
    let migrated =
        store_migrate(&postgres.tcp_url(&format!("sslmode=verify-full&sslrootcert={ca}")));
    assert!(migrated.status.success(), "{migrated:?}");
    assert_eq!(postgres.sql("SELECT max(version) FROM gateway_schema"), "1");

    let upstream = FakeUpstream::start(None);
    let url = postgres.tcp_url(&format!("sslmode=require&sslrootcert={ca}"));
    let node = node(&upstream, &url);
    let admin_key = bootstrap(&node);
    let (_, key) = create(&node, &admin_key, "encrypted");
    assert_eq!(status(&node, &key), 200);
    assert_eq!(upstream.requests().len(), 1);
    let connections = |ssl: bool| {
        postgres.sql(&format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'gateway' AND s.ssl = {ssl}"
        ))
    };
    assert_eq!(connections(false), "0", "no connection in the clear");
    assert_ne!(connections(true), "0");
}

/// An admin write that commits while reading it back fails (the keys
/// table locked by another session for longer than a call may take) is
/// answered as made, never 503: a retried create would make a second
/// client, a rotated key would be lost. The node refuses the client at
/// once and follows the store again once it can read it.
#[test]
fn a_committed_write_is_answered_as_made_when_it_cannot_be_read_back() {
    let Some(postgres) = Postgres::start(
        "fleet_store::hostile::a_committed_write_is_answered_as_made_when_it_cannot_be_read_back",
    ) else {
        return;
    };
    let url = postgres.url();
    migrate(&url);
    let upstream = FakeUpstream::start(None);
    let a = node(&upstream, &url);
    let admin_key = bootstrap(&a);
    let (id, key) = create(&a, &admin_key, "locked");
    assert_eq!(status(&a, &key), 200);

    let mut holder = postgres.spawn_sql(
        "BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT",
    );
    let held = "SELECT count(*) FROM pg_locks WHERE relation = 'api_keys'::regclass \
                AND mode = 'AccessExclusiveLock' AND granted";
    let start = Instant::now();
    while postgres.sql(held) != "1" {
        assert!(start.elapsed() < PROPAGATION, "the lock was never taken");
        pause(Duration::from_millis(20));
    }
    // The update touches no key; reading the client's keys back waits.
    let (code, body, _) = admin(
        &a,
        "PATCH",
        &format!("/{id}"),
        &admin_key,
        &json!({"disabled": true}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["disabled"], true, "{body}");
    assert_eq!(
        postgres.sql(&format!(
            "SELECT disabled FROM api_clients WHERE id = '{id}'"
        )),
        "t"
    );
    let seen = upstream.requests().len();
    assert_eq!(status(&a, &key), 401, "refused here at once");
    assert_eq!(upstream.requests().len(), seen);

    postgres.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()",
    );
    let _ = holder.wait();
    // Back in the index as the store has it: disabled, not unknown.
    let start = Instant::now();
    loop {
        let reply = request(a.addr, "GET", "/api/x", &[("x-api-key", &key)]);
        assert_eq!(reply.status, 401);
        if reply.body.contains("disabled") {
            break;
        }
        assert!(
            start.elapsed() < PROPAGATION,
            "A never read the client back: {}",
            reply.body
        );
        pause(Duration::from_millis(20));
    }
    assert_eq!(upstream.requests().len(), seen);
}

/// A database that answers but whose keys cannot be read (a column gone,
/// as a newer gateway's migration might do) counts as out of reach for
/// `store.max_staleness`: the node does not serve what it last read
/// forever.
#[test]
fn keys_that_cannot_be_read_count_as_a_lost_store() {
    let Some(postgres) =
        Postgres::start("fleet_store::hostile::keys_that_cannot_be_read_count_as_a_lost_store")
    else {
        return;
    };
    let url = postgres.url();
    migrate(&url);
    let upstream = FakeUpstream::start(None);
    let c = node_with(&upstream, &url, "100ms", "max_staleness = \"1s\"\n");
    let admin_key = bootstrap(&c);
    let (_, key) = create(&c, &admin_key, "unreadable");
    assert_eq!(status(&c, &key), 200);
    postgres.sql(
        "BEGIN; ALTER TABLE api_keys RENAME COLUMN created_at TO made_at; \
         UPDATE store_version SET version = version + 1; COMMIT",
    );
    assert!(
        until_status(&c, &key, 503, PROPAGATION).is_some(),
        "refused after max_staleness"
    );
    postgres.sql(
        "BEGIN; ALTER TABLE api_keys RENAME COLUMN made_at TO created_at; \
         UPDATE store_version SET version = version + 1; COMMIT",
    );
    assert!(until_status(&c, &key, 200, PROPAGATION).is_some());
}

/// Nodes deployed together run `gateway store migrate` at once: one
/// applies the schema, the others wait for it (advisory lock) and find
/// it up to date; none fails and nothing is applied twice.
#[test]
fn concurrent_migrations_apply_the_schema_once() {
    let Some(postgres) =
        Postgres::start("fleet_store::hostile::concurrent_migrations_apply_the_schema_once")
    else {
        return;
    };
    let url = postgres.url();
    let runs: Vec<_> = (0..4)
        .map(|_| {
            Command::new(gateway_bin())
                .args(["store", "migrate", "--url", &url])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<String> = runs
        .into_iter()
        .map(|run| {
            let output = run.wait_with_output().unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8(output.stdout).unwrap()
        })
        .collect();
    let applied = outputs
        .iter()
        .filter(|o| o.contains("from version 0"))
        .count();
    assert_eq!(applied, 1, "{outputs:?}");
    assert_eq!(postgres.sql("SELECT count(*) FROM gateway_schema"), "1");
    assert_eq!(postgres.sql("SELECT count(*) FROM store_version"), "1");
}
