//! Strings into the access log's JSON. Most need no escape, and the log's
//! strings are short (a method, a route, a tier, a 32-digit request id),
//! so the check reads eight bytes at a time, with no vector loop to set
//! up and no byte-wise tail: the vectorised fold it replaced cost ~150
//! instructions more a request (seven strings).

/// `s` as a JSON string: copied as is unless it holds a byte JSON must
/// escape (then serde_json writes it, so the bytes are the same).
pub(super) fn json_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"null");
    }
}

pub(super) fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Whether `bytes` holds a control byte, `"` or `\`: what JSON escapes.
/// Read as whole words, overlapping where the length is not a multiple
/// of eight: a byte read twice changes nothing, and no byte goes a loop
/// of its own.
fn needs_escape(bytes: &[u8]) -> bool {
    let len = bytes.len();
    let word = |at: usize| {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(eight)
    };
    let half = |at: usize| {
        let mut four = [0u8; 4];
        four.copy_from_slice(&bytes[at..at + 4]);
        u64::from(u32::from_le_bytes(four))
    };
    match len {
        0 => false,
        1..=3 => {
            // The first, middle and last bytes (repeats where fewer), the
            // rest a byte that needs no escape.
            let pad = u64::from_le_bytes([0, 0, 0, b'a', b'a', b'a', b'a', b'a']);
            let three = u64::from(bytes[0])
                | u64::from(bytes[len / 2]) << 8
                | u64::from(bytes[len - 1]) << 16;
            word_needs_escape(three | pad)
        }
        4..=7 => word_needs_escape(half(0) | half(len - 4) << 32),
        _ => {
            let mut any = word_needs_escape(word(len - 8));
            for at in (0..len - 8).step_by(8) {
                any |= word_needs_escape(word(at));
            }
            any
        }
    }
}

/// Whether any byte of `word` is below 0x20, `"` or `\`. Each test is
/// the exact "has a zero byte" trick (a borrow can only mark bytes after
/// a real hit): `x - 0x01..` sets a byte's top bit where the byte was 0
/// (or below the subtrahend), `& !x` drops the bytes that had it set.
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let control = below(word, 0x20);
    let quote = below(word ^ (ONES * u64::from(b'"')), 1);
    let backslash = below(word ^ (ONES * u64::from(b'\\')), 1);
    (control | quote | backslash) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytewise(bytes: &[u8]) -> bool {
        bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
    }

    /// Every byte value at every position of strings of 0 to 24 bytes,
    /// amid neighbours that are escaped, borderline or high (UTF-8).
    #[test]
    fn agrees_with_the_bytewise_check_on_every_byte_and_position() {
        for len in 0..=24 {
            for pos in 0..len {
                for fill in [b'a', 0x1f, 0x20, 0x21, b'"', b'\\', 0x7f, 0x80, 0xff] {
                    for b in 0..=255u8 {
                        let mut s = vec![fill; len];
                        s[pos] = b;
                        assert_eq!(needs_escape(&s), bytewise(&s), "{s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn written_strings_are_serde_jsons() {
        for s in [
            "",
            "GET",
            "0123456789abcdef0123456789abcdef",
            "/quote\"back\\slash\u{1}tab\t\u{e9}",
            "caf\u{e9} \u{1f600}",
            "\u{7f}",
            "12345678\"",
        ] {
            let mut out = Vec::new();
            json_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
        let mut out = Vec::new();
        json_opt_str(&mut out, None);
        assert_eq!(out, b"null");
    }
}
