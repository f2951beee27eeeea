//! Bitcoin Core's address rate limit, replayed per peer from the messages
//! peerlog sees: how many of the address entries a peer sent went over it.
//!
//! Bitcoin Core (`src/net_processing.cpp`, `ProcessMessage` for
//! `addr`/`addrv2`) gives every peer a token bucket: it starts at 1.0 token
//! when the peer is set up, fills at `MAX_ADDR_RATE_PER_SECOND` (0.1 tokens
//! a second) up to `MAX_ADDR_PROCESSING_TOKEN_BUCKET` (=
//! `MAX_ADDR_TO_SEND`, 1000), and each entry processed takes one token; an
//! entry that finds less than one token is dropped and counted in
//! `getpeerinfo`'s `addr_rate_limited`. Our `getaddr` to the peer adds
//! `MAX_ADDR_TO_SEND` tokens, past the cap, for its answer.
//!
//! What peerlog cannot see, and so does not replay:
//! - the `addr` permission (`-whitelist=addr@…`): Core does not rate-limit
//!   such peers, peerlog counts their entries over the bucket all the same;
//! - which entries Core then keeps (`addr_processed` also leaves out
//!   addresses without useful services and banned ones): not a rate matter;
//! - the exact time Core set the peer up: the bucket starts at the peer's
//!   first message seen, when that is the `version` handshake, or full
//!   (the most a peer can have) for a peer connected before peerlog
//!   attached, whose history is unknown.

/// Tokens a second (`MAX_ADDR_RATE_PER_SECOND` in net_processing.cpp).
pub(super) const MAX_ADDR_RATE_PER_SECOND: f64 = 0.1;
/// Entries an `addr` message may hold, and what our `getaddr` adds to the
/// bucket (`MAX_ADDR_TO_SEND`).
pub(super) const MAX_ADDR_TO_SEND: u64 = 1000;
/// The bucket's cap for the time-based refill
/// (`MAX_ADDR_PROCESSING_TOKEN_BUCKET` = `MAX_ADDR_TO_SEND`).
pub(super) const MAX_ADDR_PROCESSING_TOKEN_BUCKET: f64 = MAX_ADDR_TO_SEND as f64;
/// Tokens of a new peer's bucket (`m_addr_token_bucket{1.0}`).
const INITIAL_TOKENS: f64 = 1.0;

/// One peer's token bucket, as Bitcoin Core keeps it.
#[derive(Debug, Clone, Default)]
pub(super) struct AddrBucket {
    /// Tokens, and when they were last brought up to date (ktime ns); None
    /// before the peer's first message.
    state: Option<(f64, u64)>,
    /// Whether Core would process the peer's address messages yet: it
    /// ignores them before the peer's `verack` (`fSuccessfullyConnected`).
    handshake_done: bool,
}

impl AddrBucket {
    /// Sets the bucket up at the peer's first message seen, at `ktime_ns`:
    /// a `version` (either way) opens the connection, and the bucket starts
    /// as Core's; any other message is of a peer connected before peerlog
    /// attached, whose bucket is taken as full and past its handshake.
    pub(super) fn first_message(&mut self, msg_type: &str, ktime_ns: u64) {
        if self.state.is_some() {
            return;
        }
        if msg_type == "version" {
            self.state = Some((INITIAL_TOKENS, ktime_ns));
        } else {
            self.state = Some((MAX_ADDR_PROCESSING_TOKEN_BUCKET, ktime_ns));
            self.handshake_done = true;
        }
    }

    /// The peer's `verack` came in: Core processes its addresses from now on.
    pub(super) fn verack(&mut self) {
        self.handshake_done = true;
    }

    /// We sent the peer `getaddr`: room for its answer, past the cap.
    pub(super) fn getaddr_sent(&mut self) {
        if let Some((tokens, _)) = &mut self.state {
            *tokens += MAX_ADDR_TO_SEND as f64;
        }
    }

    /// The peer's `addr`/`addrv2` of `entries` entries was processed at
    /// `ktime_ns`; returns how many of them went over the rate limit.
    /// `addr_relay` is false for block-relay-only connections, whose
    /// address messages Core ignores.
    pub(super) fn addr(&mut self, entries: u64, ktime_ns: u64, addr_relay: bool) -> u64 {
        // Ignored before the handshake and on block-relay-only connections;
        // more than MAX_ADDR_TO_SEND entries is misbehaviour, dropped whole.
        if !self.handshake_done || !addr_relay || entries > MAX_ADDR_TO_SEND {
            return 0;
        }
        let Some((tokens, since)) = &mut self.state else {
            return 0;
        };
        if *tokens < MAX_ADDR_PROCESSING_TOKEN_BUCKET {
            let elapsed_s = ktime_ns.saturating_sub(*since) as f64 / 1e9;
            *tokens = (*tokens + elapsed_s * MAX_ADDR_RATE_PER_SECOND)
                .min(MAX_ADDR_PROCESSING_TOKEN_BUCKET);
        }
        *since = ktime_ns;
        // Core takes one token per entry while at least one is left.
        let taken = (tokens.floor() as u64).min(entries);
        *tokens -= taken as f64;
        entries - taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn handshaken() -> AddrBucket {
        let mut b = AddrBucket::default();
        b.first_message("version", 0);
        b.verack();
        b
    }

    #[test]
    fn a_new_peer_has_one_token_and_earns_one_every_ten_seconds() {
        let mut b = handshaken();
        // One token at the start: 9 of 10 entries over the limit.
        assert_eq!(b.addr(10, 0, true), 9);
        // 100 s later, 10 tokens.
        assert_eq!(b.addr(15, 100 * S, true), 5);
        // The refill stops at the cap: a year earns 1000.
        assert_eq!(b.addr(1000, 100 * S + 365 * 24 * 3600 * S, true), 0);
        assert_eq!(b.addr(1, 100 * S + 365 * 24 * 3600 * S, true), 1);
    }

    #[test]
    fn getaddr_makes_room_for_its_answer_past_the_cap() {
        let mut b = handshaken();
        b.getaddr_sent();
        // 1 + 1000 tokens: a full answer passes, and one more entry.
        assert_eq!(b.addr(1000, S, true), 0);
        assert_eq!(b.addr(1000, 2 * S, true), 999);
        // Three full messages on a fresh peer: all but one entry over.
        let mut flood = handshaken();
        let over: u64 = (0..3).map(|i| flood.addr(1000, i * S, true)).sum();
        assert_eq!(over, 2999);
    }

    #[test]
    fn messages_core_ignores_take_no_tokens() {
        let mut b = AddrBucket::default();
        b.first_message("version", 0);
        // Before verack.
        assert_eq!(b.addr(500, S, true), 0);
        b.verack();
        // Block-relay-only, and over MAX_ADDR_TO_SEND.
        assert_eq!(b.addr(500, S, false), 0);
        assert_eq!(b.addr(1001, S, true), 0);
        // The one token is still there.
        assert_eq!(b.addr(2, S, true), 1);
    }

    #[test]
    fn a_peer_seen_mid_connection_starts_full() {
        let mut b = AddrBucket::default();
        b.first_message("inv", 5 * S);
        assert_eq!(b.addr(1000, 5 * S, true), 0);
        assert_eq!(b.addr(10, 5 * S, true), 10);
        // A later version does not reset it.
        b.first_message("version", 6 * S);
        assert_eq!(b.addr(1, 6 * S, true), 1);
    }
}
