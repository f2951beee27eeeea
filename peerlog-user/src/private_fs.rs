//! Creating peerlog's output files and directories: private to the user
//! running peerlog, and never through a symlink someone planted.
//!
//! Everything peerlog creates is private whatever the umask: files mode
//! 0600, directories 0700. A capture holds the same data as bitcoind's own
//! `-capturemessages`, which bitcoind writes under umask 077. Files and
//! directories that already exist keep their mode.
//!
//! Paths come in two kinds:
//! - A path the user names on the command line (`--jsonl PATH`, `--capture
//!   DIR`, `convert ... OUT`) is followed like any program follows it,
//!   symlinks included (`--jsonl /dev/stdout` works): [`create_file`],
//!   [`create_dir_all`].
//! - A name peerlog makes up inside such a directory (a per-peer directory,
//!   `msgs_recv.dat`, `all.svg`, `*.hlog`) is opened relative to the
//!   directory's descriptor with `O_NOFOLLOW`: [`Dir`]. Whoever can write
//!   to that directory (bitcoind's user, for a capture into its datadir)
//!   could otherwise plant a symlink there and have peerlog, running as
//!   root, write wherever it points. A symlink, or anything but a directory
//!   or a regular file with a single link, in the place of such a name is
//!   refused with an error naming it, and nothing is written through it.

use std::{
    ffi::{CStr, CString},
    fs::{DirBuilder, File, OpenOptions},
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    },
    path::{Component, Path, PathBuf},
};

/// Mode of the files peerlog creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories peerlog creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates the file the user named at `path` (mode 0600), or truncates it
/// if it exists.
pub fn create_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates the directory the user named at `path` and its missing parents,
/// each mode 0700; an existing directory is left as it is.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// An open directory in which peerlog creates entries by name, each
/// relative to the directory's descriptor and never through a symlink.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens the directory at `path`, which the user named (so a symlink to
    /// a directory is followed).
    pub fn open(path: &Path) -> io::Result<Self> {
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        Ok(Self {
            fd: dir.into(),
            path: path.to_path_buf(),
        })
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the directory `rel` below this one (plain names only), creating
    /// what is missing with mode 0700.
    pub fn subdirs(&self, rel: &Path) -> io::Result<Self> {
        let mut components = rel.components().map(|c| match c {
            Component::Normal(name) => Ok(name),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is not a plain relative path below {}",
                    rel.display(),
                    self.path.display()
                ),
            )),
        });
        let Some(first) = components.next() else {
            return Self::open(&self.path);
        };
        let mut dir = self.subdir(first?)?;
        for name in components {
            dir = dir.subdir(name?)?;
        }
        Ok(dir)
    }

    /// Opens the subdirectory `name`, creating it with mode 0700 if missing.
    fn subdir(&self, name: &std::ffi::OsStr) -> io::Result<Self> {
        let path = self.path.join(name);
        let c_name = c_name(&path, name)?;
        // SAFETY: a directory descriptor we own and a NUL-terminated name.
        if unsafe { libc::mkdirat(self.fd.as_raw_fd(), c_name.as_ptr(), DIR_MODE) } != 0 {
            let e = io::Error::last_os_error();
            // mkdir(2) never follows a symlink; what is there is checked below.
            if e.kind() != io::ErrorKind::AlreadyExists {
                return Err(named(&path, e));
            }
        }
        let fd = self
            .openat(&c_name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) => refused(&path),
                _ => named(&path, e),
            })?;
        Ok(Self { fd, path })
    }

    /// Opens the file `name` for appending, creating it with mode 0600 if
    /// missing: a capture file, which bitcoind appends to as well.
    pub fn append_file(&self, name: &str) -> io::Result<File> {
        self.file(name, libc::O_APPEND)
    }

    /// Creates the file `name` with mode 0600, or truncates it if it exists.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        let path = self.path.join(name);
        let file = self.file(name, 0)?;
        // Truncated only once known to be a regular file of ours: O_TRUNC
        // would cut whatever was planted before the checks.
        file.set_len(0).map_err(|e| named(&path, e))?;
        Ok(file)
    }

    fn file(&self, name: &str, flags: libc::c_int) -> io::Result<File> {
        let path = self.path.join(name);
        let c_name = c_name(&path, name.as_ref())?;
        // O_NONBLOCK: opening a FIFO planted in the file's place must fail
        // (ENXIO) rather than wait for a reader; regular files ignore it.
        let fd = self
            .openat(
                &c_name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK | flags,
                FILE_MODE,
            )
            .map_err(|e| match e.raw_os_error() {
                // ENXIO: a FIFO without reader, or a socket.
                Some(libc::ELOOP | libc::EISDIR | libc::ENXIO) => refused(&path),
                _ => named(&path, e),
            })?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| named(&path, e))?;
        // A hard link planted in place of the file would have peerlog write
        // into whatever file it is another name of.
        if !meta.file_type().is_file() || meta.nlink() > 1 {
            return Err(refused(&path));
        }
        Ok(file)
    }

    fn openat(&self, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
        // SAFETY: a directory descriptor we own and a NUL-terminated name.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn c_name(path: &Path, name: &std::ffi::OsStr) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(name.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: a file name cannot contain NUL", path.display()),
        )
    })
}

/// An OS error, with the path it concerns.
fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The error for something at `path` that is not what peerlog would have
/// created there, saying what it is.
fn refused(path: &Path) -> io::Error {
    // Only for the message: what the descriptor-relative open refused.
    let why = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_symlink() => "it is a symbolic link",
        Ok(m) if m.is_dir() => "it is a directory",
        Ok(m) if m.is_file() && m.nlink() > 1 => "it is a file with other hard links",
        Ok(m) if m.is_file() => "it is a file",
        Ok(_) => "it is a FIFO, socket or device",
        Err(_) => "it changed while peerlog looked at it",
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "refusing {}: {why}, and peerlog creates only plain files and directories of its own \
             inside its output directories (it never writes through a symlink); remove it or \
             choose another directory",
            path.display()
        ),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::{io::Write, os::unix::fs::PermissionsExt};

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    /// The umask is process-wide: tests that set it run under this lock.
    pub(crate) fn with_umask<T>(mask: libc::mode_t, f: impl FnOnce() -> T) -> T {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: umask cannot fail.
        let old = unsafe { libc::umask(mask) };
        let result = f();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        result
    }

    #[test]
    fn created_entries_are_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        with_umask(0o002, || {
            let named = tmp.path().join("a/b");
            create_dir_all(&named).unwrap();
            create_file(&named.join("out.jsonl")).unwrap();
            let dir = Dir::open(&named).unwrap();
            dir.subdirs(Path::new("p/q")).unwrap();
            dir.append_file("msgs_recv.dat").unwrap();
            dir.create_file("all.svg").unwrap();
        });
        let p = tmp.path();
        for d in ["a", "a/b", "a/b/p", "a/b/p/q"] {
            assert_eq!(mode(&p.join(d)), 0o700, "{d}");
        }
        for f in ["a/b/out.jsonl", "a/b/msgs_recv.dat", "a/b/all.svg"] {
            assert_eq!(mode(&p.join(f)), 0o600, "{f}");
        }
    }

    #[test]
    fn existing_files_are_appended_or_truncated() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open(tmp.path()).unwrap();
        dir.append_file("f").unwrap().write_all(b"one").unwrap();
        dir.append_file("f").unwrap().write_all(b"two").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"onetwo");
        dir.create_file("f").unwrap().write_all(b"3").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("f")).unwrap(), b"3");
        // An existing directory is used as it is.
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        dir.subdirs(Path::new("d"))
            .unwrap()
            .append_file("g")
            .unwrap();
        assert!(tmp.path().join("d/g").is_file());
    }

    #[test]
    fn planted_entries_are_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let victim_dir = tmp.path().join("victim-dir");
        std::fs::create_dir(&victim_dir).unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim_dir, out.join("linked-dir")).unwrap();
        std::os::unix::fs::symlink(&victim, out.join("linked-file")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("nothing"), out.join("dangling")).unwrap();
        std::fs::hard_link(&victim, out.join("hard-link")).unwrap();
        std::fs::write(out.join("plain"), b"").unwrap();
        let fifo = CString::new(out.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);

        let dir = Dir::open(&out).unwrap();
        let link = "it is a symbolic link";
        let refusals: Vec<(&str, io::Error, &str)> = vec![
            (
                "linked-dir",
                dir.subdirs(Path::new("linked-dir")).unwrap_err(),
                link,
            ),
            (
                "linked-dir",
                dir.subdirs(Path::new("linked-dir/x")).unwrap_err(),
                link,
            ),
            (
                "dangling",
                dir.subdirs(Path::new("dangling")).unwrap_err(),
                link,
            ),
            (
                "plain",
                dir.subdirs(Path::new("plain")).unwrap_err(),
                "it is a file",
            ),
            (
                "linked-file",
                dir.append_file("linked-file").unwrap_err(),
                link,
            ),
            (
                "linked-file",
                dir.create_file("linked-file").unwrap_err(),
                link,
            ),
            ("dangling", dir.append_file("dangling").unwrap_err(), link),
            (
                "hard-link",
                dir.create_file("hard-link").unwrap_err(),
                "other hard links",
            ),
            (
                "hard-link",
                dir.append_file("hard-link").unwrap_err(),
                "other hard links",
            ),
            ("fifo", dir.append_file("fifo").unwrap_err(), "FIFO"),
            (
                "linked-dir",
                dir.create_file("linked-dir").unwrap_err(),
                link,
            ),
        ];
        for (name, e, why) in refusals {
            let msg = e.to_string();
            let named = out.join(name);
            assert!(
                msg.starts_with(&format!("refusing {}: ", named.display())) && msg.contains(why),
                "{name}: {msg}"
            );
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read_dir(&victim_dir).unwrap().count(), 0);
        assert!(!tmp.path().join("nothing").exists());
        assert!(dir.subdirs(Path::new("../escape")).is_err());
        assert!(!tmp.path().join("escape").exists());
    }
}
