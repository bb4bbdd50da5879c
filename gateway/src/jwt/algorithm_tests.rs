//! Every algorithm the verifier hands to aws-lc, end to end: a token
//! signed with it is accepted from a PEM key, and the mix-ups an attacker
//! would try are not (a signature of one RSA padding under the other's
//! name, a P-256 key under ES384, a DER-encoded ECDSA signature).
use aws_lc_rs::{
    encoding::AsDer,
    rand::SystemRandom,
    rsa,
    signature::{self as lc, KeyPair as _},
};
use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine,
};
use jsonwebtoken::EncodingKey;

use super::claims_tests::{settings, ISSUER, T};
use super::*;

/// Signs as the algorithm names: RSA through aws-lc, the rest through
/// jsonwebtoken.
enum Signer {
    Rsa(rsa::KeyPair),
    Other(EncodingKey),
}

impl Signer {
    fn sign(&self, algorithm: Algorithm, input: &str) -> String {
        match self {
            Signer::Rsa(pair) => {
                let padding: &'static dyn lc::RsaEncoding = match algorithm {
                    Algorithm::RS256 => &lc::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &lc::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &lc::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &lc::RSA_PSS_SHA256,
                    Algorithm::PS384 => &lc::RSA_PSS_SHA384,
                    Algorithm::PS512 => &lc::RSA_PSS_SHA512,
                    other => panic!("{other:?} is not RSA"),
                };
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(
                    padding,
                    &SystemRandom::new(),
                    input.as_bytes(),
                    &mut signature,
                )
                .unwrap();
                URL_SAFE_NO_PAD.encode(signature)
            }
            Signer::Other(key) => {
                jsonwebtoken::crypto::sign(input.as_bytes(), key, algorithm).unwrap()
            }
        }
    }
}

fn public_pem(der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        lines.join("\n")
    )
}

fn rsa_pair() -> (Signer, String) {
    let pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap();
    let pem = public_pem(pair.public_key().as_der().unwrap().as_ref());
    (Signer::Rsa(pair), pem)
}

fn ec_pair(curve: &'static rcgen::SignatureAlgorithm) -> (rcgen::KeyPair, Signer, String) {
    let pair = rcgen::KeyPair::generate_for(curve).unwrap();
    let signer = Signer::Other(EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap());
    let pem = pair.public_key_pem();
    (pair, signer, pem)
}

/// A token whose header names `header_alg`, its input signed by `sign`.
fn token(header_alg: &str, sign: impl FnOnce(&str) -> String) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{header_alg}","typ":"JWT"}}"#));
    let claims = format!(
        r#"{{"iss":"{ISSUER}","sub":"svc","aud":"api","exp":{}}}"#,
        T + 300
    );
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
    let signature = sign(&input);
    format!("{input}.{signature}")
}

async fn verify(token: &str, pem: &str, algorithms: &[&str]) -> Result<(), TokenRejection> {
    let mut issuer = settings(&["api"]);
    issuer.algorithms = algorithms.iter().map(|a| a.to_string()).collect();
    let key = keys::Key::from_pem(pem.as_bytes(), &keys::EVERY).unwrap();
    let mut verifier = JwtVerifier::new(Vec::<IssuerSettings>::new(), vec!["gold".into()]).unwrap();
    verifier.add_static_issuer(issuer, vec![key]).unwrap();
    verifier.verify(token, T).await.map(|_| ())
}

#[tokio::test]
async fn each_algorithm_verifies_its_own_signatures_and_refuses_mix_ups() {
    let (rsa, rsa_pem) = rsa_pair();
    for algorithm in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        let name = format!("{algorithm:?}");
        let good = token(&name, |input| rsa.sign(algorithm, input));
        assert_eq!(verify(&good, &rsa_pem, &[&name]).await, Ok(()), "{name}");
    }
    // PKCS#1 v1.5 signature presented as PSS (and back), both allowed.
    let both = ["RS256", "PS256"];
    let pkcs1_as_pss = token("PS256", |input| rsa.sign(Algorithm::RS256, input));
    let pss_as_pkcs1 = token("RS256", |input| rsa.sign(Algorithm::PS256, input));
    for forged in [pkcs1_as_pss, pss_as_pkcs1] {
        assert_eq!(
            verify(&forged, &rsa_pem, &both).await,
            Err(TokenRejection::BadSignature)
        );
    }

    let (p256, p256_signer, p256_pem) = ec_pair(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (_, p384_signer, p384_pem) = ec_pair(&rcgen::PKCS_ECDSA_P384_SHA384);
    let es256 = token("ES256", |input| p256_signer.sign(Algorithm::ES256, input));
    assert_eq!(verify(&es256, &p256_pem, &["ES256"]).await, Ok(()));
    let es384 = token("ES384", |input| p384_signer.sign(Algorithm::ES384, input));
    assert_eq!(verify(&es384, &p384_pem, &["ES384"]).await, Ok(()));
    // A P-256 key's signature named ES384, with ES384 allowed.
    let wrong_curve = token("ES384", |input| p256_signer.sign(Algorithm::ES256, input));
    assert!(verify(&wrong_curve, &p256_pem, &["ES256", "ES384"])
        .await
        .is_err());
    // ECDSA in DER, not JOSE's fixed-width r||s.
    let der_signer =
        lc::EcdsaKeyPair::from_pkcs8(&lc::ECDSA_P256_SHA256_ASN1_SIGNING, &p256.serialize_der())
            .unwrap();
    let der = token("ES256", |input| {
        let signature = der_signer
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    });
    assert_eq!(
        verify(&der, &p256_pem, &["ES256"]).await,
        Err(TokenRejection::BadSignature)
    );
}
