//! The HTTP-level limits of the main listener (HTTP/1.1 header timeout, HTTP/2 windows and
//! stream caps), on top of the connection-level ones in `hardening`.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::LimitArgs;
use crate::hardening::{LimitReached, RequestCap};

/// On either listener, as KPN's firmware file server: the 100th file request on one
/// connection is answered with `Connection: close`.
pub(super) fn file_request_cap() -> RequestCap {
    RequestCap {
        prefix: crate::firmware::FILE_PATH_PREFIX,
        max: crate::firmware::MAX_REQUESTS_PER_CONNECTION,
    }
}

/// Streams one HTTP/2 connection may have open at once; more are refused (REFUSED_STREAM)
/// and well-behaved clients queue them. KPN delivers over few connections with few
/// requests each; 32 leaves room for dashboards.
const H2_MAX_CONCURRENT_STREAMS: u32 = 32;
/// Request body bytes a client may send on one stream before the handler reads them.
const H2_STREAM_WINDOW: u32 = 256 * 1024;
/// Request body bytes a client may send on the whole connection before handlers read them:
/// what unread uploads can cost per connection, however many streams it opens.
const H2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Largest decoded header block (HTTP/1.1 has the same order of limit, hyper's default).
const H2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// Response bytes buffered per stream ahead of the client's window.
const H2_MAX_SEND_BUFFER: usize = 128 * 1024;
/// How often a quiet HTTP/2 connection is probed with a PING, and how long the answer may
/// take: finds dead peers under a live stream. PINGs (ours or the client's) are not
/// activity for `--idle-timeout`.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies the HTTP-level limits; the connection-level ones are in the acceptors. Memory per
/// HTTP/2 connection stays bounded by the figures above: at most 1 MiB of unread request
/// bodies, 32 streams, 128 KiB of queued answer per stream, 16 KiB of headers per request.
pub(super) fn harden<A>(
    mut server: axum_server::Server<SocketAddr, A>,
    limits: &LimitArgs,
) -> axum_server::Server<SocketAddr, A> {
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read_timeout);
    server
        .http_builder()
        .http2()
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .adaptive_window(false)
        .max_header_list_size(H2_MAX_HEADER_LIST)
        .max_send_buf_size(H2_MAX_SEND_BUFFER)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let server = server
        .first_request_timeout(limits.header_read_timeout)
        .accept_error_handler(|peer, error| {
            // Refusals over the connection caps are counted and logged by the acceptor.
            if !error.get_ref().is_some_and(|e| e.is::<LimitReached>()) {
                tracing::debug!(?peer, %error, "connection failed before its first request");
            }
        });
    if limits.no_http2 {
        server.http1_only()
    } else {
        server
    }
}
