//! A future that completes when the process is asked to stop (SIGTERM or SIGINT).

use tokio::signal::unix::{SignalKind, signal};

/// Completes on the first SIGTERM or SIGINT. Servers take this as their shutdown future,
/// so they finish in-flight work and return instead of exiting from a signal handler.
pub async fn signal_received() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; waiting for ctrl-c only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
}
