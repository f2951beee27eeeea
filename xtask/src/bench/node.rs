//! The node under load: which one (the twin or a bitcoind), and starting and
//! stopping it for a run.

use std::{
    env, fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{
    plan::Scenario,
    process::{path_arg, Proc, Stream},
    tools::Binaries,
};

/// The node the scenarios run against.
pub(super) enum NodeKind {
    /// The twin node (the bench's copy of it).
    Twin(PathBuf),
    /// A real bitcoind named by `BITCOIND`, started fresh for every run.
    Bitcoind {
        path: PathBuf,
        /// `bitcoin-cli`, beside it: mines the block that takes a fresh
        /// regtest node out of initial block download.
        cli: PathBuf,
        /// The first line of `bitcoind -version`.
        version: String,
    },
}

impl NodeKind {
    /// `BITCOIND` if it is set and not empty, else the twin.
    pub(super) fn from_env(bins: &Binaries) -> Result<NodeKind> {
        let Some(path) = env::var_os("BITCOIND").filter(|p| !p.is_empty()) else {
            return Ok(NodeKind::Twin(bins.twin.clone()));
        };
        let path = PathBuf::from(path);
        let output = Command::new(&path)
            .arg("-version")
            .output()
            .with_context(|| format!("BITCOIND={}: cannot run it", path.display()))?;
        let version = String::from_utf8_lossy(&output.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        if !output.status.success() || !version.contains("version") {
            bail!(
                "BITCOIND={}: `-version` did not print a Bitcoin Core version ({}); \
                 set BITCOIND to a bitcoind binary",
                path.display(),
                output.status
            );
        }
        let cli = path.with_file_name("bitcoin-cli");
        if !cli.is_file() {
            bail!(
                "BITCOIND={}: no {} beside it; the bench needs it to mine the block \
                 that takes a fresh regtest node out of initial block download",
                path.display(),
                cli.display()
            );
        }
        Ok(NodeKind::Bitcoind { path, cli, version })
    }

    /// Why `scenario` cannot run against this node, if it cannot.
    pub(super) fn skips(&self, scenario: &Scenario) -> Option<String> {
        match (self, scenario.block_size) {
            (NodeKind::Bitcoind { .. }, Some(size)) => Some(format!(
                "a fresh regtest bitcoind has no block of ~{size} bytes to serve \
                 (it has the genesis block and the one mined to leave initial \
                 block download, a few hundred bytes each)"
            )),
            _ => None,
        }
    }

    /// The binary, as bpftrace's `$1`.
    pub(super) fn binary(&self) -> &Path {
        match self {
            NodeKind::Twin(path) | NodeKind::Bitcoind { path, .. } => path,
        }
    }

    /// Its short name: in file names and the doc's section markers.
    pub(super) fn key(&self) -> &'static str {
        match self {
            NodeKind::Twin(_) => "twin",
            NodeKind::Bitcoind { .. } => "bitcoind",
        }
    }

    /// What stands for the binary in the commands the results show.
    pub(super) fn placeholder(&self) -> &'static str {
        match self {
            NodeKind::Twin(_) => "TWIN",
            NodeKind::Bitcoind { .. } => "BITCOIND",
        }
    }

    /// The node in words, for the results.
    pub(super) fn describe(&self) -> String {
        match self {
            NodeKind::Twin(_) => "the twin node (`tests/twin/twin.cpp`)".into(),
            NodeKind::Bitcoind { path, version, .. } => {
                format!("{version} (`{}`)", path.display())
            }
        }
    }
}

/// A node started for one run.
pub(super) struct Node {
    pub(super) proc: Proc,
    pub(super) addr: String,
    /// The blocks it serves, (hash, size): the twin's two built-in blocks.
    pub(super) blocks: Vec<(String, usize)>,
    what: &'static str,
}

impl Node {
    /// Starts `kind` for `scenario`; a bitcoind keeps its data in `dir`.
    pub(super) fn start(kind: &NodeKind, scenario: &Scenario, dir: &Path) -> Result<Node> {
        match kind {
            NodeKind::Twin(binary) => Node::twin(binary, scenario),
            NodeKind::Bitcoind { path, cli, .. } => Node::bitcoind(path, cli, dir),
        }
    }

    fn twin(binary: &Path, scenario: &Scenario) -> Result<Node> {
        let mut cmd = Command::new(binary);
        cmd.args(["-port=0", "-printport"]);
        if let Some(size) = scenario.block_size {
            cmd.arg(format!("-blocksize={size}"));
        }
        let mut proc = Proc::spawn("the twin node", cmd, Stream::Stdout)?;
        let mut addr = None;
        let mut blocks = Vec::new();
        // It prints its address, then its two built-in blocks.
        while addr.is_none() || blocks.len() < 2 {
            let line = proc.wait_for_line(|_| true, Duration::from_secs(30))?;
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.trim().to_string());
            } else if let Some(rest) = line.strip_prefix("block ") {
                let (hash, size) = rest.split_once(' ').context("malformed block line")?;
                blocks.push((hash.to_string(), size.trim().parse()?));
            }
        }
        Ok(Node {
            proc,
            addr: addr.expect("loop ends with an address"),
            blocks,
            what: "the twin node",
        })
    }

    /// A fresh bitcoind on regtest, loopback only, its data in `dir`, which
    /// lets the load generator's 125 peers in and relays their transactions
    /// without delay, then mines a block to leave initial block download
    /// (until then it ignores transaction announcements).
    fn bitcoind(path: &Path, cli: &Path, dir: &Path) -> Result<Node> {
        let datadir = dir.join("bitcoind");
        fs::create_dir_all(&datadir).with_context(|| format!("creating {}", datadir.display()))?;
        let datadir_arg = format!("-datadir={}", path_arg(&datadir)?);
        let (port, rpc_port) = two_free_ports()?;
        let mut cmd = Command::new(path);
        cmd.args(["-regtest", &datadir_arg])
            .arg(format!("-bind=127.0.0.1:{port}"))
            .arg(format!("-port={port}"))
            .arg(format!("-rpcport={rpc_port}"))
            .args([
                "-listen=1",
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
                // noban makes inbound peers (which advertise NODE_NETWORK)
                // preferred for transaction download: it asks for what they
                // announce without the 2 s delay of other inbound peers.
                // relay: no cap on their announcements in flight.
                "-whitelist=noban,relay@127.0.0.1",
                // 125 load generator peers exceed the ~114 inbound slots of
                // the default 125.
                "-maxconnections=300",
                "-dnsseed=0",
                "-fixedseeds=0",
                "-discover=0",
                "-listenonion=0",
                "-printtoconsole=0",
            ]);
        let mut proc = Proc::spawn("bitcoind", cmd, Stream::Stderr)?;
        let addr = format!("127.0.0.1:{port}");
        let sock: std::net::SocketAddr = addr.parse()?;
        proc.wait_until(
            || TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_ok(),
            Duration::from_secs(60),
            Duration::from_millis(50),
            &format!("before listening on {addr}"),
            &format!("listen on {addr} within 60 s"),
        )?;
        let mined = Command::new(cli)
            .args(["-regtest", &datadir_arg])
            .arg(format!("-rpcport={rpc_port}"))
            .args([
                "-rpcwait",
                "-rpcwaittimeout=60",
                "generatetodescriptor",
                "1",
                "raw(51)",
            ])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", cli.display()))?;
        if !mined.status.success() {
            bail!(
                "bitcoin-cli generatetodescriptor failed ({}): {}",
                mined.status,
                String::from_utf8_lossy(&mined.stderr).trim()
            );
        }
        Ok(Node {
            proc,
            addr,
            blocks: Vec::new(),
            what: "bitcoind",
        })
    }

    /// Stops the node (SIGTERM) and fails if it did not exit cleanly.
    pub(super) fn stop(mut self) -> Result<()> {
        self.proc.signal(libc::SIGTERM);
        let status = self.proc.wait(Duration::from_secs(60))?;
        if !status.success() {
            bail!("{} exited with {status}:\n{}", self.what, self.proc.text());
        }
        Ok(())
    }
}

/// Two TCP ports free on loopback, for a bitcoind's P2P and RPC: both
/// listeners are held until both ports are known, so they differ.
fn two_free_ports() -> Result<(u16, u16)> {
    let a = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    let b = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}
