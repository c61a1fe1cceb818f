//! Firmware over the air end to end: images, campaigns and every device transition, the
//! url/token notification in uplink answers, and the ranged file server on the plain device
//! listener (raw keep-alive sockets, as a device's SDK downloads) and over TLS.

mod common;

use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use rand::Rng;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use things_receiver::token::Token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IMEI: &str = "urn:dev:IMEI:356938035643809:";
const IMEI2: &str = "urn:dev:IMEI:356938035643817:";
const DEVICE_SECRET: &str = "Device-Secret-For-The-M2M-Door-0123456789";
const M2M: &str = "/ingestion/m2m/senml/v1";
const IP: &str = "/ingestion/ip/senml/v1";

fn image(size: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; size];
    rand::rng().fill(&mut bytes[..]);
    bytes
}

fn write_image(env: &Env, bytes: &[u8]) -> String {
    let path = env
        .data_dir
        .path()
        .join(format!("fw-{}.bin", uuid::Uuid::new_v4()));
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

/// An uplink pack reporting `version` (and a temperature, so each pack is new).
fn pack(urn: &str, version: &str, n: u32) -> Vec<u8> {
    format!(r#"[{{"bn":"{urn}","n":"temperature","u":"Cel","v":{n}}},{{"n":"firmware","vs":"{version}"}}]"#)
        .into_bytes()
}

async fn uplink(client: &reqwest::Client, url: &str, body: &[u8]) -> (u16, String) {
    let response = client
        .post(url)
        .header(
            "Things-Message-Token",
            Token::sign(body, DEVICE_SECRET.as_bytes()).to_hex(),
        )
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// The url and token of a notification pack, checked to be exactly KPN's shape.
fn url_and_token(urn: &str, answer: &str) -> (String, String) {
    let pack: Value = serde_json::from_str(answer).unwrap_or_else(|_| panic!("{answer}"));
    let records = pack.as_array().unwrap();
    assert_eq!(records.len(), 3, "{answer}");
    assert_eq!(records[0], json!({"bn": urn}), "{answer}");
    assert_eq!(records[1]["n"], "url", "{answer}");
    assert_eq!(records[2]["n"], "token", "{answer}");
    assert_eq!(records[1].as_object().unwrap().len(), 2, "{answer}");
    assert_eq!(records[2].as_object().unwrap().len(), 2, "{answer}");
    (
        records[1]["vs"].as_str().unwrap().to_owned(),
        records[2]["vs"].as_str().unwrap().to_owned(),
    )
}

/// A free loopback port for a listener whose address must be known before it starts (the
/// base URL names it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn campaign_status(env: &Env, id: &str) -> Value {
    serde_json::from_str(&env.cli_ok(&["fota", "status", id, "--json"])).unwrap()
}

fn device_state<'a>(campaign: &'a Value, urn: &str) -> &'a Value {
    campaign["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["urn"] == urn)
        .unwrap_or_else(|| panic!("{urn} not in {campaign}"))
}

/// Polls the campaign until `urn` is in `state`; fails after 15 s.
fn wait_state(env: &Env, id: &str, urn: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let campaign = campaign_status(env, id);
        if device_state(&campaign, urn)["state"] == state {
            return campaign;
        }
        assert!(
            Instant::now() < deadline,
            "{urn} never became {state}: {campaign}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_campaign(env: &Env, version: &str, devices: &[&str], base: &str) -> String {
    let mut args = vec![
        "fota",
        "start",
        "--firmware",
        version,
        "--fota-base-url",
        base,
        "--json",
    ];
    for d in devices {
        args.extend(["--device", d]);
    }
    let out: Value = serde_json::from_str(&env.cli_ok(&args)).unwrap();
    out["id"].as_str().unwrap().to_owned()
}

/// One answer read off a raw HTTP/1.1 connection: status, lower-case headers, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one GET on `stream` and reads its answer (Content-Length framed).
async fn raw_get(stream: &mut TcpStream, path: &str, token: &str, range: Option<&str>) -> Answer {
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: device\r\nAuthorization: Bearer {token}\r\n");
    if let Some(range) = range {
        request.push_str(&format!("Range: {range}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = common::raw_tls::read_head(stream, Duration::from_secs(10)).await;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// Whether the server closed `stream` (a read finds its end) within a few seconds.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Downloads `from..to` of the image at `path` in `part`-byte parts, as KPN's SDK does: one
/// keep-alive connection until the server answers `Connection: close`, then a new one. Checks
/// each part's status, Content-Range and CRC-32; returns the bytes and the connections used.
async fn download_parts(
    addr: &str,
    path: &str,
    token: &str,
    total: usize,
    from: usize,
    to: usize,
    part: usize,
) -> (Vec<u8>, usize) {
    let mut bytes = Vec::new();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut connections = 1;
    let mut on_connection = 0;
    let mut first = from;
    while first < to {
        let last = (first + part - 1).min(to - 1);
        let answer = raw_get(
            &mut stream,
            path,
            token,
            Some(&format!("bytes={first}-{last}")),
        )
        .await;
        on_connection += 1;
        assert_eq!(answer.status, 206, "part at {first}");
        assert_eq!(
            answer.header("content-range"),
            Some(format!("bytes {first}-{last}/{total}").as_str())
        );
        assert_eq!(
            answer.header("digest"),
            Some(format!("crc32={:08x}", crc32fast::hash(&answer.body)).as_str())
        );
        assert_eq!(answer.body.len(), last - first + 1);
        bytes.extend_from_slice(&answer.body);
        first = last + 1;
        if answer.header("connection") == Some("close") {
            assert_eq!(on_connection, 100, "closed after {on_connection} requests");
            assert!(closed_by_server(&mut stream).await);
            if first < to {
                stream = TcpStream::connect(addr).await.unwrap();
                connections += 1;
                on_connection = 0;
            }
        } else {
            assert!(
                on_connection < 100,
                "no Connection: close on the 100th answer"
            );
        }
    }
    (bytes, connections)
}

/// Starts `serve` with a plain device listener on a known port, FOTA's base URL naming it.
fn serve_with_device_listener(env: &Env, extra: &[&str]) -> (Server, String) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let base = format!("http://{listen}");
    let mut flags = vec![
        "--device-listen",
        listen.as_str(),
        "--fota-base-url",
        base.as_str(),
    ];
    flags.extend_from_slice(extra);
    (env.serve(&flags), listen)
}

#[tokio::test]
async fn a_whole_update_over_the_plain_device_listener() {
    let env = Env::new().await;
    env.cli_ok(&["devices", "add", IMEI, "--secret", DEVICE_SECRET]);
    let firmware = image(60_000);
    let sha = hex::encode(Sha256::digest(&firmware));
    let file = write_image(&env, &firmware);
    // --sha256 refuses a file whose hash differs.
    let wrong = env.cli(&[
        "firmware",
        "add",
        &file,
        "--version",
        "2.0.0",
        "--sha256",
        &"0".repeat(64),
    ]);
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("SHA-256"));
    env.cli_ok(&[
        "firmware",
        "add",
        &file,
        "--version",
        "2.0.0",
        "--sha256",
        &sha,
    ]);
    // Without a base URL no campaign starts, and the refusal says why.
    let refused = env.cli(&["fota", "start", "--firmware", "2.0.0", "--device", IMEI]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--fota-base-url"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    let (server, listen) = serve_with_device_listener(&env, &[]);
    let base = format!("http://{listen}");
    let campaign = start_campaign(&env, "2.0.0", &[IMEI], &base);
    assert_eq!(
        device_state(&campaign_status(&env, &campaign), IMEI)["state"],
        "pending"
    );

    // An ordinary downlink queued before: the notification rides ahead of it.
    let key = env.api_key("ops", "downlink");
    let client = client();
    let queued = client
        .post(server.url(&format!("/api/v1/devices/{IMEI}/downlinks")))
        .bearer_auth(&key)
        .json(&json!({"records": [{"n": "led", "vb": true}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 202);

    let m2m = format!("{base}{M2M}");
    let body = pack(IMEI, "1.0.0", 1);
    let response = client
        .post(&m2m)
        .header(
            "Things-Message-Token",
            Token::sign(&body, DEVICE_SECRET.as_bytes()).to_hex(),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["things-downlinks-pending"],
        "1",
        "the downlink still waits"
    );
    let answer = response.text().await.unwrap();
    let (url, token) = url_and_token(IMEI, &answer);
    assert!(url.starts_with(&format!("{base}/f/v1/")), "{url}");
    // A retry of that uplink gets the same pack.
    assert_eq!(uplink(&client, &m2m, &body).await, (200, answer.clone()));
    let notified = wait_state(&env, &campaign, IMEI, "notified");
    assert!(device_state(&notified, IMEI)["transitions"]["notified"].is_string());
    // The next uplink carries the ordinary downlink: one pack per answer.
    let (status, next) = uplink(&client, &m2m, &pack(IMEI, "1.0.0", 2)).await;
    assert_eq!(status, 200);
    assert!(next.contains("led"), "{next}");

    // Download in 256-byte parts, 100 per connection, as KPN's SDK does.
    let path = url.trim_start_matches(&base).to_owned();
    let (half, _) = download_parts(&listen, &path, &token, firmware.len(), 0, 20_000, 256).await;
    wait_state(&env, &campaign, IMEI, "downloading");
    let (rest, connections) = download_parts(
        &listen,
        &path,
        &token,
        firmware.len(),
        20_000,
        firmware.len(),
        256,
    )
    .await;
    assert!(connections >= 2, "{connections}");
    let assembled = [half, rest].concat();
    assert_eq!(hex::encode(Sha256::digest(&assembled)), sha);
    let downloaded = wait_state(&env, &campaign, IMEI, "downloaded");
    let device = device_state(&downloaded, IMEI);
    assert_eq!(device["bytes_served"], 60_000);
    // 20,000 bytes in 79 parts, then 40,000 in 157.
    assert_eq!(
        device["parts"],
        20_000usize.div_ceil(256) + 40_000usize.div_ceil(256)
    );
    assert!(device["last_part_at"].is_string());

    // The device reports the new version in an ordinary uplink.
    let (status, _) = uplink(&client, &m2m, &pack(IMEI, "2.0.0", 3)).await;
    assert_eq!(status, 202);
    let updated = wait_state(&env, &campaign, IMEI, "updated");
    let device = device_state(&updated, IMEI);
    assert_eq!(device["reported_version"], "2.0.0");
    for state in [
        "pending",
        "notified",
        "downloading",
        "downloaded",
        "updated",
    ] {
        assert!(device["transitions"][state].is_string(), "{device}");
    }
    assert_eq!(updated["finished"], true);
    assert_eq!(updated["counts"]["updated"], 1);
    // A finished campaign no longer holds its image.
    env.cli_ok(&["firmware", "remove", "2.0.0"]);

    // Every part is counted, and every byte served.
    let reader = env.api_key("metrics", "read");
    let metrics = client
        .get(server.url("/metrics"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    };
    assert_eq!(value("things_fota_answers_total{status=\"206\"}"), 236.0);
    assert_eq!(value("things_fota_bytes_total"), 60_000.0);
    drop(server);
}

/// A server on TLS with one notified device: returns the server, the download path and token.
async fn notified_device(
    env: &Env,
    firmware: &[u8],
    extra: &[&str],
) -> (Server, String, String, String) {
    env.cli_ok(&["devices", "add", IMEI, "--secret", DEVICE_SECRET]);
    let file = write_image(env, firmware);
    env.cli_ok(&["firmware", "add", &file, "--version", "3.1.0"]);
    let mut flags = vec!["--fota-base-url", "https://fota.example.org/"];
    flags.extend_from_slice(extra);
    let server = env.serve_in_process(&flags).await;
    let campaign = start_campaign(env, "3.1.0", &[IMEI], "https://fota.example.org/");
    let (status, answer) = uplink(&client(), &server.url(IP), &pack(IMEI, "3.0.0", 1)).await;
    assert_eq!(status, 200, "{answer}");
    let (url, token) = url_and_token(IMEI, &answer);
    let path = url
        .strip_prefix("https://fota.example.org")
        .unwrap_or_else(|| panic!("{url}"))
        .to_owned();
    assert!(path.starts_with("/f/v1/"), "{path}");
    (server, path, token, campaign)
}

async fn get(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client.get(server.url(path)).bearer_auth(token);
    for (n, v) in headers {
        request = request.header(*n, *v);
    }
    request.send().await.unwrap()
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn ranges_digests_and_tokens_over_tls() {
    let env = Env::new().await;
    let total = 5_000usize;
    let firmware = image(total);
    let (server, path, token, _) = notified_device(&env, &firmware, &[]).await;
    let client = client();
    let sha = Sha256::digest(&firmware);
    let etag = format!("\"{}\"", hex::encode(sha));
    let repr = format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha)
    );

    let check_common = |r: &reqwest::Response, length: usize| {
        assert_eq!(header(r, "accept-ranges"), Some("bytes"));
        assert_eq!(header(r, "etag"), Some(etag.as_str()));
        assert_eq!(header(r, "repr-digest"), Some(repr.as_str()));
        assert_eq!(header(r, "content-type"), Some("application/octet-stream"));
        assert_eq!(
            header(r, "content-length"),
            Some(length.to_string().as_str())
        );
    };

    // No Range: the whole file, its CRC, no Content-Range.
    let whole = get(&client, &server, &path, &token, &[]).await;
    assert_eq!(whole.status(), 200);
    check_common(&whole, total);
    assert!(whole.headers().get("content-range").is_none());
    let crc = format!("crc32={:08x}", crc32fast::hash(&firmware));
    assert_eq!(header(&whole, "digest"), Some(crc.as_str()));
    assert_eq!(whole.bytes().await.unwrap(), firmware);

    // Every edge of the range arithmetic.
    let last = total - 1;
    for (range, first, end) in [
        ("bytes=0-0".to_string(), 0, 0),
        (format!("bytes={last}-{last}"), last, last),
        ("bytes=0-99".into(), 0, 99),
        (format!("bytes=4900-{}", total + 1000), 4900, last),
        ("bytes=4000-".into(), 4000, last),
        ("bytes=-1".into(), last, last),
        ("bytes=-300".into(), total - 300, last),
        ("bytes=-99999".into(), 0, last),
    ] {
        let r = get(&client, &server, &path, &token, &[("range", &range)]).await;
        assert_eq!(r.status(), 206, "{range}");
        check_common(&r, end - first + 1);
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes {first}-{end}/{total}").as_str()),
            "{range}"
        );
        let body = r.bytes().await.unwrap();
        assert_eq!(&body[..], &firmware[first..=end], "{range}");
    }
    // Random parts: the Digest is zlib's CRC-32 of exactly the body.
    for _ in 0..50 {
        let a = rand::rng().random_range(0..total);
        let b = rand::rng().random_range(a..total + 100);
        let r = get(
            &client,
            &server,
            &path,
            &token,
            &[("range", &format!("bytes={a}-{b}"))],
        )
        .await;
        assert_eq!(r.status(), 206);
        let digest = header(&r, "digest").unwrap().to_owned();
        let body = r.bytes().await.unwrap();
        assert_eq!(digest, format!("crc32={:08x}", crc32fast::hash(&body)));
        assert_eq!(&body[..], &firmware[a..=b.min(total - 1)]);
    }
    // A start past the end: 416 with the total.
    for range in [
        format!("bytes={total}-"),
        format!("bytes={}-{}", total + 5, total + 9),
        "bytes=-0".into(),
    ] {
        let r = get(&client, &server, &path, &token, &[("range", &range)]).await;
        assert_eq!(r.status(), 416, "{range}");
        assert_eq!(
            header(&r, "content-range"),
            Some(format!("bytes */{total}").as_str())
        );
    }
    // Several ranges, another unit, a malformed one: the whole file.
    for range in ["bytes=0-1,10-20", "pages=1-2", "bytes=9-3", "bytes=x-"] {
        let r = get(&client, &server, &path, &token, &[("range", range)]).await;
        assert_eq!(r.status(), 200, "{range}");
        assert!(r.headers().get("content-range").is_none());
        assert_eq!(r.bytes().await.unwrap().len(), total);
    }
    // If-Range: the strong ETag keeps the range; anything else gets the whole file.
    let r = get(
        &client,
        &server,
        &path,
        &token,
        &[("range", "bytes=0-9"), ("if-range", &etag)],
    )
    .await;
    assert_eq!(r.status(), 206);
    let r = get(
        &client,
        &server,
        &path,
        &token,
        &[("range", "bytes=0-9"), ("if-range", "\"other\"")],
    )
    .await;
    assert_eq!(r.status(), 200);
    // HEAD: the whole image's headers, no body; a Range is ignored (defined for GET only).
    let r = client
        .head(server.url(&path))
        .bearer_auth(&token)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    check_common(&r, total);
    assert!(header(&r, "content-range").is_none());
    assert_eq!(
        header(&r, "digest"),
        Some(format!("crc32={:08x}", crc32fast::hash(&firmware)).as_str())
    );

    // Tokens: missing or wrong 401 (with a challenge), another download's uuid 404.
    let none = client.get(server.url(&path)).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(header(&none, "www-authenticate"), Some("Bearer"));
    let mut wrong = token.clone();
    wrong.replace_range(0..1, if wrong.starts_with('A') { "B" } else { "A" });
    assert_eq!(
        get(&client, &server, &path, &wrong, &[]).await.status(),
        401
    );
    let other = format!("/f/v1/{}", uuid::Uuid::new_v4());
    assert_eq!(
        get(&client, &server, &other, &token, &[]).await.status(),
        404
    );
    assert_eq!(
        get(&client, &server, "/f/v1/not-a-uuid", &token, &[])
            .await
            .status(),
        404
    );

    // Past 19,999 parts: 429 with a reason.
    let mut db = connect(&env.database_url).await;
    sqlx::query("UPDATE fota_targets SET parts = 19998")
        .execute(&mut db)
        .await
        .unwrap();
    // Parts served above may still be waiting for their batched write.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let parts: i32 = sqlx::query_scalar("SELECT parts FROM fota_targets")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let r = get(&client, &server, &path, &token, &[("range", "bytes=0-0")]).await;
        if r.status() == 429 {
            assert!(parts >= 19_998, "{parts}");
            assert!(r.text().await.unwrap().contains("19999"));
            break;
        }
        assert_eq!(r.status(), 206);
        assert!(Instant::now() < deadline, "never refused past 19,999 parts");
    }
}

#[tokio::test]
async fn files_and_campaigns_through_the_api() {
    let env = Env::new().await;
    env.cli_ok(&["devices", "add", IMEI, "--secret", DEVICE_SECRET]);
    let server = env
        .serve_in_process(&[
            "--max-firmware",
            "4KiB",
            "--fota-base-url",
            "http://10.0.0.5:8080",
        ])
        .await;
    let client = client();
    let admin = env.api_key("admin", "admin");
    let reader = env.api_key("reader", "read");
    let upload = |key: &str, version: &str, body: Vec<u8>| {
        client
            .post(server.url(&format!("/api/v1/firmware?version={version}&name=main")))
            .bearer_auth(key)
            .body(body)
            .send()
    };
    let firmware = image(4096);
    assert_eq!(
        upload(&reader, "1.0.0", firmware.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    let (status, added) =
        status_json(upload(&admin, "1.0.0", firmware.clone()).await.unwrap()).await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["size"], 4096);
    assert_eq!(added["sha256"], hex::encode(Sha256::digest(&firmware)));
    assert_eq!(
        added["crc32"],
        format!("{:08x}", crc32fast::hash(&firmware))
    );
    assert_eq!(
        upload(&admin, "1.0.0", firmware.clone())
            .await
            .unwrap()
            .status(),
        409
    );
    assert_eq!(
        upload(&admin, "1.0.1", image(4097)).await.unwrap().status(),
        413
    );
    assert_eq!(
        upload(&admin, "1.0.2", Vec::new()).await.unwrap().status(),
        422
    );
    let (_, list) = api_get(&client, &server, &admin, "/api/v1/firmware").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    let start = |body: Value| {
        client
            .post(server.url("/api/v1/campaigns"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let (status, _) = status_json(
        start(json!({"firmware": "1.0.0", "devices": [IMEI2]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = status_json(
        start(json!({"firmware": "9.9.9", "devices": [IMEI]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, campaign) = status_json(
        start(json!({"firmware": "1.0.0", "devices": [IMEI], "name": "spring"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{campaign}");
    assert_eq!(campaign["counts"]["pending"], 1);
    let (status, busy) = status_json(
        start(json!({"firmware": "1.0.0", "devices": [IMEI]}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 409, "{busy}");
    // In use by an unfinished campaign: not removable.
    let remove = || {
        client
            .delete(server.url("/api/v1/firmware/1.0.0"))
            .bearer_auth(&admin)
            .send()
    };
    assert_eq!(remove().await.unwrap().status(), 409);
    let id = campaign["id"].as_str().unwrap();
    let (status, shown) =
        api_get(&client, &server, &admin, &format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(shown["devices"][0]["urn"], IMEI);
    let (_, all) = api_get(&client, &server, &admin, "/api/v1/campaigns").await;
    assert_eq!(all[0]["counts"]["pending"], 1, "{all}");
    let cancelled = client
        .post(server.url(&format!("/api/v1/campaigns/{id}/cancel")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    let (status, cancelled) = status_json(cancelled).await;
    assert_eq!(status, 200);
    assert_eq!(cancelled["counts"]["cancelled"], 1);
    assert_eq!(cancelled["finished"], true);
    assert_eq!(remove().await.unwrap().status(), 204);
    assert_eq!(remove().await.unwrap().status(), 404);

    // A server without --fota-base-url refuses campaigns and says why.
    drop(server);
    let server = env.serve_in_process(&[]).await;
    upload_ok(&client, &server, &admin, "1.1.0").await;
    let r = client
        .post(server.url("/api/v1/campaigns"))
        .bearer_auth(&admin)
        .json(&json!({"firmware": "1.1.0", "devices": [IMEI]}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(r).await;
    assert_eq!(status, 503);
    assert!(
        body["detail"].as_str().unwrap().contains("--fota-base-url"),
        "{body}"
    );
}

async fn upload_ok(client: &reqwest::Client, server: &Server, key: &str, version: &str) {
    let r = client
        .post(server.url(&format!("/api/v1/firmware?version={version}")))
        .bearer_auth(key)
        .body(image(1000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn cancel_timeout_and_a_wrong_version() {
    let env = Env::new().await;
    let firmware = image(1000);
    let (server, path, token, campaign) =
        notified_device(&env, &firmware, &["--fota-timeout", "3s"]).await;
    env.cli_ok(&["devices", "add", IMEI2, "--secret", DEVICE_SECRET]);
    let client = client();
    // Downloaded, then it reports another version: failed.
    assert_eq!(
        get(&client, &server, &path, &token, &[]).await.status(),
        200
    );
    wait_state(&env, &campaign, IMEI, "downloaded");
    let (status, _) = uplink(&client, &server.url(IP), &pack(IMEI, "3.0.0", 2)).await;
    assert_eq!(status, 202);
    let failed = wait_state(&env, &campaign, IMEI, "failed");
    assert!(
        device_state(&failed, IMEI)["failure"]
            .as_str()
            .unwrap()
            .contains("3.0.0"),
        "{failed}"
    );

    // A silent device fails after --fota-timeout.
    let silent = start_campaign(&env, "3.1.0", &[IMEI2], "http://fota.example.org");
    let timed_out = wait_state(&env, &silent, IMEI2, "failed");
    assert!(
        device_state(&timed_out, IMEI2)["failure"]
            .as_str()
            .unwrap()
            .contains("no progress")
    );

    // Cancel: a notified device's link answers 410 at once; a pending one is never told.
    let both = start_campaign(&env, "3.1.0", &[IMEI, IMEI2], "http://fota.example.org");
    let (status, answer) = uplink(&client, &server.url(IP), &pack(IMEI, "3.0.0", 3)).await;
    assert_eq!(status, 200);
    let (url, token) = url_and_token(IMEI, &answer);
    let path = url.trim_start_matches("http://fota.example.org").to_owned();
    assert_eq!(
        get(&client, &server, &path, &token, &[("range", "bytes=0-9")])
            .await
            .status(),
        206
    );
    env.cli_ok(&["fota", "cancel", &both]);
    // The server caches the download it just served for 2 s; the cancellation reaches it by
    // notification well before that.
    let cancelled_at = Instant::now();
    loop {
        let status = get(&client, &server, &path, &token, &[]).await.status();
        if status == 410 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            cancelled_at.elapsed() < Duration::from_millis(1000),
            "still served after the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A wrong token is still a 401, cancelled or not.
    assert_eq!(
        get(&client, &server, &path, "nope", &[]).await.status(),
        401
    );
    let (status, answer) = uplink(&client, &server.url(IP), &pack(IMEI2, "3.0.0", 4)).await;
    assert_eq!((status, answer.as_str()), (202, ""));
    let cancelled = campaign_status(&env, &both);
    assert_eq!(cancelled["counts"]["cancelled"], 2, "{cancelled}");
    assert!(device_state(&cancelled, IMEI2)["transitions"]["notified"].is_null());
    // A device that already runs the desired version is updated at once.
    let current = start_campaign(&env, "3.1.0", &[IMEI2], "http://fota.example.org");
    let (status, _) = uplink(&client, &server.url(IP), &pack(IMEI2, "3.1.0", 5)).await;
    assert_eq!(status, 202);
    wait_state(&env, &current, IMEI2, "updated");
    env.cli_ok(&["fota", "cancel", &current]);
    let again = start_campaign(&env, "3.1.0", &[IMEI2], "http://fota.example.org");
    assert_eq!(
        device_state(&campaign_status(&env, &again), IMEI2)["state"],
        "updated"
    );
}

/// A second `serve` process on the same database, with its own data directory holding the
/// same secret key (so it derives the same tokens) and its own spool.
fn second_replica(env: &Env, listen: &str, base: &str) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        env.data_dir.path().join("secret.key"),
        dir.path().join("secret.key"),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("THINGS_LOG", "info,sqlx=warn")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--database-url")
        .arg(&env.database_url)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--device-listen",
            listen,
            "--fota-base-url",
            base,
        ]);
    (Server::start(cmd), dir)
}

#[tokio::test]
async fn a_restart_mid_download_and_two_replicas_serving_one_campaign() {
    let env = Env::new().await;
    env.cli_ok(&["devices", "add", IMEI, "--secret", DEVICE_SECRET]);
    let firmware = image(30_000);
    let file = write_image(&env, &firmware);
    env.cli_ok(&["firmware", "add", &file, "--version", "4.0.0"]);
    let (server, listen) = serve_with_device_listener(&env, &[]);
    let base = format!("http://{listen}");
    let campaign = start_campaign(&env, "4.0.0", &[IMEI], &base);
    let client = client();
    let (status, answer) = uplink(&client, &format!("{base}{M2M}"), &pack(IMEI, "3.0.0", 1)).await;
    assert_eq!(status, 200);
    let (url, token) = url_and_token(IMEI, &answer);
    let path = url.trim_start_matches(&base).to_owned();
    let total = firmware.len();

    // A third from the first process, which then stops: its progress is written on the way.
    let (a, _) = download_parts(&listen, &path, &token, total, 0, 10_000, 512).await;
    assert!(server.stop().await.success());
    let stopped = campaign_status(&env, &campaign);
    let device = device_state(&stopped, IMEI);
    assert_eq!(device["state"], "downloading", "{stopped}");
    assert_eq!(device["bytes_served"], 10_000);

    // Restarted on the same port, and a second replica beside it.
    let (restarted, _) = {
        let flags = [
            "--device-listen",
            listen.as_str(),
            "--fota-base-url",
            base.as_str(),
        ];
        (env.serve(&flags), ())
    };
    let other_listen = format!("127.0.0.1:{}", free_port());
    let (replica, _dir) = second_replica(&env, &other_listen, &format!("http://{other_listen}"));
    let (b, _) = download_parts(&other_listen, &path, &token, total, 10_000, 20_000, 512).await;
    let (c, _) = download_parts(&listen, &path, &token, total, 20_000, total, 512).await;
    assert_eq!([a, b, c].concat(), firmware);
    let downloaded = wait_state(&env, &campaign, IMEI, "downloaded");
    assert_eq!(device_state(&downloaded, IMEI)["bytes_served"], total);
    // The report reaches whichever replica the device posts to.
    let (status, _) = uplink(
        &client,
        &format!("http://{other_listen}{M2M}"),
        &pack(IMEI, "4.0.0", 2),
    )
    .await;
    assert_eq!(status, 202);
    wait_state(&env, &campaign, IMEI, "updated");
    drop(replica);
    drop(restarted);
}

/// An uplink whose commit outlasts `--spool-after` is answered from the spool, without the
/// notification; when that commit lands after all, the target it marked notified is pending
/// again, so the next uplink carries the pack.
#[tokio::test]
async fn a_notification_taken_by_a_commit_that_outlasted_the_answer_is_sent_again() {
    let env = Env::new().await;
    env.cli_ok(&["devices", "add", IMEI, "--secret", DEVICE_SECRET]);
    let file = write_image(&env, &image(4096));
    env.cli_ok(&["firmware", "add", &file, "--version", "3.1.0"]);
    let base = "https://fota.example.org/";
    let server = env
        .serve_in_process(&["--fota-base-url", base, "--spool-after", "300ms"])
        .await;
    let campaign = start_campaign(&env, "3.1.0", &[IMEI], base);
    let client = client();

    // Hold the writer up inside its transaction, past --spool-after.
    let mut blocker = connect(&env.database_url).await;
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE device_uplinks IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let (status, answer) = uplink(&client, &server.url(IP), &pack(IMEI, "3.0.0", 1)).await;
    assert_eq!((status, answer.as_str()), (202, ""), "spooled");
    sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();

    // The late commit or the replay stores the uplink once; the target ends pending.
    wait_ready(&client, &server, |j| j["spool"]["deliveries"] == 0).await;
    let mut db = connect(&env.database_url).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let state = campaign_status(&env, &campaign);
        if stored == 1 && device_state(&state, IMEI)["state"] == "pending" {
            break;
        }
        assert!(Instant::now() < deadline, "{stored} stored: {state}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, answer) = uplink(&client, &server.url(IP), &pack(IMEI, "3.0.0", 2)).await;
    assert_eq!(status, 200, "{answer}");
    let (url, _) = url_and_token(IMEI, &answer);
    assert!(url.starts_with("https://fota.example.org/f/v1/"), "{url}");
}
