//! The control RPC of a running `peerlog trace`, and `peerlog ctl`, its
//! command-line client.
//!
//! `peerlog trace` listens on a Unix socket, by default
//! `/run/peerlog/<PID>.sock` where PID is bitcoind's (so `peerlog ctl --pid
//! $(pidof bitcoind)` finds it), mode 0600 in a 0700 directory: only the
//! user that runs peerlog (root) can connect. `--rpc-socket PATH` puts it
//! elsewhere, `--no-rpc` turns it off. A socket already at the path is
//! replaced only if nobody listens on it (a killed peerlog's); anything else
//! there (a file, a directory, a symlink, a live socket) is an error and
//! left alone.
//!
//! The protocol is JSON-RPC 2.0, one request (or batch) per line, one
//! response per line. Methods (schema in docs/stats.md):
//! - `getpeerstats {peers?, msg_types?}`: per-peer figures, shaped like
//!   `getpeerinfo`;
//! - `getnodestats {msg_types?}`: the whole node's figures;
//! - `getstatus`: attached probes, missing figures, uptime, events, losses,
//!   capture settings;
//! - `setcapture {enabled?, peers?, msg_types?}`: turns the capture on or
//!   off and changes which peers and message types it takes;
//! - `help`: the methods.
//!
//! Parameters go by name (an object) or by position (an array, in the
//! order above). The server task only parses and validates; the trace loop
//! owns every figure and switch and answers each request in its `select!`
//! through a oneshot channel, so nothing is shared between threads.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Map, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::{
    filter::PeerFilter,
    private_fs::{DIR_MODE, FILE_MODE},
    stats::{self, StatsFilter, StatsOptions},
};

/// Directory of the default sockets.
pub const SOCKET_DIR: &str = "/run/peerlog";

/// The default socket of a trace of bitcoind `pid`.
pub fn default_socket(pid: i32) -> PathBuf {
    Path::new(SOCKET_DIR).join(format!("{pid}.sock"))
}

/// Where the control RPC listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcSocket {
    /// [`default_socket`]; if it cannot be created, peerlog warns and runs without RPC.
    Default,
    /// This path; if it cannot be created, `peerlog trace` fails.
    Path(PathBuf),
    /// No control RPC.
    Off,
}

/// A request line longer than this is refused.
const MAX_REQUEST_LEN: u64 = 1 << 20;
/// Requests waiting for the trace loop; senders wait when it is full.
const QUEUE_LEN: usize = 64;

/// The methods, for `help`.
const METHODS: [(&str, &str); 5] = [
    (
        "getpeerstats",
        "{\"peers\": [FILTER...], \"msg_types\": [TYPE...]} -> [peer figures]",
    ),
    (
        "getnodestats",
        "{\"msg_types\": [TYPE...]} -> the whole node's figures",
    ),
    (
        "getstatus",
        "-> attached probes, missing figures, uptime, events, losses, capture",
    ),
    (
        "setcapture",
        "{\"enabled\": BOOL, \"peers\": [FILTER...], \"msg_types\": [TYPE...]} -> capture settings",
    ),
    ("help", "-> this list"),
];

/// A change of the capture settings; what is None stays as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureChange {
    /// Capture on or off.
    pub enabled: Option<bool>,
    /// The peers captured (empty: every peer).
    pub peers: Option<Vec<PeerFilter>>,
    /// The message types captured (empty: every type).
    pub msg_types: Option<Vec<String>>,
}

/// The capture settings, as `setcapture` and `getstatus` report them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CaptureState {
    /// Whether payloads are copied and capture records written.
    pub enabled: bool,
    /// The capture directory (`--capture`), if any.
    pub directory: Option<PathBuf>,
    /// Whether the JSON lines carry payloads (`--payload`).
    pub jsonl_payloads: bool,
    /// Peer filter terms (empty: every peer).
    pub peers: Vec<String>,
    /// Message types (empty: every type).
    pub msg_types: Vec<String>,
}

/// What a request asks the trace loop.
#[derive(Debug)]
pub enum Query {
    /// `setcapture`: answered by the trace loop, which owns the capture.
    SetCapture(CaptureChange),
    /// Figures and status: answered by the [`stats::Reporter`].
    Report(ReportQuery),
}

/// A question about the figures or the trace.
#[derive(Debug)]
pub enum ReportQuery {
    /// `getpeerstats`.
    PeerStats(StatsFilter),
    /// `getnodestats`.
    NodeStats(StatsFilter),
    /// `getstatus`.
    Status,
    /// A scrape of the Prometheus endpoint, with its filter (None: the
    /// `--stats-peer`/`--stats-msg-type` default). The answer is the text,
    /// as a JSON string.
    Metrics(Option<StatsFilter>),
}

/// A request for the trace loop, with where to send the answer.
#[derive(Debug)]
pub struct Request {
    /// What is asked.
    pub query: Query,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Value, RpcError>>,
}

/// A JSON-RPC error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    /// JSON-RPC error code.
    pub code: i64,
    /// What went wrong.
    pub message: String,
}

impl RpcError {
    /// Invalid method parameters (-32602).
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self {
            code: -32602,
            message: message.into(),
        }
    }

    /// The request was valid but could not be carried out (-32603).
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            code: -32603,
            message: message.into(),
        }
    }

    fn to_json(&self) -> Value {
        json!({"code": self.code, "message": self.message})
    }
}

/// What `getstatus` and the metrics say about the trace itself, collected
/// by the trace loop.
#[derive(Debug, Clone)]
pub struct TraceStatus {
    /// bitcoind's pid.
    pub pid: i32,
    /// bitcoind's executable.
    pub exe: PathBuf,
    /// USDT probe sites attached.
    pub probe_sites: usize,
    /// Every loss counter by name, kernel and userspace, zeros included.
    pub losses: Vec<(String, u64)>,
    /// The capture settings.
    pub capture: CaptureState,
    /// The control RPC socket, if listening.
    pub rpc_socket: Option<PathBuf>,
}

/// The answer of `getstatus`.
pub fn status_json(trace: &TraceStatus, report: &stats::Reporter) -> Value {
    let c = &report.collector;
    let losses: Map<String, Value> = trace
        .losses
        .iter()
        .map(|(name, n)| (name.clone(), json!(n)))
        .collect();
    let opts = report.options();
    let uptime = report.started().elapsed().unwrap_or_default();
    json!({
        "pid": trace.pid,
        "exe": trace.exe,
        "started_at": report.started().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs(),
        "uptime_s": uptime.as_secs_f64(),
        "probe_sites": trace.probe_sites,
        "coverage": c.coverage().to_json(),
        "missing_figures": c.coverage().missing_figures(),
        "events": c.events(),
        "losses": losses,
        "events_lost": trace.losses.iter().map(|(_, n)| n).sum::<u64>(),
        "peers_connected": c.peers().filter(|p| !p.closed).count(),
        "msghand_thread": report.msghand_json(),
        "capture": trace.capture,
        "outputs": {
            "rpc_socket": trace.rpc_socket,
            "stats_log": opts.stats_log,
            "stats_interval_s": opts.interval.as_secs_f64(),
            "hdr_log": opts.hdr_log,
            "metrics": opts.metrics.map(|a| format!("http://{a}/metrics")),
        },
    })
}

/// The listening RPC and metrics servers. Dropping it stops them and
/// removes the socket.
pub struct Servers {
    requests: mpsc::Receiver<Request>,
    // Kept so that `next` waits forever when no server runs, instead of
    // seeing a closed channel.
    _sender: mpsc::Sender<Request>,
    tasks: Vec<JoinHandle<()>>,
    /// The control socket and its inode, to remove it only if it is still ours.
    socket: Option<(PathBuf, FileId)>,
}

impl Servers {
    /// Starts the servers the options ask for, for a trace of bitcoind `pid`.
    /// Must run inside the tokio runtime.
    pub fn start(opts: &StatsOptions, pid: i32) -> Result<Self> {
        let (sender, requests) = mpsc::channel(QUEUE_LEN);
        let mut tasks = Vec::new();
        let socket = match &opts.rpc {
            RpcSocket::Off => None,
            RpcSocket::Path(path) => Some((path.clone(), bind(path, false)?)),
            RpcSocket::Default => {
                remove_dead_sockets();
                let path = default_socket(pid);
                match bind(&path, true) {
                    Ok(bound) => Some((path, bound)),
                    Err(e) => {
                        log::warn!("control RPC off: {e:#}; pass --rpc-socket PATH (or --no-rpc)");
                        None
                    }
                }
            }
        };
        let socket = socket.map(|(path, (listener, id))| {
            tasks.push(tokio::spawn(serve_rpc(listener, sender.clone())));
            (path, id)
        });
        if let Some(addr) = opts.metrics {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            tasks.push(tokio::spawn(crate::metrics::serve(
                listener,
                sender.clone(),
            )));
        }
        Ok(Self {
            requests,
            _sender: sender,
            tasks,
            socket,
        })
    }

    /// The next request for the trace loop.
    pub async fn next(&mut self) -> Request {
        match self.requests.recv().await {
            Some(request) => request,
            None => std::future::pending().await,
        }
    }

    /// The control socket, if listening.
    pub fn socket(&self) -> Option<&Path> {
        self.socket.as_ref().map(|(path, _)| path.as_path())
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Whatever took the socket's name meanwhile is not ours to remove.
        if let Some((path, id)) = &self.socket {
            if file_id(path).ok() == Some(*id) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Removes the sockets in [`SOCKET_DIR`] that nobody listens on: left by
/// traces that were killed (SIGKILL) before they could remove them.
fn remove_dead_sockets() {
    let Ok(dir) = std::fs::read_dir(SOCKET_DIR) else {
        return;
    };
    for path in dir.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().is_some_and(|x| x == "sock") {
            if let Err(e) = remove_stale_socket(&path) {
                log::debug!("{e:#}");
            }
        }
    }
}

/// Makes way for a socket at `path`. Nothing there is fine. A socket that
/// refuses connections is left over from a peerlog that was killed, and is
/// removed. Anything else is not peerlog's to remove, and is an error
/// naming it: a socket that answers (another running peerlog), a file, a
/// directory, a symlink.
fn remove_stale_socket(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot examine {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; peerlog does not replace it: remove it or choose \
             another --rpc-socket PATH",
            path.display()
        );
    }
    match StdUnixStream::connect(path) {
        Ok(_) => bail!(
            "{} is the control socket of another running peerlog",
            path.display()
        ),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display())),
        Err(e) => bail!(
            "cannot tell whether the socket {} is still in use ({e}); remove it if it is stale",
            path.display()
        ),
    }
}

/// Makes sure the socket directory `dir` is a directory of this user's that
/// nobody else can enter: created with mode 0700 if missing, tightened to
/// 0700 if looser. A symlink or another user's directory is refused.
fn private_socket_dir(dir: &Path) -> Result<()> {
    crate::private_fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let meta = std::fs::symlink_metadata(dir)
        .with_context(|| format!("cannot examine {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "{} is not a directory (a symlink?); peerlog keeps its sockets in a directory of its own",
            dir.display()
        );
    }
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        bail!(
            "{} belongs to uid {}, not to peerlog's uid {euid}; peerlog keeps its sockets in a \
             directory of its own",
            dir.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
            .with_context(|| format!("cannot make {} private (mode 0700)", dir.display()))?;
    }
    Ok(())
}

/// Device and inode of a file (not following a symlink).
type FileId = (u64, u64);

fn file_id(path: &Path) -> std::io::Result<FileId> {
    std::fs::symlink_metadata(path).map(|m| (m.dev(), m.ino()))
}

/// Binds the socket at `path`, mode 0600; with `default_dir`, in a private
/// [`SOCKET_DIR`]-like directory ([`private_socket_dir`]). What is at
/// `path` already is handled by [`remove_stale_socket`]. Returns the
/// listener and the socket file's id.
fn bind(path: &Path, default_dir: bool) -> Result<(UnixListener, FileId)> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if default_dir {
        private_socket_dir(dir)?;
    }
    remove_stale_socket(path)?;
    // Bind inside a new directory only we can enter, set the mode, and only
    // then give the socket its name with link(2): it is never reachable
    // with the umask's permissions, and link fails rather than replace
    // whatever appeared at `path` meanwhile.
    let private = tempfile::Builder::new()
        .prefix(".peerlog-rpc-")
        .tempdir_in(dir)
        .with_context(|| format!("cannot create a directory in {}", dir.display()))?;
    let tmp = private.path().join("s");
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("cannot listen on {}", tmp.display()))?;
    let id = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(FILE_MODE))
        .and_then(|()| std::fs::hard_link(&tmp, path))
        .and_then(|()| file_id(&tmp))
        .with_context(|| format!("cannot create {}", path.display()))?;
    // Dropping `private` removes the directory and the socket's first name.
    Ok((listener, id))
}

async fn serve_rpc(listener: UnixListener, sender: mpsc::Sender<Request>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_connection(stream, sender.clone()));
            }
            Err(e) => {
                log::warn!("control RPC: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_connection(stream: UnixStream, sender: mpsc::Sender<Request>) {
    let (read, mut write) = stream.into_split();
    let mut reader = AsyncBufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(MAX_REQUEST_LEN + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let response = if n as u64 > MAX_REQUEST_LEN {
            Some(error_response(
                Value::Null,
                &RpcError {
                    code: -32600,
                    message: format!("request longer than {MAX_REQUEST_LEN} bytes"),
                },
            ))
        } else if line.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            handle_line(&line, &sender).await
        };
        if let Some(response) = response {
            let mut text = response.to_string();
            text.push('\n');
            if write.write_all(text.as_bytes()).await.is_err() {
                return;
            }
        }
        if n as u64 > MAX_REQUEST_LEN {
            return;
        }
    }
}

fn error_response(id: Value, e: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()})
}

/// Answers one line: a request or a batch. None when nothing is to be
/// sent back (notifications only).
async fn handle_line(line: &[u8], sender: &mpsc::Sender<Request>) -> Option<Value> {
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_response(
                Value::Null,
                &RpcError {
                    code: -32700,
                    message: format!("parse error: {e}"),
                },
            ))
        }
    };
    match value {
        Value::Array(batch) if batch.is_empty() => Some(error_response(
            Value::Null,
            &RpcError {
                code: -32600,
                message: "empty batch".into(),
            },
        )),
        Value::Array(batch) => {
            let mut out = Vec::new();
            for call in batch {
                out.extend(handle_call(call, sender).await);
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        call => handle_call(call, sender).await,
    }
}

async fn handle_call(call: Value, sender: &mpsc::Sender<Request>) -> Option<Value> {
    let invalid = |message: &str| RpcError {
        code: -32600,
        message: message.into(),
    };
    let Value::Object(call) = call else {
        return Some(error_response(
            Value::Null,
            &invalid("a request is an object"),
        ));
    };
    // A request without an id is a notification: carried out, not answered.
    let id = call.get("id").cloned();
    let respond = |result: Result<Value, RpcError>| {
        let id = id.clone()?;
        Some(match result {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(e) => error_response(id, &e),
        })
    };
    if call.get("jsonrpc") != Some(&json!("2.0")) {
        return respond(Err(invalid("\"jsonrpc\" must be \"2.0\"")));
    }
    let Some(method) = call.get("method").and_then(Value::as_str) else {
        return respond(Err(invalid("\"method\" must be a string")));
    };
    let params = call.get("params").cloned().unwrap_or(Value::Null);
    let query = match parse_query(method, params) {
        Ok(Some(query)) => query,
        Ok(None) => {
            let help: Map<String, Value> = METHODS
                .iter()
                .map(|(m, d)| (m.to_string(), json!(d)))
                .collect();
            return respond(Ok(Value::Object(help)));
        }
        Err(e) => return respond(Err(e)),
    };
    respond(ask(sender, query).await)
}

/// Sends a query to the trace loop and waits for its answer.
pub async fn ask(sender: &mpsc::Sender<Request>, query: Query) -> Result<Value, RpcError> {
    let (reply, answer) = oneshot::channel();
    let stopped = || RpcError::internal("peerlog is stopping");
    sender
        .send(Request { query, reply })
        .await
        .map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}

/// The query of `method`; None for `help`, which the server answers itself.
fn parse_query(method: &str, params: Value) -> Result<Option<Query>, RpcError> {
    let names: &[&str] = match method {
        "getpeerstats" => &["peers", "msg_types"],
        "getnodestats" => &["msg_types"],
        "setcapture" => &["enabled", "peers", "msg_types"],
        "getstatus" | "help" => &[],
        _ => {
            return Err(RpcError {
                code: -32601,
                message: format!("method not found: {method} (try help)"),
            })
        }
    };
    let params = named_params(params, names)?;
    let peers = || -> Result<Option<Vec<PeerFilter>>, RpcError> {
        strings(&params, "peers")?
            .map(|terms| {
                terms
                    .iter()
                    .map(|t| {
                        t.parse().map_err(|e: crate::filter::FilterError| {
                            RpcError::invalid_params(e.to_string())
                        })
                    })
                    .collect()
            })
            .transpose()
    };
    let msg_types = |for_stats: bool| -> Result<Option<Vec<String>>, RpcError> {
        let types = strings(&params, "msg_types")?;
        if let Some(types) = &types {
            let checked = if for_stats {
                stats::check_msg_types(types)
            } else {
                types
                    .iter()
                    .try_for_each(|t| crate::probes::msg_type_key(t).map(|_| ()))
            };
            checked.map_err(|e| RpcError::invalid_params(format!("{e:#}")))?;
        }
        Ok(types)
    };
    Ok(Some(match method {
        "getpeerstats" => Query::Report(ReportQuery::PeerStats(StatsFilter::new(
            peers()?.unwrap_or_default(),
            msg_types(true)?.unwrap_or_default(),
        ))),
        "getnodestats" => Query::Report(ReportQuery::NodeStats(StatsFilter::new(
            Vec::new(),
            msg_types(true)?.unwrap_or_default(),
        ))),
        "getstatus" => Query::Report(ReportQuery::Status),
        "setcapture" => {
            let enabled = match params.get("enabled") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => {
                    return Err(RpcError::invalid_params(
                        "\"enabled\" must be true or false",
                    ))
                }
            };
            let change = CaptureChange {
                enabled,
                peers: peers()?,
                msg_types: msg_types(false)?,
            };
            if change == CaptureChange::default() {
                return Err(RpcError::invalid_params(
                    "setcapture needs \"enabled\", \"peers\" or \"msg_types\"",
                ));
            }
            Query::SetCapture(change)
        }
        _ => return Ok(None),
    }))
}

/// Parameters by name, from an object, an array (by position) or nothing.
fn named_params(params: Value, names: &[&str]) -> Result<Map<String, Value>, RpcError> {
    let map = match params {
        Value::Null => Map::new(),
        Value::Object(map) => map,
        Value::Array(list) => {
            if list.len() > names.len() {
                return Err(RpcError::invalid_params(format!(
                    "at most {} parameters: {}",
                    names.len(),
                    names.join(", ")
                )));
            }
            names
                .iter()
                .zip(list)
                .map(|(n, v)| (n.to_string(), v))
                .collect()
        }
        _ => {
            return Err(RpcError::invalid_params(
                "params must be an object or an array",
            ))
        }
    };
    if let Some(unknown) = map.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(RpcError::invalid_params(format!(
            "unknown parameter {unknown:?} (known: {})",
            names.join(", ")
        )));
    }
    Ok(map)
}

/// A parameter that is a string or a list of strings; None when absent or null.
fn strings(params: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_string).ok_or_else(|| {
                    RpcError::invalid_params(format!("\"{name}\" must be a list of strings"))
                })
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(RpcError::invalid_params(format!(
            "\"{name}\" must be a string or a list of strings"
        ))),
    }
}

/// Arguments of `peerlog ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The peerlog tracing this bitcoind pid (socket /run/peerlog/PID.sock).
    /// Without --pid or --socket: the only running trace with a socket in
    /// /run/peerlog.
    #[arg(long, conflicts_with = "socket", value_parser = crate::args::number_in(1, i32::MAX, ""))]
    pub pid: Option<i32>,

    /// The control socket of the peerlog to talk to (`--rpc-socket` of `peerlog trace`).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// getpeerstats, getnodestats, getstatus, setcapture or help.
    pub method: String,

    /// Parameters as JSON, by name or by position, e.g.
    /// '{"peers": ["inbound"], "msg_types": ["tx"]}' or '[["5"]]'.
    pub params: Option<String>,
}

/// The socket `peerlog ctl` talks to.
fn ctl_socket(args: &CtlArgs) -> Result<PathBuf> {
    if let Some(path) = &args.socket {
        return Ok(path.clone());
    }
    if let Some(pid) = args.pid {
        // A thread id names its process's trace, as in `peerlog trace`.
        let pid = crate::target::resolve_pid(pid).map_or(pid, |r| r.pid);
        return Ok(default_socket(pid));
    }
    // Only sockets a running peerlog answers on: a killed one leaves its file.
    let sockets: Vec<PathBuf> = std::fs::read_dir(SOCKET_DIR)
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .filter(|p| StdUnixStream::connect(p).is_ok())
                .collect()
        })
        .unwrap_or_default();
    match &sockets[..] {
        [one] => Ok(one.clone()),
        [] => {
            bail!("no peerlog trace is running with a socket in {SOCKET_DIR}; pass --socket PATH")
        }
        many => bail!(
            "several peerlog traces are running ({}); pass --pid PID or --socket PATH",
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs `peerlog ctl`: one request, its result on stdout (pretty JSON, or
/// the text of a string result).
pub fn ctl(args: CtlArgs) -> Result<()> {
    let params: Value = match args.params.as_deref().map(str::trim) {
        None | Some("") => Value::Null,
        Some(text) => serde_json::from_str(text)
            .with_context(|| format!("the parameters are not JSON: {text}"))?,
    };
    let path = ctl_socket(&args)?;
    let result = call(&path, &args.method, params)?;
    let text = match &result {
        Value::String(s) => s.clone(),
        other => serde_json::to_string_pretty(other)?,
    };
    println!("{text}");
    Ok(())
}

/// Sends one JSON-RPC request to the socket at `path` and returns its result.
pub fn call(path: &Path, method: &str, params: Value) -> Result<Value> {
    let mut stream = StdUnixStream::connect(path).with_context(|| {
        format!(
            "cannot connect to {} (is peerlog trace running?)",
            path.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut request =
        json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).to_string();
    request.push('\n');
    stream.write_all(request.as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .with_context(|| format!("reading the answer from {}", path.display()))?;
    let response: Value = serde_json::from_str(&line)
        .with_context(|| format!("not a JSON-RPC response: {line:?}"))?;
    if let Some(e) = response.get("error") {
        return Err(anyhow!(
            "{} (error {})",
            e["message"].as_str().unwrap_or("unknown error"),
            e["code"]
        ));
    }
    response
        .get("result")
        .cloned()
        .context("a JSON-RPC response without result")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_from_named_and_positional_params() {
        let q = parse_query(
            "getpeerstats",
            json!({"peers": ["inbound", "5"], "msg_types": "tx"}),
        )
        .unwrap()
        .unwrap();
        let Query::Report(ReportQuery::PeerStats(f)) = q else {
            panic!("{q:?}")
        };
        assert_eq!(f.msg_types, vec!["tx"]);
        assert!(!f.peers.selects_all());

        let q = parse_query("setcapture", json!([false])).unwrap().unwrap();
        let Query::SetCapture(c) = q else {
            panic!("{q:?}")
        };
        assert_eq!(c.enabled, Some(false));
        assert_eq!(c.peers, None);

        assert!(parse_query("help", Value::Null).unwrap().is_none());
        assert!(matches!(
            parse_query("getstatus", Value::Null),
            Ok(Some(Query::Report(ReportQuery::Status)))
        ));
    }

    #[test]
    fn bad_requests_say_why() {
        let code = |m: &str, p: Value| parse_query(m, p).unwrap_err().code;
        assert_eq!(code("getpeerinfo", Value::Null), -32601);
        assert_eq!(code("getpeerstats", json!({"peers": ["net=mars"]})), -32602);
        assert_eq!(
            code("getpeerstats", json!({"msg_types": ["twinburn"]})),
            -32602
        );
        assert_eq!(code("getpeerstats", json!({"peer": "5"})), -32602);
        assert_eq!(code("setcapture", json!({})), -32602);
        assert_eq!(code("setcapture", json!({"enabled": "yes"})), -32602);
        assert_eq!(code("getnodestats", json!([[], []])), -32602);
        // Capture takes any message type a peer can send, not only Core's.
        assert!(parse_query("setcapture", json!({"msg_types": ["twinburn"]})).is_ok());
    }

    #[tokio::test]
    async fn only_a_stale_socket_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let file = tmp.path().join("file");
        std::fs::write(&file, b"precious").unwrap();
        let dir = tmp.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        for path in [&file, &dir, &link] {
            let err = bind(path, false).unwrap_err().to_string();
            assert!(
                err.contains(&path.display().to_string()) && err.contains("not a socket"),
                "{err}"
            );
        }
        assert_eq!(std::fs::read(&file).unwrap(), b"precious");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert!(dir.is_dir());

        // A socket nobody listens on (its peerlog was killed) is replaced.
        let stale = tmp.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let _listener = bind(&stale, false).unwrap();
        assert!(StdUnixStream::connect(&stale).is_ok());
        // Only the socket is left: no temporary name stays behind.
        let mut names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["dir", "file", "link", "stale.sock", "victim"]);
    }

    #[tokio::test]
    async fn socket_directory_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let _listener = bind(&dir.join("1.sock"), true).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let mode = std::fs::symlink_metadata(dir.join("1.sock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A symlink in place of the directory is refused.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let linked = tmp.path().join("linked");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        let err = bind(&linked.join("1.sock"), true).unwrap_err().to_string();
        assert!(err.contains(&linked.display().to_string()), "{err}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn socket_round_trip_with_batch_and_notification() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("t.sock");
        let opts = StatsOptions {
            stats_log: None,
            interval: Duration::from_secs(1),
            hdr_log: None,
            metrics: None,
            filter: StatsFilter::default(),
            rpc: RpcSocket::Path(path.clone()),
        };
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut servers = Servers::start(&opts, 1).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A second trace on the same socket is refused.
        assert!(bind(&path, false).is_err());

        let answer = tokio::spawn(async move {
            for _ in 0..2 {
                let request = servers.next().await;
                let result = match request.query {
                    Query::Report(ReportQuery::Status) => Ok(json!("status")),
                    other => Err(RpcError::internal(format!("{other:?}"))),
                };
                request.reply.send(result).unwrap();
            }
            servers
        });
        let path2 = path.clone();
        let lines = tokio::task::spawn_blocking(move || {
            let mut s = StdUnixStream::connect(&path2).unwrap();
            s.write_all(
                b"[{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"getstatus\"},\
                  {\"jsonrpc\":\"2.0\",\"method\":\"getstatus\"},\
                  {\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"nope\"}]\n{bad\n",
            )
            .unwrap();
            let mut r = BufReader::new(s);
            let mut out = Vec::new();
            for _ in 0..2 {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                out.push(serde_json::from_str::<Value>(&line).unwrap());
            }
            out
        })
        .await
        .unwrap();
        let batch = lines[0].as_array().unwrap();
        assert_eq!(
            batch.len(),
            2,
            "the notification is not answered: {batch:?}"
        );
        assert_eq!(batch[0]["result"], "status");
        assert_eq!(batch[1]["error"]["code"], -32601);
        assert_eq!(lines[1]["error"]["code"], -32700);

        let servers = answer.await.unwrap();
        drop(servers);
        assert!(!path.exists(), "the socket is removed when peerlog stops");
    }
}
