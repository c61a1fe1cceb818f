//! `serve`: builds the [`Settings`] from the command line, binds the listener, turns Ctrl-C
//! and SIGTERM into [`Shutdown`] triggers and hands all three to [`run`], which owns the
//! rest (and which tests call directly, on their own listener).

mod banner;
mod device_listener;
mod http;
mod run;
mod settings;
mod shutdown;
mod signals;
mod state;
mod tls_setup;

use anyhow::Context;

use crate::config::{DbArgs, ServeArgs};

pub use run::run;
pub use settings::Settings;
pub use shutdown::Shutdown;
pub use tls_setup::{CertSource, TlsSetup};

/// The `serve` command: runs until the first signal, then shuts down gracefully (a second
/// signal stops at once).
pub async fn serve(db_args: &DbArgs, args: &ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::from_args(db_args, args).await?;
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            settings.database.close().await;
            return Err(e).with_context(|| format!("cannot listen on {}", args.listen));
        }
    };
    let shutdown = Shutdown::new();
    let signals = tokio::spawn(signals::forward(shutdown.clone()));
    let result = run(listener, settings, shutdown).await;
    signals.abort();
    result
}
