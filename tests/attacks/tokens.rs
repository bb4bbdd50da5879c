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
