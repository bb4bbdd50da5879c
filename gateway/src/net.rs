//! Address conversions between std types and the kernel's map keys.
use std::net::{IpAddr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use gateway_common::SourceAddr;
use ipnet::IpNet;

/// The map key for a source: IPv6 as is, IPv4 mapped to `::ffff:a.b.c.d`.
pub fn source_key(ip: IpAddr) -> SourceAddr {
    match ip {
        IpAddr::V4(v4) => SourceAddr::from_v4(v4.octets()),
        IpAddr::V6(v6) => SourceAddr { addr: v6.octets() },
    }
}

/// The address a map key stands for; IPv4-mapped keys come back as IPv4.
pub fn source_ip(key: &SourceAddr) -> IpAddr {
    Ipv6Addr::from(key.addr).to_canonical()
}

/// The trie key for a CIDR (allow-list, prefix bans and budgets; IPv4
/// prefixes live under `::ffff:0:0/96`).
pub fn allow_key(net: &IpNet) -> Key<[u8; 16]> {
    match net {
        IpNet::V4(v4) => Key::new(
            96 + u32::from(v4.prefix_len()),
            SourceAddr::from_v4(v4.network().octets()).addr,
        ),
        IpNet::V6(v6) => Key::new(u32::from(v6.prefix_len()), v6.network().octets()),
    }
}

/// The CIDR a trie key stands for; keys under `::ffff:0:0/96` come back as IPv4.
pub fn key_net(key: &Key<[u8; 16]>) -> IpNet {
    let len = u8::try_from(key.prefix_len().min(128)).unwrap_or(128);
    canonical_net(IpNet::V6(
        ipnet::Ipv6Net::new_assert(Ipv6Addr::from(key.data()), len).trunc(),
    ))
}

/// `net` with its host bits cleared, an IPv4-mapped IPv6 prefix of at
/// least /96 as the IPv4 prefix it covers.
pub fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (IpAddr::V4(v4), Some(len)) =
            (v6.network().to_canonical(), v6.prefix_len().checked_sub(96))
        {
            return IpNet::V4(ipnet::Ipv4Net::new_assert(v4, len));
        }
    }
    net.trunc()
}

/// Why the CLI refused an address or a CIDR.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "expected an address (203.0.113.7, 2001:db8::7) or a CIDR (203.0.113.0/24, \
         2001:db8::/64; at most /32 or /128)"
    )]
    Syntax,
    #[error("{0} would ban every IPv4 source; refusing a ban that wide")]
    EveryV4(IpNet),
    #[error(
        "{0} also covers every IPv4 source (they are mapped under ::ffff:0:0/96); \
         refusing a ban that wide"
    )]
    CoversV4(IpNet),
}

/// An address (`203.0.113.7`, one host) or a CIDR (`2001:db8::/64`), as
/// the CLI takes them; host bits are cleared.
pub fn parse_net(text: &str) -> Result<IpNet, NetError> {
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => IpNet::from(text.parse::<IpAddr>().map_err(|_| NetError::Syntax)?),
    };
    Ok(canonical_net(net))
}

/// [`parse_net`] for a ban: not one that drops every IPv4 source, which is
/// a typo rather than a policy (`0.0.0.0/0`, or an IPv6 prefix such as
/// `::/64` that holds the IPv4-mapped range the kernel keys IPv4 under).
pub fn parse_ban_net(text: &str) -> Result<IpNet, NetError> {
    let net = parse_net(text)?;
    match net {
        _ if !covers_every_v4(&net) => Ok(net),
        IpNet::V4(_) => Err(NetError::EveryV4(net)),
        IpNet::V6(_) => Err(NetError::CoversV4(net)),
    }
}

/// Whether a ban of `net` (canonical) in the kernel drops every IPv4
/// source: `0.0.0.0/0`, or an IPv6 prefix holding `::ffff:0:0/96`.
pub fn covers_every_v4(net: &IpNet) -> bool {
    match net {
        IpNet::V4(v4) => v4.prefix_len() == 0,
        IpNet::V6(v6) => v6.contains(&Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0)),
    }
}

/// Whether `net` is one address (a /32 or /128): such bans and budgets
/// live in the exact-address maps.
pub fn is_host(net: &IpNet) -> bool {
    net.prefix_len() == net.max_prefix_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_maps_into_v6_and_back() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let key = source_key(ip);
        assert_eq!(
            Ipv6Addr::from(key.addr),
            "::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(source_ip(&key), ip);
    }

    #[test]
    fn v6_round_trips() {
        let ip: IpAddr = "fd00::2".parse().unwrap();
        assert_eq!(source_ip(&source_key(ip)), ip);
    }

    #[test]
    fn allow_keys_nest_v4_under_mapped_prefix() {
        let key = allow_key(&"192.168.0.0/16".parse().unwrap());
        assert_eq!(key.prefix_len(), 112);
        assert_eq!(&key.data()[10..14], &[0xff, 0xff, 192, 168]);
        let key = allow_key(&"fd00:1::/32".parse().unwrap());
        assert_eq!(key.prefix_len(), 32);
    }

    #[test]
    fn nets_parse_canonically_and_round_trip_through_trie_keys() {
        for (text, shown) in [
            ("2001:db8::5/64", "2001:db8::/64"),
            ("203.0.113.9/24", "203.0.113.0/24"),
            ("::ffff:203.0.113.0/120", "203.0.113.0/24"),
            ("10.0.0.1", "10.0.0.1/32"),
            ("fd00::1", "fd00::1/128"),
        ] {
            let net = parse_net(text).unwrap();
            assert_eq!(net.to_string(), shown, "{text}");
            assert_eq!(key_net(&allow_key(&net)), net, "{text}");
        }
        assert!(is_host(&parse_net("10.0.0.1").unwrap()));
        assert!(!is_host(&parse_net("10.0.0.0/24").unwrap()));
        assert!(parse_net("10.0.0.0/33").is_err());
    }

    #[test]
    fn a_ban_of_every_ipv4_source_is_refused() {
        for text in ["0.0.0.0/0", "::/0", "::/64", "::/80", "::ffff:0:0/96"] {
            let error = parse_ban_net(text).unwrap_err().to_string();
            assert!(error.contains("every IPv4 source"), "{text}: {error}");
        }
        for text in ["0.0.0.0/1", "10.0.0.0/8", "2000::/3", "::ffff:10.0.0.0/104"] {
            assert!(parse_ban_net(text).is_ok(), "{text}");
        }
        let error = parse_net("10.0.0.0/33").unwrap_err().to_string();
        assert!(error.contains("at most /32"), "{error}");
    }
}
