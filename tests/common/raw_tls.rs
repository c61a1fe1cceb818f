//! Clients that misbehave on purpose: raw TLS streams from a chosen loopback address (for tests
//! that control exactly which bytes are sent when: a request head without its body,
//! `Expect: 100-continue`), and an HTTP/2 client whose PINGs and flow control the test drives
//! itself.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls::ClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::Server;

/// Accepts the development certificate: these tests are about connections, not trust.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server's socket address.
pub fn address(server: &Server) -> SocketAddr {
    server
        .base_url
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .parse()
        .unwrap()
}

/// A TCP connection to `server` from the loopback address `from`, with a small receive
/// buffer so that a client that does not read stalls the server quickly.
pub async fn tcp_from(server: &Server, from: IpAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(address(server)).await
}

/// A client configuration that accepts the development certificate, offering `alpn`.
pub fn trusting_client(alpn: &[&[u8]]) -> ClientConfig {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate))
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// A TLS connection from `from` offering `alpn`.
pub async fn tls_from(
    server: &Server,
    from: IpAddr,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(server, from).await?;
    TlsConnector::from(Arc::new(trusting_client(alpn)))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

pub fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// Whether `GET /healthz` over HTTP/1.1 from `from` is answered 200.
pub async fn healthz_from(server: &Server, from: IpAddr) -> bool {
    let Ok(mut tls) = tls_from(server, from, &[b"http/1.1"]).await else {
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
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut answer)).await;
    answer.starts_with("HTTP/1.1 200")
}

/// An HTTP/1.1 connection over TLS to `server` from 127.0.0.1.
pub async fn connect_http1(server: &Server) -> TlsStream<TcpStream> {
    tls_from(server, localhost(), &[b"http/1.1"]).await.unwrap()
}

/// Reads one response head, up to and including the blank line and not a byte further (an
/// interim `100 Continue` and the final answer are read by two calls); fails the test when it
/// has not arrived within `limit`.
pub async fn read_head(stream: &mut (impl AsyncRead + Unpin), limit: Duration) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte).await {
                Ok(0) | Err(_) => break,
                Ok(_) => head.push(byte[0]),
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?}"));
    String::from_utf8_lossy(&head).into_owned()
}

/// An HTTP/2 connection: requests go through `send`; the connection itself runs in `task`,
/// which ends when the server closes it.
pub struct H2 {
    pub send: h2::client::SendRequest<Bytes>,
    pub ping_pong: h2::PingPong,
    pub task: JoinHandle<()>,
}

pub async fn h2_connect(server: &Server) -> H2 {
    let tls = tls_from(server, localhost(), &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, mut connection) = h2::client::handshake(tls).await.unwrap();
    let ping_pong = connection.ping_pong().unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    H2 {
        send,
        ping_pong,
        task,
    }
}

impl H2 {
    /// Sends a GET with `headers`; the response head.
    pub async fn get(
        &mut self,
        server: &Server,
        path: &str,
        headers: &[(&str, &str)],
    ) -> axum::http::Response<h2::RecvStream> {
        let mut request = axum::http::Request::get(server.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut send = self.send.clone().ready().await.unwrap();
        let (response, _) = send.send_request(request.body(()).unwrap(), true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("no response head before the deadline")
            .unwrap()
    }

    /// Sends a PING every `every` until the server closes the connection; how long that
    /// took. Fails the test after `limit`.
    pub async fn ping_until_closed(mut self, every: Duration, limit: Duration) -> Duration {
        let start = Instant::now();
        let mut task = self.task;
        let pinging = async {
            loop {
                tokio::select! {
                    _ = &mut task => return start.elapsed(),
                    // The PING and its answer are the only traffic: the input of these tests.
                    _ = async {
                        let _ = self.ping_pong.ping(h2::Ping::opaque()).await;
                        tokio::time::sleep(every).await;
                    } => {}
                }
            }
        };
        tokio::time::timeout(limit, pinging)
            .await
            .unwrap_or_else(|_| {
                panic!("the server kept the connection open for more than {limit:?}")
            })
    }
}
