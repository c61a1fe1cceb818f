//! The dashboard and admin API over real HTTPS against a real PostgreSQL (the server runs in
//! this process, `Env::serve_in_process`): every endpoint, its
//! errors and its scope checks.

mod common;

use std::path::Path;

use common::*;

#[test]
fn the_checked_in_openapi_document_is_current() {
    let current = things_receiver::web::document_json();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &current).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == current,
        "docs/openapi.json is out of date: run UPDATE_OPENAPI=1 cargo test --test api openapi"
    );
}

#[path = "common/dashboard.rs"]
mod dashboard;

use std::time::{Duration, Instant};

use dashboard::*;
use reqwest::Method;
use serde_json::{Value, json};

const SENSOR: &str = "urn:dev:DEVEUI:00000000000000A1:";
const OTHER: &str = "urn:dev:IMEI:356938035643809:";
/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200;

fn items(page: &Value) -> &Vec<Value> {
    page["items"].as_array().unwrap()
}

#[tokio::test]
async fn devices_are_listed_found_and_show_their_latest_values() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("reader", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    for (device, n) in [(SENSOR, 3), (OTHER, 2)] {
        for i in 0..n {
            let body = pack(
                device,
                &[
                    ("temperature", T0 + i, 20.0 + i as f64),
                    ("humidity", T0 + i, 50.0),
                ],
            );
            assert_eq!(
                deliver(&client, &server, plug, SECRET, &body)
                    .await
                    .status(),
                200
            );
        }
    }
    // An older reading arriving late does not replace the latest value.
    let late = pack(SENSOR, &[("temperature", T0 - 100, -5.0)]);
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &late)
            .await
            .status(),
        200
    );

    let (status, page) = api_get(&client, &server, &key, "/api/v1/devices").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(items(&page).len(), 2);
    let sensor = &items(&page)[0];
    assert_eq!(sensor["urn"], SENSOR);
    assert_eq!(sensor["kind"], "DEVEUI");
    assert_eq!(sensor["message_count"], 4);
    assert_eq!(items(&page)[1]["message_count"], 2);
    assert_eq!(items(&page)[1]["kind"], "IMEI");
    assert!(page["next_cursor"].is_null());

    // Search (case-insensitive substring), kind filter, paging.
    let (_, page) = api_get(&client, &server, &key, "/api/v1/devices?q=00a1").await;
    assert_eq!(items(&page).len(), 1);
    assert_eq!(items(&page)[0]["urn"], SENSOR);
    let (_, page) = api_get(&client, &server, &key, "/api/v1/devices?kind=imei").await;
    assert_eq!(items(&page).len(), 1);
    assert_eq!(items(&page)[0]["urn"], OTHER);
    let (_, page) = api_get(&client, &server, &key, "/api/v1/devices?q=%25").await;
    assert_eq!(items(&page).len(), 0, "% is a literal, not a wildcard");
    let (_, first) = api_get(&client, &server, &key, "/api/v1/devices?limit=1").await;
    assert_eq!(items(&first).len(), 1);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/devices?limit=1&cursor={cursor}"),
    )
    .await;
    assert_eq!(items(&second)[0]["urn"], OTHER);
    assert!(second["next_cursor"].is_null());
    for (query, name) in [
        ("limit=0", "limit"),
        ("kind=phone", "kind"),
        ("cursor=zz", "cursor"),
    ] {
        let (status, json) =
            api_get(&client, &server, &key, &format!("/api/v1/devices?{query}")).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("bad_parameter"))
        );
        assert!(json["detail"].as_str().unwrap().contains(name), "{json}");
    }

    // One device, by URN in any case.
    let (status, device) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/devices/urn:dev:deveui:00000000000000a1:",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(device["urn"], SENSOR);
    assert_eq!(device["message_count"], 4);
    let (status, json) = api_get(&client, &server, &key, "/api/v1/devices/urn:dev:IMEI:1:").await;
    assert_eq!((status, json["error"].as_str()), (404, Some("not_found")));

    let (status, latest) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/devices/{SENSOR}/latest"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        latest,
        json!({"device": SENSOR, "values": [
            {"name": "humidity", "time": "2024-01-01T00:00:02Z", "value": 50.0},
            {"name": "temperature", "time": "2024-01-01T00:00:02Z", "value": 22.0},
        ]})
    );
    let (status, _) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/devices/urn:dev:IMEI:1:/latest",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn series_are_bucketed_aggregated_filled_and_bounded() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("reader", "read");
    let server = env.serve_in_process(&["--max-series-points", "100"]).await;
    let client = client();
    // Minute 0: 1, 2, 3; minute 1: nothing; minute 2: 10. Humidity only in minute 0.
    let body = pack(
        SENSOR,
        &[
            ("temperature", T0, 1.0),
            ("temperature", T0 + 20, 2.0),
            ("temperature", T0 + 40, 3.0),
            ("temperature", T0 + 130, 10.0),
            ("humidity", T0 + 5, 60.0),
        ],
    );
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &body)
            .await
            .status(),
        200
    );
    let range = "from=2024-01-01T00:00:00Z&to=2024-01-01T00:03:00Z&every=1m";
    let series = |query: String| {
        let client = client.clone();
        let server = &server;
        let key = &key;
        async move {
            let (status, json) = api_get(
                &client,
                server,
                key,
                &format!("/api/v1/series?device={SENSOR}&{query}"),
            )
            .await;
            assert_eq!(status, 200, "{query}: {json}");
            json
        }
    };

    let json = series(format!("name=temperature&{range}")).await;
    assert_eq!(json["agg"], "avg");
    assert_eq!(json["every_seconds"], 60);
    assert_eq!(
        json["series"],
        json!([{"name": "temperature", "points": [
            {"time": "2024-01-01T00:00:00Z", "value": 2.0},
            {"time": "2024-01-01T00:02:00Z", "value": 10.0},
        ]}])
    );
    for (agg, first_bucket) in [
        ("min", 1.0),
        ("max", 3.0),
        ("sum", 6.0),
        ("count", 3.0),
        ("first", 1.0),
        ("last", 3.0),
    ] {
        let json = series(format!("name=temperature&{range}&agg={agg}")).await;
        assert_eq!(
            json["series"][0]["points"][0]["value"], first_bucket,
            "{agg}"
        );
    }

    // Several names at once; empty buckets filled with null or the previous value.
    let json = series(format!("name=temperature,humidity&{range}&fill=null")).await;
    let values = |json: &Value, i: usize| -> Vec<Value> {
        json["series"][i]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["value"].clone())
            .collect()
    };
    assert_eq!(json["series"][1]["name"], "humidity");
    assert_eq!(values(&json, 0), vec![json!(2.0), Value::Null, json!(10.0)]);
    assert_eq!(
        values(&json, 1),
        vec![json!(60.0), Value::Null, Value::Null]
    );
    let json = series(format!(
        "name=temperature&name=humidity&{range}&fill=previous"
    ))
    .await;
    assert_eq!(values(&json, 0), vec![json!(2.0), json!(2.0), json!(10.0)]);
    assert_eq!(
        values(&json, 1),
        vec![json!(60.0), json!(60.0), json!(60.0)]
    );
    // The previous value reaches back before the range.
    let json = series(
        "name=temperature&from=2024-01-01T00:01:00Z&to=2024-01-01T00:02:00Z&every=30s&fill=previous"
            .to_owned(),
    )
    .await;
    assert_eq!(values(&json, 0), vec![json!(3.0), json!(3.0)]);

    // More points than allowed: refused, with the every that would fit.
    let (status, json) = api_get(
        &client,
        &server,
        &key,
        &format!(
            "/api/v1/series?device={SENSOR}&name=temperature&from=2024-01-01T00:00:00Z&to=2024-01-01T02:00:00Z&every=1m"
        ),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (422, Some("unprocessable"))
    );
    let detail = json["detail"].as_str().unwrap();
    assert!(
        detail.contains("120 points") && detail.contains("at least 73s"),
        "{detail}"
    );

    for (query, name) in [
        ("name=temperature", "device"),
        (&format!("device={SENSOR}") as &str, "name"),
        (&format!("device={SENSOR}&name=t&every=soon"), "every"),
        (&format!("device={SENSOR}&name=t&agg=median"), "agg"),
        (&format!("device={SENSOR}&name=t&fill=zero"), "fill"),
        (
            &format!("device={SENSOR}&name=t&from=2024-01-02T00:00:00Z&to=2024-01-01T00:00:00Z"),
            "from",
        ),
    ] {
        let (status, json) =
            api_get(&client, &server, &key, &format!("/api/v1/series?{query}")).await;
        assert_eq!(status, 400, "{query}: {json}");
        assert!(json["detail"].as_str().unwrap().contains(name), "{json}");
    }
    let (status, _) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/series?device=urn:dev:IMEI:1:&name=t",
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn exports_stream_every_row_as_csv_or_ndjson() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("reader", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    // More rows than the largest page, so that a page limit would show.
    let records: Vec<(&str, i64, f64)> = (0..1500).map(|i| ("level", T0 + i, i as f64)).collect();
    let body = pack(SENSOR, &records);
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &body)
            .await
            .status(),
        200
    );
    let other = pack(OTHER, &[("note", T0, 1.0)]);
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &other)
            .await
            .status(),
        200
    );

    let (status, content_type, csv) = api_get_as(
        &client,
        &server,
        &key,
        &format!("/api/v1/measurements?device={SENSOR}&limit=5"),
        "text/csv",
    )
    .await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 1501);
    assert_eq!(
        lines[0],
        "time,device,name,unit,value,string_value,bool_value,data_value,sum"
    );
    assert_eq!(
        lines[1],
        format!("2024-01-01T00:24:59Z,{SENSOR},level,,1499,,,,")
    );
    assert_eq!(
        lines[1500],
        format!("2024-01-01T00:00:00Z,{SENSOR},level,,0,,,,")
    );

    let (status, content_type, ndjson) = api_get_as(
        &client,
        &server,
        &key,
        "/api/v1/measurements",
        "application/x-ndjson",
    )
    .await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/x-ndjson")
    );
    let rows: Vec<Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1501);
    assert!(rows.iter().any(|r| r["device"] == OTHER));

    let (status, _, csv) = api_get_as(&client, &server, &key, "/api/v1/messages", "text/csv").await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("id,plug,destination,received_at"));
    assert!(
        lines[1].contains(OTHER) && lines[1].contains(",stored,,1,"),
        "{}",
        lines[1]
    );
    let (_, _, ndjson) = api_get_as(
        &client,
        &server,
        &key,
        "/api/v1/messages",
        "application/x-ndjson",
    )
    .await;
    let first: Value = serde_json::from_str(ndjson.lines().nth(1).unwrap()).unwrap();
    assert_eq!(
        (first["device"].as_str(), first["record_count"].as_i64()),
        (Some(SENSOR), Some(1500))
    );

    // Bad parameters are still answered as JSON errors.
    let (status, _, body) = api_get_as(
        &client,
        &server,
        &key,
        "/api/v1/measurements?from=x",
        "text/csv",
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("from"));
}

/// Reads the next SSE `data:` line of an event named `event`, with a deadline.
async fn next_event(stream: &mut reqwest::Response, buffer: &mut String, event: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let name = block.lines().find_map(|l| l.strip_prefix("event: "));
            let data = block.lines().find_map(|l| l.strip_prefix("data: "));
            if let (Some(name), Some(data)) = (name, data)
                && name == event
            {
                return serde_json::from_str(data).unwrap();
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .expect("no event before the deadline")
            .unwrap()
            .expect("the stream ended");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn the_live_stream_carries_new_measurements_across_replicas() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("reader", "read");
    // Two replicas on one database: ingest on one, stream from the other.
    let ingesting = env.serve_in_process(&[]).await;
    let streaming = env.serve_in_process(&[]).await;
    let client = client();

    let response = client
        .get(
            streaming
                .url("/api/v1/stream?device=urn:dev:deveui:00000000000000a1:&name=temperature"),
        )
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response;
    let mut buffer = String::new();

    // Not for this subscriber: another device, another name; then one that is. The
    // listener of a just-started server may not listen yet: resend (as a new delivery, one
    // more space) until an event arrives.
    let noise = pack(OTHER, &[("temperature", T0, 1.0)]);
    let mixed = pack(SENSOR, &[("humidity", T0, 2.0), ("temperature", T0, 21.5)]);
    let mut attempt = 0;
    let event = loop {
        attempt += 1;
        assert!(attempt <= 10, "no live event");
        let spaces = " ".repeat(attempt);
        for body in [&noise, &mixed] {
            let body = [&body[..], spaces.as_bytes()].concat();
            assert_eq!(
                deliver(&client, &ingesting, plug, SECRET, &body)
                    .await
                    .status(),
                200
            );
        }
        let wait = next_event(&mut stream, &mut buffer, "measurement");
        if let Ok(event) = tokio::time::timeout(Duration::from_secs(2), wait).await {
            break event;
        }
    };
    assert_eq!(
        event,
        json!({"device": SENSOR, "name": "temperature", "time": "2024-01-01T00:00:00Z", "value": 21.5})
    );

    let (status, _) = api_get(&client, &streaming, "nope", "/api/v1/stream").await;
    assert_eq!(status, 401);
    let downlinker = env.api_key("downlinker", "downlink");
    let (status, _) = api_get(&client, &streaming, &downlinker, "/api/v1/stream").await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn admins_manage_destinations_and_keys_through_the_api() {
    let env = Env::new().await;
    let admin = env.api_key("root", "admin");
    let reader = env.api_key("reader", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let plug = uuid::Uuid::new_v4();

    // Created with a generated secret, returned once, effective at once.
    let (status, created) = api_send(
        &client,
        &server,
        &admin,
        Method::POST,
        "/api/v1/destinations",
        Some(json!({"name": "field", "plug": plug, "required_headers": {"x-site": "north"}})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "active");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 30);
    let body = pack(SENSOR, &[("t", T0, 1.0)]);
    let token = things_receiver::token::Token::sign(&body, secret.as_bytes()).to_hex();
    let response = deliver_with(
        &client,
        &server,
        plug,
        &token,
        &body,
        &[("x-site", "north")],
    )
    .await;
    assert_eq!(response.status(), 200);

    // Listed without any secret.
    let response = client
        .get(server.url("/api/v1/destinations"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(
        !text.contains(&secret) && !text.contains("secret"),
        "{text}"
    );
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list[0]["name"], "field");
    assert_eq!(list[0]["required_headers"], json!({"x-site": "north"}));

    // A given secret is not echoed; rules and conflicts are explained.
    let (status, json) = api_send(
        &client,
        &server,
        &admin,
        Method::POST,
        "/api/v1/destinations",
        Some(json!({"name": "mine", "secret": SECRET})),
    )
    .await;
    assert_eq!((status, json["state"].as_str()), (201, Some("pending")));
    assert!(json.get("secret").is_none(), "{json}");
    for (body, expected) in [
        (json!({"name": "field"}), 409),
        (json!({"name": "short", "secret": "tooshort"}), 422),
        (json!({"name": "code", "response_code": 302}), 422),
        (json!({"name": 5}), 422),
        (json!({"name": "x", "colour": "red"}), 422),
    ] {
        let (status, json) = api_send(
            &client,
            &server,
            &admin,
            Method::POST,
            "/api/v1/destinations",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, expected, "{body}: {json}");
        assert!(json["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let response = client
        .post(server.url("/api/v1/destinations"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Rotation: a new generated secret works at once, the old one during the overlap.
    let (status, rotated) = api_send(
        &client,
        &server,
        &admin,
        Method::POST,
        &format!("/api/v1/destinations/{plug}/rotate"),
        Some(json!({"overlap": "1h"})),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert!(rotated["previous_secret_valid_until"].is_string());
    for (secret, extra) in [(new_secret, " "), (secret.as_str(), "  ")] {
        let body = [&body[..], extra.as_bytes()].concat();
        let token = things_receiver::token::Token::sign(&body, secret.as_bytes()).to_hex();
        let response = deliver_with(
            &client,
            &server,
            plug,
            &token,
            &body,
            &[("x-site", "north")],
        )
        .await;
        assert_eq!(response.status(), 200);
    }
    let (status, _) = api_send(
        &client,
        &server,
        &admin,
        Method::POST,
        "/api/v1/destinations/nothing/rotate",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = api_send(
        &client,
        &server,
        &admin,
        Method::POST,
        "/api/v1/destinations/mine/rotate",
        Some(json!({"overlap": "a while"})),
    )
    .await;
    assert_eq!(status, 422);

    // Removal: deliveries are refused at once.
    let (status, _) = api_send(
        &client,
        &server,
        &admin,
        Method::DELETE,
        &format!("/api/v1/destinations/{plug}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let body = [&body[..], b"   "].concat();
    let token = things_receiver::token::Token::sign(&body, new_secret.as_bytes()).to_hex();
    let response = deliver_with(
        &client,
        &server,
        plug,
        &token,
        &body,
        &[("x-site", "north")],
    )
    .await;
    assert_eq!(response.status(), 401);
    let (status, _) = api_send(
        &client,
        &server,
        &admin,
        Method::DELETE,
        &format!("/api/v1/destinations/{plug}"),
        None,
    )
    .await;
    assert_eq!(status, 404);

    // API keys: created (shown once), listed without keys, used, revoked.
    let (status, created) = api_send(
        &client,
        &server,
        &admin,
        Method::POST,
        "/api/v1/api-keys",
        Some(json!({"name": "grafana", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let grafana = created["key"].as_str().unwrap().to_owned();
    assert_eq!(created["scopes"], json!(["read"]));
    assert_eq!(
        api_get(&client, &server, &grafana, "/api/v1/devices")
            .await
            .0,
        200
    );
    let (status, keys) = api_get(&client, &server, &admin, "/api/v1/api-keys").await;
    assert_eq!(status, 200);
    assert!(!keys.to_string().contains(&grafana));
    let names: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["root", "reader", "grafana"]);
    for (body, expected) in [
        (json!({"name": "grafana", "scopes": ["read"]}), 409),
        (json!({"name": "x", "scopes": ["write"]}), 422),
        (json!({"name": "x", "scopes": []}), 422),
        (json!({"name": "x"}), 422),
    ] {
        let (status, json) = api_send(
            &client,
            &server,
            &admin,
            Method::POST,
            "/api/v1/api-keys",
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, expected, "{body}: {json}");
    }
    let (status, _) = api_send(
        &client,
        &server,
        &admin,
        Method::DELETE,
        "/api/v1/api-keys/grafana",
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        api_get(&client, &server, &grafana, "/api/v1/devices")
            .await
            .0,
        401
    );
    let (status, _) = api_send(
        &client,
        &server,
        &admin,
        Method::DELETE,
        "/api/v1/api-keys/grafana",
        None,
    )
    .await;
    assert_eq!(status, 404);

    // The CLI sees what the API did: one implementation.
    let listed = env.cli_ok(&["destinations", "list", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["name"], "mine");

    // A read key may do none of this.
    for (method, path) in [
        (Method::GET, "/api/v1/destinations"),
        (Method::POST, "/api/v1/destinations"),
        (Method::POST, "/api/v1/destinations/mine/rotate"),
        (Method::DELETE, "/api/v1/destinations/mine"),
        (Method::GET, "/api/v1/api-keys"),
        (Method::POST, "/api/v1/api-keys"),
        (Method::DELETE, "/api/v1/api-keys/root"),
    ] {
        let (status, json) = api_send(
            &client,
            &server,
            &reader,
            method.clone(),
            path,
            Some(json!({"name": "n", "scopes": ["admin"]})),
        )
        .await;
        assert_eq!(
            (status, json["error"].as_str()),
            (403, Some("forbidden")),
            "{method} {path}"
        );
        let (status, _) = api_send(&client, &server, "", method.clone(), path, None).await;
        assert_eq!(status, 401, "{method} {path}");
    }
    assert_eq!(
        env.cli_ok(&["destinations", "list", "--json"])
            .matches("\"name\"")
            .count(),
        1
    );
}

#[tokio::test]
async fn read_endpoints_need_the_read_scope() {
    let env = Env::new().await;
    let downlinker = env.api_key("downlinker", "downlink");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    for path in [
        "/api/v1/devices",
        "/api/v1/devices/urn:dev:IMEI:1:",
        "/api/v1/devices/urn:dev:IMEI:1:/latest",
        "/api/v1/series?device=urn:dev:IMEI:1:&name=t",
        "/api/v1/measurements",
        "/api/v1/messages",
        "/api/v1/messages/1/raw",
        "/api/v1/stream",
    ] {
        let (status, json) = api_get(&client, &server, &downlinker, path).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (403, Some("forbidden")),
            "{path}"
        );
        let (status, json) = api_get(&client, &server, "trk_wrong", path).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (401, Some("unauthenticated")),
            "{path}"
        );
    }
}

#[tokio::test]
async fn repeated_failed_authentication_is_rate_limited() {
    let env = Env::new().await;
    let key = env.api_key("reader", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let limit = things_receiver::web::auth_limit::MAX_FAILURES;
    for _ in 0..limit {
        assert_eq!(
            api_get(&client, &server, "trk_guess", "/api/v1/devices")
                .await
                .0,
            401
        );
    }
    let response = client
        .get(server.url("/api/v1/devices"))
        .bearer_auth("trk_guess")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (_, json) = status_json(response).await;
    assert_eq!(json["error"], "too_many_attempts");
    // A valid key still works (others may share the address), and a request without a key
    // is an ordinary 401.
    assert_eq!(
        api_get(&client, &server, &key, "/api/v1/devices").await.0,
        200
    );
    let response = client
        .get(server.url("/api/v1/devices"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        api_get(&client, &server, "trk_guess", "/api/v1/devices")
            .await
            .0,
        429
    );
    // Ingest is not behind API authentication.
    assert_eq!(
        client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn the_openapi_document_and_docs_page_are_served_offline() {
    let env = Env::new().await;
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let response = client
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let served = response.text().await.unwrap();
    assert_eq!(served, things_receiver::web::document_json());
    let document: Value = serde_json::from_str(&served).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    assert!(document["paths"]["/series"]["get"].is_object());
    assert!(document["paths"]["/devices/{urn}/downlinks"]["post"].is_object());
    assert!(document["paths"]["/downlinks"]["get"].is_object());
    assert!(document["paths"]["/downlinks/{id}"]["get"].is_object());
    assert!(document["paths"]["/downlinks/{id}"]["delete"].is_object());

    let response = client.get(server.url("/api/docs")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = response.text().await.unwrap();
    assert!(page.contains("/api/v1/openapi.json"));
    // Nothing loaded from elsewhere: no external scripts, styles or fonts.
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http") && !page.contains("@import")
    );
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_dropped_and_ingestion_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("reader", "read");
    let server = env.serve_in_process(&["--plain-http"]).await;
    let client = client();

    // A subscriber with a tiny receive window that reads nothing.
    let address: std::net::SocketAddr = server
        .base_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(address).await.unwrap();
    stuck
        .write_all(
            format!(
                "GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();

    // Far more measurements than the channel and the socket buffers hold; every delivery is
    // answered as usual.
    let per_pack = 4000;
    for round in 0..12_i64 {
        let records: Vec<(&str, i64, f64)> = (0..per_pack)
            .map(|i| ("level", T0 + round * per_pack + i, i as f64))
            .collect();
        let body = pack(SENSOR, &records);
        let response = deliver(&client, &server, plug, SECRET, &body).await;
        assert_eq!(response.status(), 200, "round {round}");
    }

    // Reading now, the subscriber finds it was dropped: a final event, then the end.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stuck.read(&mut buffer))
            .await
            .expect("the stream was not ended")
            .unwrap();
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&seen);
        if text.contains("event: dropped") && text.ends_with("0\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("event: measurement"),
        "{}",
        &text[..text.len().min(500)]
    );
    assert!(
        text.contains("event: dropped"),
        "the slow subscriber was not dropped"
    );
}

/// A string value holding U+0000 is valid SenML: it is stored, and every answer (the list,
/// latest values, CSV, NDJSON, the live stream) gives back exactly the string received.
#[tokio::test]
async fn string_values_with_nul_come_back_exactly_from_every_answer() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("reader", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let exact = "a\u{0}b\\u0000\"c\u{0}";

    let response = client
        .get(server.url(&format!("/api/v1/stream?device={SENSOR}&name=s")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response;
    let mut buffer = String::new();
    // The listener of a just-started server may not listen yet: resend (as a new delivery,
    // one more space) until an event arrives.
    let record = json!([{"bn": SENSOR, "bt": T0, "n": "s", "vs": exact}]);
    let body = serde_json::to_vec(&record).unwrap();
    assert!(String::from_utf8_lossy(&body).contains(r"\u0000"));
    let mut attempt = 0;
    let event = loop {
        attempt += 1;
        assert!(attempt <= 10, "no live event");
        let body = [&body[..], " ".repeat(attempt).as_bytes()].concat();
        let (status, answer) =
            status_json(deliver(&client, &server, plug, SECRET, &body).await).await;
        assert_eq!((status, answer), (200, json!({"status": "stored"})));
        let wait = next_event(&mut stream, &mut buffer, "measurement");
        if let Ok(event) = tokio::time::timeout(Duration::from_secs(2), wait).await {
            break event;
        }
    };
    assert_eq!(event["string_value"], exact);

    let (status, page) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/measurements?device={SENSOR}&limit=1"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(items(&page)[0]["string_value"], exact);

    let (status, latest) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/devices/{SENSOR}/latest"),
    )
    .await;
    assert_eq!(status, 200, "{latest}");
    assert_eq!(latest["values"][0]["string_value"], exact);

    let path = format!("/api/v1/measurements?device={SENSOR}");
    let (_, _, ndjson) = api_get_as(&client, &server, &key, &path, "application/x-ndjson").await;
    let row: Value = serde_json::from_str(ndjson.lines().next().unwrap()).unwrap();
    assert_eq!(row["string_value"], exact);
    let (_, _, csv) = api_get_as(&client, &server, &key, &path, "text/csv").await;
    let quoted = format!("\"{}\"", exact.replace('"', "\"\""));
    assert!(
        csv.lines().nth(1).unwrap().contains(&quoted),
        "{csv:?} should hold {quoted:?}"
    );
}
