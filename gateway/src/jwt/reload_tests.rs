//! A reload's verifier keeps the verified tokens of issuers that carry
//! over, and only theirs; a changed key set verifies its issuer's cached
//! tokens again.
use std::time::Duration;

use jsonwebtoken::{jwk::Jwk, EncodingKey, Header};
use serde_json::json;

use super::{keys::Key, *};

const T: i64 = 1_000_000_000;

/// PKCS#8 v1 prefix of an Ed25519 private key; the seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn signing_key(seed: u8) -> EncodingKey {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&[seed; 32]);
    EncodingKey::from_ed_der(&der)
}

fn key(seed: u8) -> Key {
    let mut jwk = Jwk::from_encoding_key(&signing_key(seed), Algorithm::EdDSA).unwrap();
    jwk.common.key_id = Some("k".into());
    Key::from_jwk(&jwk).unwrap()
}

/// A remote issuer (its keys are set by the test: nothing is fetched).
fn remote(issuer: &str) -> IssuerSettings {
    IssuerSettings {
        issuer: issuer.into(),
        audiences: vec!["api".into()],
        typ: preparse::default_typ(),
        allow_insecure_http: true,
        pem: None,
        jwks_url: Some(format!("http://127.0.0.1:9/{issuer}")),
        discovery_url: None,
        algorithms: vec!["EdDSA".into()],
        leeway: Duration::from_secs(30),
        client_claim: "sub".into(),
        tier_claim: "scope".into(),
        refresh: Duration::from_secs(600),
        min_refresh_interval: Duration::from_secs(30),
    }
}

fn token(issuer: &str) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k".into());
    let claims =
        json!({ "iss": issuer, "aud": "api", "sub": "svc", "scope": "gold", "exp": T + 300 });
    jsonwebtoken::encode(&header, &claims, &signing_key(7)).unwrap()
}

fn tiers() -> Vec<String> {
    vec!["bronze".into(), "gold".into()]
}

/// Issuers `a` and `b` with key 7, each with one token verified (cached).
async fn verified() -> JwtVerifier {
    let verifier = JwtVerifier::new([remote("a"), remote("b")], tiers()).unwrap();
    verifier.set_keys("a", vec![key(7)]);
    verifier.set_keys("b", vec![key(7)]);
    for issuer in ["a", "b"] {
        assert_eq!(
            verifier.verify(&token(issuer), T).await.unwrap().tier,
            "gold"
        );
    }
    assert_eq!(verifier.cache.entries(), 2);
    verifier
}

#[tokio::test]
async fn an_unchanged_issuers_verified_tokens_stay_cached_across_a_reload() {
    let old = verified().await;
    let mut changed = remote("b");
    changed.leeway = Duration::from_secs(5);
    let new = old.reconfigured([remote("a"), changed], tiers()).unwrap();
    // `b` changed: its token is gone; `a`'s stays.
    assert_eq!(new.cache.entries(), 1);
    // Served from the cache: the very answer the old verifier cached.
    let before = old.verify(&token("a"), T).await.unwrap();
    let after = new.verify(&token("a"), T).await.unwrap();
    assert!(Arc::ptr_eq(&before, &after));
    // The same issuer, so the same keys: a key it drops after the reload
    // stops verifying in both verifiers.
    new.set_keys("a", vec![key(8)]);
    for verifier in [&old, &new] {
        assert_eq!(
            verifier.verify(&token("a"), T).await.unwrap_err(),
            TokenRejection::BadSignature
        );
    }
}

/// A key the issuer's set drops (an IdP rotating out a leaked key) stops
/// verifying at once, though a token it verified is cached for minutes:
/// the cached answer holds only while its key set has dropped no key.
#[tokio::test]
async fn a_key_dropped_from_the_set_stops_verifying_cached_tokens() {
    let verifier = verified().await;
    let cached = verifier.verify(&token("a"), T).await.unwrap();
    let served = || async { verifier.verify(&token("a"), T).await };
    assert!(Arc::ptr_eq(&cached, &served().await.unwrap()));
    // The same set again, then one more key: nothing dropped, still cached
    // (a refresh every few minutes, or a forged kid's, costs no re-check).
    let other = || {
        let mut jwk = Jwk::from_encoding_key(&signing_key(9), Algorithm::EdDSA).unwrap();
        jwk.common.key_id = Some("k2".into());
        Key::from_jwk(&jwk).unwrap()
    };
    verifier.set_keys("a", vec![key(7)]);
    verifier.set_keys("a", vec![other(), key(7)]);
    assert!(Arc::ptr_eq(&cached, &served().await.unwrap()));
    // Key 7 replaced under its kid: refused, where the cache alone would
    // have served it.
    verifier.set_keys("a", vec![key(8)]);
    assert_eq!(served().await.unwrap_err(), TokenRejection::BadSignature);
    // Another issuer's cached token is untouched.
    let b = verifier.verify(&token("b"), T).await.unwrap();
    assert!(Arc::ptr_eq(
        &b,
        &verifier.verify(&token("b"), T).await.unwrap()
    ));
}

/// A fetch applies its set only if none begun after it applied one
/// first: a slow fetch begun before the IdP dropped key 7 does not bring
/// it back over a newer fetch's set without it.
#[tokio::test]
async fn a_slow_older_fetch_does_not_bring_a_dropped_key_back() {
    let verifier = verified().await;
    let keys = &verifier
        .issuers
        .iter()
        .find(|i| i.settings.issuer == "a")
        .unwrap()
        .keys;
    let (slow, quick) = (keys.begin(), keys.begin());
    assert!(keys.replace(quick, vec![key(8)]));
    assert!(!keys.replace(slow, vec![key(7)]), "an older fetch applied");
    assert_eq!(
        verifier.verify(&token("a"), T).await.unwrap_err(),
        TokenRejection::BadSignature
    );
    // A later one applies.
    assert!(keys.replace(keys.begin(), vec![key(7)]));
    assert!(verifier.verify(&token("a"), T).await.is_ok());
}

#[tokio::test]
async fn a_removed_issuer_or_changed_tiers_drop_the_cached_tokens() {
    let old = verified().await;
    let removed = old.reconfigured([remote("a")], tiers()).unwrap();
    assert_eq!(removed.cache.entries(), 1);
    let retiered = (old.reconfigured([remote("a"), remote("b")], vec!["gold".into()])).unwrap();
    assert_eq!(retiered.cache.entries(), 0);
    // Unchanged: both stay.
    let same = old
        .reconfigured([remote("a"), remote("b")], tiers())
        .unwrap();
    assert_eq!(same.cache.entries(), 2);
}

/// The own issuer's keys are the same across reloads: what follows the
/// gateway's signing keys holds them (`keys_of`), not a verifier, and a
/// rotation it applies reaches the verifier a later reload made.
#[tokio::test]
async fn the_own_issuers_keys_carry_over_every_reload() {
    let mut first = JwtVerifier::new([remote("a")], tiers()).unwrap();
    let mut own = remote("gw");
    own.jwks_url = None;
    first.add_static_issuer(own, vec![key(8)]).unwrap();
    let followed = first.keys_of("gw").unwrap();
    let second = first.reconfigured([remote("b")], tiers()).unwrap();
    drop(first);
    let third = second.reconfigured([remote("a")], tiers()).unwrap();
    assert!(Arc::ptr_eq(&followed, &third.keys_of("gw").unwrap()));
    assert_eq!(
        third.verify(&token("gw"), T).await.unwrap_err(),
        TokenRejection::BadSignature
    );
    followed.set(vec![key(7)]);
    assert!(third.verify(&token("gw"), T).await.unwrap().own);
    assert!(third.keys_of("b").is_none());
}
