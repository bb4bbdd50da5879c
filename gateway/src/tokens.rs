//! The gateway as an OAuth2 issuer: `client_credentials` with an API key
//! as the client secret buys a short-lived JWT signed by the gateway's own
//! Ed25519 key, which the gateway (and anyone reading its JWKS) accepts.
//!
//! Signing keys live in `state_dir/token-keys.json` (mode 0600), made on
//! first start. `gateway tokens rotate-key` adds a new current key and
//! retires the old one, which stays published in the JWKS until every
//! token it signed has expired; a running gateway picks the file up within
//! a second.
use std::{
    borrow::Cow,
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::SystemTime,
};

use arc_swap::ArcSwap;
use jsonwebtoken::{
    jwk::{Jwk, JwkSet, PublicKeyUse, ThumbprintHash},
    Algorithm, EncodingKey, Header,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{config::TokensConfig, jwt::keys::Key};

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410); the 32-byte
/// seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a token key file: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("no randomness for a new key: {0}")]
    Random(String),
    #[error("signing a token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// One signing key as stored.
#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// The Ed25519 seed, hex.
    seed: String,
    created_at: i64,
    /// When it stopped signing; published until `retired_at + max_ttl`.
    retired_at: Option<i64>,
}

/// The signing keys in memory: the current one and those still published.
pub struct KeySet {
    current: (String, EncodingKey),
    published: Vec<Jwk>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn encoding_key(seed: &[u8]) -> EncodingKey {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(seed);
    EncodingKey::from_ed_der(&der)
}

fn public_jwk(key: &EncodingKey, kid: &str) -> Result<Jwk, jsonwebtoken::errors::Error> {
    let mut jwk = Jwk::from_encoding_key(key, Algorithm::EdDSA)?;
    jwk.common.key_id = Some(kid.to_owned());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    Ok(jwk)
}

fn new_key(now: i64) -> Result<StoredKey, TokenKeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| TokenKeyError::Random(e.to_string()))?;
    let jwk = public_jwk(&encoding_key(&seed), "")?;
    Ok(StoredKey {
        kid: jwk.thumbprint(ThumbprintHash::SHA256)?,
        seed: hex(&seed),
        created_at: now,
        retired_at: None,
    })
}

/// The key file: read, made, rotated, written (0600, atomically).
pub struct KeyFile {
    path: PathBuf,
    /// Retired keys stay published this long (the longest token lifetime).
    max_ttl: i64,
}

impl KeyFile {
    pub fn new(path: PathBuf, max_ttl: i64) -> Self {
        Self { path, max_ttl }
    }

    fn io(&self) -> impl Fn(std::io::Error) -> TokenKeyError + '_ {
        |source| TokenKeyError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn read(&self) -> Result<Option<Vec<StoredKey>>, TokenKeyError> {
        crate::private_files::restrict(&self.path).map_err(self.io())?;
        match std::fs::read(&self.path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| TokenKeyError::Invalid {
                        path: self.path.clone(),
                        message: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io()(e)),
        }
    }

    fn write(&self, keys: &[StoredKey]) -> Result<(), TokenKeyError> {
        use std::io::Write;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(self.io())?;
        }
        let temp = self.path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(keys).unwrap_or_default();
        // A temp file left wider by a crash is narrowed before it is renamed.
        let mut file = crate::private_files::open(
            &temp,
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true),
        )
        .map_err(self.io())?;
        file.write_all(&text).map_err(self.io())?;
        file.sync_all().map_err(self.io())?;
        std::fs::rename(&temp, &self.path).map_err(self.io())
    }

    /// The keys, made on first use.
    pub fn load_or_create(&self, now: i64) -> Result<KeySet, TokenKeyError> {
        let keys = match self.read()? {
            Some(keys) if keys.iter().any(|k| k.retired_at.is_none()) => keys,
            existing => {
                let mut keys = existing.unwrap_or_default();
                keys.push(new_key(now)?);
                self.write(&keys)?;
                keys
            }
        };
        self.key_set(&keys, now)
    }

    /// A new current key; the old one signs no more but stays published
    /// until its last token expires. Returns the new key id.
    pub fn rotate(&self, now: i64) -> Result<String, TokenKeyError> {
        let mut keys = self.read()?.unwrap_or_default();
        for key in &mut keys {
            key.retired_at.get_or_insert(now);
        }
        keys.retain(|k| k.retired_at.is_none_or(|at| at + self.max_ttl > now));
        let key = new_key(now)?;
        let kid = key.kid.clone();
        keys.push(key);
        self.write(&keys)?;
        Ok(kid)
    }

    /// When the file last changed (to pick up a rotation).
    pub fn modified(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    fn key_set(&self, keys: &[StoredKey], now: i64) -> Result<KeySet, TokenKeyError> {
        let invalid = |message: &str| TokenKeyError::Invalid {
            path: self.path.clone(),
            message: message.into(),
        };
        let mut current = None;
        let mut published = Vec::new();
        for key in keys {
            let seed = unhex(&key.seed)
                .filter(|s| s.len() == 32)
                .ok_or_else(|| invalid("a seed is not 32 bytes of hex"))?;
            let encoding = encoding_key(&seed);
            if key.retired_at.is_none_or(|at| at + self.max_ttl > now) {
                published.push(public_jwk(&encoding, &key.kid)?);
            }
            if key.retired_at.is_none() {
                current = Some((key.kid.clone(), encoding));
            }
        }
        let current = current.ok_or_else(|| invalid("no current key"))?;
        Ok(KeySet { current, published })
    }
}

/// Signs tokens and publishes the keys that verify them.
pub struct TokenIssuer {
    pub config: TokensConfig,
    pub issuer: String,
    file: KeyFile,
    keys: ArcSwap<KeySet>,
    loaded: Mutex<Option<SystemTime>>,
    /// Upstream tokens by everything they say, reused for half their life.
    upstream: Mutex<HashMap<UpstreamKey, (String, i64)>>,
}

/// What goes into an upstream token: client id, tier, scopes and
/// audience. Two grants that differ in any of them never share a token.
type UpstreamKey = (String, String, Vec<String>, String);

/// The claim naming the API key a token was bought with (its id, which
/// may be logged; never the secret).
pub const KEY_ID_CLAIM: &str = "gk_key_id";

/// `scopes` without any that names a tier (`is_tier`). A token carries its
/// client's tier in `scope`, and a gateway that takes tiers from scopes
/// (ours with `tier_claim = "scope"`) reads the highest tier named there:
/// a bronze client's scope spelt `gold` would make it gold.
pub fn without_tiers(scopes: &[String], is_tier: impl Fn(&str) -> bool) -> Cow<'_, [String]> {
    if !scopes.iter().any(|scope| is_tier(scope)) {
        return Cow::Borrowed(scopes);
    }
    Cow::Owned(scopes.iter().filter(|s| !is_tier(s)).cloned().collect())
}

/// What a token says about its client.
pub struct Grant<'a> {
    pub client_id: &'a str,
    pub tier: &'a str,
    pub scopes: &'a [String],
}

impl TokenIssuer {
    pub fn open(
        config: &TokensConfig,
        issuer: String,
        path: &Path,
        now: i64,
    ) -> Result<Self, TokenKeyError> {
        let file = KeyFile::new(path.to_owned(), config.max_ttl_seconds());
        let keys = file.load_or_create(now)?;
        Ok(Self {
            config: config.clone(),
            issuer,
            loaded: Mutex::new(file.modified()),
            file,
            keys: ArcSwap::from_pointee(keys),
            upstream: Mutex::default(),
        })
    }

    /// Re-reads the key file if it changed (a rotation) or retired keys
    /// aged out; returns the keys to verify with when they changed.
    pub fn reload(&self, now: i64) -> Result<Vec<Key>, TokenKeyError> {
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = self.file.modified();
        self.keys.store(self.file.load_or_create(now)?.into());
        Ok(self.verification_keys())
    }

    /// Whether the key file changed since it was last read.
    pub fn changed(&self) -> bool {
        *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) != self.file.modified()
    }

    pub fn verification_keys(&self) -> Vec<Key> {
        self.keys
            .load()
            .published
            .iter()
            .filter_map(|jwk| Key::from_jwk(jwk).ok())
            .collect()
    }

    pub fn jwks(&self) -> Value {
        let set = JwkSet {
            keys: self.keys.load().published.clone(),
        };
        serde_json::to_value(set).unwrap_or(Value::Null)
    }

    pub fn discovery(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": format!("{}/.well-known/jwks.json", self.issuer),
            "token_endpoint": format!("{}/oauth2/token", self.issuer),
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "response_types_supported": ["token"],
        })
    }

    /// A signed token for `grant`, for `audience`, valid `ttl` seconds;
    /// `key_id`: the API key the client paid with (the token endpoint's
    /// tokens), so the token ends with that key: a rotation or deletion of
    /// a leaked key ends what was minted with it (see
    /// [`crate::keys::KeyIndex::key_standing`]).
    pub fn mint(
        &self,
        grant: &Grant<'_>,
        key_id: Option<&str>,
        audience: &str,
        ttl: i64,
        now: i64,
    ) -> Result<String, TokenKeyError> {
        let keys = self.keys.load();
        let (kid, key) = &keys.current;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        header.typ = Some("JWT".into());
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|e| TokenKeyError::Random(e.to_string()))?;
        // The tier travels in `scope`, as the gateway reads tiers from others.
        let mut scope: Vec<&str> = grant.scopes.iter().map(String::as_str).collect();
        if !scope.contains(&grant.tier) {
            scope.push(grant.tier);
        }
        let mut claims = json!({
            "iss": self.issuer,
            "sub": grant.client_id,
            "client_id": grant.client_id,
            "aud": audience,
            "scope": scope.join(" "),
            "iat": now,
            "exp": now + ttl,
            "jti": hex(&jti),
        });
        if let Some(key_id) = key_id {
            claims[KEY_ID_CLAIM] = key_id.into();
        }
        Ok(jsonwebtoken::encode(&header, &claims, key)?)
    }

    /// A token naming the client to an upstream, reused while it has more
    /// than half its life left (one signature per grant and upstream per
    /// half-life, not per request).
    pub fn upstream_token(
        &self,
        grant: &Grant<'_>,
        audience: &str,
        now: i64,
    ) -> Result<String, TokenKeyError> {
        let ttl = self.config.upstream_ttl.as_secs() as i64;
        let cache_key = (
            grant.client_id.to_owned(),
            grant.tier.to_owned(),
            grant.scopes.to_vec(),
            audience.to_owned(),
        );
        let mut cache = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, minted)) = cache.get(&cache_key) {
            if now - minted < ttl / 2 {
                return Ok(token.clone());
            }
        }
        let token = self.mint(grant, None, audience, ttl, now)?;
        if cache.len() > 100_000 {
            cache.clear();
        }
        cache.insert(cache_key, (token.clone(), now));
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TokensConfig {
        TokensConfig::default()
    }

    #[test]
    fn scopes_naming_a_tier_are_left_out_and_others_kept_in_order() {
        let is_tier = |s: &str| ["bronze", "gold"].contains(&s);
        let plain = ["read".to_owned(), "write".to_owned()];
        assert!(matches!(without_tiers(&plain, is_tier), Cow::Borrowed(_)));
        let mixed = ["read", "gold", "write", "bronze"].map(str::to_owned);
        assert_eq!(&*without_tiers(&mixed, is_tier), ["read", "write"]);
    }

    /// A key file path in a fresh directory that is removed with the guard.
    fn temp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join("token-keys.json");
        (dir, path)
    }

    #[test]
    fn keys_are_made_once_kept_private_and_verify_what_they_sign() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, path) = temp();
        let issuer = TokenIssuer::open(&config(), "https://gw.test".into(), &path, 1_000).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = TokenIssuer::open(&config(), "https://gw.test".into(), &path, 1_000).unwrap();
        assert_eq!(issuer.jwks(), again.jwks(), "the key is kept");

        let scopes = vec!["read".to_owned()];
        let grant = Grant {
            client_id: "cl_1",
            tier: "gold",
            scopes: &scopes,
        };
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let token = issuer
            .mint(&grant, Some("abc"), "gateway", 60, now)
            .unwrap();
        let key = &issuer.verification_keys()[0];
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.set_audience(&["gateway"]);
        validation.set_issuer(&["https://gw.test"]);
        let claims = jsonwebtoken::decode::<Value>(&token, &key.key, &validation)
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "cl_1");
        assert_eq!(claims["scope"], "read gold");
        assert_eq!(claims[KEY_ID_CLAIM], "abc");
        assert!(!std::fs::read_to_string(&path).unwrap().contains(&token));
    }

    #[test]
    fn upstream_tokens_are_shared_only_by_identical_grants() {
        let (_dir, path) = temp();
        let issuer = TokenIssuer::open(&config(), "i".into(), &path, 1_000).unwrap();
        let (all, read) = (
            vec!["read".to_owned(), "write".to_owned()],
            vec!["read".to_owned()],
        );
        let grant = |tier, scopes| Grant {
            client_id: "cl_1",
            tier,
            scopes,
        };
        let first = issuer
            .upstream_token(&grant("gold", &all), "app", 1_000)
            .unwrap();
        let again = issuer
            .upstream_token(&grant("gold", &all), "app", 1_001)
            .unwrap();
        assert_eq!(first, again, "reused within its half-life");
        for (tier, scopes, audience) in [
            ("gold", &read, "app"),
            ("bronze", &all, "app"),
            ("gold", &all, "other"),
        ] {
            let token = issuer
                .upstream_token(&grant(tier, scopes), audience, 1_001)
                .unwrap();
            assert_ne!(token, first, "{tier} {scopes:?} {audience}");
            let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
            assert_eq!(claims["aud"], audience);
            assert_eq!(claims["scope"], format!("{} {tier}", scopes.join(" ")));
        }
    }

    #[test]
    fn a_rotated_out_key_stays_published_until_its_tokens_expire() {
        let (_dir, path) = temp();
        let issuer = TokenIssuer::open(&config(), "i".into(), &path, 1_000).unwrap();
        let old_kid = issuer.jwks()["keys"][0]["kid"].as_str().unwrap().to_owned();
        let file = KeyFile::new(path.clone(), config().max_ttl_seconds());
        let new_kid = file.rotate(1_010).unwrap();
        assert!(issuer.changed());
        let kids = |issuer: &TokenIssuer| -> Vec<String> {
            issuer.jwks()["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_owned())
                .collect()
        };
        issuer.reload(1_010).unwrap();
        assert_eq!(kids(&issuer), [old_kid.clone(), new_kid.clone()]);
        let max = config().max_ttl_seconds();
        issuer.reload(1_010 + max).unwrap();
        assert_eq!(kids(&issuer), [new_kid]);
    }
}
