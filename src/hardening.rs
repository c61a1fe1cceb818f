//! Bounds on what one client can hold: connections, and time spent idle or stalled.
//!
//! The receiver sits on the public internet at port 443. A client that opens connections and
//! then sends nothing, sends its headers a byte a minute, or stops reading our answers must
//! not take the capacity KPN's deliveries need. Each accepted TCP connection takes a permit
//! from a fixed pool (over the limit it is closed at once, so the server keeps answering the
//! connections it has) and is wrapped in [`Guarded`], which ends it after `idle_timeout`
//! without a byte moving in either direction. The TLS handshake timeout and the HTTP/1.1
//! header read timeout are applied by the server around this layer (see `server`).

use std::future::Ready;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Limits every accepted connection; the inner acceptor of the TLS acceptor.
#[derive(Clone)]
pub struct GuardAcceptor {
    permits: Arc<Semaphore>,
    max_connections: usize,
    idle_timeout: Duration,
    refused: Arc<RefusalLog>,
}

/// How often refused connections are reported: under a flood, one line per interval.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Counts refused connections and logs them at most once per [`REFUSAL_LOG_INTERVAL`].
#[derive(Default)]
struct RefusalLog {
    since_last: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl RefusalLog {
    fn record(&self, max_connections: usize) {
        self.since_last.fetch_add(1, Ordering::Relaxed);
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL) {
            return;
        }
        *last = Some(now);
        let refused = self.since_last.swap(0, Ordering::Relaxed);
        tracing::warn!(
            refused,
            max_connections,
            "connections refused: --max-connections reached"
        );
    }
}

impl GuardAcceptor {
    pub fn new(max_connections: usize, idle_timeout: Duration) -> GuardAcceptor {
        GuardAcceptor {
            permits: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            idle_timeout,
            refused: Arc::default(),
        }
    }
}

impl<I, S> Accept<I, S> for GuardAcceptor
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    type Stream = Guarded<I>;
    type Service = S;
    type Future = Ready<io::Result<(Guarded<I>, S)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let result = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok((Guarded::new(stream, permit, self.idle_timeout), service)),
            // Dropping the stream closes the connection.
            Err(_) => {
                self.refused.record(self.max_connections);
                Err(io::Error::other(LimitReached))
            }
        };
        std::future::ready(result)
    }
}

/// The error a connection over `--max-connections` is closed with.
#[derive(Debug, thiserror::Error)]
#[error("connection limit reached")]
pub struct LimitReached;

/// A connection that holds a permit while open and ends once idle for too long.
pub struct Guarded<I> {
    inner: I,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<I> Guarded<I> {
    fn new(inner: I, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Guarded<I> {
        let now = Instant::now();
        Guarded {
            inner,
            _permit: permit,
            idle_timeout,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }

    /// Called when the inner stream is not ready: ready with an error once idle too long,
    /// otherwise pending with the timer registered for the current deadline.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.last_activity + self.idle_timeout;
            if Instant::now() >= deadline {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
            self.timer.as_mut().reset(deadline);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_idle(cx).map(Err),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.poll_idle(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
