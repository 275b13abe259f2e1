//! Which IP addresses are globally reachable: the rule table of the IANA special-purpose
//! address registries, kept as data.
//!
//! Sources, as published by IANA (entries up to RFC 9780):
//! - IPv4 Special-Purpose Address Registry,
//!   <https://www.iana.org/assignments/iana-ipv4-special-registry/>;
//! - IPv6 Special-Purpose Address Registry,
//!   <https://www.iana.org/assignments/iana-ipv6-special-registry/>;
//! - IPv6 Global Unicast Address Assignments (`2000::/3`, RFC 4291 section 2.4): every other
//!   IPv6 block is reserved, local or multicast.
//!
//! A block whose "Globally Reachable" column is `False` or `N/A` is refused, except the
//! registry's globally reachable entries inside it. IPv6 forms that carry an IPv4 address
//! (IPv4-mapped `::ffff:0:0/96` and the well-known NAT64 prefix `64:ff9b::/96`) are judged by
//! that IPv4 address, since that is where a connection ends up. This is the rule of the
//! standard library's unstable `Ipv4Addr::is_global` / `Ipv6Addr::is_global`, with multicast
//! refused as well (a TCP client has no business there).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// One registry entry: the block's first address, its prefix length and its name.
struct Block {
    first: IpAddr,
    prefix: u32,
    name: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u32, name: &'static str) -> Block {
    Block {
        first: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        prefix,
        name,
    }
}

const fn v6(segments: [u16; 8], prefix: u32, name: &'static str) -> Block {
    let [a, b, c, d, e, f, g, h] = segments;
    Block {
        first: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
        prefix,
        name,
    }
}

impl Block {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.first, ip) {
            (IpAddr::V4(first), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
                ip.to_bits() & mask == first.to_bits()
            }
            (IpAddr::V6(first), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
                ip.to_bits() & mask == first.to_bits()
            }
            _ => false,
        }
    }

    /// The block's last address.
    #[cfg(test)]
    fn last(&self) -> IpAddr {
        match self.first {
            IpAddr::V4(first) => IpAddr::V4(Ipv4Addr::from_bits(
                first.to_bits() | u32::MAX.checked_shr(self.prefix).unwrap_or(0),
            )),
            IpAddr::V6(first) => IpAddr::V6(Ipv6Addr::from_bits(
                first.to_bits() | u128::MAX.checked_shr(self.prefix).unwrap_or(0),
            )),
        }
    }
}

/// IPv4 blocks that are not globally reachable.
#[rustfmt::skip]
const V4_NOT_GLOBAL: &[Block] = &[
    v4(0, 0, 0, 0, 8, "\"this network\" (RFC 791)"),
    v4(10, 0, 0, 0, 8, "private use (RFC 1918)"),
    v4(100, 64, 0, 0, 10, "shared address space (RFC 6598)"),
    v4(127, 0, 0, 0, 8, "loopback (RFC 1122)"),
    v4(169, 254, 0, 0, 16, "link local (RFC 3927)"),
    v4(172, 16, 0, 0, 12, "private use (RFC 1918)"),
    v4(192, 0, 0, 0, 24, "IETF protocol assignments (RFC 6890)"),
    v4(192, 0, 2, 0, 24, "documentation, TEST-NET-1 (RFC 5737)"),
    v4(
        192,
        88,
        99,
        0,
        24,
        "deprecated 6to4 relay anycast (RFC 7526)",
    ),
    v4(192, 168, 0, 0, 16, "private use (RFC 1918)"),
    v4(198, 18, 0, 0, 15, "benchmarking (RFC 2544)"),
    v4(198, 51, 100, 0, 24, "documentation, TEST-NET-2 (RFC 5737)"),
    v4(203, 0, 113, 0, 24, "documentation, TEST-NET-3 (RFC 5737)"),
    v4(224, 0, 0, 0, 4, "multicast (RFC 5771; not in the registry)"),
    v4(240, 0, 0, 0, 4, "reserved (RFC 1112)"),
    v4(255, 255, 255, 255, 32, "limited broadcast (RFC 919)"),
];

/// Globally reachable IPv4 entries inside [`V4_NOT_GLOBAL`].
#[rustfmt::skip]
const V4_GLOBAL: &[Block] = &[
    v4(192, 0, 0, 9, 32, "Port Control Protocol anycast (RFC 7723)"),
    v4(192, 0, 0, 10, 32, "TURN anycast (RFC 8155)"),
    v4(192, 88, 99, 2, 32, "6a44 relay anycast (RFC 6751)"),
];

/// IPv6 global unicast space; nothing outside it is globally reachable.
const V6_GLOBAL_UNICAST: Block = v6(
    [0x2000, 0, 0, 0, 0, 0, 0, 0],
    3,
    "outside IPv6 global unicast (RFC 4291)",
);

/// IPv6 blocks inside [`V6_GLOBAL_UNICAST`] that are not globally reachable. (The registry's
/// other entries, such as `::1`, `fc00::/7`, `fe80::/10`, `64:ff9b:1::/48`, `100::/64` and
/// `5f00::/16`, lie outside it.)
#[rustfmt::skip]
const V6_NOT_GLOBAL: &[Block] = &[
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "IETF protocol assignments (RFC 2928; TEREDO, ORCHID...)"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation (RFC 3849)"),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4 (RFC 3056)"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation (RFC 9637)"),
];

/// Globally reachable IPv6 entries inside [`V6_NOT_GLOBAL`].
#[rustfmt::skip]
const V6_GLOBAL: &[Block] = &[
    v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128, "PCP anycast (RFC 7723)"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128, "TURN anycast (RFC 8155)"),
    v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128, "DNS-SD SRP anycast (RFC 9665)"),
    v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32, "AMT (RFC 7450)"),
    v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48, "AS112-v6 (RFC 7535)"),
    v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28, "ORCHIDv2 (RFC 7343)"),
    v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28, "drone remote ID DETs (RFC 9374)"),
];

/// Why an address is not globally reachable (the name of its block), or `None` when it is.
pub(crate) fn not_global_because(ip: IpAddr) -> Option<&'static str> {
    let ip = canonical(ip);
    match ip {
        IpAddr::V4(_) => refusing_block(V4_NOT_GLOBAL, V4_GLOBAL, ip),
        IpAddr::V6(_) if !V6_GLOBAL_UNICAST.contains(ip) => Some(V6_GLOBAL_UNICAST.name),
        IpAddr::V6(_) => refusing_block(V6_NOT_GLOBAL, V6_GLOBAL, ip),
    }
}

/// The block of `refused` that holds `ip`, unless an entry of `global` holds it too.
fn refusing_block(refused: &[Block], global: &[Block], ip: IpAddr) -> Option<&'static str> {
    if global.iter().any(|block| block.contains(ip)) {
        return None;
    }
    refused
        .iter()
        .find(|block| block.contains(ip))
        .map(|block| block.name)
}

/// The address a connection to `ip` ends up at: the IPv4 address inside an IPv4-mapped
/// (`::ffff:a.b.c.d`) or NAT64 (`64:ff9b::a.b.c.d`) address, otherwise `ip` itself.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    match v6.segments() {
        [0x64, 0xff9b, 0, 0, 0, 0, high, low] => {
            IpAddr::V4(Ipv4Addr::from_bits(u32::from(high) << 16 | u32::from(low)))
        }
        _ => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_global(ip: IpAddr) -> bool {
        not_global_because(ip).is_none()
    }

    fn global(address: &str) -> bool {
        is_global(address.parse().unwrap())
    }

    /// The first and last address of every refused block are refused, and so is every
    /// address between them that no exception names.
    #[test]
    fn every_block_of_the_table_is_refused_from_end_to_end() {
        for block in V4_NOT_GLOBAL.iter().chain(V6_NOT_GLOBAL) {
            for ip in [block.first, block.last()] {
                assert!(!is_global(ip), "{ip} in {}", block.name);
            }
        }
    }

    #[test]
    fn the_registrys_globally_reachable_entries_are_allowed() {
        for block in V4_GLOBAL.iter().chain(V6_GLOBAL) {
            for ip in [block.first, block.last()] {
                assert!(is_global(ip), "{ip} in {}", block.name);
            }
        }
    }

    #[test]
    fn special_purpose_addresses_are_not_global() {
        for address in [
            // IPv4, an entry of each registry block and the edges around them.
            "0.0.0.0",
            "0.255.255.255",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.0.170",
            "192.0.2.1",
            "192.0.2.255",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "254.1.2.3",
            "255.255.255.255",
            // IPv6 outside global unicast.
            "::",
            "::1",
            "::7f00:1",
            "64:ff9b:1::1",
            "100::1",
            "100:0:0:1::1",
            "5f00::1",
            "fc00::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            // IPv6 special blocks inside global unicast.
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:2::1",
            "2001:10::1",
            "2001:1ff:ffff::1",
            "2001:db8::1",
            "2002:c000:0201::1",
            "3fff::1",
            "3fff:fff::1",
            // IPv4 inside IPv6, judged by the IPv4 address.
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::ffff:192.0.2.1",
            "::ffff:198.18.0.1",
            "::ffff:240.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::c000:201",
        ] {
            assert!(!global(address), "{address} must not be global");
        }
    }

    #[test]
    fn public_addresses_are_global() {
        for address in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.0.9",
            "192.0.0.10",
            "192.0.1.1",
            "192.0.3.0",
            "192.31.196.1",
            "192.52.193.1",
            "192.88.99.2",
            "192.169.0.1",
            "192.175.48.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "2001:1::1",
            "2001:1::3",
            "2001:3::1",
            "2001:4:112::1",
            "2001:20::1",
            "2001:30::1",
            "2001:200::1",
            "2620:4f:8000::1",
            "3fff:1000::1",
            "2003::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(global(address), "{address} must be global");
        }
    }

    #[test]
    fn embedded_ipv4_addresses_are_what_is_judged() {
        let canonical = |address: &str| canonical(address.parse().unwrap()).to_string();
        assert_eq!(canonical("::ffff:192.0.2.2"), "192.0.2.2");
        assert_eq!(canonical("64:ff9b::c000:202"), "192.0.2.2");
        assert_eq!(canonical("2001:db8::1"), "2001:db8::1");
        assert_eq!(canonical("10.0.0.1"), "10.0.0.1");
    }
}
