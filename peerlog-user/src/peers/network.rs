//! Bitcoin Core's networks, as its connection tracepoints and
//! `getpeerinfo` name them.

use serde::Serialize;

use crate::address::split_host_port;

/// Bitcoin Core's `Network` enum, as the connection tracepoints report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// `NET_IPV4` (1).
    Ipv4,
    /// `NET_IPV6` (2).
    Ipv6,
    /// `NET_ONION` (3).
    Onion,
    /// `NET_I2P` (4).
    I2p,
    /// `NET_CJDNS` (5).
    Cjdns,
    /// `NET_UNROUTABLE` (0): what bitcoind's connection tracepoints report,
    /// like `getpeerinfo`, for an address outside the public internet
    /// (loopback, RFC 1918, link-local, ...).
    #[serde(rename = "not_publicly_routable")]
    NotPubliclyRoutable,
}

impl Network {
    /// The network for Bitcoin Core's enum value.
    pub fn from_core(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::NotPubliclyRoutable,
            1 => Self::Ipv4,
            2 => Self::Ipv6,
            3 => Self::Onion,
            4 => Self::I2p,
            5 => Self::Cjdns,
            _ => return None,
        })
    }

    /// The network for a name as `getpeerinfo` prints it (`ipv4`, `onion`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().as_str() {
            "ipv4" => Self::Ipv4,
            "ipv6" => Self::Ipv6,
            "onion" | "tor" => Self::Onion,
            "i2p" => Self::I2p,
            "cjdns" => Self::Cjdns,
            "not_publicly_routable" => Self::NotPubliclyRoutable,
            _ => return None,
        })
    }

    /// The name `getpeerinfo` uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ipv4",
            Self::Ipv6 => "ipv6",
            Self::Onion => "onion",
            Self::I2p => "i2p",
            Self::Cjdns => "cjdns",
            Self::NotPubliclyRoutable => "not_publicly_routable",
        }
    }

    /// Infers the network from an address string, for peers whose connection
    /// event peerlog did not see (connected before it attached). CJDNS
    /// addresses are IPv6 in fc00::/8, as Bitcoin Core treats them. Only the
    /// tracepoints tell `not_publicly_routable`: the string gives the
    /// address family.
    pub fn from_addr(addr: &str) -> Option<Self> {
        let (host, _) = split_host_port(addr);
        if host.ends_with(".onion") {
            return Some(Self::Onion);
        }
        if host.ends_with(".i2p") {
            return Some(Self::I2p);
        }
        match host.parse::<std::net::IpAddr>().ok()? {
            std::net::IpAddr::V4(_) => Some(Self::Ipv4),
            std::net::IpAddr::V6(v6) if v6.octets()[0] == 0xfc => Some(Self::Cjdns),
            std::net::IpAddr::V6(_) => Some(Self::Ipv6),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_from_addresses() {
        assert_eq!(Network::from_addr("1.2.3.4:8333"), Some(Network::Ipv4));
        assert_eq!(
            Network::from_addr("[2001:db8::1]:8333"),
            Some(Network::Ipv6)
        );
        assert_eq!(Network::from_addr("[fc32::1]:8333"), Some(Network::Cjdns));
        assert_eq!(Network::from_addr("abc.onion:8333"), Some(Network::Onion));
        assert_eq!(Network::from_addr("abc.b32.i2p:0"), Some(Network::I2p));
        assert_eq!(Network::from_addr("localhost:8333"), None);
        let unroutable = Network::from_core(0).unwrap();
        assert_eq!(Network::from_name(unroutable.name()), Some(unroutable));
    }
}
