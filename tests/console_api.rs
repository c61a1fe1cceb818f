//! The console's read API on the in-process server: the deliveries list (messages and door
//! events merged, every filter, the cursor), its live stream across instances, one message's
//! detail, a device's timeline and the destinations' statistics.

mod common;
#[path = "common/dashboard.rs"]
#[allow(dead_code)]
mod dashboard;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use dashboard::{api_send, pack};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use things_receiver::token::Token;

const IMEI: &str = "urn:dev:IMEI:356938035643809:";
const SENSOR: &str = "urn:dev:DEVEUI:00000000000000A1:";
const DEVICE_SECRET: &str = "Device-Secret-For-The-IP-Door-0123456789";
const IP: &str = "/ingestion/ip/senml/v1";

/// A device uplink through the Internet door of `server`.
async fn uplink(client: &reqwest::Client, server: &Server, body: &[u8]) -> reqwest::Response {
    client
        .post(server.url(IP))
        .header(
            "Things-Message-Token",
            Token::sign(body, DEVICE_SECRET.as_bytes()).to_hex(),
        )
        .header("Content-Type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

/// A door event row's columns.
struct NewEvent<'a> {
    at: Option<&'a str>,
    seconds_ago: i64,
    verdict: &'a str,
    reason: &'a str,
    status: i16,
    door: &'a str,
    plug: Option<uuid::Uuid>,
    device: Option<&'a str>,
    message_id: Option<i64>,
    body: &'a [u8],
}

/// A door event row as the doors' recorder writes it, `seconds_ago` before now (or at
/// `at` exactly).
async fn insert_event(env: &Env, e: NewEvent<'_>) -> uuid::Uuid {
    let id = uuid::Uuid::now_v7();
    let mut db = connect(&env.database_url).await;
    sqlx::query(
        "INSERT INTO door_events (id, received_at, door, verdict, status, reason, plug, \
                                  device_urn, message_id, body, body_size, stored_bytes, \
                                  device_key) \
         VALUES ($1, coalesce($2::timestamptz, now() - make_interval(secs => $3)), $4, $5, $6, \
                 $7, $8, $9, $10, $11, $12, 100, $13)",
    )
    .bind(id)
    .bind(e.at)
    .bind(e.seconds_ago as f64)
    .bind(e.door)
    .bind(e.verdict)
    .bind(e.status)
    .bind(e.reason)
    .bind(e.plug)
    .bind(e.device)
    .bind(e.message_id)
    .bind(e.body)
    .bind(e.body.len() as i64)
    // The recorder keeps a device door's first `bn` normalised beside it, as sent.
    .bind(e.device.map(things_receiver::senml::device_key))
    .execute(&mut db)
    .await
    .unwrap();
    id
}

/// The id of the newest message (the door's answer does not name it).
async fn last_message_id(env: &Env) -> i64 {
    let mut db = connect(&env.database_url).await;
    sqlx::query_scalar("SELECT max(id) FROM messages")
        .fetch_one(&mut db)
        .await
        .unwrap()
}

async fn get(client: &reqwest::Client, server: &Server, key: &str, path: &str) -> Value {
    let (status, json) = api_get(client, server, key, path).await;
    assert_eq!(status, 200, "{path}: {json}");
    json
}

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["kind"].as_str().unwrap(),
                i["id"].as_str().unwrap()
            )
        })
        .collect()
}

/// Every item of a list, page by page with `limit`.
async fn all_pages(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    query: &str,
    limit: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/api/v1/deliveries?limit={limit}&{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = get(client, server, key, &path).await;
        let got = ids(&page);
        assert!(got.len() <= limit, "{page}");
        out.extend(got);
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
    panic!("too many pages");
}

struct Seeded {
    env: Env,
    server: Server,
    key: String,
    plug: uuid::Uuid,
    stored: Vec<i64>,
    quarantined: i64,
    device_messages: Vec<i64>,
    downlink_id: String,
    rejected: uuid::Uuid,
    device_rejected: uuid::Uuid,
    duplicate: uuid::Uuid,
    tie: uuid::Uuid,
}

/// Three stored and one quarantined KPN delivery for `acme`, two uplinks of a registered
/// device (the second carrying a downlink), one for `other`; and door events around them.
async fn seed() -> Seeded {
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let other = env.add_destination("other", &[]);
    env.cli_ok(&["devices", "add", IMEI, "--secret", DEVICE_SECRET]);
    let key = env.api_key("reader", "read,downlink");
    let server = env.serve_in_process(&[]).await;
    let client = client();

    let mut stored = Vec::new();
    for i in 0..3 {
        let body = pack(
            SENSOR,
            &[("temperature", 1_700_000_000 + i, 20.0 + i as f64)],
        );
        let (status, json) =
            status_json(deliver(&client, &server, plug, SECRET, &body).await).await;
        assert_eq!(
            (status, json["status"].as_str()),
            (200, Some("stored")),
            "{json}"
        );
        stored.push(last_message_id(&env).await);
    }
    let (status, json) = status_json(
        deliver(
            &client,
            &server,
            plug,
            SECRET,
            b"{\"not\": \"a pack\", \"needle\": 1}",
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, json["status"].as_str()),
        (200, Some("quarantined")),
        "{json}"
    );
    let quarantined = last_message_id(&env).await;
    let body = pack(SENSOR, &[("humidity", 1_700_000_100, 50.0)]);
    assert_eq!(
        deliver(&client, &server, other, SECRET, &body)
            .await
            .status(),
        200
    );

    let first = uplink(&client, &server, &pack(IMEI, &[("t", 1_700_000_000, 1.0)])).await;
    assert_eq!(first.status(), 202);
    let (status, queued) = api_send(
        &client,
        &server,
        &key,
        reqwest::Method::POST,
        &format!("/api/v1/devices/{IMEI}/downlinks"),
        Some(json!({"records": [{"n": "led", "vb": true}]})),
    )
    .await;
    assert_eq!(status, 202, "{queued}");
    let second = uplink(&client, &server, &pack(IMEI, &[("t", 1_700_000_060, 2.0)])).await;
    assert_eq!(second.status(), 200);
    let mut db = connect(&env.database_url).await;
    let device_messages: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM messages WHERE door = 'ip' ORDER BY id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(device_messages.len(), 2);

    let rejected = insert_event(
        &env,
        NewEvent {
            at: None,
            seconds_ago: 30,
            verdict: "rejected",
            reason: "not_verified",
            status: 401,
            door: "destination",
            plug: Some(plug),
            device: None,
            message_id: None,
            body: b"[{\"bn\":\"needle-rare\"}]",
        },
    )
    .await;
    let device_rejected = insert_event(
        &env,
        NewEvent {
            at: None,
            seconds_ago: 20,
            verdict: "rejected",
            reason: "not_verified",
            status: 401,
            door: "ip",
            plug: None,
            device: Some("urn:dev:imei:356938035643809:"),
            message_id: None,
            body: b"[]",
        },
    )
    .await;
    let duplicate = insert_event(
        &env,
        NewEvent {
            at: None,
            seconds_ago: 0,
            verdict: "duplicate",
            reason: "duplicate",
            status: 200,
            door: "destination",
            plug: Some(plug),
            device: None,
            message_id: Some(stored[0]),
            body: b"[]",
        },
    )
    .await;
    // At exactly the receipt time of a message: the cursor must keep both in order.
    let at: String = sqlx::query_scalar(
        "SELECT to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
         FROM messages WHERE id = $1",
    )
    .bind(stored[1])
    .fetch_one(&mut db)
    .await
    .unwrap();
    let tie = insert_event(
        &env,
        NewEvent {
            at: Some(&at),
            seconds_ago: 0,
            verdict: "rejected",
            reason: "bad_pack",
            status: 400,
            door: "destination",
            plug: Some(plug),
            device: None,
            message_id: None,
            body: b"x",
        },
    )
    .await;
    Seeded {
        downlink_id: queued["id"].as_str().unwrap().to_owned(),
        env,
        server,
        key,
        plug,
        stored,
        quarantined,
        device_messages,
        rejected,
        device_rejected,
        duplicate,
        tie,
    }
}

#[tokio::test]
async fn the_list_merges_messages_and_events_newest_first_with_filters_and_cursor() {
    let s = seed().await;
    let client = client();
    let page = get(&client, &s.server, &s.key, "/api/v1/deliveries").await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 7 + 4, "{page}");
    assert!(page["next_cursor"].is_null());
    // Newest first.
    let times: Vec<chrono::DateTime<chrono::Utc>> = items
        .iter()
        .map(|i| i["received_at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{page}");

    // The shapes.
    let by_id = |kind: &str, id: &str| {
        items
            .iter()
            .find(|i| i["kind"] == kind && i["id"] == id)
            .unwrap_or_else(|| panic!("{kind} {id} missing: {page}"))
            .clone()
    };
    let message = by_id("message", &s.stored[0].to_string());
    assert_eq!(message["door"], "destination");
    assert_eq!(message["destination"], "acme");
    assert_eq!(message["plug"], s.plug.to_string());
    assert_eq!(message["device"], SENSOR);
    assert_eq!(message["verdict"], "stored");
    assert_eq!(message["status"], 200);
    assert_eq!(message["record_count"], 1);
    assert_eq!(message["message_id"], s.stored[0]);
    assert!(message["reason"].is_null() && message["replay_of"].is_null());
    let body = pack(SENSOR, &[("temperature", 1_700_000_000, 20.0)]);
    assert_eq!(message["size"], body.len());
    let event = by_id("event", &s.rejected.to_string());
    assert_eq!(event["verdict"], "rejected");
    assert_eq!(event["reason"], "not_verified");
    assert_eq!(event["status"], 401);
    assert_eq!(event["destination"], "acme");
    assert_eq!(event["record_count"], 0);
    assert!(event["message_id"].is_null());
    assert_eq!(
        by_id("event", &s.duplicate.to_string())["message_id"],
        s.stored[0]
    );
    // A device door answered 202 without a downlink, 200 with one.
    let first = by_id("message", &s.device_messages[0].to_string());
    assert_eq!(
        (first["door"].as_str(), first["status"].as_i64()),
        (Some("ip"), Some(202))
    );
    assert_eq!(first["device"], IMEI);
    assert_eq!(
        by_id("message", &s.device_messages[1].to_string())["status"],
        200
    );

    // Page by page, with every page size: the same items, none twice, none missing.
    let whole = ids(&page);
    for limit in [1, 2, 3, 5] {
        assert_eq!(
            all_pages(&client, &s.server, &s.key, "", limit).await,
            whole,
            "limit {limit}"
        );
    }
    let tie_position = whole
        .iter()
        .position(|i| *i == format!("event:{}", s.tie))
        .unwrap();
    assert_eq!(whole[tie_position - 1], format!("message:{}", s.stored[1]));

    // Filters.
    let only = |query: &str| {
        let query = query.to_owned();
        let (client, server, key) = (client.clone(), &s.server, s.key.clone());
        async move {
            let mut got = all_pages(&client, server, &key, &query, 2).await;
            got.sort();
            got
        }
    };
    let sorted = |v: Vec<String>| {
        let mut v = v;
        v.sort();
        v
    };
    let m = |id: i64| format!("message:{id}");
    let e = |id: uuid::Uuid| format!("event:{id}");
    assert_eq!(
        only("door=ip").await,
        sorted(vec![
            m(s.device_messages[0]),
            m(s.device_messages[1]),
            e(s.device_rejected)
        ])
    );
    let acme = sorted(vec![
        m(s.stored[0]),
        m(s.stored[1]),
        m(s.stored[2]),
        m(s.quarantined),
        e(s.rejected),
        e(s.duplicate),
        e(s.tie),
    ]);
    assert_eq!(only("destination=acme").await, acme);
    assert_eq!(only(&format!("destination={}", s.plug)).await, acme);
    assert_eq!(only("destination=nobody").await, Vec::<String>::new());
    // Any case of the URN; the event by its URN as sent.
    assert_eq!(
        only("device=urn:dev:imei:356938035643809:").await,
        sorted(vec![
            m(s.device_messages[0]),
            m(s.device_messages[1]),
            e(s.device_rejected)
        ])
    );
    assert_eq!(
        only("verdict=rejected").await,
        sorted(vec![e(s.rejected), e(s.device_rejected), e(s.tie)])
    );
    assert_eq!(only("verdict=quarantined").await, vec![m(s.quarantined)]);
    assert_eq!(only("verdict=duplicate").await, vec![e(s.duplicate)]);
    assert_eq!(
        only("reason=not_verified").await,
        sorted(vec![e(s.rejected), e(s.device_rejected)])
    );
    assert_eq!(
        only("verdict=stored&reason=not_verified").await,
        Vec::<String>::new()
    );
    // Text in the body: messages and events alike.
    assert_eq!(
        only("q=needle").await,
        sorted(vec![m(s.quarantined), e(s.rejected)])
    );
    assert_eq!(only("q=needle-rare").await, vec![e(s.rejected)]);
    // A time window: the events 30 and 20 seconds ago, nothing after.
    let now = chrono::Utc::now();
    let window = format!(
        "from={}&to={}",
        (now - chrono::Duration::seconds(40)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (now - chrono::Duration::seconds(10)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert_eq!(
        only(&window).await,
        sorted(vec![e(s.rejected), e(s.device_rejected)])
    );

    // Refusals name the parameter.
    for (query, name) in [
        ("verdict=maybe", "verdict"),
        ("door=window", "door"),
        ("limit=501", "limit"),
        ("limit=0", "limit"),
        ("cursor=bogus", "cursor"),
        ("from=yesterday", "from"),
    ] {
        let (status, json) = api_get(
            &client,
            &s.server,
            &s.key,
            &format!("/api/v1/deliveries?{query}"),
        )
        .await;
        assert_eq!(status, 400, "{query}: {json}");
        assert!(json.to_string().contains(name), "{query}: {json}");
    }
    let (status, _) = api_get(&client, &s.server, "nope", "/api/v1/deliveries").await;
    assert_eq!(status, 401);
    let downlinker = s.env.api_key("downlinker", "downlink");
    let (status, _) = api_get(&client, &s.server, &downlinker, "/api/v1/deliveries").await;
    assert_eq!(status, 403);
    let unique: HashSet<&String> = whole.iter().collect();
    assert_eq!(unique.len(), whole.len());
}

/// Reads SSE events until one named `event` arrives, with a deadline.
async fn next_event(
    stream: &mut reqwest::Response,
    buffer: &mut String,
    event: &str,
    within: Duration,
) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let name = block.lines().find_map(|l| l.strip_prefix("event: "));
            let data = block.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(name), Some(data)) = (name, data)
                && name == event
            {
                return Some(serde_json::from_str(data).unwrap());
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk()).await.ok()?;
        buffer.push_str(&String::from_utf8_lossy(
            &chunk.unwrap().expect("the stream ended"),
        ));
    }
}

async fn subscribe(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    query: &str,
) -> reqwest::Response {
    let response = client
        .get(server.url(&format!("/api/v1/deliveries/stream?{query}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response
}

#[tokio::test]
async fn the_stream_carries_deliveries_and_events_from_another_instance() {
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let key = env.api_key("reader", "read");
    // Two instances on one database: deliveries go to the first, the stream is the second's.
    let ingesting = env.serve_in_process(&[]).await;
    let streaming = env.serve_in_process(&[]).await;
    let client = client();
    let mut all = subscribe(&client, &streaming, &key, "").await;
    let mut rejections = subscribe(&client, &streaming, &key, "verdict=rejected").await;
    let (mut all_buffer, mut rejected_buffer) = (String::new(), String::new());

    // The listener of a just-started server may not listen yet: send again (a new delivery)
    // until one arrives, each within 2 s.
    let mut attempt = 0;
    let (event, id) = loop {
        attempt += 1;
        assert!(attempt <= 10, "no live delivery");
        let body = pack(SENSOR, &[("temperature", 1_700_000_000 + attempt, 1.0)]);
        let (status, json) =
            status_json(deliver(&client, &ingesting, plug, SECRET, &body).await).await;
        assert_eq!(status, 200, "{json}");
        let id = last_message_id(&env).await;
        if let Some(event) = next_event(
            &mut all,
            &mut all_buffer,
            "delivery",
            Duration::from_secs(2),
        )
        .await
        {
            break (event, id);
        }
    };
    // Exactly the list's item.
    let listed = get(&client, &ingesting, &key, "/api/v1/deliveries?limit=1").await;
    assert_eq!(event["id"], id.to_string(), "{event}");
    assert_eq!(event, listed["items"][0]);
    assert_eq!(event["kind"], "message");
    assert_eq!(event["verdict"], "stored");

    // A door event, as the recorder inserts it.
    let started = Instant::now();
    let rejected = insert_event(
        &env,
        NewEvent {
            at: None,
            seconds_ago: 0,
            verdict: "rejected",
            reason: "not_verified",
            status: 401,
            door: "destination",
            plug: Some(plug),
            device: None,
            message_id: None,
            body: b"[]",
        },
    )
    .await;
    let event = loop {
        let event = next_event(
            &mut all,
            &mut all_buffer,
            "delivery",
            Duration::from_secs(2),
        )
        .await
        .expect("the door event was not streamed within 2 s");
        if event["kind"] == "event" {
            break event;
        }
    };
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(event["id"], rejected.to_string());
    assert_eq!(event["destination"], "acme");
    let listed = get(&client, &streaming, &key, "/api/v1/deliveries?limit=1").await;
    assert_eq!(event, listed["items"][0]);
    // The filtered subscriber saw no stored message before it.
    let first = next_event(
        &mut rejections,
        &mut rejected_buffer,
        "delivery",
        Duration::from_secs(2),
    )
    .await
    .expect("the rejection was not streamed");
    assert_eq!(first["id"], rejected.to_string(), "{first}");
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_how_many_it_skipped() {
    let env = Env::new().await;
    let key = env.api_key("reader", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let mut stream = subscribe(&client, &server, &key, "").await;
    let mut buffer = String::new();
    // Make sure the listener listens: one event arrives.
    let mut attempt = 0;
    loop {
        attempt += 1;
        assert!(attempt <= 10, "no live event");
        insert_event(
            &env,
            NewEvent {
                at: None,
                seconds_ago: 0,
                verdict: "rejected",
                reason: "bad_pack",
                status: 400,
                door: "ip",
                plug: None,
                device: None,
                message_id: None,
                body: b"[]",
            },
        )
        .await;
        if next_event(&mut stream, &mut buffer, "delivery", Duration::from_secs(2))
            .await
            .is_some()
        {
            break;
        }
    }
    // Far more than the channel holds, while this client reads nothing: big bodies fill the
    // connection's buffers, so the subscriber falls behind.
    let mut db = connect(&env.database_url).await;
    for _ in 0..40 {
        sqlx::query(
            "INSERT INTO door_events (id, received_at, door, verdict, status, reason, body, \
                                      body_size, stored_bytes, device_urn) \
             SELECT gen_random_uuid(), now(), 'ip', 'rejected', 400, 'bad_pack', '\\x00', 1, \
                    100, repeat('u', 8000) FROM generate_series(1, 100)",
        )
        .execute(&mut db)
        .await
        .unwrap();
    }
    let skipped = next_event(&mut stream, &mut buffer, "skipped", Duration::from_secs(20))
        .await
        .expect("no skipped event");
    assert!(skipped["count"].as_u64().unwrap() > 0, "{skipped}");
    // And the stream goes on.
    let id = insert_event(
        &env,
        NewEvent {
            at: None,
            seconds_ago: 0,
            verdict: "rejected",
            reason: "not_verified",
            status: 401,
            door: "ip",
            plug: None,
            device: None,
            message_id: None,
            body: b"[]",
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let event = next_event(
            &mut stream,
            &mut buffer,
            "delivery",
            Duration::from_secs(20),
        )
        .await
        .expect("the stream ended after skipping");
        if event["id"] == id.to_string() {
            break;
        }
        assert!(Instant::now() < deadline);
    }
}

#[tokio::test]
async fn a_message_detail_shows_its_records_digest_answer_and_downlink() {
    let s = seed().await;
    let client = client();
    let body = pack(SENSOR, &[("temperature", 1_700_000_000, 20.0)]);
    let detail = get(
        &client,
        &s.server,
        &s.key,
        &format!("/api/v1/messages/{}", s.stored[0]),
    )
    .await;
    assert_eq!(detail["id"], s.stored[0]);
    assert_eq!(detail["sha256"], hex::encode(Sha256::digest(&body)));
    assert_eq!(detail["size"], body.len());
    assert_eq!(detail["status_code"], 200);
    assert_eq!(detail["status"], "stored");
    assert_eq!(detail["destination"], "acme");
    assert!(detail["quarantine_reason"].is_null());
    assert!(detail["downlink"].is_null() && detail["fota"].is_null());
    // The records are what the measurements API shows for that delivery.
    let measurements = get(
        &client,
        &s.server,
        &s.key,
        &format!("/api/v1/measurements?device={SENSOR}&name=temperature&to=2023-11-14T22:13:21Z"),
    )
    .await;
    let shown = &measurements["items"][0];
    let record = &detail["records"][0];
    assert_eq!(detail["records"].as_array().unwrap().len(), 1, "{detail}");
    assert_eq!(
        (
            &record["name"],
            &record["time"],
            &record["value"],
            &record["device"]
        ),
        (
            &shown["name"],
            &shown["time"],
            &shown["value"],
            &shown["device"]
        ),
        "{detail} {measurements}"
    );
    assert!(record["unit"].is_null());

    let quarantined = get(
        &client,
        &s.server,
        &s.key,
        &format!("/api/v1/messages/{}", s.quarantined),
    )
    .await;
    assert_eq!(quarantined["status"], "quarantined");
    assert!(
        quarantined["quarantine_reason"].is_string(),
        "{quarantined}"
    );
    assert_eq!(quarantined["records"], json!([]));

    // The downlink that rode on the device's second uplink.
    let carried = get(
        &client,
        &s.server,
        &s.key,
        &format!("/api/v1/messages/{}", s.device_messages[1]),
    )
    .await;
    assert_eq!(carried["status_code"], 200);
    assert_eq!(carried["downlink"]["id"], s.downlink_id, "{carried}");
    assert_eq!(carried["downlink"]["status"], "delivered");
    assert_eq!(
        carried["downlink"]["body"],
        json!([{"bn": IMEI}, {"n": "led", "vb": true}])
    );
    let plain = get(
        &client,
        &s.server,
        &s.key,
        &format!("/api/v1/messages/{}", s.device_messages[0]),
    )
    .await;
    assert_eq!(plain["status_code"], 202);
    assert!(plain["downlink"].is_null());

    let (status, json) = api_get(&client, &s.server, &s.key, "/api/v1/messages/999999").await;
    assert_eq!(status, 404, "{json}");
    let (status, _) = api_get(&client, &s.server, &s.key, "/api/v1/messages/abc").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_device_timeline_holds_uplinks_rejections_and_downlinks_newest_first() {
    let s = seed().await;
    let client = client();
    let timeline = get(
        &client,
        &s.server,
        &s.key,
        "/api/v1/devices/urn:dev:imei:356938035643809:/timeline",
    )
    .await;
    let items = timeline["items"].as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    let mut sorted_kinds = kinds.clone();
    sorted_kinds.sort();
    assert_eq!(
        sorted_kinds,
        ["downlink", "rejection", "uplink", "uplink"],
        "{timeline}"
    );
    let times: Vec<chrono::DateTime<chrono::Utc>> = items
        .iter()
        .map(|i| i["time"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{timeline}");
    let downlink = items.iter().find(|i| i["kind"] == "downlink").unwrap();
    assert_eq!(downlink["id"], s.downlink_id);
    assert_eq!(
        (downlink["transport"].as_str(), downlink["status"].as_str()),
        (Some("response"), Some("delivered"))
    );
    let uplink = items.iter().find(|i| i["kind"] == "uplink").unwrap();
    assert_eq!(uplink["verdict"], "stored");
    assert_eq!(uplink["record_count"], 1);
    assert!(uplink["summary"].is_string());
    let rejection = items.iter().find(|i| i["kind"] == "rejection").unwrap();
    assert_eq!(rejection["id"], s.device_rejected.to_string());

    let one = get(
        &client,
        &s.server,
        &s.key,
        &format!("/api/v1/devices/{IMEI}/timeline?limit=1"),
    )
    .await;
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    assert_eq!(one["items"][0], items[0]);
    let (status, _) = api_get(
        &client,
        &s.server,
        &s.key,
        "/api/v1/devices/urn:dev:IMEI:111111111111111:/timeline",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn destination_statistics_count_by_verdict_and_tell_the_silence() {
    let s = seed().await;
    let client = client();
    s.env.add_destination("silent", &[]);
    s.env
        .cli_ok(&["destinations", "rotate", "acme", "--overlap", "1h"]);
    let stats = get(&client, &s.server, &s.key, "/api/v1/destinations/stats").await;
    let items = stats["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["acme", "other", "silent"], "{stats}");
    let acme = &items[0];
    let counts =
        json!({"stored": 3, "quarantined": 1, "duplicate": 1, "spooled": 0, "rejected": 2});
    assert_eq!(acme["hour"], counts, "{acme}");
    assert_eq!(acme["day"], counts, "{acme}");
    assert_eq!(acme["plug"], s.plug.to_string());
    assert_eq!(acme["pending"], false);
    assert!(acme["last_stored_at"].is_string(), "{acme}");
    assert!(acme["silent_for_seconds"].as_i64().unwrap() < 60, "{acme}");
    let overlap: chrono::DateTime<chrono::Utc> =
        acme["overlap_until"].as_str().unwrap().parse().unwrap();
    assert!(overlap > chrono::Utc::now());
    let silent = &items[2];
    assert!(silent["last_stored_at"].is_null() && silent["silent_for_seconds"].is_null());
    assert!(silent["overlap_until"].is_null());
    assert_eq!(silent["day"]["stored"], 0);
    assert_eq!(items[1]["hour"]["stored"], 1);
}
