//! What a token's header may and may not do: `crit` and `typ`, keys chosen
//! only among the issuer's own and only for the algorithms they fit, and
//! JWKS fetches that can neither hang nor hold anything up.
use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{jwk::Jwk, EncodingKey, Header};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::{keys::Key, *};

const T: i64 = 1_000_000_000;
const ISSUER: &str = "https://idp.test";

/// PKCS#8 v1 prefix of an Ed25519 private key; the seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn signing_key(seed: u8) -> EncodingKey {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&[seed; 32]);
    EncodingKey::from_ed_der(&der)
}

fn public_jwk(seed: u8, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(&signing_key(seed), Algorithm::EdDSA).unwrap();
    jwk.common.key_id = Some(kid.into());
    jwk
}

fn settings(source: Option<String>) -> IssuerSettings {
    IssuerSettings {
        issuer: ISSUER.into(),
        audiences: vec!["api".into()],
        typ: preparse::default_typ(),
        allow_insecure_http: true,
        pem: None,
        jwks_url: source,
        discovery_url: None,
        algorithms: vec!["EdDSA".into(), "ES256".into()],
        leeway: Duration::from_secs(30),
        client_claim: "sub".into(),
        tier_claim: "scope".into(),
        refresh: Duration::from_secs(600),
        min_refresh_interval: Duration::from_secs(30),
    }
}

/// An issuer whose one key (seed 7, kid "k") comes from `settings`.
fn verifier(settings: IssuerSettings) -> JwtVerifier {
    let key = Key::from_jwk(&public_jwk(7, "k")).unwrap();
    let mut verifier = JwtVerifier::new(Vec::<IssuerSettings>::new(), vec!["gold".into()]).unwrap();
    verifier.add_static_issuer(settings, vec![key]).unwrap();
    verifier
}

fn claims() -> Value {
    json!({ "iss": ISSUER, "aud": "api", "sub": "svc", "exp": T + 300 })
}

fn sign(header: &Header, seed: u8) -> String {
    jsonwebtoken::encode(header, &claims(), &signing_key(seed)).unwrap()
}

fn header(kid: &str) -> Header {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.into());
    header
}

async fn refusal(verifier: &JwtVerifier, token: &str) -> TokenRejection {
    verifier.verify(token, T).await.unwrap_err()
}

#[tokio::test]
async fn crit_is_refused_even_on_a_good_signature() {
    let mut crit = header("k");
    crit.crit = Some(vec!["exp".into()]);
    let v = verifier(settings(None));
    assert!(v.verify(&sign(&header("k"), 7), T).await.is_ok());
    assert_eq!(
        refusal(&v, &sign(&crit, 7)).await,
        TokenRejection::UnsupportedCritical
    );
}

#[tokio::test]
async fn typ_is_checked_against_the_issuers_list() {
    let v = verifier(settings(None));
    for typ in [
        Some("at+jwt"),
        Some("application/AT+JWT"),
        Some("JWT"),
        None,
    ] {
        let mut h = header("k");
        h.typ = typ.map(str::to_owned);
        assert!(v.verify(&sign(&h, 7), T).await.is_ok(), "{typ:?}");
    }
    let mut jose = header("k");
    jose.typ = Some("JOSE".into());
    assert_eq!(
        refusal(&v, &sign(&jose, 7)).await,
        TokenRejection::WrongType
    );
    let mut strict = settings(None);
    strict.typ = vec!["at+jwt".into()];
    let mut jwt = header("k");
    jwt.typ = Some("JWT".into());
    assert_eq!(
        refusal(&verifier(strict), &sign(&jwt, 7)).await,
        TokenRejection::WrongType
    );
}

#[tokio::test]
async fn embedded_jwk_jku_and_x5u_never_pick_the_key() {
    let v = verifier(settings(None));
    // Signed by the attacker's key (seed 9), which the header carries.
    let mut h = header("k");
    h.jwk = Some(public_jwk(9, "k"));
    h.jku = Some("https://attacker.test/jwks.json".into());
    h.x5u = Some("https://attacker.test/cert.pem".into());
    assert_eq!(
        refusal(&v, &sign(&h, 9)).await,
        TokenRejection::BadSignature
    );
    h.kid = None;
    assert_eq!(
        refusal(&v, &sign(&h, 9)).await,
        TokenRejection::BadSignature
    );
}

#[test]
fn a_jwk_verifies_only_what_its_use_alg_and_type_allow() {
    let mut jwk = public_jwk(7, "k");
    assert_eq!(Key::from_jwk(&jwk).unwrap().algorithms, [Algorithm::EdDSA]);
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Encryption);
    assert!(Key::from_jwk(&jwk).unwrap_err().contains("use"));
    let mut jwk = public_jwk(7, "k");
    jwk.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::ES256);
    assert!(Key::from_jwk(&jwk).unwrap_err().contains("fit"));
    let mut jwk = public_jwk(7, "k");
    jwk.common.key_algorithm = None;
    assert_eq!(Key::from_jwk(&jwk).unwrap().algorithms, [Algorithm::EdDSA]);
    let symmetric: Jwk =
        serde_json::from_value(json!({ "kty": "oct", "k": "c2VjcmV0", "alg": "HS256" })).unwrap();
    assert!(Key::from_jwk(&symmetric).is_err());
    let rsa = |modulus: &[u8]| -> Jwk {
        let n = URL_SAFE_NO_PAD.encode(modulus);
        serde_json::from_value(json!({ "kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256" }))
            .unwrap()
    };
    assert_eq!(
        Key::from_jwk(&rsa(&[0xc5; 256])).unwrap().algorithms,
        [Algorithm::RS256]
    );
}

/// RSA keys the verifier would refuse (under 2048 or over 8192 bits) are
/// refused when loaded, not judged at each token as forged signatures.
#[test]
fn rsa_keys_outside_2048_to_8192_bits_are_refused_when_loaded() {
    let rsa = |modulus: &[u8]| -> Jwk {
        let n = URL_SAFE_NO_PAD.encode(modulus);
        serde_json::from_value(json!({ "kty": "RSA", "n": n, "e": "AQAB" })).unwrap()
    };
    let mut leading_zeros = vec![0u8; 3];
    leading_zeros.extend([0x01; 256]); // 2041 bits, whatever the zeros
    for (modulus, bits) in [
        (vec![0x01, 0x00, 0x01], 17),
        (vec![0xff; 128], 1024),
        (leading_zeros, 2041),
        (vec![0x01; 1025], 8193),
    ] {
        let error = Key::from_jwk(&rsa(&modulus)).unwrap_err();
        assert!(error.contains(&format!("{bits} bits")), "{error}");
    }
    for modulus in [vec![0x80; 256], vec![0xff; 1024]] {
        assert!(Key::from_jwk(&rsa(&modulus)).is_ok());
    }
}

#[tokio::test]
async fn a_key_is_not_used_for_an_algorithm_it_does_not_fit() {
    // kid "k" is an Ed25519 key; a token claiming ES256 with that kid.
    let v = verifier(settings(None));
    let es = format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k"}"#),
        URL_SAFE_NO_PAD.encode(claims().to_string()),
        URL_SAFE_NO_PAD.encode([0u8; 64]),
    );
    assert_eq!(refusal(&v, &es).await, TokenRejection::AlgorithmNotAllowed);
}

#[test]
fn an_issuer_without_audiences_is_refused() {
    let mut settings = settings(None);
    settings.audiences.clear();
    let error = JwtVerifier::new([settings], vec![]).err().unwrap();
    assert!(error.to_string().contains("audiences"), "{error}");
}

/// Serves one good JWKS (seed 7, kid "k"), then answers every later
/// request with its headers and part of the body, and stalls.
async fn stalling_jwks() -> (String, tokio::task::JoinHandle<()>) {
    jwks_then_stall(json!({ "keys": [public_jwk(7, "k")] }).to_string()).await
}

/// Serves `good` once, then stalls every later request after its headers.
async fn jwks_then_stall(good: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        for served in 0..8 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                good.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            if served == 0 {
                let _ = stream.write_all(good.as_bytes()).await;
                continue;
            }
            let _ = stream.write_all(&good.as_bytes()[..5]).await;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(stream);
            });
        }
    });
    (url, server)
}

#[tokio::test]
async fn a_jwks_entry_we_cannot_use_costs_no_other_key() {
    let mut encryption = serde_json::to_value(public_jwk(8, "enc")).unwrap();
    encryption["use"] = json!("enc");
    let set = json!({ "keys": [
        { "kty": "EC", "crv": "P-521", "alg": "ES512", "kid": "p521", "x": "AA", "y": "AA" },
        { "kty": "oct", "k": "c2VjcmV0", "alg": "HS256", "kid": "hmac" },
        { "kty": "whatever", "kid": "odd" },
        encryption,
        public_jwk(7, "k"),
    ]});
    let (url, _server) = jwks_then_stall(set.to_string()).await;
    let v = JwtVerifier::new([settings(Some(url))], vec!["gold".into()]).unwrap();
    assert_eq!(v.issuers[0].keys.refresh().await.unwrap(), 1);
    assert!(v.verify(&sign(&header("k"), 7), T).await.is_ok());
}

#[tokio::test]
async fn a_stalled_jwks_body_times_out() {
    let (url, _server) = stalling_jwks().await;
    let fetcher = keys::Fetcher::new()
        .unwrap()
        .allow_http(true)
        .with_timeout(Duration::from_millis(500));
    let good: Value = fetcher.json(&url).await.unwrap();
    assert_eq!(good["keys"][0]["kid"], "k");
    // Headers came, the body stalls: the whole fetch is under the timeout
    // (the outer bound only keeps a broken fetch from hanging the test).
    let stalled = tokio::time::timeout(Duration::from_secs(30), fetcher.json::<Value>(&url)).await;
    let error = stalled
        .expect("the fetch outlived its timeout")
        .unwrap_err();
    assert!(error.to_string().contains("timed out"), "{error}");
}

#[tokio::test]
async fn a_stalled_refresh_holds_up_no_known_kid() {
    let (url, _server) = stalling_jwks().await;
    let v = Arc::new(JwtVerifier::new([settings(Some(url))], vec!["gold".into()]).unwrap());
    assert_eq!(v.issuers[0].keys.refresh().await.unwrap(), 1);
    // An unknown kid starts a refresh that stalls until the fetch timeout...
    let unknown = tokio::spawn({
        let v = v.clone();
        async move { v.verify(&sign(&header("new"), 9), T).await }
    });
    while !v.issuers[0].keys.refreshing() && !unknown.is_finished() {
        tokio::task::yield_now().await;
    }
    // ...while a token with a known kid is verified without waiting for it.
    assert!(v.verify(&sign(&header("k"), 7), T).await.is_ok());
    assert!(
        !unknown.is_finished(),
        "the refresh should still be stalled"
    );
    let unknown = tokio::time::timeout(Duration::from_secs(30), unknown).await;
    assert_eq!(
        unknown
            .expect("the refresh outlived its timeout")
            .unwrap()
            .unwrap_err(),
        TokenRejection::UnknownKey
    );
}

/// Public keys made by `openssl genpkey ... | openssl pkey -pubout`.
const RSA_1024_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCiV1vKIfrNnGvct5XVM8+sjk1W
F9V82GXIVNW/aTwexHX2Zalex554TEQ0UyjcwElsC0G2VFjPseWwH4MR9omLu4Vl
IVOL0hitBIOwpwYW7bNCsgbLwVj3A1lfzZ3sImxBkFwnKrFzSeOXdSHH1LGdSqDT
Eji2QC9mdxf2FpsIFwIDAQAB
-----END PUBLIC KEY-----
";
const RSA_2048_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAzY7plkyoPiL+AefOfbCx
6DpUs2m+BA4L4km11tWwFHDplymIf18+ihXK3Y1Eojl7eEIUxZ+bQ7GcR55OPQS6
CFfkRo+La64h53C5UVuZOebZiaGnfrsqeg9WQisnJjB8LTCW/nZ9uJy5MBBR45ei
uXE75FGYsHgq53t9gGSxD0VFdqnC+U7EowQETLw19/DZHYiet/GhG68hNxQoB1hl
r6h1Rx0EE/T6m55xuhKyXN4eyodbIPFJUWoJu3p6awwnZ/zkZeyfJBtvw3TQklxO
i3uXLP+Uq3oJwjFQKPinqFfvSO6GzP7FFaPZGkBdGD8TERE5zyy90DFH2xSPNigB
qQIDAQAB
-----END PUBLIC KEY-----
";

#[test]
fn a_pem_rsa_key_under_2048_bits_is_refused() {
    let error = Key::from_pem(RSA_1024_PUBLIC.as_bytes(), &keys::EVERY).unwrap_err();
    assert!(error.contains("1024 bits"), "{error}");
    let key = Key::from_pem(RSA_2048_PUBLIC.as_bytes(), &keys::EVERY).unwrap();
    assert_eq!(key.algorithms[0], Algorithm::RS256);
}

/// An RSA JWK without `alg` fits six algorithms; its issuer's list picks
/// those it is parsed for (RFC 8725 §3.1: it was all six whatever the
/// issuer accepted), fetched or given.
#[tokio::test]
async fn an_rsa_jwk_without_alg_serves_only_its_issuers_algorithms() {
    let n = URL_SAFE_NO_PAD.encode([0xc5; 256]);
    let rsa = json!({ "kty": "RSA", "kid": "r", "n": n, "e": "AQAB" });
    let jwk: Jwk = serde_json::from_value(rsa.clone()).unwrap();
    for (accepted, ps256) in [(&["RS256"][..], false), (&["RS256", "PS256"], true)] {
        let (url, _server) = jwks_then_stall(json!({ "keys": [rsa] }).to_string()).await;
        let mut settings = settings(Some(url));
        settings.algorithms = accepted.iter().map(|a| a.to_string()).collect();
        let v = JwtVerifier::new([settings], vec!["gold".into()]).unwrap();
        let keys = &v.issuers[0].keys;
        assert_eq!(keys.refresh().await.unwrap(), 1);
        assert!(keys.find(Some("r"), Algorithm::RS256).is_ok());
        let found = keys.find(Some("r"), Algorithm::PS256);
        assert_eq!(found.is_ok(), ps256, "{accepted:?}: {:?}", found.err());
        keys.set(vec![Key::from_jwk(&jwk).unwrap()]);
        let found = keys.find(Some("r"), Algorithm::PS256);
        assert_eq!(
            found.is_ok(),
            ps256,
            "{accepted:?}, given: {:?}",
            found.err()
        );
    }
    // A key that fits none of the issuer's algorithms is skipped.
    let error = Key::from_jwk_for(&jwk, &[Algorithm::ES256]).unwrap_err();
    assert!(error.contains("none of the issuer's"), "{error}");
}

/// A PEM key has no `kid`, yet an IdP's tokens name one: the issuer's sole
/// key verifies them whatever they name (the signature decides), and one
/// of several kid-less keys is picked by none.
#[tokio::test]
async fn a_sole_key_without_kid_verifies_tokens_that_name_one() {
    let mut jwk = public_jwk(7, "k");
    jwk.common.key_id = None;
    let mut verifier = JwtVerifier::new(Vec::<IssuerSettings>::new(), vec!["gold".into()]).unwrap();
    let key = Key::from_jwk(&jwk).unwrap();
    verifier
        .add_static_issuer(settings(None), vec![key])
        .unwrap();
    for token in [
        sign(&header("idp-2024"), 7),
        sign(&Header::new(Algorithm::EdDSA), 7),
    ] {
        assert!(verifier.verify(&token, T).await.is_ok());
    }
    // Signed by another key, it is still refused.
    assert!(verifier
        .verify(&sign(&header("idp-2024"), 8), T)
        .await
        .is_err());
    let mut two = JwtVerifier::new(Vec::<IssuerSettings>::new(), vec!["gold".into()]).unwrap();
    let other = {
        let mut jwk = public_jwk(8, "k");
        jwk.common.key_id = None;
        Key::from_jwk(&jwk).unwrap()
    };
    let keys = vec![Key::from_jwk(&jwk).unwrap(), other];
    two.add_static_issuer(settings(None), keys).unwrap();
    assert!(two.verify(&sign(&header("idp-2024"), 7), T).await.is_err());
}

/// Serves `bodies` in turn (the last one from then on) and counts requests.
async fn jwks_in_turn(
    bodies: Vec<String>,
) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf).await;
            let n = count.fetch_add(1, Ordering::SeqCst);
            let body = &bodies[n.min(bodies.len() - 1)];
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        }
    });
    (url, served, server)
}

/// A fetched set's sole kid-less key does not stand for every kid: a token
/// naming a kid the set lacks fetches the set again, and the key rotated in
/// verifies it (were the sole key taken for it, the token would be refused
/// with no fetch).
#[tokio::test]
async fn a_fetched_sole_key_without_kid_still_fetches_an_unknown_kid() {
    let mut kidless = serde_json::to_value(public_jwk(7, "k")).unwrap();
    kidless.as_object_mut().unwrap().remove("kid");
    let before = json!({ "keys": [kidless] }).to_string();
    let after = json!({ "keys": [kidless, public_jwk(9, "new")] }).to_string();
    let (url, served, _server) = jwks_in_turn(vec![before, after]).await;
    let v = JwtVerifier::new([settings(Some(url))], vec!["gold".into()]).unwrap();
    assert_eq!(v.issuers[0].keys.refresh().await.unwrap(), 1);
    // The sole key still verifies a token that names no kid.
    assert!(v
        .verify(&sign(&Header::new(Algorithm::EdDSA), 7), T)
        .await
        .is_ok());
    assert_eq!(served.load(Ordering::SeqCst), 1);
    assert!(v.verify(&sign(&header("new"), 9), T).await.is_ok());
    assert_eq!(served.load(Ordering::SeqCst), 2);
}
