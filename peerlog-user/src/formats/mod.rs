//! The capture formats, each in its room, and the reader over all of
//! them.
//!
//! - [`capture`]: peerlog's and Bitcoin Core's `-capturemessages` files
//!   (records, directory layout, writer, readers);
//! - [`timeline`]: one time-ordered stream of messages from capture files
//!   or a pcapng file, with peer selection;
//! - [`pcapng`]: captures as pcapng (Wireshark) and back;
//! - [`jsonl`]: the JSON-lines sink of `peerlog trace --jsonl`.

pub mod capture;
pub mod jsonl;
pub mod pcapng;
pub mod timeline;
