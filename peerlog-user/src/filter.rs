//! The peer filter language, the same for capture, stats and every other
//! command that selects peers.
//!
//! A filter is one term; several filters (repeated `--peer`) select a peer
//! when any of them matches. Terms:
//!
//! | term | selects |
//! |---|---|
//! | `5`, `id=5` | peer id 5 |
//! | `127.0.0.1`, `[::1]`, `addr=1.2.3.4` | that address, any port |
//! | `127.0.0.1:18444`, `[::1]:8333` | that address and port |
//! | `10.0.0.0/8`, `2001:db8::/32` | addresses in the CIDR range |
//! | `abc…xyz.onion`, `host=name` | that host name, any port |
//! | `ipv4`, `ipv6`, `onion`, `i2p`, `cjdns`, `not_publicly_routable`, `net=…` | the peer's network |
//! | `inbound`, `outbound-full-relay`, `block-relay-only`, `manual`, `feeler`, `addr-fetch`, `private-broadcast`, `type=…` | the connection type |
//! | `outbound`, `type=outbound` | every connection type but `inbound` |

use std::{fmt, net::IpAddr, str::FromStr};

use crate::address::split_host_port;
use crate::peers::{Network, PeerIdentity};

/// Connection types of Bitcoin Core (`ConnectionTypeAsString`).
pub const CONNECTION_TYPES: [&str; 7] = [
    "inbound",
    "outbound-full-relay",
    "manual",
    "feeler",
    "block-relay-only",
    "addr-fetch",
    "private-broadcast",
];

/// One filter term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFilter {
    /// A peer id.
    Id(i64),
    /// An IP address, any port.
    Ip(IpAddr),
    /// An IP address and port.
    IpPort(IpAddr, u16),
    /// A CIDR range.
    Cidr(IpAddr, u8),
    /// A host name (onion, I2P, DNS), any port.
    Host(String),
    /// A network.
    Network(Network),
    /// A connection type, exactly.
    ConnType(String),
    /// Any outbound connection type.
    Outbound,
}

/// A filter term that does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError(String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FilterError {}

impl FromStr for PeerFilter {
    type Err = FilterError;

    fn from_str(term: &str) -> Result<Self, Self::Err> {
        let term = term.trim();
        let err = |why: &str| {
            FilterError(format!(
                "bad peer filter {term:?}: {why} (expected a peer id, an address, a CIDR range, \
                 a network such as ipv4/onion, or a connection type such as inbound)"
            ))
        };
        if let Some((key, value)) = term.split_once('=') {
            return match key {
                "id" => value
                    .parse()
                    .map(Self::Id)
                    .map_err(|_| err("not a peer id")),
                "addr" => parse_address(value).ok_or_else(|| err("not an address")),
                "host" => Ok(Self::Host(value.to_ascii_lowercase())),
                "net" | "network" => Network::from_name(value)
                    .map(Self::Network)
                    .ok_or_else(|| err("unknown network")),
                "type" | "conn_type" => {
                    parse_conn_type(value).ok_or_else(|| err("unknown connection type"))
                }
                _ => Err(err("unknown key")),
            };
        }
        if let Ok(id) = term.parse::<i64>() {
            return Ok(Self::Id(id));
        }
        if let Some(net) = Network::from_name(term) {
            return Ok(Self::Network(net));
        }
        if let Some(ct) = parse_conn_type(term) {
            return Ok(ct);
        }
        if let Some(addr) = parse_address(term) {
            return Ok(addr);
        }
        if term.contains('.') && !term.contains(['/', ' ']) {
            let host = term.rsplit_once(':').map_or(term, |(h, _)| h);
            return Ok(Self::Host(host.to_ascii_lowercase()));
        }
        Err(err("not understood"))
    }
}

impl PeerFilter {
    /// Whether this term selects `peer`.
    pub fn matches(&self, peer: &PeerIdentity<'_>) -> bool {
        match self {
            Self::Id(id) => peer.id == *id,
            Self::Network(net) => peer.network() == Some(*net),
            Self::ConnType(ct) => peer.conn_type == ct,
            Self::Outbound => peer.conn_type != "inbound" && !peer.conn_type.is_empty(),
            Self::Host(host) => split_host_port(peer.addr).0.eq_ignore_ascii_case(host),
            Self::Ip(ip) => peer_ip(peer.addr).is_some_and(|(a, _)| a == *ip),
            Self::IpPort(ip, port) => peer_ip(peer.addr) == Some((*ip, Some(*port))),
            Self::Cidr(net, bits) => {
                peer_ip(peer.addr).is_some_and(|(a, _)| in_cidr(a, *net, *bits))
            }
        }
    }
}

impl fmt::Display for PeerFilter {
    /// The term in the form that parses back to it (`id=5`, `net=ipv4`, ...).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "id={id}"),
            Self::Ip(ip) => write!(f, "addr={ip}"),
            Self::IpPort(std::net::IpAddr::V6(ip), port) => write!(f, "addr=[{ip}]:{port}"),
            Self::IpPort(ip, port) => write!(f, "addr={ip}:{port}"),
            Self::Cidr(ip, bits) => write!(f, "addr={ip}/{bits}"),
            Self::Host(host) => write!(f, "host={host}"),
            Self::Network(net) => write!(f, "net={}", net.name()),
            Self::ConnType(ct) => write!(f, "type={ct}"),
            Self::Outbound => f.write_str("outbound"),
        }
    }
}

/// A set of filter terms: empty selects every peer, otherwise any term must match.
#[derive(Debug, Clone, Default)]
pub struct PeerSelector {
    terms: Vec<PeerFilter>,
}

impl PeerSelector {
    /// A selector of these terms.
    pub fn new(terms: Vec<PeerFilter>) -> Self {
        Self { terms }
    }

    /// The terms.
    pub fn terms(&self) -> &[PeerFilter] {
        &self.terms
    }

    /// True when every peer is selected.
    pub fn selects_all(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether `peer` is selected.
    pub fn matches(&self, peer: &PeerIdentity<'_>) -> bool {
        self.terms.is_empty() || self.terms.iter().any(|t| t.matches(peer))
    }
}

fn parse_conn_type(s: &str) -> Option<PeerFilter> {
    if s == "outbound" {
        return Some(PeerFilter::Outbound);
    }
    CONNECTION_TYPES
        .contains(&s)
        .then(|| PeerFilter::ConnType(s.to_string()))
}

fn parse_address(s: &str) -> Option<PeerFilter> {
    if let Some((net, bits)) = s.split_once('/') {
        let ip: IpAddr = net.trim_matches(['[', ']']).parse().ok()?;
        let bits: u8 = bits.parse().ok()?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        return (bits <= max).then_some(PeerFilter::Cidr(ip, bits));
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Some(PeerFilter::Ip(ip));
    }
    match peer_ip(s)? {
        (ip, Some(port)) => Some(PeerFilter::IpPort(ip, port)),
        (ip, None) => Some(PeerFilter::Ip(ip)),
    }
}

fn peer_ip(addr: &str) -> Option<(IpAddr, Option<u16>)> {
    let (host, port) = split_host_port(addr);
    Some((host.parse().ok()?, port))
}

fn in_cidr(addr: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer<'a>(id: i64, addr: &'a str, conn_type: &'a str) -> PeerIdentity<'a> {
        PeerIdentity {
            id,
            addr,
            conn_type,
            network: None,
        }
    }

    fn f(s: &str) -> PeerFilter {
        s.parse().unwrap()
    }

    #[test]
    fn terms_parse_and_match() {
        let v4 = peer(3, "10.1.2.3:8333", "inbound");
        let v6 = peer(4, "[2001:db8::1]:8333", "outbound-full-relay");
        let onion = peer(
            5,
            "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion:8333",
            "block-relay-only",
        );
        assert!(f("3").matches(&v4) && !f("id=4").matches(&v4));
        assert!(f("10.1.2.3").matches(&v4) && f("10.1.2.3:8333").matches(&v4));
        assert!(!f("10.1.2.3:8334").matches(&v4));
        assert!(f("10.0.0.0/8").matches(&v4) && !f("11.0.0.0/8").matches(&v4));
        assert!(f("0.0.0.0/0").matches(&v4));
        assert!(f("2001:db8::/32").matches(&v6) && f("[2001:db8::1]").matches(&v6));
        assert!(f("[2001:db8::1]:8333").matches(&v6));
        assert!(f("ipv4").matches(&v4) && f("net=ipv6").matches(&v6) && f("onion").matches(&onion));
        assert!(f("inbound").matches(&v4) && !f("inbound").matches(&v6));
        assert!(
            f("outbound").matches(&v6)
                && f("outbound").matches(&onion)
                && !f("outbound").matches(&v4)
        );
        assert!(f("type=block-relay-only").matches(&onion));
        assert!(
            f("pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion").matches(&onion)
        );
    }

    #[test]
    fn terms_print_as_they_parse() {
        for term in [
            "id=5",
            "addr=10.1.2.3",
            "addr=10.1.2.3:8333",
            "addr=[2001:db8::1]:8333",
            "addr=2001:db8::/32",
            "host=abc.onion",
            "net=onion",
            "type=block-relay-only",
            "outbound",
        ] {
            assert_eq!(f(term).to_string(), term);
            assert_eq!(f(&f(term).to_string()), f(term));
        }
    }

    #[test]
    fn bad_terms_say_why() {
        for bad in ["id=x", "net=mars", "type=sideways", "what", "10.0.0.0/33"] {
            let e = bad.parse::<PeerFilter>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn selector_is_any_of() {
        let s = PeerSelector::new(vec![f("1"), f("onion")]);
        assert!(s.matches(&peer(1, "1.2.3.4:1", "inbound")));
        assert!(!s.matches(&peer(2, "1.2.3.4:1", "inbound")));
        assert!(PeerSelector::default().matches(&peer(2, "", "")));
    }
}
