//! Logs an operator's tools can read: no colour codes off a terminal, JSON lines on request,
//! and a request id in the answer and in every line logged while the request is handled.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Waits until a stderr line contains `needle`; returns every line so far.
async fn wait_for_line(server: &Server, needle: &str) -> Vec<String> {
    let lines = server.stderr.as_ref().expect("started capturing stderr");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = lines.lock().unwrap().clone();
        if now.iter().any(|l| l.contains(needle)) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?} in:\n{}",
            now.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Delivers a verified body that is not SenML (which logs a warning inside the request),
/// with `x-request-id: id`; checks the answer carries the same id.
async fn quarantine_with_id(server: &Server, plug: uuid::Uuid, id: &str) {
    let client = client();
    let token = things_receiver::token::Token::sign(b"garbage", SECRET.as_bytes()).to_hex();
    let r = deliver_with(
        &client,
        server,
        plug,
        &token,
        b"garbage",
        &[("x-request-id", id)],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], id);
    // Without one, an id is made.
    let r = client.get(server.url("/healthz")).send().await.unwrap();
    let made = r.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::try_parse(made).is_ok(), "{made}");
}

#[tokio::test]
async fn text_logs_off_a_terminal_have_no_colour_and_carry_the_request_id() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let mut cmd = env.command();
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::start_capturing(cmd);
    quarantine_with_id(&server, plug, "trace-me-42").await;
    let lines = wait_for_line(&server, "delivery quarantined").await;
    let warning = lines
        .iter()
        .find(|l| l.contains("delivery quarantined"))
        .unwrap();
    assert!(warning.contains("trace-me-42"), "{warning}");
    for line in &lines {
        assert!(!line.contains("\x1b["), "colour codes in {line:?}");
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_the_request_id() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let mut cmd = env.command();
    cmd.env("THINGS_LOG_FORMAT", "json")
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::start_capturing(cmd);
    quarantine_with_id(&server, plug, "trace-me-43").await;
    let lines = wait_for_line(&server, "delivery quarantined").await;
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let warning = objects
        .iter()
        .find(|o| {
            o["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("delivery quarantined"))
        })
        .unwrap();
    assert_eq!(warning["level"], "WARN");
    assert_eq!(warning["span"]["request_id"], "trace-me-43", "{warning}");
}
