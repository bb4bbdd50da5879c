//! The token endpoint (`POST /oauth2/token`) under attack (found by an
//! attack on the binary): a form that stops coming held its connection for
//! ever, so clients with no credentials could fill the connection cap; a
//! field given twice let the last one win; its error told whether a key id
//! exists, which the proxy and the admin API do not; a client's scope spelt
//! like a tier read as that tier to a gateway taking tiers from scopes.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{forged_key, Gateway},
    http::{request_with_body, tiers_and_app, FakeUpstream, Reply},
};

fn config(upstream: &FakeUpstream) -> String {
    format!(
        "[limits]\nrequest_timeout = \"1s\"\n\n{}\n[[routes]]\npath_prefix = \"/api/\"\n\
         upstream = \"app\"\nauth = \"both\"\n",
        tiers_and_app(upstream.addr)
    )
}

fn token_request(gateway: &Gateway, form: &str) -> Reply {
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    request_with_body(gateway.addr, "POST", "/oauth2/token", &headers, form)
}

#[test]
fn a_token_request_whose_form_stops_coming_is_answered_408_and_closed() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream)).start();
    let mut stream = TcpStream::connect_timeout(&gateway.addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream
        .write_all(
            b"POST /oauth2/token HTTP/1.1\r\nhost: gw\r\n\
              content-type: application/x-www-form-urlencoded\r\ncontent-length: 8000\r\n\r\n\
              grant_type=client_credentials&",
        )
        .unwrap();
    let sent = Instant::now();
    let mut answer = Vec::new();
    // Everything until the gateway closes (or the 15 s read timeout).
    let _ = stream.read_to_end(&mut answer);
    let waited = sent.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {waited:?}: {answer:?}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    assert!(upstream.requests().is_empty());
}

#[test]
fn a_token_form_with_a_field_given_twice_is_refused() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let (_, key) = gateway.create_client("bronze", &["--scopes", "read"]);
    let other = gateway.create_key("gold");
    let gateway = gateway.start();
    for form in [
        format!("grant_type=password&grant_type=client_credentials&client_secret={key}"),
        format!("grant_type=client_credentials&client_secret={other}&client_secret={key}"),
        format!("grant_type=client_credentials&client_secret={key}&scope=read&scope=gold"),
    ] {
        let reply = token_request(&gateway, &form);
        assert_eq!(reply.status, 400, "{form}: {}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_request", "{form}");
        assert!(reply.json().get("access_token").is_none(), "{form}");
    }
    // The same fields once each buy a token.
    let form = format!("grant_type=client_credentials&client_secret={key}");
    assert_eq!(token_request(&gateway, &form).status, 200);
}

#[test]
fn the_token_endpoint_does_not_tell_whether_a_key_id_exists() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let key = gateway.create_key("bronze");
    let gateway = gateway.start();
    let known = forged_key(&key[3..15]);
    let unknown = forged_key("AAAAAAAAAAAA");
    let answers: Vec<Reply> = [&known, &unknown]
        .iter()
        .map(|secret| {
            token_request(
                &gateway,
                &format!("grant_type=client_credentials&client_secret={secret}"),
            )
        })
        .collect();
    for reply in &answers {
        assert_eq!(reply.status, 401, "{}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_client");
    }
    assert_eq!(
        answers[0].json()["error_description"],
        answers[1].json()["error_description"],
        "a known key id is told apart from an unknown one"
    );
    assert_eq!(answers[0].json()["error_description"], "invalid_key");
}

#[test]
fn a_scope_spelt_like_a_tier_is_refused_when_a_client_is_made() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let config = gateway.config.display().to_string();
    let create = |scopes: &str| {
        gateway.cli(
            &[
                "keys", "create", "--name", "app", "--tier", "bronze", "--scopes", scopes,
                "--config", &config,
            ],
            &[],
        )
    };
    for (scopes, why) in [
        ("read,gold", "scope \"gold\" is the name of a tier"),
        (
            "read gold",
            "scope \"read gold\": a scope is one or more printable",
        ),
        ("read,bad\"quote", "a scope is one or more printable"),
    ] {
        let output = create(scopes);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{scopes}: created");
        assert!(stderr.contains(why), "{scopes}: {stderr}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("gk_"));
    }
    let output = create("read,orders:write");
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn the_admin_api_refuses_a_scope_spelt_like_a_tier() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let admin_key = gateway.create_key_with("gold", &["--admin"]);
    let (id, _) = gateway.create_client("bronze", &["--scopes", "read"]);
    let gateway = gateway.start();
    let admin = gateway.admin.unwrap();
    let auth = format!("Bearer {admin_key}");
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    let created = request_with_body(
        admin,
        "POST",
        "/v1/management/api-clients",
        &headers,
        r#"{"name":"bronzy","tier":"bronze","scopes":["read","gold"]}"#,
    );
    assert_eq!(created.status, 400, "{}", created.body);
    assert!(
        created.body.contains("is the name of a tier"),
        "{}",
        created.body
    );
    let updated = request_with_body(
        admin,
        "PATCH",
        &format!("/v1/management/api-clients/{id}"),
        &headers,
        r#"{"scopes":["read","GOLD"]}"#,
    );
    assert_eq!(updated.status, 400, "{}", updated.body);
    let shown = gateway.admin_get(
        &format!("/v1/management/api-clients/{id}"),
        &[("authorization", &auth)],
    );
    assert_eq!(
        shown.json()["scopes"],
        serde_json::json!(["read"]),
        "{}",
        shown.body
    );
}

/// A client stored with a scope that only later became a tier's name (here
/// made on the store with the default tiers, then served with a tier
/// `platinum`) gets tokens, for itself and for upstreams, without it, and
/// cannot ask for it.
#[test]
fn a_stored_scope_that_names_a_tier_is_left_out_of_tokens() {
    let upstream = FakeUpstream::start(None);
    let body = config(&upstream).replace(
        "[[routes]]",
        "[[tiers]]\nname = \"platinum\"\nrequests = 5000\n\n[[routes]]\npath_prefix = \"/up/\"\n\
         upstream = \"app\"\nauth = \"api_key\"\nupstream_identity = \"jwt\"\n\n[[routes]]",
    );
    let gateway = Gateway::builder(&body);
    let store = gateway
        .config
        .with_file_name("keys.db")
        .display()
        .to_string();
    let created = gateway.cli(
        &[
            "keys",
            "create",
            "--name",
            "old",
            "--tier",
            "bronze",
            "--scopes",
            "read,platinum",
            "--store",
            &store,
            "--json",
        ],
        &[],
    );
    assert!(created.status.success(), "{created:?}");
    let created: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    let key = created["api_key"].as_str().unwrap().to_owned();
    let gateway = gateway.start();

    let form = format!("grant_type=client_credentials&client_secret={key}");
    let reply = token_request(&gateway, &form);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["scope"], "read bronze");
    let minted = claims(reply.json()["access_token"].as_str().unwrap());
    assert_eq!(minted["scope"], "read bronze", "{minted}");
    let asked = token_request(&gateway, &format!("{form}&scope=platinum"));
    assert_eq!(asked.status, 400, "{}", asked.body);
    assert_eq!(asked.json()["error"], "invalid_scope");

    assert_eq!(gateway.get("/up/x", &[("x-api-key", &key)]).status, 200);
    let seen = upstream.requests();
    let bearer = seen.last().unwrap().headers["authorization"].clone();
    let upstream_token = claims(bearer.strip_prefix("Bearer ").unwrap());
    assert_eq!(upstream_token["scope"], "read bronze", "{upstream_token}");
}

/// A JWT's claims, unverified (the gateway verified them).
fn claims(token: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&json).unwrap()
}
