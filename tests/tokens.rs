//! The gateway as an OAuth2 issuer: client credentials (an API key) buy a
//! JWT that the gateway accepts like any issuer's (same tier and limits),
//! that `jose` from npm verifies against the published JWKS, that dies with
//! its client, and that survives a signing-key rotation; routes with
//! `upstream_identity = "jwt"` hand upstreams a gateway-signed token instead
//! of identity headers.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use gateway_tests::{
    gateway::Gateway,
    http::{pause, request_with_body, tiers_and_app, FakeUpstream, Reply},
};
use serde_json::Value;

fn config(upstream: &FakeUpstream) -> String {
    tiers_and_app(upstream.addr)
        + r#"
[[routes]]
path_prefix = "/api/"
upstream = "app"
auth = "both"

[[routes]]
path_prefix = "/rs/"
upstream = "app"
auth = "api_key"
upstream_identity = "jwt"
"#
}

fn token_request(gateway: &Gateway, headers: &[(&str, &str)], form: &str) -> Reply {
    let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    request_with_body(gateway.addr, "POST", "/oauth2/token", &all, form)
}

fn issuer(gateway: &Gateway) -> String {
    format!("http://{}", gateway.addr)
}

/// `jose` verifies `token` for `audience` via discovery and the JWKS.
fn jose_verify(gateway: &Gateway, audience: &str, token: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc");
    assert!(
        dir.join("node_modules/jose").is_dir(),
        "jose is not installed in {}: run `cargo xtask setup` (needs node and npm)",
        dir.display()
    );
    let output = Command::new("node")
        .arg("verify.mjs")
        .args([&issuer(gateway), audience, token])
        .current_dir(&dir)
        .output()
        .expect("node must be installed for the token interoperability test");
    assert!(
        output.status.success(),
        "jose refused the token: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Waits (up to 3 s: the gateway follows the store) until `bearer` is
/// refused with a 401; its message.
fn refused_within_3s(gateway: &Gateway, bearer: &str, outlived: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let reply = gateway.get("/api/x", &[("authorization", bearer)]);
        if reply.status == 401 {
            return reply.json()["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(Instant::now() < deadline, "the token outlived {outlived}");
        pause(Duration::from_millis(100));
    }
}

#[test]
fn client_credentials_buy_a_token_the_gateway_and_jose_accept() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let (id, key) = gateway.create_client("bronze", &["--scopes", "read,write"]);
    let gateway = gateway.start();

    let reply = token_request(
        &gateway,
        &[],
        &format!("grant_type=client_credentials&client_secret={key}&scope=read"),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let granted = reply.json();
    assert_eq!(granted["token_type"], "Bearer");
    assert_eq!(granted["expires_in"], 300);
    assert_eq!(granted["scope"], "read bronze");
    let token = granted["access_token"].as_str().unwrap().to_owned();

    // The gateway accepts its own token: the same client, tier and limits.
    let bearer = format!("Bearer {token}");
    let by_token = gateway.get("/api/x", &[("authorization", &bearer)]);
    assert_eq!(by_token.status, 200, "{}", by_token.body);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.header("x-client-id"), Some(id.as_str()));
    assert_eq!(seen.header("x-client-tier"), Some("bronze"));
    assert!(
        seen.header("authorization").is_none(),
        "the token is stripped"
    );
    assert_eq!(by_token.header("x-ratelimit-limit"), Some("3"));
    let by_key = gateway.get("/api/x", &[("x-api-key", &key)]);
    assert_eq!(
        by_key.header("x-ratelimit-remaining"),
        Some("1"),
        "key and token share the client's quota"
    );

    // An independent library verifies it from the published documents.
    let verified = jose_verify(&gateway, "gateway", &token);
    assert_eq!(verified["header"]["alg"], "EdDSA");
    assert_eq!(verified["payload"]["sub"], id.as_str());
    assert_eq!(verified["payload"]["iss"], issuer(&gateway));

    // HTTP Basic works too; refusals are RFC 6749 errors.
    let basic = format!("Basic {}", STANDARD.encode(format!("{id}:{key}")));
    let reply = token_request(
        &gateway,
        &[("authorization", &basic)],
        "grant_type=client_credentials",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["scope"], "read write bronze");
    let wrong = format!("Basic {}", STANDARD.encode(format!("cl_other:{key}")));
    let reply = token_request(
        &gateway,
        &[("authorization", &wrong)],
        "grant_type=client_credentials",
    );
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (401, "invalid_client".into())
    );
    let reply = token_request(
        &gateway,
        &[],
        "grant_type=client_credentials&client_secret=gk_nope",
    );
    assert_eq!(reply.status, 401);
    assert!(reply.header("www-authenticate").is_some());
    let reply = token_request(
        &gateway,
        &[],
        &format!("grant_type=password&client_secret={key}"),
    );
    assert_eq!(reply.json()["error"], "unsupported_grant_type");
    let reply = token_request(
        &gateway,
        &[],
        &format!("grant_type=client_credentials&client_secret={key}&scope=admin"),
    );
    assert_eq!(
        (reply.status, reply.json()["error"].clone()),
        (400, "invalid_scope".into())
    );
    let log = gateway.log_text();
    assert!(!log.contains(&key), "the key leaked into the log");
    assert!(!log.contains(&token), "the token leaked into the log");

    // Revoking the client revokes its tokens.
    let revoked = gateway.cli(
        &[
            "keys",
            "revoke",
            &id,
            "--config",
            &gateway.config.display().to_string(),
        ],
        &[],
    );
    assert!(revoked.status.success(), "{revoked:?}");
    let message = refused_within_3s(&gateway, &bearer, "its client");
    // Refused as revoked, not as an unknown key: a genuine token still
    // within its lifetime is not key guessing (the guard does not count it).
    assert!(message.contains("revoked"), "{message}");
}

#[test]
fn upstreams_get_a_gateway_signed_token_and_rotation_keeps_old_tokens_valid() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let (id, key) = gateway.create_client("gold", &[]);
    let gateway = gateway.start();

    assert_eq!(gateway.get("/rs/x", &[("x-api-key", &key)]).status, 200);
    let seen = &upstream.requests()[0];
    assert!(seen.header("x-client-id").is_none(), "no identity headers");
    let forwarded = seen
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .expect("the upstream got a token")
        .to_owned();
    let verified = jose_verify(&gateway, "app", &forwarded);
    assert_eq!(verified["payload"]["sub"], id.as_str());
    assert_eq!(verified["payload"]["aud"], "app");
    let lifetime =
        verified["payload"]["exp"].as_i64().unwrap() - verified["payload"]["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 60);

    let form = format!("grant_type=client_credentials&client_secret={key}");
    let old = token_request(&gateway, &[], &form).json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_kid = jose_verify(&gateway, "gateway", &old)["header"]["kid"].clone();
    let rotated = gateway.cli(
        &[
            "tokens",
            "rotate-key",
            "--config",
            &gateway.config.display().to_string(),
        ],
        &[],
    );
    assert!(rotated.status.success(), "{rotated:?}");
    let jwks = || gateway.get("/.well-known/jwks.json", &[]).json();
    let deadline = Instant::now() + Duration::from_secs(5);
    while jwks()["keys"].as_array().unwrap().len() != 2 {
        assert!(Instant::now() < deadline, "the rotation was not picked up");
        pause(Duration::from_millis(100));
    }
    let new = token_request(&gateway, &[], &form).json()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let new_kid = jose_verify(&gateway, "gateway", &new)["header"]["kid"].clone();
    assert_ne!(old_kid, new_kid);
    for token in [&old, &new] {
        let bearer = format!("Bearer {token}");
        assert_eq!(
            gateway.get("/api/x", &[("authorization", &bearer)]).status,
            200
        );
    }
    jose_verify(&gateway, "gateway", &old);
}

/// A token bought with an API key ends with that key: rotating a leaked
/// key away (no grace) ends the tokens it bought, while the client and
/// the tokens its new key buys carry on.
#[test]
fn rotating_a_key_away_ends_the_tokens_it_bought() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let (id, key) = gateway.create_client("gold", &[]);
    let gateway = gateway.start();
    let buy = |key: &str| {
        let form = format!("grant_type=client_credentials&client_secret={key}");
        let reply = token_request(&gateway, &[], &form);
        assert_eq!(reply.status, 200, "{}", reply.body);
        format!("Bearer {}", reply.json()["access_token"].as_str().unwrap())
    };
    let old = buy(&key);
    assert_eq!(
        gateway.get("/api/x", &[("authorization", &old)]).status,
        200
    );

    let config = gateway.config.display().to_string();
    let rotated = gateway.cli(
        &[
            "keys", "rotate", &id, "--grace", "0s", "--config", &config, "--json",
        ],
        &[],
    );
    assert!(rotated.status.success(), "{rotated:?}");
    let rotated: Value = serde_json::from_slice(&rotated.stdout).unwrap();
    let new_key = rotated["api_key"].as_str().unwrap().to_owned();
    let message = refused_within_3s(&gateway, &old, "its key");
    // Its key is gone (no grace): refused as revoked, not as guessing.
    assert!(message.contains("revoked"), "{message}");
    let seen = upstream.requests().len();

    // The client goes on with its new key and the tokens it buys.
    let new = buy(&new_key);
    assert_eq!(
        gateway.get("/api/x", &[("authorization", &new)]).status,
        200
    );
    assert_eq!(upstream.requests().len(), seen + 1);
}
