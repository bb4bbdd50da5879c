//! HTTP/1.1 as the gateway speaks it to an upstream for a bodiless
//! request (`proxy::direct`): the request head out, the response head and
//! body in. No IO here, bytes in and messages out, so every parser is
//! fuzzed (`fuzz/fuzz_targets/h1_response.rs`). httparse tokenises; this
//! decides the framing (RFC 9112 §6.3) and refuses whatever could leave a
//! kept connection out of step with the upstream: conflicting or signed
//! lengths, `Transfer-Encoding` beside `Content-Length` or in HTTP/1.0,
//! `chunked` applied twice.
mod body;
mod names;

use bytes::BytesMut;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper::ext::ReasonPhrase;

pub use body::{Decoder, Step};
pub use names::Names;

/// Header fields a response head may carry (hyper's default too).
pub const MAX_HEADERS: usize = 100;
/// Bytes a response head may take before it is refused (about hyper's
/// default read buffer limit).
pub const MAX_HEAD_BYTES: usize = 400 * 1024;

/// Room left in a response's header map for the fields the gateway adds
/// (request id, the rate-limit ones, `Retry-After`): filling a map sized
/// to the upstream's fields grew it, a rehash of every field, on every
/// response of a limited route.
const GATEWAY_HEADERS: usize = 8;

/// Why an upstream's response could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum H1Error {
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("response head with over {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed response head: {0}")]
    Malformed(httparse::Error),
    #[error("response status {0} out of range")]
    Status(u16),
    #[error("faulty response framing: {0}")]
    Framing(&'static str),
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnsolicitedSwitch,
    #[error("the upstream closed the connection in the middle of the response")]
    Incomplete,
}

/// How the body after a response head ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, a 204 or a 304.
    Empty,
    Length(u64),
    Chunked,
    /// At the connection's end (which then cannot be kept).
    Close,
}

/// A final (non-1xx) response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub response: Response<()>,
    pub framing: Framing,
    /// Whether the connection can carry another request once the body
    /// is read: HTTP/1.1, no `Connection: close`, not close-delimited.
    pub keep_alive: bool,
}

/// What a complete head at the start of a buffer was.
#[derive(Debug)]
pub enum Head {
    /// 100, 102, 103...: skipped, the final response follows.
    Informational,
    Final(ResponseHead),
}

/// `req`'s head as HTTP/1.1 bytes, for a body of `body_len` bytes sent
/// whole after it: origin form, its header fields as they are but for the
/// framing, which is the body's length (a body there is none of has none:
/// a `Content-Length: 0` sent stays), and `Expect`. The body follows the
/// head at once, so there is nothing to wait for; an upstream that
/// refuses the expectation (417) and keeps the connection would read that
/// body as a request. `extra` writes more fields (with
/// [`write_field`]) after the map's: valid names and values, none of them
/// framing.
pub fn encode_request_head<B>(
    req: &Request<B>,
    extra: impl FnOnce(&mut Vec<u8>),
    body_len: usize,
    out: &mut Vec<u8>,
) {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    out.extend_from_slice(req.method().as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        let framing =
            name == header::TRANSFER_ENCODING || (body_len > 0 && name == header::CONTENT_LENGTH);
        if framing || name == header::EXPECT {
            continue;
        }
        write_field(out, name.as_str(), value.as_bytes());
    }
    extra(out);
    if body_len > 0 {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body_len).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// What `HeaderValue::from_str` accepts: no control character but tab.
/// What the direct path writes raw, and what a JWT's client claim must be
/// to reach the upstream as a field.
pub fn valid_value(value: &str) -> bool {
    (value.bytes()).all(|b| b == b'\t' || (b >= b' ' && b != 0x7f))
}

/// `name: value` and its line end.
pub fn write_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Whether a head found incomplete when `buf` held `parsed_at` bytes may
/// be complete now: the bytes since (and the two before, where a blank
/// line split across reads starts) hold a line feed, an optional carriage
/// return and a line feed, or `buf` is over the size limit (the parser
/// refuses it). A head is parsed again only then, so an upstream that
/// sends one a byte at a time costs a look at each byte, not a parse of
/// the whole head per byte (quadratic in its size: ~400 KB at most).
pub fn may_end_head(buf: &[u8], parsed_at: usize) -> bool {
    let new = buf.get(parsed_at.saturating_sub(2)..).unwrap_or_default();
    buf.len() > MAX_HEAD_BYTES
        || (new.windows(2)).any(|pair| pair == b"\n\n")
        || (new.windows(3)).any(|three| three == b"\n\r\n")
}

/// Parses a response head at the start of `buf`; once complete, splits it
/// off (the body's bytes stay). `None`: more bytes are needed.
/// `head_request`: the request was a HEAD (its response has no body
/// whatever it says). `names`: the connection's last response's field
/// names, reused where spelled the same.
pub fn parse_response_head(
    buf: &mut BytesMut,
    head_request: bool,
    names: &mut Names,
) -> Result<Option<Head>, H1Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        // The same limit however the head arrived.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
            return Err(H1Error::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(H1Error::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(H1Error::TooManyHeaders),
        Err(error) => return Err(H1Error::Malformed(error)),
    };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| H1Error::Status(code))?;
    // A phrase of the upstream's own (`499 Client Closed Request`) goes to
    // the client as it came, as hyper's client kept it.
    let reason = (parsed.reason)
        .filter(|reason| !reason.is_empty() && status.canonical_reason() != Some(*reason))
        .and_then(|reason| ReasonPhrase::try_from(reason.as_bytes().to_vec()).ok());
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where each value lies in `buf`, so the values can share its bytes.
    let start = buf.as_ptr() as usize;
    let mut spans = Vec::with_capacity(parsed.headers.len());
    let mut connection = Connection::default();
    for (at, field) in parsed.headers.iter().enumerate() {
        let name = (names.name(at, field.name.as_bytes()))
            .ok_or(H1Error::Malformed(httparse::Error::HeaderName))?;
        if name == header::CONNECTION {
            connection.read(field.value);
        }
        let from = (field.value.as_ptr() as usize).saturating_sub(start);
        spans.push((name, from, from + field.value.len()));
    }
    if connection.only_keep_alive_or_close() {
        spans.retain(|(name, ..)| *name != header::CONNECTION);
    }
    let head = buf.split_to(len).freeze();
    if status.is_informational() {
        return match status {
            StatusCode::SWITCHING_PROTOCOLS => Err(H1Error::UnsolicitedSwitch),
            _ => Ok(Some(Head::Informational)),
        };
    }
    let mut headers = HeaderMap::with_capacity(spans.len() + GATEWAY_HEADERS);
    for (name, from, to) in spans {
        let value = head.get(from..to).map(|_| head.slice(from..to));
        let value = value.and_then(|v| HeaderValue::from_maybe_shared(v).ok());
        headers.append(
            name,
            value.ok_or(H1Error::Malformed(httparse::Error::HeaderValue))?,
        );
    }
    let framing = framing(&headers, status, version, head_request)?;
    let keep_alive = version == Version::HTTP_11 && !connection.close && framing != Framing::Close;
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some(reason) = reason {
        response.extensions_mut().insert(reason);
    }
    Ok(Some(Head::Final(ResponseHead {
        response,
        framing,
        keep_alive,
    })))
}

/// What a response's `Connection` fields say (RFC 9112 §9.6). The field
/// is the connection's, not the message's: when it says no more than
/// `close` or `keep-alive` (as most upstreams' do) it is read here and
/// left out of the response, which the relay would otherwise have to
/// find and remove (a header-map insert and removal per response). When
/// it names other fields, it stays for the relay's hop-by-hop removal,
/// which removes them with it.
#[derive(Default)]
struct Connection {
    close: bool,
    names_fields: bool,
}

impl Connection {
    fn read(&mut self, value: &[u8]) {
        let tokens = value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
        for token in tokens.filter(|token| !token.is_empty()) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                self.names_fields = true;
            }
        }
    }

    fn only_keep_alive_or_close(&self) -> bool {
        !self.names_fields
    }
}

/// Whether a response carries a transfer coding other than `chunked`
/// (`gzip`, `deflate`, `compress`): the gateway decodes none, and its
/// relay re-frames the body and drops `Transfer-Encoding` (hop-by-hop),
/// so the client would get coded bytes with nothing saying so. Such a
/// response is the upstream's fault (a 502), on either path.
pub fn foreign_transfer_coding(headers: &HeaderMap) -> bool {
    tokens(headers, &header::TRANSFER_ENCODING)
        .any(|coding| !coding.eq_ignore_ascii_case(b"chunked"))
}

/// RFC 9112 §6.3, strictly: what could be read two ways is an error.
fn framing(
    headers: &HeaderMap,
    status: StatusCode,
    version: Version,
    head_request: bool,
) -> Result<Framing, H1Error> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Empty);
    }
    let length = content_length(headers)?;
    if !headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(length.map_or(Framing::Close, Framing::Length));
    }
    if length.is_some() {
        return Err(H1Error::Framing("Transfer-Encoding with Content-Length"));
    }
    if version == Version::HTTP_10 {
        return Err(H1Error::Framing("Transfer-Encoding in HTTP/1.0"));
    }
    let codings: Vec<&[u8]> = tokens(headers, &header::TRANSFER_ENCODING).collect();
    let chunked = |coding: &&[u8]| coding.eq_ignore_ascii_case(b"chunked");
    match codings.split_last() {
        Some((last, before)) if chunked(last) && !before.iter().any(chunked) => {
            Ok(Framing::Chunked)
        }
        _ if codings.iter().any(chunked) => Err(H1Error::Framing("chunked not last, or twice")),
        _ => Ok(Framing::Close),
    }
}

/// Every `Content-Length` value (lists included) must be the same run of
/// digits: no sign, no blank, no disagreement.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let mut length = None;
    for token in tokens_all(headers, &header::CONTENT_LENGTH) {
        let digits = !token.is_empty() && token.iter().all(u8::is_ascii_digit);
        let value = std::str::from_utf8(token).ok().filter(|_| digits);
        let value = value.and_then(|v| v.parse::<u64>().ok());
        match (value, length) {
            (None, _) => return Err(H1Error::Framing("invalid Content-Length")),
            (Some(v), Some(seen)) if v != seen => {
                return Err(H1Error::Framing("conflicting Content-Length"))
            }
            (Some(v), _) => length = Some(v),
        }
    }
    Ok(length)
}

/// The comma-separated, trimmed, non-empty tokens of every `name` field.
fn tokens<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h [u8]> {
    tokens_all(headers, name).filter(|token| !token.is_empty())
}

/// As [`tokens`], empty ones included (an empty `Content-Length` is wrong).
fn tokens_all<'h>(headers: &'h HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'h [u8]> {
    (headers.get_all(name).iter())
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

#[cfg(test)]
mod tests;
