//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the
//! gateway is one hop of a distributed trace. A valid incoming
//! `traceparent` keeps its trace id and flags and gets the gateway's own
//! new span id as its parent id; an absent or invalid one is replaced by a
//! fresh trace. `tracestate` goes along untouched, but only with a valid
//! incoming `traceparent` (the spec forbids reading it otherwise) and only
//! up to [`MAX_TRACESTATE`] bytes.
use http::{HeaderMap, HeaderName};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `tracestate` bytes (all its field lines together) passed on; more is
/// dropped whole. 512 is what the spec asks every vendor to propagate.
pub const MAX_TRACESTATE: usize = 512;
/// Length of a version-00 `traceparent`: `00-` 32 hex `-` 16 hex `-` 2 hex.
pub const LEN: usize = 55;
/// The `sampled` flag of a trace the gateway starts: set, because the
/// gateway records every request (its access-log line carries the trace
/// id); unset would also switch tracing off at every upstream whose
/// sampler follows its parent (OpenTelemetry's default).
pub const GENERATED_FLAGS: u8 = 0x01;

/// A parsed `traceparent`: its first four fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// Parses a `traceparent` value: `version-traceid-parentid-flags`, lowercase
/// hex only, neither id all zeros, version `ff` invalid. Version 00 is
/// exactly 55 bytes; a later version may go on after a `-` (only the
/// first four fields are read, as the spec says).
pub fn parse(value: &[u8]) -> Option<TraceParent> {
    if value.len() < LEN || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut version = [0u8; 1];
    hex_decode(&value[..2], &mut version)?;
    let version = version[0];
    let rest_ok = match version {
        0xff => false,
        0 => value.len() == LEN,
        _ => value.len() == LEN || value[LEN] == b'-',
    };
    if !rest_ok {
        return None;
    }
    let mut parent = TraceParent {
        version,
        trace_id: [0; 16],
        parent_id: [0; 8],
        flags: 0,
    };
    hex_decode(&value[3..35], &mut parent.trace_id)?;
    hex_decode(&value[36..52], &mut parent.parent_id)?;
    let mut flags = [0u8; 1];
    hex_decode(&value[53..55], &mut flags)?;
    parent.flags = flags[0];
    let zero = |id: &[u8]| id.iter().all(|&b| b == 0);
    (!zero(&parent.trace_id) && !zero(&parent.parent_id)).then_some(parent)
}

/// Lowercase hex into `out` (`hex` is exactly twice as long).
fn hex_decode(hex: &[u8], out: &mut [u8]) -> Option<()> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    for (pair, byte) in hex.chunks_exact(2).zip(out.iter_mut()) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

/// Lowercase hex of `bytes` into `out` (twice as long).
pub(super) fn hex_encode(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// One request's place in its trace: the gateway's span.
#[derive(Clone, Copy, Debug)]
pub struct Trace {
    pub trace_id: [u8; 16],
    /// The gateway's span: the upstream's parent id.
    pub span_id: [u8; 8],
    pub flags: u8,
    /// Whether the trace came from a valid incoming `traceparent` (and so
    /// `tracestate` may be passed on).
    pub inherited: bool,
}

impl Trace {
    /// The trace of a request with `headers`: continued from exactly one
    /// valid `traceparent`, else a new one. Ids from `fastrand` (a
    /// per-thread wyrand seeded from the OS): no syscall, no lock.
    pub fn of(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let incoming = match (values.next(), values.next()) {
            (Some(value), None) => parse(value.as_bytes()),
            _ => None,
        };
        let span_id = fastrand::u64(1..).to_be_bytes();
        match incoming {
            Some(parent) => Self {
                trace_id: parent.trace_id,
                span_id,
                flags: parent.flags,
                inherited: true,
            },
            None => Self {
                trace_id: fastrand::u128(1..).to_be_bytes(),
                span_id,
                flags: GENERATED_FLAGS,
                inherited: false,
            },
        }
    }

    /// The trace id as 32 lowercase hex digits (on the stack).
    pub fn trace_id_hex(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_encode(&self.trace_id, &mut out);
        out
    }

    /// The version-00 `traceparent` the upstream gets.
    pub fn traceparent(&self) -> [u8; LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_encode(&self.trace_id, &mut out[3..35]);
        hex_encode(&self.span_id, &mut out[36..52]);
        hex_encode(&[self.flags], &mut out[53..55]);
        out
    }

    /// Sets the upstream request's trace headers: ours in place of any
    /// `traceparent`; `tracestate` kept only with an inherited trace and
    /// within [`MAX_TRACESTATE`].
    #[cfg(test)]
    pub fn set_headers(&self, headers: &mut HeaderMap) {
        if let Ok(value) = http::HeaderValue::from_bytes(&self.traceparent()) {
            headers.insert(TRACEPARENT, value);
        }
        self.trim_state(headers);
    }

    /// `tracestate` as [`Trace::set_headers`] leaves it; the caller sends
    /// [`Trace::traceparent`] in place of any the client sent.
    pub fn trim_state(&self, headers: &mut HeaderMap) {
        let state_len: usize = (headers.get_all(TRACESTATE).iter()).map(|v| v.len()).sum();
        if state_len > 0 && (!self.inherited || state_len > MAX_TRACESTATE) {
            headers.remove(TRACESTATE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_parses() {
        let parent = parse(VALID.as_bytes()).unwrap();
        assert_eq!(parent.version, 0);
        assert_eq!(parent.trace_id[0], 0x4b);
        assert_eq!(parent.trace_id[15], 0x36);
        assert_eq!(parent.parent_id, 0x00f0_67aa_0ba9_02b7u64.to_be_bytes());
        assert_eq!(parent.flags, 1);
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let bad = [
            "",
            &VALID[..54],                                               // short
            &format!("{VALID}-"),                                       // version 00 is exactly 55
            &VALID.to_uppercase(),                                      // uppercase
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  // uppercase trace id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  // zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  // zero parent id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // version ff
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // not hex
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  // separator
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",  // flags
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",  // field lengths
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // future, no `-`
        ];
        for value in bad {
            assert_eq!(parse(value.as_bytes()), None, "{value:?}");
        }
    }

    #[test]
    fn future_versions_are_read_by_their_first_four_fields() {
        for value in [
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next",
        ] {
            let parent = parse(value.as_bytes()).unwrap();
            assert_eq!((parent.version, parent.flags), (0xcc, 0x09));
        }
    }

    fn headers(pairs: &[(&HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn a_valid_trace_is_continued_with_a_new_span() {
        let mut map = headers(&[(&TRACEPARENT, VALID), (&TRACESTATE, "congo=t61rcWkgMzE")]);
        let trace = Trace::of(&map);
        assert!(trace.inherited);
        assert_eq!(&trace.trace_id_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
        trace.set_headers(&mut map);
        let sent = map.get(TRACEPARENT).unwrap().to_str().unwrap();
        let again = parse(sent.as_bytes()).unwrap();
        assert_eq!(&sent[..36], &VALID[..36]);
        assert_ne!(&sent[36..52], &VALID[36..52]);
        assert_eq!(again.parent_id, trace.span_id);
        assert_eq!(&sent[52..], "-01");
        assert_eq!(map.get(TRACESTATE).unwrap(), "congo=t61rcWkgMzE");
    }

    #[test]
    fn an_invalid_or_repeated_trace_is_replaced_and_its_state_dropped() {
        let upper = VALID.to_uppercase();
        for pairs in [
            vec![(&TRACEPARENT, upper.as_str()), (&TRACESTATE, "a=b")],
            vec![(&TRACEPARENT, VALID), (&TRACEPARENT, VALID)],
            vec![(&TRACESTATE, "a=b")],
        ] {
            let mut map = headers(&pairs);
            let trace = Trace::of(&map);
            assert!(!trace.inherited);
            assert_ne!(&trace.trace_id_hex(), b"4bf92f3577b34da6a3ce929d0e0e4736");
            trace.set_headers(&mut map);
            assert_eq!(map.get_all(TRACEPARENT).iter().count(), 1);
            let sent = parse(map.get(TRACEPARENT).unwrap().as_bytes()).unwrap();
            assert_eq!((sent.version, sent.flags), (0, GENERATED_FLAGS));
            assert_eq!(sent.trace_id, trace.trace_id);
            assert!(map.get(TRACESTATE).is_none());
        }
    }

    #[test]
    fn an_oversized_tracestate_is_dropped() {
        let long = format!("a={}", "x".repeat(MAX_TRACESTATE));
        let mut map = headers(&[(&TRACEPARENT, VALID), (&TRACESTATE, &long)]);
        Trace::of(&map).set_headers(&mut map);
        assert!(map.get(TRACESTATE).is_none());
    }
}
