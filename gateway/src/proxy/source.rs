//! Which address a request is from, decided once per request in the
//! accept phase (`RequestContext::client_ip`), for the guard, the
//! `limit_by = "source"`/`"both"` limits and the access log.
//!
//! The TCP peer, unless it is in `forwarding.trusted_proxies`: then the
//! right-most `X-Forwarded-For` hop that is not itself a trusted proxy
//! (hops are read from the right, where the trusted proxies appended them;
//! what lies left of the first untrusted hop is whatever the client made
//! up). Every hop trusted: the left-most, as nginx's `real_ip_recursive`
//! does. A malformed hop, or no header, means the peer: never a guess.
use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName};
use ipnet::IpNet;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client address of a request from `peer` with `headers` (canonical:
/// IPv4-mapped IPv6 addresses become IPv4).
pub fn client_address(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    // Several header lines are one list, in order (RFC 9110 §5.3). Read as
    // bytes from the right: what a client wrote left of the first untrusted
    // hop (any bytes at all) must not decide anything.
    let lines: Vec<&[u8]> = (headers.get_all(&X_FORWARDED_FOR).iter())
        .map(|value| value.as_bytes())
        .collect();
    let mut client = None;
    for hop in lines
        .iter()
        .rev()
        .flat_map(|line| line.rsplit(|&b| b == b','))
    {
        let Some(ip) = std::str::from_utf8(hop)
            .ok()
            .and_then(|hop| parse_hop(hop.trim()))
        else {
            return peer;
        };
        client = Some(ip);
        if !is_trusted(&ip) {
            break;
        }
    }
    client.unwrap_or(peer)
}

/// An address as proxies write it: bare, or with a port (`1.2.3.4:80`,
/// `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let ip =
        (hop.parse::<IpAddr>().ok()).or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn client(xff: &[&str], peer: &str) -> String {
        let mut headers = HeaderMap::new();
        for line in xff {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_str(line).unwrap());
        }
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()];
        client_address(&headers, peer.parse().unwrap(), &trusted).to_string()
    }

    #[test]
    fn bytes_a_client_wrote_left_of_its_address_do_not_hide_it() {
        let mut headers = HeaderMap::new();
        let line = HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.7").unwrap();
        headers.append(X_FORWARDED_FOR, line);
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = "10.0.0.1".parse().unwrap();
        let client = client_address(&headers, peer, &trusted);
        assert_eq!(client.to_string(), "203.0.113.7");
    }

    #[test]
    fn a_trusted_peer_names_the_right_most_untrusted_hop() {
        assert_eq!(client(&["203.0.113.7"], "10.0.0.1"), "203.0.113.7");
        // What the client wrote itself (left of its own address) is ignored.
        assert_eq!(client(&["6.6.6.6, 203.0.113.7"], "10.0.0.1"), "203.0.113.7");
        // Trusted hops in between are skipped, over several lines too.
        assert_eq!(
            client(&["6.6.6.6, 203.0.113.7", "10.1.1.1, fd00::5"], "10.0.0.1"),
            "203.0.113.7"
        );
        assert_eq!(
            client(&["[2001:db8::1]:443, 10.2.2.2:80"], "::ffff:10.0.0.1"),
            "2001:db8::1"
        );
        assert_eq!(client(&["::ffff:203.0.113.9"], "10.0.0.1"), "203.0.113.9");
        // Every hop trusted: the left-most.
        assert_eq!(client(&["10.3.3.3, 10.4.4.4"], "10.0.0.1"), "10.3.3.3");
    }

    #[test]
    fn an_untrusted_peer_or_a_malformed_header_means_the_peer() {
        assert_eq!(client(&["203.0.113.7"], "192.0.2.1"), "192.0.2.1");
        assert_eq!(client(&[], "10.0.0.1"), "10.0.0.1");
        assert_eq!(client(&[""], "10.0.0.1"), "10.0.0.1");
        assert_eq!(client(&["203.0.113.7, garbage"], "10.0.0.1"), "10.0.0.1");
        assert_eq!(client(&["203.0.113.7,,10.1.1.1"], "10.0.0.1"), "10.0.0.1");
        assert_eq!(client(&["unknown"], "10.0.0.1"), "10.0.0.1");
    }
}
