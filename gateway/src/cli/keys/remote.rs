//! `gateway keys ... --admin-url`: each operation as the admin API request
//! that does the same, so a running gateway follows at once.
use anyhow::Result;
use gateway::{admin_client, keys::clients::Ttl};
use http::Method;
use serde_json::{json, Value};

use super::Op;
use crate::cli::{block_on, CLIENTS};

/// The admin API's largest page.
const PAGE: usize = 500;

/// Asks the admin API at `url`; answers with the same JSON as the store.
pub(super) fn answer(url: &str, op: &Op) -> Result<Value> {
    let (method, path, body) = request(op);
    if matches!(op, Op::List { .. }) {
        return Ok(block_on(list_all(url, &path))??);
    }
    Ok(block_on(admin_client::call(
        url,
        method,
        &path,
        body.as_ref(),
    ))??)
}

fn request(op: &Op) -> (Method, String, Option<Value>) {
    match op {
        Op::Create(spec) => {
            let mut body = json!({
                "name": spec.name,
                "tier": spec.tier,
                "scopes": spec.scopes,
                "is_admin": spec.is_admin,
            });
            if let Some(at) = spec.expires_at {
                body["expires_at"] = json!(at);
            }
            match &spec.ttl {
                Some(Ttl::Seconds(seconds)) => body["ttl"] = json!(seconds),
                Some(Ttl::Text(text)) => body["ttl"] = json!(text),
                None => {}
            }
            if !spec.with_key {
                body["generate_api_key"] = json!(false);
            }
            if let Some(external) = &spec.external_id {
                body["api_client_id"] = json!(external);
            }
            if let Some(issuer) = &spec.external_issuer {
                body["api_client_issuer"] = json!(issuer);
            }
            (Method::POST, CLIENTS.into(), Some(body))
        }
        Op::List { tier } => {
            let filter = tier.as_ref().map_or(String::new(), |t| {
                format!(
                    "&{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("tier", t)
                        .finish()
                )
            });
            (Method::GET, format!("{CLIENTS}?limit={PAGE}{filter}"), None)
        }
        Op::Show(id) => (Method::GET, format!("{CLIENTS}/{id}"), None),
        Op::Update(id, update) => {
            let mut body = json!({});
            let fields = [
                ("name", update.name.as_ref().map(|v| json!(v))),
                ("tier", update.tier.as_ref().map(|v| json!(v))),
                ("scopes", update.scopes.as_ref().map(|v| json!(v))),
                ("expires_at", update.expires_at.map(|v| json!(v))),
                ("disabled", update.disabled.map(|v| json!(v))),
                ("is_admin", update.is_admin.map(|v| json!(v))),
                (
                    "api_client_id",
                    update.external_id.as_ref().map(|v| json!(v)),
                ),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    body[name] = value;
                }
            }
            (Method::PATCH, format!("{CLIENTS}/{id}"), Some(body))
        }
        Op::Revoke(id) => (Method::DELETE, format!("{CLIENTS}/{id}"), None),
        Op::Rotate(id, grace) => (
            Method::POST,
            format!("{CLIENTS}/{id}/rotate"),
            Some(json!({ "grace_seconds": grace })),
        ),
    }
}

/// Every page of a list, as one answer shaped like the store's.
async fn list_all(url: &str, path: &str) -> Result<Value, admin_client::AdminClientError> {
    let mut items = Vec::new();
    loop {
        let page = admin_client::call(
            url,
            Method::GET,
            &format!("{path}&offset={}", items.len()),
            None,
        )
        .await?;
        let batch = page["items"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or(0) as usize;
        let done = batch.is_empty();
        items.extend(batch);
        if done || items.len() >= total {
            return Ok(json!({ "total": items.len(), "items": items }));
        }
    }
}
