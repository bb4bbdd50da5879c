//! What a reload reads besides the routes: certificates, and the kernel
//! path's settings.
use gateway_tests::{
    cmd::openssl,
    fs::TempDir,
    gateway::Gateway,
    http::{tiers_and_app, FakeUpstream},
    require_root, Topology,
};

use super::support::{hangup, reload, ConfigFile};

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
