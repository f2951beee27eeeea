//! What the attached probes let the statistics measure, and what they do
//! not: figures that are not covered are reported as missing, never as zero.

/// What the attached probes can measure beyond the `net:*` tracepoints,
/// which are always attached (derived from [`crate::kernel::Attached`]);
/// figures of what is not covered are reported as missing, never as zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Whether the message handler's time is cut into per-peer CPU slices
    /// (the accounting is on and the `sched_switch` hook is attached).
    pub slices: bool,
    /// Whether bitcoind's per-connection byte counters are read (its `CNode`
    /// layout is known from DWARF).
    pub node_counters: bool,
    /// Whether `CNode::m_send_memusage` is read (`memory.send_queue_bytes`).
    pub send_queue: bool,
    /// Whether `CNode::m_msg_process_queue_size` is read
    /// (`memory.recv_queue_bytes`).
    pub recv_queue: bool,
    /// Whether the `mempool:*` tracepoints are attached.
    pub mempool: bool,
    /// Whether `validation:block_connected` is attached.
    pub block_connected: bool,
    /// Why something is not measured, in words (e.g. "bytesrecv: no DWARF:
    /// the binary is stripped ...; give one with --debug-file").
    pub notes: Vec<String>,
}

impl From<&crate::kernel::Attached> for Coverage {
    /// What the statistics can measure, from what the probes attached.
    fn from(probes: &crate::kernel::Attached) -> Self {
        let attached = |tracepoint: &str| probes.tracepoints.iter().any(|t| t == tracepoint);
        let mut notes = Vec::new();
        if let Some(why) = &probes.oncpu_missing {
            notes.push(format!("per-peer CPU: {why}"));
        }
        if let Some(why) = &probes.cnode_layout_missing {
            notes.push(format!("bytesrecv, bytessent: {why}"));
            notes.push(format!("{SEND_QUEUE}: {why}"));
            notes.push(format!("{RECV_QUEUE}: {why}"));
        }
        if let Some(layout) = &probes.cnode_layout {
            let members = [
                (SEND_QUEUE, layout.send_memusage, "m_send_memusage"),
                (
                    RECV_QUEUE,
                    layout.msg_process_queue_size,
                    "m_msg_process_queue_size",
                ),
            ];
            for (figure, member, name) in members {
                if let Some(why) = member.missing_reason(name) {
                    notes.push(format!("{figure}: {why}"));
                }
            }
        }
        notes.extend(
            probes
                .missing_tracepoints
                .iter()
                .map(|t| format!("{t}: not in this bitcoind")),
        );
        Self {
            slices: probes.slices && probes.oncpu_missing.is_none(),
            node_counters: probes.cnode_layout.is_some(),
            send_queue: probes
                .cnode_layout
                .is_some_and(|l| l.send_memusage.offset().is_some()),
            recv_queue: probes
                .cnode_layout
                .is_some_and(|l| l.msg_process_queue_size.offset().is_some()),
            mempool: ["added", "removed", "replaced", "rejected"]
                .iter()
                .all(|name| attached(&format!("mempool:{name}"))),
            block_connected: attached("validation:block_connected"),
            notes,
        }
    }
}

/// The figure of `CNode::m_send_memusage`, as the notes and
/// `missing_figures` name it.
const SEND_QUEUE: &str = "memory.send_queue_bytes";
/// The figure of `CNode::m_msg_process_queue_size`.
const RECV_QUEUE: &str = "memory.recv_queue_bytes";

/// Figures peerlog gives up by design, each with the reason: measuring them
/// would cost the node a probe hit per socket call or per message, or could
/// not be done honestly.
pub const NOT_MEASURED: [&str; 3] = [
    "queueing delay per message type: needs a probe on ProcessMessage, one more probe hit in bitcoind per message",
    "b-net CPU per peer (receiving, BIP324 decryption, sending): needs probes on CNode::ReceiveMsgBytes and CConnman::SocketSendData, two more probe hits per message",
    "memory.orphanage_bytes: TxOrphanage keeps its per-peer usage in a hash map inside PeerManagerImpl, to which peerlog learns no pointer; walking another process's standard-library containers while bitcoind changes them would be a guess",
];

impl Coverage {
    /// The figures the attached probes cannot give, each with the reason.
    pub fn missing_figures(&self) -> Vec<String> {
        let mut missing = Vec::new();
        let mut need = |ok: bool, what: &str, why: &str| {
            if !ok {
                missing.push(format!("{what}: {why}"));
            }
        };
        let note = |prefix: &str| {
            self.notes
                .iter()
                .find_map(|n| n.strip_prefix(prefix))
                .unwrap_or("not attached (--no-accounting)")
                .to_string()
        };
        need(
            self.slices,
            "processing, sending, cpu_ns, msghand_cpu_share, processing_per_msg",
            &note("per-peer CPU: "),
        );
        need(
            self.node_counters,
            "bytesrecv, bytessent",
            &note("bytesrecv, bytessent: "),
        );
        for (ok, figure) in [(self.send_queue, SEND_QUEUE), (self.recv_queue, RECV_QUEUE)] {
            let prefix = format!("{figure}: ");
            let why = self
                .notes
                .iter()
                .find_map(|n| n.strip_prefix(&prefix))
                .unwrap_or("bitcoind's CNode layout is not known");
            need(ok, figure, why);
        }
        need(
            self.mempool,
            "mempool",
            "the mempool:* tracepoints are not attached",
        );
        need(
            self.block_connected,
            "blocks",
            "validation:block_connected is not attached",
        );
        missing.extend(NOT_MEASURED.iter().map(|s| s.to_string()));
        missing
    }
}
