//! HTTP/2 streams that hold the gateway up: responses the client grants no
//! window (reset alone after `request_timeout`, the connection dropped past
//! its reset budget) and request bodies that stop coming. Frames are
//! hand-written, as in [`super::http2`].
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{tiers_and_app, FakeUpstream},
};

use super::http2::{
    frame, hpack, DATA, END_HEADERS, END_STREAM, HEADERS, RST_STREAM, WINDOW_UPDATE,
};

/// A client that opens streams with no flow-control window
/// (`SETTINGS_INITIAL_WINDOW_SIZE` 0) and never grants one writes nothing,
/// so its socket never fills: each stream's response, and the upstream
/// connection behind it, was held for ever. With a window of 1 byte, a
/// response that fits one upstream read was handed to h2 whole and
/// forgotten, its bytes held behind the window. Either way the gateway
/// resets each such stream (RST_STREAM, CANCEL) once its response has
/// waited about `request_timeout`, as nginx does, and frees the upstream
/// connection behind it; the client's connection, which it keeps busy
/// with other requests (`CONNECT`s the gateway answers itself), goes on
/// and is answered after the resets.
#[test]
fn http2_streams_given_no_window_are_reset_alone() {
    for (window, body) in [(0u8, 1 << 20), (1, 4000)] {
        let upstream = FakeUpstream::start(None);
        let gateway = one_second_timeout(&upstream);
        upstream.set_body(&"x".repeat(body));
        let held = held_streams(gateway.addr, window, 3);
        let case = format!("window {window}, body {body}");
        // The responses began (their HEADERS need no window)...
        assert_eq!(held.headers, 3, "{case}");
        assert_eq!(upstream.requests().len(), 4, "{case}");
        // ...and each stream was reset: the rule fires after one to one and
        // a half timeouts; the bound asserted is only "not before one, and
        // within 10 s", loose on purpose on a shared machine.
        assert_eq!(held.resets.len(), 3, "{case}: resets {:?}", held.resets);
        for (id, at, code) in &held.resets {
            assert!(
                *at >= Duration::from_secs(1),
                "{case}: {id} reset after {at:?}"
            );
            assert_eq!(*code, CANCEL, "{case}: {id}'s error code");
        }
        // The stream given a window, beside them, was answered whole.
        assert_eq!(held.live, (body, true), "{case}: the live stream");
        // The connection itself was kept and still answers.
        assert!(
            held.answered_after,
            "{case}: nothing answered after the resets"
        );
        assert_eq!(held.ended, None, "{case}: the connection was closed");
        // The upstream connections behind the 1 MB answers, which the
        // gateway had not read to their end, were let go (a 4,000-byte
        // answer was read whole, and its connection may be kept).
        // The live stream's, read whole, may be kept.
        if body > 1 << 16 {
            let deadline = Instant::now() + Duration::from_secs(5);
            while upstream.open_connections() > 1 && Instant::now() < deadline {
                gateway_tests::http::pause(Duration::from_millis(20));
            }
            assert_eq!(upstream.open_connections(), 1, "{case}");
        }
    }
}

/// A connection whose streams were reset for stalling more than 16 times
/// is dropped whole at its next stall: a client cycling stalled streams
/// would otherwise hold an upstream connection per stream on one
/// connection for ever. 16 at once are reset and the connection goes on;
/// 17 at once drop it, and every upstream connection behind them is let go.
#[test]
fn an_http2_connection_past_its_reset_budget_is_dropped() {
    for (count, dropped) in [(16, false), (17, true)] {
        let upstream = FakeUpstream::start(None);
        let gateway = one_second_timeout(&upstream);
        upstream.set_body(&"x".repeat(1 << 20));
        let held = held_streams(gateway.addr, 0, count);
        let case = format!("{count} stalled streams");
        assert_eq!(held.headers, count as usize, "{case}");
        assert_eq!(held.live, (1 << 20, true), "{case}: the live stream");
        assert_eq!(upstream.requests().len(), count as usize + 1, "{case}");
        if dropped {
            let ended = held
                .ended
                .unwrap_or_else(|| panic!("{case}: the connection was kept"));
            assert!(
                ended >= Duration::from_secs(1),
                "{case}: closed after {ended:?}"
            );
        } else {
            assert_eq!(
                held.resets.len(),
                count as usize,
                "{case}: {:?}, closed after {:?}",
                held.resets,
                held.ended
            );
            assert!(
                held.answered_after,
                "{case}: nothing answered after the resets"
            );
            assert_eq!(held.ended, None, "{case}: the connection was closed");
        }
        // Only the live stream's upstream connection, read whole, may stay.
        let deadline = Instant::now() + Duration::from_secs(5);
        while upstream.open_connections() > 1 && Instant::now() < deadline {
            gateway_tests::http::pause(Duration::from_millis(20));
        }
        assert!(upstream.open_connections() <= 1, "{case}");
    }
}

/// A gateway with a `request_timeout` of 1 s in front of `upstream`,
/// every path open.
fn one_second_timeout(upstream: &FakeUpstream) -> Gateway {
    Gateway::builder(&format!(
        "[limits]\nrequest_timeout = \"1s\"\n\n{}\n[[routes]]\npath_prefix = \"/\"\n\
         upstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream.addr)
    ))
    .start()
}

/// RST_STREAM's error code CANCEL (RFC 9113 §7).
const CANCEL: u32 = 0x8;

/// What [`held_streams`] saw.
struct Held {
    /// HEADERS frames on the held streams.
    headers: usize,
    /// Each held stream's reset: stream, when it was seen, error code.
    resets: Vec<(u32, Duration, u32)>,
    /// Whether a request sent after the three resets was answered.
    answered_after: bool,
    /// The live stream's body bytes, and whether it ended.
    live: (usize, bool),
    /// When the gateway closed the connection, if it did.
    ended: Option<Duration>,
}

/// Opens `count` `GET /big` streams (1, 3, ...) with a stream window of
/// `window` bytes and never widens it, and one more given all the window
/// it needs, sending a `CONNECT` every 300 ms meanwhile, until one sent
/// after the held streams' resets is answered, the connection closes, or
/// 10 s pass.
fn held_streams(addr: SocketAddr, window: u8, count: u32) -> Held {
    let held_ids: Vec<u32> = (0..count).map(|i| 2 * i + 1).collect();
    let live = 2 * count + 1;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = `window`.
    bytes.extend(frame(0x4, 0, 0, &[0, 0x4, 0, 0, 0, window]));
    for &id in &held_ids {
        let head = hpack(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/big"),
            (":authority", "gw"),
        ]);
        bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &head));
    }
    // The live stream: the connection's window and its own opened wide.
    let wide = 0x7fff_0000u32.to_be_bytes();
    bytes.extend(frame(WINDOW_UPDATE, 0, 0, &wide));
    let head = hpack(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/big"),
        (":authority", "gw"),
    ]);
    bytes.extend(frame(HEADERS, END_HEADERS | END_STREAM, live, &head));
    bytes.extend(frame(WINDOW_UPDATE, 0, live, &wide));
    stream.write_all(&bytes).unwrap();
    let connect = hpack(&[(":method", "CONNECT"), (":authority", "gw:443")]);
    let started = Instant::now();
    let (mut received, mut buf, mut id) = (Vec::new(), [0u8; 4096], live + 2);
    let mut held = Held {
        headers: 0,
        resets: Vec::new(),
        answered_after: false,
        live: (0, false),
        ended: None,
    };
    // The first request sent once all the held streams were reset.
    let mut after = None;
    while started.elapsed() < Duration::from_secs(10) && !held.answered_after {
        // With a window of its own: its 405's body must not stall too.
        let mut request = frame(HEADERS, END_HEADERS | END_STREAM, id, &connect);
        request.extend(frame(WINDOW_UPDATE, 0, id, &wide));
        let _ = stream.write_all(&request);
        if held.resets.len() == held_ids.len() && after.is_none() {
            after = Some(id);
        }
        id += 2;
        let deadline = Instant::now() + Duration::from_millis(300);
        let closed = loop {
            match stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break true,
            }
            if Instant::now() >= deadline {
                break false;
            }
        };
        held.live = (0, false);
        for (kind, flags, stream_id, payload) in frames(&received) {
            if kind == DATA && stream_id == live {
                held.live = (held.live.0 + payload.len(), flags & END_STREAM != 0);
            }
            let held_stream = held_ids.contains(&stream_id);
            if kind == RST_STREAM && held_stream && held.resets.iter().all(|r| r.0 != stream_id) {
                let code = payload.try_into().map_or(0, u32::from_be_bytes);
                held.resets.push((stream_id, started.elapsed(), code));
            }
            held.answered_after |= kind == HEADERS && after.is_some_and(|a| stream_id >= a);
        }
        if closed {
            held.ended = Some(started.elapsed());
            break;
        }
    }
    held.headers = frames(&received)
        .filter(|(kind, _, id, _)| *kind == HEADERS && held_ids.contains(id))
        .count();
    held
}

/// The (type, flags, stream, payload) of each whole frame in `bytes`.
fn frames(mut bytes: &[u8]) -> impl Iterator<Item = (u8, u8, u32, &[u8])> + '_ {
    std::iter::from_fn(move || {
        let len = usize::from(*bytes.first()?) << 16
            | usize::from(*bytes.get(1)?) << 8
            | usize::from(*bytes.get(2)?);
        let id = u32::from_be_bytes(bytes.get(5..9)?.try_into().ok()?) & 0x7fff_ffff;
        let (kind, flags) = (bytes[3], bytes[4]);
        let payload = bytes.get(9..9 + len)?;
        bytes = &bytes[9 + len..];
        Some((kind, flags, id, payload))
    })
}

/// An upstream that answers `200 ok` as soon as it has a request's head,
/// reads whatever else comes, and reports how long its one connection
/// stayed open (up to 30 s).
fn answers_before_the_body() -> (SocketAddr, std::sync::mpsc::Receiver<Duration>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, closed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let opened = Instant::now();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let (mut head, mut buf, mut answered) = (Vec::new(), [0u8; 8192], false);
        while opened.elapsed() < Duration::from_secs(30) {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) if !answered => {
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        answered = true;
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
                    }
                }
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = closed.send(opened.elapsed());
    });
    (addr, closed_rx)
}

/// A request body that stops coming past the read-ahead, to an upstream
/// that answered without reading it all, while the client keeps its
/// connection busy with other requests (here `CONNECT`s the gateway
/// answers itself): the upstream connection was held for ever. The body is
/// cut off once none of it comes for `request_timeout` (nginx's
/// `client_body_timeout`).
#[test]
fn an_http2_body_that_stops_coming_frees_its_upstream_connection() {
    let (upstream, closed) = answers_before_the_body();
    let gateway = Gateway::builder(&format!(
        "[limits]\nrequest_timeout = \"1s\"\n\n{}\n[[routes]]\npath_prefix = \"/\"\n\
         upstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream)
    ))
    .start();
    let mut stream = TcpStream::connect_timeout(&gateway.addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    let post = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/upload"),
        (":authority", "gw"),
        ("content-length", "1000000"),
    ]);
    bytes.extend(frame(HEADERS, END_HEADERS, 1, &post));
    // Past the 16 KiB read ahead, so the rest is streamed; then no more.
    bytes.extend(frame(DATA, 0, 1, &[b'a'; 16_000]));
    bytes.extend(frame(DATA, 0, 1, &[b'a'; 4_000]));
    stream.write_all(&bytes).unwrap();
    let connect = hpack(&[(":method", "CONNECT"), (":authority", "gw:443")]);
    let started = Instant::now();
    let mut id = 3;
    let held = loop {
        if let Ok(held) = closed.try_recv() {
            break Some(held);
        }
        if started.elapsed() > Duration::from_secs(8) {
            break None;
        }
        // Busy: a request every 300 ms, so the connection is never idle.
        let _ = stream.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, id, &connect));
        id += 2;
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf);
        gateway_tests::http::pause(Duration::from_millis(300));
    };
    let held = held.expect("the upstream connection was still open 8 s after the body stopped");
    assert!(held >= Duration::from_secs(1), "cut off after {held:?}");
}
