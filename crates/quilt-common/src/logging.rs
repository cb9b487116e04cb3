//! Installs the process-wide `tracing` subscriber; only binaries call this.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs a subscriber that writes to stderr at `level` (`error`..`trace`, or any
/// `EnvFilter` directive such as `info,quilt_runtime=debug`). `RUST_LOG`, when set, wins.
pub fn init(level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
