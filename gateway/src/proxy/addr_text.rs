//! Addresses as text on the stack, IPv4 without `fmt`: every request
//! writes a few (its access-log line, `X-Forwarded-For`, the upstream's
//! authority), and `Display` for `Ipv4Addr` costs more than the rest of
//! the line put together.
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use http::HeaderValue;

/// A connection's TCP peer, its address written as text once for the
/// connection: every request on it writes that text (its access-log line,
/// `X-Forwarded-For`), which cost two formattings and an allocation each.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The canonical IP's text (a clone shares it).
    pub text: HeaderValue,
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        let text = AddrText::ip(addr.ip().to_canonical());
        let text = HeaderValue::from_bytes(text.as_bytes());
        Self {
            addr,
            // An address's text is always a valid value.
            text: text.unwrap_or(HeaderValue::from_static("")),
        }
    }
}

/// Room for any socket address: `[`, 39 for IPv6, `%` and a 10-digit
/// scope id, `]:` and 5 for the port.
const MAX: usize = 64;

/// An address's text, as `Display` writes it.
pub struct AddrText {
    buf: [u8; MAX],
    len: usize,
}

impl AddrText {
    fn empty() -> Self {
        Self {
            buf: [0; MAX],
            len: 0,
        }
    }

    pub fn ip(ip: IpAddr) -> Self {
        let mut text = Self::empty();
        match ip {
            IpAddr::V4(v4) => text.v4(v4),
            IpAddr::V6(v6) => {
                let _ = write!(text, "{v6}");
            }
        }
        text
    }

    pub fn socket(addr: SocketAddr) -> Self {
        let mut text = Self::empty();
        match addr {
            SocketAddr::V4(v4) => {
                text.v4(*v4.ip());
                text.push(b':');
                text.number(v4.port().into());
            }
            SocketAddr::V6(v6) => {
                let _ = write!(text, "{v6}");
            }
        }
        text
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    fn v4(&mut self, ip: Ipv4Addr) {
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b'.');
            }
            self.number(octet.into());
        }
    }

    /// Decimal digits of `n` (at most five: a port or an octet).
    fn number(&mut self, n: u32) {
        let mut digits = [0u8; 5];
        let mut start = digits.len();
        let mut rest = n.min(99_999);
        loop {
            start -= 1;
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 || start == 0 {
                break;
            }
        }
        for &digit in &digits[start..] {
            self.push(digit);
        }
    }

    fn push(&mut self, byte: u8) {
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = byte;
            self.len += 1;
        }
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let slot = self.buf.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        slot.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_displays() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:10.0.0.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(AddrText::ip(ip).as_str(), ip.to_string());
        }
        for addr in [
            "1.2.3.4:0",
            "127.0.0.1:8080",
            "255.255.255.255:65535",
            "[::1]:443",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(AddrText::socket(addr).as_str(), addr.to_string());
        }
        let scoped = SocketAddr::V6(std::net::SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            80,
            0,
            u32::MAX,
        ));
        assert_eq!(AddrText::socket(scoped).as_str(), scoped.to_string());
    }
}
