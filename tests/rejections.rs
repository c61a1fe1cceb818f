//! Refusals recorded at the doors (answers unchanged), their persistence under the rate and
//! size caps, the diagnosis of each cause, and replay after a fix; in-process server, real
//! PostgreSQL, real HTTPS.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use things_receiver::token::Token;

const M2M: &str = "/ingestion/m2m/senml/v1";
const IMEI: &str = "urn:dev:IMEI:351234567890123:";
const DEVICE_SECRET: &str = "device-secret-0123456789abcdefghijklmnop";
const OTHER_SECRET: &str = "Other#Secret-0123456789abcdefghijklmn";

fn body(n: u32) -> Vec<u8> {
    format!(r#"[{{"bn":"urn:dev:DEVEUI:00000000000000AA:","n":"c","v":{n}}}]"#).into_bytes()
}

fn device_pack(urn: &str, n: u32) -> Vec<u8> {
    format!(r#"[{{"bn":"{urn}","n":"temperature","u":"Cel","v":{n}}}]"#).into_bytes()
}

async fn uplink(
    client: &reqwest::Client,
    server: &Server,
    secret: &str,
    body: &[u8],
) -> reqwest::Response {
    client
        .post(server.url(M2M))
        .header(
            "Things-Message-Token",
            Token::sign(body, secret.as_bytes()).to_hex(),
        )
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// The rejections list (newest first) once it holds at least `n` items; fails after 10 s.
async fn rejections(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    query: &str,
    n: usize,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) =
            api_get(client, server, key, &format!("/api/v1/rejections?{query}")).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap().clone();
        if items.len() >= n {
            return items;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} rejections",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn detail(client: &reqwest::Client, server: &Server, key: &str, id: &str) -> Value {
    let (status, json) = api_get(client, server, key, &format!("/api/v1/rejections/{id}")).await;
    assert_eq!(status, 200, "{json}");
    json
}

/// The diagnosis of the newest rejection.
async fn newest_diagnosis(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    seen: &mut usize,
) -> Value {
    *seen += 1;
    let items = rejections(client, server, key, "limit=1000", *seen).await;
    let id = items[0]["id"].as_str().unwrap().to_owned();
    detail(client, server, key, &id).await["diagnosis"].clone()
}

async fn replay(client: &reqwest::Client, server: &Server, key: &str, id: &str) -> (u16, Value) {
    let response = client
        .post(server.url(&format!("/api/v1/rejections/{id}/replay")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    status_json(response).await
}

/// Polls the database until `sql` (a count) satisfies `check`; fails after 15 s.
async fn db_count(url: &str, sql: &str, check: impl Fn(i64) -> bool) -> i64 {
    let mut db = connect(url).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut db)
            .await
            .unwrap();
        if check(n) {
            return n;
        }
        assert!(Instant::now() < deadline, "{sql}: {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_refusal_class_is_recorded_with_the_answer_unchanged() {
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    env.cli_ok(&["devices", "add", IMEI, "--secret", DEVICE_SECRET]);
    let admin = env.api_key("ops", "admin");
    let server = env.serve_in_process(&["--max-body", "1KiB"]).await;
    let client = client();
    let b = body(1);
    let token = Token::sign(&b, SECRET.as_bytes()).to_hex();

    // The destination door: 413 from the head, 400 for each header, 401.
    let big = vec![b' '; 2048];
    let r = deliver_with(&client, &server, plug, &token, &big, &[]).await;
    assert_eq!(status_json(r).await.1["error"], "payload_too_large");
    let r = client
        .post(server.url("/ingest/kpn"))
        .header("Things-Message-Token", &token)
        .body(b.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(status_json(r).await.1["error"], "missing_header");
    let r = deliver_with(&client, &server, plug, "zz", &b, &[]).await;
    assert_eq!(
        status_json(r).await,
        (400, status_json_of("malformed_header"))
    );
    let r = deliver(&client, &server, plug, OTHER_SECRET, &b).await;
    assert_eq!(r.status(), 401);
    // The device door: 400 (no device), 404 (not registered), 401 (wrong secret).
    assert_eq!(
        uplink(&client, &server, DEVICE_SECRET, b"{}")
            .await
            .status(),
        400
    );
    let stranger = device_pack("urn:dev:imei:351234567890999:", 1);
    assert_eq!(
        uplink(&client, &server, DEVICE_SECRET, &stranger)
            .await
            .status(),
        404
    );
    let pack = device_pack(IMEI, 1);
    assert_eq!(
        uplink(&client, &server, OTHER_SECRET, &pack).await.status(),
        401
    );
    // Accepted, then its retry: the duplicate is an event but not a rejection.
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &b).await.status(),
        200
    );
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &b).await.status(),
        200
    );

    let items = rejections(&client, &server, &admin, "", 7).await;
    let got: Vec<(String, u64, String)> = items
        .iter()
        .rev()
        .map(|i| {
            (
                i["door"].as_str().unwrap().to_owned(),
                i["status"].as_u64().unwrap(),
                i["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("destination", 413, "payload_too_large"),
        ("destination", 400, "missing_header"),
        ("destination", 400, "malformed_header"),
        ("destination", 401, "not_verified"),
        ("m2m", 400, "bad_pack"),
        ("m2m", 404, "unknown_device"),
        ("m2m", 401, "not_verified"),
    ];
    let want: Vec<(String, u64, String)> = want
        .iter()
        .map(|(d, s, r)| (d.to_string(), *s, r.to_string()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        items[6]["size"], 2048,
        "the declared size of an unread body"
    );
    assert_eq!(items[1]["device"], "urn:dev:imei:351234567890999:");
    assert_eq!(items[3]["plug"], plug.to_string());
    assert_eq!(items[3]["destination"], "acme");
    // Filters.
    let only = rejections(&client, &server, &admin, "door=m2m&reason=not_verified", 1).await;
    assert_eq!(only.len(), 1);
    let by_device = rejections(
        &client,
        &server,
        &admin,
        "device=urn:dev:IMEI:351234567890999:",
        1,
    )
    .await;
    assert_eq!(by_device.len(), 1);
    let by_name = rejections(&client, &server, &admin, "destination=acme", 1).await;
    assert_eq!(by_name.len(), 2, "the refusals that named acme's plug");
    // The duplicate is recorded with the message it repeats, once persisted.
    let url = env.database_url.clone();
    db_count(
        &url,
        "SELECT count(*) FROM door_events e JOIN messages m ON m.id = e.message_id \
         WHERE e.verdict = 'duplicate' AND e.status = 200",
        |n| n == 1,
    )
    .await;
    let mut db = connect(&url).await;
    let (duplicate, message_id): (uuid::Uuid, i64) =
        sqlx::query_as("SELECT id, message_id FROM door_events WHERE verdict = 'duplicate'")
            .fetch_one(&mut db)
            .await
            .unwrap();
    let d = detail(&client, &server, &admin, &duplicate.to_string()).await;
    assert_eq!(
        (&d["message_id"], &d["diagnosis"]["cause"]),
        (&Value::from(message_id), &Value::from("duplicate"))
    );
    // The full record: headers without credentials, the body as received.
    let r = client
        .post(server.url("/ingest/kpn"))
        .header("Things-Plug-UUID", plug.to_string())
        .header("Things-Message-Token", &token)
        .header("Authorization", "Basic c2VjcmV0")
        .header("X-Trace", "t1")
        .body(body(2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let items = rejections(&client, &server, &admin, "", 8).await;
    let d = detail(&client, &server, &admin, items[0]["id"].as_str().unwrap()).await;
    assert_eq!(d["headers"]["x-trace"], "t1");
    assert!(d["headers"].get("authorization").is_none(), "{d}");
    use base64::Engine;
    let kept = base64::engine::general_purpose::STANDARD
        .decode(d["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(kept, body(2));
    assert_eq!(d["body_truncated"], false);
}

fn status_json_of(code: &str) -> Value {
    serde_json::json!({
        "error": code,
        "detail": "malformed header Things-Message-Token: expected 64 hexadecimal characters"
    })
}

#[tokio::test]
async fn unknown_plug_and_wrong_token_answer_identically() {
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let admin = env.api_key("ops", "admin");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let b = body(1);
    let answer = |r: reqwest::Response| async move {
        let status = r.status();
        let mut headers: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(n, _)| !matches!(n.as_str(), "date" | "x-request-id"))
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        headers.sort();
        (status, headers, r.bytes().await.unwrap())
    };
    let wrong = answer(deliver(&client, &server, plug, OTHER_SECRET, &b).await).await;
    let unknown = answer(deliver(&client, &server, uuid::Uuid::new_v4(), SECRET, &b).await).await;
    assert_eq!(wrong, unknown);
    assert_eq!(wrong.0, 401);
    // Both recorded, alike but for the diagnosis an admin asks for.
    let items = rejections(&client, &server, &admin, "", 2).await;
    assert_eq!(items[0]["reason"], items[1]["reason"]);
    assert_eq!(items[0]["detail"], items[1]["detail"]);
}

#[tokio::test]
async fn the_rate_cap_persists_a_few_and_the_ring_shows_the_rest() {
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let admin = env.api_key("ops", "admin");
    let server = env.serve_in_process(&["--rejections-rate", "5"]).await;
    let client = client();
    let started = Instant::now();
    let mut statuses = Vec::new();
    for chunk in (0..500u32).collect::<Vec<_>>().chunks(25) {
        let sends = chunk.iter().map(|n| {
            let (client, server) = (&client, &server);
            async move {
                deliver(client, server, plug, OTHER_SECRET, &body(*n))
                    .await
                    .status()
                    .as_u16()
            }
        });
        statuses.extend(futures_util::future::join_all(sends).await);
    }
    let flood = started.elapsed();
    assert!(statuses.iter().all(|s| *s == 401));
    assert!(flood < Duration::from_secs(20), "the flood took {flood:?}");
    // Everything is listed at once, persisted or not.
    let items = rejections(&client, &server, &admin, "limit=1000", 500).await;
    assert_eq!(items.len(), 500);
    let unpersisted = items.iter().filter(|i| i["persisted"] == false).count();
    assert!(
        items.iter().all(|i| i["destination"] == "acme"),
        "ring entries are named too"
    );
    // At least the burst of one second's worth is persisted.
    db_count(&env.database_url, "SELECT count(*) FROM door_events", |n| {
        n >= 5
    })
    .await;
    // Pages follow the keyset over both sources without repeats.
    let (_, first) = api_get(&client, &server, &admin, "/api/v1/rejections?limit=300").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = api_get(
        &client,
        &server,
        &admin,
        &format!("/api/v1/rejections?limit=300&cursor={cursor}"),
    )
    .await;
    let mut ids: Vec<&str> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second["items"].as_array().unwrap())
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    let total = ids.len();
    ids.sort();
    ids.dedup();
    assert!(total >= 500 && ids.len() == total, "{total} {}", ids.len());
    // What the bucket refused is never written later: a burst of 5, then 5 a second.
    let elapsed = started.elapsed().as_secs_f64();
    let persisted = db_count(
        &env.database_url,
        "SELECT count(*) FROM door_events",
        |_| true,
    )
    .await;
    eprintln!("500 refusals answered in {flood:?}; {persisted} persisted in {elapsed:.1} s");
    let bound = (5.0 * (elapsed + 1.0) + 5.0) as i64;
    assert!(
        persisted <= bound,
        "{persisted} persisted in {elapsed:.1} s"
    );
    assert!(unpersisted as i64 >= 500 - bound, "{unpersisted}");
}

#[tokio::test]
async fn the_size_cap_prunes_the_oldest() {
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let server = env
        .serve_in_process(&["--rejections-max-bytes", "20000"])
        .await;
    let client = client();
    let url = env.database_url.clone();
    for n in 0..15u32 {
        let mut b = body(n);
        b.extend(std::iter::repeat_n(b' ', 3000));
        assert_eq!(
            deliver(&client, &server, plug, OTHER_SECRET, &b)
                .await
                .status(),
            401
        );
    }
    db_count(
        &url,
        // The last one persisted, and the table pruned to the cap.
        "SELECT (EXISTS (SELECT 1 FROM door_events WHERE position('\"v\":14}' in \
             convert_from(substring(body for 80), 'UTF8')) > 0) \
           AND (SELECT sum(stored_bytes) FROM door_events) <= 20000)::int::int8",
        |n| n == 1,
    )
    .await;
    let mut db = connect(&url).await;
    let sizes: Vec<i64> =
        sqlx::query_scalar("SELECT body_size FROM door_events ORDER BY received_at")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert!((3..15).contains(&sizes.len()), "{} rows kept", sizes.len());
    let newest: Vec<u8> =
        sqlx::query_scalar("SELECT body FROM door_events ORDER BY received_at DESC LIMIT 1")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert!(newest.starts_with(&body(14)), "the newest stays");
}

#[tokio::test]
async fn a_persisted_rejection_survives_a_restart() {
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let admin = env.api_key("ops", "admin");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    assert_eq!(
        deliver(&client, &server, plug, OTHER_SECRET, &body(1))
            .await
            .status(),
        401
    );
    let id = rejections(&client, &server, &admin, "", 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Stopping flushes what is queued.
    server.stop().await;
    let server = env.serve_in_process(&[]).await;
    let items = rejections(&client, &server, &admin, "", 1).await;
    assert_eq!(items[0]["id"], id.as_str());
    assert_eq!(items[0]["persisted"], true);
    let d = detail(&client, &server, &admin, &id).await;
    assert_eq!(d["diagnosis"]["cause"], "wrong_secret");
}

#[tokio::test]
async fn each_cause_is_diagnosed() {
    let env = Env::new().await;
    let acme = env.add_destination("acme", &["--require-header", "device-type=dragino"]);
    let globex = uuid::Uuid::new_v4();
    env.cli_ok(&[
        "destinations",
        "add",
        "--name",
        "globex",
        "--plug",
        &globex.to_string(),
        "--secret",
        OTHER_SECRET,
    ]);
    let initech = env.add_destination("initech", &[]);
    env.cli_ok(&["devices", "add", IMEI, "--secret", DEVICE_SECRET]);
    let admin = env.api_key("ops", "admin");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let header = [("device-type", "dragino")];
    let mut seen = 0;
    let send = |plug: uuid::Uuid, secret: &str, signed: &[u8], sent: &[u8], h: &[(&str, &str)]| {
        let token = Token::sign(signed, secret.as_bytes()).to_hex();
        let (client, server) = (&client, &server);
        let (sent, h): (Vec<u8>, Vec<(String, String)>) = (
            sent.to_vec(),
            h.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        );
        async move {
            let h: Vec<(&str, &str)> = h.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            deliver_with(client, server, plug, &token, &sent, &h)
                .await
                .status()
                .as_u16()
        }
    };

    // Another destination's secret: the plug is misaddressed.
    assert_eq!(
        send(acme, OTHER_SECRET, &body(1), &body(1), &header).await,
        401
    );
    let d = newest_diagnosis(&client, &server, &admin, &mut seen).await;
    assert_eq!(
        (&d["cause"], &d["destination"]),
        (
            &Value::from("other_destination_secret"),
            &Value::from("globex")
        ),
        "{d}"
    );

    // The body altered in transit: signed with LF, received with CRLF.
    let lf = b"[{\"n\":\"c\",\n\"v\":1}]\n".to_vec();
    let crlf = b"[{\"n\":\"c\",\r\n\"v\":1}]\r\n".to_vec();
    assert_eq!(send(acme, SECRET, &lf, &crlf, &header).await, 401);
    let d = newest_diagnosis(&client, &server, &admin, &mut seen).await;
    assert_eq!(
        (&d["cause"], &d["transformation"]),
        (&Value::from("body_altered"), &Value::from("crlf_to_lf")),
        "{d}"
    );

    // The right token without the required header.
    assert_eq!(send(acme, SECRET, &body(2), &body(2), &[]).await, 401);
    let d = newest_diagnosis(&client, &server, &admin, &mut seen).await;
    assert_eq!(
        (&d["cause"], &d["header"]),
        (
            &Value::from("required_header_missing"),
            &Value::from("device-type")
        ),
        "{d}"
    );

    // A removed destination's plug.
    change_destinations(
        &env,
        &client,
        &server,
        &["destinations", "remove", &initech.to_string()],
    )
    .await;
    // (Signed with a secret no destination has: with acme's, it would be misaddressed.)
    let junk = "Junk#Secret-0123456789abcdefghijklmno";
    assert_eq!(send(initech, junk, &body(3), &body(3), &[]).await, 401);
    let d = newest_diagnosis(&client, &server, &admin, &mut seen).await;
    assert_eq!(
        (&d["cause"], &d["removed_destination"]),
        (&Value::from("unknown_plug"), &Value::from("initech")),
        "{d}"
    );

    // A secret rotated away: its overlap ended.
    change_destinations(
        &env,
        &client,
        &server,
        &[
            "destinations",
            "rotate",
            "acme",
            "--secret",
            "Third#Secret-0123456789abcdefghijk",
            "--overlap",
            "0s",
        ],
    )
    .await;
    assert_eq!(send(acme, SECRET, &body(4), &body(4), &header).await, 401);
    let d = newest_diagnosis(&client, &server, &admin, &mut seen).await;
    assert_eq!(
        (&d["cause"], &d["destination"]),
        (&Value::from("rotated_secret"), &Value::from("acme")),
        "{d}"
    );
    assert!(d["overlap_ended_at"].is_string(), "{d}");

    // A device with a wrong secret.
    let pack = device_pack(IMEI, 1);
    assert_eq!(
        uplink(&client, &server, OTHER_SECRET, &pack).await.status(),
        401
    );
    let d = newest_diagnosis(&client, &server, &admin, &mut seen).await;
    assert_eq!(
        (&d["cause"], &d["device"]),
        (&Value::from("wrong_secret"), &Value::from(IMEI)),
        "{d}"
    );
    assert!(d["summary"].as_str().unwrap().len() > 10);
}

#[tokio::test]
async fn replay_after_the_fix_stores_it_once() {
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let admin = env.api_key("ops", "admin");
    let reader = env.api_key("dash", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let second = "Second#Secret-0123456789abcdefghij";
    change_destinations(
        &env,
        &client,
        &server,
        &[
            "destinations",
            "rotate",
            "acme",
            "--secret",
            second,
            "--overlap",
            "0s",
        ],
    )
    .await;
    let b = body(7);
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &b).await.status(),
        401
    );
    let item = rejections(&client, &server, &admin, "", 1).await[0].clone();
    let id = item["id"].as_str().unwrap().to_owned();

    // A read key sees the list, not the detail, and cannot replay.
    assert_eq!(
        api_get(&client, &server, &reader, "/api/v1/rejections")
            .await
            .0,
        200
    );
    assert_eq!(
        api_get(
            &client,
            &server,
            &reader,
            &format!("/api/v1/rejections/{id}")
        )
        .await
        .0,
        403
    );
    assert_eq!(replay(&client, &server, &reader, &id).await.0, 403);

    // Still refused: 422 with the diagnosis.
    let (status, refused) = replay(&client, &server, &admin, &id).await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("rotated away"),
        "{refused}"
    );

    // Fixed (the old secret given back): it verifies now, and replay stores it.
    change_destinations(
        &env,
        &client,
        &server,
        &[
            "destinations",
            "rotate",
            "acme",
            "--secret",
            SECRET,
            "--overlap",
            "0s",
        ],
    )
    .await;
    let d = detail(&client, &server, &admin, &id).await;
    assert_eq!(d["diagnosis"]["cause"], "verifies_now");
    let (status, first) = replay(&client, &server, &admin, &id).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "stored");
    let message_id = first["message_id"].as_i64().unwrap();
    let (status, again) = replay(&client, &server, &admin, &id).await;
    assert_eq!((status, &again), (200, &first));

    let mut db = connect(&env.database_url).await;
    let (received, event_received, body_stored): (
        chrono::DateTime<chrono::Utc>,
        chrono::DateTime<chrono::Utc>,
        Vec<u8>,
    ) = sqlx::query_as(
        "SELECT m.received_at, e.received_at, m.body FROM messages m \
         JOIN door_events e ON e.replayed_message_id = m.id WHERE m.id = $1",
    )
    .bind(message_id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        received, event_received,
        "stored with its original receipt time"
    );
    assert_eq!(body_stored, b);
    let (_, listed) = api_get(&client, &server, &admin, "/api/v1/rejections").await;
    assert_eq!(listed["items"][0]["replayed_message_id"], message_id);
}

#[tokio::test]
async fn spooled_deliveries_are_events_not_rejections() {
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let admin = env.api_key("ops", "admin");
    // No commit is waited for: a delivery goes to the spool, answered 200 "spooled" (unless
    // its commit wins the race with a zero timeout, as it can on a loaded machine: then the
    // next one is sent, until one is spooled).
    let server = env.serve_in_process(&["--spool-after", "0s"]).await;
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    let mut spooled = 0;
    while spooled == 0 {
        assert!(Instant::now() < deadline, "no delivery was spooled");
        sent += 1;
        let r = deliver(&client, &server, plug, SECRET, &body(sent)).await;
        let (status, answer) = status_json(r).await;
        assert_eq!(status, 200);
        match answer["status"].as_str() {
            Some("spooled") => spooled += 1,
            Some("stored") => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    let url = env.database_url.clone();
    db_count(
        &url,
        "SELECT count(*) FROM door_events WHERE verdict = 'spooled' AND status = 200 \
           AND destination_id IS NOT NULL AND body IS NULL AND body_size > 0",
        |n| n == spooled,
    )
    .await;
    let mut db = connect(&url).await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM door_events")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let d = detail(&client, &server, &admin, &id.to_string()).await;
    assert_eq!(d["verdict"], "spooled");
    assert_eq!(d["diagnosis"]["cause"], "spooled");
    // Not listed as a rejection, and not replayed (the spool stores it).
    let (_, page) = api_get(&client, &server, &admin, "/api/v1/rejections").await;
    assert_eq!(page["items"], serde_json::json!([]));
    assert_eq!(
        replay(&client, &server, &admin, &id.to_string()).await.0,
        422
    );
    db_count(&url, "SELECT count(*) FROM messages", |n| {
        n == i64::from(sent)
    })
    .await;
}

#[tokio::test]
async fn a_device_registered_after_its_refusal_is_replayed_without_taking_its_downlink() {
    let env = Env::new().await;
    let admin = env.api_key("ops", "admin");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let pack = device_pack(IMEI, 3);
    assert_eq!(
        uplink(&client, &server, DEVICE_SECRET, &pack)
            .await
            .status(),
        404
    );
    let id = rejections(&client, &server, &admin, "door=m2m", 1).await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = detail(&client, &server, &admin, &id).await;
    assert_eq!(d["diagnosis"]["cause"], "unknown_device", "{d}");
    assert_eq!(d["diagnosis"]["removed_registration"], false);
    change_devices(
        &env,
        &client,
        &server,
        &["devices", "add", IMEI, "--secret", DEVICE_SECRET],
    )
    .await;
    let queued = client
        .post(server.url(&format!("/api/v1/devices/{IMEI}/downlinks")))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"payload_hex": "0A0B"}))
        .send()
        .await
        .unwrap();
    assert_eq!(queued.status(), 202);
    let d = detail(&client, &server, &admin, &id).await;
    assert_eq!(d["diagnosis"]["cause"], "verifies_now", "{d}");
    let (status, stored) = replay(&client, &server, &admin, &id).await;
    assert_eq!(status, 201, "{stored}");
    let mut db = connect(&env.database_url).await;
    let (door, body): (String, Vec<u8>) =
        sqlx::query_as("SELECT door, body FROM messages WHERE id = $1")
            .bind(stored["message_id"].as_i64().unwrap())
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!((door.as_str(), body), ("m2m", pack.clone()));
    // Nobody read the replay's answer: the downlink waits for the device's next uplink.
    let waiting: String = sqlx::query_scalar("SELECT status FROM downlinks")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(waiting, "queued");
    let next = uplink(&client, &server, DEVICE_SECRET, &device_pack(IMEI, 4)).await;
    assert_eq!(next.status(), 200, "the next uplink carries it");
}

/// A destination's static header can be a credential of the sender's (`x-api-key`): a refusal
/// keeps only its hash, in the table and in the admin's view, and the diagnosis and a replay
/// still tell whether it was the required value.
#[tokio::test]
async fn a_credential_header_is_kept_only_as_its_hash_and_still_replays() {
    let env = Env::new().await;
    let api_key_value = "k3y-of-the-sender-0123";
    let plug = env.add_destination(
        "acme",
        &["--require-header", &format!("x-api-key={api_key_value}")],
    );
    let admin = env.api_key("ops", "admin");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let second = "Second#Secret-0123456789abcdefghij";
    let rotate = |secret: &'static str| {
        [
            "destinations",
            "rotate",
            "acme",
            "--secret",
            secret,
            "--overlap",
            "0s",
        ]
    };
    change_destinations(&env, &client, &server, &rotate(second)).await;

    // Signed with the secret rotated away, carrying the right credential: refused.
    let b = body(11);
    let token = Token::sign(&b, SECRET.as_bytes()).to_hex();
    let sent = [("x-api-key", api_key_value)];
    assert_eq!(
        deliver_with(&client, &server, plug, &token, &b, &sent)
            .await
            .status(),
        401
    );
    // Signed right, with another credential: refused, and diagnosed as the header.
    let b2 = body(12);
    let token2 = Token::sign(&b2, second.as_bytes()).to_hex();
    let wrong = [("x-api-key", "not-the-value")];
    assert_eq!(
        deliver_with(&client, &server, plug, &token2, &b2, &wrong)
            .await
            .status(),
        401
    );
    let items = rejections(&client, &server, &admin, "", 2).await;
    let (newest, oldest) = (
        items[0]["id"].as_str().unwrap().to_owned(),
        items[1]["id"].as_str().unwrap().to_owned(),
    );
    let d = detail(&client, &server, &admin, &newest).await;
    assert_eq!(
        (&d["diagnosis"]["cause"], &d["diagnosis"]["header"]),
        (
            &Value::from("required_header_different"),
            &Value::from("x-api-key")
        ),
        "{d}"
    );

    // Neither value is anywhere in the record or the admin's view.
    let d = detail(&client, &server, &admin, &oldest).await;
    assert!(
        d["headers"]["x-api-key"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:")),
        "{d}"
    );
    assert!(!d.to_string().contains(api_key_value), "{d}");
    let mut db = connect(&env.database_url).await;
    let leaked: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM door_events WHERE headers::text LIKE '%' || $1 || '%' \
         OR headers::text LIKE '%not-the-value%'",
    )
    .bind(api_key_value)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(leaked, 0);

    // Fixed: the old secret back; the hash stands for the required value, so replay stores it.
    change_destinations(&env, &client, &server, &rotate(SECRET)).await;
    let (status, replayed) = replay(&client, &server, &admin, &oldest).await;
    assert_eq!(status, 201, "{replayed}");
    assert_eq!(replayed["status"], "stored");
    // The one with the wrong credential still does not verify.
    change_destinations(&env, &client, &server, &rotate(second)).await;
    let (status, refused) = replay(&client, &server, &admin, &newest).await;
    assert_eq!(status, 422, "{refused}");
}
