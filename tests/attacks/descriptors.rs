//! Out of file descriptors: connections wait in the listen backlog that
//! the gateway cannot accept. It must neither spin on `accept` nor flood
//! its log (it did both, ~100,000 lines a second, found by an attack that
//! held HTTP/2 streams and their upstream connections open under a low
//! descriptor limit), and it must serve again once descriptors free up.
//! Connections refused over `limits.max_connections` are logged the same
//! way: a line each let any client that completes handshakes write the
//! log as fast as it connects.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{pause, tiers_and_app, FakeUpstream},
};

/// Descriptors left to the gateway past those it has open at the start.
const SPARE: u64 = 8;
/// Connections opened: more than it can accept.
const CONNECTIONS: usize = 24;
/// How long the connections are held.
const HELD: Duration = Duration::from_millis(2_500);

#[test]
fn out_of_descriptors_the_gateway_backs_off_logs_little_and_recovers() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        "[limits]\nworkers = 1\n\n{}\n[[routes]]\npath_prefix = \"/\"\n\
         upstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream.addr)
    ))
    .capture_stderr()
    .start();
    let pid = gateway.pid().unwrap();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let was = set_descriptor_limit(pid, open + SPARE);

    let held: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| TcpStream::connect_timeout(&gateway.addr, Duration::from_secs(5)).unwrap())
        .collect();
    let started = Instant::now();
    pause(HELD);
    let failures = throttled_lines(&gateway.stderr_text(), "accept failed");
    let held_for = started.elapsed();
    // At most one line a second (and one at the start): a spinning loop
    // wrote tens of thousands.
    let bound = held_for.as_secs() as usize + 2;
    assert!(
        !failures.is_empty() && failures.len() <= bound,
        "{} accept-failure lines in {held_for:?}, the first: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    // Each line counts the failures it stands for: a loop that backs off
    // 100 ms fails about ten times a second, one that spins far more.
    for (line, unlogged) in &failures {
        assert!(*unlogged <= 40, "{unlogged} failures behind: {line}");
    }

    drop(held);
    set_descriptor_limit(pid, was);
    served_again(&gateway, &upstream, "/after");
}

#[test]
fn connections_over_the_cap_are_logged_at_most_once_a_second() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        "[limits]\nworkers = 1\nmax_connections = 2\n\n{}\n[[routes]]\npath_prefix = \"/\"\n\
         upstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream.addr)
    ))
    .capture_stderr()
    .start();
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect_timeout(&gateway.addr, Duration::from_secs(5)).unwrap())
        .collect();
    pause(Duration::from_millis(200));
    let started = Instant::now();
    for _ in 0..REFUSED {
        drop(TcpStream::connect_timeout(&gateway.addr, Duration::from_secs(5)).unwrap());
        pause(Duration::from_millis(25));
    }
    pause(Duration::from_millis(200));
    let spent = started.elapsed();
    let refusals = throttled_lines(&gateway.stderr_text(), "connection limit reached");
    let bound = spent.as_secs() as usize + 2;
    assert!(
        !refusals.is_empty() && refusals.len() <= bound,
        "{} lines for {REFUSED} refused connections in {spent:?}: {refusals:?}",
        refusals.len()
    );
    // The lines account for the refusals they do not show, and for no more
    // (a line after the first counts those since it).
    let counted = (refusals.iter()).fold(0u64, |n, (_, unlogged)| {
        n.saturating_add(unlogged.saturating_add(1))
    });
    assert!(
        counted > 1 && counted <= REFUSED as u64,
        "the lines stand for {counted} refusals of {REFUSED}: {refusals:?}"
    );

    drop(held);
    served_again(&gateway, &upstream, "/after-cap");
}

/// Asserts that a GET of `path` is answered 200 from `upstream` within 5 s.
fn served_again(gateway: &Gateway, upstream: &FakeUpstream, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let reply = loop {
        let reply = gateway.get(path, &[]);
        if reply.status == 200 || Instant::now() >= deadline {
            break reply;
        }
        pause(Duration::from_millis(50));
    };
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(upstream.requests().iter().any(|seen| seen.target == path));
}

/// Connections over the cap opened, one every 25 ms: 2.5 s of them, so the
/// gateway sees refusals more than a second apart even if it stalls.
const REFUSED: usize = 100;

/// A log's lines that contain `what`, each with its `unlogged` count.
fn throttled_lines(log: &str, what: &str) -> Vec<(String, u64)> {
    log.lines()
        .filter(|line| line.contains(what))
        .map(|line| {
            let unlogged = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("unlogged="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX);
            (line.to_owned(), unlogged)
        })
        .collect()
}

/// Sets process `pid`'s soft `RLIMIT_NOFILE` to `limit` (its hard limit
/// kept), returning the soft limit it had.
fn set_descriptor_limit(pid: u32, limit: u64) -> u64 {
    let pid = libc::pid_t::try_from(pid).unwrap();
    let mut old = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a null new limit only reads the old one into `old`.
    let rc = unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit64 {
        rlim_cur: limit.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: `new` is a valid rlimit64; a null old-limit pointer is allowed.
    let rc = unsafe { libc::prlimit64(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    old.rlim_cur
}
