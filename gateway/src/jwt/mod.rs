//! JWT verification for configured issuers.
//!
//! Order of checks, cheapest first: size and shape (no crypto for garbage),
//! the verified-token cache, header ([`preparse`]: canonical base64url, a
//! known `alg`, no `crit`), issuer by `iss`, `alg` in the issuer's allowed
//! list (never `none`, never HS*), `typ`, key by `kid` among the issuer's
//! own keys and fitting the `alg` (one rate-limited JWKS refresh for an
//! unknown `kid`), then signature, `exp`/`nbf` with leeway (against the
//! caller's `now`, never the system clock), `iss` and `aud` (RFC 8725).
#[cfg(test)]
mod algorithm_tests;
pub mod cache;
#[cfg(test)]
mod claims_tests;
#[cfg(test)]
mod clock_tests;
mod fetch;
#[cfg(test)]
mod header_tests;
pub mod keys;
pub mod preparse;
mod reconfigure;
#[cfg(test)]
mod reload_tests;
mod settings;
mod signed;
mod validity;

use std::sync::Arc;

use jsonwebtoken::Algorithm;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use self::preparse::{looks_like_jwt, preparse, Preparsed, MAX_TOKEN_BYTES};
pub use self::settings::{default_leeway, IssuerSettings, ANY_AUDIENCE};
use self::{
    cache::TokenCache,
    keys::{Fetcher, IssuerKeys, KeyMiss, KeySource},
};
/// Cached verifications are re-checked at least this often (and whenever
/// their issuer's key set changes, see [`Cached`]).
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
    /// The client claim is not a header field value (a control byte, CR,
    /// LF): the upstream could not be told who the client is.
    InvalidClaim,
    /// The header has `crit`: an extension we do not understand.
    UnsupportedCritical,
    /// The header's `typ` is not one the issuer accepts.
    WrongType,
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
            TokenRejection::InvalidClaim => "invalid_claim",
            TokenRejection::UnsupportedCritical => "unsupported_crit",
            TokenRejection::WrongType => "wrong_type",
        }
    }

    /// Whether this refusal suggests someone forging or guessing tokens,
    /// which the source guard counts. Refusals that honest clients get
    /// during an issuer's key rotation or from clock skew (an unknown
    /// `kid`, `exp`, `nbf`) are not, nor are genuine tokens (the signature
    /// held) meant for someone else (`aud`, `iss`, claims), nor tokens of a
    /// shape an issuer may make that we do not take (`crit`, `typ`): one
    /// misconfigured issuer must not get all its clients banned. Exhaustive
    /// on purpose: a new reason must be classified.
    pub fn is_guessing(self) -> bool {
        match self {
            TokenRejection::Malformed
            | TokenRejection::UnknownIssuer
            | TokenRejection::AlgorithmNotAllowed
            | TokenRejection::BadSignature => true,
            TokenRejection::UnknownKey
            | TokenRejection::Expired
            | TokenRejection::NotYetValid
            | TokenRejection::WrongAudience
            | TokenRejection::WrongIssuer
            | TokenRejection::MissingClaim
            | TokenRejection::InvalidClaim
            | TokenRejection::UnsupportedCritical
            | TokenRejection::WrongType => false,
        }
    }
}

/// What a valid token says about its client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    pub issuer: String,
    /// The client claim, as the token has it.
    pub client_id: String,
    /// The client claim namespaced by issuer (`ISSUER#CLAIM`), so equal
    /// claims from two issuers are two clients. An issuer has no `#`
    /// (config validation), so the pair is recoverable.
    pub principal: String,
    /// Signed by the gateway's own issuer ([`JwtVerifier::add_static_issuer`]).
    pub own: bool,
    pub tier: String,
    pub scopes: Vec<String>,
    /// Own tokens: the API key the client bought it with
    /// ([`crate::tokens::KEY_ID_CLAIM`]); the token lives only as long.
    pub key_id: Option<String>,
}

struct Issuer {
    settings: IssuerSettings,
    algorithms: Vec<Algorithm>,
    keys: Arc<IssuerKeys>,
    /// The gateway's own tokens.
    own: bool,
    /// Whether its key refresh task runs ([`JwtVerifier::spawn_refresh`]).
    refreshing: std::sync::atomic::AtomicBool,
}

/// `ISSUER#CLAIM`: a token client's id, namespaced by its issuer.
pub fn principal(issuer: &str, claim: &str) -> String {
    format!("{issuer}#{claim}")
}

pub struct JwtVerifier {
    issuers: Vec<Arc<Issuer>>,
    /// Tier names, lowest first: the highest one named in a token wins.
    tiers: Vec<String>,
    cache: TokenCache<Cached>,
}

/// A verified token and the key set it was verified under: served from
/// the cache only while its issuer's keys are that set. A key the IdP
/// drops from its JWKS (one that leaked) stops verifying at the refresh
/// that drops it, not up to [`MAX_CACHE_SECONDS`] later.
struct Cached {
    token: Arc<VerifiedToken>,
    issuer: Arc<Issuer>,
    generation: u64,
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

/// A claim's values: an array's strings, or a string's space-separated
/// tokens (RFC 6749 §3.3: `scope` is split on SP alone; split on any
/// Unicode whitespace, `read\u{a0}gold` named the tier `gold`).
fn claim_strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => scope_tokens(text).map(str::to_owned).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// The space-separated tokens of a `scope` (RFC 6749 §3.3).
pub fn scope_tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(' ').filter(|token| !token.is_empty())
}

/// The issuer's accepted algorithms, and its audiences checked present:
/// an issuer without audiences would accept tokens minted for anyone.
fn checked(settings: &IssuerSettings) -> Result<Vec<Algorithm>, String> {
    if settings.audiences.is_empty() {
        return Err(format!(
            "audiences: required (the `aud` values this gateway accepts; [\"{ANY_AUDIENCE}\"] accepts any)"
        ));
    }
    settings
        .algorithms
        .iter()
        .map(|a| parse_algorithm(a))
        .collect()
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
            let algorithms = checked(&settings).map_err(error)?;
            let source = match (&settings.pem, &settings.jwks_url, &settings.discovery_url) {
                (Some(path), None, None) => {
                    let bytes = std::fs::read(path)
                        .map_err(|e| error(format!("cannot read {}: {e}", path.display())))?;
                    let key = keys::Key::from_pem(&bytes, &algorithms).map_err(|e| {
                        error(format!(
                            "{} is no public key in PEM form for this issuer: {e}",
                            path.display()
                        ))
                    })?;
                    KeySource::Static(vec![key])
                }
                (None, Some(url), None) => KeySource::Jwks(url.clone()),
                (None, None, Some(url)) => KeySource::Discovery(url.clone()),
                _ => {
                    return Err(error(
                        "give exactly one of pem, jwks_url, discovery_url".into(),
                    ))
                }
            };
            if settings.audiences.iter().any(|a| a == ANY_AUDIENCE) {
                tracing::warn!(issuer = %settings.issuer, "audiences = [\"*\"]: tokens this issuer minted for any audience are accepted");
            }
            if settings.allow_insecure_http {
                tracing::warn!(issuer = %settings.issuer, "allow_insecure_http: keys may be fetched over plain HTTP (testing only)");
            }
            let fetcher = fetcher.clone().allow_http(settings.allow_insecure_http);
            verifiers.push(Arc::new(Issuer {
                keys: Arc::new(IssuerKeys::new(
                    &settings.issuer,
                    source,
                    fetcher,
                    settings.min_refresh_interval,
                    &algorithms,
                )),
                algorithms,
                settings,
                own: false,
                refreshing: Default::default(),
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

    /// The configured issuers (not the gateway's own), by name: those an
    /// external id may name.
    pub fn external_issuers(&self) -> Vec<String> {
        (self.issuers.iter())
            .filter(|i| !i.own)
            .map(|i| i.settings.issuer.clone())
            .collect()
    }

    /// Trusts tokens from `settings.issuer` signed by `keys`: the gateway's
    /// own issuer, whose tokens name stored clients by id ([`Self::set_keys`]
    /// follows its key rotations). Checked before configured issuers, so
    /// none of those can speak for it.
    pub fn add_static_issuer(
        &mut self,
        settings: impl Into<IssuerSettings>,
        keys: Vec<keys::Key>,
    ) -> Result<(), JwtError> {
        let settings: IssuerSettings = settings.into();
        let algorithms = checked(&settings).map_err(|message| JwtError::Config {
            index: self.issuers.len(),
            message,
        })?;
        let issuer = Issuer {
            keys: Arc::new(IssuerKeys::new(
                &settings.issuer,
                KeySource::Static(keys),
                Fetcher::new()?,
                settings.min_refresh_interval,
                &algorithms,
            )),
            algorithms,
            settings,
            own: true,
            refreshing: Default::default(),
        };
        self.issuers.insert(0, Arc::new(issuer));
        Ok(())
    }

    /// New keys for a static issuer.
    pub fn set_keys(&self, issuer: &str, keys: Vec<keys::Key>) {
        if let Some(keys_of) = self.keys_of(issuer) {
            keys_of.set(keys);
        }
    }

    /// `issuer`'s keys, shared with every verifier a reload makes while
    /// the issuer carries over. What follows the gateway's own signing
    /// keys holds these, not a verifier: a verifier kept for the life of
    /// the process kept every issuer a reload removed, and their refresh
    /// tasks fetching, for ever.
    pub fn keys_of(&self, issuer: &str) -> Option<Arc<IssuerKeys>> {
        let found = self.issuers.iter().find(|i| i.settings.issuer == issuer)?;
        Some(found.keys.clone())
    }

    /// Loads remote keys now and keeps refreshing them in the background,
    /// until the issuer is dropped (a reload removed it); once per issuer.
    pub fn spawn_refresh(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        for issuer in &self.issuers {
            if !issuer.keys.is_remote() || issuer.refreshing.swap(true, Relaxed) {
                continue;
            }
            let weak = Arc::downgrade(issuer);
            let every = issuer.settings.refresh;
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(every);
                loop {
                    ticker.tick().await;
                    let Some(issuer) = weak.upgrade() else { return };
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
            if hit.generation == hit.issuer.keys.generation() {
                return Ok(hit.token.clone());
            }
        }
        let Preparsed {
            header,
            claims: unverified,
            claims_json,
            signature,
        } = preparse(token)?;
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
        if !preparse::typ_allowed(header.typ.as_deref(), &issuer.settings.typ) {
            return Err(TokenRejection::WrongType);
        }
        let kid = header.kid.as_deref();
        let generation = issuer.keys.generation();
        let key = match issuer.keys.find(kid, header.alg) {
            Ok(key) => key,
            Err(KeyMiss::Unknown) if issuer.keys.refresh_for_unknown_kid(kid).await => {
                issuer.keys.find(kid, header.alg).map_err(miss)?
            }
            Err(other) => return Err(miss(other)),
        };
        // Signature, then the registered claims (`exp`, `nbf` against `now`).
        if !signed::signature(token, &signature, &key) {
            return Err(TokenRejection::BadSignature);
        }
        signed::claims(&claims_json, &unverified, &issuer.settings, now)?;
        // The signature held, so the unverified claims are the signed ones.
        let claims = unverified;

        let client_id = claims
            .get(&issuer.settings.client_claim)
            .and_then(Value::as_str)
            .ok_or(TokenRejection::MissingClaim)?
            .to_owned();
        if !crate::h1::valid_value(&client_id) {
            return Err(TokenRejection::InvalidClaim);
        }
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
            principal: principal(&issuer.settings.issuer, &client_id),
            client_id,
            own: issuer.own,
            tier,
            scopes,
            key_id: (claims.get(crate::tokens::KEY_ID_CLAIM))
                .filter(|_| issuer.own)
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
        let cached = Cached {
            token: verified.clone(),
            issuer: issuer.clone(),
            generation,
        };
        self.cache.insert(
            digest,
            Arc::new(cached),
            exp.min(now + MAX_CACHE_SECONDS),
            now,
        );
        Ok(verified)
    }
}

fn miss(miss: KeyMiss) -> TokenRejection {
    match miss {
        KeyMiss::Unknown => TokenRejection::UnknownKey,
        KeyMiss::WrongAlgorithm => TokenRejection::AlgorithmNotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forgery_counts_as_guessing_not_key_rotation_or_clock_skew() {
        use TokenRejection::*;
        for reason in [Malformed, UnknownIssuer, AlgorithmNotAllowed, BadSignature] {
            assert!(reason.is_guessing(), "{reason:?}");
        }
        for reason in [
            UnknownKey,
            Expired,
            NotYetValid,
            WrongAudience,
            WrongIssuer,
            MissingClaim,
            InvalidClaim,
        ] {
            assert!(!reason.is_guessing(), "{reason:?}");
        }
    }

    #[test]
    fn hmac_and_none_are_refused_at_config_time() {
        assert!(parse_algorithm("RS256").is_ok());
        assert!(parse_algorithm("EdDSA").is_ok());
        assert!(parse_algorithm("HS256")
            .unwrap_err()
            .contains("shared secret"));
        assert!(parse_algorithm("none").is_err());
    }
}
