//! Ctrl-C and SIGTERM, turned into [`Shutdown`] triggers: the first starts the graceful
//! shutdown, the second forces it.

use super::shutdown::Shutdown;

/// Pulls `shutdown` once per signal, for the first two signals.
pub async fn forward(shutdown: Shutdown) {
    wait_for_signal().await;
    shutdown.trigger();
    wait_for_signal().await;
    shutdown.trigger();
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
