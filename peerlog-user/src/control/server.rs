//! The control servers of `peerlog trace`: the JSON-RPC socket (created
//! private, replacing only a dead peerlog's) and, with `--metrics`, the
//! Prometheus endpoint. They parse and validate; the trace loop answers.

use std::{
    future::Future,
    os::unix::{
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader},
    net::{UnixListener, UnixStream},
    sync::mpsc,
    task::JoinHandle,
};

use super::protocol::{
    ask, error_response, parse_query, Request, RpcError, RpcSocket, METHODS, SOCKET_DIR,
};
use super::ControlOptions;
use crate::private_fs::{DIR_MODE, FILE_MODE};

/// A request line longer than this is refused.
const MAX_REQUEST_LEN: u64 = 1 << 20;
/// Requests waiting for the trace loop; senders wait when it is full.
const QUEUE_LEN: usize = 64;

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
    /// Starts the servers the options ask for; the RPC socket is
    /// `default_socket` unless the options name one. Must run inside the
    /// tokio runtime.
    pub fn start(opts: &ControlOptions, default_socket: PathBuf) -> Result<Self> {
        let (sender, requests) = mpsc::channel(QUEUE_LEN);
        let mut tasks = Vec::new();
        let socket = match &opts.rpc {
            RpcSocket::Off => None,
            RpcSocket::Path(path) => Some((path.clone(), bind(path, false)?)),
            RpcSocket::Default => {
                remove_dead_sockets();
                let path = default_socket;
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
            tasks.push(tokio::spawn(serve_metrics(listener, sender.clone())));
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

/// Serves the control socket until aborted.
async fn serve_rpc(listener: UnixListener, sender: mpsc::Sender<Request>) {
    let serve = |(stream, _)| serve_connection(stream, sender.clone());
    accept_loop("control RPC", || listener.accept(), serve).await;
}

/// Serves the Prometheus endpoint until aborted.
async fn serve_metrics(listener: tokio::net::TcpListener, sender: mpsc::Sender<Request>) {
    let serve = |(stream, _)| super::http::serve_connection(stream, sender.clone());
    accept_loop("metrics", || listener.accept(), serve).await;
}

/// Accepts connections until aborted, each served by a task of its own.
/// A failed accept (out of file descriptors, say) is retried after a
/// pause rather than ending the server.
async fn accept_loop<S, A, AF, H, HF>(what: &str, mut accept: A, serve: H)
where
    A: FnMut() -> AF,
    AF: Future<Output = std::io::Result<S>>,
    H: Fn(S) -> HF,
    HF: Future<Output = ()> + Send + 'static,
{
    loop {
        match accept().await {
            Ok(stream) => {
                tokio::spawn(serve(stream));
            }
            Err(e) => {
                log::warn!("{what}: accept failed: {e}");
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};

    use super::*;
    use crate::control::protocol::{Query, ReportQuery};

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
        let opts = ControlOptions {
            rpc: RpcSocket::Path(path.clone()),
            metrics: None,
        };
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let mut servers =
            Servers::start(&opts, crate::control::protocol::default_socket(1)).unwrap();
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
