//! What the verifier needs to know about one issuer: plain data, so the
//! verifier does not depend on how the config file spells it.
use std::{path::PathBuf, time::Duration};

/// One trusted JWT issuer (an OAuth2/OIDC provider).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerSettings {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// The token's `aud` must contain one of these; [`ANY_AUDIENCE`] alone
    /// accepts any. Never empty (the verifier refuses an issuer without).
    pub audiences: Vec<String>,
    /// Accepted header `typ` values (absent is accepted too); see
    /// [`super::preparse::typ_allowed`].
    pub typ: Vec<String>,
    /// Fetch keys over `http://` too (local testing only).
    pub allow_insecure_http: bool,
    /// Exactly one key source: a PEM public key file, a JWKS URL, or an
    /// OIDC discovery URL.
    pub pem: Option<PathBuf>,
    pub jwks_url: Option<String>,
    pub discovery_url: Option<String>,
    /// Accepted `alg` names; checked by [`super::parse_algorithm`] when the
    /// verifier is built, so a bad name is an error there, not a panic here.
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim that names the client.
    pub client_claim: String,
    /// The claim whose values name tiers.
    pub tier_claim: String,
    /// Periodic refresh of remote keys.
    pub refresh: Duration,
    /// Least time between refreshes triggered by unknown `kid`s.
    pub min_refresh_interval: Duration,
}

/// The `audiences` entry that accepts any `aud` (and logs a warning).
pub const ANY_AUDIENCE: &str = "*";

/// Clock skew allowed when an issuer names none.
pub fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
