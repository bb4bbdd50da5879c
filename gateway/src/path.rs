//! The request-path policy: one normal form that routing matches, the
//! access log shows and the upstream receives, so what was authorised is
//! what is served. Pure functions of `&str` (fuzzed); a leaf module, so the
//! configuration can check route prefixes with the same rules (it is
//! reachable as `proxy::path` too, where it is used).
//!
//! [`normalize`] follows RFC 3986 §6.2.2 and §5.2.4:
//!
//! - percent-encoded unreserved characters (ALPHA DIGIT `-` `.` `_` `~`)
//!   are decoded (`/%61dmin` is `/admin`); every other percent-encoding
//!   stays encoded, its hex in upper case (`%3a` is `%3A`), and is never
//!   decoded twice (`%252e` stays `%252e`);
//! - dot-segments are resolved after that decoding, so `%2e%2e`, `.%2E`
//!   and `..` are the same segment; runs of `/` become one `/`;
//! - refused (400 `invalid_path`), as no origin-form path can be these: a
//!   path not starting with `/`; an encoded slash or backslash (`%2F`,
//!   `%5C`) or a raw backslash, which servers split differently; a control
//!   byte, raw or encoded (`%00`); a byte RFC 3986 does not allow in a path
//!   (space, `"`, `<`, `{`, `|`, non-ASCII ...); malformed percent-encoding
//!   (`%zz`, `%4`); `..` above the root (`/..`, `/a/../..`); and a
//!   dot-segment with parameters (`..;x`), which Java servers resolve as
//!   `..`.
//!
//! Java servers (Tomcat, Jetty, Spring, Undertow) also drop every other
//! segment's parameters before they match (`/private;x/s` is their
//! `/private/s`), where others read `private;x` as a name of its own.
//! [`without_parameters`] is the first reading, for the proxy to refuse
//! (400 `invalid_path`, detail `path_parameters`) a path the two readings
//! route apart.
use std::borrow::Cow;

/// Why a path was refused; `as_str` is the access log's `detail`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path does not start with '/'")]
    NotOriginForm,
    #[error("the path holds an encoded slash (%2F)")]
    EncodedSlash,
    #[error("the path holds a backslash (raw or %5C)")]
    Backslash,
    #[error("the path holds a control byte (raw or encoded)")]
    ControlByte,
    #[error("the path holds a byte not allowed in a URI path")]
    InvalidByte,
    #[error("the path holds a malformed percent-encoding")]
    MalformedEncoding,
    #[error("the path's dot-segments go above the root")]
    EscapesRoot,
    #[error("the path holds a dot-segment with parameters (..;)")]
    DotSegmentParameters,
    #[error("the path's segment parameters (;) decide its route")]
    ParametersDecideRoute,
    #[error("the path's letter case decides its route")]
    CaseDecidesRoute,
}

impl PathError {
    /// Stable machine-readable reason.
    pub fn as_str(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "not_origin_form",
            PathError::EncodedSlash => "encoded_slash",
            PathError::Backslash => "backslash",
            PathError::ControlByte => "control_byte",
            PathError::InvalidByte => "invalid_byte",
            PathError::MalformedEncoding => "malformed_encoding",
            PathError::EscapesRoot => "escapes_root",
            PathError::DotSegmentParameters => "dot_segment_parameters",
            PathError::ParametersDecideRoute => "path_parameters",
            PathError::CaseDecidesRoute => "path_case",
        }
    }
}

/// `path` with each segment's parameters (from `;` to the segment's end)
/// removed, as Java servers read it: `/a;x/b;y=1` is `/a/b`. A segment
/// that was parameters alone goes too (Tomcat merges the `//` it leaves):
/// `/;x/a` is `/a`.
pub fn without_parameters(path: &str) -> Cow<'_, str> {
    if !path.contains(';') {
        return Cow::Borrowed(path);
    }
    let mut bare = String::with_capacity(path.len());
    let mut ends_empty = false;
    for segment in path.split('/').skip(1) {
        let name = segment.split(';').next().unwrap_or_default();
        ends_empty = name.is_empty();
        if !ends_empty {
            bare.push('/');
            bare.push_str(name);
        }
    }
    if ends_empty || bare.is_empty() {
        bare.push('/');
    }
    Cow::Owned(bare)
}

/// A route's path prefix as routing matches it: without its trailing `/`
/// (`""` for `/`).
pub fn route_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// Whether `path` is `prefix` (as [`route_prefix`] gives it) or below it,
/// on a segment boundary: `/api` matches `/api`, `/api/` and `/api/x`,
/// never `/apix`; `""` (the prefix `/`) matches every path. The proxy
/// routes by it and the configuration checks prefixes against each other
/// by it, so the two cannot drift apart.
pub fn is_under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// `raw_path` (no query) in normal form, or why it is refused (see the
/// module doc). Borrows when the path is already normal, the common case.
pub fn normalize(raw_path: &str) -> Result<Cow<'_, str>, PathError> {
    if !raw_path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if is_normal(raw_path) {
        return Ok(Cow::Borrowed(raw_path));
    }
    normalize_segments(raw_path)
}

/// [`normalize`] segment by segment, for what [`is_normal`] did not pass.
fn normalize_segments(raw_path: &str) -> Result<Cow<'_, str>, PathError> {
    let mut out = String::with_capacity(raw_path.len());
    let mut segments = raw_path[1..].split('/').peekable();
    // Whether the result ends with '/': its last segment was empty or a dot-segment.
    let mut trailing_slash = false;
    while let Some(raw) = segments.next() {
        let last = segments.peek().is_none();
        let segment = decode_segment(raw)?;
        match segment.as_ref() {
            "" | "." => trailing_slash = last,
            ".." => {
                let parent = out.rfind('/').ok_or(PathError::EscapesRoot)?;
                out.truncate(parent);
                trailing_slash = last;
            }
            other => {
                if is_dot_with_parameters(other) {
                    return Err(PathError::DotSegmentParameters);
                }
                out.push('/');
                out.push_str(other);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(match out == raw_path {
        true => Cow::Borrowed(raw_path),
        false => Cow::Owned(out),
    })
}

/// Whether `path` (starting with '/') is already in normal form: only
/// plain path bytes, no '%', no empty segment but the last, no dot-segment.
/// A `false` only means the slow path decides. One pass over the bytes:
/// most requests' paths end here.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut start = 1;
    for at in 1..=bytes.len() {
        match bytes.get(at) {
            Some(b'/') | None => {
                let segment = bytes.get(start..at).unwrap_or_default();
                let inner_empty = segment.is_empty() && at < bytes.len();
                if inner_empty || is_dot_segment(segment) {
                    return false;
                }
                start = at + 1;
            }
            Some(&byte) if !is_path_byte(byte) => return false,
            Some(_) => {}
        }
    }
    true
}

/// `.` or `..`, with or without parameters (`.;x`, `..;x`: Tomcat, Jetty).
fn is_dot_segment(segment: &[u8]) -> bool {
    matches!(segment, b"." | b"..") || segment.starts_with(b".;") || segment.starts_with(b"..;")
}

/// `.;x` or `..;x`: a dot-segment with parameters (Tomcat, Jetty).
fn is_dot_with_parameters(segment: &str) -> bool {
    matches!(segment.split_once(';'), Some(("." | "..", _)))
}

/// RFC 3986 `pchar` minus `%`: unreserved, sub-delims, `:` and `@`.
fn is_path_byte(byte: u8) -> bool {
    PATH_BYTES[usize::from(byte)]
}

/// [`is_path_byte`]'s answers, one per byte value.
const PATH_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || matches!(
                b,
                b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            )
            || matches!(b, b':' | b'@');
        byte += 1;
    }
    table
};

/// One segment with unreserved characters decoded and the other
/// percent-encodings' hex in upper case; refuses what [`normalize`] refuses.
fn decode_segment(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.iter().all(|&b| is_path_byte(b)) {
        return Ok(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'%' => {
                let (high, low) = match (bytes.get(index + 1), bytes.get(index + 2)) {
                    (Some(&high), Some(&low)) => (hex(high)?, hex(low)?),
                    _ => return Err(PathError::MalformedEncoding),
                };
                let decoded = high << 4 | low;
                match decoded {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::Backslash),
                    byte if byte < 0x20 || byte == 0x7f => return Err(PathError::ControlByte),
                    byte if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) => {
                        out.push(char::from(byte))
                    }
                    byte => {
                        out.push('%');
                        out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
                        out.push(char::from(HEX_UPPER[usize::from(byte & 0xf)]));
                    }
                }
                index += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            byte if byte < 0x20 || byte == 0x7f => return Err(PathError::ControlByte),
            byte if is_path_byte(byte) => {
                out.push(char::from(byte));
                index += 1;
            }
            _ => return Err(PathError::InvalidByte),
        }
    }
    Ok(Cow::Owned(out))
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(digit: u8) -> Result<u8, PathError> {
    match digit {
        b'0'..=b'9' => Ok(digit - b'0'),
        b'a'..=b'f' => Ok(digit - b'a' + 10),
        b'A'..=b'F' => Ok(digit - b'A' + 10),
        _ => Err(PathError::MalformedEncoding),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path of up to 7 bytes after its '/' over bytes that make
    /// segments, dot-segments, parameters, encodings and refusals: the
    /// one-pass check says what a segment-by-segment one says, and a path
    /// it passes is what the slow path makes of it.
    #[test]
    fn the_fast_check_agrees_with_segments_and_the_slow_path() {
        fn by_segments(path: &str) -> bool {
            let mut segments = path[1..].split('/').peekable();
            while let Some(segment) = segments.next() {
                let inner_empty = segment.is_empty() && segments.peek().is_some();
                if inner_empty
                    || matches!(segment, "." | "..")
                    || is_dot_with_parameters(segment)
                    || !segment
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b))
                {
                    return false;
                }
            }
            true
        }
        const ALPHABET: &[u8] = b"/.;a%\\~";
        let mut path = String::from("/");
        let mut checked = 0;
        fn each(path: &mut String, left: usize, checked: &mut usize) {
            let fast = is_normal(path);
            assert_eq!(fast, by_segments(path), "{path:?}");
            if fast {
                let slow = normalize_segments(path);
                assert_eq!(slow.as_deref(), Ok(path.as_str()), "{path:?}");
            }
            *checked += 1;
            if left == 0 {
                return;
            }
            for &byte in ALPHABET {
                path.push(char::from(byte));
                each(path, left - 1, checked);
                path.pop();
            }
        }
        each(&mut path, 7, &mut checked);
        assert!(checked > 900_000, "{checked}");
        for byte in 0..=255u8 {
            let old = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte);
            assert_eq!(is_path_byte(byte), old, "{byte}");
        }
    }

    #[test]
    fn parameters_go_from_every_segment() {
        for (path, bare) in [
            ("/a/b", "/a/b"),
            ("/a;x/b", "/a/b"),
            ("/a;x=1;y/b;jsessionid=2", "/a/b"),
            ("/;x/", "/"),
            ("/;x/private/s", "/private/s"),
            ("/api/;x/admin", "/api/admin"),
            ("/a/;x", "/a/"),
            ("/a/b;", "/a/b"),
            ("/a;x/", "/a/"),
            ("/", "/"),
        ] {
            assert_eq!(without_parameters(path), bare, "{path}");
        }
        assert!(matches!(without_parameters("/a/b"), Cow::Borrowed(_)));
    }

    #[test]
    fn normal_forms() {
        let cases = [
            // Already normal: borrowed, unchanged.
            ("/", "/"),
            ("/api/item", "/api/item"),
            ("/api/", "/api/"),
            ("/a:b@c;d=e,f!$&'()*+", "/a:b@c;d=e,f!$&'()*+"),
            // RFC 3986 §5.4.1/§5.4.2 merge-and-remove cases that apply to a path.
            ("/b/c/./g", "/b/c/g"),
            ("/b/c/g/", "/b/c/g/"),
            ("/b/c/.", "/b/c/"),
            ("/b/c/./", "/b/c/"),
            ("/b/c/..", "/b/"),
            ("/b/c/../", "/b/"),
            ("/b/c/../g", "/b/g"),
            ("/b/c/../..", "/"),
            ("/b/c/../../", "/"),
            ("/b/c/../../g", "/g"),
            ("/b/c/g.", "/b/c/g."),
            ("/b/c/.g", "/b/c/.g"),
            ("/b/c/g..", "/b/c/g.."),
            ("/b/c/..g", "/b/c/..g"),
            ("/b/c/./../g", "/b/g"),
            ("/b/c/./g/.", "/b/c/g/"),
            ("/b/c/g/./h", "/b/c/g/h"),
            ("/b/c/g/../h", "/b/c/h"),
            ("/b/c/g;x=1/./y", "/b/c/g;x=1/y"),
            ("/b/c/g;x=1/../y", "/b/c/y"),
            // RFC 3986 §5.2.4's own examples.
            ("/a/b/c/./../../g", "/a/g"),
            ("/mid/content=5/../6", "/mid/6"),
            // Encoded dot-segments are dot-segments.
            ("/public/%2e%2e/api/item", "/api/item"),
            ("/public/%2E./api/item", "/api/item"),
            ("/public/.%2e/api/item", "/api/item"),
            ("/a/%2e/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/public/../api/item", "/api/item"),
            // Runs of slashes merge.
            ("//a//b", "/a/b"),
            ("//api//item//", "/api/item/"),
            ("//", "/"),
            // Unreserved characters decoded, the rest upper-cased, never twice.
            ("/%61dmin", "/admin"),
            ("/api/%41%7a%30%2D%5f%7E", "/api/Az0-_~"),
            ("/a%20b/%3a", "/a%20b/%3A"),
            ("/%c3%a9", "/%C3%A9"),
            ("/%252e%252e/x", "/%252e%252e/x"),
            ("/%25", "/%25"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
        }
        assert!(matches!(normalize("/api/item"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize("/api/"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn what_is_not_origin_form_is_refused() {
        use PathError::*;
        let cases = [
            ("", NotOriginForm),
            ("*", NotOriginForm),
            ("api/x", NotOriginForm),
            ("http://a/x", NotOriginForm),
            ("/api%2Fitem", EncodedSlash),
            ("/api%2fitem", EncodedSlash),
            ("/public/..%2Fapi/item", EncodedSlash),
            ("/a%5Cb", Backslash),
            ("/a%5cb", Backslash),
            ("/public\\..\\api", Backslash),
            ("/a\\b", Backslash),
            ("/a%00b", ControlByte),
            ("/a%0Ab", ControlByte),
            ("/a%7f", ControlByte),
            ("/a\0b", ControlByte),
            ("/a\tb", ControlByte),
            ("/a b", InvalidByte),
            ("/a\"b", InvalidByte),
            ("/{id}", InvalidByte),
            ("/a|b", InvalidByte),
            ("/a#b", InvalidByte),
            ("/é", InvalidByte),
            ("/%zz", MalformedEncoding),
            ("/%4", MalformedEncoding),
            ("/a%", MalformedEncoding),
            ("/%g0/x", MalformedEncoding),
            ("/..", EscapesRoot),
            ("/a/../..", EscapesRoot),
            ("/%2e%2e/x", EscapesRoot),
            ("/a/../../b", EscapesRoot),
            ("/public/..;/api/item", DotSegmentParameters),
            ("/public/.;x/api", DotSegmentParameters),
            ("/public/%2e%2e;/api", DotSegmentParameters),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn normal_forms_are_fixed_points() {
        for raw in ["/a/./b", "//a//b/", "/%61/%2e%2e/%3a", "/x/y/../z/."] {
            let once = normalize(raw).unwrap().into_owned();
            assert_eq!(normalize(&once).as_deref(), Ok(once.as_str()), "{raw}");
            assert!(matches!(normalize(&once), Ok(Cow::Borrowed(_))), "{raw}");
        }
    }
}
