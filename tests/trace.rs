//! W3C trace context end to end: what the recording upstream gets as
//! `traceparent`/`tracestate` for valid, absent and invalid incoming ones,
//! and the access log's `trace_id` (on refusals too). No privileges needed.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use gateway_tests::{
    gateway::Gateway,
    http::{tiers_and_app, FakeUpstream},
};

const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// `/open/` authenticates nothing; `/api/` takes an API key (bronze: 3 a minute).
fn config(upstream: &FakeUpstream) -> String {
    tiers_and_app(upstream.addr)
        + r#"
[[routes]]
path_prefix = "/open/"
upstream = "app"
auth = "none"

[[routes]]
path_prefix = "/api/"
upstream = "app"
"#
}

/// The four fields of a version-00 `traceparent` the gateway sent, checked
/// for form (lowercase hex, non-zero ids).
fn fields(value: &str) -> (String, String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value:?}");
    assert_eq!(parts[0], "00");
    let hex = |s: &str, len: usize| {
        assert_eq!(s.len(), len, "{value:?}");
        assert!(s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert!(s.bytes().any(|b| b != b'0'), "zero id in {value:?}");
    };
    hex(parts[1], 32);
    hex(parts[2], 16);
    assert_eq!(parts[3].len(), 2);
    (parts[1].into(), parts[2].into(), parts[3].into())
}

/// The `trace_id` of the access-log line for `path`.
fn logged_trace_id(gateway: &Gateway, path: &str) -> String {
    let line = gateway.wait_for_log(|l| l["path"] == path);
    line["trace_id"].as_str().unwrap().to_owned()
}

#[test]
fn a_valid_traceparent_is_continued_with_the_gateways_span() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream)).start();
    let reply = gateway.get(
        "/open/valid",
        &[("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE")],
    );
    assert_eq!(reply.status, 200);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let (trace, parent, flags) = fields(seen[0].header("traceparent").unwrap());
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(parent, "00f067aa0ba902b7", "the gateway is a hop");
    assert_eq!(flags, "01");
    assert_eq!(seen[0].header("tracestate"), Some("congo=t61rcWkgMzE"));
    assert_eq!(logged_trace_id(&gateway, "/open/valid"), trace);

    // Unsampled stays unsampled.
    let unsampled = VALID.replace("-01", "-00");
    gateway.get("/open/unsampled", &[("traceparent", &unsampled)]);
    let (trace, _, flags) = fields(upstream.requests()[1].header("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (&VALID[3..35], "00"));
}

#[test]
fn an_absent_or_invalid_traceparent_is_replaced_by_a_new_trace() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream)).start();
    let invalid = [
        ("absent", None),
        ("short", Some(&VALID[..54])),
        (
            "uppercase",
            Some("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"),
        ),
        (
            "zero-trace",
            Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ),
        (
            "zero-parent",
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        ),
        (
            "version-ff",
            Some("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ),
    ];
    let mut traces = Vec::new();
    for (i, (name, value)) in invalid.iter().enumerate() {
        let path = format!("/open/{name}");
        let mut headers = vec![("tracestate", "congo=t61rcWkgMzE")];
        headers.extend(value.map(|v| ("traceparent", v)));
        assert_eq!(gateway.get(&path, &headers).status, 200, "{name}");
        let seen = &upstream.requests()[i];
        let sent = seen.header("traceparent").unwrap();
        assert!(
            !sent.contains(','),
            "{name}: the invalid one went along too"
        );
        let (trace, parent, flags) = fields(sent);
        assert_ne!(trace, "4bf92f3577b34da6a3ce929d0e0e4736", "{name}");
        assert_ne!(parent, "00f067aa0ba902b7", "{name}");
        assert_eq!(flags, "01", "{name}: the gateway samples what it starts");
        assert_eq!(
            seen.header("tracestate"),
            None,
            "{name}: state without a parent"
        );
        assert_eq!(logged_trace_id(&gateway, &path), trace, "{name}");
        traces.push(trace);
    }
    traces.sort();
    traces.dedup();
    assert_eq!(traces.len(), invalid.len(), "trace ids repeat");
}

#[test]
fn refused_requests_log_a_trace_id_too() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let key = gateway.create_key("bronze");
    let gateway = gateway.start();
    let missing = gateway.get("/api/nokey", &[("traceparent", VALID)]);
    assert_eq!(missing.status, 401);
    assert_eq!(logged_trace_id(&gateway, "/api/nokey"), &VALID[3..35]);
    for _ in 0..3 {
        assert_eq!(gateway.get("/api/ok", &[("x-api-key", &key)]).status, 200);
    }
    let limited = gateway.get("/api/limited", &[("x-api-key", &key)]);
    assert_eq!(limited.status, 429);
    let line = gateway.wait_for_log(|l| l["path"] == "/api/limited");
    assert_eq!(line["status"], 429);
    let trace = line["trace_id"].as_str().unwrap();
    assert_eq!(trace.len(), 32);
    assert!(trace
        .bytes()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert_eq!(
        upstream.requests().len(),
        3,
        "refusals reached the upstream"
    );
}
