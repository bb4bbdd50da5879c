//! The gateway's own OAuth2 endpoints on the public listeners (when
//! `[tokens]` is enabled), answered before routing:
//!
//! - `POST /oauth2/token`: `grant_type=client_credentials`, the API key as
//!   `client_secret` (form field or HTTP Basic; `client_id`, if given, must
//!   be the key's client). Answers `{access_token, token_type: "Bearer",
//!   expires_in, scope}`; errors as RFC 6749 §5.2 says. A refused secret
//!   that suggests guessing counts as an authentication failure for the
//!   source guard. Limited by its own quota (`[tokens] rate_limit`, per
//!   client and per source by default): over it is a 429 with
//!   `Retry-After`, and every answer after the secret was checked carries
//!   the rate-limit headers (set by the respond phase).
//! - `GET /.well-known/jwks.json` and `GET /.well-known/openid-configuration`.
use std::{collections::HashMap, time::Duration};

use base64::Engine;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::{
    client_ban,
    context::{Refusal, RequestContext},
    error::ProxyError,
    identity::Identity,
    tier_reply::TierReplies,
    ProxyBody,
};
use crate::{
    clock::{monotonic_ns, unix_now},
    config::LimitBy,
    limits::{LimitKey, RateLimiter},
    shared::Shared,
    tokens::{without_tiers, Grant, TokenIssuer},
};

pub const TOKEN_PATH: &str = "/oauth2/token";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
const MAX_FORM: usize = 8 * 1024;

/// Whether this request is for one of these endpoints.
pub fn handles(path: &str) -> bool {
    matches!(path, TOKEN_PATH | JWKS_PATH | DISCOVERY_PATH)
}

/// Token answers must not be cached (RFC 6749 §5.1).
fn json_response(status: StatusCode, body: &Value) -> Response<ProxyBody> {
    let mut response = super::error::json_response(status, body);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An RFC 6749 error answer; `detail` is its `error_description` and the
/// access log's detail (which a caller may make more precise), so it must
/// tell a client nothing it may not know.
fn refuse(
    ctx: &mut RequestContext<'_>,
    status: StatusCode,
    code: &'static str,
    detail: &'static str,
) -> Response<ProxyBody> {
    ctx.refusal = Some(Refusal {
        code,
        detail: Some(detail),
        blame: None,
    });
    let mut response = json_response(
        status,
        &json!({ "error": code, "error_description": detail }),
    );
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"gateway\""),
        );
    }
    response
}

/// The endpoints' answer; `Err` for the refusals every route shares (a
/// ban, the limit), which the respond phase answers.
pub(super) async fn handle<'g>(
    shared: &'g Shared,
    tokens: &TokenIssuer,
    replies: &TierReplies,
    req: Request<Incoming>,
    body_timeout: Duration,
    ctx: &mut RequestContext<'g>,
) -> Result<Response<ProxyBody>, ProxyError> {
    // The normalised path, which `handles` said yes to.
    match (req.method(), ctx.path.as_str()) {
        (&Method::GET, JWKS_PATH) => Ok(json_response(StatusCode::OK, &tokens.jwks())),
        (&Method::GET, DISCOVERY_PATH) => Ok(json_response(StatusCode::OK, &tokens.discovery())),
        (&Method::POST, TOKEN_PATH) => {
            let form = match read_form(req, body_timeout).await? {
                Ok(form) => form,
                Err(detail) => {
                    return Ok(refuse(
                        ctx,
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        detail,
                    ))
                }
            };
            token(shared, tokens, replies, &form, ctx).await
        }
        _ => Ok(refuse(
            ctx,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "method not allowed",
        )),
    }
}

/// A token request's form fields and its Basic credentials.
struct Form {
    fields: HashMap<String, String>,
    basic: Option<(String, String)>,
}

impl Form {
    fn get(&self, name: &str) -> Option<&String> {
        self.fields.get(name)
    }
}

/// Reads a token request's form: `Err(ProxyError::BodyTimeout)` (408) if
/// the body has not come whole within `timeout` (a stalled body held its
/// connection for ever, so any client could fill the connection cap with
/// no credentials), `Ok(Err(why))` for a body refused as `invalid_request`:
/// unreadable, over [`MAX_FORM`], or a field (or `Authorization`) given
/// twice (RFC 6749 §3.2), which would otherwise leave one copy to win.
async fn read_form(
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Result<Form, &'static str>, ProxyError> {
    if req
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Ok(Err("a parameter given twice"));
    }
    let basic = basic_credentials(req.headers());
    let read = Limited::new(req.into_body(), MAX_FORM).collect();
    let Ok(body) = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxyError::BodyTimeout)?
    else {
        return Ok(Err("unreadable or oversized body"));
    };
    let body = body.to_bytes();
    let mut fields = HashMap::new();
    for (key, value) in form_urlencoded::parse(&body) {
        if fields
            .insert(key.into_owned(), value.into_owned())
            .is_some()
        {
            return Ok(Err("a parameter given twice"));
        }
    }
    Ok(Ok(Form { fields, basic }))
}

async fn token<'g>(
    shared: &'g Shared,
    tokens: &TokenIssuer,
    replies: &TierReplies,
    form: &Form,
    ctx: &mut RequestContext<'g>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return Ok(refuse(
            ctx,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only grant_type=client_credentials is supported",
        ));
    }
    let (client_id, secret) = match (form.basic.clone(), form.get("client_secret")) {
        (Some((id, secret)), None) => (Some(id), secret),
        (None, Some(secret)) => (form.get("client_id").cloned(), secret.clone()),
        (Some(_), Some(_)) => {
            return Ok(refuse(
                ctx,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client authenticated twice",
            ))
        }
        (None, None) => {
            return Ok(refuse(
                ctx,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "no client credentials",
            ))
        }
    };
    // Refused like any key on a node too long without its shared store:
    // a token minted here would outlive the key's revocation elsewhere.
    if shared.keys.is_stale() {
        return Err(ProxyError::KeyStoreStale);
    }
    let (key_id, outcome) = shared.keys.verify(&secret, unix_now());
    ctx.key_id = key_id;
    let client = match outcome {
        Ok(client) if client_id.as_ref().is_none_or(|id| *id == client.id) => client,
        outcome => {
            // A wrong client id for a right secret counts as guessing too.
            if outcome
                .as_ref()
                .err()
                .is_none_or(|reason| reason.is_guessing())
            {
                shared.submit(shared.guard.auth_failed(ctx.remote(), monotonic_ns()));
            }
            // As the proxy and the admin API answer: whether a key id
            // exists is not told (`unknown_key` and `wrong_secret` alike);
            // the access log says which.
            let reason = outcome.err();
            let public = reason.map_or("client_id_mismatch", |r| r.public_str());
            let response = refuse(ctx, StatusCode::UNAUTHORIZED, "invalid_client", public);
            if let (Some(reason), Some(refusal)) = (reason, ctx.refusal.as_mut()) {
                refusal.detail = Some(reason.as_str());
            }
            return Ok(response);
        }
    };
    client_ban(shared, &client.id, ctx.client_ip, monotonic_ns())?;
    ctx.identity = Some(Identity::Stored(client.clone()));
    // A narrower scope may be asked for, never a wider one; never a tier
    // but the client's own (see `tokens::without_tiers`).
    let own = without_tiers(&client.scopes, |s| shared.is_tier(s));
    let scopes: Vec<String> = match form.get("scope") {
        None => own.into_owned(),
        Some(asked) => {
            let asked: Vec<String> = crate::jwt::scope_tokens(asked).map(str::to_owned).collect();
            if asked.iter().any(|s| !own.contains(s) && *s != client.tier) {
                return Ok(refuse(
                    ctx,
                    StatusCode::BAD_REQUEST,
                    "invalid_scope",
                    "a scope the client does not have",
                ));
            }
            asked.into_iter().filter(|s| *s != client.tier).collect()
        }
    };
    limit(shared, replies, &client.id, ctx)?;
    let ttl = tokens.config.ttl.as_secs() as i64;
    let grant = Grant {
        client_id: &client.id,
        tier: &client.tier,
        scopes: &scopes,
    };
    let key_id = ctx.key_id.as_deref();
    match tokens.mint(&grant, key_id, &tokens.config.audience, ttl, unix_now()) {
        Ok(access_token) => {
            // What the token's `scope` claim says: the scopes and the tier.
            let mut scope = scopes;
            scope.push(client.tier.clone());
            Ok(json_response(
                StatusCode::OK,
                &json!({
                    "access_token": access_token,
                    "token_type": "Bearer",
                    "expires_in": ttl,
                    "scope": scope.join(" "),
                }),
            ))
        }
        Err(error) => {
            tracing::error!(%error, "minting a token failed");
            Ok(refuse(
                ctx,
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing failed",
            ))
        }
    }
}

/// The token endpoint's own limit, after every other check: each bucket
/// `[tokens] limit_by` names must allow the request. They are looked at
/// before any is counted, so a refusal spends nothing; the refusing (or
/// else the tightest) answer is what the rate-limit headers report. The
/// 429's parts are the worker's, built once (see [`TierReplies`]).
fn limit<'g>(
    shared: &'g Shared,
    replies: &TierReplies,
    client: &str,
    ctx: &mut RequestContext<'g>,
) -> Result<(), ProxyError> {
    let Some(limit) = &shared.token_limit else {
        return Ok(());
    };
    let (quota, limiter, now) = (&limit.quota, &limit.limiter, monotonic_ns());
    let keys = limit.by.iter().map(|by| match by {
        LimitBy::Client => LimitKey::Client(client.to_owned()),
        LimitBy::Source => LimitKey::Source(ctx.client_ip),
        LimitBy::Both => LimitKey::ClientAtSource(client.to_owned(), ctx.client_ip),
    });
    let keys: Vec<LimitKey> = keys.collect();
    let full = keys
        .iter()
        .find(|key| !limiter.peek(key, quota, now).allowed);
    let decisions: Vec<_> = match full {
        // A refused check counts nothing and says when to retry.
        Some(key) => vec![limiter.check(key, quota, 1, now)],
        None => keys
            .iter()
            .map(|key| limiter.check(key, quota, 1, now))
            .collect(),
    };
    let decision = (decisions.iter().find(|d| !d.allowed))
        .or_else(|| decisions.iter().min_by_key(|d| d.remaining))
        .cloned();
    let Some(decision) = decision else {
        return Ok(());
    };
    let allowed = decision.allowed;
    ctx.limit = Some((quota, decision));
    match allowed {
        true => Ok(()),
        false => Err(ProxyError::RateLimited(replies.get(quota))),
    }
}

/// `Authorization: Basic` client id and secret (form-encoded, RFC 6749 §2.3.1).
fn basic_credentials(headers: &http::HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let decode = |s: &str| {
        form_urlencoded::parse(format!("v={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
    };
    Some((decode(id)?, decode(secret)?))
}
