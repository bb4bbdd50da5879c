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

/// The allow-list trie key for a CIDR (IPv4 prefixes live under `::ffff:0:0/96`).
pub fn allow_key(net: &IpNet) -> Key<[u8; 16]> {
    match net {
        IpNet::V4(v4) => Key::new(
            96 + u32::from(v4.prefix_len()),
            SourceAddr::from_v4(v4.network().octets()).addr,
        ),
        IpNet::V6(v6) => Key::new(u32::from(v6.prefix_len()), v6.network().octets()),
    }
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
}
