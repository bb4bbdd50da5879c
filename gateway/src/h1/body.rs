//! A response body's bytes as they arrive, cut as its head framed it.
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Framing, H1Error};

/// A chunk-size line longer than this is refused (extensions included).
const MAX_CHUNK_LINE: usize = 4096;
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

/// The body's framing and how far it has got.
#[derive(Debug)]
pub struct Decoder(State);

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
        Self(match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Close => State::Close,
        })
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
                State::Length(n) => {
                    let (data, left) = take(buf, n);
                    self.0 = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Step::Data(data));
                }
                State::ChunkData(n) => {
                    let (data, left) = take(buf, n);
                    self.0 = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Step::Data(data));
                }
                State::ChunkSize => match httparse::parse_chunk_size(buf) {
                    // The same limit however the line arrived.
                    Ok(httparse::Status::Complete((used, _))) if used > MAX_CHUNK_LINE => {
                        return Err(H1Error::Chunked("chunk-size line too long"))
                    }
                    Ok(httparse::Status::Complete((used, 0))) => {
                        buf.advance(used);
                        self.0 = State::Trailers;
                    }
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.0 = State::ChunkData(size);
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return Err(H1Error::Chunked("chunk-size line too long"))
                    }
                    Ok(httparse::Status::Partial) => return more(),
                    Err(_) => return Err(H1Error::Chunked("invalid chunk size")),
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
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut fields)
    else {
        return Err(malformed);
    };
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
