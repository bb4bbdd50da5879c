//! Interoperability with a real, independent OpenID provider
//! (panva/oidc-provider from npm, installed by `cargo xtask setup`): the
//! gateway knows it only by its discovery URL, and accepts the JWT access
//! tokens it issues through the client-credentials grant.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
};

use base64::{engine::general_purpose::STANDARD, Engine};
use gateway_tests::{
    gateway::Gateway,
    http::{request_with_body, FakeUpstream},
};

const CLIENT: &str = "svc-oidc";
const SECRET: &str = "test-only-secret";
const AUDIENCE: &str = "urn:gateway:api";

/// The IdP process; killed on drop.
struct Idp {
    child: Child,
    issuer: String,
    addr: SocketAddr,
}

impl Idp {
    fn start() -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc");
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed in {}: run `cargo xtask setup` (needs node and npm)",
            dir.display()
        );
        let mut child = Command::new("node")
            .arg("server.mjs")
            .args([CLIENT, SECRET, AUDIENCE])
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node must be installed for the OIDC interoperability test");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let issuer = stdout
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.strip_prefix("issuer: ").map(str::to_owned))
            .expect("the IdP printed no issuer");
        let addr = issuer.trim_start_matches("http://").parse().unwrap();
        Self {
            child,
            issuer,
            addr,
        }
    }

    /// A client-credentials access token (a JWT for AUDIENCE).
    fn token(&self, scope: &str) -> String {
        let basic = format!("Basic {}", STANDARD.encode(format!("{CLIENT}:{SECRET}")));
        let body = format!(
            "grant_type=client_credentials&scope={}&resource={}",
            scope.replace(' ', "%20"),
            AUDIENCE.replace(':', "%3A")
        );
        let reply = request_with_body(
            self.addr,
            "POST",
            "/token",
            &[
                ("authorization", &basic),
                ("content-type", "application/x-www-form-urlencoded"),
            ],
            &body,
        );
        assert_eq!(reply.status, 200, "token endpoint: {}", reply.body);
        reply.json()["access_token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tokens_from_a_real_openid_provider_are_accepted_via_discovery() {
    let idp = Idp::start();
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        r#"
[[issuers]]
issuer = "{issuer}"
discovery_url = "{issuer}/.well-known/openid-configuration"
audiences = ["{AUDIENCE}"]
client_claim = "client_id"
allow_insecure_http = true

[[upstreams]]
name = "app"
servers = ["{upstream}"]

[[routes]]
path_prefix = "/"
upstream = "app"
auth = "jwt"
required_scopes = ["read"]
"#,
        issuer = idp.issuer,
        upstream = upstream.addr
    ))
    .start();

    let token = idp.token("read gold");
    let reply = gateway.get("/orders", &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = &upstream.requests()[0];
    // A client the store does not know is namespaced by its issuer.
    let principal = format!("{}#{CLIENT}", idp.issuer);
    assert_eq!(seen.header("x-client-id"), Some(principal.as_str()));
    assert_eq!(seen.header("x-client-tier"), Some("gold"));
    assert!(seen.header("authorization").is_none());

    // Without the required scope the same IdP's token gets a 403.
    let gold_only = idp.token("gold");
    let reply = gateway.get(
        "/orders",
        &[("authorization", &format!("Bearer {gold_only}"))],
    );
    assert_eq!(reply.status, 403);
}
