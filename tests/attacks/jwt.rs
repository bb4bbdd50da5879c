//! JWT attacks (RFC 8725) and identity borrowing across issuers.
//!
//! Two issuers with PEM keys: `https://a.test` (RSA) and `https://b.test`
//! (EC P-256), both for audience `api`; routes `/jwt/` (any valid token)
//! and `/write/` (scope `write`). Every forged token is refused with its
//! status, and the recording upstream sees nothing of it.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use gateway_tests::{
    cmd::{openssl_key_pair, EC_P256, RSA_2048},
    fs::TempDir,
    gateway::Gateway,
    http::{pause, request_with_body, tiers_and_app, FakeUpstream},
};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const A: &str = "https://a.test";
const B: &str = "https://b.test";

/// A key pair made by openssl: the private PEM and the public PEM's path.
struct Pair {
    private: Vec<u8>,
    public: PathBuf,
}

impl Pair {
    fn rsa(dir: &Path, name: &str) -> Self {
        let (private, public) = openssl_key_pair(dir, name, RSA_2048);
        Self { private, public }
    }

    fn ec(dir: &Path, name: &str) -> Self {
        let (private, public) = openssl_key_pair(dir, name, EC_P256);
        Self { private, public }
    }

    fn rs256(&self, header: &Header, claims: &Value) -> String {
        encode(
            header,
            claims,
            &EncodingKey::from_rsa_pem(&self.private).unwrap(),
        )
        .unwrap()
    }

    fn es256(&self, claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(&self.private).unwrap();
        encode(&Header::new(Algorithm::ES256), claims, &key).unwrap()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(iss: &str, sub: &str, scope: &str) -> Value {
    json!({ "iss": iss, "aud": "api", "sub": sub, "scope": scope, "exp": now() + 300, "iat": now() })
}

fn rs256() -> Header {
    Header::new(Algorithm::RS256)
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A token put together by hand: header and claims as JSON, raw signature.
fn assemble(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string()),
        b64(claims.to_string()),
        b64(signature)
    )
}

struct Setup {
    _dir: TempDir,
    a: Pair,
    b: Pair,
    /// The attacker's own key, which no issuer trusts.
    evil: Pair,
    upstream: FakeUpstream,
    gateway: Gateway,
    /// A stored client: tier gold, scopes read and write.
    client: (String, String),
}

fn config(dir: &TempDir, a: &Pair, b: &Pair, upstream: &FakeUpstream) -> String {
    let _ = dir;
    tiers_and_app(upstream.addr)
        + &format!(
            r#"
[guard]
mode = "monitor"   # every case here is a refused credential: count them, ban nobody

[[issuers]]
issuer = "{A}"
audiences = ["api"]
pem = "{a}"

[[issuers]]
issuer = "{B}"
audiences = ["api"]
pem = "{b}"

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
path_prefix = "/rs/"
upstream = "app"
auth = "jwt"
upstream_identity = "jwt"
"#,
            a = a.public.display(),
            b = b.public.display(),
        )
}

/// The gateway, with one stored client made by `extra` CLI arguments.
fn setup(extra: &[&str]) -> Setup {
    let dir = TempDir::new("attacks-jwt");
    let a = Pair::rsa(&dir.path, "a");
    let b = Pair::ec(&dir.path, "b");
    let evil = Pair::rsa(&dir.path, "evil");
    let upstream = FakeUpstream::start(None);
    let builder = Gateway::builder(&config(&dir, &a, &b, &upstream));
    let mut args = vec!["--scopes", "read,write"];
    args.extend_from_slice(extra);
    let client = builder.create_client("gold", &args);
    let gateway = builder.start();
    Setup {
        _dir: dir,
        a,
        b,
        evil,
        upstream,
        gateway,
        client,
    }
}

impl Setup {
    fn get(&self, path: &str, token: &str) -> u16 {
        let bearer = format!("Bearer {token}");
        self.gateway.get(path, &[("authorization", &bearer)]).status
    }

    /// `token` on `/jwt/x` is answered `status` and reaches no upstream.
    fn refused(&self, case: &str, token: &str, status: u16) {
        let before = self.upstream.requests().len();
        assert_eq!(self.get("/jwt/x", token), status, "{case}");
        assert_eq!(
            self.upstream.requests().len(),
            before,
            "{case} reached the upstream"
        );
    }
}

#[test]
fn forged_and_invalid_tokens_never_reach_the_upstream() {
    let s = setup(&[]);
    // Controls: each issuer's real tokens work, so refusals below are not vacuous.
    assert_eq!(
        s.get("/jwt/x", &s.a.rs256(&rs256(), &claims(A, "svc", "read"))),
        200
    );
    assert_eq!(s.get("/jwt/x", &s.b.es256(&claims(B, "svc", "read"))), 200);
    let mut forwarded = s.upstream.requests().len();

    let good = claims(A, "svc", "gold write");
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({ "alg": alg, "typ": "JWT" });
        s.refused(alg, &assemble(&header, &good, b""), 401);
        s.refused(alg, &assemble(&header, &good, b"sig"), 401);
    }

    // HS256 with the issuer's public key as the HMAC secret.
    let public = std::fs::read(&s.a.public).unwrap();
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(&public),
    );
    s.refused("HS256 with the public key", &hs.unwrap(), 401);

    // CVE-2022-21449: an ECDSA signature with r = s = 0.
    let psychic = assemble(
        &json!({ "alg": "ES256", "typ": "JWT" }),
        &claims(B, "svc", "gold"),
        &[0; 64],
    );
    s.refused("psychic signature", &psychic, 401);

    // A properly signed token whose header names a critical extension.
    let mut crit = rs256();
    crit.crit = Some(vec!["exp".into()]);
    crit.extras.insert("exp", now() + 300);
    s.refused("crit", &s.a.rs256(&crit, &good), 401);

    // The attacker's key, embedded in the header (and by URL), signs.
    let evil_jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(
        &EncodingKey::from_rsa_pem(&s.evil.private).unwrap(),
        Algorithm::RS256,
    )
    .unwrap();
    let mut embedded = rs256();
    embedded.jwk = Some(evil_jwk);
    s.refused("embedded jwk", &s.evil.rs256(&embedded, &good), 401);
    let attacker = FakeUpstream::start(None);
    let mut jku = rs256();
    jku.jku = Some(format!("http://{}/jwks.json", attacker.addr));
    jku.x5u = Some(format!("http://{}/cert.pem", attacker.addr));
    s.refused("jku and x5u", &s.evil.rs256(&jku, &good), 401);
    assert!(
        attacker.requests().is_empty(),
        "the gateway fetched the attacker's URL"
    );

    // kid: path traversal, and a kid nobody published. It only picks a key
    // among the issuer's own: the attacker's signature is refused whatever
    // it names, and the issuer's sole PEM key (which has no kid) verifies
    // its own signature whatever it names, as IdPs' tokens name one.
    for kid in ["../../etc/passwd", "/dev/null", "unknown-kid"] {
        let mut header = rs256();
        header.kid = Some(kid.into());
        s.refused(kid, &s.evil.rs256(&header, &good), 401);
        assert_eq!(s.get("/jwt/x", &s.a.rs256(&header, &good)), 200, "{kid}");
        forwarded += 1;
        assert_eq!(s.upstream.requests().len(), forwarded, "{kid}");
    }

    // Claims: no exp, nbf ahead, someone else's audience.
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    s.refused("no exp", &s.a.rs256(&rs256(), &no_exp), 401);
    let mut early = good.clone();
    early["nbf"] = json!(now() + 3600);
    s.refused("nbf in the future", &s.a.rs256(&rs256(), &early), 401);
    for aud in [
        json!("other"),
        json!(["other", "more"]),
        json!([]),
        json!(null),
    ] {
        let mut wrong = good.clone();
        wrong["aud"] = aud.clone();
        s.refused(&format!("aud {aud}"), &s.a.rs256(&rs256(), &wrong), 401);
    }
    let mut typ = rs256();
    typ.typ = Some("secevent+jwt".into());
    s.refused("typ", &s.a.rs256(&typ, &good), 401);

    // Non-canonical base64url of a token that is otherwise valid.
    let valid = s.a.rs256(&rs256(), &good);
    let (head, rest) = valid.split_once('.').unwrap();
    let (body, signature) = rest.split_once('.').unwrap();
    // RS256 (2048 bits) leaves 4 unused bits in the last character: set one.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (kept, last) = signature.split_at(signature.len() - 1);
    let value = ALPHABET
        .iter()
        .position(|c| *c == last.as_bytes()[0])
        .unwrap();
    let flipped = format!("{kept}{}", ALPHABET[value | 1] as char);
    for (case, token) in [
        ("padding", format!("{head}=.{body}.{signature}")),
        ("padded signature", format!("{head}.{body}.{signature}==")),
        (
            "+ and /",
            format!(
                "{head}.{body}.{}",
                signature.replace('-', "+").replace('_', "/")
            ),
        ),
        ("trailing bits", format!("{head}.{body}.{}", &flipped)),
        ("whitespace", format!("{head}.{body} .{signature}")),
    ] {
        if token == valid {
            continue;
        }
        s.refused(case, &token, 401);
    }

    // Oversized: past the 8 KiB token limit, with a real signature.
    let mut big = good.clone();
    big["pad"] = json!("x".repeat(9 * 1024));
    s.refused("oversized", &s.a.rs256(&rs256(), &big), 401);

    assert_eq!(s.upstream.requests().len(), forwarded);
}

#[test]
fn another_issuers_token_never_becomes_a_stored_client() {
    let s = setup(&[]);
    let (id, _) = &s.client;
    // Issuer A says its client is the stored client's id.
    let token = s.a.rs256(&rs256(), &claims(A, id, "bronze"));
    assert_eq!(s.get("/jwt/x", &token), 200);
    let seen = s.upstream.requests().pop().unwrap();
    assert_eq!(
        seen.header("x-client-id"),
        Some(format!("{A}#{id}").as_str())
    );
    assert_eq!(
        seen.header("x-client-tier"),
        Some("bronze"),
        "not the stored client's gold"
    );
    // The same claim from B is another client again.
    let token = s.b.es256(&claims(B, id, "bronze"));
    assert_eq!(s.get("/jwt/x", &token), 200);
    let seen = s.upstream.requests().pop().unwrap();
    assert_eq!(
        seen.header("x-client-id"),
        Some(format!("{B}#{id}").as_str())
    );
}

#[test]
fn an_external_id_names_the_client_for_its_issuer_only() {
    let s = setup(&["--external-id", "svc-b", "--issuer", B]);
    let (id, _) = &s.client;
    // B's token for svc-b is the stored client (gold, its id).
    assert_eq!(
        s.get("/jwt/x", &s.b.es256(&claims(B, "svc-b", "write"))),
        200
    );
    let seen = s.upstream.requests().pop().unwrap();
    assert_eq!(seen.header("x-client-id"), Some(id.as_str()));
    assert_eq!(seen.header("x-client-tier"), Some("gold"));
    // A's token claiming svc-b is A's own client: bronze, not the stored one.
    assert_eq!(
        s.get("/jwt/x", &s.a.rs256(&rs256(), &claims(A, "svc-b", ""))),
        200
    );
    let seen = s.upstream.requests().pop().unwrap();
    assert_eq!(
        seen.header("x-client-id"),
        Some(format!("{A}#svc-b").as_str())
    );
    assert_eq!(seen.header("x-client-tier"), Some("bronze"));
    // And it does not have the stored client's write scope.
    let before = s.upstream.requests().len();
    assert_eq!(
        s.get("/write/x", &s.a.rs256(&rs256(), &claims(A, "svc-b", ""))),
        403
    );
    assert_eq!(s.upstream.requests().len(), before);
    // Moved to A by the CLI: now A's svc-b is the client, and B's is not.
    let config = s.gateway.config.display().to_string();
    let args = [
        "keys",
        "update",
        id,
        "--external-id",
        "svc-b",
        "--issuer",
        A,
        "--config",
        &config,
    ];
    let updated = s.gateway.cli(&args, &[]);
    assert!(updated.status.success(), "{updated:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let token = s.a.rs256(&rs256(), &claims(A, "svc-b", ""));
        assert_eq!(s.get("/jwt/x", &token), 200);
        let seen = s.upstream.requests().pop().unwrap();
        if seen.header("x-client-id") == Some(id.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the update was not picked up");
        pause(Duration::from_millis(100));
    }
    assert_eq!(s.get("/jwt/x", &s.b.es256(&claims(B, "svc-b", ""))), 200);
    let seen = s.upstream.requests().pop().unwrap();
    assert_eq!(
        seen.header("x-client-id"),
        Some(format!("{B}#svc-b").as_str())
    );
}

#[test]
fn a_narrowed_gateway_token_keeps_only_its_scopes() {
    let s = setup(&[]);
    let (_, key) = &s.client;
    let form = format!("grant_type=client_credentials&client_secret={key}&scope=read");
    let reply = request_with_body(
        s.gateway.addr,
        "POST",
        "/oauth2/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &form,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let token = reply.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        s.get("/jwt/x", &token),
        200,
        "the token works where read is enough"
    );
    let before = s.upstream.requests().len();
    assert_eq!(s.get("/write/x", &token), 403, "write was given up");
    assert_eq!(s.upstream.requests().len(), before);
    // The upstream's token says what the narrowed token may do, no more.
    assert_eq!(s.get("/rs/x", &token), 200);
    let seen = s.upstream.requests().pop().unwrap();
    let forwarded = seen
        .header("authorization")
        .unwrap()
        .trim_start_matches("Bearer ");
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(forwarded).unwrap();
    assert_eq!(claims["scope"], "read gold", "{claims}");
}
