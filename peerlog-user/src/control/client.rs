//! `peerlog ctl`: one JSON-RPC request to a running trace's control
//! socket, its result on stdout.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream as StdUnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::protocol::{default_socket, SOCKET_DIR};

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
        let pid = crate::node::resolve_pid(pid).map_or(pid, |r| r.pid);
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
