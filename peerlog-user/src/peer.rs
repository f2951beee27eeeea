//! What peerlog knows about each peer of the traced node.

use std::collections::BTreeMap;

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
}

impl Network {
    /// The network for Bitcoin Core's enum value.
    pub fn from_core(v: u32) -> Option<Self> {
        Some(match v {
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
        }
    }

    /// Infers the network from an address string, for peers whose connection
    /// event peerlog did not see (connected before it attached). CJDNS
    /// addresses are IPv6 in fc00::/8, as Bitcoin Core treats them.
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

/// The facts a peer filter looks at.
#[derive(Debug, Clone, Copy)]
pub struct PeerIdentity<'a> {
    /// Peer id.
    pub id: i64,
    /// `addr:port` as bitcoind names the peer.
    pub addr: &'a str,
    /// Connection type.
    pub conn_type: &'a str,
    /// Network, when a connection event told it.
    pub network: Option<Network>,
}

impl PeerIdentity<'_> {
    /// The network, told or inferred from the address.
    pub fn network(&self) -> Option<Network> {
        self.network.or_else(|| Network::from_addr(self.addr))
    }
}

/// Message and byte counts of one direction.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Traffic {
    /// Messages.
    pub msgs: u64,
    /// Payload bytes (without the 24-byte v1 header, which BIP324 doesn't have).
    pub bytes: u64,
}

impl Traffic {
    /// Accounts one message of `bytes` payload bytes.
    pub fn add(&mut self, bytes: u64) {
        self.msgs += 1;
        self.bytes += bytes;
    }
}

/// One peer of the traced node.
#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    /// Bitcoin Core's peer id.
    pub id: i64,
    /// Address as bitcoind names it (`m_addr_name`).
    pub addr: String,
    /// Connection type.
    pub conn_type: String,
    /// Network, if known.
    pub network: Option<Network>,
    /// Connect time in unix seconds: from the connection tracepoints, or the
    /// first message peerlog saw when it attached to an established peer.
    pub connected_at: u64,
    /// Whether `connected_at` is the real connect time.
    pub connected_at_known: bool,
    /// Whether the connection has been closed.
    pub closed: bool,
    /// Whether the peer filter selected this peer for capture.
    pub selected: bool,
    /// Times `net:misbehaving_connection` fired for the peer.
    pub misbehaving: u64,
}

impl Peer {
    /// The identity filters match against.
    pub fn identity(&self) -> PeerIdentity<'_> {
        PeerIdentity {
            id: self.id,
            addr: &self.addr,
            conn_type: &self.conn_type,
            network: self.network,
        }
    }
}

/// Every peer seen, by id.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: BTreeMap<i64, Peer>,
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The peer, created from what an event says if it is new. The bool is
    /// true when it was created.
    pub fn get_or_insert(
        &mut self,
        id: i64,
        addr: &str,
        conn_type: &str,
        first_seen_unix: u64,
    ) -> (&mut Peer, bool) {
        let mut created = false;
        let peer = self.peers.entry(id).or_insert_with(|| {
            created = true;
            Peer {
                id,
                addr: addr.to_string(),
                conn_type: conn_type.to_string(),
                network: Network::from_addr(addr),
                connected_at: first_seen_unix,
                connected_at_known: false,
                closed: false,
                selected: true,
                misbehaving: 0,
            }
        });
        (peer, created)
    }

    /// The peer with this id.
    pub fn get(&self, id: i64) -> Option<&Peer> {
        self.peers.get(&id)
    }

    /// The peer with this id, to update.
    pub fn get_mut(&mut self, id: i64) -> Option<&mut Peer> {
        self.peers.get_mut(&id)
    }

    /// All peers, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    /// Number of peers seen.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// True when no peer was seen.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
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
    }
}
