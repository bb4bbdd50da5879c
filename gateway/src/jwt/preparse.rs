//! What a token says before any crypto: its shape, its header and its
//! (unverified) claims. A pure function of the text, so garbage costs no
//! signature check and the fuzzer can reach it (`gateway::jwt::preparse`).
//!
//! Strict on purpose (RFC 8725 §3): three segments of canonical base64url
//! without padding (no `=`, `+`, `/`, no stray trailing bits), a header
//! that parses as one JSON object with a known `alg` and no `crit`, and a
//! claims segment that is a JSON object.
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::Header;
use serde_json::Value;

use super::TokenRejection;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// A token's header and claims, not yet verified.
#[derive(Debug)]
pub struct Preparsed {
    pub header: Header,
    pub claims: Value,
    /// The claims segment decoded (JSON), for the registered-claims check.
    pub claims_json: Vec<u8>,
    /// The signature segment decoded.
    pub signature: Vec<u8>,
}

/// Cheap structural check: three base64url segments, bounded size.
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN_BYTES
        && token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Shape, header and claims of `token`; refuses what no issuer could
/// accept. `crit` is refused whatever it lists: the gateway understands no
/// extension (RFC 7515 §4.1.11). `jku`, `x5u`, `x5c` and an embedded `jwk`
/// are parsed but never used: keys come from the issuer's configuration.
pub fn preparse(token: &str) -> Result<Preparsed, TokenRejection> {
    if !looks_like_jwt(token) {
        return Err(TokenRejection::Malformed);
    }
    let mut segments = token.split('.');
    let (Some(header), Some(claims), Some(signature)) =
        (segments.next(), segments.next(), segments.next())
    else {
        return Err(TokenRejection::Malformed);
    };
    let decode = |segment: &str| {
        URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| TokenRejection::Malformed)
    };
    // Checked for canonical form here, read by the crypto later.
    let signature = decode(signature)?;
    let header = decode(header)?;
    // `crit` first: a header naming extensions is refused whatever else it says.
    let raw: serde_json::Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| TokenRejection::Malformed)?;
    if raw.contains_key("crit") {
        return Err(TokenRejection::UnsupportedCritical);
    }
    // `alg: none` and unknown algorithms fail to parse here.
    let header: Header = serde_json::from_slice(&header).map_err(|_| TokenRejection::Malformed)?;
    let claims_json = decode(claims)?;
    let claims: Value =
        serde_json::from_slice(&claims_json).map_err(|_| TokenRejection::Malformed)?;
    if !claims.is_object() {
        return Err(TokenRejection::Malformed);
    }
    Ok(Preparsed {
        header,
        claims,
        claims_json,
        signature,
    })
}

/// Whether a header's `typ` is one of `accepted` (case-insensitive, an
/// `application/` prefix optional, RFC 7515 §4.1.9); absent is accepted.
pub fn typ_allowed(typ: Option<&str>, accepted: &[String]) -> bool {
    let Some(typ) = typ else {
        return true;
    };
    let bare = |t: &str| {
        let t = t.trim();
        match t.get(..12) {
            Some(prefix) if prefix.eq_ignore_ascii_case("application/") => t[12..].to_owned(),
            _ => t.to_owned(),
        }
    };
    let typ = bare(typ);
    accepted.iter().any(|a| bare(a).eq_ignore_ascii_case(&typ))
}

/// `typ` values accepted when an issuer names none: access tokens
/// (RFC 9068) and plain JWTs.
pub fn default_typ() -> Vec<String> {
    vec!["at+jwt".into(), "JWT".into()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str, claims: &str) -> String {
        format!("{}.{}.c2k", segment(header), segment(claims))
    }

    #[test]
    fn shape_check_rejects_garbage_before_crypto() {
        assert!(looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt("gk_abc_def"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c d"));
        assert!(!looks_like_jwt(&format!(
            "a.b.{}",
            "c".repeat(MAX_TOKEN_BYTES)
        )));
    }

    #[test]
    fn a_plain_token_preparses() {
        let parsed = preparse(&token(
            r#"{"alg":"RS256","kid":"a","typ":"JWT"}"#,
            r#"{"iss":"i"}"#,
        ))
        .unwrap();
        assert_eq!(parsed.header.kid.as_deref(), Some("a"));
        assert_eq!(parsed.claims["iss"], "i");
    }

    #[test]
    fn crit_is_refused_whatever_it_names() {
        for crit in [r#"["exp"]"#, "[]", r#""b64""#, "null"] {
            let header = format!(r#"{{"alg":"RS256","crit":{crit}}}"#);
            assert_eq!(
                preparse(&token(&header, "{}")).unwrap_err(),
                TokenRejection::UnsupportedCritical,
                "{crit}"
            );
        }
    }

    #[test]
    fn none_and_non_canonical_encodings_are_malformed() {
        for alg in ["none", "None", "NONE", "HS999"] {
            let header = format!(r#"{{"alg":"{alg}"}}"#);
            assert_eq!(
                preparse(&token(&header, "{}")).unwrap_err(),
                TokenRejection::Malformed
            );
        }
        let good = token(r#"{"alg":"RS256"}"#, r#"{"iss":"i"}"#);
        let (header, rest) = good.split_once('.').unwrap();
        // Padding, standard-alphabet characters, trailing bits that are not zero.
        for bad in [
            format!("{header}=.{rest}"),
            format!("{header}+.{rest}"),
            format!("{header}/.{rest}"),
            format!("{header}.{rest}").replace("c2k", "c2l"),
        ] {
            assert_eq!(
                preparse(&bad).unwrap_err(),
                TokenRejection::Malformed,
                "{bad}"
            );
        }
        assert!(preparse(&token(r#"{"alg":"RS256"}"#, "[1]")).is_err());
        assert!(preparse(&token(r#"{"alg":"RS256","alg":"RS256"}"#, "{}")).is_err());
    }

    #[test]
    fn typ_is_matched_without_case_or_media_type_prefix() {
        let default = default_typ();
        for typ in ["at+jwt", "AT+JWT", "application/at+jwt", "JWT", "jwt"] {
            assert!(typ_allowed(Some(typ), &default), "{typ}");
        }
        assert!(typ_allowed(None, &default));
        for typ in ["JOSE", "secevent+jwt", "", "application/"] {
            assert!(!typ_allowed(Some(typ), &default), "{typ}");
        }
        assert!(!typ_allowed(Some("JWT"), &["at+jwt".to_owned()]));
    }
}
