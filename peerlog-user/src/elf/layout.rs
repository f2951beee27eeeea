//! bitcoind's `CNode` as its DWARF describes it, and reading the node's own
//! per-peer counters out of a running bitcoind.
//!
//! `getpeerinfo`'s `bytesrecv` and `bytessent` are `CNode::nRecvBytes` and
//! `CNode::nSendBytes`, counted by bitcoind at the socket, transport framing
//! and the BIP324 handshake included. Rather than probe every socket call
//! (`CNode::ReceiveMsgBytes`, `CConnman::SocketSendData`: two more uprobe
//! hits per message, each costing the node microseconds), peerlog reads those
//! members where bitcoind keeps them: the kernel finds each peer's `CNode*`
//! at the message tracepoints (see `peerlog-ebpf`), and peerlog reads the
//! counters with `process_vm_readv` when it reports, and in the kernel at
//! `net:closed_connection` for the final figures.
//!
//! Member offsets differ between Bitcoin Core versions and builds, so they
//! come from the DWARF of the binary or of its debug file, with each
//! member's size checked against the type DWARF gives it. Compressed debug
//! sections (Bitcoin Core's release debug files use zlib) are decompressed
//! one compilation unit at a time: the `CNode` definition is usually in the
//! first unit, and a 200 MB `.debug_info` never has to be held in memory.

use std::{
    borrow::Cow,
    collections::HashMap,
    io::{self, Read},
    path::Path,
};

use anyhow::{bail, Context, Result};
use gimli::{AttributeValue, EndianSlice, LittleEndian, UnitOffset};
use object::{CompressionFormat, Object, ObjectSection};

use crate::elf::debuginfo::Mapped;

/// Where the members peerlog reads sit in bitcoind's `CNode`, in bytes from
/// the start of the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CNodeLayout {
    /// `const NodeId id` (8 bytes).
    pub id: u64,
    /// `const std::string m_addr_name` (its data pointer comes first).
    pub addr_name: u64,
    /// `uint64_t nRecvBytes`.
    pub recv_bytes: u64,
    /// `uint64_t nSendBytes`.
    pub send_bytes: u64,
    /// `size_t m_send_memusage`: memory held by the messages queued for
    /// the peer that its socket has not taken.
    pub send_memusage: Member,
    /// `size_t m_msg_process_queue_size`: memory held by the received
    /// messages waiting for `ProcessMessages`.
    pub msg_process_queue_size: Member,
}

/// A `CNode` member peerlog can do without: older and newer Bitcoin Core
/// versions may lack it, and then only the figure it gives is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    /// At this offset, an unsigned integer of 8 bytes.
    At(u64),
    /// This bitcoind's `CNode` has no member of that name.
    Absent,
    /// The member is there but not an 8-byte unsigned integer (its size,
    /// if DWARF gives one): not what peerlog knows how to read.
    WrongType(Option<u64>),
}

impl Member {
    /// The offset, if the member can be read.
    pub fn offset(self) -> Option<u64> {
        match self {
            Member::At(offset) => Some(offset),
            Member::Absent | Member::WrongType(_) => None,
        }
    }

    /// Why `CNode::{name}` cannot be read; None when it can.
    pub fn missing_reason(self, name: &str) -> Option<String> {
        match self {
            Member::At(_) => None,
            Member::Absent => Some(format!(
                "bitcoind's CNode has no member {name} (a Bitcoin Core version without it)"
            )),
            Member::WrongType(size) => Some(format!(
                "CNode::{name} is of a type of {} in this bitcoind's DWARF, not the 8-byte unsigned integer peerlog reads",
                size.map_or("unknown size".to_string(), |s| format!("{s} bytes"))
            )),
        }
    }
}

/// The members looked for: name and the size DWARF must give its type.
const MEMBERS: [(&str, u64); 4] = [
    ("id", 8),
    ("m_addr_name", 32),
    ("nRecvBytes", 8),
    ("nSendBytes", 8),
];

/// The members whose absence costs only their own figure: `size_t` in
/// every Bitcoin Core that has them, so DWARF must say 8-byte unsigned.
const OPTIONAL_MEMBERS: [&str; 2] = ["m_send_memusage", "m_msg_process_queue_size"];

impl CNodeLayout {
    /// Reads the layout from the DWARF of `path` (bitcoind itself, or its
    /// debug file).
    pub fn from_dwarf(path: &Path) -> Result<Self> {
        let map = Mapped::open(path)?;
        let elf = object::File::parse(map.bytes())
            .with_context(|| format!("{} is not an ELF file", path.display()))?;
        let section = |name: &str| -> Result<Cow<'_, [u8]>> {
            match elf.section_by_name(name) {
                Some(s) => {
                    decompressed(&s).with_context(|| format!("{name} of {}", path.display()))
                }
                None => Ok(Cow::Borrowed(&[][..])),
            }
        };
        let info = elf
            .section_by_name(".debug_info")
            .with_context(|| format!("{} has no DWARF (.debug_info)", path.display()))?;
        let abbrev = section(".debug_abbrev")?;
        let strings = section(".debug_str")?;
        let line_strings = section(".debug_line_str")?;
        let compressed = info.compressed_data()?;
        let mut units: Box<dyn Read> = match compressed.format {
            CompressionFormat::None => Box::new(compressed.data),
            CompressionFormat::Zlib => Box::new(flate2::read::ZlibDecoder::new(compressed.data)),
            other => bail!(
                ".debug_info of {} is compressed as {other:?}, which peerlog cannot read",
                path.display()
            ),
        };
        let mut unit = Vec::new();
        while next_unit(&mut units, &mut unit)? {
            let sections = Sections {
                abbrev: &abbrev,
                strings: &strings,
                line_strings: &line_strings,
            };
            if let Some(layout) = find_in_unit(&unit, &sections)
                .with_context(|| format!("reading the DWARF of {}", path.display()))?
            {
                return Ok(layout);
            }
        }
        bail!(
            "the DWARF of {} has no definition of CNode with members {}",
            path.display(),
            MEMBERS.map(|(name, _)| name).join(", ")
        )
    }
}

/// A section's bytes, decompressed if it is compressed (zlib only: what
/// `objcopy --compress-debug-sections` and Bitcoin Core's builds use).
fn decompressed<'a>(section: &object::Section<'a, '_>) -> Result<Cow<'a, [u8]>> {
    let data = section.compressed_data()?;
    match data.format {
        CompressionFormat::None => Ok(Cow::Borrowed(data.data)),
        CompressionFormat::Zlib => {
            let mut out = Vec::with_capacity(data.uncompressed_size as usize);
            flate2::read::ZlibDecoder::new(data.data).read_to_end(&mut out)?;
            Ok(Cow::Owned(out))
        }
        other => bail!("compressed as {other:?}, which peerlog cannot read"),
    }
}

/// Reads the next compilation unit, its length field included, into `unit`;
/// false at the end of the section.
fn next_unit(input: &mut dyn Read, unit: &mut Vec<u8>) -> Result<bool> {
    let mut len32 = [0u8; 4];
    match input.read_exact(&mut len32) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    unit.clear();
    unit.extend_from_slice(&len32);
    let len = match u32::from_le_bytes(len32) {
        0xffff_ffff => {
            let mut len64 = [0u8; 8];
            input.read_exact(&mut len64)?;
            unit.extend_from_slice(&len64);
            u64::from_le_bytes(len64)
        }
        n if n >= 0xffff_fff0 => bail!("a reserved unit length {n:#x} in .debug_info"),
        n => u64::from(n),
    };
    let start = unit.len();
    input.take(len).read_to_end(unit)?;
    if (unit.len() - start) as u64 != len {
        bail!(".debug_info ends inside a unit");
    }
    Ok(true)
}

struct Sections<'a> {
    abbrev: &'a [u8],
    strings: &'a [u8],
    line_strings: &'a [u8],
}

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// A DIE's string attribute, if it has one peerlog can read: inline, or in
/// `.debug_str`/`.debug_line_str` (what GCC and LLVM emit without split DWARF).
fn attr_str<'a>(
    entry: &gimli::DebuggingInformationEntry<Slice<'a>>,
    name: gimli::DwAt,
    sections: &Sections<'a>,
) -> Result<Option<Slice<'a>>> {
    Ok(match entry.attr_value(name) {
        Some(AttributeValue::String(s)) => Some(s),
        Some(AttributeValue::DebugStrRef(offset)) => {
            Some(gimli::DebugStr::new(sections.strings, LittleEndian).get_str(offset)?)
        }
        Some(AttributeValue::DebugLineStrRef(offset)) => {
            Some(gimli::DebugLineStr::new(sections.line_strings, LittleEndian).get_str(offset)?)
        }
        _ => None,
    })
}

/// The `CNode` layout if this unit defines `CNode` with every member of
/// [`MEMBERS`] at the expected size.
///
/// Works on the unit's DIEs alone (no line programs, no sections but the
/// abbreviations and strings): that is all a layout needs.
fn find_in_unit<'a>(unit_bytes: &'a [u8], sections: &Sections<'a>) -> Result<Option<CNodeLayout>> {
    let debug_info = gimli::DebugInfo::new(unit_bytes, LittleEndian);
    let Some(header) = debug_info.units().next()? else {
        return Ok(None);
    };
    let abbrevs = header.abbreviations(&gimli::DebugAbbrev::new(sections.abbrev, LittleEndian))?;
    let mut cursor = header.entries(&abbrevs);
    // Depth of the CNode definition being read, and its members so far.
    let mut cnode_depth = None;
    let mut members: HashMap<Vec<u8>, (u64, Option<UnitOffset>)> = HashMap::new();
    while let Some(entry) = cursor.next_dfs()? {
        let depth = entry.depth();
        if let Some(d) = cnode_depth {
            if depth <= d {
                break;
            }
            if depth == d + 1 && entry.tag() == gimli::DW_TAG_member {
                let (Some(name), Some(offset)) = (
                    attr_str(entry, gimli::DW_AT_name, sections)?,
                    entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|v| v.udata_value()),
                ) else {
                    continue;
                };
                let ty = match entry.attr_value(gimli::DW_AT_type) {
                    Some(AttributeValue::UnitRef(r)) => Some(r),
                    _ => None,
                };
                members.insert(name.slice().to_vec(), (offset, ty));
            }
            continue;
        }
        let is_class = matches!(
            entry.tag(),
            gimli::DW_TAG_class_type | gimli::DW_TAG_structure_type
        );
        if !is_class
            || entry.attr_value(gimli::DW_AT_declaration).is_some()
            || entry.attr_value(gimli::DW_AT_byte_size).is_none()
        {
            continue;
        }
        if attr_str(entry, gimli::DW_AT_name, sections)?.is_some_and(|n| n.slice() == b"CNode") {
            cnode_depth = Some(depth);
        }
    }
    if cnode_depth.is_none() {
        return Ok(None);
    }
    let mut offsets = [0u64; MEMBERS.len()];
    for (slot, (name, size)) in offsets.iter_mut().zip(MEMBERS) {
        let Some(&(offset, ty)) = members.get(name.as_bytes()) else {
            bail!("bitcoind's CNode has no member {name}: a Bitcoin Core version peerlog does not know");
        };
        let found = ty
            .map(|t| type_size(&header, &abbrevs, t))
            .transpose()?
            .flatten();
        if found != Some(size) {
            bail!(
                "CNode::{name} is {} in this bitcoind's DWARF, peerlog expects {size} bytes",
                found.map_or("of unknown size".to_string(), |s| format!("{s} bytes"))
            );
        }
        *slot = offset;
    }
    let [id, addr_name, recv_bytes, send_bytes] = offsets;
    let [send_memusage, msg_process_queue_size] = OPTIONAL_MEMBERS.map(|name| -> Result<Member> {
        let Some(&(offset, ty)) = members.get(name.as_bytes()) else {
            return Ok(Member::Absent);
        };
        let Some(ty) = ty else {
            return Ok(Member::WrongType(None));
        };
        Ok(match unsigned_size(&header, &abbrevs, ty)? {
            Some(8) => Member::At(offset),
            _ => Member::WrongType(type_size(&header, &abbrevs, ty)?),
        })
    });
    Ok(Some(CNodeLayout {
        id,
        addr_name,
        recv_bytes,
        send_bytes,
        send_memusage: send_memusage?,
        msg_process_queue_size: msg_process_queue_size?,
    }))
}

/// The byte size of the type at `offset` if it is an unsigned integer
/// (through typedefs such as `size_t`, and qualifiers); None for anything
/// else, e.g. a `std::atomic` a later version might wrap the counter in.
fn unsigned_size(
    header: &gimli::UnitHeader<Slice<'_>>,
    abbrevs: &gimli::Abbreviations,
    offset: UnitOffset,
) -> Result<Option<u64>> {
    let passes = [
        gimli::DW_TAG_typedef,
        gimli::DW_TAG_const_type,
        gimli::DW_TAG_volatile_type,
    ];
    follow_type(header, abbrevs, offset, |entry| {
        if entry.tag() == gimli::DW_TAG_base_type {
            let unsigned = matches!(
                entry.attr_value(gimli::DW_AT_encoding),
                Some(AttributeValue::Encoding(gimli::DW_ATE_unsigned))
            );
            Some(byte_size(entry).filter(|_| unsigned))
        } else if passes.contains(&entry.tag()) {
            None
        } else {
            Some(None)
        }
    })
}

/// The byte size of the type at `offset`, through typedefs and qualifiers.
fn type_size(
    header: &gimli::UnitHeader<Slice<'_>>,
    abbrevs: &gimli::Abbreviations,
    offset: UnitOffset,
) -> Result<Option<u64>> {
    follow_type(header, abbrevs, offset, |entry| byte_size(entry).map(Some))
}

fn byte_size(entry: &gimli::DebuggingInformationEntry<Slice<'_>>) -> Option<u64> {
    entry
        .attr_value(gimli::DW_AT_byte_size)
        .and_then(|v| v.udata_value())
}

/// Walks the type chain from `offset` (each entry's `DW_AT_type`) until
/// `answer` gives an answer for an entry; None when the chain ends first.
fn follow_type<T>(
    header: &gimli::UnitHeader<Slice<'_>>,
    abbrevs: &gimli::Abbreviations,
    mut offset: UnitOffset,
    mut answer: impl FnMut(&gimli::DebuggingInformationEntry<Slice<'_>>) -> Option<Option<T>>,
) -> Result<Option<T>> {
    // A chain of typedefs and qualifiers is short; the bound stops a cycle.
    for _ in 0..16 {
        let entry = header.entry(abbrevs, offset)?;
        if let Some(found) = answer(&entry) {
            return Ok(found);
        }
        match entry.attr_value(gimli::DW_AT_type) {
            Some(AttributeValue::UnitRef(next)) => offset = next,
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Memory a peer makes bitcoind hold in its `CNode`'s queues, in bytes as
/// bitcoind counts them; None for a member this bitcoind lacks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueBytes {
    /// `CNode::m_send_memusage`.
    pub send: Option<u64>,
    /// `CNode::m_msg_process_queue_size`.
    pub recv: Option<u64>,
}

/// Reads a live bitcoind's per-peer counters out of its memory.
#[derive(Debug, Clone, Copy)]
pub struct CounterReader {
    pid: u32,
    layout: CNodeLayout,
}

impl CounterReader {
    /// A reader of process `pid`'s `CNode`s laid out as `layout`.
    pub fn new(pid: u32, layout: CNodeLayout) -> Self {
        Self { pid, layout }
    }

    /// What the `CNode` at `cnode` holds of peer `peer_id`: its byte
    /// counters and queue sizes, if it is still that peer's.
    ///
    /// Each range `process_vm_readv` copies takes bitcoind's mm lock (for
    /// reading) while it pins the pages, and a bitcoind thread that maps or
    /// unmaps memory meanwhile waits for it: so one range holds every
    /// member, from the lowest offset to the end of the highest, and a
    /// second re-reads `id` after it. The `id` must match in both, so a
    /// `CNode` freed and reused in between gives nothing rather than
    /// another peer's figures. A member this bitcoind lacks is None in the
    /// result.
    pub fn read(&self, cnode: u64, peer_id: i64) -> Option<CNodeReading> {
        let l = &self.layout;
        let members = [
            Some(l.id),
            Some(l.recv_bytes),
            Some(l.send_bytes),
            l.send_memusage.offset(),
            l.msg_process_queue_size.offset(),
        ];
        let first = members.iter().flatten().min().copied()?;
        let end = members.iter().flatten().max().copied()? + 8;
        let mut span = vec![0u8; usize::try_from(end - first).ok()?];
        let mut again = [0u8; 8];
        let local = [iovec_of(&mut span), iovec_of(&mut again)];
        let remote = [
            libc::iovec {
                iov_base: (cnode + first) as *mut libc::c_void,
                iov_len: span.len(),
            },
            libc::iovec {
                iov_base: (cnode + l.id) as *mut libc::c_void,
                iov_len: again.len(),
            },
        ];
        // SAFETY: local buffers of the stated lengths; the kernel checks the
        // remote addresses and reads, never writes, the other process. It
        // copies the remote ranges in order, so `again` is read after the
        // span.
        let n = unsafe {
            libc::process_vm_readv(
                self.pid as libc::pid_t,
                local.as_ptr(),
                2,
                remote.as_ptr(),
                2,
                0,
            )
        };
        if n != (span.len() + again.len()) as isize {
            return None;
        }
        let at = |offset: u64| {
            let i = (offset - first) as usize;
            u64::from_le_bytes(span[i..i + 8].try_into().expect("8 bytes"))
        };
        let id = at(l.id);
        (id as i64 == peer_id && u64::from_le_bytes(again) == id).then(|| CNodeReading {
            bytes: (at(l.recv_bytes), at(l.send_bytes)),
            queues: QueueBytes {
                send: l.send_memusage.offset().map(at),
                recv: l.msg_process_queue_size.offset().map(at),
            },
        })
    }
}

/// One read of a peer's `CNode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CNodeReading {
    /// `(nRecvBytes, nSendBytes)`.
    pub bytes: (u64, u64),
    /// The queue sizes.
    pub queues: QueueBytes,
}

fn iovec_of(buf: &mut [u8]) -> libc::iovec {
    libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_without_cnode_says_so() {
        let exe = std::env::current_exe().unwrap();
        let err = CNodeLayout::from_dwarf(&exe).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("no definition of CNode") || text.contains("no DWARF"),
            "{text}"
        );
    }

    #[test]
    fn counters_are_read_only_for_the_right_id() {
        // A fake CNode in this process: id at 0, m_addr_name at 8, counters at 40 and 48.
        // The queues at 56 and 64.
        let node: [u64; 9] = [42, 0, 0, 0, 0, 1234, 5678, 4_000_000, 300];
        let layout = CNodeLayout {
            id: 0,
            addr_name: 8,
            recv_bytes: 40,
            send_bytes: 48,
            send_memusage: Member::At(56),
            msg_process_queue_size: Member::At(64),
        };
        let reader = CounterReader::new(std::process::id(), layout);
        let at = node.as_ptr() as u64;
        assert_eq!(
            reader.read(at, 42),
            Some(CNodeReading {
                bytes: (1234, 5678),
                queues: QueueBytes {
                    send: Some(4_000_000),
                    recv: Some(300)
                }
            })
        );
        // Another peer's CNode (freed and reused) gives nothing.
        assert_eq!(reader.read(at, 41), None);
        assert_eq!(reader.read(8, 42), None);
        // A member this bitcoind lacks leaves only its own figure out.
        let older = CounterReader::new(
            std::process::id(),
            CNodeLayout {
                msg_process_queue_size: Member::Absent,
                ..layout
            },
        );
        assert_eq!(
            older.read(at, 42).map(|r| r.queues),
            Some(QueueBytes {
                send: Some(4_000_000),
                recv: None
            })
        );
    }

    #[test]
    fn a_missing_member_says_why() {
        assert_eq!(Member::At(8).missing_reason("m_send_memusage"), None);
        let absent = Member::Absent.missing_reason("m_send_memusage").unwrap();
        assert!(absent.contains("no member m_send_memusage"), "{absent}");
        let wrong = Member::WrongType(Some(4))
            .missing_reason("m_send_memusage")
            .unwrap();
        assert!(wrong.contains("4 bytes"), "{wrong}");
    }
}
