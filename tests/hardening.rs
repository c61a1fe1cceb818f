//! Slow, stalled and too many clients: each limit closes what it should and the server keeps
//! answering others.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw_tls::trusting_client;
use common::*;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

fn addr(server: &Server) -> String {
    server.base_url.trim_start_matches("https://").to_owned()
}

async fn tls_connect(addr: &str) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_connect_alpn(addr, &[]).await
}

async fn tls_connect_alpn(
    addr: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = trusting_client(alpn);
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the peer closes; how long that took. Fails the test after `limit`.
async fn closed_within(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("the server kept the connection open for more than {limit:?}"),
        }
    }
}

async fn healthz_ok(addr: &str) -> bool {
    let config = trusting_client(&[]);
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    let Ok(mut tls) = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    else {
        return false;
    };
    if tls
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer).await;
    answer.starts_with("HTTP/1.1 200")
}

#[tokio::test]
async fn a_client_that_never_completes_the_handshake_is_dropped() {
    let env = Env::new().await;
    let server = env.serve(&["--tls-handshake-timeout", "1s"]);
    let mut silent = TcpStream::connect(addr(&server)).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

#[tokio::test]
async fn headers_sent_too_slowly_end_the_connection() {
    let env = Env::new().await;
    let server = env.serve(&["--header-read-timeout", "1s", "--idle-timeout", "60s"]);
    let mut tls = tls_connect(&addr(&server)).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    closed_within(&mut tls, Duration::from_secs(10)).await;
    // Others are still served.
    assert!(healthz_ok(&addr(&server)).await);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let env = Env::new().await;
    let server = env.serve(&["--idle-timeout", "1s", "--header-read-timeout", "60s"]);
    let mut tls = tls_connect(&addr(&server)).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let took = closed_within(&mut tls, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused_and_capacity_returns() {
    let env = Env::new().await;
    let server = env.serve(&["--max-connections", "2", "--tls-handshake-timeout", "60s"]);
    let addr = addr(&server);
    // Two clients that send nothing take both slots. Slots are taken as connection tasks
    // start, so one of them may lose to a request and be refused itself: replace any that
    // the server closed until a request is the one refused.
    let mut stalled = vec![
        TcpStream::connect(&addr).await.unwrap(),
        TcpStream::connect(&addr).await.unwrap(),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthz_ok(&addr).await {
        assert!(
            Instant::now() < deadline,
            "requests were served beyond --max-connections 2"
        );
        for stream in stalled.iter_mut() {
            let closed = match stream.try_read(&mut [0u8; 1]) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if closed {
                *stream = TcpStream::connect(&addr).await.unwrap();
            }
        }
    }
    // A slot frees when a client leaves, and requests are served again.
    let second = stalled.pop();
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthz_ok(&addr).await {
        assert!(Instant::now() < deadline, "capacity did not return");
    }
    drop(second);
}

#[tokio::test]
async fn http2_is_offered_by_alpn_unless_disabled() {
    let env = Env::new().await;
    let both = env.serve(&[]);
    let response = client().get(both.url("/healthz")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let tls = tls_connect_alpn(&addr(&both), &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let env = Env::new().await;
    let http1 = env.serve(&["--no-http2"]);
    let tls = tls_connect_alpn(&addr(&http1), &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let response = client().get(http1.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn plain_http_behind_a_proxy_has_the_same_limits() {
    let env = Env::new().await;
    let server = env.serve(&["--plain-http", "--idle-timeout", "1s"]);
    assert!(
        server.base_url.starts_with("http://"),
        "{}",
        server.base_url
    );
    let addr = server.base_url.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
    let took = closed_within(&mut tcp, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}
