//! The `peerlog` command; everything lives in the library, see [`peerlog::cli`].

fn main() -> std::process::ExitCode {
    peerlog::cli::main()
}
