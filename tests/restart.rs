//! Restarts without refused connections: a new `gateway run` on the same
//! config and state takes the listening sockets over from the running one,
//! which on SIGTERM/SIGQUIT stops accepting, lets requests in flight
//! finish up to `limits.drain_timeout`, closes its idle connections and
//! exits.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{signal_and_wait, Gateway},
    http::{pause, tiers_and_app, FakeUpstream},
};

/// Bounds every wait in this file.
const WITHIN: Duration = Duration::from_secs(20);

/// A tier no client loop here can exhaust, and `/app/` for its keys.
fn config(upstream: SocketAddr, drain: &str) -> String {
    format!(
        "{}\n[[tiers]]\nname = \"unhurried\"\nrequests = 1000000\n\n\
         [[routes]]\npath_prefix = \"/app/\"\nupstream = \"app\"\nauth = \"api_key\"\n\n\
         [limits]\ndrain_timeout = \"{drain}\"\n",
        tiers_and_app(upstream)
    )
}

/// What a client loop saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    refused: AtomicUsize,
    failed: AtomicUsize,
    /// Request ids answered 200.
    answered: Mutex<BTreeSet<String>>,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, counter: &AtomicUsize, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        self.errors.lock().unwrap().push(what);
    }
}

/// One GET on `stream` (kept alive); whether the server said it closes.
fn get(
    stream: &mut TcpStream,
    addr: SocketAddr,
    key: &str,
    id: &str,
) -> std::io::Result<(u16, bool)> {
    write!(
        stream,
        "GET /app/{id} HTTP/1.1\r\nhost: {addr}\r\nx-api-key: {key}\r\n\r\n"
    )?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut length, mut closes) = (0, false);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap_or(0);
        }
        closes |= line == "connection: close";
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, closes))
}

/// Requests until `stop` (at most `max`): on one kept-alive connection
/// (reconnecting only when the server says it closes), or on a new
/// connection each time.
fn client_loop(
    addr: SocketAddr,
    key: String,
    name: &'static str,
    keep_alive: bool,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    max: usize,
) {
    let deadline = Instant::now() + WITHIN * 2;
    let mut connection: Option<TcpStream> = None;
    for n in 0..max {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        let id = format!("{name}-{n}");
        let fresh = connection.is_none();
        let mut stream = match connection.take() {
            Some(stream) => stream,
            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(WITHIN)).unwrap();
                    stream
                }
                Err(error) => {
                    tally.fail(&tally.refused, format!("{id}: connect: {error}"));
                    continue;
                }
            },
        };
        match get(&mut stream, addr, &key, &id) {
            Ok((200, closes)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                tally.answered.lock().unwrap().insert(id);
                if keep_alive && !closes {
                    connection = Some(stream);
                }
            }
            Ok((status, _)) => tally.fail(&tally.failed, format!("{id}: status {status}")),
            // Reset before a byte of answer on a new connection: it sat in
            // the backlog of a listening socket that was closed.
            Err(error) if fresh && error.kind() == std::io::ErrorKind::ConnectionReset => {
                tally.fail(&tally.refused, format!("{id}: {error}"))
            }
            Err(error) => tally.fail(&tally.failed, format!("{id}: {error}")),
        }
        // Kept-alive loops pace themselves; new connections come as fast
        // as they are answered, so some always wait in an accept queue.
        if keep_alive {
            pause(Duration::from_millis(5));
        }
    }
}

/// Waits (bounded) until `done` holds.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        pause(Duration::from_millis(10));
    }
}

#[test]
fn a_client_loop_across_a_restart_sees_no_refused_connection_and_no_failed_request() {
    let upstream = FakeUpstream::start(None);
    let builder = Gateway::builder(&config(upstream.addr, "10s")).capture_stderr();
    let key = builder.create_key("unhurried");
    let mut gateway = builder.start();
    let addr = gateway.addr;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = [
        ("keepalive-a", true),
        ("keepalive-b", true),
        ("fresh-a", false),
        ("fresh-b", false),
        ("fresh-c", false),
        ("fresh-d", false),
    ]
    .into_iter()
    .map(|(name, keep_alive)| {
        let (key, tally, stop) = (key.clone(), tally.clone(), stop.clone());
        thread::spawn(move || client_loop(addr, key, name, keep_alive, tally, stop, 1000))
    })
    .collect();
    let served = |n: usize| {
        let start = tally.ok.load(Ordering::Relaxed);
        wait_until("requests to be served", || {
            tally.ok.load(Ordering::Relaxed) >= start + n
                || tally.failed.load(Ordering::Relaxed) > 0
        });
    };
    served(100);

    // Twice: the second restart takes over sockets the first one inherited.
    for _ in 0..2 {
        // The new gateway takes the sockets over while the old one serves.
        let mut old = gateway.start_successor();
        assert!(
            gateway
                .stderr_text()
                .contains("took over the listening sockets"),
            "{}",
            gateway.stderr_text()
        );
        served(100);
        let status =
            signal_and_wait(&mut old, libc::SIGTERM, WITHIN).expect("the old gateway exits");
        assert!(status.success(), "the old gateway exited with {status}");
        served(100);
    }
    stop.store(true, Ordering::Relaxed);
    for handle in loops {
        handle.join().unwrap();
    }

    let errors = tally.errors.lock().unwrap().clone();
    eprintln!(
        "across the restart: {} answered, {} refused, {} failed",
        tally.ok.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        tally.refused.load(Ordering::Relaxed),
        0,
        "refused: {errors:?}"
    );
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "failed: {errors:?}"
    );
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(ok >= 500, "{ok} requests answered");
    // The upstream saw every answered request exactly once, and nothing else.
    let seen: Vec<String> = upstream
        .requests()
        .iter()
        .map(|seen| seen.target.trim_start_matches("/app/").to_owned())
        .collect();
    assert_eq!(
        seen.len(),
        ok,
        "upstream saw {} requests for {ok} answers",
        seen.len()
    );
    let unique: BTreeSet<String> = seen.into_iter().collect();
    assert_eq!(&unique, &*tally.answered.lock().unwrap());
    // The newest process served part of the loop, not all of it.
    let new_served = gateway
        .access_log()
        .iter()
        .filter(|line| {
            line["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/app/"))
        })
        .count();
    assert!(
        new_served > 0 && new_served < ok,
        "the new gateway served {new_served} of {ok}"
    );
    // The new gateway goes on serving alone, keys and all.
    assert_eq!(
        gateway.get("/app/after", &[("x-api-key", &key)]).status,
        200
    );
}

/// An upstream that holds every answer until released: (address, how many
/// requests arrived, release). Answers 200 "held" with `connection: close`.
fn holding_upstream() -> (SocketAddr, Arc<AtomicUsize>, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let arrived = Arc::new(AtomicUsize::new(0));
    let (release, released) = mpsc::channel::<()>();
    let count = arrived.clone();
    thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        stream.set_read_timeout(Some(WITHIN)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end().is_empty() {
                break;
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
        // Until released, or for as long as the test may take.
        let _ = released.recv_timeout(WITHIN * 3);
        let mut stream = stream;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nheld");
    });
    (addr, arrived, release)
}

/// A gateway, its held request's outcome (status, whether the connection
/// closes), and what releases the upstream's answer.
type Held = (
    Gateway,
    thread::JoinHandle<std::io::Result<(u16, bool)>>,
    mpsc::Sender<()>,
);

/// Starts a gateway to a holding upstream and sends it one request that
/// the upstream holds.
fn holding(drain: &str) -> Held {
    let (upstream, arrived, release) = holding_upstream();
    let builder = Gateway::builder(&config(upstream, drain)).capture_stderr();
    let key = builder.create_key("unhurried");
    let gateway = builder.start();
    let addr = gateway.addr;
    let request = thread::spawn(move || {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(WITHIN * 2))?;
        get(&mut stream, addr, &key, "slow")
    });
    wait_until("the upstream to hold the request", || {
        arrived.load(Ordering::Relaxed) == 1
    });
    (gateway, request, release)
}

/// Waits (bounded) until `addr` refuses connections: the listener closed.
fn wait_until_refused(addr: SocketAddr) {
    wait_until("the listener to close", || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err()
    });
}

#[test]
fn a_request_in_flight_completes_during_the_drain() {
    let (mut gateway, request, release) = holding("30s");
    let mut process = gateway.take_child();
    let pid = libc::pid_t::try_from(process.id()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // No successor: once it stops accepting, its port refuses.
    wait_until_refused(gateway.addr);
    assert!(
        process.try_wait().unwrap().is_none(),
        "the gateway exited with a request in flight"
    );
    release.send(()).unwrap();
    let (status, closes) = request
        .join()
        .unwrap()
        .expect("the held request is answered");
    assert_eq!(status, 200);
    assert!(
        closes,
        "a response during the drain says the connection closes"
    );
    let status = signal_and_wait(&mut process, 0, WITHIN).expect("the drained gateway exits");
    assert!(status.success(), "exited with {status}");
    assert!(gateway.stderr_text().contains("draining connections"));
    assert!(!gateway.stderr_text().contains("drain_timeout passed"));
}

#[test]
fn a_request_past_the_drain_timeout_is_cut_and_the_gateway_exits() {
    let (mut gateway, request, _release) = holding("1s");
    let mut process = gateway.take_child();
    // The upstream holds the answer far longer than the drain allows.
    let status = signal_and_wait(&mut process, libc::SIGQUIT, WITHIN)
        .expect("the gateway exits at its drain deadline");
    assert!(status.success(), "exited with {status}");
    assert!(
        request.join().unwrap().is_err(),
        "the held request's connection is cut"
    );
    assert!(
        gateway.stderr_text().contains("drain_timeout passed"),
        "{}",
        gateway.stderr_text()
    );
}

/// Reads one HTTP/2 frame: (type, flags, stream, payload).
fn read_frame(stream: &mut TcpStream) -> std::io::Result<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head)?;
    let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; length];
    stream.read_exact(&mut payload)?;
    Ok((head[3], head[4], id, payload))
}

const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

#[test]
fn idle_connections_are_closed_by_the_drain_http2_with_goaway() {
    let upstream = FakeUpstream::start(None);
    let builder = Gateway::builder(&config(upstream.addr, "30s")).capture_stderr();
    let key = builder.create_key("unhurried");
    let mut gateway = builder.start();
    let addr = gateway.addr;
    // HTTP/1.1: one answered request, then idle on a kept-alive connection.
    let mut http1 = TcpStream::connect(addr).unwrap();
    http1.set_read_timeout(Some(WITHIN)).unwrap();
    assert_eq!(get(&mut http1, addr, &key, "h1").unwrap(), (200, false));
    // h2c (prior knowledge): GET / on stream 1, answered (a 404 here).
    let mut http2 = TcpStream::connect(addr).unwrap();
    http2.set_read_timeout(Some(WITHIN)).unwrap();
    http2
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    http2
        .write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
        .unwrap();
    // HEADERS, END_STREAM | END_HEADERS, stream 1: GET, http, / (HPACK static).
    http2
        .write_all(&[0, 0, 3, HEADERS, 0x5, 0, 0, 0, 1, 0x82, 0x86, 0x84])
        .unwrap();
    let answered = (0..20).any(|_| {
        let (kind, flags, id, _) = read_frame(&mut http2).unwrap();
        if kind == SETTINGS && flags & ACK == 0 {
            http2
                .write_all(&[0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0])
                .unwrap();
        }
        kind == HEADERS && id == 1
    });
    assert!(answered, "no answer on stream 1");

    let mut process = gateway.take_child();
    let pid = libc::pid_t::try_from(process.id()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // HTTP/2: GOAWAY, a PING (answered, as clients do), the final GOAWAY
    // naming stream 1 the last processed, then the connection closes.
    let mut goaways = Vec::new();
    for _ in 0..20 {
        let Ok((kind, flags, _, payload)) = read_frame(&mut http2) else {
            break;
        };
        match kind {
            GOAWAY => goaways.push(payload),
            PING if flags & ACK == 0 => {
                http2.write_all(&[0, 0, 8, PING, ACK, 0, 0, 0, 0]).unwrap();
                http2.write_all(&payload).unwrap();
            }
            _ => {}
        }
    }
    let last = goaways
        .last()
        .expect("a GOAWAY before the connection closes");
    assert_eq!(last.len(), 8, "{last:?}");
    assert_eq!(
        u32::from_be_bytes(last[0..4].try_into().unwrap()),
        1,
        "last stream"
    );
    assert_eq!(
        u32::from_be_bytes(last[4..8].try_into().unwrap()),
        0,
        "NO_ERROR"
    );
    // HTTP/1.1: the idle connection is closed.
    let mut byte = [0u8; 1];
    assert_eq!(http1.read(&mut byte).unwrap(), 0, "closed by the gateway");
    // Nothing was left in flight: the gateway exits without waiting out
    // drain_timeout's 30 s.
    let status = signal_and_wait(&mut process, 0, WITHIN).expect("the drained gateway exits");
    assert!(status.success(), "exited with {status}");
    assert!(!gateway.stderr_text().contains("drain_timeout passed"));
    assert_eq!(
        upstream.requests().len(),
        1,
        "the upstream saw the HTTP/1.1 request"
    );
}
