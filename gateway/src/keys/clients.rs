//! The API-client lifecycle: create, list, show, update, rotate, revoke.
//!
//! One implementation for both edges: the admin API handlers (which add
//! HTTP, audit and the index reload) and the `gateway keys` CLI working on
//! the store file. Both show a client through [`ClientView::to_json`], so
//! the CLI prints on the store exactly what the API answers.
use serde::Deserialize;
use serde_json::{json, Value};

use super::store::{Client, ClientUpdate, KeyStore, NewClient, StoreError};

/// Why a lifecycle operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("unknown tier {tier:?}; configured tiers: {}", .configured.join(", "))]
    UnknownTier {
        tier: String,
        configured: Vec<String>,
    },
    #[error("no client {0:?}")]
    UnknownClient(String),
    /// The caller asked for something malformed or contradictory.
    #[error("{0}")]
    Invalid(String),
    #[error("an admin client exists already")]
    AdminExists,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A lifetime given as seconds or as a duration text such as `"30d"` (the
/// admin API accepts both).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Ttl {
    Seconds(u64),
    Text(String),
}

/// What a new client should be.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    pub name: String,
    pub tier: String,
    pub scopes: Vec<String>,
    pub is_admin: bool,
    /// Unix seconds; exclusive with `ttl`.
    pub expires_at: Option<i64>,
    pub ttl: Option<Ttl>,
    /// Without a key, a client is known only by JWTs (`external_id`).
    pub with_key: bool,
    /// The client claim of another issuer's tokens that names this client:
    /// `ISSUER#CLAIM`, or the claim alone with `external_issuer` (or with
    /// the one configured issuer); see [`external_id`].
    pub external_id: Option<String>,
    pub external_issuer: Option<String>,
}

/// An external id as stored: `ISSUER#CLAIM`, so a token names this client
/// only when that issuer signed it. `id` is the claim when `issuer` is
/// given; else `ISSUER#CLAIM` itself, or the claim alone when exactly one
/// issuer is `configured` (`None`: not known here, so not checked).
pub fn external_id(
    id: &str,
    issuer: Option<&str>,
    configured: Option<&[String]>,
) -> Result<String, ClientError> {
    let invalid = |message: String| Err(ClientError::Invalid(message));
    let names = || configured.map_or(String::new(), |c| c.join(", "));
    let (issuer, claim) = match (issuer, id.split_once('#'), configured) {
        (Some(issuer), _, _) => (issuer, id),
        (None, Some((issuer, claim)), _) => (issuer, claim),
        (None, None, Some([only])) => (only.as_str(), id),
        (None, None, _) => {
            return invalid(format!(
                "external id {id:?} names no issuer: give ISSUER#CLAIM or the issuer (configured issuers: {})",
                names()
            ))
        }
    };
    if claim.is_empty() || issuer.is_empty() || issuer.contains('#') {
        return invalid(format!(
            "external id {id:?}: needs a claim and an issuer without '#'"
        ));
    }
    if configured.is_some_and(|c| !c.iter().any(|i| i == issuer)) {
        return invalid(format!(
            "external id {id:?}: issuer {issuer:?} is not configured (configured issuers: {})",
            names()
        ));
    }
    Ok(crate::jwt::principal(issuer, claim))
}

/// A client as the API and the CLI show it: its fields and its keys' ids,
/// never a secret or a hash, except the new key in a create or rotate
/// answer (shown once).
pub struct ClientView {
    pub client: Client,
    pub keys: Vec<KeyView>,
    pub api_key: Option<String>,
    pub previous_keys_expire_at: Option<i64>,
}

/// The view of the key `text` a write made at `now` (none for no key).
fn new_key(text: &str, now: i64) -> Vec<KeyView> {
    let parsed = super::format::parse(text).ok();
    (parsed.into_iter())
        .map(|key| KeyView {
            key_id: key.id.to_owned(),
            created_at: now,
            expires_at: None,
        })
        .collect()
}

pub struct KeyView {
    pub key_id: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

impl ClientView {
    /// The one JSON shape of a client.
    pub fn to_json(&self) -> Value {
        let c = &self.client;
        let keys: Vec<Value> = self
            .keys
            .iter()
            .map(|k| json!({ "key_id": k.key_id, "created_at": k.created_at, "expires_at": k.expires_at }))
            .collect();
        let mut view = json!({
            "id": c.id,
            "name": c.name,
            "tier": c.tier,
            "scopes": c.scopes,
            "is_admin": c.is_admin,
            "disabled": c.disabled,
            "expires_at": c.expires_at,
            "api_client_id": c.external_id,
            "created_at": c.created_at,
            "keys": keys,
        });
        if let Some(key) = &self.api_key {
            view["api_key"] = json!(key);
        }
        if let Some(at) = self.previous_keys_expire_at {
            view["previous_keys_expire_at"] = json!(at);
        }
        view
    }
}

/// The answer to a revoke, on either edge.
pub fn revoked_json(id: &str) -> Value {
    json!({ "deleted": id })
}

/// Which clients a list shows; `limit: None` is all of them.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Substring of the name.
    pub name: Option<String>,
    pub tier: Option<String>,
    pub offset: usize,
    pub limit: Option<usize>,
}

pub struct ClientPage {
    /// Matching clients, before paging.
    pub total: usize,
    pub items: Vec<ClientView>,
}

/// Unix seconds `seconds` after `now`, saturating instead of wrapping.
pub fn expires_after(seconds: u64, now: i64) -> i64 {
    now.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX))
}

/// The lifecycle on one store, checked against the configured tiers.
pub struct Clients<'a> {
    store: &'a dyn KeyStore,
    tiers: Vec<String>,
    /// The configured JWT issuers external ids may name; `None`: unknown.
    issuers: Option<Vec<String>>,
}

impl<'a> Clients<'a> {
    /// `tiers`: the configured tier names, in configuration order.
    pub fn new<'t>(store: &'a dyn KeyStore, tiers: impl IntoIterator<Item = &'t str>) -> Self {
        Self {
            store,
            tiers: tiers.into_iter().map(str::to_owned).collect(),
            issuers: None,
        }
    }

    /// External ids must name one of these issuers (and a bare claim is
    /// the sole one's).
    pub fn with_issuers(mut self, issuers: impl IntoIterator<Item = String>) -> Self {
        self.issuers = Some(issuers.into_iter().collect());
        self
    }

    fn external_id(&self, id: &str, issuer: Option<&str>) -> Result<String, ClientError> {
        external_id(id, issuer, self.issuers.as_deref())
    }

    /// Each scope is one RFC 6749 scope token (`NQCHAR`s: printable ASCII
    /// but space, `"` and `\`), without `,` (the CLI's list separator),
    /// and no tier's name in any letter case: a token carries the client's
    /// tier in its `scope` claim, so a scope `gold` (or `read gold`, which
    /// a claim splits in two) would read as tier gold to a gateway that
    /// takes tiers from scopes.
    pub fn check_scopes(&self, scopes: &[String]) -> Result<(), ClientError> {
        for scope in scopes {
            let token = !scope.is_empty()
                && (scope.bytes())
                    .all(|b| matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x5b | 0x5d..=0x7e));
            if !token {
                return Err(ClientError::Invalid(format!(
                    "scope {scope:?}: a scope is one or more printable ASCII characters, \
                     without spaces, ',', '\"' or '\\'"
                )));
            }
            if self
                .tiers
                .iter()
                .any(|tier| tier.eq_ignore_ascii_case(scope))
            {
                return Err(ClientError::Invalid(format!(
                    "scope {scope:?} is the name of a tier: tokens carry the client's tier \
                     in their scope claim, where it would read as that tier; give the tier \
                     with \"tier\" and name scopes apart from tiers"
                )));
            }
        }
        Ok(())
    }

    /// A client's tier must be one the gateway can rate-limit by.
    pub fn check_tier(&self, tier: &str) -> Result<(), ClientError> {
        if self.tiers.iter().any(|t| t == tier) {
            return Ok(());
        }
        Err(ClientError::UnknownTier {
            tier: tier.to_owned(),
            configured: self.tiers.clone(),
        })
    }

    /// A new client with one key (unless `spec.with_key` is false).
    pub async fn create(&self, spec: ClientSpec, now: i64) -> Result<ClientView, ClientError> {
        let new = self.new_client(spec, now)?;
        let (client, key) = self.store.create(new, now).await?;
        let mut view = self.view_after_write(client, new_key(&key, now)).await;
        view.api_key = (!key.is_empty()).then_some(key);
        Ok(view)
    }

    /// `count` clients named `NAME-1` ... `NAME-count`, all or none; with
    /// their keys, shown once.
    pub async fn create_many(
        &self,
        spec: ClientSpec,
        count: u32,
        now: i64,
    ) -> Result<Vec<(Client, String)>, ClientError> {
        let new = self.new_client(spec, now)?;
        let batch = (1..=count)
            .map(|i| NewClient {
                name: format!("{}-{i}", new.name),
                ..new.clone()
            })
            .collect();
        Ok(self.store.create_many(batch, now).await?)
    }

    /// The first admin client, in the highest configured tier; refused
    /// when an admin client exists, unless `force`.
    pub async fn bootstrap(&self, force: bool, now: i64) -> Result<ClientView, ClientError> {
        let new = NewClient {
            name: "admin".into(),
            tier: self.tiers.last().map_or("gold", String::as_str).to_owned(),
            is_admin: true,
            ..NewClient::default()
        };
        // Checked and created in one transaction: concurrent runs make one admin.
        let (client, key) = if force {
            self.store.create(new, now).await?
        } else {
            self.store
                .create_first_admin(new, now)
                .await?
                .ok_or(ClientError::AdminExists)?
        };
        let mut view = self.view_after_write(client, new_key(&key, now)).await;
        view.api_key = Some(key);
        Ok(view)
    }

    pub async fn list(&self, query: &ListQuery) -> Result<ClientPage, ClientError> {
        let matching: Vec<Client> = self
            .store
            .clients()
            .await?
            .into_iter()
            .filter(|c| {
                query
                    .name
                    .as_ref()
                    .is_none_or(|n| c.name.contains(n.as_str()))
            })
            .filter(|c| query.tier.as_ref().is_none_or(|t| &c.tier == t))
            .collect();
        let total = matching.len();
        let mut items = Vec::new();
        let page = (matching.into_iter())
            .skip(query.offset)
            .take(query.limit.unwrap_or(usize::MAX));
        for client in page {
            items.push(self.view(client).await?);
        }
        Ok(ClientPage { total, items })
    }

    pub async fn find(&self, id: &str) -> Result<Client, ClientError> {
        self.store
            .client(id)
            .await?
            .ok_or_else(|| ClientError::UnknownClient(id.to_owned()))
    }

    pub async fn show(&self, id: &str) -> Result<ClientView, ClientError> {
        self.view(self.find(id).await?).await
    }

    pub async fn update(&self, id: &str, update: &ClientUpdate) -> Result<ClientView, ClientError> {
        if let Some(tier) = &update.tier {
            self.check_tier(tier)?;
        }
        if let Some(scopes) = &update.scopes {
            self.check_scopes(scopes)?;
        }
        let mut update = update.clone();
        if let Some(Some(external)) = &update.external_id {
            update.external_id = Some(Some(self.external_id(external, None)?));
        }
        let client = self
            .store
            .update(id, &update)
            .await?
            .ok_or_else(|| ClientError::UnknownClient(id.to_owned()))?;
        Ok(self.view_after_write(client, Vec::new()).await)
    }

    /// Deletes the client and all its keys.
    pub async fn revoke(&self, id: &str) -> Result<(), ClientError> {
        if !self.store.delete(id).await? {
            return Err(ClientError::UnknownClient(id.to_owned()));
        }
        Ok(())
    }

    /// A new key (shown once); the client's current keys keep working for
    /// `grace_seconds`.
    pub async fn rotate(
        &self,
        id: &str,
        grace_seconds: i64,
        now: i64,
    ) -> Result<ClientView, ClientError> {
        if grace_seconds < 0 {
            return Err(ClientError::Invalid("grace_seconds must be >= 0".into()));
        }
        // Read first: a rotation changes keys only, and its new key must
        // reach the caller even if nothing can be read after it.
        let client = self.find(id).await?;
        let key = self
            .store
            .rotate(id, grace_seconds, now)
            .await?
            .ok_or_else(|| ClientError::UnknownClient(id.to_owned()))?;
        let mut view = self.view_after_write(client, new_key(&key, now)).await;
        view.api_key = Some(key);
        view.previous_keys_expire_at = Some(now.saturating_add(grace_seconds));
        Ok(view)
    }

    /// The view of a client a write has just committed: its keys read
    /// back, or, if the store fails to answer now, the keys the write
    /// knows of. The write is made: a failed read must not turn it into
    /// an error (a retried create would make a second client, a rotated
    /// key would be lost).
    async fn view_after_write(&self, client: Client, known: Vec<KeyView>) -> ClientView {
        match self.view(client.clone()).await {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(%error, client = %client.id, "the change is made; reading it back failed");
                ClientView {
                    client,
                    keys: known,
                    api_key: None,
                    previous_keys_expire_at: None,
                }
            }
        }
    }

    /// The client with its keys' ids.
    pub async fn view(&self, client: Client) -> Result<ClientView, ClientError> {
        let keys = self
            .store
            .client_keys(&client.id)
            .await?
            .into_iter()
            .map(|k| KeyView {
                key_id: k.key_id,
                created_at: k.created_at,
                expires_at: k.expires_at,
            })
            .collect();
        Ok(ClientView {
            client,
            keys,
            api_key: None,
            previous_keys_expire_at: None,
        })
    }

    /// Checks a spec and resolves its expiry, in the order the admin API
    /// has always reported problems: tier, lifetime, key.
    fn new_client(&self, spec: ClientSpec, now: i64) -> Result<NewClient, ClientError> {
        self.check_tier(&spec.tier)?;
        self.check_scopes(&spec.scopes)?;
        let ttl = match spec.ttl {
            None => None,
            Some(Ttl::Seconds(seconds)) => Some(seconds),
            Some(Ttl::Text(text)) => Some(
                humantime::parse_duration(&text)
                    .map_err(|e| ClientError::Invalid(format!("ttl {text:?}: {e}")))?
                    .as_secs(),
            ),
        };
        let expires_at = match (spec.expires_at, ttl) {
            (Some(_), Some(_)) => {
                return Err(ClientError::Invalid(
                    "give expires_at or ttl, not both".into(),
                ))
            }
            (at, None) => at,
            (None, Some(ttl)) => Some(expires_after(ttl, now)),
        };
        if !spec.with_key && spec.external_id.is_none() {
            return Err(ClientError::Invalid(
                "a client without an API key needs api_client_id (its JWT client claim)".into(),
            ));
        }
        let external_id = match (&spec.external_id, &spec.external_issuer) {
            (Some(id), issuer) => Some(self.external_id(id, issuer.as_deref())?),
            (None, Some(_)) => {
                return Err(ClientError::Invalid(
                    "an external issuer without an external id".into(),
                ))
            }
            (None, None) => None,
        };
        Ok(NewClient {
            name: spec.name,
            tier: spec.tier,
            scopes: spec.scopes,
            expires_at,
            is_admin: spec.is_admin,
            external_id,
            no_key: !spec.with_key,
        })
    }
}

#[cfg(test)]
#[path = "clients_tests.rs"]
mod tests;
