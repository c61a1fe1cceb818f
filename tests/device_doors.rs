//! The device doors against the real binary: M2M devices over the plain listener (also with
//! the bare-LF header lines of KPN's C SDK), Internet devices over HTTPS, each answer code,
//! and the downlinks that ride on the answers.

mod common;

use std::time::{Duration, Instant};

use common::raw_tls::read_head;
use common::*;
use serde_json::{Value, json};
use things_receiver::store::embedded::{EmbeddedOptions, EmbeddedPostgres};
use things_receiver::token::Token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IMEI: &str = "urn:dev:IMEI:356938035643809:";
const DVNUUID: &str = "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:";
const DEVICE_SECRET: &str = "Device-Secret-For-The-M2M-Door-0123456789";
const M2M: &str = "/ingestion/m2m/senml/v1";
const IP: &str = "/ingestion/ip/senml/v1";

fn pack(urn: &str, n: u32) -> Vec<u8> {
    format!(r#"[{{"bn":"{urn}","n":"temperature","u":"Cel","v":{n}}},{{"n":"firmware","vs":"1.0.{n}"}}]"#)
        .into_bytes()
}

fn token(body: &[u8], secret: &str) -> String {
    Token::sign(body, secret.as_bytes()).to_hex()
}

/// The plain device listener's base URL, from the banner.
fn device_base(server: &Server) -> String {
    let line = server
        .banner
        .lines()
        .find(|l| l.contains("m2m devices:"))
        .unwrap_or_else(|| panic!("no device listener in the banner:\n{}", server.banner));
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap();
    url.trim_end_matches(M2M).to_owned()
}

/// Starts the server with a plain device listener and a registered IMEI device.
async fn start(env: &Env, extra: &[&str]) -> (Server, String) {
    env.cli_ok(&["devices", "add", IMEI, "--secret", DEVICE_SECRET]);
    let mut flags = vec!["--device-listen", "127.0.0.1:0"];
    flags.extend_from_slice(extra);
    let server = env.serve(&flags);
    let base = device_base(&server);
    (server, base)
}

async fn uplink(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    body: &[u8],
) -> reqwest::Response {
    client
        .post(url)
        .header("Things-Message-Token", token(body, secret))
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

async fn queue(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    urn: &str,
    request: Value,
) -> (u16, Value) {
    let response = client
        .post(server.url(&format!("/api/v1/devices/{urn}/downlinks")))
        .bearer_auth(key)
        .json(&request)
        .send()
        .await
        .unwrap();
    status_json(response).await
}

async fn downlink(client: &reqwest::Client, server: &Server, key: &str, id: &str) -> Value {
    let (status, json) = api_get(client, server, key, &format!("/api/v1/downlinks/{id}")).await;
    assert_eq!(status, 200, "{json}");
    json
}

async fn message_count(env: &Env) -> i64 {
    let mut db = connect(&env.database_url).await;
    sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

#[tokio::test]
async fn every_answer_code_of_both_doors() {
    let env = Env::new().await;
    let (server, base) = start(&env, &["--device-max-body", "1KiB"]).await;
    let client = client();
    let m2m = format!("{base}{M2M}");

    // Accepted: 202 with an empty body, stored with its door.
    let body = pack(IMEI, 1);
    let response = uplink(&client, &m2m, DEVICE_SECRET, &body).await;
    assert_eq!(response.status(), 202);
    assert!(response.headers().get("things-downlinks-pending").is_none());
    assert!(response.bytes().await.unwrap().is_empty());
    // The same device through the Internet door on the TLS listener.
    let body = pack(IMEI, 2);
    let response = uplink(&client, &server.url(IP), DEVICE_SECRET, &body).await;
    assert_eq!(response.status(), 202);

    let key = env.api_key("reader", "read");
    let (_, messages) = api_get(&client, &server, &key, "/api/v1/messages").await;
    let doors: Vec<&str> = messages["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["door"].as_str().unwrap())
        .collect();
    assert_eq!(doors, ["ip", "m2m"], "{messages}");
    assert!(
        messages["items"][0].get("destination").is_none(),
        "{messages}"
    );
    assert_eq!(messages["items"][0]["device"], IMEI, "{messages}");
    let (_, latest) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/devices/{IMEI}/latest"),
    )
    .await;
    assert_eq!(latest["values"][0]["name"], "firmware", "{latest}");
    assert_eq!(latest["values"][1]["value"], 2.0, "{latest}");

    // Refusals, each with a short text reason.
    let cases: Vec<(u16, reqwest::Response, &str)> = vec![
        (
            400,
            client.post(&m2m).body(pack(IMEI, 3)).send().await.unwrap(),
            "Things-Message-Token",
        ),
        (
            400,
            client
                .post(&m2m)
                .header("Things-Message-Token", "abc")
                .body(pack(IMEI, 3))
                .send()
                .await
                .unwrap(),
            "64 hexadecimal",
        ),
        (
            400,
            uplink(&client, &m2m, DEVICE_SECRET, br#"{"bn":"x"}"#).await,
            "not a JSON array",
        ),
        (
            400,
            uplink(&client, &m2m, DEVICE_SECRET, br#"[{"n":"t","v":1}]"#).await,
            "no string bn",
        ),
        (
            404,
            uplink(&client, &m2m, DEVICE_SECRET, &pack(DVNUUID, 3)).await,
            "not registered",
        ),
        (
            401,
            uplink(
                &client,
                &m2m,
                "another-secret-of-thirty-characters",
                &pack(IMEI, 3),
            )
            .await,
            "token",
        ),
        (
            413,
            uplink(&client, &m2m, DEVICE_SECRET, &vec![b' '; 2000]).await,
            "larger than 1024",
        ),
    ];
    for (want, response, reason) in cases {
        assert_eq!(response.status(), want, "{reason}");
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = response.text().await.unwrap();
        assert!(text.contains(reason), "{want}: {text}");
    }
    // A body without a declared length is cut off at the limit as it arrives.
    let mut stream = TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .unwrap();
    let head = format!(
        "POST {M2M} HTTP/1.1\r\nHost: m.m\r\nThings-Message-Token: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        token(b"x", DEVICE_SECRET)
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        let chunk = format!("200\r\n{}\r\n", " ".repeat(512));
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let answer = read_head(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(message_count(&env).await, 2, "nothing refused was stored");

    // A device signs for itself only: another device's record is quarantined, not stored.
    let mixed =
        format!(r#"[{{"bn":"{IMEI}","n":"t","v":1}},{{"bn":"{DVNUUID}","n":"t","v":666}}]"#);
    let response = uplink(&client, &m2m, DEVICE_SECRET, mixed.as_bytes()).await;
    assert_eq!(response.status(), 202);
    let (_, quarantined) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/messages?status=quarantined",
    )
    .await;
    let reason = quarantined["items"][0]["decode_error"].as_str().unwrap();
    assert!(reason.contains("not the device that signed"), "{reason}");
    let (status, _) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/devices/{DVNUUID}"),
    )
    .await;
    assert_eq!(status, 404, "no data was written for the other device");
}

/// What KPN's C SDK writes: header lines ending in a bare LF, `Host: m.m`, headers in any
/// order, keep-alive or one request per connection.
#[tokio::test]
async fn bare_lf_requests_over_a_raw_socket() {
    let env = Env::new().await;
    let (server, base) = start(&env, &[]).await;
    let addr = base.trim_start_matches("http://").to_owned();

    let request = |n: u32, close: bool| {
        let body = pack(IMEI, n);
        let mut head = format!(
            "POST {M2M} HTTP/1.1\nContent-Length: {}\nThings-Message-Token: {}\nHost: m.m\nContent-Type: application/json\n",
            body.len(),
            token(&body, DEVICE_SECRET)
        );
        if close {
            head.push_str("Connection: close\n");
        }
        head.push('\n');
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    };
    // Two downlinks wait: the answers carry them, as KPN's SDK reads them.
    let client = client();
    let key = env.api_key("ops", "downlink");
    for hex in ["0a", "0b"] {
        let (status, _) = queue(&client, &server, &key, IMEI, json!({"payload_hex": hex})).await;
        assert_eq!(status, 202);
    }
    // Three requests on one kept-alive connection.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    for (n, want) in [(1, Some(("0a", true))), (2, Some(("0b", false))), (3, None)] {
        stream.write_all(&request(n, false)).await.unwrap();
        let head = read_head(&mut stream, Duration::from_secs(10)).await;
        let lower = head.to_ascii_lowercase();
        match want {
            None => {
                assert!(head.starts_with("HTTP/1.1 202"), "{head}");
                assert!(lower.contains("content-length: 0"), "{head}");
            }
            Some((hex, more)) => {
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                assert!(lower.contains("content-type: application/json"), "{head}");
                assert_eq!(
                    lower.contains("things-downlinks-pending: 1"),
                    more,
                    "{head}"
                );
                let length: usize = lower
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                let mut body = vec![0; length];
                stream.read_exact(&mut body).await.unwrap();
                let pack: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(pack, json!([{"bn": IMEI}, {"n": "payloadHex", "vs": hex}]));
            }
        }
    }
    // One request per connection, closed by the server after the answer.
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(&request(4, true)).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(message_count(&env).await, 4);
    drop(server);
}

/// The plain listener serves the device doors and nothing else; the main one serves them too.
#[tokio::test]
async fn the_plain_listener_serves_only_the_device_doors() {
    let env = Env::new().await;
    let (server, base) = start(&env, &[]).await;
    let client = client();
    let plug = env.add_destination("d", &[]);
    let kpn_body = fixture("m2m-uplink.json");
    for path in [
        "/api/v1/devices",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/v1/openapi.json",
        "/docs",
    ] {
        let status = client
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{path}");
    }
    let kpn = client
        .post(format!("{base}/ingest/kpn"))
        .header("Things-Plug-UUID", plug.to_string())
        .header("Things-Message-Token", token(&kpn_body, SECRET))
        .body(kpn_body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        kpn.status(),
        404,
        "no KPN destination door on the device listener"
    );
    // Both doors on both listeners.
    for (n, url) in [
        format!("{base}{M2M}"),
        format!("{base}{IP}"),
        server.url(M2M),
        server.url(IP),
    ]
    .iter()
    .enumerate()
    {
        let response = uplink(&client, url, DEVICE_SECRET, &pack(IMEI, n as u32)).await;
        assert_eq!(response.status(), 202, "{url}");
    }
    assert_eq!(message_count(&env).await, 4);
}

#[tokio::test]
async fn downlinks_ride_one_per_answer_in_order_and_a_retry_gets_the_same_one() {
    let env = Env::new().await;
    let (server, base) = start(&env, &[]).await;
    let client = client();
    let m2m = format!("{base}{M2M}");
    let key = env.api_key("ops", "read,downlink");

    // No KPN credentials are needed for a registered device.
    let (status, first) = queue(
        &client,
        &server,
        &key,
        IMEI,
        json!({"records": [{"n": "led", "vb": true}]}),
    )
    .await;
    assert_eq!(status, 202, "{first}");
    let (status, second) =
        queue(&client, &server, &key, IMEI, json!({"payload_hex": "0A0B"})).await;
    assert_eq!(status, 202, "{second}");
    let first_id = first["id"].as_str().unwrap();
    let second_id = second["id"].as_str().unwrap();
    let shown = downlink(&client, &server, &key, first_id).await;
    assert_eq!(
        (shown["transport"].as_str(), shown["status"].as_str()),
        (Some("response"), Some("queued")),
        "{shown}"
    );
    assert!(shown["expires_at"].is_string(), "{shown}");

    // The first uplink carries the oldest, and says one more waits.
    let body = pack(IMEI, 1);
    let response = uplink(&client, &m2m, DEVICE_SECRET, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["things-downlinks-pending"], "1");
    let carried: Value = response.json().await.unwrap();
    assert_eq!(carried, json!([{"bn": IMEI}, {"n": "led", "vb": true}]));

    // Its retry (lost answer) is stored once and gets the same downlink.
    let response = uplink(&client, &m2m, DEVICE_SECRET, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), carried);
    assert_eq!(message_count(&env).await, 1);

    // The next uplink, through the other door, carries the second; then nothing is left.
    let response = uplink(&client, &server.url(IP), DEVICE_SECRET, &pack(IMEI, 2)).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("things-downlinks-pending").is_none());
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!([{"bn": IMEI}, {"n": "payloadHex", "vs": "0a0b"}])
    );
    let response = uplink(&client, &m2m, DEVICE_SECRET, &pack(IMEI, 3)).await;
    assert_eq!(response.status(), 202);
    assert!(response.bytes().await.unwrap().is_empty());

    let shown = downlink(&client, &server, &key, first_id).await;
    assert_eq!(shown["status"], "delivered", "{shown}");
    let mut db = connect(&env.database_url).await;
    let (message_token,): (Vec<u8>,) = sqlx::query_as("SELECT token FROM messages WHERE id = $1")
        .bind(shown["message_id"].as_i64().unwrap())
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(
        message_token,
        Token::sign(&body, DEVICE_SECRET.as_bytes()).0,
        "rode on the first uplink"
    );
    assert_eq!(
        downlink(&client, &server, &key, second_id).await["status"],
        "delivered"
    );
    // Delivered is final: too late to cancel.
    let cancel = client
        .delete(server.url(&format!("/api/v1/downlinks/{first_id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 409);
    let (_, listed) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/downlinks?device={IMEI}&status=delivered"),
    )
    .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");

    // A cancelled one is never carried.
    let (_, third) = queue(&client, &server, &key, IMEI, json!({"payload_hex": "01"})).await;
    let cancel = client
        .delete(server.url(&format!(
            "/api/v1/downlinks/{}",
            third["id"].as_str().unwrap()
        )))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    let response = uplink(&client, &m2m, DEVICE_SECRET, &pack(IMEI, 4)).await;
    assert_eq!(response.status(), 202);

    // Requests the outbox refuses for a registered device.
    let (status, json) = queue(
        &client,
        &server,
        &key,
        IMEI,
        json!({"payload_hex": "01", "ttl": "soon"}),
    )
    .await;
    assert_eq!(status, 422, "{json}");
    let (status, json) = queue(
        &client,
        &server,
        &key,
        DVNUUID,
        json!({"payload_hex": "01"}),
    )
    .await;
    // Neither registered nor known: only KPN could take it, and KPN is not configured.
    assert_eq!(
        (status, json["error"].as_str()),
        (503, Some("not_configured")),
        "{json}"
    );
}

#[tokio::test]
async fn a_downlink_past_its_ttl_expires_and_is_never_sent() {
    let env = Env::new().await;
    let (server, base) = start(&env, &[]).await;
    let client = client();
    let key = env.api_key("ops", "downlink");
    let (status, queued) = queue(
        &client,
        &server,
        &key,
        IMEI,
        json!({"payload_hex": "ff", "ttl": 1}),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    let id = queued["id"].as_str().unwrap();
    let expires = downlink(&client, &server, &key, id).await["expires_at"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();
    // Waiting for the clock itself: the ttl has to pass.
    while chrono::Utc::now() <= expires {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let response = uplink(
        &client,
        &format!("{base}{M2M}"),
        DEVICE_SECRET,
        &pack(IMEI, 1),
    )
    .await;
    assert_eq!(response.status(), 202);
    assert!(response.bytes().await.unwrap().is_empty());
    let shown = downlink(&client, &server, &key, id).await;
    assert_eq!(shown["status"], "expired", "{shown}");
    assert!(shown.get("message_id").is_none(), "{shown}");
}

#[tokio::test]
async fn a_rotated_secret_is_accepted_during_its_overlap_only() {
    let env = Env::new().await;
    let (server, base) = start(&env, &[]).await;
    let client = client();
    let m2m = format!("{base}{M2M}");
    const NEW: &str = "Rotated-Device-Secret-0123456789abcdef";

    change_devices(
        &env,
        &client,
        &server,
        &[
            "devices",
            "rotate",
            IMEI,
            "--secret",
            NEW,
            "--overlap",
            "1h",
        ],
    )
    .await;
    assert_eq!(
        uplink(&client, &m2m, NEW, &pack(IMEI, 1)).await.status(),
        202
    );
    assert_eq!(
        uplink(&client, &m2m, DEVICE_SECRET, &pack(IMEI, 2))
            .await
            .status(),
        202
    );

    change_devices(
        &env,
        &client,
        &server,
        &[
            "devices",
            "rotate",
            IMEI,
            "--secret",
            DEVICE_SECRET,
            "--overlap",
            "0s",
        ],
    )
    .await;
    assert_eq!(
        uplink(&client, &m2m, NEW, &pack(IMEI, 3)).await.status(),
        401
    );
    assert_eq!(
        uplink(&client, &m2m, DEVICE_SECRET, &pack(IMEI, 4))
            .await
            .status(),
        202
    );

    // A registration made while the server runs reaches it; a removed one is refused.
    change_devices(
        &env,
        &client,
        &server,
        &["devices", "add", DVNUUID, "--secret", NEW],
    )
    .await;
    assert_eq!(
        uplink(&client, &server.url(IP), NEW, &pack(DVNUUID, 5))
            .await
            .status(),
        202
    );
    let key = env.api_key("ops", "downlink");
    let (_, orphan) = queue(
        &client,
        &server,
        &key,
        DVNUUID,
        json!({"payload_hex": "01"}),
    )
    .await;
    change_devices(&env, &client, &server, &["devices", "remove", DVNUUID]).await;
    let shown = downlink(&client, &server, &key, orphan["id"].as_str().unwrap()).await;
    assert_eq!(
        shown["status"], "cancelled",
        "nothing can carry it any more: {shown}"
    );
    assert_eq!(
        uplink(&client, &server.url(IP), NEW, &pack(DVNUUID, 6))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn a_queued_downlink_survives_a_restart() {
    let env = Env::new().await;
    let (server, _) = start(&env, &[]).await;
    let client = client();
    let key = env.api_key("ops", "downlink");
    let (status, _) = queue(
        &client,
        &server,
        &key,
        IMEI,
        json!({"payload_hex": "c0ffee"}),
    )
    .await;
    assert_eq!(status, 202);
    assert!(server.stop().await.success());

    let server = env.serve(&["--device-listen", "127.0.0.1:0"]);
    let base = device_base(&server);
    let response = uplink(
        &client,
        &format!("{base}{M2M}"),
        DEVICE_SECRET,
        &pack(IMEI, 1),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!([{"bn": IMEI}, {"n": "payloadHex", "vs": "c0ffee"}])
    );
}

/// During a database outage device uplinks are spooled (202, no downlink: it stays queued)
/// and stored once after the replay; the downlink then rides on the next answer.
#[tokio::test]
async fn device_uplinks_are_spooled_while_the_database_is_down() {
    let (dir, pg, env) = own_cluster("things-device-pg", false).await;
    let options = EmbeddedOptions { durable: false };
    let (server, base) = start(
        &env,
        &[
            "--db-timeout",
            "1s",
            "--spool-after",
            "300ms",
            "--spool-max",
            "4KiB",
        ],
    )
    .await;
    let client = client();
    let m2m = format!("{base}{M2M}");
    let key = env.api_key("ops", "downlink");
    let (status, queued) = queue(&client, &server, &key, IMEI, json!({"payload_hex": "aa"})).await;
    assert_eq!(status, 202);
    readyz(&client, &server).await;

    pg.stop().await.unwrap();
    let mut bodies: Vec<Vec<u8>> = (0..5).map(|n| pack(IMEI, n)).collect();
    for body in &bodies {
        let response = uplink(&client, &m2m, DEVICE_SECRET, body).await;
        assert_eq!(response.status(), 202, "spooled");
        assert!(response.bytes().await.unwrap().is_empty());
    }
    assert_eq!(readyz(&client, &server).await["spool"]["deliveries"], 5);
    // Once the spool is full, nothing is accepted: 503, and the device retries later.
    let mut refused = false;
    for n in 100..200 {
        let body = pack(IMEI, n);
        let response = uplink(&client, &m2m, DEVICE_SECRET, &body).await;
        if response.status() == 503 {
            assert!(response.headers().contains_key("retry-after"));
            refused = true;
            break;
        }
        assert_eq!(response.status(), 202, "spooled");
        bodies.push(body);
    }
    assert!(refused, "the spool filled up");

    let pg = EmbeddedPostgres::start(dir.path(), &options).await.unwrap();
    wait_ready(&client, &server, |j| j["spool"]["deliveries"] == 0).await;
    // Retries of spooled uplinks are duplicates now, and every one is stored once.
    for body in &bodies {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = uplink(&client, &m2m, DEVICE_SECRET, body).await.status();
            if status == 202 {
                break;
            }
            assert!(Instant::now() < deadline, "retry answered {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(message_count(&env).await, bodies.len() as i64);
    let shown = downlink(&client, &server, &key, queued["id"].as_str().unwrap()).await;
    assert_eq!(
        shown["status"], "queued",
        "the replay carried no downlink: {shown}"
    );
    let response = uplink(&client, &m2m, DEVICE_SECRET, &pack(IMEI, 99)).await;
    assert_eq!(response.status(), 200);
    drop(server);
    pg.stop().await.unwrap();
}

/// KPN's own packs, byte for byte: an Internet device without `bt` gets the receipt time.
#[tokio::test]
async fn kpn_device_packs_are_stored_with_receipt_time_when_bt_is_absent() {
    let env = Env::new().await;
    let (server, base) = start(&env, &[]).await;
    env.cli_ok(&["devices", "add", DVNUUID, "--secret", DEVICE_SECRET]);
    let client = client();
    let key = env.api_key("reader", "read");
    wait_ready(&client, &server, |j| j["devices"]["registered"] == 2).await;

    let before = chrono::Utc::now();
    let body = fixture("internet-uplink-no-time.json");
    assert_eq!(
        uplink(&client, &server.url(IP), DEVICE_SECRET, &body)
            .await
            .status(),
        202
    );
    let after = chrono::Utc::now();
    let body = fixture("m2m-uplink.json");
    assert_eq!(
        uplink(&client, &format!("{base}{M2M}"), DEVICE_SECRET, &body)
            .await
            .status(),
        202
    );

    let (_, latest) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/devices/{DVNUUID}/latest"),
    )
    .await;
    let time = latest["values"][0]["time"]
        .as_str()
        .unwrap()
        .parse::<chrono::DateTime<chrono::Utc>>()
        .unwrap();
    assert!(
        before - chrono::TimeDelta::milliseconds(1) <= time && time <= after,
        "{latest}"
    );
    let (_, latest) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/devices/{IMEI}/latest"),
    )
    .await;
    assert_eq!(
        latest["values"][0]["time"], "2023-11-14T22:13:20Z",
        "{latest}"
    );
}

/// A device without `bt` sends the same bytes whenever a reading repeats: the same token is
/// a retry only within the retry window, after that a new reading.
#[tokio::test]
async fn the_same_bytes_after_the_retry_window_are_a_new_reading() {
    let env = Env::new().await;
    let (server, base) = start(&env, &[]).await;
    let client = client();
    let m2m = format!("{base}{M2M}");
    let body = format!(r#"[{{"bn":"{IMEI}","n":"door","vs":"closed"}}]"#).into_bytes();
    assert_eq!(
        uplink(&client, &m2m, DEVICE_SECRET, &body).await.status(),
        202
    );
    assert_eq!(
        uplink(&client, &m2m, DEVICE_SECRET, &body).await.status(),
        202
    );
    assert_eq!(message_count(&env).await, 1, "a retry within the window");

    // An hour later (the window is 15 minutes), as the database sees it.
    let mut db = connect(&env.database_url).await;
    sqlx::query("UPDATE device_uplinks SET received_at = received_at - interval '1 hour'")
        .execute(&mut db)
        .await
        .unwrap();
    let key = env.api_key("ops", "downlink");
    let (status, _) = queue(&client, &server, &key, IMEI, json!({"payload_hex": "01"})).await;
    assert_eq!(status, 202);
    let response = uplink(&client, &m2m, DEVICE_SECRET, &body).await;
    assert_eq!(
        response.status(),
        200,
        "a new reading, answered with the new downlink"
    );
    assert_eq!(message_count(&env).await, 2);
    // Its own retry now gets that downlink again.
    let response = uplink(&client, &m2m, DEVICE_SECRET, &body).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!([{"bn": IMEI}, {"n": "payloadHex", "vs": "01"}])
    );
    assert_eq!(message_count(&env).await, 2);
}

#[tokio::test]
async fn concurrent_uplinks_of_one_device_take_different_downlinks() {
    let env = Env::new().await;
    let (server, base) = start(&env, &[]).await;
    let client = client();
    let m2m = format!("{base}{M2M}");
    let key = env.api_key("ops", "downlink");
    for hex in ["01", "02", "03", "04"] {
        let (status, _) = queue(&client, &server, &key, IMEI, json!({"payload_hex": hex})).await;
        assert_eq!(status, 202);
    }
    let sends = (0..4).map(|n| {
        let (client, url) = (client.clone(), m2m.clone());
        async move {
            let response = uplink(&client, &url, DEVICE_SECRET, &pack(IMEI, n)).await;
            assert_eq!(response.status(), 200);
            response.json::<Value>().await.unwrap()[1]["vs"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    });
    let mut carried = futures_util::future::join_all(sends).await;
    carried.sort();
    assert_eq!(carried, ["01", "02", "03", "04"], "each downlink once");
}

/// An uplink whose commit outlasts `--spool-after` is answered from the spool, without a
/// downlink. When that commit lands after all, the downlink it marked delivered goes back to
/// the queue and rides on the next answer.
#[tokio::test]
async fn a_downlink_taken_by_a_commit_that_outlasted_the_answer_is_queued_again() {
    let env = Env::new().await;
    let (server, base) = start(&env, &["--spool-after", "300ms"]).await;
    let client = client();
    let m2m = format!("{base}{M2M}");
    let key = env.api_key("ops", "downlink");
    let (_, queued) = queue(&client, &server, &key, IMEI, json!({"payload_hex": "5a"})).await;
    let id = queued["id"].as_str().unwrap().to_owned();

    // Hold the writer up inside its transaction, past --spool-after.
    let mut blocker = connect(&env.database_url).await;
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE device_uplinks IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let response = uplink(&client, &m2m, DEVICE_SECRET, &pack(IMEI, 1)).await;
    assert_eq!(response.status(), 202, "spooled");
    assert!(response.bytes().await.unwrap().is_empty());
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();

    // The late commit stores the uplink; the replay finds it and queues the downlink again.
    wait_ready(&client, &server, |j| j["spool"]["deliveries"] == 0).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = downlink(&client, &server, &key, &id).await;
        if shown["status"] == "queued" {
            break;
        }
        assert!(Instant::now() < deadline, "never queued again: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(message_count(&env).await, 1, "stored once");
    let response = uplink(&client, &m2m, DEVICE_SECRET, &pack(IMEI, 2)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!([{"bn": IMEI}, {"n": "payloadHex", "vs": "5a"}])
    );
}
