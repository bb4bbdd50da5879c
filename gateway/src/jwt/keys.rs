//! An issuer's verification keys: from a PEM file, a JWKS URL, or OIDC
//! discovery (which names the JWKS URL). Remote keys are refreshed
//! periodically and on an unknown `kid`, at most once per
//! `min_refresh_interval`; no lock is held while a fetch runs, and the
//! whole fetch (connect, headers, body) is under one timeout.
use std::{
    sync::{
        atomic::{
            AtomicU64,
            Ordering::{Acquire, Relaxed, Release},
        },
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use aws_lc_rs::signature::{ParsedPublicKey, RsaParameters};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use jsonwebtoken::{
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse},
    Algorithm, DecodingKey,
};
use tokio::sync::watch;

use super::{
    signed::{self, ParsedKeys},
    JwtError,
};

pub use super::fetch::Fetcher;

pub enum KeySource {
    /// Keys given, not fetched: a PEM file, or the gateway's own.
    Static(Vec<Key>),
    Jwks(String),
    Discovery(String),
}

/// A verification key and the algorithms it may verify: the JWK's `alg`
/// when it names one, else every algorithm of its type and curve, either
/// way only those its issuer accepts, so a token can never pick how a key
/// is used (RFC 8725 §3.1: one key, one algorithm, as far as a JWK
/// without `alg` lets us).
#[derive(Clone, Debug)]
pub struct Key {
    pub kid: Option<String>,
    pub key: DecodingKey,
    pub algorithms: Vec<Algorithm>,
    /// The key as aws-lc parsed it once, for each of `algorithms`.
    parsed: ParsedKeys,
}

const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// RSA moduli the verifier accepts (aws-lc's `RSA_*_2048_8192_*`): a key
/// outside is refused when it is loaded, so its tokens are never judged
/// forged (`bad_signature` counts as guessing) for a key we would not use.
const RSA_BITS: std::ops::RangeInclusive<u32> = 2048..=8192;

fn rsa_size(bits: u32) -> Result<(), String> {
    if RSA_BITS.contains(&bits) {
        return Ok(());
    }
    Err(format!(
        "an RSA key of {bits} bits ({} to {} are accepted)",
        RSA_BITS.start(),
        RSA_BITS.end()
    ))
}

/// Bits in a big-endian modulus (a JWK's `n`, base64url).
fn modulus_bits(n: &str) -> Result<u32, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(n)
        .map_err(|_| "n is not base64url".to_owned())?;
    let Some(first) = bytes.iter().position(|&b| b != 0) else {
        return Ok(0);
    };
    let significant = u32::try_from(bytes.len() - first).unwrap_or(u32::MAX);
    Ok(significant
        .saturating_mul(8)
        .saturating_sub(bytes[first].leading_zeros()))
}

impl Key {
    /// A key from a JWKS entry; `Err` says why it cannot verify tokens:
    /// `use` other than `sig`, `key_ops` without `verify`, a symmetric or
    /// unknown key type, a curve no algorithm here uses, or an `alg` that
    /// does not fit the key.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, String> {
        Self::from_jwk_for(jwk, &EVERY)
    }

    /// [`Self::from_jwk`] for an issuer that accepts only `accepted`: the
    /// key is parsed for those of its algorithms alone, and refused when
    /// none is.
    pub fn from_jwk_for(jwk: &Jwk, accepted: &[Algorithm]) -> Result<Self, String> {
        match &jwk.common.public_key_use {
            None | Some(PublicKeyUse::Signature) => {}
            Some(other) => return Err(format!("use is {other:?}, not sig")),
        }
        if let Some(ops) = &jwk.common.key_operations {
            if !ops.contains(&KeyOperations::Verify) {
                return Err("key_ops does not include verify".into());
            }
        }
        let fits: Vec<Algorithm> = match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => {
                rsa_size(modulus_bits(&rsa.n)?)?;
                RSA.to_vec()
            }
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => vec![Algorithm::ES256],
                EllipticCurve::P384 => vec![Algorithm::ES384],
                ref other => return Err(format!("EC curve {other:?} is not supported")),
            },
            AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
                EllipticCurve::Ed25519 => vec![Algorithm::EdDSA],
                ref other => return Err(format!("OKP curve {other:?} is not supported")),
            },
            AlgorithmParameters::OctetKey(_) => return Err("symmetric keys are refused".into()),
            _ => return Err("unknown key type".into()),
        };
        let mut algorithms = match jwk.common.key_algorithm {
            None => fits,
            Some(named) => {
                let named = Algorithm::try_from(named)
                    .map_err(|_| format!("alg {named:?} does not sign"))?;
                if !fits.contains(&named) {
                    return Err(format!("alg {named:?} does not fit the key type"));
                }
                vec![named]
            }
        };
        accepted_only(&mut algorithms, accepted)?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        Self::new(jwk.common.key_id.clone(), key, algorithms)
    }

    /// The same key: its `kid`, its public key and the algorithms it may
    /// verify. What one verified, the other still does.
    fn same_as(&self, other: &Key) -> bool {
        use jsonwebtoken::DecodingKeyKind::{RsaModulusExponent, SecretOrDer};
        let material = match (self.key.kind(), other.key.kind()) {
            (SecretOrDer(a), SecretOrDer(b)) => a == b,
            (RsaModulusExponent { n, e }, RsaModulusExponent { n: n2, e: e2 }) => {
                n == n2 && e == e2
            }
            _ => false,
        };
        self.kid == other.kid
            && material
            && self.key.family() == other.key.family()
            && self.algorithms == other.algorithms
    }

    /// This key for an issuer that accepts only `accepted` (a key given,
    /// not fetched); `None` when it verifies none of them.
    pub fn accepted_by(mut self, accepted: &[Algorithm]) -> Option<Self> {
        if self.algorithms.iter().all(|a| accepted.contains(a)) {
            return Some(self);
        }
        accepted_only(&mut self.algorithms, accepted).ok()?;
        self.parsed = (self.parsed.iter())
            .filter(|(a, _)| accepted.contains(a))
            .cloned()
            .collect();
        Some(self)
    }

    /// Parses `key` for each of `algorithms` now, not per token.
    fn new(
        kid: Option<String>,
        key: DecodingKey,
        algorithms: Vec<Algorithm>,
    ) -> Result<Self, String> {
        Ok(Self {
            parsed: signed::parse(&key, &algorithms)?,
            kid,
            key,
            algorithms,
        })
    }

    /// A public key in PEM form (RSA, EC P-256/P-384 or Ed25519), for an
    /// issuer that accepts `accepted` (see [`Self::from_jwk_for`]).
    pub fn from_pem(bytes: &[u8], accepted: &[Algorithm]) -> Result<Self, String> {
        let (key, mut algorithms) = if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
            let bits = key
                .try_get_as_bytes()
                .ok()
                .and_then(|der| RsaParameters::public_modulus_len(der).ok())
                .ok_or("an RSA key that is not a public key")?;
            rsa_size(bits)?;
            (key, RSA.to_vec())
        } else if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
            // An uncompressed point: 65 bytes on P-256, 97 on P-384.
            let curve = match key.try_get_as_bytes().map(<[u8]>::len) {
                Ok(65) => Algorithm::ES256,
                Ok(97) => Algorithm::ES384,
                _ => return Err("an EC key on a curve other than P-256 or P-384".into()),
            };
            (key, vec![curve])
        } else {
            let key = DecodingKey::from_ed_pem(bytes).map_err(|e| e.to_string())?;
            (key, vec![Algorithm::EdDSA])
        };
        accepted_only(&mut algorithms, accepted)?;
        Self::new(None, key, algorithms)
    }
}

/// Every algorithm a key here may verify.
pub(super) const EVERY: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Keeps the `algorithms` a key fits that its issuer accepts; none is an
/// error (the key could verify no token).
fn accepted_only(algorithms: &mut Vec<Algorithm>, accepted: &[Algorithm]) -> Result<(), String> {
    if !algorithms.iter().any(|a| accepted.contains(a)) {
        return Err(format!(
            "the key fits {algorithms:?}, none of the issuer's algorithms {accepted:?}"
        ));
    }
    algorithms.retain(|a| accepted.contains(a));
    Ok(())
}

/// Refreshes for unknown `kid`s: when the last one started, and the one
/// under way, if any (its waiters learn whether it loaded keys).
#[derive(Default)]
struct OnDemand {
    last: Option<Instant>,
    running: Option<watch::Receiver<Option<bool>>>,
}

pub struct IssuerKeys {
    issuer: String,
    source: KeySource,
    keys: ArcSwap<Vec<Key>>,
    /// Bumped whenever a replacement drops or changes a key: a token
    /// verified under an older set is verified again
    /// ([`IssuerKeys::generation`]). Keys added leave it: they make no
    /// earlier verification wrong.
    generation: AtomicU64,
    /// Replacements begun (a fetch takes its number before it asks).
    begun: AtomicU64,
    /// The number of the replacement in place: one begun earlier is not
    /// applied over it. A slow periodic fetch that began before the IdP
    /// dropped a key would otherwise bring the key back over the set an
    /// unknown-kid fetch took after the drop.
    applied: Mutex<u64>,
    fetcher: Fetcher,
    min_refresh_interval: Duration,
    /// The issuer's accepted algorithms: what its keys are parsed for.
    algorithms: Vec<Algorithm>,
    /// Never held across an await: a fetch runs in its own task.
    on_demand: Mutex<OnDemand>,
}

/// A JWKS, its entries not yet parsed.
#[derive(serde::Deserialize)]
struct JwkEntries {
    keys: Vec<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Why no key verifies a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMiss {
    /// No key has the token's `kid` (or there is no sole key for none).
    Unknown,
    /// The key named may not verify the token's `alg`.
    WrongAlgorithm,
}

/// `keys` for an issuer that accepts `algorithms` (see [`Key::accepted_by`]).
fn accepted_keys(keys: Vec<Key>, algorithms: &[Algorithm]) -> Vec<Key> {
    (keys.into_iter())
        .filter_map(|key| key.accepted_by(algorithms))
        .collect()
}

fn lock(on_demand: &Mutex<OnDemand>) -> std::sync::MutexGuard<'_, OnDemand> {
    on_demand
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl IssuerKeys {
    pub fn new(
        issuer: &str,
        source: KeySource,
        fetcher: Fetcher,
        min_refresh_interval: Duration,
        algorithms: &[Algorithm],
    ) -> Self {
        let initial = match &source {
            KeySource::Static(keys) => accepted_keys(keys.clone(), algorithms),
            _ => Vec::new(),
        };
        Self {
            issuer: issuer.to_owned(),
            source,
            keys: ArcSwap::from_pointee(initial),
            generation: AtomicU64::new(0),
            begun: AtomicU64::new(0),
            applied: Mutex::new(0),
            fetcher,
            min_refresh_interval,
            algorithms: algorithms.to_vec(),
            on_demand: Mutex::default(),
        }
    }

    pub fn is_remote(&self) -> bool {
        !self.is_static()
    }

    fn is_static(&self) -> bool {
        matches!(self.source, KeySource::Static(_))
    }

    /// Replaces static keys (the gateway's own, after a rotation).
    pub fn set(&self, keys: Vec<Key>) {
        self.replace(self.begin(), accepted_keys(keys, &self.algorithms));
    }

    /// A replacement's number, taken before its keys are fetched.
    pub(super) fn begin(&self) -> u64 {
        self.begun.fetch_add(1, Relaxed) + 1
    }

    /// `keys` is the key set from now on, unless a replacement begun after
    /// `ticket` is in place already (false). A key it drops (an IdP
    /// rotating out a leaked key) stops verifying at once, cached tokens
    /// included.
    pub(super) fn replace(&self, ticket: u64, keys: Vec<Key>) -> bool {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        if ticket <= *applied {
            return false;
        }
        *applied = ticket;
        let kept = |old: &Key| keys.iter().any(|new| new.same_as(old));
        let dropped = !self.keys.load().iter().all(kept);
        self.keys.store(Arc::new(keys));
        if dropped {
            // Release: whoever reads the new generation then loads this set.
            self.generation.fetch_add(1, Release);
        }
        true
    }

    /// Which key set the keys are: a token verified under another one may
    /// have been verified by a key the set has dropped since.
    /// Read it before [`IssuerKeys::find`]: a set replaced in between
    /// makes the token look older than it is, never newer.
    pub fn generation(&self) -> u64 {
        self.generation.load(Acquire)
    }

    /// Whether a key fits this `kid` (see [`fits`]).
    fn knows(&self, kid: Option<&str>) -> bool {
        let keys = self.keys.load();
        let sole = keys.len() == 1;
        keys.iter().any(|k| fits(k, kid, sole, self.is_static()))
    }

    /// The key for `kid` that may verify `alg` (see [`fits`]). Only the
    /// issuer's own keys are looked at: a token's `jku`, `x5u`, `x5c` or
    /// `jwk` never choose one.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<Arc<ParsedPublicKey>, KeyMiss> {
        let keys = self.keys.load();
        let sole = keys.len() == 1;
        let mut named = false;
        for key in keys.iter().filter(|k| fits(k, kid, sole, self.is_static())) {
            named = true;
            if let Some((_, parsed)) = key.parsed.iter().find(|(a, _)| *a == alg) {
                return Ok(parsed.clone());
            }
        }
        Err(if named {
            KeyMiss::WrongAlgorithm
        } else {
            KeyMiss::Unknown
        })
    }

    /// Whether a refresh for an unknown `kid` is under way.
    pub fn refreshing(&self) -> bool {
        lock(&self.on_demand).running.is_some()
    }

    /// Re-fetches remote keys now (start-up and periodic refresh).
    pub async fn refresh(&self) -> Result<usize, JwtError> {
        self.fetch().await
    }

    /// Re-fetches for an unknown `kid`, unless another unknown `kid` did so
    /// within `min_refresh_interval` (so forged kids cannot hammer the IdP).
    /// The fetch runs in its own task, so no lock is held across it and a
    /// caller that goes away does not cancel it; callers arriving while it
    /// runs wait for that one fetch, which its timeout bounds.
    pub async fn refresh_for_unknown_kid(self: &Arc<Self>, kid: Option<&str>) -> bool {
        if !self.is_remote() {
            return false;
        }
        let mut done = {
            let mut state = lock(&self.on_demand);
            // A fetch that ended just now may have brought the key.
            if self.knows(kid) {
                return true;
            }
            match &state.running {
                Some(running) => running.clone(),
                None if state
                    .last
                    .is_some_and(|at| at.elapsed() < self.min_refresh_interval) =>
                {
                    return false
                }
                None => {
                    state.last = Some(Instant::now());
                    let (tell, done) = watch::channel(None);
                    state.running = Some(done.clone());
                    let keys = self.clone();
                    tokio::spawn(async move {
                        let result = keys.fetch().await;
                        if let Err(error) = &result {
                            tracing::warn!(issuer = %keys.issuer, %error, "refreshing keys for an unknown kid failed");
                        }
                        lock(&keys.on_demand).running = None;
                        let _ = tell.send(Some(result.is_ok()));
                    });
                    done
                }
            }
        };
        let loaded = match done.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.unwrap_or(false),
            Err(_) => false,
        };
        loaded && self.knows(kid)
    }

    async fn fetch(&self) -> Result<usize, JwtError> {
        let ticket = self.begin();
        let jwks_url = match &self.source {
            KeySource::Static(_) => return Ok(self.keys.load().len()),
            KeySource::Jwks(url) => url.clone(),
            KeySource::Discovery(url) => {
                let discovery: Discovery = self.fetcher.json(url).await?;
                if discovery.issuer != self.issuer {
                    return Err(JwtError::Fetch {
                        url: url.clone(),
                        message: format!(
                            "discovery names issuer {:?}, configured {:?}",
                            discovery.issuer, self.issuer
                        ),
                    });
                }
                // Fetched under the same https-only rule as the discovery document.
                discovery.jwks_uri
            }
        };
        // Entry by entry, so one key of a kind we do not know (an `alg` or
        // curve jsonwebtoken cannot parse) does not cost the others.
        let set: JwkEntries = self.fetcher.json(&jwks_url).await?;
        let mut keys = Vec::new();
        for jwk in set
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
        {
            match Key::from_jwk_for(&jwk, &self.algorithms) {
                Ok(key) => keys.push(key),
                Err(reason) => {
                    tracing::debug!(issuer = %self.issuer, kid = ?jwk.common.key_id, %reason, "JWKS key skipped")
                }
            }
        }
        let count = keys.len();
        if self.replace(ticket, keys) {
            tracing::info!(issuer = %self.issuer, keys = count, "JWKS loaded");
        } else {
            tracing::debug!(issuer = %self.issuer, "JWKS fetched after a newer one: not applied");
        }
        Ok(count)
    }
}

/// Whether `key` may verify a token naming `kid`: the key of that `kid`;
/// where the token names none, the issuer's sole key; and a given
/// (`static_keys`) sole key without a `kid` (a PEM key, whose IdP's
/// tokens still name one) whatever the token names. `kid` only picks the
/// key: the signature decides. A fetched key set keeps an unknown `kid`
/// unknown, so that it is fetched again (a key rotated in).
fn fits(key: &Key, kid: Option<&str>, sole: bool, static_keys: bool) -> bool {
    match (kid, key.kid.as_deref()) {
        (Some(kid), Some(own)) => kid == own,
        (Some(_), None) => sole && static_keys,
        (None, _) => sole,
    }
}
