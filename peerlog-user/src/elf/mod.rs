//! What peerlog reads from bitcoind's executable: its USDT probes
//! ([`usdt`]), the kernel's and bitcoind's type information ([`btf`],
//! [`layout`] from DWARF), and where that debug information lives
//! ([`debuginfo`]: debug links, build ids, compressed sections).

pub mod btf;
pub mod debuginfo;
pub mod layout;
pub mod usdt;
