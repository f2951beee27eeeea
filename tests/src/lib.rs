//! Support for peerlog's integration tests and demo: a node to trace (the
//! twin node this crate builds, or a real bitcoind named by `BITCOIND`), a
//! running `peerlog trace`, and P2P traffic of known content driven into the
//! node with peerlog's own P2P client.

pub mod fixture;
pub mod loadgen;
pub mod malformed;

use std::{
    env,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex, OnceLock,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use peerlog::{
    formats::capture::{read_capture_tree, CaptureFile},
    p2p::{self, HandshakeOptions, P2pClient, Transcript, TranscriptDirection as PeerDirection},
};

/// Path of the twin node built by `build.rs`.
pub const TWIN: &str = env!("PEERLOG_TWIN");
/// The twin, stripped (`strip -s`), with a `.gnu_debuglink` to [`TWIN_DEBUG`].
pub const TWIN_STRIPPED: &str = env!("PEERLOG_TWIN_STRIPPED");
/// The separate debug file of [`TWIN_STRIPPED`].
pub const TWIN_DEBUG: &str = env!("PEERLOG_TWIN_DEBUG");
/// The twin with probes but no semaphores, like Bitcoin Core v23-v28.
pub const TWIN_NO_SEMAPHORES: &str = env!("PEERLOG_TWIN_NO_SEMAPHORES");

/// Size of the largest message Bitcoin Core accepts, which the traffic sends.
pub const MAX_MESSAGE: usize = 4_000_000;

/// Why an eBPF test cannot run on this machine, if it cannot.
pub fn ebpf_unavailable() -> Option<String> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: attaching uprobes needs CAP_SYS_ADMIN".into());
    }
    if !Path::new("/sys/bus/event_source/devices/uprobe/type").exists() {
        return Some("this kernel has no uprobe PMU (CONFIG_UPROBE_EVENTS)".into());
    }
    None
}

/// The environment variable that, set to `1` (CI sets it), turns a machine
/// that cannot load eBPF into a failure of every test that needs eBPF: an
/// ignored eBPF test would otherwise let a CI run pass that tested nothing.
pub const REQUIRE_EBPF: &str = "PEERLOG_REQUIRE_EBPF";

/// Why a test is not run here. It is reported as ignored, with its reason
/// printed, unless the reason is one that must fail the run instead
/// ([`REQUIRE_EBPF`]).
#[derive(Debug, Clone)]
pub struct Skip {
    reason: String,
    fails: bool,
}

impl Skip {
    /// A reason to ignore a test.
    pub fn ignore(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            fails: false,
        }
    }
}

/// Why the tests that load eBPF cannot run here, if they cannot; with
/// [`REQUIRE_EBPF`]`=1` the reason fails them instead of ignoring them.
pub fn ebpf_skip() -> Option<Skip> {
    let reason = ebpf_unavailable()?;
    if env::var(REQUIRE_EBPF).is_ok_and(|v| v == "1") {
        Some(Skip {
            reason: format!("cannot load eBPF ({reason}), and {REQUIRE_EBPF}=1 requires it"),
            fails: true,
        })
    } else {
        Some(Skip::ignore(format!("cannot load eBPF: {reason}")))
    }
}

/// The real bitcoind the tests run against, `BITCOIND`, if set.
pub fn bitcoind() -> Option<PathBuf> {
    env::var_os("BITCOIND")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

/// For a test that needs the twin node (`why`: what of it), ignoring it
/// when `BITCOIND` is set: that pass of the suite is the real node's, and
/// the test already ran in the twin's.
pub fn twin_only(why: &str) -> Option<Skip> {
    bitcoind().map(|b| {
        Skip::ignore(format!(
            "BITCOIND={} is set, and this test needs the twin node: {why}",
            b.display()
        ))
    })
}

/// For a test that needs a real bitcoind: ignoring it when `BITCOIND` is
/// not set.
pub fn bitcoind_only() -> Option<Skip> {
    match bitcoind() {
        Some(_) => None,
        None => Some(Skip::ignore(
            "needs a real bitcoind: set BITCOIND=/path/to/bitcoind",
        )),
    }
}

/// The libtest-mimic trial of an integration test: `test` runs unless one
/// of `skips` says why it cannot here. Then the test is ignored and the
/// reason printed (`IGNORED <name>: <reason>` on stderr, which `cargo xtask
/// test` repeats in its summary), or, for a reason that must fail the run,
/// the test fails with it.
pub fn trial(
    name: &'static str,
    test: fn() -> Result<()>,
    skips: &[&Option<Skip>],
) -> libtest_mimic::Trial {
    use libtest_mimic::{Failed, Trial};
    let skips: Vec<&Skip> = skips.iter().filter_map(|s| s.as_ref()).collect();
    if let Some(skip) = skips.iter().find(|s| s.fails) {
        let reason = skip.reason.clone();
        return Trial::test(name, move || Err(Failed::from(reason)));
    }
    let trial = Trial::test(name, move || {
        test().map_err(|e| Failed::from(format!("{e:#}")))
    });
    match skips.first() {
        Some(skip) => {
            eprintln!("IGNORED {name}: {}", skip.reason);
            trial.with_ignored_flag(true)
        }
        None => trial,
    }
}

/// One test of a suite: its name, its function, and what may make it skip.
pub type TestCase<'a> = (&'static str, fn() -> Result<()>, &'a [&'a Option<Skip>]);

/// Runs a suite's tests as libtest would, with the command line's
/// arguments, and exits with its verdict.
pub fn run_suite<'a>(
    args: &libtest_mimic::Arguments,
    tests: impl IntoIterator<Item = TestCase<'a>>,
) -> ! {
    let trials = tests
        .into_iter()
        .map(|(name, f, skips)| trial(name, f, skips))
        .collect();
    libtest_mimic::run(args, trials).exit()
}

/// Sends every malformed case to `node` over fresh connections
/// ([`malformed::run`]); an error, naming the case, when the node stops
/// answering. Every feature's test traces through this: the node must stay
/// alive under malformed input.
pub fn send_malformed(node: &Node) -> Result<()> {
    let opts = HandshakeOptions {
        read_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let addr = node.p2p_addr;
    malformed::run(&malformed::cases(), || {
        Ok(P2pClient::connect(addr, NETWORK, opts.clone())?)
    })
    .context("malformed messages")?;
    Ok(())
}

/// The `peerlog` binary of this build profile, built on first use so that a
/// plain `cargo test` works too.
pub fn peerlog_bin() -> Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = env::current_exe().map_err(|e| e.to_string())?;
        // target/<profile>/deps/<test> or target/<profile>/<bin>
        let mut dir = exe.parent().ok_or("no exe dir")?.to_path_buf();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let release = dir.ends_with("release");
        let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "peerlog", "--bin", "peerlog"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err(format!("building peerlog failed ({status})"));
        }
        Ok(dir.join("peerlog"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A loopback port for a server the tests start (bitcoind, peerlog's
/// metrics endpoint) to listen on, free when asked.
///
/// These servers must be told their ports, and whoever asks first gets a
/// port: a port the kernel hands out for `bind(0)` is also one it hands out
/// as the source port of outgoing connections, and the tests open many
/// while a node starts (CI saw bitcoind fail "Unable to start HTTP server"
/// that way). So the ports come from below the kernel's ephemeral range,
/// each at most once per test process, starting at a place set by the
/// process id so that two test processes do not walk the same path.
pub fn free_port() -> Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = (10_000, ephemeral_ports_start().max(10_001));
    let span = high - low;
    // Wrapping: a process id (up to 2^22) times 7919 can pass u32::MAX.
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..span {
        let port = low + start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).context("port out of range")?;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port between {low} and {high}")
}

/// The first port of the kernel's ephemeral range (32768 by default).
fn ephemeral_ports_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A twin running: the process, its P2P address, the blocks it serves.
type TwinStarted = (Child, SocketAddr, Vec<(String, usize)>);

/// Starts the twin with `args` and waits until it says its port and blocks.
fn spawn_twin(binary: &Path, args: &[String]) -> Result<TwinStarted> {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting the twin node {}", binary.display()))?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut p2p_addr = None;
    let mut blocks = Vec::new();
    while p2p_addr.is_none() || blocks.len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| anyhow!("the twin node did not report its port and blocks in time"))?;
        if let Some(addr) = line.strip_prefix("listening on ") {
            p2p_addr = Some(addr.trim().parse()?);
        } else if let Some(rest) = line.strip_prefix("block ") {
            let mut parts = rest.split_whitespace();
            let hash = parts.next().context("block line")?.to_string();
            let size = parts.next().context("block line")?.parse()?;
            blocks.push((hash, size));
        }
    }
    Ok((child, p2p_addr.unwrap(), blocks))
}

/// bitcoind exited before it listened: most often a port taken between
/// [`free_port`] and its bind, which a start on other ports mends.
#[derive(Debug)]
struct ExitedBeforeListening(ExitStatus);

impl std::fmt::Display for ExitedBeforeListening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bitcoind exited ({}) before it listened", self.0)
    }
}

impl std::error::Error for ExitedBeforeListening {}

/// Starts bitcoind with `args` and waits until it listens on `p2p_addr`.
fn spawn_bitcoind(binary: &Path, args: &[String], p2p_addr: SocketAddr) -> Result<Child> {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect_timeout(&p2p_addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait()? {
            return Err(ExitedBeforeListening(status).into());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("bitcoind did not listen on {p2p_addr} within 60 s");
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(child)
}

/// A node to trace.
pub struct Node {
    child: Child,
    /// Its P2P listening address (loopback).
    pub p2p_addr: SocketAddr,
    /// Blocks the node can serve: (hash in display hex, serialized size).
    pub blocks: Vec<(String, usize)>,
    /// For a real bitcoind: its data directory (with `-capturemessages`).
    datadir: Option<tempfile::TempDir>,
    /// For a twin started with [`Node::start_with_datadir`]: the data
    /// directory whose `regtest/` it writes its pid file in.
    twin_datadir: Option<tempfile::TempDir>,
    /// The command line it runs with, to start it again ([`Node::start_again`]).
    args: Vec<String>,
    /// For a real bitcoind: its RPC port.
    rpc_port: Option<u16>,
    /// Which binary runs.
    pub binary: PathBuf,
}

impl Node {
    /// Starts the node the tests run against: `BITCOIND` if set, else the twin.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Starts the node the tests run against, a real bitcoind with these
    /// extra options (the twin takes none of bitcoind's options).
    pub fn start_with(bitcoind_args: &[&str]) -> Result<Self> {
        match bitcoind() {
            Some(path) => Self::start_bitcoind(&path, bitcoind_args),
            None => Self::start_twin(Path::new(TWIN), &[]),
        }
    }

    /// True when this is a real bitcoind.
    pub fn is_bitcoind(&self) -> bool {
        self.datadir.is_some()
    }

    /// Starts the node the tests run against with a data directory and its
    /// pid file in `DATADIR/regtest/bitcoind.pid`, as `bitcoind -regtest`
    /// keeps it: a real bitcoind (`BITCOIND`) has one anyway; the twin is
    /// given `-datadir=DATADIR/regtest`.
    pub fn start_with_datadir() -> Result<Self> {
        if bitcoind().is_some() {
            return Self::start();
        }
        let datadir = tempfile::tempdir()?;
        let chain_dir = datadir.path().join("regtest");
        std::fs::create_dir(&chain_dir)?;
        let arg = format!("-datadir={}", chain_dir.display());
        let mut node = Self::start_twin(Path::new(TWIN), &[&arg])?;
        node.twin_datadir = Some(datadir);
        Ok(node)
    }

    /// The data directory, for a real bitcoind or a twin started with one.
    pub fn datadir(&self) -> Option<&Path> {
        self.datadir
            .as_ref()
            .or(self.twin_datadir.as_ref())
            .map(tempfile::TempDir::path)
    }

    /// Stops the node (SIGTERM: a clean shutdown, which removes its pid
    /// file), to start it again with [`Node::start_again`].
    pub fn shut_down(&mut self) -> Result<ExitStatus> {
        signal(self.pid(), libc::SIGTERM);
        wait_timeout(&mut self.child, Duration::from_secs(60))
    }

    /// Starts the node again after [`Node::shut_down`], with the same
    /// options, on the same port and with the same data directory.
    pub fn start_again(&mut self) -> Result<()> {
        if self.is_bitcoind() {
            self.child = spawn_bitcoind(&self.binary, &self.args, self.p2p_addr)?;
            self.bitcoin_cli(&["-rpcwait", "getblockcount"])?;
        } else {
            let mut args = self.args.clone();
            // The last -port wins: the port the first run picked.
            args.push(format!("-port={}", self.p2p_addr.port()));
            (self.child, _, _) = spawn_twin(&self.binary, &args)?;
        }
        Ok(())
    }

    /// A copy of the twin named `bitcoin-node` in `bin_dir` (as Bitcoin
    /// Core v30's multiprocess binary is named), running with
    /// `-datadir=DATADIR`: a node found by its probes, not its name.
    pub fn start_as_bitcoin_node(bin_dir: &Path, datadir: &Path) -> Result<Self> {
        let exe = bin_dir.join("bitcoin-node");
        if !exe.exists() {
            std::fs::copy(TWIN, &exe).context("copying the twin")?;
        }
        std::fs::create_dir_all(datadir)?;
        Self::start_twin(&exe, &[&format!("-datadir={}", datadir.display())])
    }

    /// Starts a twin node binary with extra arguments.
    pub fn start_twin(binary: &Path, extra: &[&str]) -> Result<Self> {
        let args: Vec<String> = ["-port=0", "-printport"]
            .iter()
            .chain(extra)
            .map(ToString::to_string)
            .collect();
        let (child, p2p_addr, blocks) = spawn_twin(binary, &args)?;
        Ok(Self {
            child,
            p2p_addr,
            blocks,
            datadir: None,
            twin_datadir: None,
            args,
            rpc_port: None,
            binary: binary.to_path_buf(),
        })
    }

    /// Starts a real bitcoind on regtest, loopback only, with its own
    /// `-capturemessages` on so peerlog's capture can be compared with it,
    /// and `extra` options.
    pub fn start_bitcoind(binary: &Path, extra: &[&str]) -> Result<Self> {
        let datadir = tempfile::tempdir()?;
        // A port can still be taken between our check and bitcoind's bind:
        // then bitcoind exits, and a start on other ports mends it.
        let mut attempts = 0;
        let (child, args, p2p_addr, rpc_port) = loop {
            attempts += 1;
            let port = free_port()?;
            let rpc_port = free_port()?;
            let args = Self::bitcoind_args(datadir.path(), port, rpc_port, extra);
            let p2p_addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            match spawn_bitcoind(binary, &args, p2p_addr) {
                Ok(child) => break (child, args, p2p_addr, rpc_port),
                Err(e) if attempts < 3 && e.is::<ExitedBeforeListening>() => {
                    eprintln!("{e} on ports {port} and {rpc_port}; starting it on others");
                }
                Err(e) => return Err(e),
            }
        };
        let node = Self {
            child,
            p2p_addr,
            blocks: Vec::new(),
            datadir: Some(datadir),
            twin_datadir: None,
            args,
            rpc_port: Some(rpc_port),
            binary: binary.to_path_buf(),
        };
        // A fresh regtest node is in initial block download and ignores
        // transactions until it has a recent block: mine one.
        node.bitcoin_cli(&["-rpcwait", "generatetodescriptor", "1", "raw(51)"])?;
        Ok(node)
    }

    /// bitcoind's command line: regtest in `datadir`, loopback only, on
    /// these ports, with its own `-capturemessages`, and `extra`.
    fn bitcoind_args(datadir: &Path, port: u16, rpc_port: u16, extra: &[&str]) -> Vec<String> {
        [
            "-regtest".to_string(),
            format!("-datadir={}", datadir.display()),
            format!("-bind=127.0.0.1:{port}"),
            format!("-port={port}"),
            format!("-rpcport={rpc_port}"),
        ]
        .into_iter()
        .chain(
            [
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
                "-capturemessages",
                // The traffic includes an invalid transaction on purpose;
                // without noban bitcoind would disconnect us for it.
                "-whitelist=noban@127.0.0.1",
                "-listen=1",
                "-dnsseed=0",
                "-fixedseeds=0",
                "-discover=0",
                "-listenonion=0",
                "-printtoconsole=0",
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .map(ToString::to_string),
        )
        .collect()
    }

    /// Runs `bitcoin-cli` (next to the bitcoind binary) against this node;
    /// its standard output. Only for a real bitcoind.
    pub fn bitcoin_cli(&self, args: &[&str]) -> Result<String> {
        let cli = self.binary.with_file_name("bitcoin-cli");
        let datadir = self.datadir.as_ref().context("not a bitcoind")?;
        let rpc_port = self.rpc_port.context("not a bitcoind")?;
        let out = Command::new(&cli)
            .arg("-regtest")
            .arg(format!("-datadir={}", datadir.path().display()))
            .arg(format!("-rpcport={rpc_port}"))
            .args(args)
            .output()
            .with_context(|| format!("running {} (it must sit next to bitcoind)", cli.display()))?;
        if !out.status.success() {
            bail!(
                "bitcoin-cli {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// bitcoind's own capture directory (`-capturemessages`), for a real bitcoind.
    pub fn core_capture_dir(&self) -> Option<PathBuf> {
        self.datadir
            .as_ref()
            .map(|d| d.path().join("regtest/message_capture"))
    }

    /// Stops the node (SIGTERM) and waits for it.
    pub fn stop(mut self) -> Result<ExitStatus> {
        signal(self.pid(), libc::SIGTERM);
        wait_timeout(&mut self.child, Duration::from_secs(60))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(pid, sig) };
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("process {} did not exit within {timeout:?}", child.id());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A running `peerlog trace`.
pub struct Tracer {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

/// How a `peerlog trace` ended.
#[derive(Debug)]
pub struct TraceOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Tracer {
    /// Starts `peerlog trace --pid PID ARGS...` and waits until it says it is attached.
    pub fn start(pid: i32, args: &[&str]) -> Result<Self> {
        let pid = pid.to_string();
        Self::start_finding(&[&["--pid", pid.as_str()][..], args].concat())
    }

    /// Starts `peerlog trace ARGS...`, which find the node themselves
    /// (`--datadir`, `--pidfile`, or none), and waits until it says it is
    /// attached.
    pub fn start_finding(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(peerlog_bin()?)
            .arg("trace")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting peerlog")?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let collected = stderr.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                // Collected first: whoever is told "attached" may read it.
                collected.lock().unwrap().push_str(&line);
                if line.contains("attached") {
                    let _ = tx.send(());
                }
                line.clear();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return Ok(Self { child, stderr });
            }
            if let Some(status) = child.try_wait()? {
                thread::sleep(Duration::from_millis(100));
                bail!(
                    "peerlog exited ({status}) before attaching:\n{}",
                    stderr.lock().unwrap()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "peerlog did not attach within 60 s:\n{}",
                    stderr.lock().unwrap()
                );
            }
        }
    }

    /// Process id of peerlog itself.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What peerlog wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGINT and waits for the summary.
    pub fn stop(mut self) -> Result<TraceOutput> {
        signal(self.child.id() as i32, libc::SIGINT);
        self.wait()
    }

    /// Waits for peerlog to end by itself (target exit, `--duration`).
    pub fn wait(&mut self) -> Result<TraceOutput> {
        let status = wait_timeout(&mut self.child, Duration::from_secs(60))?;
        // Let the reader thread take the last lines.
        thread::sleep(Duration::from_millis(100));
        Ok(TraceOutput {
            status,
            stderr: self.stderr.lock().unwrap().clone(),
        })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The P2P network to speak: regtest for both the twin and a real bitcoind.
pub const NETWORK: bitcoin::Network = bitcoin::Network::Regtest;

/// Connects a client peer and completes the handshake.
pub fn connect(node: &Node) -> Result<P2pClient> {
    let opts = HandshakeOptions {
        read_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    P2pClient::connect_and_handshake(node.p2p_addr, NETWORK, opts)
        .map_err(|e| anyhow!("P2P handshake with {}: {e}", node.p2p_addr))
}

/// Makes sure the node has processed everything `peer` sent: a ping is
/// answered only after every earlier message of that peer was handled.
pub fn sync(peer: &mut P2pClient, nonce: u64) -> Result<()> {
    peer.ping(nonce).map_err(|e| anyhow!("ping: {e}"))?;
    Ok(())
}

/// Drives the standard traffic through one connection: pings, transaction
/// announcement and relay (valid and invalid), a block request (the twin
/// serves one of several hundred KB and one of exactly 4,000,000 bytes), and
/// a 4,000,000-byte message from the client. Returns the transcript after
/// reading everything the node sent.
pub fn standard_traffic(node: &Node, peer: &mut P2pClient) -> Result<()> {
    for nonce in 1..=3 {
        sync(peer, nonce)?;
    }
    let txs: Vec<bitcoin::Transaction> = (0..5).map(|i| p2p::test_transaction(i, 2)).collect();
    // Both the twin and bitcoind negotiate wtxidrelay with our client, and
    // then ignore MSG_TX announcements: announce by wtxid.
    let wtxids: Vec<_> = txs.iter().map(|t| t.compute_wtxid()).collect();
    peer.send(&p2p::inv_wtx(&wtxids))?;
    // The node asks for what it does not know; answer whatever it asks for.
    // bitcoind delays requests to inbound peers by 2 s (NONPREF_PEER_TX_DELAY).
    peer.recv_msg_type("getdata", Duration::from_secs(10))
        .map_err(|e| anyhow!("waiting for getdata: {e}"))?;
    for tx in &txs {
        peer.send(&bitcoin::p2p::message::NetworkMessage::Tx(tx.clone()))?;
    }
    peer.send(&bitcoin::p2p::message::NetworkMessage::Tx(
        p2p::invalid_test_transaction(7),
    ))?;
    sync(peer, 10)?;
    if node.is_bitcoind() {
        await_parent_requests(peer, &txs)?;
    }
    for (hash, _size) in node.blocks.clone() {
        let hash: bitcoin::BlockHash = hash.parse()?;
        peer.send(&p2p::getdata_block(&[hash]))?;
        peer.recv_msg_type("block", Duration::from_secs(30))
            .map_err(|e| anyhow!("waiting for block {hash}: {e}"))?;
    }
    // The largest message the protocol allows, of a type no node handles.
    let big: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i * 7 + i / 251) as u8).collect();
    peer.send_raw("peerlogbig", &big)?;
    sync(peer, 11)?;
    peer.drain(Duration::from_millis(300))
        .map_err(|e| anyhow!("drain: {e}"))?;
    Ok(())
}

/// bitcoind keeps the test transactions, whose inputs it does not know, as
/// orphans and asks the peer that sent them for their parents, 2 s later
/// for an inbound peer (`NONPREF_PEER_TX_DELAY`). Waits until it has asked
/// for every parent, so that its requests are in the transcript rather than
/// in flight when a test compares the transcript with a capture.
fn await_parent_requests(peer: &mut P2pClient, txs: &[bitcoin::Transaction]) -> Result<()> {
    use bitcoin::p2p::message_blockdata::Inventory;
    let mut parents: Vec<bitcoin::Txid> = txs
        .iter()
        .flat_map(|t| t.input.iter().map(|i| i.previous_output.txid))
        .collect();
    while !parents.is_empty() {
        let getdata = peer
            .recv_msg_type("getdata", Duration::from_secs(10))
            .map_err(|e| {
                anyhow!("waiting for bitcoind to ask for the orphans' parents {parents:?}: {e}")
            })?;
        let inventory: Vec<Inventory> = bitcoin::consensus::deserialize(getdata.payload())
            .context("bitcoind's getdata does not decode")?;
        for entry in inventory {
            if let Inventory::Transaction(txid) | Inventory::WitnessTransaction(txid) = entry {
                parents.retain(|p| *p != txid);
            }
        }
    }
    Ok(())
}

/// The capture files of the connection whose client end is `local`.
pub fn capture_of(files: &[CaptureFile], local: SocketAddr) -> Vec<&CaptureFile> {
    let addr = local.to_string();
    files
        .iter()
        .filter(|f| f.peer_addr.as_deref() == Some(addr.as_str()))
        .collect()
}

/// Checks that the capture of a connection equals its transcript, message
/// for message and byte for byte, in both directions: what the client sent is
/// what the node received and vice versa. Timestamps must be on the same
/// clock (within `max_skew`).
pub fn assert_capture_matches(
    files: &[CaptureFile],
    local: SocketAddr,
    transcript: &Transcript,
    max_skew: Duration,
) -> Result<()> {
    let ours = capture_of(files, local);
    if ours.is_empty() {
        bail!(
            "no capture directory for {local}; have {:?}",
            files.iter().map(|f| &f.path).collect::<Vec<_>>()
        );
    }
    for (capture_dir, client_dir) in [
        (peerlog_common::Direction::Inbound, PeerDirection::Sent),
        (peerlog_common::Direction::Outbound, PeerDirection::Received),
    ] {
        let records: Vec<_> = ours
            .iter()
            .filter(|f| f.direction == capture_dir)
            .flat_map(|f| {
                if let Some(t) = &f.truncated {
                    panic!("{} ends in a truncated record: {t:?}", f.path.display());
                }
                f.records.iter()
            })
            .collect();
        let expected: Vec<_> = transcript
            .entries()
            .iter()
            .filter(|e| e.direction == client_dir)
            .collect();
        if records.len() != expected.len() {
            bail!(
                "{local} {capture_dir}: capture has {} messages, the client {} ({:?} vs {:?})",
                records.len(),
                expected.len(),
                records
                    .iter()
                    .map(|r| r.msg_type.as_str())
                    .collect::<Vec<_>>(),
                expected
                    .iter()
                    .map(|e| e.msg_type.as_str())
                    .collect::<Vec<_>>()
            );
        }
        for (i, (r, e)) in records.iter().zip(&expected).enumerate() {
            if r.msg_type != e.msg_type || r.payload != e.payload {
                bail!(
                    "{local} {capture_dir} message {i}: capture {} ({} bytes) != client {} ({} bytes)",
                    r.msg_type,
                    r.payload.len(),
                    e.msg_type,
                    e.payload.len()
                );
            }
            let skew = r.time_micros.abs_diff(e.time_micros);
            if skew > max_skew.as_micros() as u64 {
                bail!("{local} {capture_dir} message {i} ({}): capture time {} is {skew} µs from the client's {}", r.msg_type, r.time_micros, e.time_micros);
            }
        }
    }
    Ok(())
}

/// Reads a capture tree.
pub fn read_capture(dir: &Path) -> Result<Vec<CaptureFile>> {
    read_capture_tree(dir).map_err(|e| anyhow!("reading capture {}: {e}", dir.display()))
}
