//! The few kernel struct offsets peerlog's programs need, read from the
//! kernel's own BTF (`/sys/kernel/btf/vmlinux`).
//!
//! The `sched_switch` program reads `pid` and `tgid` of the task being
//! switched in; their offsets in `task_struct` differ between kernel builds,
//! and the kernel describes itself in BTF. aya-ebpf has no CO-RE relocations
//! for Rust programs, so userspace looks the offsets up and hands them over.

use std::{fs, path::Path};

use anyhow::{bail, Context, Result};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// Byte offsets of `task_struct` members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `pid` (the thread id).
    pub pid: u32,
    /// `tgid` (the process id).
    pub tgid: u32,
    /// `se.sum_exec_runtime`: nanoseconds the task ran, as the scheduler
    /// accounts it (without time the hypervisor stole from the vCPU).
    pub sum_exec_runtime: u32,
}

/// Reads the offsets from the running kernel's BTF.
pub fn task_offsets() -> Result<TaskOffsets> {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    let data = fs::read(path).with_context(|| {
        format!(
            "reading {} (a kernel built with CONFIG_DEBUG_INFO_BTF is needed for on-CPU time)",
            path.display()
        )
    })?;
    task_offsets_from(&data)
}

/// Reads the offsets from raw BTF bytes.
pub fn task_offsets_from(data: &[u8]) -> Result<TaskOffsets> {
    let btf = Btf::parse(data)?;
    Ok(TaskOffsets {
        pid: btf.member_offset("task_struct", "pid")?,
        tgid: btf.member_offset("task_struct", "tgid")?,
        sum_exec_runtime: btf.member_offset("task_struct", "se")?
            + btf.member_offset("sched_entity", "sum_exec_runtime")?,
    })
}

struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self> {
        let magic = data.get(0..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if magic != Some(BTF_MAGIC) {
            bail!("not little-endian BTF (bad magic)");
        }
        let field = |at| u32_at(data, at).context("BTF header cut short");
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let section = |off: usize, len: usize| {
            data.get(hdr_len + off..hdr_len + off + len)
                .context("BTF section out of bounds")
        };
        Ok(Self {
            types: section(type_off, type_len)?,
            strings: section(str_off, str_len)?,
        })
    }

    fn string(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Byte offset of member `name` in struct `structure`.
    fn member_offset(&self, structure: &str, name: &str) -> Result<u32> {
        self.struct_members(structure)?
            .with_context(|| format!("no struct {structure} in the kernel's BTF"))?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, bits)| bits / 8)
            .with_context(|| format!("{structure} has no member {name}"))
    }

    /// Members (name, bit offset) of the first struct called `name`.
    fn struct_members(&self, name: &str) -> Result<Option<Vec<(String, u32)>>> {
        let mut at = 0;
        while at < self.types.len() {
            let (name_off, info) = (
                u32_at(self.types, at).context("BTF type cut short")?,
                u32_at(self.types, at + 4).context("BTF type cut short")?,
            );
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let body = at + 12;
            if kind == KIND_STRUCT && self.string(name_off) == name {
                let members = (0..vlen)
                    .map(|i| {
                        let m = body + i * 12;
                        let name = self.string(u32_at(self.types, m).unwrap_or(0)).to_string();
                        let offset = u32_at(self.types, m + 8).unwrap_or(0);
                        // With kind_flag the low 24 bits are the bit offset
                        // and the high 8 the bitfield size.
                        (
                            name,
                            if kind_flag {
                                offset & 0xff_ffff
                            } else {
                                offset
                            },
                        )
                    })
                    .collect();
                return Ok(Some(members));
            }
            at = body + kind_body_len(kind, vlen)?;
        }
        Ok(None)
    }
}

/// Bytes that follow `struct btf_type` for a kind (see the kernel's btf.rst).
fn kind_body_len(kind: u32, vlen: usize) -> Result<usize> {
    Ok(match kind {
        1 => 4,                                      // INT
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0, // PTR FWD TYPEDEF VOLATILE CONST RESTRICT FUNC FLOAT TYPE_TAG
        3 => 12,                                     // ARRAY
        4 | 5 => 12 * vlen,                          // STRUCT UNION
        6 => 8 * vlen,                               // ENUM
        13 => 8 * vlen,                              // FUNC_PROTO
        14 => 4,                                     // VAR
        15 => 12 * vlen,                             // DATASEC
        17 => 4,                                     // DECL_TAG
        19 => 12 * vlen,                             // ENUM64
        k => bail!("unknown BTF kind {k}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_task_struct_in_this_kernel() {
        // peerlog's supported kernels all have BTF; without it this fails
        // rather than pass without checking anything.
        let data = fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
        let offsets = task_offsets_from(&data).unwrap();
        // pid_t pid; pid_t tgid; are adjacent in every kernel since 2.6.
        assert_eq!(offsets.tgid, offsets.pid + 4);
        assert!(offsets.pid > 0);
    }

    #[test]
    fn rejects_non_btf() {
        assert!(task_offsets_from(b"\x7fELF....").is_err());
        assert!(task_offsets_from(&[0x9f, 0xeb]).is_err());
    }
}
