//! Whether the server still accepts TLS 1.0 or 1.1.
//!
//! rustls cannot speak these versions, so a minimal ClientHello is written by hand (RFC 2246
//! / 4346 record and handshake framing, the usual ECDHE and RSA CBC suites of that era) and
//! only the server's first answer is read: a ServerHello for the offered version means the
//! protocol is accepted; an alert or a closed connection means it is refused.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Finding;
use super::network::connect;

/// TLS 1.0 (minor 1) and TLS 1.1 (minor 2).
const LEGACY: [(u8, &str); 2] = [(1, "TLS 1.0"), (2, "TLS 1.1")];

pub async fn check(addresses: &[SocketAddr], host: &str, timeout: Duration) -> Finding {
    let mut accepted = Vec::new();
    for (minor, name) in LEGACY {
        match accepts(addresses, host, minor, timeout).await {
            Ok(true) => accepted.push(name),
            Ok(false) => {}
            Err(e) => {
                return Finding::fail(
                    "legacy-tls",
                    format!("cannot test {name}: {e}"),
                    "make sure the endpoint is reachable and retry",
                );
            }
        }
    }
    if accepted.is_empty() {
        Finding::pass("legacy-tls", "TLS 1.0 and 1.1 are refused")
    } else {
        Finding::fail(
            "legacy-tls",
            format!("{} accepted", accepted.join(" and ")),
            "disable TLS 1.0 and 1.1 and offer only TLS 1.2 and 1.3 (things-receiver does so \
             itself; check a proxy or load balancer in front)",
        )
    }
}

/// Sends a ClientHello offering only TLS 1.`minor - 1`; true if the server agrees to it.
async fn accepts(
    addresses: &[SocketAddr],
    host: &str,
    minor: u8,
    timeout: Duration,
) -> Result<bool, String> {
    let mut stream = connect(addresses, timeout).await?;
    let hello = client_hello(host, minor);
    let exchange = async {
        stream.write_all(&hello).await?;
        let mut header = [0u8; 5];
        if stream.read_exact(&mut header).await.is_err() {
            return Ok::<bool, std::io::Error>(false);
        }
        // Content type 22 is a handshake record; an alert (21) is a refusal.
        if header[0] != 22 {
            return Ok(false);
        }
        let mut start = [0u8; 6];
        if stream.read_exact(&mut start).await.is_err() {
            return Ok(false);
        }
        // ServerHello (type 2), 3 length bytes, then the chosen version.
        Ok(start[0] == 2 && start[4] == 3 && start[5] == minor)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Ok(false),
        Ok(Err(_)) => Ok(false),
        Ok(Ok(agreed)) => Ok(agreed),
    }
}

fn with_u16_len(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut out = kind.to_be_bytes().to_vec();
    out.extend(with_u16_len(body));
    out
}

pub(crate) fn client_hello(host: &str, minor: u8) -> Vec<u8> {
    let suites: [u16; 9] = [
        0xc013, 0xc014, 0xc009, 0xc00a, 0x002f, 0x0035, 0x000a, 0x0033, 0x0039,
    ];
    let mut extensions = Vec::new();
    if host.parse::<std::net::IpAddr>().is_err() {
        let mut entry = vec![0u8];
        entry.extend(with_u16_len(host.as_bytes()));
        extensions.extend(extension(0x0000, &with_u16_len(&entry)));
    }
    // supported_groups: x25519, secp256r1, secp384r1.
    extensions.extend(extension(
        0x000a,
        &with_u16_len(&[0x00, 0x1d, 0x00, 0x17, 0x00, 0x18]),
    ));
    // ec_point_formats: uncompressed.
    extensions.extend(extension(0x000b, &[0x01, 0x00]));
    // renegotiation_info: empty.
    extensions.extend(extension(0xff01, &[0x00]));

    let mut body = vec![3, minor];
    body.extend(rand::random::<[u8; 32]>());
    body.push(0); // no session id
    let suite_bytes: Vec<u8> = suites.iter().flat_map(|s| s.to_be_bytes()).collect();
    body.extend(with_u16_len(&suite_bytes));
    body.extend([1, 0]); // compression: null only
    body.extend(with_u16_len(&extensions));

    let mut handshake = vec![1u8]; // ClientHello
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);

    let mut record = vec![22u8, 3, 1];
    record.extend(with_u16_len(&handshake));
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_framing_is_consistent() {
        let hello = client_hello("example.org", 2);
        assert_eq!(hello[0], 22);
        let record_len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
        assert_eq!(record_len, hello.len() - 5);
        assert_eq!(hello[5], 1);
        let hs_len = u32::from_be_bytes([0, hello[6], hello[7], hello[8]]) as usize;
        assert_eq!(hs_len, record_len - 4);
        assert_eq!(&hello[9..11], &[3, 2]);
        let sni = hello.windows(11).any(|w| w == b"example.org");
        assert!(sni);
        assert!(
            !client_hello("127.0.0.1", 1)
                .windows(9)
                .any(|w| w == b"127.0.0.1")
        );
    }
}
