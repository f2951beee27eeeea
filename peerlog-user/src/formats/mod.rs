//! Capture formats: peerlog's and Bitcoin Core's capture files are read
//! and written by [`crate::capture`]; here are the others and the reader
//! over all of them.
//!
//! - [`timeline`]: one time-ordered stream of messages from capture files
//!   or a pcapng file, with peer selection;
//! - [`pcapng`]: captures as pcapng (Wireshark) and back;
//! - [`jsonl`]: the JSON-lines sink of `peerlog trace --jsonl`.

pub mod jsonl;
pub mod pcapng;
pub mod timeline;
