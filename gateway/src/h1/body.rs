//! A response body's bytes as they arrive, cut as its head framed it.
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Framing, H1Error};

/// A chunk-size line longer than this is refused (extensions included).
const MAX_CHUNK_LINE: usize = 4096;
/// Chunk-extension bytes a body may carry in all (hyper's limit).
const MAX_EXTENSION_BYTES: usize = 16 * 1024;
/// Bytes the trailer section may take.
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Trailer fields kept.
const MAX_TRAILERS: usize = 32;

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq)]
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// Read more into the buffer and call again.
    NeedMore,
    /// The body is complete; what is left in the buffer is not its.
    Done,
}

/// The body's framing, how far it has got, and the chunk-extension bytes
/// seen so far (bounded: extensions are not data, and never end).
#[derive(Debug)]
pub struct Decoder(State, usize);

#[derive(Debug, Clone, Copy)]
enum State {
    Length(u64),
    Close,
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    Done,
}

impl Decoder {
    pub fn new(framing: Framing) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        };
        Self(state, 0)
    }

    pub fn is_done(&self) -> bool {
        matches!(self.0, State::Done)
    }

    /// The exact length still to come, when the framing says it.
    pub fn remaining(&self) -> Option<u64> {
        match self.0 {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body from the start of `buf` (consumed).
    /// `eof`: the connection has ended, `buf` holds all that came.
    pub fn decode(&mut self, buf: &mut BytesMut, eof: bool) -> Result<Step, H1Error> {
        loop {
            let more = || match eof {
                true => Err(H1Error::Incomplete),
                false => Ok(Step::NeedMore),
            };
            match self.0 {
                State::Done => return Ok(Step::Done),
                State::Close if buf.is_empty() && eof => self.0 = State::Done,
                State::Close if buf.is_empty() => return Ok(Step::NeedMore),
                State::Close => return Ok(Step::Data(buf.split().freeze())),
                State::Length(_) | State::ChunkData(_) if buf.is_empty() => return more(),
                State::Length(n) | State::ChunkData(n) => {
                    let (data, left) = take(buf, n);
                    self.0 = match (self.0, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                    return Ok(Step::Data(data));
                }
                State::ChunkSize => match self.chunk_size(buf)? {
                    None => return more(),
                    Some(0) => self.0 = State::Trailers,
                    Some(size) => self.0 = State::ChunkData(size),
                },
                State::ChunkEnd => match buf.get(..2) {
                    Some(b"\r\n") => {
                        buf.advance(2);
                        self.0 = State::ChunkSize;
                    }
                    Some(_) => return Err(H1Error::Chunked("chunk data not ended by CRLF")),
                    None if buf.first().is_some_and(|b| *b != b'\r') => {
                        return Err(H1Error::Chunked("chunk data not ended by CRLF"))
                    }
                    None => return more(),
                },
                State::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.0 = State::Done;
                        continue;
                    }
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if buf.len() > MAX_TRAILER_BYTES {
                            return Err(H1Error::Chunked("trailer section too large"));
                        }
                        return more();
                    };
                    if end + 4 > MAX_TRAILER_BYTES {
                        return Err(H1Error::Chunked("trailer section too large"));
                    }
                    let section = buf.split_to(end + 4);
                    self.0 = State::Done;
                    return trailers(&section).map(Step::Trailers);
                }
            }
        }
    }

    /// A chunk-size line off the front of `buf`, as strictly as hyper
    /// reads one: at least one hex digit, CRLF-ended with no other LF, the
    /// same length limit however it arrived, and the body's extensions
    /// bounded. `None`: the line is not complete yet.
    fn chunk_size(&mut self, buf: &mut BytesMut) -> Result<Option<u64>, H1Error> {
        let (used, size) = match httparse::parse_chunk_size(buf) {
            Ok(httparse::Status::Complete(parsed)) => parsed,
            Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                return Err(H1Error::Chunked("chunk-size line too long"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(H1Error::Chunked("invalid chunk size")),
        };
        let line = buf.get(..used).unwrap_or_default();
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let Some(rest) = line.strip_suffix(b"\r\n") else {
            return Err(H1Error::Chunked("chunk-size line not ended by CRLF"));
        };
        if used > MAX_CHUNK_LINE {
            return Err(H1Error::Chunked("chunk-size line too long"));
        }
        if digits == 0 || rest.contains(&b'\n') {
            return Err(H1Error::Chunked("invalid chunk-size line"));
        }
        self.1 += rest.len() - digits.min(rest.len());
        if self.1 > MAX_EXTENSION_BYTES {
            return Err(H1Error::Chunked("chunk extensions too large"));
        }
        buf.advance(used);
        Ok(Some(size))
    }
}

/// Up to `n` bytes off the front of `buf`, and how many of `n` are left.
fn take(buf: &mut BytesMut, n: u64) -> (Bytes, u64) {
    let k = usize::try_from(n).unwrap_or(usize::MAX).min(buf.len());
    (buf.split_to(k).freeze(), n - k as u64)
}

/// The trailer fields of a complete section (ending in an empty line).
fn trailers(section: &[u8]) -> Result<HeaderMap, H1Error> {
    let malformed = H1Error::Chunked("malformed trailer section");
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILERS];
    // CRLF line ends only (httparse also takes a bare LF, which would end
    // the section early and drop what follows).
    let bare_lf = section.first() == Some(&b'\n')
        || (section.windows(2)).any(|pair| matches!(pair, [before, b'\n'] if *before != b'\r'));
    let parsed = httparse::parse_headers(section, &mut fields);
    let Ok(httparse::Status::Complete((used, fields))) = parsed else {
        return Err(malformed);
    };
    if bare_lf || used != section.len() {
        return Err(malformed);
    }
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes());
        let value = HeaderValue::from_bytes(field.value);
        let (Ok(name), Ok(value)) = (name, value) else {
            return Err(malformed);
        };
        map.append(name, value);
    }
    Ok(map)
}
