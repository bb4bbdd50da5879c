//! JWT verification for configured issuers.
//!
//! Order of checks, cheapest first: size and shape (no crypto for garbage),
//! the verified-token cache, header (`alg` in the issuer's allowed list:
//! never `none`, never HS*), issuer by `iss`, key by `kid` (one rate-limited
//! JWKS refresh for an unknown `kid`), then signature, `exp`/`nbf` with
//! leeway (against the caller's `now`, never the system clock), `iss` and
//! `aud`.
pub mod cache;
#[cfg(test)]
mod clock_tests;
pub mod keys;
mod settings;
mod validity;

use std::sync::Arc;

use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use self::settings::{default_leeway, IssuerSettings};
use self::{
    cache::TokenCache,
    keys::{Fetcher, IssuerKeys, KeySource},
};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Cached verifications are re-checked at least this often, so a key
/// removed from the JWKS stops working for cached tokens too.
const MAX_CACHE_SECONDS: i64 = 300;
const CACHE_CAPACITY: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("fetching {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("issuers[{index}]: {message}")]
    Config { index: usize, message: String },
    #[error("TLS client for key fetches: {0}")]
    Tls(String),
}

/// Why a token was refused (the client sees this; no secrets in it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRejection {
    Malformed,
    UnknownIssuer,
    AlgorithmNotAllowed,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    MissingClaim,
}

impl TokenRejection {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRejection::Malformed => "malformed_token",
            TokenRejection::UnknownIssuer => "unknown_issuer",
            TokenRejection::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenRejection::UnknownKey => "unknown_key",
            TokenRejection::BadSignature => "bad_signature",
            TokenRejection::Expired => "expired",
            TokenRejection::NotYetValid => "not_yet_valid",
            TokenRejection::WrongAudience => "wrong_audience",
            TokenRejection::WrongIssuer => "wrong_issuer",
            TokenRejection::MissingClaim => "missing_claim",
        }
    }
}

/// What a valid token says about its client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    pub issuer: String,
    pub client_id: String,
    pub tier: String,
    pub scopes: Vec<String>,
}

struct Issuer {
    settings: IssuerSettings,
    algorithms: Vec<Algorithm>,
    keys: IssuerKeys,
}

pub struct JwtVerifier {
    issuers: Vec<Arc<Issuer>>,
    /// Tier names, lowest first: the highest one named in a token wins.
    tiers: Vec<String>,
    cache: TokenCache<VerifiedToken>,
}

/// Parses an algorithm name, refusing `none` and HMAC: a shared secret has
/// no place in a gateway that verifies with public keys.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let algorithm: Algorithm = name
        .parse()
        .map_err(|_| format!("unknown algorithm {name:?}"))?;
    if matches!(
        algorithm,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
    ) {
        return Err(format!(
            "{name} needs a shared secret; only public-key algorithms are accepted"
        ));
    }
    Ok(algorithm)
}

/// Cheap structural check: three base64url segments, bounded size.
pub fn looks_like_jwt(token: &str) -> bool {
    token.len() <= MAX_TOKEN_BYTES
        && token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The header and claims, decoded and trusted for nothing: what picks the
/// issuer and key before any crypto. Pure, so `fuzz/` drives it directly.
pub fn decode_unverified(token: &str) -> Result<(jsonwebtoken::Header, Value), TokenRejection> {
    // `alg: none` and unknown algorithms fail to parse here.
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Malformed)?;
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|_| TokenRejection::Malformed)?;
    Ok((header, claims))
}

fn claim_strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

impl JwtVerifier {
    /// Builds verifiers and loads PEM keys; remote keys load in [`Self::spawn_refresh`].
    /// Takes anything that converts into settings, so callers can hand over
    /// their config entries as they are.
    pub fn new<S: Into<IssuerSettings>>(
        issuers: impl IntoIterator<Item = S>,
        tiers: Vec<String>,
    ) -> Result<Self, JwtError> {
        let fetcher = Fetcher::new()?;
        let mut verifiers = Vec::new();
        for (index, settings) in issuers.into_iter().map(S::into).enumerate() {
            let error = |message: String| JwtError::Config { index, message };
            let algorithms = settings
                .algorithms
                .iter()
                .map(|a| parse_algorithm(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(error)?;
            let source = match (&settings.pem, &settings.jwks_url, &settings.discovery_url) {
                (Some(path), None, None) => {
                    let bytes = std::fs::read(path)
                        .map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
                    let key = DecodingKey::from_rsa_pem(&bytes)
                        .or_else(|_| DecodingKey::from_ec_pem(&bytes))
                        .or_else(|_| DecodingKey::from_ed_pem(&bytes))
                        .map_err(|e| {
                            error(format!(
                                "{} is not a public key in PEM form: {e}",
                                path.display()
                            ))
                        })?;
                    KeySource::Static(vec![keys::Key { kid: None, key }])
                }
                (None, Some(url), None) => KeySource::Jwks(url.clone()),
                (None, None, Some(url)) => KeySource::Discovery(url.clone()),
                _ => {
                    return Err(error(
                        "give exactly one of pem, jwks_url, discovery_url".into(),
                    ))
                }
            };
            verifiers.push(Arc::new(Issuer {
                keys: IssuerKeys::new(
                    &settings.issuer,
                    source,
                    fetcher.clone(),
                    settings.min_refresh_interval,
                ),
                algorithms,
                settings,
            }));
        }
        Ok(Self {
            issuers: verifiers,
            tiers,
            cache: TokenCache::new(CACHE_CAPACITY),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Trusts tokens from `settings.issuer` signed by `keys` (the gateway's
    /// own issuer; [`Self::set_keys`] follows its key rotations).
    pub fn add_static_issuer(
        &mut self,
        settings: impl Into<IssuerSettings>,
        keys: Vec<keys::Key>,
    ) -> Result<(), JwtError> {
        let settings: IssuerSettings = settings.into();
        let algorithms = settings
            .algorithms
            .iter()
            .map(|a| parse_algorithm(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|message| JwtError::Config {
                index: self.issuers.len(),
                message,
            })?;
        self.issuers.push(Arc::new(Issuer {
            keys: IssuerKeys::new(
                &settings.issuer,
                KeySource::Static(keys),
                Fetcher::new()?,
                settings.min_refresh_interval,
            ),
            algorithms,
            settings,
        }));
        Ok(())
    }

    /// New keys for a static issuer.
    pub fn set_keys(&self, issuer: &str, keys: Vec<keys::Key>) {
        if let Some(found) = self.issuers.iter().find(|i| i.settings.issuer == issuer) {
            found.keys.set(keys);
        }
    }

    /// Loads remote keys now and keeps refreshing them in the background.
    pub fn spawn_refresh(&self) {
        for issuer in &self.issuers {
            if !issuer.keys.is_remote() {
                continue;
            }
            let issuer = issuer.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(issuer.settings.refresh);
                loop {
                    ticker.tick().await;
                    if let Err(error) = issuer.keys.refresh().await {
                        tracing::warn!(issuer = %issuer.settings.issuer, %error, "refreshing keys failed");
                    }
                }
            });
        }
    }

    /// Verifies `token` at `now` (unix seconds).
    pub async fn verify(
        &self,
        token: &str,
        now: i64,
    ) -> Result<Arc<VerifiedToken>, TokenRejection> {
        if !looks_like_jwt(token) {
            return Err(TokenRejection::Malformed);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cache.get(&digest, now) {
            return Ok(hit);
        }
        let (header, unverified) = decode_unverified(token)?;
        let iss = unverified
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(TokenRejection::MissingClaim)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.settings.issuer == iss)
            .ok_or(TokenRejection::UnknownIssuer)?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(TokenRejection::AlgorithmNotAllowed);
        }
        let key = match issuer.keys.find(header.kid.as_deref()) {
            Some(key) => key,
            None if issuer
                .keys
                .refresh_for_unknown_kid(header.kid.as_deref())
                .await =>
            {
                issuer
                    .keys
                    .find(header.kid.as_deref())
                    .ok_or(TokenRejection::UnknownKey)?
            }
            None => return Err(TokenRejection::UnknownKey),
        };
        // `exp` and `nbf` are judged against `now` by `validity`, not against
        // the system clock inside jsonwebtoken; `exp` must still be present.
        let leeway = issuer.settings.leeway.as_secs();
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[&issuer.settings.issuer]);
        if issuer.settings.audiences.is_empty() {
            validation.validate_aud = false;
            validation.set_required_spec_claims(&["exp", "iss"]);
        } else {
            validation.set_audience(&issuer.settings.audiences);
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        }
        let claims = match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(decoded) => decoded.claims,
            // jsonwebtoken judges times before `iss` and `aud`; so do we.
            // The signature held, so the unverified claims are the signed ones.
            Err(error) => {
                if matches!(
                    error.kind(),
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience
                ) {
                    validity::check(&unverified, now, leeway)?;
                }
                return Err(classify(error.kind()));
            }
        };
        validity::check(&claims, now, leeway)?;

        let client_id = claims
            .get(&issuer.settings.client_claim)
            .and_then(Value::as_str)
            .ok_or(TokenRejection::MissingClaim)?
            .to_owned();
        let scopes = {
            let mut scopes = claim_strings(claims.get("scope"));
            scopes.extend(claim_strings(claims.get("scp")));
            scopes
        };
        let named = claim_strings(claims.get(&issuer.settings.tier_claim));
        // Highest tier named wins; none named: the lowest tier.
        let tier = self
            .tiers
            .iter()
            .rev()
            .find(|tier| named.contains(tier))
            .or(self.tiers.first())
            .cloned()
            .unwrap_or_default();
        let verified = Arc::new(VerifiedToken {
            issuer: issuer.settings.issuer.clone(),
            client_id,
            tier,
            scopes,
        });
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
        self.cache.insert(
            digest,
            verified.clone(),
            exp.min(now + MAX_CACHE_SECONDS),
            now,
        );
        Ok(verified)
    }
}

fn classify(kind: &ErrorKind) -> TokenRejection {
    match kind {
        ErrorKind::ExpiredSignature => TokenRejection::Expired,
        ErrorKind::ImmatureSignature => TokenRejection::NotYetValid,
        ErrorKind::InvalidAudience => TokenRejection::WrongAudience,
        ErrorKind::InvalidIssuer => TokenRejection::WrongIssuer,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenRejection::AlgorithmNotAllowed
        }
        ErrorKind::MissingRequiredClaim(_) => TokenRejection::MissingClaim,
        ErrorKind::InvalidSignature => TokenRejection::BadSignature,
        _ => TokenRejection::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_and_none_are_refused_at_config_time() {
        assert!(parse_algorithm("RS256").is_ok());
        assert!(parse_algorithm("EdDSA").is_ok());
        assert!(parse_algorithm("HS256")
            .unwrap_err()
            .contains("shared secret"));
        assert!(parse_algorithm("none").is_err());
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
}
