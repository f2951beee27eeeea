//! A child process of the bench (node, tracer, load generator) with its
//! output read as it comes, and killed if the bench gives up on it.

use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// A child process whose stdout or stderr is read line by line, both kept
/// (for errors and summaries) and handed over as they come (to wait for a
/// line). Killed when dropped, so an error leaves nothing running.
pub(super) struct Proc {
    pub(super) what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    text: Arc<Mutex<String>>,
    reaped: bool,
}

/// Which output of a [`Proc`] to read.
#[derive(Clone, Copy)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

impl Proc {
    /// Starts `cmd` (`what` in errors) and reads its `stream`.
    pub(super) fn spawn(what: &str, mut cmd: Command, stream: Stream) -> Result<Proc> {
        cmd.stdin(Stdio::null());
        match stream {
            Stream::Stdout => cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()),
            Stream::Stderr => cmd.stdout(Stdio::null()).stderr(Stdio::piped()),
        };
        let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        let pipe: Box<dyn Read + Send> = match stream {
            Stream::Stdout => Box::new(child.stdout.take().expect("piped")),
            Stream::Stderr => Box::new(child.stderr.take().expect("piped")),
        };
        let (tx, lines) = mpsc::channel();
        let text = Arc::new(Mutex::new(String::new()));
        let kept = text.clone();
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                let mut kept = kept.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
                // The receiver may be gone: the text is still kept.
                let _ = tx.send(line);
            }
        });
        Ok(Proc {
            what: what.to_string(),
            child,
            lines,
            text,
            reaped: false,
        })
    }

    /// Its process id.
    pub(super) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// All it has printed so far on the stream read.
    pub(super) fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits for a line matching `pred` and returns it.
    pub(super) fn wait_for_line(
        &mut self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if pred(&line) => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait(Duration::from_secs(10))?;
                    bail!("{} exited ({status}):\n{}", self.what, self.text());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: nothing expected within {timeout:?}:\n{}",
                    self.what,
                    self.text()
                );
            }
        }
    }

    /// Sends it `signal`.
    pub(super) fn signal(&self, signal: i32) {
        // SAFETY: a signal to our own, not yet reaped, child.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Polls `ready` every `poll` until it holds. Fails, with what the
    /// process printed, if it exits first ("WHAT exited (STATUS) `before`")
    /// or when `timeout` has passed ("WHAT did not `late`").
    pub(super) fn wait_until(
        &mut self,
        mut ready: impl FnMut() -> bool,
        timeout: Duration,
        poll: Duration,
        before: &str,
        late: &str,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while !ready() {
            if let Some(status) = self.try_wait()? {
                bail!("{} exited ({status}) {before}:\n{}", self.what, self.text());
            }
            if Instant::now() > deadline {
                bail!("{} did not {late}:\n{}", self.what, self.text());
            }
            thread::sleep(poll);
        }
        Ok(())
    }

    /// The exit status if the process has exited; its last lines are then
    /// in [`Proc::text`].
    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.reaped = true;
            // Let the reader thread take the last lines.
            thread::sleep(Duration::from_millis(50));
        }
        Ok(status)
    }

    /// The exit status if the process exits within `timeout`; None if it
    /// still runs then.
    pub(super) fn exited_within(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit, killing it after `timeout`.
    pub(super) fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exited_within(timeout)? {
            return Ok(status);
        }
        // Where its threads wait, read before the kill, says why.
        let stuck = thread_waits(self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
        bail!(
            "{} did not exit within {timeout:?} (threads waiting in: {stuck}):\n{}",
            self.what,
            self.text()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Each thread of a process with the kernel function it sleeps in
/// (`/proc/PID/task/TID/wchan`), e.g. "bpftrace:do_epoll_wait".
pub(super) fn thread_waits(pid: i32) -> String {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return "unknown".into();
    };
    tasks
        .flatten()
        .map(|task| {
            let read = |f: &str| fs::read_to_string(task.path().join(f)).unwrap_or_default();
            format!("{}:{}", read("comm").trim(), read("wchan").trim())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A path as a command-line argument: it must be UTF-8.
pub(super) fn path_arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
