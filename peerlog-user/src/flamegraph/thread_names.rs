//! The target's thread names, which every stack starts with.
//!
//! The kernel's samples carry the thread id only: reading the name from the
//! task there cost an idle node's sample 0.7 to 0.9 µs. The name is the
//! target's `/proc/PID/task/TID/comm`, read here when a thread is first
//! sampled and again once a second while it is, so that a thread that renames
//! itself, or a new thread that gets an old thread's id, is named anew.

use std::{
    collections::HashMap,
    fs,
    time::{Duration, Instant},
};

/// How long a name read from `/proc` is used before it is read again.
const REFRESH: Duration = Duration::from_secs(1);

/// The names of one process's threads, as last read.
pub(super) struct ThreadNames {
    pid: i32,
    names: HashMap<u32, (String, Instant)>,
}

impl ThreadNames {
    /// Names for the threads of process `pid`.
    pub(super) fn new(pid: i32) -> Self {
        Self {
            pid,
            names: HashMap::new(),
        }
    }

    /// The name of thread `tid`: the last one read, or `[thread TID]` for a
    /// thread that ended before it could be read.
    pub(super) fn name(&mut self, tid: u32) -> String {
        let now = Instant::now();
        if let Some((name, read_at)) = self.names.get(&tid) {
            if now.duration_since(*read_at) < REFRESH {
                return name.clone();
            }
        }
        let path = format!("/proc/{}/task/{tid}/comm", self.pid);
        match fs::read_to_string(path) {
            Ok(comm) => {
                let name = comm.trim_end_matches('\n').to_string();
                self.names.insert(tid, (name.clone(), now));
                name
            }
            // Gone: keep the name it had, if it was ever read.
            Err(_) => self
                .names
                .get(&tid)
                .map_or_else(|| format!("[thread {tid}]"), |(name, _)| name.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_threads_of_this_process_and_marks_unknown_ones() {
        let pid = std::process::id() as i32;
        let named = std::thread::Builder::new()
            .name("pl-named".into())
            .spawn(move || {
                let mut names = ThreadNames::new(pid);
                // SAFETY: gettid has no arguments and cannot fail.
                let tid = unsafe { libc::gettid() } as u32;
                names.name(tid)
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(named, "pl-named");
        let mut names = ThreadNames::new(pid);
        // No thread of this process has the id 0.
        assert_eq!(names.name(0), "[thread 0]");
    }
}
