//! The idle timer of a connection, driven by HTTP-level activity rather than raw bytes.
//!
//! Counting bytes lets a client hold a connection for ever with HTTP/2 PINGs, or with a
//! request body trickled one byte at a time. Here a connection is *busy* while one of its
//! requests is being received or handled, or while its response body is waiting for the
//! application (an SSE stream between events); it is *idle* when nothing is in flight, or
//! when every response is waiting for the client to read what it was already given. A
//! connection idle for `--idle-timeout` is closed: keep-alive connections nobody uses,
//! PING-only HTTP/2 connections, and exports whose client stopped reading. Slow request
//! bodies are bounded separately by `--request-timeout` (see `request`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// What one connection is doing, shared by its IO wrapper and its HTTP service.
pub struct Activity {
    /// Requests and response bodies the server (not the client) is working on.
    busy: AtomicUsize,
    /// When the connection was accepted; `last` counts from here.
    epoch: Instant,
    /// Milliseconds after `epoch` of the last change of `busy`.
    last: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            busy: AtomicUsize::new(0),
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let elapsed = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(elapsed, Ordering::Relaxed);
    }

    /// Marks the connection busy until the returned guard is dropped.
    pub(super) fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Busy(self.clone())
    }

    /// When the connection times out if nothing happens, or `None` while it is busy.
    fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        Some(later(later(self.epoch, last), timeout))
    }
}

/// `at + by`, or a time decades away when a configured duration is too large to add.
fn later(at: Instant, by: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    at.checked_add(by)
        .or_else(|| at.checked_add(FAR))
        .unwrap_or(at)
}

/// Keeps its connection busy while it lives.
pub(super) struct Busy(Arc<Activity>);

impl Busy {
    pub(super) fn activity(&self) -> &Arc<Activity> {
        &self.0
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection that holds its permits while open and ends once idle for too long.
pub struct Guarded<I> {
    inner: I,
    /// Freed when the connection closes: a `--max-connections` permit and a per-address slot.
    _slots: Box<dyn Send + Sync>,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    timer: Pin<Box<Sleep>>,
}

impl<I> Guarded<I> {
    pub(super) fn new(
        inner: I,
        slots: Box<dyn Send + Sync>,
        activity: Arc<Activity>,
        idle_timeout: Duration,
    ) -> Guarded<I> {
        Guarded {
            inner,
            _slots: slots,
            activity,
            idle_timeout,
            // `sleep` saturates a too-large duration by itself.
            timer: Box::pin(tokio::time::sleep(idle_timeout)),
        }
    }

    /// The connection it guards.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// Called when the inner stream is not ready: ready with an error once idle too long,
    /// otherwise pending with the timer registered for the next time to look again. A
    /// connection's IO is always polled while it waits (HTTP/1.1 watches for the next request
    /// or for room to write, HTTP/2 always reads frames), so the timer is always armed.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let deadline = match self.activity.idle_deadline(self.idle_timeout) {
                Some(deadline) if now >= deadline => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle for too long",
                    ));
                }
                Some(deadline) => deadline,
                None => later(now, self.idle_timeout),
            };
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
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => this.poll_idle(cx).map(Err),
            ready => ready,
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
            Poll::Pending => this.poll_idle(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_idle(cx).map(Err),
            ready => ready,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn busy_connections_have_no_deadline_and_idle_ones_count_from_the_last_change() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(60);
        let start = Instant::now();
        let busy = activity.busy();
        assert_eq!(activity.idle_deadline(timeout), None);
        let second = activity.busy();
        drop(busy);
        assert_eq!(activity.idle_deadline(timeout), None);
        drop(second);
        let deadline = activity.idle_deadline(timeout).unwrap();
        assert!(deadline >= start + timeout - Duration::from_millis(1));
        assert!(deadline <= Instant::now() + timeout);
    }

    #[test]
    fn an_absurd_timeout_does_not_overflow() {
        let activity = Activity::new();
        assert!(activity.idle_deadline(Duration::MAX).is_some());
        assert!(later(Instant::now(), Duration::MAX) > Instant::now());
    }
}
