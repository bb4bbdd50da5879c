//! Parked connections (`limits.park_idle_after`): an idle plain HTTP/1.1
//! connection loses hyper's state and keeps its socket. What a client
//! sends across a park must be read exactly as hyper would have read it:
//! nothing lost, nothing that was a body ever taken for a request.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{pause, tiers_and_app, FakeUpstream},
};

/// Parks after 200 ms; `/open` needs nothing, `/private` an API key.
fn config(upstream: SocketAddr, park_after: &str) -> String {
    format!(
        "[limits]\npark_idle_after = \"{park_after}\"\n\n{}\n\
         [[routes]]\npath_prefix = \"/private\"\nupstream = \"app\"\nauth = \"api_key\"\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream)
    )
}

fn connect(gateway: &Gateway) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(gateway.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    BufReader::new(stream)
}

/// One response off a keep-alive connection: its status and body.
fn response(reader: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code = status.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim_end().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (code, String::from_utf8_lossy(&body).into_owned())
}

fn send(reader: &mut BufReader<TcpStream>, bytes: &[u8]) {
    reader.get_mut().write_all(bytes).unwrap();
}

/// Waits (at most 10 s) until `gateway_connections_parked_total` is at
/// least `times`.
fn parked(gateway: &Gateway, times: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if gateway.metric("gateway_connections_parked_total") >= Some(times) {
            return true;
        }
        pause(Duration::from_millis(50));
    }
    false
}

/// A connection that was answered `/one` and then parked.
fn served_then_parked(gateway: &Gateway) -> BufReader<TcpStream> {
    let mut client = connect(gateway);
    send(&mut client, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response(&mut client), (200, "upstream-ok".into()));
    assert!(parked(gateway, 1), "the idle connection was not parked");
    client
}

#[test]
fn an_idle_connection_is_parked_and_serves_its_next_request_whole() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(upstream.addr, "200ms")).start();
    let mut client = served_then_parked(&gateway);
    assert_eq!(gateway.metric("gateway_connections_parked"), Some(1));
    // Parked: the next request on the same socket is served.
    send(&mut client, b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response(&mut client), (200, "upstream-ok".into()));
    // At once half a head, which hyper reads; parked with it (hyper's
    // leftover bytes taken back), then the rest: one request, whole.
    send(&mut client, b"GET /three HTTP/1.1\r\nHost: a\r\nX-Half: ");
    assert!(parked(&gateway, 2), "not parked with half a head read");
    send(
        &mut client,
        b"two\r\n\r\nGET /four HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(response(&mut client), (200, "upstream-ok".into()));
    assert_eq!(response(&mut client), (200, "upstream-ok".into()));
    let seen = upstream.requests();
    let targets: Vec<&str> = seen.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(targets, ["/one", "/two", "/three", "/four"]);
    assert_eq!(seen[2].header("x-half"), Some("two"));
}

/// The smuggling a careless park would allow: a request refused before
/// its body was read, the connection parked while hyper still had body
/// bytes to come, and those bytes read as a new request.
#[test]
fn a_body_left_unread_is_never_read_as_a_request_after_a_park() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(upstream.addr, "200ms")).start();
    // hyper drains a plain body after the answer; one that waits for
    // `100 Continue` it does not.
    for expect in ["", "Expect: 100-continue\r\n"] {
        body_after_a_refusal(&gateway, &upstream, expect);
    }
    assert_eq!(gateway.metric("gateway_connections_parked_total"), Some(0));
}

fn body_after_a_refusal(gateway: &Gateway, upstream: &FakeUpstream, expect: &str) {
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut client = connect(gateway);
    let head = format!(
        "POST /private HTTP/1.1\r\nHost: a\r\n{expect}Content-Length: {}\r\n\r\n",
        smuggled.len()
    );
    send(&mut client, head.as_bytes());
    assert_eq!(response(&mut client).0, 401, "{expect}");
    // Three park periods with the body still to come.
    pause(Duration::from_millis(600));
    let _ = client.get_mut().write_all(smuggled);
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(
        !String::from_utf8_lossy(&rest).contains("upstream-ok"),
        "the body was answered as a request ({expect}): {}",
        String::from_utf8_lossy(&rest)
    );
    assert!(
        upstream.requests().iter().all(|s| s.target != "/smuggled"),
        "the body reached the upstream as a request ({expect})"
    );
}

#[test]
fn a_connection_that_sent_a_body_stays_with_hyper_and_keeps_working() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(upstream.addr, "200ms")).start();
    let mut client = connect(&gateway);
    send(
        &mut client,
        b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(response(&mut client), (200, "upstream-ok".into()));
    pause(Duration::from_millis(600));
    send(&mut client, b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response(&mut client), (200, "upstream-ok".into()));
    let targets: Vec<String> = upstream.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/form", "/after"]);
    assert_eq!(gateway.metric("gateway_connections_parked_total"), Some(0));
}

#[test]
fn parking_off_keeps_every_connection_with_hyper() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(upstream.addr, "0s")).start();
    let mut client = connect(&gateway);
    send(&mut client, b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response(&mut client), (200, "upstream-ok".into()));
    pause(Duration::from_millis(600));
    send(&mut client, b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(response(&mut client), (200, "upstream-ok".into()));
    assert_eq!(gateway.metric("gateway_connections_parked_total"), Some(0));
    assert_eq!(upstream.requests().len(), 2);
}

/// HTTP/2 with prior knowledge starts a connection; after HTTP/1.1
/// requests its preface is a bad request, parked or not.
#[test]
fn an_http2_preface_after_a_park_is_not_taken_for_http2() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(upstream.addr, "200ms")).start();
    let mut client = served_then_parked(&gateway);
    send(&mut client, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        rest.starts_with("HTTP/1.1 4") || rest.starts_with("HTTP/1.1 5") || rest.is_empty(),
        "{rest}"
    );
    assert_eq!(upstream.requests().len(), 1);
}

/// A parked connection whose next head arrives is served, not parked
/// again before hyper has read it (its idle time counts from that head,
/// not from its last response): each park is counted once.
#[test]
fn a_resumed_connection_is_not_parked_again_before_its_request_is_served() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(upstream.addr, "1s")).start();
    let mut client = connect(&gateway);
    for round in 1..=3u64 {
        send(&mut client, b"GET /again HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(response(&mut client), (200, "upstream-ok".into()));
        // Within the second that follows no park is due.
        assert_eq!(
            gateway.metric("gateway_connections_parked_total"),
            Some(round - 1),
            "parked more often than it was idle, round {round}"
        );
        assert!(parked(&gateway, round), "not parked in round {round}");
    }
    assert_eq!(upstream.requests().len(), 3);
}

/// A drain does not wait for parked connections: SIGTERM with one parked
/// ends the process well within `limits.drain_timeout` (30 s), and the
/// parked client sees its connection closed unanswered.
#[test]
fn a_drain_closes_parked_connections_at_once() {
    let upstream = FakeUpstream::start(None);
    let mut gateway = Gateway::builder(&config(upstream.addr, "200ms")).start();
    let mut client = served_then_parked(&gateway);
    assert!(gateway.stop(), "the gateway did not drain within 10 s");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(rest.is_empty(), "answered after the drain: {rest:?}");
    assert_eq!(upstream.requests().len(), 1);
}

/// Unparked, hyper reads every later head under `limits.request_timeout`,
/// timed from the answer before it: a client pausing under the timeout
/// between requests is served however long the connection lives, and a
/// head that stalls is closed unanswered, never forwarded.
#[test]
fn unparked_each_later_head_gets_the_whole_timeout_and_a_stalled_one_is_closed() {
    let upstream = FakeUpstream::start(None);
    let text =
        config(upstream.addr, "0s").replace("[limits]\n", "[limits]\nrequest_timeout = \"1s\"\n");
    let gateway = Gateway::builder(&text).start();
    let mut client = connect(&gateway);
    // Four requests 600 ms apart: 1.8 s on one connection, more than the
    // timeout, each head within it of the answer before.
    for round in 0..4 {
        if round > 0 {
            pause(Duration::from_millis(600));
        }
        send(
            &mut client,
            format!("GET /kept/{round} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            response(&mut client),
            (200, "upstream-ok".into()),
            "round {round}"
        );
    }
    send(&mut client, b"GET /stalled HTTP/1.1\r\nHost: a\r\n");
    let mut rest = Vec::new();
    let closed = client.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "the stalled head's connection stayed open: {closed:?}"
    );
    assert!(rest.is_empty(), "answered a half head: {rest:?}");
    let targets: Vec<String> = upstream
        .requests()
        .into_iter()
        .map(|seen| seen.target)
        .collect();
    assert_eq!(targets, ["/kept/0", "/kept/1", "/kept/2", "/kept/3"]);
    assert_eq!(gateway.metric("gateway_connections_parked_total"), Some(0));
}
