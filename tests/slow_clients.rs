//! Clients that hold a connection without finishing anything: trickled bodies, PING-only
//! HTTP/2 connections, many connections from one address. Each is cut or refused while
//! others, and long answers that are being read, go on.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::raw_tls::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn a_body_sent_too_slowly_is_answered_408_and_frees_its_slot() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    // One connection slot: once the slow request is over, the next client must get it.
    let server = env.serve(&[
        "--request-timeout",
        "1s",
        "--idle-timeout",
        "60s",
        "--max-connections",
        "1",
    ]);
    let mut tls = tls_from(&server, localhost(), &[b"http/1.1"])
        .await
        .unwrap();
    let token = "0".repeat(64);
    tls.write_all(
        format!(
            "POST /ingest/kpn HTTP/1.1\r\nHost: localhost\r\nThings-Plug-UUID: {plug}\r\n\
             Things-Message-Token: {token}\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n["
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    // One byte every 100 ms: the connection never goes quiet, the body never ends in time.
    let start = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no answer to a trickled body after 10 s: {}",
            String::from_utf8_lossy(&answer)
        );
        match tokio::time::timeout(Duration::from_millis(100), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {
                if tls.write_all(b" ").await.is_err() {
                    break false;
                }
            }
        }
    };
    let took = start.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}"
    );
    let _ = closed;
    // The slot is free again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthz_from(&server, localhost()).await {
        assert!(Instant::now() < deadline, "the slot was not freed");
    }
}

#[tokio::test]
async fn an_http2_body_sent_too_slowly_is_answered_408_and_the_connection_goes_on() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve(&["--request-timeout", "1s", "--idle-timeout", "60s"]);
    let mut h2 = h2_connect(&server).await;
    let request = axum::http::Request::post(server.url("/ingest/kpn"))
        .header("things-plug-uuid", plug.to_string())
        .header("things-message-token", "0".repeat(64))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let mut send = h2.send.clone().ready().await.unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    let start = Instant::now();
    tokio::pin!(response);
    // One byte every 100 ms, never the end of the body.
    let response = loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no answer to a trickled body after 10 s"
        );
        tokio::select! {
            response = &mut response => break response.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let _ = body.send_data(bytes::Bytes::from_static(b" "), false);
            }
        }
    };
    assert_eq!(response.status(), 408);
    assert!(start.elapsed() >= Duration::from_millis(900));
    // The other streams of the connection are not affected.
    assert_eq!(h2.get(&server, "/healthz", &[]).await.status(), 200);
}

#[tokio::test]
async fn http2_pings_do_not_keep_an_idle_connection_open() {
    let env = Env::new().await;
    let server = env.serve(&["--idle-timeout", "1s", "--header-read-timeout", "60s"]);
    let mut h2 = h2_connect(&server).await;
    let response = h2.get(&server, "/healthz", &[]).await;
    assert_eq!(response.status(), 200);
    let took = h2
        .ping_until_closed(Duration::from_millis(200), Duration::from_secs(10))
        .await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let env = Env::new().await;
    let server = env.serve(&[
        "--max-connections-per-ip",
        "2",
        "--max-connections",
        "100",
        "--tls-handshake-timeout",
        "60s",
    ]);
    let crowded = localhost();
    let other: IpAddr = IpAddr::from([127, 0, 0, 2]);
    // Two clients from one address that send nothing take its two slots. Slots are taken as
    // connection tasks start, so one may lose to a request and be refused itself: replace
    // any the server closed until a request from that address is the one refused.
    let mut stalled = vec![
        tcp_from(&server, crowded).await.unwrap(),
        tcp_from(&server, crowded).await.unwrap(),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    while healthz_from(&server, crowded).await {
        assert!(
            Instant::now() < deadline,
            "requests were served beyond --max-connections-per-ip 2"
        );
        for stream in stalled.iter_mut() {
            let closed = match stream.try_read(&mut [0u8; 1]) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if closed {
                *stream = tcp_from(&server, crowded).await.unwrap();
            }
        }
    }
    // Another address is served meanwhile: the global limit is far away.
    assert!(healthz_from(&server, other).await);
    // A slot frees when a client leaves.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !healthz_from(&server, crowded).await {
        assert!(Instant::now() < deadline, "capacity did not return");
    }
}

#[tokio::test]
async fn the_live_stream_outlives_the_request_timeout() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("reader", "read");
    let server = env.serve(&["--request-timeout", "1s", "--idle-timeout", "60s"]);
    let client = client();
    let mut stream = client
        .get(server.url("/api/v1/stream"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let opened = Instant::now();
    // Deliver until an event arrives, at least twice the request timeout after the stream
    // opened (the listener of a just-started server may not listen yet).
    let mut seen = String::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        assert!(
            opened.elapsed() < Duration::from_secs(20),
            "no live event: {seen}"
        );
        let body =
            format!("[{{\"bn\":\"urn:dev:IMEI:356938035643809:\",\"n\":\"t\",\"v\":{attempt}}}]");
        let response = deliver(&client, &server, plug, SECRET, body.as_bytes()).await;
        assert_eq!(response.status(), 200);
        if let Ok(chunk) = tokio::time::timeout(Duration::from_millis(500), stream.chunk()).await {
            let chunk = chunk.expect("the stream failed").expect("the stream ended");
            let text = String::from_utf8_lossy(&chunk);
            seen.push_str(&text);
            if text.contains("event: measurement") && opened.elapsed() >= Duration::from_secs(2) {
                break;
            }
        }
    }
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn a_flood_of_large_http2_streams_stays_bounded() {
    const STREAMS: usize = 120;
    const BODY: usize = 900 * 1024;
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve(&[]);
    let mut h2 = h2_connect(&server).await;
    let response = h2.get(&server, "/healthz", &[]).await;
    assert_eq!(response.status(), 200);
    // The server's SETTINGS have arrived with the first answer.
    let streams = h2.send.current_max_send_streams();
    assert!(streams <= 32, "{streams} concurrent streams allowed");
    let before = peak_rss_kib(server.pid());

    let body = bytes::Bytes::from(vec![b' '; BODY]);
    let token = "0".repeat(64);
    let mut sends = Vec::new();
    for _ in 0..STREAMS {
        let send = h2.send.clone();
        let body = body.clone();
        let request = axum::http::Request::post(server.url("/ingest/kpn"))
            .header("things-plug-uuid", plug.to_string())
            .header("things-message-token", &token)
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        sends.push(tokio::spawn(async move {
            let mut send = send.ready().await.unwrap();
            let (response, mut stream) = send.send_request(request, false).unwrap();
            stream.send_data(body, true).unwrap();
            response.await.map(|r| r.status().as_u16())
        }));
    }
    let deadline = Duration::from_secs(60);
    for send in sends {
        let status = tokio::time::timeout(deadline, send)
            .await
            .expect("a stream was not answered in time")
            .unwrap();
        // Refused streams (a reset) are fine too: the point is what the server holds.
        if let Ok(status) = status {
            assert_eq!(status, 401);
        }
    }
    let grown = peak_rss_kib(server.pid()).saturating_sub(before);
    eprintln!("peak resident memory grew by {grown} KiB");
    assert!(
        grown < 40 * 1024,
        "peak resident memory grew by {grown} KiB"
    );
    assert!(healthz_from(&server, localhost()).await);
}
