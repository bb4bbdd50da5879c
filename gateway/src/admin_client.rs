//! The CLI's side of the admin API: one JSON request to a running gateway,
//! or a stream it follows.
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// Where the admin key comes from, so it never sits in shell history.
pub const ADMIN_KEY_ENV: &str = "GATEWAY_ADMIN_KEY";

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("{ADMIN_KEY_ENV} is not set: export an admin key (gateway keys create --admin)")]
    NoKey,
    #[error("{0:?} is not a valid admin URL")]
    Url(String),
    #[error(
        "cannot reach the admin API at {url} (is the gateway running?): {}",
        causes(source)
    )]
    Connect {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("reading the admin API's answer: {0}")]
    Body(#[from] hyper::Error),
    #[error("the admin API answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
}

/// Sends `method path` with the admin key from the environment; returns the
/// JSON answer of a 2xx, else the API's own error message.
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<serde_json::Value, AdminClientError> {
    let response = send(base, method, path, body).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        return Err(refused(status, &value, &body));
    }
    Ok(value)
}

/// `GET path` with the admin key from the environment; the body of a 2xx,
/// to read as it comes, else the API's own error message.
pub async fn stream(base: &str, path: &str) -> Result<Incoming, AdminClientError> {
    let response = send(base, Method::GET, path, None).await?;
    let status = response.status();
    if status.is_success() {
        return Ok(response.into_body());
    }
    let body = response.into_body().collect().await?.to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    Err(refused(status, &value, &body))
}

/// An error with its causes (hyper's top-level message alone says only
/// "client error (Connect)").
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

fn refused(status: StatusCode, value: &serde_json::Value, body: &[u8]) -> AdminClientError {
    let message = value["message"]
        .as_str()
        .map_or_else(|| String::from_utf8_lossy(body).into_owned(), str::to_owned);
    AdminClientError::Refused { status, message }
}

async fn send(
    base: &str,
    method: Method,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<Response<Incoming>, AdminClientError> {
    let key = std::env::var(ADMIN_KEY_ENV).map_err(|_| AdminClientError::NoKey)?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let request = Request::builder()
        .method(method)
        .uri(&url)
        .header(header::AUTHORIZATION, format!("Bearer {}", key.trim()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(
            body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())),
        ))
        .map_err(|_| AdminClientError::Url(base.to_owned()))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    client
        .request(request)
        .await
        .map_err(|source| AdminClientError::Connect {
            url: base.to_owned(),
            source,
        })
}
