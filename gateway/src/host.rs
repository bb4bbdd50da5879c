//! A request's host: which spellings are served, and the name a route
//! matches it by.
//!
//! Upstreams read a host their own way: nginx takes the name before the
//! first `:` (`admin.example:x` is its `admin.example`), URL parsers the
//! part after a `@`. Had the gateway routed such a host as a name of its
//! own, it would have taken a request off its host's protected route onto
//! an any-host one, and the upstream would still have served it as the
//! protected host. So only hosts every reader agrees on are served
//! ([`check`]); the rest are 400 `invalid_host`. A leaf module: the
//! configuration checks route hosts with the same rules.

/// Why a host is not served (the refusal's detail).
pub const MALFORMED: &str = "malformed_host";

/// Bytes of a host name: letters, digits, `-`, `.`, `_` and `~` (RFC 3986's
/// unreserved characters). No `%` escapes, sub-delimiters or `@`.
const fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `host` starts with a name (its bytes name bytes, no label
/// empty), and what follows it from its first `:`. One pass, a table
/// lookup a byte: it runs on every request.
fn name_then_rest(host: &[u8]) -> (bool, &[u8]) {
    static NAME: [bool; 256] = {
        let mut table = [false; 256];
        let mut b = 0;
        while b < 256 {
            table[b] = is_name_byte(b as u8);
            b += 1;
        }
        table
    };
    // A leading dot is an empty first label.
    let mut previous = b'.';
    for (at, &b) in host.iter().enumerate() {
        if b == b':' {
            return (at > 0, &host[at..]);
        }
        if !NAME[usize::from(b)] || (b == b'.' && previous == b'.') {
            return (false, &[]);
        }
        previous = b;
    }
    (true, &[])
}

/// Whether `text` is an IPv6 address in its one canonical spelling (RFC
/// 5952; no zone, no IPvFuture): `[0::1]` is `[::1]` to URL parsers, and a
/// route for the one must not be missed by the other.
fn is_ipv6(text: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    text.parse::<std::net::Ipv6Addr>()
        .is_ok_and(|addr| addr.to_string().eq_ignore_ascii_case(text))
}

/// Whether a name whose last label starts with a digit (no DNS name's
/// does) is an IPv4 address in dotted decimal: WHATWG URL parsers read
/// `10.1`, `0x0a.0.0.1` and `010.0.0.1` as 10.0.0.1 and would serve a
/// route for it that the gateway's match missed.
fn numeric_only_as_ipv4(name: &[u8]) -> bool {
    let name = name.strip_suffix(b".").unwrap_or(name);
    let last = name.rsplit(|&b| b == b'.').next().unwrap_or_default();
    if !last.first().is_some_and(u8::is_ascii_digit) {
        return true;
    }
    is_dotted_quad(name)
}

/// Whether `name` is four decimal octets as `Ipv4Addr`'s parser takes them
/// (no leading zero, none above 255), in one pass: std's parser, with its
/// UTF-8 check, cost ~270 instructions a request on a host such as
/// `127.0.0.1:8080`.
fn is_dotted_quad(name: &[u8]) -> bool {
    let mut octets = 0;
    for octet in name.split(|&b| b == b'.') {
        octets += 1;
        let value = match octet {
            [d @ b'0'..=b'9'] => Some(u16::from(d - b'0')),
            [b'1'..=b'9', rest @ ..] if rest.len() <= 2 => octet.iter().try_fold(0u16, |n, &d| {
                d.is_ascii_digit().then(|| n * 10 + u16::from(d - b'0'))
            }),
            _ => None,
        };
        if octets > 4 || value.is_none_or(|v| v > 255) {
            return false;
        }
    }
    octets == 4
}

/// Whether `host` (a `Host` value or a target's authority) is served: a
/// name without empty labels (one trailing dot aside) or a bracketed IPv6
/// literal, then at most a `:` and up to five port digits. An empty host
/// (`Host:` with no value) is no host, and served as such.
pub fn check(host: &[u8]) -> Result<(), &'static str> {
    if host.is_empty() {
        return Ok(());
    }
    let (name_ok, rest) = match host.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&b| b == b']') {
            Some(end) => (is_ipv6(&literal[..end]), &literal[end + 1..]),
            None => (false, &b""[..]),
        },
        None => {
            let (ok, rest) = name_then_rest(host);
            (
                ok && numeric_only_as_ipv4(&host[..host.len() - rest.len()]),
                rest,
            )
        }
    };
    let port_ok = match rest.strip_prefix(b":") {
        Some(port) => port.len() <= 5 && port.iter().all(u8::is_ascii_digit),
        None => rest.is_empty(),
    };
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(MALFORMED)
    }
}

/// Whether a target's `authority` and a `Host` value name the same host
/// and port (RFC 9110 §4.2.3): `h:80` and `h` under `http`, `h:` and `h`
/// (an empty port is the default); names compare case-insensitively. A
/// client that spells the default port in one and not the other is not
/// refused as a mismatch.
pub fn same(authority: &[u8], host: &[u8], scheme: Option<&str>) -> bool {
    let default: &[u8] = match scheme {
        Some(s) if s.eq_ignore_ascii_case("http") => b":80",
        Some(s) if s.eq_ignore_ascii_case("https") => b":443",
        _ => b":",
    };
    // One default spelling stripped, no more (`h:80:` stays apart).
    let plain = |h: &'_ [u8]| -> usize {
        match (h.strip_suffix(default), h.strip_suffix(b":")) {
            (Some(bare), _) | (None, Some(bare)) => bare.len(),
            (None, None) => h.len(),
        }
    };
    let (a, h) = (&authority[..plain(authority)], &host[..plain(host)]);
    a.eq_ignore_ascii_case(h)
}

/// The name a host is matched by: without its port and its one trailing
/// dot. `example.com.` is DNS's `example.com`, and upstreams (nginx's
/// `server_name`) serve it as that host: matched apart, it took a request
/// off its host's protected route onto an any-host one.
pub fn name(host: &str) -> &str {
    let name = without_port(host);
    name.strip_suffix('.').unwrap_or(name)
}

/// A route's configured host as it is matched: lower case, without its
/// trailing dot (a request's host is compared by [`name`], ignoring case).
pub fn route_host(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn without_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_every_reader_agrees_on_are_served() {
        for host in [
            "",
            "example.com",
            "Example.COM",
            "example.com.",
            "example.com:8080",
            "example.com:",
            "localhost",
            "my_host-1.internal~x",
            "127.0.0.1:80",
            "10.0.0.1.",
            "v1.example",
            "1example.com",
            "[::1]",
            "[::FFFF:127.0.0.1]",
            "[::1]:443",
            "[::ffff:127.0.0.1]",
        ] {
            assert_eq!(check(host.as_bytes()), Ok(()), "{host:?}");
        }
    }

    #[test]
    fn hosts_read_apart_are_refused() {
        for host in [
            // nginx: `admin.example`; the gateway's old match: a name.
            "admin.example:x",
            "admin.example:80:80",
            "admin.example:123456",
            // URL parsers: the part after `@`.
            "user@admin.example",
            "admin.example@evil",
            "admin..example",
            ".admin.example",
            ".",
            "admin.example..",
            ":80",
            "admin example",
            "admin.example%2e",
            "admin.example/x",
            "admin.example\\x",
            "admin.example,evil",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:x",
            "[fe80::1%25eth0]",
            "[v1.x]",
            "[0..0..:.d]",
            "[1:2]",
            "[127.0.0.1]",
            // Spellings URL parsers read as another address.
            "10.1",
            "0x0a.0.0.1",
            "010.0.0.1",
            "10.0.0.1.1",
            "2130706433",
            "[0::1]",
            "[::0:1]:80",
        ] {
            assert_eq!(check(host.as_bytes()), Err(MALFORMED), "{host:?}");
        }
        for byte in (0..=255u8).filter(|&b| !is_name_byte(b) && !b"[]:".contains(&b)) {
            let host = [b"admin".as_slice(), &[byte], b".example"].concat();
            assert_eq!(check(&host), Err(MALFORMED), "{byte:#x}");
        }
    }

    #[test]
    fn a_default_port_spelt_or_not_is_the_same_host() {
        let http = Some("http");
        for (authority, host, scheme) in [
            ("h", "h", None),
            ("H.example", "h.EXAMPLE", http),
            ("h:80", "h", http),
            ("h", "h:80", http),
            ("h:", "h", http),
            ("h:", "h:80", http),
            ("h:443", "h", Some("https")),
            ("[::1]:80", "[::1]", http),
            ("h:", "h", None),
        ] {
            assert!(
                same(authority.as_bytes(), host.as_bytes(), scheme),
                "{authority} {host}"
            );
        }
        for (authority, host, scheme) in [
            ("h:80", "h", None),
            ("h:80", "h", Some("https")),
            ("h:8080", "h", http),
            ("h:180", "h:1", http),
            ("h:80:", "h", http),
            ("h::80", "h", http),
            ("admin.example", "www.example", http),
            ("admin.example:80", "www.example:80", http),
            ("[::1]:80", "[::2]", http),
        ] {
            assert!(
                !same(authority.as_bytes(), host.as_bytes(), scheme),
                "{authority} {host}"
            );
        }
    }

    /// The one-pass check takes exactly what std's parser takes: every
    /// string of up to seven bytes from the bytes that matter, and longer
    /// ones drawn from them.
    #[test]
    fn dotted_quads_are_what_std_parses() {
        let alphabet = b"0125.9a";
        let agrees = |s: &[u8]| {
            let std = std::str::from_utf8(s)
                .unwrap()
                .parse::<std::net::Ipv4Addr>();
            assert_eq!(
                is_dotted_quad(s),
                std.is_ok(),
                "{:?}",
                String::from_utf8_lossy(s)
            );
        };
        let mut strings: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..7 {
            strings = strings
                .iter()
                .flat_map(|s| alphabet.iter().map(move |&b| [s.as_slice(), &[b]].concat()))
                .collect();
            strings.iter().for_each(|s| agrees(s));
        }
        // Longer ones, quads among them: octets of one to four digits.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as usize
        };
        for _ in 0..200_000 {
            let mut s = Vec::new();
            for octet in 0..3 + next(3) {
                if octet > 0 {
                    s.push(b'.');
                }
                for _ in 0..1 + next(4) {
                    s.push(b"0123456789"[next(10)]);
                }
            }
            agrees(&s);
        }
        for quad in ["255.255.255.255", "0.0.0.0", "192.168.100.200"] {
            assert!(is_dotted_quad(quad.as_bytes()), "{quad}");
        }
        for not in [
            "256.0.0.1",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3",
            "",
            "1..2.3",
            "1000.1.1.1",
        ] {
            assert!(!is_dotted_quad(not.as_bytes()), "{not}");
        }
    }

    #[test]
    fn names_drop_the_port_and_the_root_dot() {
        assert_eq!(name("example.com:8080"), "example.com");
        assert_eq!(name("example.com.:8080"), "example.com");
        assert_eq!(name("[::1]:80"), "[::1]");
        assert_eq!(name("example.com"), "example.com");
    }
}
