//! Writes peerlog's man pages and shell completions into a directory, for
//! the Debian package that `cargo xtask dist` builds. Both are made from
//! the command line's own definition ([`peerlog::cli::Cli`]), so they say
//! what `--help` says.
//!
//! `cargo run --release -p peerlog --example dist_assets -- DIR` writes
//! `DIR/man/peerlog.1.gz` and one `peerlog-<command>.1.gz` per subcommand
//! (compressed as Debian's policy wants them), and `DIR/completions/`:
//! `peerlog.bash`, `_peerlog` (zsh), `peerlog.fish`.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use peerlog::cli::Cli;

fn main() -> Result<()> {
    let dir: PathBuf = std::env::args_os()
        .nth(1)
        .context("usage: dist_assets DIR")?
        .into();
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        // Pages of a subcommand that no longer exists must not be packaged.
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    clap_mangen::generate_to(Cli::command(), &man)
        .with_context(|| format!("writing the man pages to {}", man.display()))?;
    for page in fs::read_dir(&man)? {
        gzip(&page?.path())?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut Cli::command(), "peerlog", &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    Ok(())
}

/// Replaces `path` by `path.gz`, compressed at the highest level and with
/// no time stamp, so that the same page makes the same file.
fn gzip(path: &Path) -> Result<()> {
    let text = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut gz_name = path.as_os_str().to_owned();
    gz_name.push(".gz");
    let file = fs::File::create(&gz_name)?;
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(file, flate2::Compression::best());
    encoder.write_all(&text)?;
    encoder.finish()?;
    fs::remove_file(path)?;
    Ok(())
}
