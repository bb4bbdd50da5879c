//! The verifier checks signatures with keys parsed once and the registered
//! claims itself ([`super::signed`]); these tests hold it to what
//! `jsonwebtoken::decode` with the verifier's old `Validation` answered,
//! claim set by claim set (odd types, duplicates, `aud` forms, times).
use std::time::Duration;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{errors::ErrorKind, jwk::Jwk, DecodingKey, EncodingKey, Validation};

use super::*;

pub(super) const T: i64 = 1_000_000_000;
pub(super) const ISSUER: &str = "https://idp.test";

/// PKCS#8 v1 prefix of an Ed25519 private key; the seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn signing_key() -> EncodingKey {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&[9; 32]);
    EncodingKey::from_ed_der(&der)
}

fn jwk() -> Jwk {
    Jwk::from_encoding_key(&signing_key(), Algorithm::EdDSA).unwrap()
}

pub(super) fn settings(audiences: &[&str]) -> IssuerSettings {
    IssuerSettings {
        issuer: ISSUER.into(),
        audiences: audiences.iter().map(|a| a.to_string()).collect(),
        typ: preparse::default_typ(),
        allow_insecure_http: false,
        pem: None,
        jwks_url: None,
        discovery_url: None,
        algorithms: vec!["EdDSA".into()],
        leeway: Duration::from_secs(30),
        client_claim: "sub".into(),
        tier_claim: "scope".into(),
        refresh: Duration::from_secs(600),
        min_refresh_interval: Duration::from_secs(30),
    }
}

/// A token over the claims JSON exactly as written (duplicates kept).
fn token(claims: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#);
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), &signing_key(), Algorithm::EdDSA);
    format!("{input}.{}", signature.unwrap())
}

/// What the verifier answered before: its `Validation` and
/// `jsonwebtoken::decode`, then `validity`, the iss lookup first.
fn reference(token: &str, settings: &IssuerSettings, now: i64) -> Result<(), TokenRejection> {
    let Preparsed { header, claims, .. } = preparse(token)?;
    let iss = claims.get("iss").and_then(Value::as_str);
    if iss.ok_or(TokenRejection::MissingClaim)? != settings.issuer {
        return Err(TokenRejection::UnknownIssuer);
    }
    let leeway = settings.leeway.as_secs();
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_issuer(&[&settings.issuer]);
    if settings.audiences.iter().any(|a| a == ANY_AUDIENCE) {
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss"]);
    } else {
        validation.set_audience(&settings.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    }
    let key = DecodingKey::from_jwk(&jwk()).unwrap();
    match jsonwebtoken::decode::<Value>(token, &key, &validation) {
        Ok(decoded) => validity::check(&decoded.claims, now, leeway),
        Err(error) => {
            let kind = error.kind();
            if matches!(kind, ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience) {
                validity::check(&claims, now, leeway)?;
            }
            Err(match kind {
                ErrorKind::InvalidAudience => TokenRejection::WrongAudience,
                ErrorKind::InvalidIssuer => TokenRejection::WrongIssuer,
                ErrorKind::MissingRequiredClaim(_) => TokenRejection::MissingClaim,
                ErrorKind::InvalidSignature => TokenRejection::BadSignature,
                _ => TokenRejection::Malformed,
            })
        }
    }
}

async fn verified(token: &str, settings: &IssuerSettings, now: i64) -> Result<(), TokenRejection> {
    let mut verifier = JwtVerifier::new(Vec::<IssuerSettings>::new(), vec!["gold".into()]).unwrap();
    let key = keys::Key::from_jwk(&jwk()).unwrap();
    verifier
        .add_static_issuer(settings.clone(), vec![key])
        .unwrap();
    verifier.verify(token, now).await.map(|_| ())
}

#[tokio::test]
async fn registered_claims_are_judged_as_jsonwebtoken_judged_them() {
    let (exp, late) = (T + 300, T - 100);
    let iss = format!(r#""iss":"{ISSUER}","sub":"svc""#);
    let mut cases = vec![
        format!(r#"{{{iss},"aud":"api","exp":{exp}}}"#),
        format!(r#"{{{iss},"aud":"api"}}"#),
        format!(r#"{{{iss},"aud":"api","exp":null}}"#),
        format!(r#"{{{iss},"aud":"api","exp":"{exp}"}}"#),
        format!(r#"{{{iss},"aud":"api","exp":-5}}"#),
        format!(r#"{{{iss},"aud":"api","exp":{exp}.4}}"#),
        format!(r#"{{{iss},"aud":"api","exp":1e300}}"#),
        format!(r#"{{{iss},"aud":"api","exp":{late}}}"#),
        format!(r#"{{{iss},"aud":"x","exp":{late}}}"#),
        format!(r#"{{{iss},"aud":"api","exp":{exp},"nbf":"soon"}}"#),
        format!(r#"{{{iss},"aud":"api","exp":{exp},"nbf":{exp}}}"#),
        format!(r#"{{{iss},"aud":"api","exp":{exp},"exp":{exp}}}"#),
        format!(r#"{{{iss},"aud":"api","aud":"api","exp":{exp}}}"#),
        format!(r#"{{{iss},"aud":"api","exp":{exp},"nbf":1,"nbf":2}}"#),
        format!(r#"{{{iss},"sub":"again","aud":"api","exp":{exp}}}"#),
        format!(r#"{{{iss},"aud":"api","exp":{exp},"x":1,"x":2}}"#),
        format!(r#"{{"iss":"{ISSUER}","iss":"{ISSUER}","sub":"s","aud":"api","exp":{exp}}}"#),
    ];
    for aud in [
        "null",
        "[]",
        r#"["x","api"]"#,
        r#"["x"]"#,
        r#""x""#,
        "5",
        "[5]",
        r#"["api",5]"#,
        r#"{"a":1}"#,
        r#"["api","api"]"#,
        "true",
    ] {
        cases.push(format!(r#"{{{iss},"aud":{aud},"exp":{exp}}}"#));
    }
    for audiences in [&["api"][..], &["other", "api"], &[ANY_AUDIENCE]] {
        let settings = settings(audiences);
        for claims in &cases {
            let token = token(claims);
            assert_eq!(
                verified(&token, &settings, T).await,
                reference(&token, &settings, T),
                "{claims} with audiences {audiences:?}"
            );
        }
    }
}

/// A client claim the upstream could not be given as `X-Client-Id` (CR,
/// LF, a control byte) is refused: the token was accepted and the field
/// silently left out, so the upstream got a tier and no identity.
#[tokio::test]
async fn a_client_claim_that_is_no_header_value_is_refused() {
    let settings = settings(&["api"]);
    let exp = T + 300;
    for (sub, want) in [
        ("svc", Ok(())),
        ("a b", Ok(())),
        ("é", Ok(())),
        (
            "a\\r\\nx-client-tier: gold",
            Err(TokenRejection::InvalidClaim),
        ),
        ("a\\u0001", Err(TokenRejection::InvalidClaim)),
        ("a\\u007f", Err(TokenRejection::InvalidClaim)),
    ] {
        let claims = format!(r#"{{"iss":"{ISSUER}","sub":"{sub}","aud":"api","exp":{exp}}}"#);
        assert_eq!(verified(&token(&claims), &settings, T).await, want, "{sub}");
    }
}

#[tokio::test]
async fn a_signature_over_other_claims_is_refused() {
    let settings = settings(&["api"]);
    let good = token(&format!(
        r#"{{"iss":"{ISSUER}","sub":"svc","aud":"api","exp":{}}}"#,
        T + 300
    ));
    assert_eq!(verified(&good, &settings, T).await, Ok(()));
    let (input, signature) = good.rsplit_once('.').unwrap();
    let (header, _) = input.split_once('.').unwrap();
    let other = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"iss":"{ISSUER}","sub":"root","aud":"api","exp":{}}}"#,
        T + 300
    ));
    let forged = format!("{header}.{other}.{signature}");
    assert_eq!(
        verified(&forged, &settings, T).await,
        Err(TokenRejection::BadSignature)
    );
    assert_eq!(
        reference(&forged, &settings, T),
        Err(TokenRejection::BadSignature)
    );
}

/// A PEM file holding the public half of [`signing_key`].
fn public_pem(dir: &std::path::Path) -> std::path::PathBuf {
    let jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(params) = jwk().algorithm else {
        panic!("an Ed25519 JWK is an octet key pair");
    };
    // SPKI for Ed25519: the algorithm identifier, then the 32-byte key.
    let mut der = vec![
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    der.extend(URL_SAFE_NO_PAD.decode(&params.x).unwrap());
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let path = dir.join("idp.pem");
    std::fs::write(
        &path,
        format!("-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----\n"),
    )
    .unwrap();
    path
}

/// `gk_key_id` ties a token the gateway minted to the API key that bought
/// it. Another issuer's token carrying the claim must not make the
/// gateway judge it by one of its keys: the claim is read from its own
/// tokens only.
#[tokio::test]
async fn the_key_id_claim_is_read_from_the_gateways_own_tokens_only() {
    let claims = format!(
        r#"{{"iss":"{ISSUER}","sub":"svc","aud":"api","exp":{},"{}":"k1"}}"#,
        T + 300,
        crate::tokens::KEY_ID_CLAIM
    );
    let token = token(&claims);

    let mut own = JwtVerifier::new(Vec::<IssuerSettings>::new(), vec!["gold".into()]).unwrap();
    let key = keys::Key::from_jwk(&jwk()).unwrap();
    own.add_static_issuer(settings(&["api"]), vec![key])
        .unwrap();
    let verified = own.verify(&token, T).await.unwrap();
    assert!(verified.own);
    assert_eq!(verified.key_id.as_deref(), Some("k1"));

    let dir = tempfile::tempdir().unwrap();
    let mut configured = settings(&["api"]);
    configured.pem = Some(public_pem(dir.path()));
    let foreign = JwtVerifier::new(vec![configured], vec!["gold".into()]).unwrap();
    let verified = foreign.verify(&token, T).await.unwrap();
    assert!(!verified.own);
    assert_eq!(verified.client_id, "svc");
    assert_eq!(verified.key_id, None);
}

/// RFC 6749 §3.3: `scope` splits on SP alone; split on any Unicode
/// whitespace, `read\u{a0}gold` named the tier `gold` (found by an attack).
#[test]
fn scopes_split_on_spaces_alone() {
    let scopes = |text: &str| claim_strings(Some(&Value::String(text.into())));
    assert_eq!(scopes(" read  write "), ["read", "write"]);
    for other in [
        "\u{a0}", "\u{2003}", "\u{3000}", "\u{85}", "\t", "\n", "\u{b}", "\u{c}",
    ] {
        assert_eq!(
            scopes(&format!("read{other}gold")),
            [format!("read{other}gold")]
        );
    }
    let array = serde_json::json!(["read gold", "x"]);
    assert_eq!(claim_strings(Some(&array)), ["read gold", "x"]);
}
