//! The admin API of a draining gateway. Once this gateway has handed its
//! kernel path to a gateway that took over from it, both hold the same
//! admin listening socket; a change made here would be made to the
//! gateway on its way out (a reload would even write this one's policy
//! over the new one's in the kernel). So this one stops accepting on it:
//! every new admin connection reaches the new gateway, deterministically,
//! where answering 503 alone would leave each retry to chance. Requests
//! on connections it already holds may still read; changes are answered
//! 503 `draining` with `Retry-After` and `Connection: close`, so a client
//! retries on a new connection, which the new gateway accepts.
use std::sync::Arc;

use http::{header, HeaderValue};
use tokio::net::TcpListener;

use super::{AdminError, AdminResponse};
use crate::reload::Reloader;

/// The error code of the 503.
pub(super) const CODE: &str = "draining";

/// Returns once the kernel path is handed off (never without one).
pub(super) async fn until_handed_off(reloader: Option<Arc<Reloader>>) {
    match reloader {
        Some(reloader) => reloader.until_handed_off().await,
        None => std::future::pending().await,
    }
}

/// Logs why the listener is no longer accepted on (the caller drops it;
/// the socket stays open in the gateway that took over).
pub(super) fn stop_accepting(listener: &TcpListener) {
    let address = listener.local_addr().ok();
    tracing::info!(
        ?address,
        "admin: the kernel path was handed off: no longer accepting admin connections; the \
         gateway that took over answers them"
    );
}

/// Refuses a change while the gateway drains, logging why.
pub(super) fn refuse_changes(reloader: Option<&Reloader>) -> Result<(), AdminError> {
    match reloader.and_then(Reloader::draining) {
        Some(drain) => {
            tracing::warn!(reason = %drain, "admin change refused: this gateway is draining");
            Err(AdminError::Draining(drain))
        }
        None => Ok(()),
    }
}

/// Retry soon, on a new connection.
pub(super) fn retry_elsewhere(response: &mut AdminResponse) {
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;
    use crate::reload::{Drain, ReloadError};

    #[tokio::test]
    async fn a_change_refused_while_draining_is_a_503_to_retry_on_a_new_connection() {
        for error in [
            AdminError::Draining(Drain::HandedOff),
            AdminError::Reload(ReloadError::Draining(Drain::ShuttingDown)),
        ] {
            let response = error.into_response();
            assert_eq!(response.status(), http::StatusCode::SERVICE_UNAVAILABLE);
            let headers = response.headers();
            assert_eq!(headers[header::RETRY_AFTER], "1");
            assert_eq!(headers[header::CONNECTION], "close");
            let body = response.into_body().collect().await.unwrap().to_bytes();
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], CODE);
            assert!(
                body["message"].as_str().unwrap().contains("draining"),
                "{body}"
            );
        }
    }
}
