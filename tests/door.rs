//! The ingest door refuses from the request head: no body byte is read (and no
//! `100 Continue` sent) for a request that will be refused, so floods of bodies without
//! credentials cost no memory. The answers are checked on the in-process server; the memory
//! bound on the real binary, whose peak RSS is its own.

mod common;

use std::time::{Duration, Instant};

use common::*;
use things_receiver::token::Token;
use tokio::io::AsyncWriteExt;

const ANSWER_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn expect_continue_without_credentials_is_refused_before_the_body() {
    let env = Env::new().await;
    let server = env.serve_in_process(&[]).await;
    let mut stream = raw_tls::connect_http1(&server).await;
    stream
        .write_all(
            b"POST /ingest/kpn HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
              Content-Length: 900000\r\nExpect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    // The body is never sent: the answer must come from the head alone.
    let head = raw_tls::read_head(&mut stream, ANSWER_WITHIN).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_413_without_reading_the_body() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let token = Token::sign(b"[]", SECRET.as_bytes()).to_hex();
    let mut stream = raw_tls::connect_http1(&server).await;
    let head = format!(
        "POST /ingest/kpn HTTP/1.1\r\nHost: localhost\r\nThings-Plug-UUID: {plug}\r\n\
         Things-Message-Token: {token}\r\nContent-Length: 10000000000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = raw_tls::read_head(&mut stream, ANSWER_WITHIN).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn expect_continue_with_credentials_gets_continue_then_is_stored() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let body = fixture("value-kinds.json");
    let token = Token::sign(&body, SECRET.as_bytes()).to_hex();
    let mut stream = raw_tls::connect_http1(&server).await;
    let head = format!(
        "POST /ingest/kpn HTTP/1.1\r\nHost: localhost\r\nThings-Plug-UUID: {plug}\r\n\
         Things-Message-Token: {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let interim = raw_tls::read_head(&mut stream, ANSWER_WITHIN).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    stream.write_all(&body).await.unwrap();
    let answer = raw_tls::read_head(&mut stream, ANSWER_WITHIN).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// Peak resident memory of a process so far, in KiB (`VmHWM`).
fn peak_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The flood of the review: 120 HTTP/2 streams on one connection, each posting 900 KB
/// without the `Things-*` headers. Buffering those bodies took the server up by 100 MiB;
/// refused from the head, the growth of its peak memory stays small.
#[tokio::test]
async fn an_http2_flood_without_credentials_does_not_grow_memory() {
    const STREAMS: usize = 120;
    const BODY: usize = 900 * 1000;
    let env = Env::new().await;
    let server = env.serve(&[]);
    things_receiver::tls::install_default_provider();
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // One request first, so that every stream of the flood shares its connection.
    let warm = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(warm.version(), reqwest::Version::HTTP_2);
    let before = peak_rss_kib(server.pid());
    let started = Instant::now();
    let body = bytes::Bytes::from(vec![b'x'; BODY]);
    let requests = (0..STREAMS).map(|_| {
        let request = client
            .post(server.url("/ingest/kpn"))
            .header("Content-Type", "application/json")
            .body(body.clone());
        async move { request.send().await.map(|r| r.status().as_u16()) }
    });
    let answers = futures_util::future::join_all(requests).await;
    let refused = answers.iter().filter(|a| matches!(a, Ok(400))).count();
    let growth_mib = peak_rss_kib(server.pid()).saturating_sub(before) / 1024;
    eprintln!(
        "{STREAMS} streams x {BODY} bytes: {refused} answered 400 in {:?}, peak RSS +{growth_mib} MiB",
        started.elapsed()
    );
    assert_eq!(refused, STREAMS, "{answers:?}");
    assert!(growth_mib < 32, "peak RSS grew by {growth_mib} MiB");
}

#[tokio::test]
async fn repeated_credential_headers_are_400_not_first_wins() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let body = fixture("value-kinds.json");
    let token = Token::sign(&body, SECRET.as_bytes()).to_hex();
    let other = uuid::Uuid::new_v4().to_string();
    for (name, first, second) in [
        ("Things-Plug-UUID", plug.to_string(), other),
        ("Things-Message-Token", token.clone(), "00".repeat(32)),
    ] {
        let mut request = client
            .post(server.url("/ingest/kpn"))
            .header("Content-Type", "application/json")
            .body(body.clone());
        for (n, v) in [
            ("Things-Plug-UUID", plug.to_string()),
            ("Things-Message-Token", token.clone()),
        ] {
            if n != name {
                request = request.header(n, v);
            }
        }
        let request = request.header(name, first).header(name, second);
        let (status, json) = status_json(request.send().await.unwrap()).await;
        assert_eq!(status, 400, "{name}: {json}");
        assert_eq!(json["error"], "malformed_header");
        assert!(json["detail"].as_str().unwrap().contains(name), "{json}");
    }
    let mut db = connect(&env.database_url).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn a_required_header_value_given_with_spaces_still_matches() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &["--require-header", "device-type=  dragino-lds01 "]);
    let listed = env.cli_ok(&["destinations", "list", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(
        listed[0]["required_headers"]["device-type"],
        "dragino-lds01"
    );
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let body = fixture("value-kinds.json");
    let token = Token::sign(&body, SECRET.as_bytes()).to_hex();
    let response = deliver_with(
        &client,
        &server,
        plug,
        &token,
        &body,
        &[("device-type", "dragino-lds01")],
    )
    .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn pending_destinations_are_capped_with_a_clear_error() {
    let env = Env::new().await;
    for i in 0..things_receiver::ingest::verify::destinations::MAX_PENDING {
        env.cli_ok(&["destinations", "add", "--name", &format!("pending-{i}")]);
    }
    let refused = env.cli(&["destinations", "add", "--name", "one-too-many"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("already pending"), "{stderr}");
    // With its plug a destination is not pending, and is accepted.
    env.add_destination("bound", &[]);
}
