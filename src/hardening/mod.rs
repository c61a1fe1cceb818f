//! Bounds on what one client can hold: connections, and time spent idle or stalled.
//!
//! The receiver sits on the public internet at port 443. A client that opens connections and
//! then sends nothing, sends its headers or body a byte at a time, keeps a connection open
//! with HTTP/2 PINGs, or stops reading our answers must not take the capacity KPN's
//! deliveries need. Each accepted TCP connection takes a slot for its address
//! (`--max-connections-per-ip`, [`per_ip`]) and a permit from a fixed pool
//! (`--max-connections`); over either limit it is closed at once, so the server keeps
//! answering the connections it has. It is then wrapped in [`Guarded`], whose idle timer
//! follows HTTP-level activity ([`idle`]), and its service in [`HttpGuard`], which answers
//! 408 to a request not received within `--request-timeout` ([`request`]). The TLS handshake
//! timeout, the HTTP/1.1 header read timeout and the HTTP/2 settings are applied by the
//! server around this layer (see `server`).

mod idle;
mod per_ip;
mod refusals;
mod request;

use std::future::Ready;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

pub use idle::{Activity, Guarded};
pub use request::{HttpGuard, RequestCap};

use per_ip::PerIpLimit;
use refusals::RefusalLog;

/// The limits every accepted connection gets.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    /// Requests under a path one connection may carry before its answer closes it.
    pub request_cap: Option<RequestCap>,
}

/// Limits every accepted connection; the inner acceptor of the TLS acceptor.
#[derive(Clone)]
pub struct GuardAcceptor {
    permits: Arc<Semaphore>,
    per_ip: Arc<PerIpLimit>,
    limits: ConnectionLimits,
    refused: Arc<RefusalLog>,
    refused_per_ip: Arc<RefusalLog>,
}

impl GuardAcceptor {
    pub fn new(limits: ConnectionLimits) -> GuardAcceptor {
        GuardAcceptor {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: Arc::new(PerIpLimit::new(limits.max_connections_per_ip)),
            refused: Arc::new(RefusalLog::new("--max-connections", limits.max_connections)),
            refused_per_ip: Arc::new(RefusalLog::new(
                "--max-connections-per-ip",
                limits.max_connections_per_ip,
            )),
            limits,
        }
    }

    fn admit<S>(
        &self,
        stream: TcpStream,
        service: S,
    ) -> io::Result<(Guarded<TcpStream>, HttpGuard<S>)> {
        // Without a peer address the connection is already gone.
        let ip = stream.peer_addr()?.ip();
        let Some(ip_slot) = self.per_ip.try_acquire(ip) else {
            self.refused_per_ip.record();
            return Err(io::Error::other(LimitReached));
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.refused.record();
            return Err(io::Error::other(LimitReached));
        };
        // Answers go out as soon as they are written: with Nagle's algorithm the last
        // segment of an answer larger than a few TLS records waits for the client's delayed
        // ACK (40 ms on Linux) before it leaves.
        stream.set_nodelay(true)?;
        let activity = Activity::new();
        let stream = Guarded::new(
            stream,
            Box::new((permit, ip_slot)),
            activity.clone(),
            self.limits.idle_timeout,
        );
        let service = HttpGuard::new(
            service,
            activity,
            self.limits.request_timeout,
            self.limits.request_cap,
        );
        Ok((stream, service))
    }
}

impl<S> Accept<TcpStream, S> for GuardAcceptor {
    type Stream = Guarded<TcpStream>;
    type Service = HttpGuard<S>;
    type Future = Ready<io::Result<(Guarded<TcpStream>, HttpGuard<S>)>>;

    /// A refused connection is dropped here, which closes it.
    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(self.admit(stream, service))
    }
}

/// The error a connection over `--max-connections` or `--max-connections-per-ip` is closed
/// with.
#[derive(Debug, thiserror::Error)]
#[error("connection limit reached")]
pub struct LimitReached;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admitted_connections_send_without_waiting_for_acks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let _client = TcpStream::connect(address).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!accepted.nodelay().unwrap());
        let acceptor = GuardAcceptor::new(ConnectionLimits {
            max_connections: 4,
            max_connections_per_ip: 4,
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            request_cap: None,
        });
        let (guarded, _) = acceptor.admit(accepted, ()).unwrap();
        assert!(guarded.get_ref().nodelay().unwrap());
    }
}
