//! The pcapng block and option layout (pcapng draft, IETF opsawg),
//! shared by the writer and the reader.

use std::io::{self, Write};

/// The first four bytes of a pcapng file: the Section Header Block type.
pub const SECTION_HEADER_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

pub(crate) const BLOCK_SECTION_HEADER: u32 = 0x0a0d_0d0a;
pub(crate) const BLOCK_INTERFACE_DESCRIPTION: u32 = 1;
pub(crate) const BLOCK_ENHANCED_PACKET: u32 = 6;
/// Byte-order magic of the Section Header Block.
pub(crate) const BYTE_ORDER_MAGIC: u32 = 0x1a2b_3c4d;

pub(crate) const OPT_END: u16 = 0;
pub(crate) const OPT_COMMENT: u16 = 1;
pub(crate) const SHB_USERAPPL: u16 = 4;
pub(crate) const IF_NAME: u16 = 2;
pub(crate) const IF_TSRESOL: u16 = 9;
pub(crate) const EPB_FLAGS: u16 = 2;
/// `epb_flags` direction bits: received by, or sent from, the node.
pub(crate) const EPB_INBOUND: u32 = 1;
pub(crate) const EPB_OUTBOUND: u32 = 2;

/// Link types read and written (tcpdump.org's LINKTYPE_* values).
pub(crate) const LINKTYPE_NULL: u16 = 0;
pub(crate) const LINKTYPE_ETHERNET: u16 = 1;
pub(crate) const LINKTYPE_RAW: u16 = 101;
pub(crate) const LINKTYPE_LINUX_SLL: u16 = 113;
pub(crate) const LINKTYPE_IPV4: u16 = 228;
pub(crate) const LINKTYPE_IPV6: u16 = 229;

pub(crate) const TCP_SYN: u8 = 0x02;
pub(crate) const TCP_RST: u8 = 0x04;
pub(crate) const TCP_PSH: u8 = 0x08;
pub(crate) const TCP_ACK: u8 = 0x10;

/// Appends one pcapng option, padded to 32 bits.
pub(crate) fn put_option(buf: &mut Vec<u8>, code: u16, value: &[u8]) {
    buf.extend_from_slice(&code.to_le_bytes());
    buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len().next_multiple_of(4), 0);
}

/// Writes one block: type, total length, body padded to 32 bits, total length.
pub(crate) fn write_block<W: Write>(out: &mut W, block_type: u32, body: &[u8]) -> io::Result<()> {
    let padded = body.len().next_multiple_of(4);
    let total = u32::try_from(12 + padded)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pcapng block too large"))?;
    out.write_all(&block_type.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(body)?;
    out.write_all(&[0u8; 3][..padded - body.len()])?;
    out.write_all(&total.to_le_bytes())
}

/// Little- or big-endian field reads, as the section's byte-order magic says.
#[derive(Clone, Copy)]
pub(crate) struct Endian {
    pub(crate) big: bool,
}

impl Endian {
    pub(crate) fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        if self.big {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }

    pub(crate) fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        if self.big {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }
}

/// The options of a block, until `opt_endofopt` or the end of the bytes.
pub(crate) fn options(mut bytes: &[u8], endian: Endian) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    while bytes.len() >= 4 {
        let code = endian.u16(&bytes[..2]);
        let len = usize::from(endian.u16(&bytes[2..4]));
        if code == OPT_END {
            break;
        }
        let Some(value) = bytes.get(4..4 + len) else {
            break;
        };
        found.push((code, value));
        bytes = bytes.get((4 + len).next_multiple_of(4)..).unwrap_or(&[]);
    }
    found
}
