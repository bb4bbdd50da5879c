//! TLS listeners end to end, with curl as an independent client: HTTP/2
//! and HTTP/1.1 by ALPN, the self-signed certificate kept across restarts,
//! and client-certificate verification (mTLS) with a CA made by openssl.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{path::Path, process::Command};

use gateway_tests::{cmd::openssl, fs::TempDir, gateway::Gateway, http::FakeUpstream};

fn routes(upstream: &FakeUpstream, tls: &str) -> String {
    format!(
        r#"
[[listeners]]
address = "127.0.0.1:0"
[listeners.tls]
{tls}

[[upstreams]]
name = "app"
servers = ["{addr}"]

[[routes]]
path_prefix = "/"
upstream = "app"
auth = "none"
"#,
        addr = upstream.addr
    )
}

/// The port of the gateway's TLS listener.
fn tls_port(gateway: &Gateway) -> u16 {
    let url = gateway
        .listeners
        .iter()
        .find(|url| url.starts_with("https://"))
        .unwrap();
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// curl verifying the server against `ca`; returns (exit ok, stdout).
fn curl(port: u16, ca: &Path, extra: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_version}"])
        .args(extra)
        .arg(format!("https://localhost:{port}/hello"))
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn tls_serves_h2_and_h1_and_keeps_its_self_signed_certificate() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&routes(&upstream, "")).start();
    let cert = gateway.state_dir.join("self-signed.crt");
    let first = std::fs::read(&cert).unwrap();

    let (ok, out) = curl(tls_port(&gateway), &cert, &["--http2"]);
    assert!(ok, "{out}");
    assert_eq!(out, "upstream-ok\n2");
    let (ok, out) = curl(tls_port(&gateway), &cert, &["--http1.1"]);
    assert!(ok, "{out}");
    assert_eq!(out, "upstream-ok\n1.1");
    for seen in upstream.requests() {
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    }

    let gateway = gateway.restart();
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        first,
        "restarts keep the certificate"
    );
    let (ok, out) = curl(tls_port(&gateway), &cert, &[]);
    assert!(ok, "the kept certificate still verifies: {out}");
}

#[test]
fn mtls_requires_a_client_certificate_from_the_configured_ca() {
    let pki = TempDir::new("pki");
    let dir = pki.path.as_path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
    ];
    ca.extend(ec);
    ca.extend([
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec![
        "req",
        "-new",
        "-subj",
        "/CN=client",
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
    ];
    csr.extend(ec);
    openssl(dir, &csr);
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "client.pem",
            "-extfile",
            "client.ext",
        ],
    );

    let upstream = FakeUpstream::start(None);
    let tls = format!("client_ca = \"{}\"", dir.join("ca.pem").display());
    let gateway = Gateway::builder(&routes(&upstream, &tls)).start();
    let cert = gateway.state_dir.join("self-signed.crt");
    let port = tls_port(&gateway);

    let (ok, _) = curl(port, &cert, &[]);
    assert!(!ok, "no client certificate: the handshake must fail");
    assert!(upstream.requests().is_empty());

    let client_cert = dir.join("client.pem");
    let client_key = dir.join("client.key");
    let (ok, out) = curl(
        port,
        &cert,
        &[
            "--cert",
            client_cert.to_str().unwrap(),
            "--key",
            client_key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    assert!(out.starts_with("upstream-ok"));
}
