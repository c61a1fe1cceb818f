//! The per-connection HTTP service wrapper: marks the connection busy for the idle timer,
//! and bounds the time a client takes to send a request.
//!
//! A request must be received in full (its body read to the end, or found empty) within
//! `--request-timeout` of being dispatched; otherwise it is answered 408 and its handler is
//! dropped, so a body trickled a byte at a time cannot hold a slot (HTTP/1.1 also closes the
//! connection, whose unread body cannot be skipped). Once the request is in, the deadline no
//! longer applies: the handler and a long response (an SSE stream, an export) run as long as
//! they need, the idle timer watching that the client keeps reading.
//!
//! It also counts, per connection, the requests under [`RequestCap::prefix`]: the one that
//! reaches [`RequestCap::max`] is answered with `Connection: close` (HTTP/1.1), after which
//! hyper closes the connection, as KPN's firmware file server does after 100 requests.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::http::{HeaderValue, Request, Response, Version, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body::{Frame, SizeHint};
use tower::Service;

use super::idle::{Activity, Busy};
use crate::error::AppError;

/// The requests under a path prefix that one connection may carry.
#[derive(Debug, Clone, Copy)]
pub struct RequestCap {
    pub prefix: &'static str,
    pub max: u32,
}

/// Wraps the application service of one connection.
#[derive(Clone)]
pub struct HttpGuard<S> {
    inner: S,
    activity: Arc<Activity>,
    request_timeout: Duration,
    cap: Option<RequestCap>,
    /// Requests under the cap's prefix so far, shared by the clones serving this connection.
    capped: Arc<AtomicU32>,
}

impl<S> HttpGuard<S> {
    pub(super) fn new(
        inner: S,
        activity: Arc<Activity>,
        request_timeout: Duration,
        cap: Option<RequestCap>,
    ) -> Self {
        HttpGuard {
            inner,
            activity,
            request_timeout,
            cap,
            capped: Arc::default(),
        }
    }

    /// Whether this request is the one that reaches the cap (or later), so its answer closes.
    fn closes<B>(&self, request: &Request<B>) -> bool {
        let Some(cap) = self.cap else {
            return false;
        };
        if request.version() >= Version::HTTP_2 || !request.uri().path().starts_with(cap.prefix) {
            return false;
        }
        self.capped.fetch_add(1, Ordering::Relaxed) + 1 >= cap.max
    }
}

impl<S, B> Service<Request<B>> for HttpGuard<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let busy = self.activity.busy();
        let version = request.version();
        let closes = self.closes(&request);
        let received = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| Body::new(Received::new(body, received.clone())));
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let timeout = self.request_timeout;
        Box::pin(async move {
            let handling = inner.call(request);
            tokio::pin!(handling);
            let response = tokio::select! {
                biased;
                response = &mut handling => response,
                _ = tokio::time::sleep(timeout) => {
                    if received.load(Ordering::Acquire) {
                        handling.await
                    } else {
                        tracing::debug!(?timeout, "request not received in time: 408");
                        Ok(too_slow(version))
                    }
                }
            };
            let mut response = response?;
            if closes {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| Body::new(Tracked::new(body, busy))))
        })
    }
}

/// The 408 answer; over HTTP/1.1 the connection then closes, since the rest of the body
/// would otherwise have to be read first.
fn too_slow(version: Version) -> Response<Body> {
    let mut response = AppError::RequestTimeout.into_response();
    if version < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that says when it has been read to the end.
struct Received {
    inner: Body,
    done: Arc<AtomicBool>,
}

impl Received {
    fn new<B>(inner: B, done: Arc<AtomicBool>) -> Received
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let inner = Body::new(inner);
        if inner.is_end_stream() {
            done.store(true, Ordering::Release);
        }
        Received { inner, done }
    }
}

impl HttpBody for Received {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps the connection busy while the application is producing the
/// next frame, and idle while a frame it produced waits for the client to take it.
struct Tracked {
    inner: Body,
    /// `Some` while the server is the one working; `None` after handing over a frame, until
    /// the connection asks for the next one (which it does once the client has read enough).
    busy: Option<Busy>,
    activity: Arc<Activity>,
}

impl Tracked {
    fn new(inner: Body, busy: Busy) -> Tracked {
        Tracked {
            inner,
            activity: busy.activity().clone(),
            busy: Some(busy),
        }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.busy.is_none() {
            let busy = self.activity.busy();
            self.busy = Some(busy);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_ready() {
            self.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
