//! `/v1/management/api-clients`: create, list, read, change, delete and
//! rotate API clients, and read or reset their limit state. A key is shown
//! once, in the create or rotate answer. Every change reloads the
//! in-memory index before answering, so it is in force when the caller
//! hears back.
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{audit::AuditEntry, json_response, Admin, AdminError, AdminResponse, Call};
use crate::{
    clock::{monotonic_ns, unix_now},
    keys::{store::ClientUpdate, Client, KeyStore, NewClient, StoreError},
    limits::LimitKey,
};

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    name: String,
    tier: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    is_admin: bool,
    /// Unix seconds.
    expires_at: Option<i64>,
    /// Seconds from now, or a duration such as `"30d"`.
    ttl: Option<Ttl>,
    #[serde(default = "yes")]
    generate_api_key: bool,
    /// The JWT client-claim value that names this same client.
    api_client_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(u64),
    Text(String),
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    grace_seconds: i64,
}

/// PATCH body: [`ClientUpdate`] with the API's name for the external id.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    name: Option<String>,
    tier: Option<String>,
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some")]
    expires_at: Option<Option<i64>>,
    disabled: Option<bool>,
    is_admin: Option<bool>,
    #[serde(default, deserialize_with = "some")]
    api_client_id: Option<Option<String>>,
}

/// Present (even as `null`) → `Some`, so `null` can clear a field.
fn some<'de, T: Deserialize<'de>, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, AdminError> {
    let body = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| AdminError::BadRequest(format!("invalid body: {e}")))
}

impl Admin {
    pub(super) fn clients(&self, call: &Call<'_>) -> Result<AdminResponse, AdminError> {
        let (action, client_id, result) = match (call.method, call.rest) {
            (&Method::GET, []) => return self.list(call.query),
            (&Method::GET, [id]) => return self.show(id),
            (&Method::GET, [id, "limits"]) => return self.limits(id, false),
            (&Method::POST, []) => {
                let result = self.create(call);
                let id = result.as_ref().ok().and_then(|(id, _)| id.clone());
                ("create", id, result.map(|(_, r)| r))
            }
            (&Method::PATCH, [id]) => ("update", Some(id.to_string()), self.update(id, call)),
            (&Method::DELETE, [id]) => ("delete", Some(id.to_string()), self.delete(id)),
            (&Method::POST, [id, "rotate"]) => {
                ("rotate", Some(id.to_string()), self.rotate(id, call))
            }
            (&Method::DELETE, [id, "limits"]) => {
                ("limits.reset", Some(id.to_string()), self.limits(id, true))
            }
            (_, [] | [_] | [_, "rotate" | "limits"]) => return Err(AdminError::MethodNotAllowed),
            _ => return Err(AdminError::NotFound),
        };
        let status = match &result {
            Ok(response) => response.status(),
            Err(error) => error.status().0,
        };
        self.audit.record(&AuditEntry {
            ts: unix_now(),
            actor: &call.actor.id,
            action,
            client_id: client_id.as_deref(),
            peer: call.peer,
            status: status.as_u16(),
        });
        result
    }

    fn check_tier(&self, tier: &str) -> Result<(), AdminError> {
        let quotas = &self.shared.quotas;
        if quotas.iter().any(|q| q.name == tier) {
            return Ok(());
        }
        let names: Vec<&str> = quotas.iter().map(|q| q.name.as_str()).collect();
        Err(AdminError::BadRequest(format!(
            "unknown tier {tier:?}; configured tiers: {}",
            names.join(", ")
        )))
    }

    fn create(&self, call: &Call<'_>) -> Result<(Option<String>, AdminResponse), AdminError> {
        let request: CreateRequest = parse(&call.body)?;
        if request.name.trim().is_empty() {
            return Err(AdminError::BadRequest("name must not be empty".into()));
        }
        self.check_tier(&request.tier)?;
        let now = unix_now();
        let ttl = match request.ttl {
            None => None,
            Some(Ttl::Seconds(seconds)) => Some(seconds),
            Some(Ttl::Text(text)) => Some(
                humantime::parse_duration(&text)
                    .map_err(|e| AdminError::BadRequest(format!("ttl {text:?}: {e}")))?
                    .as_secs(),
            ),
        };
        let expires_at = match (request.expires_at, ttl) {
            (Some(_), Some(_)) => {
                return Err(AdminError::BadRequest(
                    "give expires_at or ttl, not both".into(),
                ))
            }
            (at, None) => at,
            (None, Some(ttl)) => Some(now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))),
        };
        if !request.generate_api_key && request.api_client_id.is_none() {
            return Err(AdminError::BadRequest(
                "a client without an API key needs api_client_id (its JWT client claim)".into(),
            ));
        }
        let new = NewClient {
            name: request.name,
            tier: request.tier,
            scopes: request.scopes,
            expires_at,
            is_admin: request.is_admin,
            external_id: request.api_client_id,
            no_key: !request.generate_api_key,
        };
        let (client, key) = self.store.create(new, now).map_err(conflict)?;
        self.reload()?;
        let mut body = self.client_json(&client)?;
        if !key.is_empty() {
            body["api_key"] = Value::String(key);
        }
        Ok((Some(client.id), json_response(StatusCode::CREATED, &body)))
    }

    fn list(&self, query: Option<&str>) -> Result<AdminResponse, AdminError> {
        let (mut limit, mut offset, mut name, mut tier) = (DEFAULT_PAGE, 0, None, None);
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let number = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| AdminError::BadRequest(format!("{key} must be a number")))
            };
            match key.as_ref() {
                "limit" => limit = number(&value)?.clamp(1, MAX_PAGE),
                "offset" => offset = number(&value)?,
                "name" => name = Some(value.into_owned()),
                "tier" => tier = Some(value.into_owned()),
                other => {
                    return Err(AdminError::BadRequest(format!(
                        "unknown query parameter {other:?}"
                    )))
                }
            }
        }
        let matching: Vec<Client> = self
            .store
            .clients()?
            .into_iter()
            .filter(|c| name.as_ref().is_none_or(|n| c.name.contains(n.as_str())))
            .filter(|c| tier.as_ref().is_none_or(|t| &c.tier == t))
            .collect();
        let items = matching
            .iter()
            .skip(offset)
            .take(limit)
            .map(|c| self.client_json(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(json_response(
            StatusCode::OK,
            &json!({ "items": items, "total": matching.len(), "limit": limit, "offset": offset }),
        ))
    }

    fn show(&self, id: &str) -> Result<AdminResponse, AdminError> {
        let client = self.find(id)?;
        Ok(json_response(StatusCode::OK, &self.client_json(&client)?))
    }

    fn update(&self, id: &str, call: &Call<'_>) -> Result<AdminResponse, AdminError> {
        let request: UpdateRequest = parse(&call.body)?;
        if let Some(tier) = &request.tier {
            self.check_tier(tier)?;
        }
        let update = ClientUpdate {
            name: request.name,
            tier: request.tier,
            scopes: request.scopes,
            expires_at: request.expires_at,
            disabled: request.disabled,
            is_admin: request.is_admin,
            external_id: request.api_client_id,
        };
        let client = self
            .store
            .update(id, &update)
            .map_err(conflict)?
            .ok_or_else(|| AdminError::UnknownClient(id.to_owned()))?;
        self.reload()?;
        Ok(json_response(StatusCode::OK, &self.client_json(&client)?))
    }

    fn delete(&self, id: &str) -> Result<AdminResponse, AdminError> {
        if !self.store.delete(id)? {
            return Err(AdminError::UnknownClient(id.to_owned()));
        }
        self.reload()?;
        self.shared.limiter.reset(&LimitKey::Client(id.to_owned()));
        Ok(json_response(StatusCode::OK, &json!({ "deleted": id })))
    }

    fn rotate(&self, id: &str, call: &Call<'_>) -> Result<AdminResponse, AdminError> {
        let request: RotateRequest = parse(&call.body)?;
        if request.grace_seconds < 0 {
            return Err(AdminError::BadRequest("grace_seconds must be >= 0".into()));
        }
        let now = unix_now();
        let key = self
            .store
            .rotate(id, request.grace_seconds, now)?
            .ok_or_else(|| AdminError::UnknownClient(id.to_owned()))?;
        self.reload()?;
        let client = self.find(id)?;
        let mut body = self.client_json(&client)?;
        body["api_key"] = Value::String(key);
        body["previous_keys_expire_at"] = json!(now.saturating_add(request.grace_seconds));
        Ok(json_response(StatusCode::OK, &body))
    }

    /// A client's limit state; with `reset`, made whole first.
    fn limits(&self, id: &str, reset: bool) -> Result<AdminResponse, AdminError> {
        let client = self.find(id)?;
        let (_, quota) = self.shared.tier(&client.tier);
        let key = LimitKey::Client(client.id.clone());
        if reset {
            self.shared.limiter.reset(&key);
        }
        let state = self.shared.limiter.peek(&key, quota, monotonic_ns());
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "client_id": client.id,
                "tier": quota.name,
                "limit": quota.requests,
                "window_seconds": quota.window.as_secs_f64(),
                "burst": quota.burst,
                "remaining": state.remaining,
                "reset_seconds": state.reset.as_secs_f64(),
            }),
        ))
    }

    fn find(&self, id: &str) -> Result<Client, AdminError> {
        self.store
            .client(id)?
            .ok_or_else(|| AdminError::UnknownClient(id.to_owned()))
    }

    fn client_json(&self, client: &Client) -> Result<Value, AdminError> {
        Ok(client_view(self.store.as_ref(), client)?)
    }
}

/// The API's (and the CLI's) view of a client: its fields and its keys'
/// ids, never a secret or a hash.
pub fn client_view(store: &dyn KeyStore, client: &Client) -> Result<Value, StoreError> {
    let keys: Vec<Value> = store
        .client_keys(&client.id)?
        .iter()
        .map(|k| json!({ "key_id": k.key_id, "created_at": k.created_at, "expires_at": k.expires_at }))
        .collect();
    Ok(json!({
        "id": client.id,
        "name": client.name,
        "tier": client.tier,
        "scopes": client.scopes,
        "is_admin": client.is_admin,
        "disabled": client.disabled,
        "expires_at": client.expires_at,
        "api_client_id": client.external_id,
        "created_at": client.created_at,
        "keys": keys,
    }))
}

fn conflict(error: crate::keys::StoreError) -> AdminError {
    if error.is_conflict() {
        AdminError::Conflict(error.to_string())
    } else {
        AdminError::Store(error)
    }
}
