//! The signature and the registered claims of a token, checked as
//! jsonwebtoken's `decode` checked them, without its per-token costs: keys
//! aws-lc parsed once when they were loaded (`decode` parsed the key, and
//! for RSA set up its Montgomery context, on every token), and the header
//! and claims [`super::preparse`] already read (`decode` parsed the header
//! twice and the claims twice more).
use std::{borrow::Cow, collections::HashSet, fmt, sync::Arc};

use aws_lc_rs::signature::{self as lc, ParsedPublicKey, VerificationAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde::{de, Deserialize, Deserializer};

use super::{settings::IssuerSettings, validity, TokenRejection, ANY_AUDIENCE};

/// A key parsed for each algorithm it may verify.
pub type ParsedKeys = Arc<[(Algorithm, Arc<ParsedPublicKey>)]>;

fn lc_algorithm(algorithm: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    if let Some(rsa) = rsa_params(algorithm) {
        return Some(rsa);
    }
    Some(match algorithm {
        Algorithm::ES256 => &lc::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &lc::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &lc::ED25519,
        _ => return None,
    })
}

fn rsa_params(algorithm: Algorithm) -> Option<&'static lc::RsaParameters> {
    Some(match algorithm {
        Algorithm::RS256 => &lc::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &lc::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &lc::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &lc::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &lc::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &lc::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

/// `key` parsed by aws-lc for each of `algorithms`, as jsonwebtoken's
/// aws-lc backend would parse it per token; `Err` when aws-lc refuses it.
pub fn parse(key: &DecodingKey, algorithms: &[Algorithm]) -> Result<ParsedKeys, String> {
    let parse_one = |algorithm: Algorithm| {
        let refused = |e: aws_lc_rs::error::KeyRejected| format!("{algorithm:?}: {e}");
        let parsed = match key.kind() {
            DecodingKeyKind::SecretOrDer(bytes) => {
                let params = lc_algorithm(algorithm).ok_or("an unsupported algorithm")?;
                ParsedPublicKey::new(params, bytes).map_err(refused)?
            }
            DecodingKeyKind::RsaModulusExponent { n, e } => {
                let params = rsa_params(algorithm).ok_or("an RSA key for a non-RSA algorithm")?;
                (lc::RsaPublicKeyComponents { n, e })
                    .to_parsed_public_key(params)
                    .map_err(refused)?
            }
        };
        Ok::<_, String>((algorithm, Arc::new(parsed)))
    };
    algorithms.iter().map(|&a| parse_one(a)).collect()
}

/// Whether `signature` (decoded) signs `token`'s header and claims.
pub fn signature(token: &str, signature: &[u8], key: &ParsedPublicKey) -> bool {
    let Some((input, _)) = token.rsplit_once('.') else {
        return false;
    };
    key.verify_sig(input.as_bytes(), signature).is_ok()
}

/// A registered claim as jsonwebtoken's validation reads it.
#[derive(Default)]
enum Claim<T> {
    Parsed(T),
    /// Present but not of the claim's type (or `null`): not present, for
    /// the required-claims check.
    Unreadable,
    #[default]
    Absent,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Claim<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(deserializer) {
            Ok(Some(value)) => Claim::Parsed(value),
            _ => Claim::Unreadable,
        })
    }
}

/// A NumericDate: a non-negative integer or a finite non-negative float
/// below 2^64 (a negative integer is not one).
struct Date;

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Date;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a NumericDate")
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Date, E> {
                Ok(Date)
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Date, E> {
                if value.is_finite() && value >= 0.0 && value < u64::MAX as f64 {
                    return Ok(Date);
                }
                Err(E::custom("not a date"))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `iss` or `aud`: one string or a set of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany<'a> {
    One(#[serde(borrow)] Cow<'a, str>),
    Many(#[serde(borrow)] HashSet<Cow<'a, str>>),
}

impl OneOrMany<'_> {
    /// Whether one of the values is among `accepted` (an empty set never is).
    fn any_in(&self, accepted: &[String]) -> bool {
        match self {
            OneOrMany::One(value) => accepted.iter().any(|a| a == value),
            OneOrMany::Many(values) => values.iter().any(|v| accepted.iter().any(|a| a == v)),
        }
    }
}

/// The registered claims, from the claims segment's JSON. A struct, so a
/// duplicated registered claim is refused as jsonwebtoken refused it.
#[derive(Deserialize)]
struct Registered<'a> {
    #[serde(default)]
    exp: Claim<Date>,
    /// Read only so that a duplicate is refused (`validity` judges `nbf`).
    #[serde(default)]
    #[allow(dead_code)]
    nbf: Claim<Date>,
    /// Likewise.
    #[serde(borrow, default)]
    #[allow(dead_code)]
    sub: Claim<Cow<'a, str>>,
    #[serde(borrow, default)]
    iss: Claim<OneOrMany<'a>>,
    #[serde(borrow, default)]
    aud: Claim<OneOrMany<'a>>,
}

/// Checks the claims of a token whose signature held: `exp` present (and
/// `aud`, unless the issuer takes any), then times against `now` (before
/// `iss` and `aud`, as before), then `iss` is the issuer's and `aud` one of
/// its audiences. `json` is the claims segment decoded, `claims` its value.
pub fn claims(
    json: &[u8],
    claims: &serde_json::Value,
    settings: &IssuerSettings,
    now: i64,
) -> Result<(), TokenRejection> {
    let registered: Registered =
        serde_json::from_slice(json).map_err(|_| TokenRejection::Malformed)?;
    let any_audience = settings.audiences.iter().any(|a| a == ANY_AUDIENCE);
    let present = |claim: bool| claim.then_some(()).ok_or(TokenRejection::MissingClaim);
    present(matches!(registered.exp, Claim::Parsed(_)))?;
    present(matches!(registered.iss, Claim::Parsed(_)))?;
    if !any_audience {
        present(matches!(registered.aud, Claim::Parsed(_)))?;
    }
    let leeway = settings.leeway.as_secs();
    validity::check(claims, now, leeway)?;
    if let Claim::Parsed(iss) = &registered.iss {
        if !iss.any_in(std::slice::from_ref(&settings.issuer)) {
            return Err(TokenRejection::WrongIssuer);
        }
    }
    if any_audience {
        return Ok(());
    }
    match &registered.aud {
        Claim::Parsed(aud) if aud.any_in(&settings.audiences) => Ok(()),
        _ => Err(TokenRejection::WrongAudience),
    }
}
