//! Idle admin connections are dropped, so they cannot hold the listener's
//! few slots ([`super::MAX_CONNECTIONS`]) from the admins.
//!
//! hyper's header-read timeout starts only once HTTP/1 is known: a
//! connection that never sends a byte (hyper waits for one to tell HTTP/1
//! from HTTP/2), or one that opens HTTP/2 and then idles, had no deadline,
//! and 64 of them, no credential needed, locked every admin out. Idle is
//! judged by requests, not bytes ([`InFlight`]): one with no request in
//! flight for `request_timeout` since it opened or its last response ended
//! is dropped.
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use hyper::body::{Body, Frame, SizeHint};

use crate::in_flight::InFlight;

/// A request of a connection in flight until dropped.
pub(super) struct Request(Arc<InFlight>);

impl Request {
    pub(super) fn begin(requests: &Arc<InFlight>) -> Self {
        requests.begin();
        Self(requests.clone())
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that keeps its request in flight until it is done
/// with (written whole, or the stream reset, or the connection gone).
pub(super) struct Guarded<B> {
    body: B,
    _request: Request,
}

impl<B> Guarded<B> {
    pub(super) fn new(body: B, request: Request) -> Self {
        Self {
            body,
            _request: request,
        }
    }
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
