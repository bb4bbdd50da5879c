//! `gateway top` against a gateway serving traffic: on a pseudo-terminal
//! (util-linux `script`) the screen shows the route's live request count
//! and rate, the busy client among the busiest, and a ban with its reason;
//! `q` quits and restores the terminal. `--once --json` shows the same.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{Read, Write},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{gateway_bin, Gateway},
    http::{get_from, pause, tiers_and_app, FakeUpstream},
};
use serde_json::Value;

const GUESSER: &str = "127.0.0.2";

#[test]
fn top_shows_live_rates_busiest_clients_and_bans() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        "{}\n[guard]\nauth_failures = 3\nauth_failure_ban = \"300s\"\n\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n",
        tiers_and_app(upstream.addr)
    ));
    let (client_id, key) = gateway.create_client("gold", &[]);
    let admin_key = gateway.create_key_with("gold", &["--admin", "--scopes", "admin:read"]);
    let gateway = gateway.start();

    // A ban: a second loopback address guessing keys.
    let guesser = GUESSER.parse().unwrap();
    let banned = (0..20).any(|i| {
        let reply = get_from(
            guesser,
            gateway.addr,
            "/api/x",
            &[("x-api-key", &format!("gk_guess{i}_x"))],
            Duration::from_secs(2),
        );
        reply.map_or(true, |r| r.status == 403)
    });
    assert!(banned, "the guessing source was never banned");

    // Traffic from the busy client while `top` watches (bounded: 60 s).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, addr, key) = (stop.clone(), gateway.addr, key.clone());
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let local = "127.0.0.1".parse().unwrap();
            let mut served = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let reply = get_from(
                    local,
                    addr,
                    "/api/x",
                    &[("x-api-key", &key)],
                    Duration::from_secs(2),
                );
                served += usize::from(reply.is_ok_and(|r| r.status == 200));
                pause(Duration::from_millis(20));
            }
            served
        })
    };
    let admin_url = format!("http://{}", gateway.admin.unwrap());

    // --once --json: one view with rates over a second.
    let once = Command::new(gateway_bin())
        .args(["top", "--once", "--json", "--admin-url", &admin_url])
        .env("GATEWAY_ADMIN_KEY", &admin_key)
        .output()
        .unwrap();
    assert!(once.status.success(), "{once:?}");
    let view: Value = serde_json::from_slice(&once.stdout).unwrap();
    let route = view["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tier"] == "gold" && r["requests"].as_u64() > Some(0))
        .unwrap_or_else(|| panic!("no gold route with requests: {view}"));
    assert!(route["per_sec"].as_f64() > Some(0.0), "{view}");
    let client = view["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == client_id.as_str())
        .unwrap_or_else(|| panic!("{client_id} not among the busiest: {view}"));
    assert_eq!(client["tier"], "gold");
    assert!(client["remaining"].as_u64() < Some(1000), "{view}");
    let ban = view["bans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["target"] == GUESSER)
        .unwrap_or_else(|| panic!("no ban of {GUESSER}: {view}"));
    assert_eq!(ban["reason"], "auth_failures");
    assert!(ban["seconds_left"].as_f64() > Some(200.0), "{view}");
    assert!(view["xdp"].is_null(), "no XDP program here: {view}");
    assert_eq!(view["upstreams"][0]["usable"], 1);

    // The live screen on a pseudo-terminal.
    let command = format!(
        "stty cols 200 rows 60; exec {} top --admin-url {admin_url}",
        gateway_bin().display()
    );
    let mut top = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("GATEWAY_ADMIN_KEY", &admin_key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let screen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let (mut out, screen) = (top.stdout.take().unwrap(), screen.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = out.read(&mut buf) {
                screen
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    // A live rate for the route, the client and the ban with its reason.
    let shows = |text: &str| {
        let rate = text.lines().chain(text.split("\x1b[")).any(|part| {
            part.contains("/api/") && part.contains("gold") && {
                let numbers: Vec<f64> = (part.split_whitespace())
                    .filter_map(|w| w.parse().ok())
                    .collect();
                // REQUESTS then REQ/S.
                numbers.len() >= 2 && numbers[0] > 0.0 && numbers[1] > 0.0
            }
        });
        rate && text.contains(&client_id)
            && text.contains(GUESSER)
            && text.contains("auth_failures")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !shows(&screen.lock().unwrap()) {
        let status = top.try_wait().unwrap();
        assert!(
            status.is_none() && Instant::now() < deadline,
            "the screen never showed it ({status:?}): {}",
            screen.lock().unwrap()
        );
        pause(Duration::from_millis(200));
    }
    top.stdin.as_mut().unwrap().write_all(b"q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = top.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "q did not quit");
        pause(Duration::from_millis(100));
    };
    reader.join().unwrap();
    assert!(status.success(), "{status:?}: {}", screen.lock().unwrap());
    let text = screen.lock().unwrap().clone();
    // The alternate screen was left and the cursor shown again.
    assert!(
        text.contains("\x1b[?1049l"),
        "terminal not restored: {text:?}"
    );
    assert!(
        text.contains("\x1b[?25h"),
        "cursor not shown again: {text:?}"
    );

    stop.store(true, Ordering::Relaxed);
    assert!(traffic.join().unwrap() > 0);
    assert!(!upstream.requests().is_empty());
}
