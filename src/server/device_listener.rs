//! The plain-HTTP device listener (`--device-listen`): M2M devices on KPN's private APN speak
//! plain HTTP only, so they get a listener of their own that serves the device doors and
//! nothing else (no API, no `/ingest/kpn`), with the same connection and HTTP limits as the
//! main listener.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum_server::Handle;
use tokio::task::JoinHandle;

use crate::config::LimitArgs;
use crate::hardening::{ConnectionLimits, GuardAcceptor};
use crate::web::{AppState, device_router};

use super::http::harden;

pub(super) struct DeviceListener {
    pub bound: SocketAddr,
    handle: Handle<SocketAddr>,
    task: JoinHandle<std::io::Result<()>>,
}

impl DeviceListener {
    /// Binds `addr` and serves the device doors on it until [`DeviceListener::stop`].
    pub async fn start(
        addr: SocketAddr,
        state: AppState,
        limits: &LimitArgs,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for devices on {addr}"))?;
        let bound = listener.local_addr()?;
        let guard = GuardAcceptor::new(ConnectionLimits {
            max_connections: limits.max_connections as usize,
            max_connections_per_ip: limits.max_connections_per_ip as usize,
            idle_timeout: limits.idle_timeout,
            request_timeout: limits.request_timeout,
            request_cap: Some(super::http::file_request_cap()),
        });
        let handle: Handle<SocketAddr> = Handle::new();
        let server = axum_server::Server::<SocketAddr>::from_listener(listener).acceptor(guard);
        let app = device_router(state).into_make_service_with_connect_info::<SocketAddr>();
        let task = tokio::spawn(harden(server, limits).handle(handle.clone()).serve(app));
        Ok(DeviceListener {
            bound,
            handle,
            task,
        })
    }

    /// Stops accepting, lets requests in flight finish within `grace`, and waits for them.
    pub async fn stop(self, grace: Duration) {
        self.handle.graceful_shutdown(Some(grace));
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the device listener failed"),
            Err(e) => tracing::error!(error = %e, "the device listener panicked"),
        }
    }
}
