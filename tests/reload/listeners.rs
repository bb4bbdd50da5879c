//! Listeners added and removed, connections and requests that outlive a
//! reload, and a restart after one.
use std::{
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{pause, request, tiers_and_app, FakeUpstream},
};

use super::support::{reload, ConfigFile, KeepAlive};

#[test]
fn listeners_are_added_and_removed_and_open_connections_finish() {
    let upstream = FakeUpstream::start(None);
    let routes = tiers_and_app(upstream.addr)
        + "\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n";
    let body = routes.clone() + "\n[[listeners]]\naddress = \"127.0.0.1:0\"\n";
    let builder = Gateway::builder(&body);
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let gateway = builder.start();
    let file = ConfigFile::of(&gateway, &body);
    let second: SocketAddr = gateway.listeners[1]
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let mut kept = KeepAlive::open(second).unwrap();
    assert_eq!(kept.get("/before", &[]).unwrap(), 200);

    // The second listener goes; one on another loopback address comes.
    file.write(&(routes + "\n[[listeners]]\naddress = \"127.0.0.2:0\"\n"));
    let reply = reload(&gateway, &admin_key);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let report = reply.json();
    assert_eq!(
        report["listeners_removed"],
        serde_json::json!([second.to_string()])
    );
    let added: SocketAddr = report["listeners_added"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(added.ip().to_string(), "127.0.0.2");

    assert_eq!(request(added, "GET", "/added", &[]).status, 200);
    // Every worker stops accepting on the removed one (bounded wait: the
    // workers act on the reload after it answers).
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&second, Duration::from_secs(1)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "{second} still accepts connections"
        );
        pause(Duration::from_millis(20));
    }
    // The connection opened before is still served.
    assert_eq!(kept.get("/after", &[]).unwrap(), 200);
    assert_eq!(gateway.get("/first", &[]).status, 200);
    let targets: Vec<String> = upstream.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/before", "/added", "/after", "/first"]);
}

#[test]
fn a_request_in_flight_finishes_and_its_http2_connection_serves_the_new_configuration() {
    let upstream = FakeUpstream::start(Some(Duration::from_millis(1500)));
    let route = |prefix: &str| {
        tiers_and_app(upstream.addr)
            + &format!(
                "\n[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"app\"\nauth = \"none\"\n\n\
                 [[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\n"
            )
    };
    let body = route("/slow/");
    let builder = Gateway::builder(&body);
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let gateway = builder.start();
    let file = ConfigFile::of(&gateway, &body);
    // curl over HTTP/2 (TLS, ALPN; the self-signed certificate): /slow/x,
    // then on the same connection /other/y, a route only the reloaded
    // configuration has. (curl 7.88 cannot reuse an h2c connection.)
    let base = gateway.listeners[1].clone();
    let curl = thread::spawn(move || {
        let output = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--http2", "--insecure"])
            .args(["-w", "%{http_code} %{http_version} %{num_connects}\n"])
            .args(["-o", "/dev/null", &format!("{base}/slow/x")])
            .args(["-o", "/dev/null", &format!("{base}/other/y")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the request never reached the upstream"
        );
        pause(Duration::from_millis(10));
    }

    // The route it took is gone while it waits for the upstream.
    file.write(&route("/other/"));
    let reply = reload(&gateway, &admin_key);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(gateway.get("/slow/y", &[]).status, 404);
    // Both answered, on one connection (the second made no new connect).
    assert_eq!(curl.join().unwrap(), "200 2 1\n200 2 0\n");
    let targets: Vec<String> = upstream.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/slow/x", "/other/y"]);
}

#[test]
fn a_restart_after_a_reload_takes_over_the_listeners_in_force_only() {
    let upstream = FakeUpstream::start(None);
    let routes = tiers_and_app(upstream.addr)
        + "\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n";
    let body = routes.clone() + "\n[[listeners]]\naddress = \"127.0.0.1:0\"\n";
    let builder = Gateway::builder(&body).capture_stderr();
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let mut gateway = builder.start();
    let file = ConfigFile::of(&gateway, &body);
    let removed: SocketAddr = gateway.listeners[1]
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    file.write(&(routes.clone() + "\n[[listeners]]\naddress = \"127.0.0.2:0\"\n"));
    let reply = reload(&gateway, &admin_key);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let added: SocketAddr = reply.json()["listeners_added"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    // The successor's file names the added listener's port, so it takes
    // that socket over; the removed one is no longer offered.
    file.write(&(routes + &format!("\n[[listeners]]\naddress = \"{added}\"\n")));
    let mut old = gateway.start_successor();
    let log = gateway.stderr_text();
    assert!(log.contains("took over the listening sockets"), "{log}");
    assert!(!log.contains("no longer a listener"), "{log}");
    assert!(
        gateway.listeners.contains(&format!("http://{added}")),
        "{:?}",
        gateway.listeners
    );
    let pid = libc::pid_t::try_from(old.id()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while old.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the old gateway did not exit");
        pause(Duration::from_millis(20));
    }
    assert_eq!(request(added, "GET", "/after", &[]).status, 200);
    assert!(TcpStream::connect_timeout(&removed, Duration::from_secs(1)).is_err());
}
