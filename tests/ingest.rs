//! Destination ingestion end to end over HTTPS against a real PostgreSQL: the answers and
//! what is stored on the in-process server; restarts, outages and metrics on the real binary.

mod common;

use common::*;
use serde_json::{Value, json};
use sqlx::Row;
use things_receiver::token::Token;

#[tokio::test]
async fn fixtures_are_stored_and_read_back_resolved() {
    let env = Env::new().await;
    let plug = env.add_destination("lora", &[]);
    let key = env.api_key("dash", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();

    for name in [
        "value-kinds.json",
        "lora-raw-legacy.json",
        "lora-raw-merged.json",
        "lora-location.json",
        "m2m-uplink.json",
        "internet-uplink-no-time.json",
    ] {
        let (status, body) =
            status_json(deliver(&client, &server, plug, SECRET, &fixture(name)).await).await;
        assert_eq!((status, body), (200, json!({"status": "stored"})), "{name}");
    }

    // Lower-case query for an upper-case device: matched case-insensitively, shown as sent.
    let (status, page) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/measurements?device=urn:dev:deveui:0123456789abcdef:",
    )
    .await;
    assert_eq!(status, 200);
    let device = "urn:dev:DEVEUI:0123456789ABCDEF:";
    assert_eq!(
        page,
        json!({"items": [
            {"device": device, "name": "batteryVoltage", "unit": "V", "time": "2020-03-31T10:32:40Z", "value": 3.6},
            {"device": device, "name": "image", "time": "2020-03-31T10:32:30Z", "data_value": "aGFsbG9vb29vISE="},
            {"device": device, "name": "modus", "time": "2020-03-31T10:32:30Z", "string_value": "Active"},
            {"device": device, "name": "active", "time": "2020-03-31T10:32:30Z", "bool_value": true},
            {"device": device, "name": "temperature", "unit": "Cel", "time": "2020-03-31T10:32:30Z", "value": 20.5},
        ], "next_cursor": null})
    );

    // The legacy base-only record is no measurement: two rows, at bt.
    let (_, page) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/measurements?device=urn:dev:DEVEUI:0018B21000008C47:",
    )
    .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{page}");
    assert!(items.iter().all(|i| i["time"] == "2022-06-02T18:23:08Z"));
    assert_eq!(
        items.iter().find(|i| i["name"] == "port").unwrap()["value"],
        1.0
    );

    // Exponent bt and a 3.0 port.
    let (_, page) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/measurements?device=urn:dev:DEVEUI:0059AC0000000000:&name=port",
    )
    .await;
    assert_eq!(page["items"][0]["value"], 3.0);
    assert_eq!(page["items"][0]["time"], "2025-12-26T13:13:40Z");

    // No time at all: receipt time, which is now.
    let (_, page) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/measurements?device=urn:dev:DVNUUID:3F2504E0-4F89-41D3-9A0C-0305E82C3301:&name=co2",
    )
    .await;
    let time =
        chrono::DateTime::parse_from_rfc3339(page["items"][0]["time"].as_str().unwrap()).unwrap();
    let age = chrono::Utc::now().signed_duration_since(time);
    assert!(
        age.num_seconds().abs() < 60,
        "receipt time expected, got {time}"
    );

    // Messages keep the exact bytes.
    let (_, messages) = api_get(&client, &server, &key, "/api/v1/messages?limit=10").await;
    let items = messages["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    let newest = &items[0];
    assert_eq!(
        newest["device"],
        "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:"
    );
    assert_eq!(newest["status"], "stored");
    assert_eq!(newest["plug"], plug.to_string());
    let raw = client
        .get(server.url(&format!("/api/v1/messages/{}/raw", newest["id"])))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&raw[..], &fixture("internet-uplink-no-time.json")[..]);

    // Devices and latest values were maintained.
    let mut db = connect(&env.database_url).await;
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(devices, 6);
    let latest: f64 = sqlx::query_scalar(
        "SELECT l.value FROM latest_values l JOIN devices d ON d.id = l.device_id \
         WHERE d.urn_key = 'urn:dev:DEVEUI:0123456789ABCDEF:' AND l.name = 'temperature'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(latest, 20.5);
}

#[tokio::test]
async fn malformed_headers_are_400_with_a_reason() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let body = fixture("value-kinds.json");
    let token = Token::sign(&body, SECRET.as_bytes()).to_hex();

    let send = |headers: Vec<(&'static str, String)>| {
        let mut request = client.post(server.url("/ingest/kpn")).body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { status_json(request.send().await.unwrap()).await }
    };
    let (status, json) = send(vec![("Things-Message-Token", token.clone())]).await;
    assert_eq!(status, 400);
    assert_eq!(json["error"], "missing_header");
    assert!(
        json["detail"]
            .as_str()
            .unwrap()
            .contains("Things-Plug-UUID")
    );

    let (status, json) = send(vec![("Things-Plug-UUID", plug.to_string())]).await;
    assert_eq!(status, 400);
    assert!(
        json["detail"]
            .as_str()
            .unwrap()
            .contains("Things-Message-Token")
    );

    let (status, json) = send(vec![
        ("Things-Plug-UUID", "not-a-uuid".into()),
        ("Things-Message-Token", token.clone()),
    ])
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("malformed_header"))
    );

    for bad in [&token[..63], "zz", &format!("{token}00")] {
        let (status, json) = send(vec![
            ("Things-Plug-UUID", plug.to_string()),
            ("Things-Message-Token", bad.to_owned()),
        ])
        .await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("malformed_header")),
            "{bad}"
        );
    }

    // KPN can be configured to send GET with the pack as body.
    let r = client
        .get(server.url("/ingest/kpn"))
        .header("Things-Plug-UUID", plug.to_string())
        .header("Things-Message-Token", token.clone())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(status_json(r).await, (200, json!({"status": "stored"})));

    // Upper-case hex is the same token.
    let (status, json) = send(vec![
        ("Things-Plug-UUID", plug.to_string()),
        ("Things-Message-Token", token.to_uppercase()),
    ])
    .await;
    assert_eq!((status, json), (200, json!({"status": "duplicate"})));
}

#[tokio::test]
async fn unknown_plug_and_wrong_token_look_the_same() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let body = fixture("value-kinds.json");

    let wrong_token = deliver(
        &client,
        &server,
        plug,
        "Another-Secret#0123456789abcdefgh",
        &body,
    )
    .await;
    let unknown_plug = deliver(&client, &server, uuid::Uuid::new_v4(), SECRET, &body).await;
    assert_eq!(wrong_token.status(), 401);
    assert_eq!(unknown_plug.status(), 401);
    let headers = |r: &reqwest::Response| {
        let mut h: Vec<(String, String)> = r
            .headers()
            .iter()
            // Both differ per answer whatever the request was.
            .filter(|(n, _)| *n != "date" && *n != "x-request-id")
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(headers(&wrong_token), headers(&unknown_plug));
    let a = wrong_token.bytes().await.unwrap();
    let b = unknown_plug.bytes().await.unwrap();
    assert_eq!(a, b);
    assert!(!String::from_utf8_lossy(&a).contains(&plug.to_string()));

    // A modified body with the original token is also just "not verified".
    let token = Token::sign(&body, SECRET.as_bytes()).to_hex();
    let mut tampered = body.clone();
    tampered.push(b' ');
    let r = deliver_with(&client, &server, plug, &token, &tampered, &[]).await;
    assert_eq!(r.status(), 401);

    let mut db = connect(&env.database_url).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn oversized_bodies_are_413_before_anything_else() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&["--max-body", "1KiB"]).await;
    let client = client();

    let fits = format!(
        r#"[{{"bn":"urn:dev:DEVEUI:0000000000000001:","n":"s","vs":"{}"}}]"#,
        "a".repeat(900)
    );
    assert!(fits.len() <= 1024);
    assert_eq!(
        deliver(&client, &server, plug, SECRET, fits.as_bytes())
            .await
            .status(),
        200
    );

    let too_big = format!(
        r#"[{{"bn":"urn:dev:DEVEUI:0000000000000001:","n":"s","vs":"{}"}}]"#,
        "a".repeat(2000)
    );
    let (status, json) =
        status_json(deliver(&client, &server, plug, SECRET, too_big.as_bytes()).await).await;
    assert_eq!(status, 413);
    assert_eq!(json["error"], "payload_too_large");
    // Even without any headers, size comes first.
    let r = client
        .post(server.url("/ingest/kpn"))
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
}

#[tokio::test]
async fn a_delivery_is_stored_once_however_often_it_arrives() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let body = fixture("value-kinds.json");

    let (_, first) = status_json(deliver(&client, &server, plug, SECRET, &body).await).await;
    let (status, second) = status_json(deliver(&client, &server, plug, SECRET, &body).await).await;
    assert_eq!(first, json!({"status": "stored"}));
    assert_eq!((status, second), (200, json!({"status": "duplicate"})));

    // A burst of identical retries, concurrently, of a new body.
    let other = fixture("m2m-uplink.json");
    let sends = (0..16).map(|_| deliver(&client, &server, plug, SECRET, &other));
    let statuses: Vec<u16> = futures_util::future::join_all(sends)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");

    let mut db = connect(&env.database_url).await;
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM messages) AS m, (SELECT count(*) FROM measurements) AS r",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(row.get::<i64, _>("m"), 2);
    assert_eq!(row.get::<i64, _>("r"), 5 + 3);
}

type DeviceSeen = (String, chrono::DateTime<chrono::Utc>, i64);

async fn devices_seen(db: &mut sqlx::PgConnection) -> Vec<DeviceSeen> {
    sqlx::query_as("SELECT urn, last_seen, message_count FROM devices ORDER BY urn")
        .fetch_all(db)
        .await
        .unwrap()
}

async fn latest_received(db: &mut sqlx::PgConnection) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT max(received_at) FROM messages")
        .fetch_one(db)
        .await
        .unwrap()
}

/// `last_seen` is the reception of the device's latest stored delivery, for every device with
/// a record in it, also when the writer already knows the device (the one-statement path). A
/// retry is KPN repeating itself, not the device: it leaves `last_seen` where it was.
#[tokio::test]
async fn last_seen_follows_every_stored_delivery_of_every_device_in_it() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let mut db = connect(&env.database_url).await;
    let pack = |v: u32| {
        format!(
            r#"[{{"bn":"urn:dev:IMEI:356938035643809:","n":"t","v":{v}}},
                {{"bn":"urn:dev:IMEI:490154203237518:","n":"t","v":{v}}}]"#
        )
        .into_bytes()
    };
    // More deliveries than the writer has transaction slots, so that every slot knows the
    // devices by the last ones.
    for v in 0..6 {
        let (status, json) =
            status_json(deliver(&client, &server, plug, SECRET, &pack(v)).await).await;
        assert_eq!(
            (status, json["status"].as_str()),
            (200, Some("stored")),
            "{json}"
        );
        let received = latest_received(&mut db).await;
        let devices = devices_seen(&mut db).await;
        assert_eq!(devices.len(), 2, "{devices:?}");
        for (urn, seen, _) in &devices {
            assert_eq!(*seen, received, "{urn} after delivery {v}");
        }
        // The message counts as the first record's device's.
        assert_eq!(devices[0].2 + devices[1].2, i64::from(v) + 1, "{devices:?}");
    }
    let before = devices_seen(&mut db).await;
    let (status, json) = status_json(deliver(&client, &server, plug, SECRET, &pack(5)).await).await;
    assert_eq!(
        (status, json["status"].as_str()),
        (200, Some("duplicate")),
        "{json}"
    );
    assert_eq!(devices_seen(&mut db).await, before);
}

#[tokio::test]
async fn verified_bodies_that_are_not_senml_are_quarantined_not_lost() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("dash", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();

    let cases: [(&[u8], &str); 6] = [
        (
            // A string value may hold NUL (see the API tests); a name may not.
            br#"[{"bn":"urn:dev:DEVEUI:0000000000000001:","n":"t\u0000","vs":"ab"}]"#,
            "NUL",
        ),
        (b"this is not json", "invalid JSON"),
        (br#"{"n":"a","v":1}"#, "not a JSON array"),
        (
            br#"[{"bn":"urn:dev:DEVEUI:0000000000000001:","n":"t","v":1,"vs":"x"}]"#,
            "more than one value",
        ),
        (
            br#"[{"bn":"urn:dev:DEVEUI:0000000000000001:","n":"bad name","v":1}]"#,
            "forbids",
        ),
        (br#"[{"bn":"x:","n":"t","v":1,"foo_":2}]"#, "foo_"),
    ];
    for (body, _) in &cases {
        let (status, json) = status_json(deliver(&client, &server, plug, SECRET, body).await).await;
        assert_eq!((status, json), (200, json!({"status": "quarantined"})));
    }
    let (status, page) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/messages?status=quarantined",
    )
    .await;
    assert_eq!(status, 200);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), cases.len());
    // Newest first: reverse order of sending.
    for (item, (body, reason)) in items.iter().zip(cases.iter().rev()) {
        let error = item["decode_error"].as_str().unwrap();
        assert!(
            error.contains(reason),
            "{error:?} should mention {reason:?}"
        );
        let raw = client
            .get(server.url(&format!("/api/v1/messages/{}/raw", item["id"])))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&raw[..], *body);
    }
    let (_, stored) = api_get(&client, &server, &key, "/api/v1/messages?status=stored").await;
    assert_eq!(stored["items"], json!([]));
    let (_, measurements) = api_get(&client, &server, &key, "/api/v1/measurements").await;
    assert_eq!(measurements["items"], json!([]));
}

#[tokio::test]
async fn a_pending_destination_is_bound_by_its_first_delivery() {
    let env = Env::new().await;
    let server = env.serve_in_process(&[]).await;
    let client = client();

    // Added while the server runs: the change must reach it through PostgreSQL.
    let out = env.cli_ok(&["destinations", "add", "--name", "pending", "--json"]);
    let added: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["state"], "pending");
    assert_eq!(added["plug"], Value::Null);
    let secret = added["secret"].as_str().unwrap().to_owned();
    assert!(secret.len() >= 32);
    wait_ready(&client, &server, |j| j["destinations"]["pending"] == 1).await;

    let plug = uuid::Uuid::new_v4();
    let body = fixture("m2m-uplink.json");
    let r = deliver(&client, &server, plug, &secret, &body).await;
    assert_eq!(r.status(), 200);

    let listed: Value =
        serde_json::from_str(&env.cli_ok(&["destinations", "list", "--json"])).unwrap();
    assert_eq!(listed[0]["plug"], plug.to_string());
    assert_eq!(listed[0]["state"], "active");
    assert!(!serde_json::to_string(&listed).unwrap().contains(&secret));

    // Bound now: the same secret under another plug is no longer accepted.
    let r = deliver(
        &client,
        &server,
        uuid::Uuid::new_v4(),
        &secret,
        &fixture("value-kinds.json"),
    )
    .await;
    assert_eq!(r.status(), 401);
    let r = deliver(
        &client,
        &server,
        plug,
        &secret,
        &fixture("value-kinds.json"),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_valid_for_the_overlap_only() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let second = "Second#Secret-0123456789abcdefghij";
    let third = "Third#Secret-0123456789abcdefghijk";
    let send = |secret: &'static str, n: u32| {
        let body = format!(r#"[{{"bn":"urn:dev:DEVEUI:00000000000000AA:","n":"c","v":{n}}}]"#);
        let (client, server) = (&client, &server);
        async move {
            deliver(client, server, plug, secret, body.as_bytes())
                .await
                .status()
                .as_u16()
        }
    };

    let plug_text = plug.to_string();
    let out = change_destinations(
        &env,
        &client,
        &server,
        &[
            "destinations",
            "rotate",
            &plug_text,
            "--secret",
            second,
            "--overlap",
            "1h",
            "--json",
        ],
    )
    .await;
    assert!(!out.contains(second), "a given secret is not echoed");
    assert_eq!(send(SECRET, 1).await, 200);
    assert_eq!(send(second, 2).await, 200);

    change_destinations(
        &env,
        &client,
        &server,
        &[
            "destinations",
            "rotate",
            "d",
            "--secret",
            third,
            "--overlap",
            "0s",
        ],
    )
    .await;
    assert_eq!(send(second, 3).await, 401);
    assert_eq!(send(SECRET, 4).await, 401);
    assert_eq!(send(third, 5).await, 200);

    // Removal stops deliveries and keeps what was stored.
    change_destinations(
        &env,
        &client,
        &server,
        &["destinations", "remove", &plug_text],
    )
    .await;
    assert_eq!(send(third, 6).await, 401);
    let mut db = connect(&env.database_url).await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stored, 3);
}

#[tokio::test]
async fn required_static_headers_are_checked_and_extra_headers_kept() {
    let env = Env::new().await;
    let plug = env.add_destination(
        "d",
        &[
            "--require-header",
            "device-type=dragino-lds01",
            "--response-code",
            "202",
        ],
    );
    let key = env.api_key("dash", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let body = fixture("lora-raw-legacy.json");
    let token = Token::sign(&body, SECRET.as_bytes()).to_hex();

    let missing = deliver_with(&client, &server, plug, &token, &body, &[]).await;
    assert_eq!(missing.status(), 401);
    let wrong = deliver_with(
        &client,
        &server,
        plug,
        &token,
        &body,
        &[("device-type", "other")],
    )
    .await;
    assert_eq!(wrong.status(), 401);
    let right = deliver_with(
        &client,
        &server,
        plug,
        &token,
        &body,
        &[
            ("Device-Type", "dragino-lds01"),
            ("Authorization", "Basic c2VjcmV0"),
            ("X-Route", "north"),
        ],
    )
    .await;
    assert_eq!(right.status(), 202, "the destination's response code");

    let (_, page) = api_get(&client, &server, &key, "/api/v1/messages").await;
    assert_eq!(
        page["items"][0]["headers"],
        json!({"device-type": "dragino-lds01", "x-route": "north"})
    );
}

#[tokio::test]
async fn the_api_requires_a_key_with_the_read_scope() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let reader = env.api_key("reader", "read");
    let downlinker = env.api_key("downlinker", "downlink");
    let admin = env.api_key("admin", "admin");
    let revoked = env.api_key("old", "read");
    env.cli_ok(&["api-keys", "revoke", "old"]);
    let server = env.serve_in_process(&[]).await;
    let client = client();

    for n in 0..5 {
        let body = format!(
            r#"[{{"bn":"urn:dev:IMEI:356938035643809:","bt":1700000000,"n":"n","v":{n}}}]"#
        );
        assert_eq!(
            deliver(&client, &server, plug, SECRET, body.as_bytes())
                .await
                .status(),
            200
        );
    }

    let r = client
        .get(server.url("/api/v1/measurements"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        api_get(&client, &server, "trk_nonsense", "/api/v1/measurements")
            .await
            .0,
        401
    );
    assert_eq!(
        api_get(&client, &server, &revoked, "/api/v1/measurements")
            .await
            .0,
        401
    );
    let (status, json) = api_get(&client, &server, &downlinker, "/api/v1/measurements").await;
    assert_eq!((status, json["error"].as_str()), (403, Some("forbidden")));
    assert_eq!(
        api_get(&client, &server, &admin, "/api/v1/measurements")
            .await
            .0,
        200
    );

    for (query, name) in [
        ("from=yesterday", "from"),
        ("limit=0", "limit"),
        ("cursor=xyz", "cursor"),
    ] {
        let (status, json) = api_get(
            &client,
            &server,
            &reader,
            &format!("/api/v1/measurements?{query}"),
        )
        .await;
        assert_eq!(status, 400, "{query}");
        assert!(json["detail"].as_str().unwrap().contains(name), "{json}");
    }
    let (status, _) = api_get(&client, &server, &reader, "/api/v1/messages?status=maybe").await;
    assert_eq!(status, 400);
    let (status, _) = api_get(&client, &server, &reader, "/api/v1/messages/999999/raw").await;
    assert_eq!(status, 404);

    // Keyset pagination walks every item exactly once, newest first.
    let mut seen = Vec::new();
    let mut path = "/api/v1/measurements?limit=2".to_owned();
    loop {
        let (status, page) = api_get(&client, &server, &reader, &path).await;
        assert_eq!(status, 200);
        seen.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["value"].as_f64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/api/v1/measurements?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, vec![4.0, 3.0, 2.0, 1.0, 0.0]);

    // Time filters: from inclusive, to exclusive.
    let (_, page) = api_get(
        &client,
        &server,
        &reader,
        "/api/v1/measurements?from=2023-11-14T22:13:20Z&to=2023-11-14T22:13:21Z&limit=1",
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let (_, page) = api_get(
        &client,
        &server,
        &reader,
        "/api/v1/measurements?to=2023-11-14T22:13:20Z",
    )
    .await;
    assert_eq!(page["items"], json!([]));
}

#[tokio::test]
async fn data_survives_a_restart_and_secrets_still_verify() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("dash", "read");
    let server = env.serve(&[]);
    let client = client();
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &fixture("m2m-uplink.json"))
            .await
            .status(),
        200
    );
    assert!(server.stop().await.success());

    let server = env.serve(&[]);
    let (_, page) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/measurements?device=urn:dev:IMEI:356938035643809:",
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    // The retry of the pre-restart delivery is recognised as a duplicate.
    let (_, json) =
        status_json(deliver(&client, &server, plug, SECRET, &fixture("m2m-uplink.json")).await)
            .await;
    assert_eq!(json, json!({"status": "duplicate"}));
}

/// Cuts the server off its database: no new connections, existing ones terminated.
async fn cut_off(env: &Env) -> sqlx::PgConnection {
    let mut admin = connect(admin_url().await).await;
    let db = &env.database_name;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS false; \
         SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    // Termination is asynchronous, and a connection that passed the check just before the
    // ALTER may still arrive: terminate until none is left.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(db)
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backends still connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    admin
}

async fn reconnect(env: &Env, admin: &mut sqlx::PgConnection) {
    let db = &env.database_name;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS true"
    )))
    .execute(admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_database_outage_is_spooled_and_replayed_without_loss_or_duplicates() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve(&["--db-timeout", "1s", "--spool-after", "1s"]);
    let client = client();
    // The status key must have worked once to be accepted while the database is away.
    readyz(&client, &server).await;
    let mut admin = cut_off(&env).await;

    let body = fixture("value-kinds.json");
    let (status, json) = status_json(deliver(&client, &server, plug, SECRET, &body).await).await;
    assert_eq!((status, json), (200, json!({"status": "spooled"})));
    let other = fixture("m2m-uplink.json");
    let (status, json) = status_json(deliver(&client, &server, plug, SECRET, &other).await).await;
    assert_eq!((status, json), (200, json!({"status": "spooled"})));
    // KPN's retry of a spooled delivery is spooled again; replay stores it once.
    let (status, _) = status_json(deliver(&client, &server, plug, SECRET, &body).await).await;
    assert_eq!(status, 200);
    wait_ready(&client, &server, |j| j["spool"]["deliveries"] == 3).await;
    // While the destination list cannot be refreshed, a failed verification may be a change
    // we have not heard of: 503 lets KPN retry instead of dropping it.
    let r = deliver(
        &client,
        &server,
        plug,
        "Wrong#Secret-0123456789abcdefghij",
        &body,
    )
    .await;
    assert_eq!(r.status(), 503);

    reconnect(&env, &mut admin).await;
    wait_ready(&client, &server, |j| {
        j["spool"]["deliveries"] == 0 && j["database"] == "ok"
    })
    .await;
    let mut db = connect(&env.database_url).await;
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM messages) AS m, (SELECT count(*) FROM measurements) AS r",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((row.get::<i64, _>("m"), row.get::<i64, _>("r")), (2, 5 + 3));
    let (_, json) = status_json(deliver(&client, &server, plug, SECRET, &body).await).await;
    assert_eq!(json, json!({"status": "duplicate"}));
    wait_ready(&client, &server, |j| j["destinations"]["current"] == true).await;
    let r = deliver(
        &client,
        &server,
        plug,
        "Wrong#Secret-0123456789abcdefghij",
        &body,
    )
    .await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_full_spool_answers_503_with_retry_after() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve(&[
        "--db-timeout",
        "1s",
        "--spool-after",
        "1s",
        "--spool-max",
        "64",
    ]);
    let client = client();
    let mut admin = cut_off(&env).await;
    let body = fixture("value-kinds.json");
    let r = deliver(&client, &server, plug, SECRET, &body).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    reconnect(&env, &mut admin).await;
    wait_ready(&client, &server, |j| j["database"] == "ok").await;
    let (status, json) = status_json(deliver(&client, &server, plug, SECRET, &body).await).await;
    assert_eq!((status, json), (200, json!({"status": "stored"})));
}

#[tokio::test]
async fn metrics_count_outcomes_batches_and_failures() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve(&[]);
    let client = client();
    let body = fixture("value-kinds.json");
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &body)
            .await
            .status(),
        200
    );
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &body)
            .await
            .status(),
        200
    );
    assert_eq!(
        deliver(&client, &server, plug, SECRET, b"garbage")
            .await
            .status(),
        200
    );
    assert_eq!(
        deliver(&client, &server, uuid::Uuid::new_v4(), SECRET, &body)
            .await
            .status(),
        401
    );

    // The metrics need a read key (the page is no longer open to loopback). A failed
    // verification is counted without saying whether the plug was unknown or the token
    // wrong: anyone who may read the metrics must not learn which plugs exist.
    let key = env.api_key("scraper", "read");
    let text = client
        .get(server.url("/metrics"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |needle: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{needle} missing from:\n{text}"))
    };
    let outcome =
        |o: &str| format!("things_ingest_requests_total{{door=\"destination\",outcome=\"{o}\"}}");
    assert_eq!(value(&outcome("stored")), 1.0);
    assert_eq!(value(&outcome("duplicate")), 1.0);
    assert_eq!(value(&outcome("quarantined")), 1.0);
    assert_eq!(value(&outcome("not_verified")), 1.0);
    assert_eq!(
        value("things_verification_failures_total{door=\"destination\"}"),
        1.0
    );
    assert!(!text.contains("unknown_plug"), "{text}");
    assert_eq!(value("things_writer_batch_size_count"), 3.0);
    assert!(text.contains("things_writer_commit_seconds_bucket"));
    assert!(text.contains("things_db_pool_connections"));
    assert!(text.contains("things_spool_records 0"));
}

/// Times PostgreSQL cannot hold (`bt: -3e11`, relative, lands before year 1) or RFC 3339
/// cannot write (`bt: 8e12`, year 255479) are refused by the resolver with its own reason,
/// so the database never sees them and the batches they share with good deliveries commit
/// as one transaction each.
#[tokio::test]
async fn times_outside_years_1_to_9999_are_quarantined_without_degrading_the_batch() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("dash", "read");
    let server = env.serve(&[]);
    let client = client();

    let device = "urn:dev:DEVEUI:00000000000000AA:";
    let good = |i: u32| {
        format!(
            r#"[{{"bn":"{device}","bt":{},"n":"t","v":{i}}}]"#,
            1_700_000_000 + i
        )
    };
    let bad = [
        format!(r#"[{{"bn":"{device}","bt":-3e11,"n":"t","v":1}}]"#),
        format!(r#"[{{"bn":"{device}","bt":8e12,"n":"t","v":1}}]"#),
    ];
    let mut bodies: Vec<String> = (0..40).map(good).collect();
    bodies.insert(10, bad[0].clone());
    bodies.insert(30, bad[1].clone());
    let answers =
        futures_util::future::join_all(bodies.iter().map(|body| {
            let client = client.clone();
            let server = &server;
            async move {
                status_json(deliver(&client, server, plug, SECRET, body.as_bytes()).await).await
            }
        }))
        .await;
    for (body, answer) in bodies.iter().zip(&answers) {
        let expected = if bad.contains(body) {
            "quarantined"
        } else {
            "stored"
        };
        assert_eq!(answer, &(200, json!({"status": expected})), "{body}");
    }

    let (status, page) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/messages?status=quarantined",
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let errors: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["decode_error"].as_str().unwrap())
        .collect();
    assert_eq!(
        errors, ["record 0: time is outside the years 0001 to 9999"; 2],
        "our own reason, no database text"
    );
    let (status, page) = api_get(&client, &server, &key, "/api/v1/measurements?limit=1000").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 40);

    let metrics = client
        .get(server.url("/metrics"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let degraded = metrics
        .lines()
        .find(|l| l.starts_with("things_writer_degraded_batches_total"))
        .unwrap_or_else(|| panic!("no degraded-batch counter in:\n{metrics}"));
    assert_eq!(degraded, "things_writer_degraded_batches_total 0");
}
