//! Verification at a fake `now`: an in-memory Ed25519 issuer (no files,
//! no network) and times in 2001, long past by the system clock, so a
//! check that read the system clock would fail these tests.
use std::time::Duration;

use jsonwebtoken::{jwk::Jwk, EncodingKey, Header};
use serde_json::json;

use super::*;

const T: i64 = 1_000_000_000;
const LEEWAY: i64 = 30;
const ISSUER: &str = "https://idp.test";

/// PKCS#8 v1 prefix of an Ed25519 private key; the seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn signing_key() -> EncodingKey {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&[7; 32]);
    EncodingKey::from_ed_der(&der)
}

fn settings() -> IssuerSettings {
    IssuerSettings {
        issuer: ISSUER.into(),
        audiences: vec!["api".into()],
        typ: super::preparse::default_typ(),
        allow_insecure_http: false,
        pem: None,
        jwks_url: None,
        discovery_url: None,
        algorithms: vec!["EdDSA".into()],
        leeway: Duration::from_secs(LEEWAY as u64),
        client_claim: "sub".into(),
        tier_claim: "scope".into(),
        refresh: Duration::from_secs(600),
        min_refresh_interval: Duration::from_secs(30),
    }
}

/// A fresh verifier per check, so no answer comes from the cache.
fn verifier() -> JwtVerifier {
    let jwk = Jwk::from_encoding_key(&signing_key(), Algorithm::EdDSA).unwrap();
    let tiers = vec!["bronze".into(), "gold".into()];
    let mut verifier = JwtVerifier::new(Vec::<IssuerSettings>::new(), tiers).unwrap();
    verifier
        .add_static_issuer(settings(), vec![keys::Key::from_jwk(&jwk).unwrap()])
        .unwrap();
    verifier
}

fn token(claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &signing_key()).unwrap()
}

fn claims() -> Value {
    json!({ "iss": ISSUER, "aud": "api", "sub": "svc", "scope": "gold", "exp": T + 300 })
}

async fn verify_at(claims: &Value, now: i64) -> Result<Arc<VerifiedToken>, TokenRejection> {
    verifier().verify(&token(claims), now).await
}

#[tokio::test]
async fn a_token_is_valid_at_now() {
    let verified = verify_at(&claims(), T).await.unwrap();
    assert_eq!(verified.client_id, "svc");
    assert_eq!(verified.tier, "gold");
}

#[tokio::test]
async fn exp_holds_through_the_leeway_and_not_a_second_longer() {
    assert!(verify_at(&claims(), T + 300 + LEEWAY).await.is_ok());
    assert_eq!(
        verify_at(&claims(), T + 300 + LEEWAY + 1)
            .await
            .unwrap_err(),
        TokenRejection::Expired
    );
}

#[tokio::test]
async fn nbf_is_honoured_from_the_start_of_the_leeway() {
    let mut claims = claims();
    claims["nbf"] = json!(T + 100);
    assert_eq!(
        verify_at(&claims, T + 100 - LEEWAY - 1).await.unwrap_err(),
        TokenRejection::NotYetValid
    );
    assert!(verify_at(&claims, T + 100 - LEEWAY).await.is_ok());
}

#[tokio::test]
async fn a_token_without_exp_is_refused() {
    let mut claims = claims();
    claims.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        verify_at(&claims, T).await.unwrap_err(),
        TokenRejection::MissingClaim
    );
}

#[tokio::test]
async fn expiry_is_reported_before_a_wrong_audience() {
    let mut claims = claims();
    claims["aud"] = json!("other-api");
    assert_eq!(
        verify_at(&claims, T).await.unwrap_err(),
        TokenRejection::WrongAudience
    );
    assert_eq!(
        verify_at(&claims, T + 300 + LEEWAY + 1).await.unwrap_err(),
        TokenRejection::Expired
    );
}
