//! `/v1/management/api-clients`: create, list, read, change, delete and
//! rotate API clients, and read or reset their limit state. A key is shown
//! once, in the create or rotate answer. Every change reloads the
//! in-memory index before answering (that client only), so it is in
//! force when the caller hears back; other gateways on a shared store
//! hear of it from the store. A store out of reach is 503.
use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::{audit::AuditEntry, json_response, Admin, AdminError, AdminResponse, Call};
use crate::{
    clock::{monotonic_ns, unix_now},
    keys::{
        clients::{revoked_json, ClientSpec, ListQuery, Ttl},
        store::ClientUpdate,
        ClientError, Clients,
    },
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
    /// Another issuer's client claim that names this same client:
    /// `ISSUER#CLAIM`, or the claim with `api_client_issuer` (or alone when
    /// one issuer is configured).
    api_client_id: Option<String>,
    api_client_issuer: Option<String>,
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

/// A name must say something (the document's `pattern: \S`).
fn blank_name(name: Option<&str>) -> Result<(), AdminError> {
    match name {
        Some(name) if name.trim().is_empty() => {
            Err(AdminError::BadRequest("name must not be empty".into()))
        }
        _ => Ok(()),
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, AdminError> {
    let body = if body.is_empty() { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| AdminError::BadRequest(format!("invalid body: {e}")))
}

/// The statuses the API has always answered: a caller's mistake is 400, a
/// missing client 404, a taken external id 409, a store failure 500.
impl From<ClientError> for AdminError {
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::UnknownClient(id) => AdminError::UnknownClient(id),
            ClientError::Store(error) if error.is_conflict() => {
                AdminError::Conflict(error.to_string())
            }
            ClientError::Store(error) => AdminError::Store(error),
            error @ (ClientError::UnknownTier { .. }
            | ClientError::Invalid(_)
            | ClientError::AdminExists) => AdminError::BadRequest(error.to_string()),
        }
    }
}

impl Admin {
    pub(super) async fn clients(&self, call: &Call<'_>) -> Result<AdminResponse, AdminError> {
        let (action, client_id, result) = match (call.method, call.rest) {
            (&Method::GET, []) => return self.list(call.query).await,
            (&Method::GET, [id]) => return self.show(id).await,
            (&Method::GET, [id, "limits"]) => return self.limits(id, false).await,
            (&Method::POST, []) => {
                let result = self.create(call).await;
                let id = result.as_ref().ok().and_then(|(id, _)| id.clone());
                ("create", id, result.map(|(_, r)| r))
            }
            (&Method::PATCH, [id]) => ("update", Some(id.to_string()), self.update(id, call).await),
            (&Method::DELETE, [id]) => ("delete", Some(id.to_string()), self.delete(id).await),
            (&Method::POST, [id, "rotate"]) => {
                ("rotate", Some(id.to_string()), self.rotate(id, call).await)
            }
            (&Method::DELETE, [id, "limits"]) => (
                "limits.reset",
                Some(id.to_string()),
                self.limits(id, true).await,
            ),
            (_, []) => return Err(AdminError::MethodNotAllowed("GET, POST")),
            (_, [_]) => return Err(AdminError::MethodNotAllowed("GET, PATCH, DELETE")),
            (_, [_, "rotate"]) => return Err(AdminError::MethodNotAllowed("POST")),
            (_, [_, "limits"]) => return Err(AdminError::MethodNotAllowed("GET, DELETE")),
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

    /// The lifecycle on this gateway's store and tiers.
    fn lifecycle(&self) -> Clients<'_> {
        let shared = self.current();
        Clients::new(
            self.store.as_ref(),
            shared.quotas.iter().map(|q| q.name.as_str()),
        )
        .with_issuers(shared.jwt.external_issuers())
    }

    async fn create(&self, call: &Call<'_>) -> Result<(Option<String>, AdminResponse), AdminError> {
        let request: CreateRequest = parse(&call.body)?;
        blank_name(Some(&request.name))?;
        let spec = ClientSpec {
            name: request.name,
            tier: request.tier,
            scopes: request.scopes,
            is_admin: request.is_admin,
            expires_at: request.expires_at,
            ttl: request.ttl,
            with_key: request.generate_api_key,
            external_id: request.api_client_id,
            external_issuer: request.api_client_issuer,
        };
        let view = self.lifecycle().create(spec, unix_now()).await?;
        self.refresh(&view.client.id).await;
        let body = view.to_json();
        Ok((
            Some(view.client.id),
            json_response(StatusCode::CREATED, &body),
        ))
    }

    async fn list(&self, query: Option<&str>) -> Result<AdminResponse, AdminError> {
        let mut list = ListQuery {
            limit: Some(DEFAULT_PAGE),
            ..ListQuery::default()
        };
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let number = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| AdminError::BadRequest(format!("{key} must be a number")))
            };
            match key.as_ref() {
                "limit" => match number(&value)? {
                    limit @ 1..=MAX_PAGE => list.limit = Some(limit),
                    _ => {
                        return Err(AdminError::BadRequest(format!(
                            "limit must be between 1 and {MAX_PAGE}"
                        )))
                    }
                },
                "offset" => list.offset = number(&value)?,
                "name" => list.name = Some(value.into_owned()),
                "tier" => list.tier = Some(value.into_owned()),
                other => {
                    return Err(AdminError::BadRequest(format!(
                        "unknown query parameter {other:?}"
                    )))
                }
            }
        }
        let page = self.lifecycle().list(&list).await?;
        let items: Vec<_> = page.items.iter().map(|c| c.to_json()).collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "items": items,
                "total": page.total,
                "limit": list.limit,
                "offset": list.offset,
            }),
        ))
    }

    async fn show(&self, id: &str) -> Result<AdminResponse, AdminError> {
        let view = self.lifecycle().show(id).await?;
        Ok(json_response(StatusCode::OK, &view.to_json()))
    }

    async fn update(&self, id: &str, call: &Call<'_>) -> Result<AdminResponse, AdminError> {
        let request: UpdateRequest = parse(&call.body)?;
        blank_name(request.name.as_deref())?;
        let update = ClientUpdate {
            name: request.name,
            tier: request.tier,
            scopes: request.scopes,
            expires_at: request.expires_at,
            disabled: request.disabled,
            is_admin: request.is_admin,
            external_id: request.api_client_id,
        };
        let view = self.lifecycle().update(id, &update).await?;
        self.refresh(id).await;
        Ok(json_response(StatusCode::OK, &view.to_json()))
    }

    async fn delete(&self, id: &str) -> Result<AdminResponse, AdminError> {
        self.lifecycle().revoke(id).await?;
        self.refresh(id).await;
        self.shared.limiter.reset(&LimitKey::Client(id.to_owned()));
        Ok(json_response(StatusCode::OK, &revoked_json(id)))
    }

    async fn rotate(&self, id: &str, call: &Call<'_>) -> Result<AdminResponse, AdminError> {
        let request: RotateRequest = parse(&call.body)?;
        let view = self
            .lifecycle()
            .rotate(id, request.grace_seconds, unix_now())
            .await?;
        self.refresh(id).await;
        Ok(json_response(StatusCode::OK, &view.to_json()))
    }

    /// A client's limit state; with `reset`, made whole first.
    async fn limits(&self, id: &str, reset: bool) -> Result<AdminResponse, AdminError> {
        let client = self.lifecycle().find(id).await?;
        let shared = self.current();
        let (_, quota) = shared.tier(&client.tier);
        let key = LimitKey::Client(client.id.clone());
        if reset {
            self.shared.limiter.reset(&key);
        }
        let state = self.shared.limiter.peek(&key, quota, monotonic_ns());
        // A shared limiter's node knows its own lease, not the fleet's state.
        let scope = match self.shared.limiter.backend() {
            None => "gateway",
            Some(status) if status.fallback => "node_fallback",
            Some(_) => "node_lease",
        };
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
                "scope": scope,
            }),
        ))
    }
}
