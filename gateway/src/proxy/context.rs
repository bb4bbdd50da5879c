//! One request's context: what its phases learn, in the order they learn
//! it. The access-log line and the metrics are written from it once the
//! response is known; nothing else carries state between phases.
use std::net::{IpAddr, SocketAddr};

use http::{HeaderValue, Method, Request};

use super::{
    addr_text::{AddrText, Peer},
    error::{Blame, ProxyError},
    forward::X_REQUEST_ID,
    identity::Identity,
    json_string::{json_opt_str, json_str},
    route::Route,
    trace::Trace,
};
use crate::{
    clock::{monotonic_ns, unix_now},
    guard::Remote,
    limits::{Decision, Quota},
};

pub(super) struct RequestContext<'g> {
    /// `CLOCK_MONOTONIC` (ns) when the request arrived: its latency's start.
    pub arrived_ns: u64,
    /// The monotonic time (ns) every phase judges bans, limits and
    /// ejections by: the arrival, read again after a wait (a JWT issuer's
    /// keys, a request body). One read for all phases: a read costs
    /// ~25 ns, and requests took about 15 of them.
    pub now_ns: u64,
    /// Unix seconds when the request arrived (key expiry, the log).
    pub ts: u64,
    /// The client's sane `X-Request-Id` (shared, not copied) or a fresh
    /// one: set on the upstream request and the response as is.
    pub request_id: HeaderValue,
    /// Accept phase: the W3C trace, continued or started (every request
    /// has one, refused or not).
    pub trace: Trace,
    /// The TCP peer.
    pub peer: Peer,
    /// Accept phase: the address the request is judged by (guard, source
    /// limits, log): the peer, or the client a trusted proxy forwarded
    /// for (see [`super::source`]). Canonical.
    pub client_ip: IpAddr,
    /// What the listener speaks (`http` or `https`).
    pub proto: &'static str,
    pub method: Method,
    /// Path only: the query may hold a credential. Raw until the target
    /// phase normalises it (a refused path is logged as sent).
    pub path: String,
    /// Route phase: the matched route.
    pub route: Option<&'g Route>,
    /// Authenticate phase: the presented key's id (even when refused; never
    /// the key) or the verified token's issuer.
    pub key_id: Option<crate::keys::format::KeyIdText>,
    pub issuer: Option<String>,
    /// Authenticate phase: who the request is from.
    pub identity: Option<Identity>,
    /// Authorize phase: the identity's tier position (0 = lowest).
    pub tier: Option<usize>,
    /// Limit phase: the quota and the limiter's answer, allowed or not.
    pub limit: Option<(&'g Quota, Decision)>,
    /// Forward phase: the pool server chosen.
    pub upstream: Option<SocketAddr>,
    /// Why the gateway answered itself, for the log, metrics and guard.
    pub refusal: Option<Refusal>,
}

/// A refusal as logs and metrics name it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Refusal {
    pub code: &'static str,
    /// The precise reason (the client may be told less).
    pub detail: Option<&'static str>,
    pub blame: Option<Blame>,
}

impl From<&ProxyError> for Refusal {
    fn from(error: &ProxyError) -> Self {
        Self {
            code: error.code(),
            detail: error.detail(),
            blame: Some(error.blame()),
        }
    }
}

impl<'g> RequestContext<'g> {
    /// The accept phase's start: what is known before any check.
    pub fn new<B>(req: &Request<B>, peer: impl Into<Peer>, proto: &'static str) -> Self {
        let peer = peer.into();
        let arrived_ns = monotonic_ns();
        Self {
            arrived_ns,
            now_ns: arrived_ns,
            ts: unix_now() as u64,
            request_id: request_id(req.headers()),
            trace: Trace::of(req.headers()),
            client_ip: peer.addr.ip().to_canonical(),
            peer,
            proto,
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            route: None,
            key_id: None,
            issuer: None,
            identity: None,
            tier: None,
            limit: None,
            upstream: None,
            refusal: None,
        }
    }

    /// The arrival's unix seconds, as key and token expiry compare them.
    pub fn unix_now(&self) -> i64 {
        i64::try_from(self.ts).unwrap_or(i64::MAX)
    }

    /// The request id as text (always ASCII: checked or generated).
    pub fn request_id(&self) -> &str {
        self.request_id.to_str().unwrap_or_default()
    }

    /// The peer and the client address, as the guard judges them.
    pub fn remote(&self) -> Remote {
        Remote::new(self.peer.addr.ip(), self.client_ip)
    }

    /// The access-log line for this request, answered with `status`.
    #[cfg(test)]
    pub fn log_line(&self, status: u16) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.write_log_line(status, &mut out);
        Some(out)
    }

    /// Appends the access-log line for this request, answered with
    /// `status`, to `out`: serde_json's bytes for these fields, in this
    /// order, written by hand so every request (a flood's 429s too) costs
    /// no serializer walk, and strings are escaped only when they need it.
    pub fn write_log_line(&self, status: u16, out: &mut Vec<u8>) {
        let refusal = self.refusal.as_ref();
        let mut n = itoa::Buffer::new();
        out.extend_from_slice(b"{\"ts\":");
        out.extend_from_slice(n.format(self.ts).as_bytes());
        out.extend_from_slice(b",\"request_id\":");
        json_str(out, self.request_id());
        out.extend_from_slice(b",\"trace_id\":\"");
        out.extend_from_slice(&self.trace.trace_id_hex());
        out.extend_from_slice(b"\",\"peer\":");
        let peer_text = self.peer.text.as_bytes();
        json_text(out, peer_text);
        out.extend_from_slice(b",\"client_ip\":");
        // The same address but behind a trusted proxy: written once.
        match self.client_ip == self.peer.addr.ip().to_canonical() {
            true => json_text(out, peer_text),
            false => json_text(out, AddrText::ip(self.client_ip).as_bytes()),
        }
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method.as_str());
        out.extend_from_slice(b",\"path\":");
        json_str(out, &self.path);
        out.extend_from_slice(b",\"route\":");
        json_opt_str(out, self.route.map(|route| route.name.as_str()));
        out.extend_from_slice(b",\"client_id\":");
        json_opt_str(out, self.identity.as_ref().map(Identity::client_id));
        out.extend_from_slice(b",\"key_id\":");
        json_opt_str(out, self.key_id.as_deref());
        out.extend_from_slice(b",\"issuer\":");
        json_opt_str(out, self.issuer.as_deref());
        out.extend_from_slice(b",\"tier\":");
        json_opt_str(out, self.identity.as_ref().map(Identity::tier));
        out.extend_from_slice(b",\"status\":");
        out.extend_from_slice(n.format(status).as_bytes());
        out.extend_from_slice(b",\"upstream\":");
        match self.upstream {
            Some(upstream) => upstream_text(upstream, |text| json_text(out, text)),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"latency_ms\":");
        let latency_ms = monotonic_ns().saturating_sub(self.arrived_ns) as f64 / 1e6;
        if serde_json::to_writer(&mut *out, &latency_ms).is_err() {
            out.extend_from_slice(b"null");
        }
        out.extend_from_slice(b",\"error\":");
        json_opt_str(out, refusal.map(|r| r.code));
        out.extend_from_slice(b",\"detail\":");
        json_opt_str(out, refusal.and_then(|r| r.detail));
        out.extend_from_slice(b",\"blame\":");
        json_opt_str(out, refusal.and_then(|r| r.blame).map(Blame::as_str));
        out.push(b'}');
    }
}

thread_local! {
    /// The upstream address this worker last logged, and its text: most
    /// requests go to one of a few servers, so most lines copy it instead
    /// of formatting it (~300 instructions).
    static LAST_UPSTREAM: std::cell::RefCell<Option<(SocketAddr, AddrText)>> =
        const { std::cell::RefCell::new(None) };
}

/// `upstream`'s text, handed to `write`.
fn upstream_text(upstream: SocketAddr, write: impl FnOnce(&[u8])) {
    LAST_UPSTREAM.with_borrow_mut(|last| match last {
        Some((addr, text)) if *addr == upstream => write(text.as_bytes()),
        _ => write(
            last.insert((upstream, AddrText::socket(upstream)))
                .1
                .as_bytes(),
        ),
    })
}

/// An address as a JSON string (its text never needs escaping).
fn json_text(out: &mut Vec<u8>, text: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(text);
    out.push(b'"');
}

/// One access-log line as serde_json writes it: the format
/// [`RequestContext::write_log_line`] keeps, byte for byte.
#[cfg(test)]
#[derive(serde::Serialize)]
struct AccessLog<'a> {
    ts: u64,
    request_id: &'a str,
    /// The W3C trace id the upstream saw (32 lowercase hex digits).
    trace_id: &'a str,
    peer: IpAddr,
    /// The client address (differs from `peer` behind a trusted proxy).
    client_ip: IpAddr,
    method: &'a str,
    path: &'a str,
    route: Option<&'a str>,
    client_id: Option<&'a str>,
    key_id: Option<&'a str>,
    /// Issuer of the JWT that authenticated the request.
    issuer: Option<&'a str>,
    tier: Option<&'a str>,
    status: u16,
    upstream: Option<SocketAddr>,
    latency_ms: f64,
    error: Option<&'static str>,
    detail: Option<&'static str>,
    blame: Option<Blame>,
}

/// The client's `X-Request-Id` if it is sane, else a fresh one: a random
/// per-process prefix and a counter, unique without a syscall per request.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID) {
        let bytes = id.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(u8::is_ascii_graphic) {
            return id.clone();
        }
    }
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            return crate::clock::monotonic_ns() ^ u64::from(std::process::id());
        }
        u64::from_be_bytes(bytes)
    });
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // 32 lowercase hex digits, without `fmt`, a byte at a time.
    let mut text = [0u8; 32];
    let id = (u128::from(prefix) << 64) | u128::from(count);
    super::trace::hex_encode(&id.to_be_bytes(), &mut text);
    HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_names_the_key_id_never_the_query() {
        let req = Request::get("/api/x?api_key=gk_secret")
            .header("x-request-id", "abc")
            .body(())
            .unwrap();
        let mut ctx = RequestContext::new(
            &req,
            "[::ffff:10.0.0.1]:5000".parse::<SocketAddr>().unwrap(),
            "http",
        );
        ctx.key_id = Some("kid1".into());
        ctx.refusal = Some(Refusal::from(&ProxyError::MissingCredential));
        let line: serde_json::Value = serde_json::from_slice(&ctx.log_line(401).unwrap()).unwrap();
        assert_eq!(line["request_id"], "abc");
        assert_eq!(line["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(line["peer"], "10.0.0.1");
        assert_eq!(line["client_ip"], "10.0.0.1");
        assert_eq!(line["path"], "/api/x");
        assert_eq!(line["key_id"], "kid1");
        assert_eq!(line["status"], 401);
        assert_eq!(line["error"], "missing_credential");
        assert_eq!(line["blame"], "client");
        assert!(!String::from_utf8_lossy(&ctx.log_line(401).unwrap()).contains("gk_secret"));
    }

    /// Each line names its own upstream, whatever the line before named.
    #[test]
    fn the_logged_upstream_is_each_lines_own() {
        let req = Request::get("/").body(()).unwrap();
        let peer = "10.0.0.2:1".parse::<SocketAddr>().unwrap();
        let mut ctx = RequestContext::new(&req, peer, "http");
        for upstream in [
            "10.0.0.1:80",
            "[2001:db8::1]:8080",
            "10.0.0.1:80",
            "10.0.0.1:81",
        ] {
            ctx.upstream = Some(upstream.parse().unwrap());
            let line = String::from_utf8(ctx.log_line(200).unwrap()).unwrap();
            assert!(
                line.contains(&format!(",\"upstream\":\"{upstream}\",")),
                "{line}"
            );
        }
    }

    /// The hand-written line is serde_json's, byte for byte, escapes and
    /// nulls included.
    #[test]
    fn the_log_line_is_what_serde_json_wrote() {
        let req = Request::post("/a%22b/\u{e9}?q=1").body(()).unwrap();
        let mut ctx =
            RequestContext::new(&req, "[::1]:5000".parse::<SocketAddr>().unwrap(), "https");
        ctx.path = "/quote\"back\\slash\u{1}tab\t\u{e9}".into();
        ctx.key_id = Some("kid\"1".into());
        ctx.issuer = Some("https://issuer.example".into());
        ctx.upstream = Some("[2001:db8::1]:8080".parse().unwrap());
        ctx.refusal = Some(Refusal::from(&ProxyError::BannedForwarded(
            std::time::Duration::from_secs(3),
        )));
        for ctx in [
            &ctx,
            &RequestContext::new(&req, "10.0.0.2:1".parse::<SocketAddr>().unwrap(), "http"),
        ] {
            let line = ctx.log_line(429).unwrap();
            serde_json::from_slice::<serde_json::Value>(&line).expect("the line is JSON");
            let refusal = ctx.refusal.as_ref();
            let trace_id = ctx.trace.trace_id_hex();
            let expected = AccessLog {
                ts: ctx.ts,
                request_id: ctx.request_id(),
                trace_id: std::str::from_utf8(&trace_id).unwrap(),
                peer: ctx.peer.addr.ip().to_canonical(),
                client_ip: ctx.client_ip,
                method: ctx.method.as_str(),
                path: &ctx.path,
                route: None,
                client_id: None,
                key_id: ctx.key_id.as_deref(),
                issuer: ctx.issuer.as_deref(),
                tier: None,
                status: 429,
                upstream: ctx.upstream,
                latency_ms: latency_text(&line).parse().unwrap(),
                error: refusal.map(|r| r.code),
                detail: refusal.and_then(|r| r.detail),
                blame: refusal.and_then(|r| r.blame),
            };
            assert_eq!(
                String::from_utf8(line).unwrap(),
                serde_json::to_string(&expected).unwrap()
            );
        }
    }

    /// The latency as written: serde_json's own float parser is not exact
    /// (its `float_roundtrip` feature is off), so a value read back through
    /// it can differ in the last digit from what was written.
    fn latency_text(line: &[u8]) -> &str {
        let line = std::str::from_utf8(line).unwrap();
        let start = line.find("\"latency_ms\":").unwrap() + "\"latency_ms\":".len();
        let len = line[start..].find(',').unwrap();
        &line[start..start + len]
    }

    #[test]
    fn insane_request_ids_are_replaced() {
        let req = Request::get("/")
            .header("x-request-id", "a b")
            .body(())
            .unwrap();
        let ctx = RequestContext::new(&req, "127.0.0.1:1".parse::<SocketAddr>().unwrap(), "http");
        assert_eq!(ctx.request_id().len(), 32);
        assert!(ctx.request_id().bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
