//! `GET /v1/xdp/events`: the kernel events ([`crate::xdp::events`]) as
//! newline-delimited JSON, the last ones first (`?replay=N`, at most
//! [`REPLAY`], default all of them), then live until the client leaves or
//! the gateway stops. The ring buffer has one reader (the gateway), so this
//! is how another process (`gateway xdp events`) follows them.
use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use hyper::body::{Body, Frame};
use tokio::sync::{broadcast::error::RecvError, mpsc, OwnedSemaphorePermit};

use super::AdminError;
use crate::xdp::events::{EventHub, EventRecord, REPLAY};

/// The endpoint's path.
pub const PATH: &str = "/v1/xdp/events";

/// Lines written ahead of a slow client before the writer waits for it.
const AHEAD: usize = 64;
/// Streams followed at once: each holds one of the admin listener's
/// [`super::MAX_CONNECTIONS`] for as long as its client stays.
pub const MAX_FOLLOWERS: usize = 8;

/// The response body: lines from the task that follows the hub; ends when
/// that task does.
pub struct EventStream {
    lines: mpsc::Receiver<Bytes>,
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.lines
            .poll_recv(cx)
            .map(|line| line.map(|line| Ok(Frame::data(line))))
    }
}

/// How many replayed events the query asks for.
pub(super) fn replay(query: Option<&str>) -> Result<usize, AdminError> {
    let asked = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "replay");
    match asked {
        None => Ok(REPLAY),
        Some((_, value)) => value
            .parse::<usize>()
            .map(|n| n.min(REPLAY))
            .map_err(|_| AdminError::BadRequest(format!("replay={value} is not a count"))),
    }
}

/// Whether the client's key still admits it.
pub(super) type Admitted = Box<dyn Fn() -> bool + Send>;

/// Starts following `hub`: the last `replay` events, then live ones while
/// `admitted` holds; `follower` is given back when the stream ends.
pub(super) fn stream(
    hub: &EventHub,
    replay: usize,
    follower: OwnedSemaphorePermit,
    admitted: Admitted,
) -> Response<EventStream> {
    let (recent, mut live) = hub.follow();
    let (tx, lines) = mpsc::channel(AHEAD);
    tokio::spawn(async move {
        let _follower = follower;
        let skip = recent.len().saturating_sub(replay);
        for record in &recent[skip..] {
            if tx.send(line(record)).await.is_err() {
                return;
            }
        }
        loop {
            let next = tokio::select! {
                // The client went away (its body was dropped).
                () = tx.closed() => return,
                next = live.recv() => next,
            };
            if !admitted() {
                let _ = tx.send(refused()).await;
                return;
            }
            let line = match next {
                Ok(record) => line(&record),
                Err(RecvError::Lagged(missed)) => lagged(missed),
                Err(RecvError::Closed) => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(EventStream { lines });
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    response
}

fn line(record: &Arc<EventRecord>) -> Bytes {
    let mut text = serde_json::to_string(record.as_ref()).unwrap_or_default();
    text.push('\n');
    Bytes::from(text)
}

/// The last line to a client whose key no longer admits it.
fn refused() -> Bytes {
    Bytes::from(format!(
        "{}\n",
        serde_json::json!({ "event": "closed", "why": "the admin key is no longer valid" })
    ))
}

/// Said to a client too slow to keep up, instead of the events it missed.
fn lagged(missed: u64) -> Bytes {
    Bytes::from(format!(
        "{}\n",
        serde_json::json!({ "event": "lagged", "missed": missed })
    ))
}
