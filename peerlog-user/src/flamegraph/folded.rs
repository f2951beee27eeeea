//! Collapsed stacks, the text format of Brendan Gregg's FlameGraph and of
//! inferno: one line per distinct stack, frames from the root to the leaf
//! separated by `;`, then a space and the number of samples.
//!
//! peerlog's stacks start with two frames of its own: the thread name
//! (`b-msghand`, `b-net`, ...) and, while the message handler serves a peer,
//! that peer (`peer=7 203.0.113.5:8333`), so one file can be filtered by
//! thread and by peer without the trace.

use std::{collections::BTreeMap, io::Write};

use anyhow::{bail, Context, Result};

/// How a peer frame starts; the peer id follows.
pub const PEER_FRAME_PREFIX: &str = "peer=";

/// The frame that names the peer being served: its id and address.
pub fn peer_frame(peer_id: i64, addr: &str) -> String {
    if addr.is_empty() {
        format!("{PEER_FRAME_PREFIX}{peer_id}")
    } else {
        format!("{PEER_FRAME_PREFIX}{peer_id} {}", addr.replace(';', ":"))
    }
}

/// The peer id of a peer frame.
pub fn peer_of_frame(frame: &str) -> Option<i64> {
    let rest = frame.strip_prefix(PEER_FRAME_PREFIX)?;
    rest.split(' ').next()?.parse().ok()
}

/// Distinct stacks and their sample counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoldedStacks {
    counts: BTreeMap<String, u64>,
}

impl FoldedStacks {
    /// No stacks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `count` samples of the stack `frames` (root first).
    pub fn add<S: AsRef<str>>(&mut self, frames: &[S], count: u64) {
        let stack = frames
            .iter()
            .map(|f| f.as_ref().replace(';', ":"))
            .collect::<Vec<_>>()
            .join(";");
        *self.counts.entry(stack).or_default() += count;
    }

    /// These stacks under extra root frames (thread, peer).
    pub fn with_root(&self, root: &[&str]) -> Self {
        let prefix: String = root
            .iter()
            .map(|f| format!("{};", f.replace(';', ":")))
            .collect();
        Self {
            counts: self
                .counts
                .iter()
                .map(|(stack, count)| (format!("{prefix}{stack}"), *count))
                .collect(),
        }
    }

    /// Adds every stack of `other`.
    pub fn merge(&mut self, other: &FoldedStacks) {
        for (stack, count) in &other.counts {
            *self.counts.entry(stack.clone()).or_default() += count;
        }
    }

    /// Parses collapsed-stack text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let mut stacks = Self::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            let Some((stack, count)) = line.rsplit_once(' ') else {
                bail!(
                    "{origin}:{}: not a collapsed stack (no sample count)",
                    i + 1
                );
            };
            let count: u64 = count
                .parse()
                .with_context(|| format!("{origin}:{}: bad sample count {count:?}", i + 1))?;
            *stacks.counts.entry(stack.to_string()).or_default() += count;
        }
        Ok(stacks)
    }

    /// Writes the collapsed-stack text.
    pub fn write_to(&self, mut out: impl Write) -> std::io::Result<()> {
        for (stack, count) in &self.counts {
            writeln!(out, "{stack} {count}")?;
        }
        Ok(())
    }

    /// The stacks whose frames (root first) satisfy `keep`.
    pub fn filter(&self, mut keep: impl FnMut(&[&str]) -> bool) -> Self {
        Self {
            counts: self
                .counts
                .iter()
                .filter(|(stack, _)| keep(&stack.split(';').collect::<Vec<_>>()))
                .map(|(s, c)| (s.clone(), *c))
                .collect(),
        }
    }

    /// Samples over all stacks.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Samples of the stacks that satisfy `matches`.
    pub fn count_where(&self, mut matches: impl FnMut(&[&str]) -> bool) -> u64 {
        self.counts
            .iter()
            .filter(|(stack, _)| matches(&stack.split(';').collect::<Vec<_>>()))
            .map(|(_, c)| c)
            .sum()
    }

    /// True when there is no sample.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Renders the flamegraph SVG with inferno.
    pub fn render_svg(&self, title: &str, subtitle: &str, out: impl Write) -> Result<()> {
        if self.is_empty() {
            bail!("no samples to draw");
        }
        let mut options = inferno::flamegraph::Options::default();
        options.title = title.to_string();
        options.subtitle = Some(subtitle.to_string());
        options.count_name = "samples".to_string();
        // The same function gets the same colour in every graph of a trace.
        options.hash = true;
        let lines: Vec<String> = self
            .counts
            .iter()
            .map(|(stack, count)| format!("{stack} {count}"))
            .collect();
        inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
            .context("rendering the flamegraph")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_merge_and_filter() {
        let mut a = FoldedStacks::new();
        a.add(
            &[
                "b-msghand",
                &peer_frame(3, "127.0.0.1:18444"),
                "clone3",
                "TwinBurnCpu",
            ],
            5,
        );
        a.add(&["b-net", "clone3", "poll"], 2);
        a.add(&["b-net", "clone3", "poll"], 1);
        let mut text = Vec::new();
        a.write_to(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(
            text,
            "b-msghand;peer=3 127.0.0.1:18444;clone3;TwinBurnCpu 5\nb-net;clone3;poll 3\n"
        );
        let mut b = FoldedStacks::parse(&text, "a.folded").unwrap();
        b.merge(&a);
        assert_eq!(b.total(), 16);
        let peer3 = b.filter(|f| f.get(1).and_then(|f| peer_of_frame(f)) == Some(3));
        assert_eq!(peer3.total(), 10);
        assert_eq!(b.count_where(|f| f[0] == "b-net"), 6);
        let rooted = b.with_root(&["b-x", "peer=1"]);
        assert_eq!(rooted.count_where(|f| f[..2] == ["b-x", "peer=1"]), 16);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = FoldedStacks::parse("a;b 1\na;b x\n", "f.folded").unwrap_err();
        assert!(format!("{e:#}").contains("f.folded:2"), "{e:#}");
        assert!(FoldedStacks::parse("nocount\n", "f").is_err());
    }

    #[test]
    fn peer_frames() {
        assert_eq!(peer_of_frame("peer=12 [::1]:8333"), Some(12));
        assert_eq!(peer_of_frame("peer=12"), Some(12));
        assert_eq!(peer_of_frame("peer=? CNode 0x55aa"), None);
        assert_eq!(peer_of_frame("clone3"), None);
    }

    #[test]
    fn svg_has_title_and_frames() {
        let mut a = FoldedStacks::new();
        a.add(&["b-msghand", "TwinBurnCpu"], 3);
        let mut svg = Vec::new();
        a.render_svg("twin (pid 1)", "3 samples", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.contains("twin (pid 1)") && svg.contains("TwinBurnCpu"));
        assert!(FoldedStacks::new()
            .render_svg("t", "s", Vec::new())
            .is_err());
    }
}
