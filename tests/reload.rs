//! Reloading the configuration (SIGHUP, `POST /v1/reload`, `gateway
//! reload`) end to end: traffic on keep-alive and new connections sees no
//! error through 20 reloads, half of them invalid; a changed tier limit is
//! in force at once while an unchanged tier keeps its limiter state;
//! listeners are added and removed; invalid files are refused naming the
//! key path, and the CLI exits non-zero on them.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    cmd::openssl,
    fs::TempDir,
    gateway::Gateway,
    http::{get_from, pause, request, request_with_body, tiers_and_app, FakeUpstream, Reply},
    require_root, Topology,
};

/// The test's part of the config file, rewritten for each reload.
struct ConfigFile {
    path: PathBuf,
    /// The harness's base (state dir, admin, first listener, key store).
    base: String,
}

impl ConfigFile {
    fn of(gateway: &Gateway, body: &str) -> Self {
        let text = std::fs::read_to_string(&gateway.config).unwrap();
        let base = text.strip_suffix(body).unwrap().to_owned();
        Self {
            path: gateway.config.clone(),
            base,
        }
    }

    fn write(&self, body: &str) {
        std::fs::write(&self.path, format!("{}{body}", self.base)).unwrap();
    }
}

/// `POST /v1/reload` with `key`.
fn reload(gateway: &Gateway, key: &str) -> Reply {
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];
    request_with_body(gateway.admin.unwrap(), "POST", "/v1/reload", &headers, "")
}

/// Sends SIGHUP and waits (at most 10 s) until the log shows its outcome:
/// one more "configuration reloaded" or "reload refused" line.
fn hangup(gateway: &Gateway) -> String {
    let outcomes = |text: &str| {
        text.lines()
            .filter(|l| l.contains("configuration reloaded") || l.contains("reload refused"))
            .count()
    };
    let before = outcomes(&gateway.stderr_text());
    let pid = libc::pid_t::try_from(gateway.pid().unwrap()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = gateway.stderr_text();
        if outcomes(&text) > before {
            let last = text
                .lines()
                .rev()
                .find(|l| l.contains("configuration reloaded") || l.contains("reload refused"));
            return last.unwrap_or_default().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no reload outcome logged:\n{text}"
        );
        pause(Duration::from_millis(20));
    }
}

/// An HTTP/1.1 connection kept open for many requests.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// One request on the open connection; its status.
    fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> std::io::Result<u16> {
        let mut text = format!("GET {target} HTTP/1.1\r\nhost: gateway\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        self.reader.get_mut().write_all(text.as_bytes())?;
        let mut status = 0;
        let mut length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if status == 0 {
                status = trimmed
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            } else if let Some((name, value)) = trimmed.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

/// An unlimited API-key route for traffic, plus `extra` (a second route
/// whose prefix the reloads change).
fn load_config(upstream: &FakeUpstream, extra: &str) -> String {
    tiers_and_app(upstream.addr)
        + &format!(
            "\n[[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\nrate_limit = false\n\n\
             [[routes]]\npath_prefix = \"{extra}\"\nupstream = \"app\"\n"
        )
}

#[test]
fn traffic_on_kept_and_new_connections_sees_no_error_through_twenty_reloads() {
    let upstream = FakeUpstream::start(None);
    let body = load_config(&upstream, "/v0/");
    let builder = Gateway::builder(&body).capture_stderr();
    let key = builder.create_key("gold");
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let gateway = builder.start();
    let file = ConfigFile::of(&gateway, &body);

    // The client: one request on a kept-alive connection, one on a new
    // connection, until stopped (bounded: 20,000 requests, 120 s).
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, ok, errors, key, addr) = (
            stop.clone(),
            ok.clone(),
            errors.clone(),
            key.clone(),
            gateway.addr,
        );
        thread::spawn(move || {
            let mut kept = KeepAlive::open(addr).unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            let headers = [("x-api-key", key.as_str())];
            let mut failures = Vec::new();
            for i in 0..10_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let target = format!("/api/{i}");
                let kept_status = kept.get(&target, &headers);
                let new_status =
                    get_from(addr.ip(), addr, &target, &headers, Duration::from_secs(5))
                        .map(|reply| reply.status);
                for status in [kept_status, new_status] {
                    match status {
                        Ok(200) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            failures.push(format!("{target}: {other:?}"));
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }
            failures
        })
    };
    let progress = |since: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while ok.load(Ordering::Relaxed) < since + 10 {
            assert!(Instant::now() < deadline, "the client made no progress");
            pause(Duration::from_millis(5));
        }
    };

    let mut refused_paths = Vec::new();
    for round in 0..20u32 {
        progress(ok.load(Ordering::Relaxed));
        let valid = round % 2 == 0;
        if valid {
            file.write(&load_config(&upstream, &format!("/v{}/", round + 1)));
        } else {
            // routes[1] names an upstream that does not exist.
            file.write(&load_config(&upstream, "/v0/").replacen(
                "path_prefix = \"/v0/\"\nupstream = \"app\"",
                "path_prefix = \"/v0/\"\nupstream = \"nowhere\"",
                1,
            ));
        }
        // Half through the admin API, half by SIGHUP.
        if round % 4 < 2 {
            let reply = reload(&gateway, &admin_key);
            if valid {
                assert_eq!(reply.status, 200, "{}", reply.body);
                assert_eq!(reply.json()["changed"], serde_json::json!(["routes"]));
            } else {
                assert_eq!(reply.status, 422, "{}", reply.body);
                refused_paths.push(reply.json()["message"].as_str().unwrap().to_owned());
            }
        } else {
            let outcome = hangup(&gateway);
            match valid {
                true => assert!(outcome.contains("configuration reloaded"), "{outcome}"),
                false => {
                    assert!(outcome.contains("reload refused"), "{outcome}");
                    refused_paths.push(outcome);
                }
            }
        }
    }
    progress(ok.load(Ordering::Relaxed));
    stop.store(true, Ordering::Relaxed);
    let failures = client.join().unwrap();

    assert_eq!(errors.load(Ordering::Relaxed), 0, "{failures:?}");
    assert!(failures.is_empty(), "{failures:?}");
    let ok = ok.load(Ordering::Relaxed);
    eprintln!("{ok} requests answered through 20 reloads, half of them on new connections");
    // At least 10 between reloads (the rounds wait for them).
    assert!(ok >= 10 * 21, "{ok} requests answered");
    // The upstream saw every answered request, once.
    let seen = upstream.requests();
    assert_eq!(seen.len() as u64, ok);
    assert!(seen.iter().all(|s| s.target.starts_with("/api/")));
    // Every refusal named the key path, as check-config does.
    assert_eq!(refused_paths.len(), 10);
    for refusal in &refused_paths {
        assert!(refusal.contains("routes[1].upstream"), "{refusal}");
    }
    let check = gateway.cli(&["check-config", gateway.config.to_str().unwrap()], &[]);
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("routes[1].upstream"));
    // The last valid file (round 18) is in force: its route serves, older ones 404.
    let get = |path: &str| gateway.get(path, &[("x-api-key", &key)]).status;
    assert_eq!(
        (get("/v19/x"), get("/v17/x"), get("/v0/x")),
        (200, 404, 404)
    );
}

/// Tiers whose limits the test changes; a window of an hour, so nothing
/// refills while it runs.
fn tier_config(upstream: &FakeUpstream, bronze: u32, gold: u32) -> String {
    format!(
        "[[tiers]]\nname = \"bronze\"\nrequests = {bronze}\nwindow = \"1h\"\n\n\
         [[tiers]]\nname = \"silver\"\nrequests = 3\nwindow = \"1h\"\n\n\
         [[tiers]]\nname = \"gold\"\nrequests = {gold}\nwindow = \"1h\"\n\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n",
        upstream.addr
    )
}

#[test]
fn a_changed_tier_limit_is_in_force_and_an_unchanged_tier_keeps_its_state() {
    let upstream = FakeUpstream::start(None);
    let body = tier_config(&upstream, 3, 1000);
    let builder = Gateway::builder(&body);
    let (bronze, silver, gold) = (
        builder.create_key("bronze"),
        builder.create_key("silver"),
        builder.create_key("gold"),
    );
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let gateway = builder.start();
    let file = ConfigFile::of(&gateway, &body);
    let statuses = |key: &str, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| gateway.get("/api/x", &[("x-api-key", key)]).status)
            .collect()
    };

    // Before: silver spends its whole quota, bronze one of 3, gold 3 of 1000.
    assert_eq!(statuses(&silver, 4), [200, 200, 200, 429]);
    assert_eq!(statuses(&bronze, 1), [200]);
    assert_eq!(statuses(&gold, 3), [200, 200, 200]);

    // Bronze raised to 6 an hour, gold lowered to 5; silver unchanged.
    file.write(&tier_config(&upstream, 6, 5));
    let reply = reload(&gateway, &admin_key);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["changed"], serde_json::json!(["tiers"]));

    // Silver's state survived: still refused.
    assert_eq!(statuses(&silver, 1), [429]);
    // Bronze: 1 spent of 6, so 5 more; gold: 3 spent of 5, so 2 more.
    assert_eq!(statuses(&bronze, 6), [200, 200, 200, 200, 200, 429]);
    assert_eq!(statuses(&gold, 3), [200, 200, 429]);
    let limited = gateway.get("/api/x", &[("x-api-key", &gold)]);
    assert_eq!(limited.header("x-ratelimit-limit"), Some("5"));
    // The upstream saw exactly the allowed requests.
    assert_eq!(upstream.requests().len(), 3 + 1 + 3 + 5 + 2);
}

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
fn gateway_reload_exits_non_zero_naming_the_key_and_warns_of_restart_keys() {
    let upstream = FakeUpstream::start(None);
    let body = load_config(&upstream, "/v0/");
    let builder = Gateway::builder(&body);
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let client_key = builder.create_key("gold");
    let gateway = builder.start();
    let file = ConfigFile::of(&gateway, &body);
    let url = format!("http://{}", gateway.admin.unwrap());
    let cli = |key: &str| {
        let output = gateway.cli(
            &["reload", "--admin-url", &url],
            &[("GATEWAY_ADMIN_KEY", key)],
        );
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        (
            output.status.code(),
            text(&output.stdout),
            text(&output.stderr),
        )
    };

    // Nothing changed: exit 0.
    let (code, out, _) = cli(&admin_key);
    assert_eq!(code, Some(0));
    assert!(out.contains("nothing changed"), "{out}");

    // Invalid: exit 1 with check-config's message; the old routes serve.
    file.write(&body.replace("rate_limit = false", "rate_limit = \"no\""));
    let (code, _, err) = cli(&admin_key);
    assert_eq!(code, Some(1));
    assert!(err.contains("routes[0].rate_limit"), "{err}");
    assert_eq!(
        gateway.get("/v0/x", &[("x-api-key", &client_key)]).status,
        200
    );

    // Not an admin key: refused, exit 1.
    file.write(&load_config(&upstream, "/v1/"));
    let (code, _, err) = cli(&client_key);
    assert_eq!(code, Some(1));
    assert!(err.contains("403"), "{err}");
    assert_eq!(
        gateway.get("/v1/x", &[("x-api-key", &client_key)]).status,
        404
    );

    // A key read only at start: applied without it, named, exit 0.
    file.write(&(load_config(&upstream, "/v1/") + "\n[xdp]\ninterface = \"eth9\"\n"));
    let (code, out, err) = cli(&admin_key);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("changed routes"), "{out}");
    assert!(
        err.contains("xdp.interface") && err.contains("restart"),
        "{err}"
    );
    assert_eq!(
        gateway.get("/v1/x", &[("x-api-key", &client_key)]).status,
        200
    );
    let reply = reload(&gateway, &admin_key);
    assert_eq!(
        reply.json()["restart_required"],
        serde_json::json!(["xdp.interface"])
    );
    assert_eq!(reply.json()["changed"], serde_json::json!([]));
}

#[test]
fn a_reload_writes_the_kernel_budget_and_mode_and_keeps_command_line_overrides() {
    if !require_root("a_reload_writes_the_kernel_budget_and_mode_and_keeps_command_line_overrides")
    {
        return;
    }
    let topology = Topology::new();
    let gateway = Gateway::builder("")
        .in_namespace(&topology.server)
        .xdp("8080")
        .args(&["--syn-burst", "77"])
        .capture_stderr()
        .start();
    let file = ConfigFile::of(&gateway, "");
    let before = gateway.status();
    assert_eq!(before["mode"], "enforce");
    assert_eq!(before["default_budget"]["syn_burst"], 77);

    // The file's budget and mode apply; --syn-burst still wins; a bad
    // value is refused and changes nothing in the kernel.
    file.write("[xdp]\ndefault_pkt_burst = 0\n");
    let refused = hangup(&gateway);
    assert!(
        refused.contains("reload refused") && refused.contains("xdp.default_pkt_burst"),
        "{refused}"
    );
    assert_eq!(gateway.status()["default_budget"], before["default_budget"]);
    file.write("[xdp]\ndefault_syn_rate = 123\ndefault_syn_burst = 500\nmode = \"monitor\"\n");
    let outcome = hangup(&gateway);
    assert!(outcome.contains("configuration reloaded"), "{outcome}");
    let after = gateway.status();
    assert_eq!(after["mode"], "monitor");
    assert_eq!(after["default_budget"]["syn_per_sec"], 123);
    assert_eq!(after["default_budget"]["syn_burst"], 77);
    assert_eq!(after["owner_pid"], before["owner_pid"]);
    assert_eq!(after["program_id"], before["program_id"]);
}

/// A self-signed certificate for `localhost` in `dir`: (cert, key) PEM.
fn self_signed(dir: &TempDir, name: &str) -> (String, String) {
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    openssl(
        &dir.path,
        &[
            "req",
            "-x509",
            "-days",
            "1",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            &key,
            "-out",
            &cert,
        ],
    );
    let read = |file: &str| std::fs::read_to_string(dir.path.join(file)).unwrap();
    (read(&cert), read(&key))
}

/// Whether curl gets 200 from the TLS listener at `port`, trusting only `ca`.
fn trusted(port: u16, ca: &std::path::Path) -> bool {
    let output = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/tls"))
        .output()
        .unwrap();
    output.status.success() && output.stdout == b"200"
}

#[test]
fn a_reload_reads_certificates_again_and_a_bad_one_keeps_the_old() {
    let pki = TempDir::new("reload-pki");
    let (cert_a, key_a) = self_signed(&pki, "a");
    let (cert_b, key_b) = self_signed(&pki, "b");
    let (cert, key) = (
        pki.write("served.pem", &cert_a),
        pki.write("served.key", &key_a),
    );
    let upstream = FakeUpstream::start(None);
    let body = tiers_and_app(upstream.addr)
        + &format!(
            "\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n\n\
             [[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        );
    let builder = Gateway::builder(&body);
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let gateway = builder.start();
    let port: u16 = gateway.listeners[1]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let (ca_a, ca_b) = (pki.path.join("a.pem"), pki.path.join("b.pem"));
    assert!(trusted(port, &ca_a) && !trusted(port, &ca_b));

    // The same file names, a new certificate: the config is unchanged.
    std::fs::write(&cert, &cert_b).unwrap();
    std::fs::write(&key, &key_b).unwrap();
    let reply = reload(&gateway, &admin_key);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["changed"], serde_json::json!([]));
    assert!(trusted(port, &ca_b) && !trusted(port, &ca_a));

    // A certificate that does not parse: refused, the last one serves on.
    std::fs::write(&cert, "not a certificate").unwrap();
    let reply = reload(&gateway, &admin_key);
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("TLS for listener"),
        "{}",
        reply.body
    );
    assert!(trusted(port, &ca_b));
    assert_eq!(upstream.requests().len(), 3);
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
