//! Request framing and size: what is refused before a request is forwarded
//! (`Transfer-Encoding` other than `chunked`, a `Content-Length` over
//! `limits.max_body_bytes`), the read-ahead that checks a body's framing
//! before the upstream sees its head, and the body the upstream gets, which
//! stops at `max_body_bytes`.
//!
//! hyper already answers 400 for what its parser refuses (duplicate
//! `Content-Length` values, `+5`, a `Transfer-Encoding` not ending in
//! `chunked`, obs-fold, NUL) and, with both `Content-Length` and
//! `Transfer-Encoding`, drops `Content-Length` and closes the connection
//! after the response (RFC 9112 §6.3, as HAProxy does). Framing errors
//! inside a chunked (or HTTP/2) body only show while it is read, so up to
//! [`READ_AHEAD`] bytes of a body are read before forwarding: a malformed
//! small body is a 400 that never reaches the upstream; a larger one is
//! streamed and the upstream request aborted where the error shows.
use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderMap, Request};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::error::ProxyError;

/// How much of a body is read (and its framing checked) before the
/// request is forwarded: more than any smuggling payload, little memory
/// per connection (nginx buffers 16 KiB of a body by default too).
pub const READ_AHEAD: usize = 16 * 1024;

/// Refuses a request's framing before anything else happens: a
/// `Transfer-Encoding` that is not exactly one `chunked` (hyper lets
/// `gzip, chunked` through) is a 400; a declared length over `max_body` a
/// 413, before the body is read.
pub fn check_head(headers: &HeaderMap, max_body: u64) -> Result<(), ProxyError> {
    let mut encodings = headers.get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = encodings.next() {
        let chunked = first
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"chunked");
        if !chunked || encodings.next().is_some() {
            return Err(ProxyError::MalformedRequest("transfer_encoding"));
        }
    }
    for value in headers.get_all(header::CONTENT_LENGTH) {
        // hyper has parsed HTTP/1.1 lengths; HTTP/2 ones are checked here.
        let length = (value.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|_| value.as_bytes().iter().all(u8::is_ascii_digit))
            .ok_or(ProxyError::MalformedRequest("content_length"))?;
        if length > max_body {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    Ok(())
}

/// Why a body being forwarded was cut off; the forward phase turns it into
/// the client's answer when the upstream request fails because of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFailure {
    TooLarge,
    Malformed,
    /// No byte of it came for `request_timeout` (see [`RequestBody`]).
    Stalled,
}

impl From<BodyFailure> for ProxyError {
    fn from(failure: BodyFailure) -> Self {
        match failure {
            BodyFailure::TooLarge => ProxyError::BodyTooLarge,
            BodyFailure::Malformed => ProxyError::MalformedRequest("body"),
            BodyFailure::Stalled => ProxyError::BodyTimeout,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is over limits.max_body_bytes")]
    TooLarge,
    #[error("the request body is malformed: {0}")]
    Malformed(hyper::Error),
    #[error("no byte of the request body came for limits.request_timeout")]
    Stalled,
}

/// The body the upstream gets: what was read ahead, then the rest of the
/// client's body, counted against the limit, and cut off once none of it
/// comes for `between_reads` (nginx's `client_body_timeout`): a client
/// that stopped mid-body, to an upstream that answered without reading it
/// all, held that upstream connection for ever.
pub struct RequestBody {
    ahead: VecDeque<Frame<Bytes>>,
    rest: Option<Incoming>,
    read: u64,
    limit: u64,
    between_reads: Duration,
    /// Made when the rest first keeps the upstream waiting.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Shared with the forward phase; only a body with something left to
    /// read can fail.
    failure: Option<Arc<OnceLock<BodyFailure>>>,
}

impl RequestBody {
    /// A body with nothing in it.
    pub fn empty() -> Self {
        Self {
            ahead: VecDeque::new(),
            rest: None,
            read: 0,
            limit: 0,
            between_reads: Duration::MAX,
            stall: None,
            failure: None,
        }
    }

    /// The whole body, when all of it was read ahead and it has no
    /// trailers: it can go out with the request head.
    pub fn complete(&self) -> Option<impl Iterator<Item = &Bytes>> {
        let data_only = self.ahead.iter().all(Frame::is_data);
        (self.rest.is_none() && data_only).then(|| self.ahead.iter().filter_map(Frame::data_ref))
    }

    /// A body read ahead whole: `data`.
    #[cfg(test)]
    pub fn whole(data: &'static [u8]) -> Self {
        let mut body = Self::empty();
        body.ahead.push_back(Frame::data(Bytes::from_static(data)));
        body
    }

    /// Where the reason a forwarded body was cut off will be.
    pub fn failure(&self) -> Option<Arc<OnceLock<BodyFailure>>> {
        self.failure.clone()
    }

    /// Counts a data frame; `Err` once the body is over the limit.
    fn count(&mut self, frame: &Frame<Bytes>) -> Result<(), BodyFailure> {
        let len = frame.data_ref().map_or(0, |data| data.len() as u64);
        self.read = self.read.saturating_add(len);
        match self.read > self.limit {
            true => Err(self.fail(BodyFailure::TooLarge)),
            false => Ok(()),
        }
    }

    fn fail(&mut self, failure: BodyFailure) -> BodyFailure {
        self.rest = None;
        if let Some(shared) = &self.failure {
            let _ = shared.set(failure);
        }
        failure
    }
}

/// Reads up to [`READ_AHEAD`] bytes of `req`'s body (all of a small one)
/// within `timeout`, so a malformed or oversized small body is refused
/// before the upstream sees anything. A body with nothing in it costs
/// nothing.
pub async fn read_ahead(
    req: Request<Incoming>,
    limit: u64,
    timeout: Duration,
) -> Result<Request<RequestBody>, ProxyError> {
    let (parts, incoming) = req.into_parts();
    let rest = (!incoming.is_end_stream()).then_some(incoming);
    let mut body = RequestBody {
        ahead: VecDeque::new(),
        failure: rest.as_ref().map(|_| Arc::default()),
        rest,
        read: 0,
        limit,
        between_reads: timeout,
        stall: None,
    };
    if body.rest.is_none() {
        return Ok(Request::from_parts(parts, body));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while body.read < READ_AHEAD as u64 {
        let Some(rest) = body.rest.as_mut() else {
            break;
        };
        let frame = match tokio::time::timeout_at(deadline, rest.frame()).await {
            Err(_elapsed) => return Err(ProxyError::BodyTimeout),
            Ok(None) => {
                body.rest = None;
                break;
            }
            Ok(Some(Err(error))) => {
                tracing::debug!(%error, "malformed request body");
                return Err(body.fail(BodyFailure::Malformed).into());
            }
            Ok(Some(Ok(frame))) => frame,
        };
        body.count(&frame)?;
        body.ahead.push_back(frame);
    }
    Ok(Request::from_parts(parts, body))
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(frame) = this.ahead.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(rest).poll_frame(cx) {
            Poll::Pending => {
                let between_reads = this.between_reads;
                let stall =
                    (this.stall).get_or_insert_with(|| Box::pin(tokio::time::sleep(between_reads)));
                if std::future::Future::poll(stall.as_mut(), cx).is_pending() {
                    return Poll::Pending;
                }
                this.fail(BodyFailure::Stalled);
                Poll::Ready(Some(Err(BodyError::Stalled)))
            }
            Poll::Ready(None) => {
                this.rest = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(error))) => {
                this.fail(BodyFailure::Malformed);
                Poll::Ready(Some(Err(BodyError::Malformed(error))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(stall) = this.stall.as_mut() {
                    let now = tokio::time::Instant::now();
                    stall
                        .as_mut()
                        .reset(now.checked_add(this.between_reads).unwrap_or(now));
                }
                match this.count(&frame) {
                    Ok(()) => Poll::Ready(Some(Ok(frame))),
                    Err(_) => Poll::Ready(Some(Err(BodyError::TooLarge))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let ahead: u64 = (self.ahead.iter())
            .map(|f| f.data_ref().map_or(0, |d| d.len() as u64))
            .sum();
        let mut hint = self.rest.as_ref().map(Body::size_hint).unwrap_or_default();
        if self.rest.is_none() {
            hint.set_exact(0);
        }
        let upper = hint.upper().map(|upper| upper.saturating_add(ahead));
        let mut total = SizeHint::new();
        total.set_lower(hint.lower().saturating_add(ahead));
        if let Some(upper) = upper {
            total.set_upper(upper);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn only_plain_chunked_and_lengths_within_the_limit_pass() {
        assert!(check_head(&headers(&[("transfer-encoding", "Chunked ")]), 10).is_ok());
        assert!(check_head(&headers(&[("content-length", "10")]), 10).is_ok());
        for bad in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("content-length", "+5")],
        ] {
            let error = check_head(&headers(bad), 10).unwrap_err();
            assert!(matches!(error, ProxyError::MalformedRequest(_)), "{bad:?}");
        }
        let error = check_head(&headers(&[("content-length", "11")]), 10).unwrap_err();
        assert!(matches!(error, ProxyError::BodyTooLarge));
    }
}
