//! JWT authentication end to end: RSA keys made by openssl, tokens minted
//! with the jsonwebtoken library, a JWKS served by a test server that counts
//! fetches, and the real gateway in between.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use gateway_tests::{
    cmd::{openssl, openssl_key_pair, RSA_2048},
    fs::TempDir,
    gateway::Gateway,
    http::FakeUpstream,
};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "api";

/// An RSA key pair on disk, with its JWK.
struct RsaKey {
    private_pem: Vec<u8>,
    public_pem: PathBuf,
    kid: String,
    jwk: Value,
}

impl RsaKey {
    fn new(dir: &Path, kid: &str) -> Self {
        let (private_pem, public_pem) = openssl_key_pair(dir, kid, RSA_2048);
        let private = format!("{kid}.key");
        let modulus = openssl(dir, &["rsa", "-in", &private, "-noout", "-modulus"]);
        let hex = modulus.trim().trim_start_matches("Modulus=");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        Self {
            private_pem,
            public_pem,
            kid: kid.to_owned(),
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(bytes), "e": "AQAB",
            }),
        }
    }

    fn sign(&self, claims: &Value, with_kid: bool) -> String {
        self.sign_as(Algorithm::RS256, claims, with_kid)
    }

    fn sign_as(&self, algorithm: Algorithm, claims: &Value, with_kid: bool) -> String {
        let mut header = Header::new(algorithm);
        if with_kid {
            header.kid = Some(self.kid.clone());
        }
        encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(&self.private_pem).unwrap(),
        )
        .unwrap()
    }
}

fn jwks_json(keys: &[&RsaKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(sub: &str, scope: &str) -> Value {
    json!({ "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope, "exp": now() + 300, "iat": now() })
}

fn config(upstream: &FakeUpstream, key_source: &str) -> String {
    format!(
        r#"
[[issuers]]
issuer = "{ISSUER}"
audiences = ["{AUDIENCE}"]
{key_source}
min_refresh_interval = "60s"
allow_insecure_http = true

[[upstreams]]
name = "app"
servers = ["{addr}"]

[[routes]]
path_prefix = "/jwt/"
upstream = "app"
auth = "jwt"

[[routes]]
path_prefix = "/write/"
upstream = "app"
auth = "jwt"
required_scopes = ["write"]

[[routes]]
path_prefix = "/both/"
upstream = "app"
auth = "both"
"#,
        addr = upstream.addr
    )
}

/// Waits until the JWKS server has been fetched `count` times.
fn wait_for_fetches(jwks: &FakeUpstream, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while jwks.requests().len() < count {
        assert!(
            Instant::now() < deadline,
            "JWKS fetched {} times",
            jwks.requests().len()
        );
        #[allow(clippy::disallowed_methods, reason = "bounded poll in a sync test")]
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Setup {
    _dir: TempDir,
    a: RsaKey,
    b: RsaKey,
    jwks: FakeUpstream,
    upstream: FakeUpstream,
}

fn setup() -> Setup {
    let dir = TempDir::new("jwt");
    let a = RsaKey::new(&dir.path, "a");
    let b = RsaKey::new(&dir.path, "b");
    let jwks = FakeUpstream::start(None);
    jwks.set_body(&jwks_json(&[&a]));
    Setup {
        _dir: dir,
        a,
        b,
        jwks,
        upstream: FakeUpstream::start(None),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn valid_token_authenticates_with_the_highest_tier_in_its_scope() {
    let s = setup();
    let source = format!("jwks_url = \"http://{}/jwks.json\"", s.jwks.addr);
    let gateway = Gateway::builder(&config(&s.upstream, &source)).start();
    wait_for_fetches(&s.jwks, 1);
    let token = s.a.sign(&claims("svc-1", "read bronze gold silver"), true);
    let reply = gateway.get("/jwt/x", &[("authorization", &bearer(&token))]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = &s.upstream.requests()[0];
    // A client the store does not know is namespaced by its issuer.
    assert_eq!(seen.header("x-client-id"), Some("https://idp.test#svc-1"));
    assert_eq!(seen.header("x-client-tier"), Some("gold"));
    assert!(
        seen.header("authorization").is_none(),
        "the token is stripped"
    );

    // Same token again (the second verification is a cache hit; bench auth
    // measures that, this only checks the answer is unchanged).
    assert_eq!(
        gateway
            .get("/jwt/x", &[("authorization", &bearer(&token))])
            .status,
        200
    );
    // Scope-gated route.
    let reply = gateway.get("/write/x", &[("authorization", &bearer(&token))]);
    assert_eq!(reply.status, 403);
    let writer = s.a.sign(&claims("svc-1", "read write"), true);
    assert_eq!(
        gateway
            .get("/write/x", &[("authorization", &bearer(&writer))])
            .status,
        200
    );
    // No token at all on a JWT route.
    let reply = gateway.get("/jwt/x", &[]);
    assert_eq!(reply.status, 401);
    assert!(reply.header("www-authenticate").is_some());
}

fn refused(gateway: &Gateway, token: &str) -> String {
    let reply = gateway.get("/jwt/x", &[("authorization", &bearer(token))]);
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(reply.json()["error"], "invalid_token");
    reply.json()["message"].as_str().unwrap().to_owned()
}

#[test]
fn bad_tokens_are_refused_for_the_right_reason() {
    let s = setup();
    let source = format!("jwks_url = \"http://{}/jwks.json\"", s.jwks.addr);
    let gateway = Gateway::builder(&config(&s.upstream, &source)).start();
    wait_for_fetches(&s.jwks, 1);

    let mut expired = claims("svc", "read");
    expired["exp"] = json!(now() - 120); // beyond the 30 s leeway
    assert!(refused(&gateway, &s.a.sign(&expired, true)).contains("expired"));

    let mut wrong_iss = claims("svc", "read");
    wrong_iss["iss"] = json!("https://evil.test");
    assert!(refused(&gateway, &s.a.sign(&wrong_iss, true)).contains("unknown_issuer"));

    let mut wrong_aud = claims("svc", "read");
    wrong_aud["aud"] = json!("other-api");
    assert!(refused(&gateway, &s.a.sign(&wrong_aud, true)).contains("wrong_audience"));

    // alg: none, no signature.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT","kid":"a"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims("svc", "gold").to_string());
    assert!(refused(&gateway, &format!("{header}.{payload}.")).contains("malformed"));

    // HS256 "signed" with the RSA public key (the classic confusion attack).
    let public = std::fs::read(&s.a.public_pem).unwrap();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("a".into());
    let forged = encode(
        &hs,
        &claims("svc", "gold"),
        &EncodingKey::from_secret(&public),
    )
    .unwrap();
    assert!(refused(&gateway, &forged).contains("algorithm_not_allowed"));

    // Signed by b but claiming a's kid.
    let mut lying = s.b.sign(&claims("svc", "gold"), false);
    let wrong_kid = s.a.sign(&claims("svc", "gold"), true);
    let header_a = wrong_kid.split('.').next().unwrap();
    let rest: Vec<&str> = lying.splitn(2, '.').collect();
    lying = format!("{header_a}.{}", rest[1]);
    assert!(refused(&gateway, &lying).contains("bad_signature"));

    assert!(
        s.upstream.requests().is_empty(),
        "no refused token reached upstream"
    );
}

/// A key the IdP drops from its JWKS (one that leaked) stops verifying at
/// the refresh that drops it, though a token it signed was cached as
/// verified and the cache alone would have served it for minutes more.
#[test]
fn a_key_dropped_from_the_jwks_stops_verifying_its_cached_tokens() {
    let s = setup();
    let source = format!(
        "jwks_url = \"http://{}/jwks.json\"\nrefresh = \"1s\"",
        s.jwks.addr
    );
    let gateway = Gateway::builder(&config(&s.upstream, &source)).start();
    wait_for_fetches(&s.jwks, 1);
    let token = s.a.sign(&claims("svc-1", "gold"), true);
    for _ in 0..2 {
        let reply = gateway.get("/jwt/x", &[("authorization", &bearer(&token))]);
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // The IdP rotates key a out; two refreshes later the first has surely
    // been taken in (the refresh loop fetches one at a time).
    s.jwks.set_body(&jwks_json(&[&s.b]));
    wait_for_fetches(&s.jwks, s.jwks.requests().len() + 2);
    assert!(refused(&gateway, &token).contains("unknown_key"));
    assert_eq!(s.upstream.requests().len(), 2);
    // Key b, which the set holds, verifies.
    let fresh = s.b.sign(&claims("svc-2", "gold"), true);
    let reply = gateway.get("/jwt/x", &[("authorization", &bearer(&fresh))]);
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn unknown_kid_triggers_exactly_one_rate_limited_jwks_refresh() {
    let s = setup();
    let source = format!("jwks_url = \"http://{}/jwks.json\"", s.jwks.addr);
    let gateway = Gateway::builder(&config(&s.upstream, &source)).start();
    wait_for_fetches(&s.jwks, 1);

    // The IdP rotates in key b; a token signed with b arrives.
    s.jwks.set_body(&jwks_json(&[&s.a, &s.b]));
    let token = s.b.sign(&claims("svc-2", "silver"), true);
    let reply = gateway.get("/jwt/x", &[("authorization", &bearer(&token))]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        s.jwks.requests().len(),
        2,
        "one refresh for the unknown kid"
    );

    // Another unknown kid right after: no new fetch (rate limited), refused.
    let dir = TempDir::new("jwt-c");
    let c = RsaKey::new(&dir.path, "c");
    let reply = gateway.get(
        "/jwt/x",
        &[(
            "authorization",
            &bearer(&c.sign(&claims("x", "gold"), true)),
        )],
    );
    assert_eq!(reply.status, 401);
    assert!(reply.json()["message"]
        .as_str()
        .unwrap()
        .contains("unknown_key"));
    assert_eq!(s.jwks.requests().len(), 2);
}

#[test]
fn pem_issuer_and_external_id_mapping_and_both_policy() {
    let s = setup();
    let source = format!("pem = \"{}\"", s.a.public_pem.display());
    let gateway = Gateway::builder(&config(&s.upstream, &source));
    let api_key =
        gateway.create_key_with("bronze", &["--scopes", "read", "--external-id", "svc-9"]);
    let gateway = gateway.start();

    // A token for svc-9 is the stored client: its id and tier, not the token's.
    let token = s.a.sign(&claims("svc-9", "gold"), false);
    assert_eq!(
        gateway
            .get("/both/x", &[("authorization", &bearer(&token))])
            .status,
        200
    );
    let seen = &s.upstream.requests()[0];
    assert!(seen.header("x-client-id").unwrap().starts_with("cl_"));
    assert_eq!(seen.header("x-client-tier"), Some("bronze"));

    // "both" takes the API key as well; "jwt" does not.
    assert_eq!(
        gateway.get("/both/x", &[("x-api-key", &api_key)]).status,
        200
    );
    assert_eq!(
        gateway.get("/jwt/x", &[("x-api-key", &api_key)]).status,
        401
    );
}

#[test]
fn a_tier_from_a_jwt_scope_gets_the_same_limits_as_from_an_api_key_plan() {
    let s = setup();
    let source = format!("pem = \"{}\"", s.a.public_pem.display());
    let gateway = Gateway::builder(&config(&s.upstream, &source));
    let api_key = gateway.create_key("silver");
    let gateway = gateway.start();
    let token = s.a.sign(&claims("svc-2", "read silver"), false);
    let by_token = gateway.get("/both/x", &[("authorization", &bearer(&token))]);
    let by_key = gateway.get("/both/x", &[("x-api-key", &api_key)]);
    for name in [
        "ratelimit-policy",
        "ratelimit",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
    ] {
        assert!(by_key.header(name).is_some(), "no {name}");
        assert_eq!(by_token.header(name), by_key.header(name), "{name}");
    }
    assert_eq!(by_key.header("x-ratelimit-limit"), Some("100"));
}

/// An RSA JWK without `alg` fits RS256..PS512; it verifies only under the
/// issuer's `algorithms` (RFC 8725 §3.1): a PS256 token is refused where
/// the issuer accepts RS256 alone, and accepted where it accepts PS256.
#[test]
fn a_jwk_without_alg_verifies_only_under_the_issuers_algorithms() {
    let s = setup();
    let mut jwk = s.a.jwk.clone();
    jwk.as_object_mut().unwrap().remove("alg");
    s.jwks.set_body(&json!({ "keys": [jwk] }).to_string());
    let rs256 = s.a.sign(&claims("svc-1", "read"), true);
    let ps256 =
        s.a.sign_as(Algorithm::PS256, &claims("svc-1", "read"), true);
    for (algorithms, ps256_status) in [(r#"["RS256"]"#, 401), (r#"["RS256", "PS256"]"#, 200)] {
        let source = format!(
            "jwks_url = \"http://{}/jwks.json\"\nalgorithms = {algorithms}",
            s.jwks.addr
        );
        let fetched = s.jwks.requests().len();
        let gateway = Gateway::builder(&config(&s.upstream, &source)).start();
        wait_for_fetches(&s.jwks, fetched + 1);
        let before = s.upstream.requests().len();
        let reply = gateway.get("/jwt/x", &[("authorization", &bearer(&ps256))]);
        assert_eq!(reply.status, ps256_status, "{algorithms}: {}", reply.body);
        let reply = gateway.get("/jwt/x", &[("authorization", &bearer(&rs256))]);
        assert_eq!(reply.status, 200, "{algorithms}: {}", reply.body);
        let served = s.upstream.requests().len() - before;
        assert_eq!(served, 1 + usize::from(ps256_status == 200), "{algorithms}");
    }
}
