//! Device registrations through the admin API (`POST /api/v1/devices`,
//! `POST /api/v1/devices/{urn}/rotate`, `DELETE /api/v1/devices/{urn}/registration`) over
//! real HTTPS against a real PostgreSQL, the server in this process: every answer, the secret
//! shown once, the admin scope, the CLI and the API seeing each other's registrations, and
//! `registered` in the device answers.

mod common;

#[path = "common/dashboard.rs"]
#[allow(dead_code)]
mod dashboard;

use common::*;
use dashboard::*;
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::Row;
use things_receiver::secrets::SecretKey;

const IMEI: &str = "urn:dev:IMEI:356938035643809:";
const DVNUUID: &str = "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:";
const SENSOR: &str = "urn:dev:DEVEUI:00000000000000A1:";
/// A device secret with characters outside KPN's strict alphabet, which "all ASCII" allows.
const GIVEN: &str = "device secret #1: printable ASCII ~ 30+";
const GIVEN_2: &str = "Second-Device-Secret-For-Rotation-0123";
/// 2024-01-01T00:00:00Z.
const T0: i64 = 1_704_067_200;

fn is_generated_secret(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn keys_of(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    keys
}

/// Sends a request with a raw body (or none) and returns status and JSON (Null if none).
async fn send_raw(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut request = client.request(method, server.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    status_json(request.send().await.unwrap()).await
}

/// The current and previous secret of the live registration, opened with the CLI's key.
async fn stored_secrets(env: &Env) -> (String, Option<String>) {
    let key = SecretKey::load(None, &env.data_dir.path().join("secret.key"), false).unwrap();
    let mut db = connect(&env.database_url).await;
    let row = sqlx::query(
        "SELECT id, secret_sealed, previous_sealed FROM device_keys WHERE removed_at IS NULL",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    let id: uuid::Uuid = row.get("id");
    let open = |sealed: Vec<u8>| {
        String::from_utf8(key.open(&sealed, id.as_bytes()).unwrap().to_vec()).unwrap()
    };
    let previous: Option<Vec<u8>> = row.get("previous_sealed");
    (open(row.get("secret_sealed")), previous.map(open))
}

/// Every row of `device_keys` as text: what anyone reading the database sees.
async fn table_text(env: &Env) -> String {
    let mut db = connect(&env.database_url).await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT t::text FROM device_keys t")
        .fetch_all(&mut db)
        .await
        .unwrap();
    rows.join("\n")
}

#[tokio::test]
async fn devices_are_registered_rotated_and_unregistered_through_the_api() {
    let env = Env::new().await;
    let admin = env.api_key("root", "admin");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let post = |path: &'static str, body: Value| {
        let (client, server, admin) = (&client, &server, &admin);
        async move { api_send(client, server, admin, Method::POST, path, Some(body)).await }
    };

    // Generated secret: in the 201 answer once, sealed at rest.
    let (status, created) = post("/api/v1/devices", json!({"urn": IMEI})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(keys_of(&created), ["created_at", "kind", "secret", "urn"]);
    assert_eq!(
        (created["urn"].as_str(), created["kind"].as_str()),
        (Some(IMEI), Some("IMEI"))
    );
    chrono::DateTime::parse_from_rfc3339(created["created_at"].as_str().unwrap()).unwrap();
    let first = created["secret"].as_str().unwrap().to_owned();
    assert!(is_generated_secret(&first), "{first}");
    assert_eq!(stored_secrets(&env).await, (first.clone(), None));
    assert!(!table_text(&env).await.contains(&first));

    // The same device in another spelling is the same registration.
    let (status, json) = post(
        "/api/v1/devices",
        json!({"urn": "URN:DEV:imei:356938035643809:"}),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (409, Some("conflict")),
        "{json}"
    );
    assert!(
        json["detail"]
            .as_str()
            .unwrap()
            .contains("already registered"),
        "{json}"
    );

    // A given secret is taken and never echoed.
    let response = client
        .post(server.url("/api/v1/devices"))
        .bearer_auth(&admin)
        .json(&json!({"urn": DVNUUID, "secret": GIVEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let text = response.text().await.unwrap();
    assert!(!text.contains(GIVEN), "{text}");
    let given: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(keys_of(&given), ["created_at", "kind", "urn"]);
    assert_eq!(given["kind"], "DVNUUID");

    // Unacceptable URNs and secrets: 422 naming the rule; nothing registered.
    for (body, says) in [
        (
            json!({"urn": "urn:dev:DEVEUI:0018B21000008C47:"}),
            "urn:dev:IMEI:<15 digits>:",
        ),
        (
            json!({"urn": "urn:dev:IMEI:35693803564380:"}),
            "urn:dev:DVNUUID:<uuid>:",
        ),
        (
            json!({"urn": "urn:dev:IMEI:490154203237518:", "secret": "too-short"}),
            "30 to 100",
        ),
        (
            json!({"urn": "urn:dev:IMEI:490154203237518:", "secret": format!("{}\t{}", "a".repeat(20), "b".repeat(20))}),
            "printable ASCII",
        ),
        (json!({"urn": 490154203237518u64}), "invalid type"),
        (json!({"urn": IMEI, "colour": "red"}), "unknown field"),
    ] {
        let (status, json) = post("/api/v1/devices", body.clone()).await;
        assert_eq!(status, 422, "{body}: {json}");
        assert!(
            json["detail"].as_str().unwrap().contains(says),
            "{body}: {json}"
        );
    }
    // A body that is not JSON: 400.
    for body in ["{\"urn\": ", "urn=x"] {
        let (status, json) = send_raw(
            &client,
            &server,
            &admin,
            Method::POST,
            "/api/v1/devices",
            Some(body),
        )
        .await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("bad_parameter")),
            "{body}: {json}"
        );
    }
    let registered: Vec<Value> =
        serde_json::from_str(&env.cli_ok(&["devices", "list", "--json"])).unwrap();
    assert_eq!(registered.len(), 2, "{registered:?}");

    // Unregister the DVNUUID device so that one live row remains for `stored_secrets`.
    let (status, json) = send_raw(
        &client,
        &server,
        &admin,
        Method::DELETE,
        &format!("/api/v1/devices/{DVNUUID}/registration"),
        None,
    )
    .await;
    assert_eq!(status, 204, "{json}");
    let (status, json) = send_raw(
        &client,
        &server,
        &admin,
        Method::DELETE,
        &format!("/api/v1/devices/{DVNUUID}/registration"),
        None,
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (404, Some("not_found")),
        "{json}"
    );

    // Rotation, the URN in any case: a new generated secret once, the old one accepted for
    // the overlap.
    let before = chrono::Utc::now();
    let (status, rotated) = post(
        "/api/v1/devices/urn:dev:imei:356938035643809:/rotate",
        json!({"overlap": "1h"}),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(
        keys_of(&rotated),
        [
            "created_at",
            "kind",
            "previous_secret_valid_until",
            "secret",
            "urn"
        ]
    );
    let second = rotated["secret"].as_str().unwrap().to_owned();
    assert!(is_generated_secret(&second) && second != first);
    let until = chrono::DateTime::parse_from_rfc3339(
        rotated["previous_secret_valid_until"].as_str().unwrap(),
    )
    .unwrap();
    let overlap = until.signed_duration_since(before);
    assert!(
        overlap > chrono::Duration::minutes(59) && overlap < chrono::Duration::minutes(61),
        "{overlap}"
    );
    assert_eq!(
        stored_secrets(&env).await,
        (second.clone(), Some(first.clone()))
    );

    // A given secret, an empty body (default overlap 24h).
    let (status, rotated) = post(
        "/api/v1/devices/urn:dev:IMEI:356938035643809:/rotate",
        json!({"secret": GIVEN_2, "overlap": "0s"}),
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(keys_of(&rotated), ["created_at", "kind", "urn"]);
    assert_eq!(stored_secrets(&env).await.0, GIVEN_2);
    let (status, rotated) = send_raw(
        &client,
        &server,
        &admin,
        Method::POST,
        &format!("/api/v1/devices/{IMEI}/rotate"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let third = rotated["secret"].as_str().unwrap().to_owned();
    let until = chrono::DateTime::parse_from_rfc3339(
        rotated["previous_secret_valid_until"].as_str().unwrap(),
    )
    .unwrap();
    assert!(until.signed_duration_since(chrono::Utc::now()) > chrono::Duration::hours(23));
    assert_eq!(
        stored_secrets(&env).await,
        (third.clone(), Some(GIVEN_2.to_owned()))
    );

    // Refused rotations change nothing.
    let rotate_path = format!("/api/v1/devices/{IMEI}/rotate");
    for (body, want, says) in [
        (r#"{"overlap": "400d"}"#, 422, "366 days"),
        (r#"{"overlap": "soon"}"#, 422, "not a duration"),
        (r#"{"secret": "short"}"#, 422, "30 to 100"),
        (r#"{"overlap": 5}"#, 422, "invalid type"),
        (r#"{"overlap": "#, 400, "body"),
    ] {
        let (status, json) = send_raw(
            &client,
            &server,
            &admin,
            Method::POST,
            &rotate_path,
            Some(body),
        )
        .await;
        assert_eq!(status, want, "{body}: {json}");
        assert!(
            json["detail"].as_str().unwrap().contains(says),
            "{body}: {json}"
        );
    }
    assert_eq!(stored_secrets(&env).await.0, third);
    let (status, json) = post(
        "/api/v1/devices/urn:dev:IMEI:490154203237518:/rotate",
        json!({}),
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (404, Some("not_found")),
        "{json}"
    );

    // No answer but the creating one ever shows a secret: not the CLI's list, not the API's.
    let listing = env.cli_ok(&["devices", "list", "--json"]) + &env.cli_ok(&["devices", "list"]);
    let (_, devices) = api_get(&client, &server, &admin, "/api/v1/devices").await;
    for secret in [&first, &second, &third, GIVEN, GIVEN_2] {
        assert!(!listing.contains(secret), "{listing}");
        assert!(!devices.to_string().contains(secret), "{devices}");
        assert!(!table_text(&env).await.contains(secret));
    }

    // The OpenAPI document lists the three operations beside the device reads.
    let document: Value = client
        .get(server.url("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = &document["paths"];
    assert_eq!(paths["/devices"]["post"]["operationId"], "register_device");
    assert!(paths["/devices"]["get"].is_object());
    assert_eq!(
        paths["/devices/{urn}/rotate"]["post"]["operationId"],
        "rotate_device_secret"
    );
    assert_eq!(
        paths["/devices/{urn}/registration"]["delete"]["operationId"],
        "unregister_device"
    );
    for (path, method, statuses) in [
        ("/devices", "post", &["201", "400", "403", "409", "422"][..]),
        (
            "/devices/{urn}/rotate",
            "post",
            &["200", "400", "403", "404", "422"],
        ),
        (
            "/devices/{urn}/registration",
            "delete",
            &["204", "403", "404"],
        ),
    ] {
        for status in statuses {
            assert!(
                paths[path][method]["responses"][status].is_object(),
                "{method} {path} documents no {status}"
            );
        }
    }
    assert!(
        document["components"]["schemas"]["Device"]["properties"]["registered"].is_object(),
        "{}",
        document["components"]["schemas"]["Device"]
    );
}

#[tokio::test]
async fn devices_show_whether_they_are_registered_and_keep_their_data_when_unregistered() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let admin = env.api_key("root", "admin");
    let reader = env.api_key("reader", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    for device in [SENSOR, IMEI, DVNUUID] {
        let body = pack(device, &[("temperature", T0, 21.5)]);
        let status = deliver(&client, &server, plug, SECRET, &body)
            .await
            .status();
        assert_eq!(status, 200);
    }
    let registered = |page: &Value| -> Vec<(String, bool)> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["urn"].as_str().unwrap().to_owned(),
                    d["registered"].as_bool().unwrap(),
                )
            })
            .collect()
    };
    let list = || {
        let (client, server, reader) = (&client, &server, &reader);
        async move { api_get(client, server, reader, "/api/v1/devices").await.1 }
    };
    let one = |urn: &'static str| {
        let (client, server, reader) = (&client, &server, &reader);
        async move { api_get(client, server, reader, &format!("/api/v1/devices/{urn}")).await }
    };
    let none = vec![
        (SENSOR.to_owned(), false),
        (IMEI.to_owned(), false),
        (DVNUUID.to_owned(), false),
    ];
    assert_eq!(registered(&list().await), none);

    // Registered with the CLI: seen by the API, and managed through it.
    env.cli_ok(&["devices", "add", IMEI, "--secret", GIVEN]);
    let page = list().await;
    assert_eq!(
        registered(&page),
        [
            (SENSOR.to_owned(), false),
            (IMEI.to_owned(), true),
            (DVNUUID.to_owned(), false)
        ]
    );
    // The rest of the answer is as it was.
    assert_eq!(
        keys_of(&page["items"][1]),
        [
            "first_seen",
            "kind",
            "last_seen",
            "message_count",
            "registered",
            "urn"
        ]
    );
    let (status, device) = one(IMEI).await;
    assert_eq!(
        (status, device["registered"].as_bool()),
        (200, Some(true)),
        "{device}"
    );
    let (status, _) = api_send(
        &client,
        &server,
        &admin,
        Method::POST,
        &format!("/api/v1/devices/{IMEI}/rotate"),
        Some(json!({"secret": GIVEN_2})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        stored_secrets(&env).await,
        (GIVEN_2.to_owned(), Some(GIVEN.to_owned()))
    );

    // Unregistered through the API: gone for the CLI, the device and its data stay.
    let (status, _) = send_raw(
        &client,
        &server,
        &admin,
        Method::DELETE,
        &format!("/api/v1/devices/{IMEI}/registration"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(
        env.cli_ok(&["devices", "list"])
            .contains("No registered devices")
    );
    assert_eq!(registered(&list().await), none);
    let (status, device) = one(IMEI).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            device["registered"].as_bool(),
            device["message_count"].as_i64()
        ),
        (Some(false), Some(1))
    );
    let (status, latest) = api_get(
        &client,
        &server,
        &reader,
        &format!("/api/v1/devices/{IMEI}/latest"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(latest["values"][0]["value"], 21.5);

    // Registered through the API: seen by the CLI, removed by it, 404 for the API after.
    let (status, _) = api_send(
        &client,
        &server,
        &admin,
        Method::POST,
        "/api/v1/devices",
        Some(json!({"urn": DVNUUID})),
    )
    .await;
    assert_eq!(status, 201);
    let cli: Vec<Value> =
        serde_json::from_str(&env.cli_ok(&["devices", "list", "--json"])).unwrap();
    assert_eq!(cli.len(), 1);
    assert_eq!(
        (cli[0]["urn"].as_str(), cli[0]["kind"].as_str()),
        (Some(DVNUUID), Some("DVNUUID"))
    );
    let (_, device) = one(DVNUUID).await;
    assert_eq!(device["registered"], true);
    env.cli_ok(&["devices", "remove", DVNUUID]);
    let (status, _) = send_raw(
        &client,
        &server,
        &admin,
        Method::DELETE,
        &format!("/api/v1/devices/{DVNUUID}/registration"),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(registered(&list().await), none);
}

#[tokio::test]
async fn registrations_need_the_admin_scope() {
    let env = Env::new().await;
    env.cli_ok(&["devices", "add", IMEI, "--secret", GIVEN]);
    let reader = env.api_key("reader", "read");
    let sender = env.api_key("sender", "downlink");
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let requests = [
        (
            Method::POST,
            "/api/v1/devices".to_owned(),
            Some(r#"{"urn": "urn:dev:IMEI:490154203237518:"}"#),
        ),
        (
            Method::POST,
            format!("/api/v1/devices/{IMEI}/rotate"),
            Some("{}"),
        ),
        (
            Method::DELETE,
            format!("/api/v1/devices/{IMEI}/registration"),
            None,
        ),
    ];
    for (method, path, body) in &requests {
        for key in [&reader, &sender] {
            let (status, json) = send_raw(&client, &server, key, method.clone(), path, *body).await;
            assert_eq!(
                (status, json["error"].as_str()),
                (403, Some("forbidden")),
                "{method} {path}"
            );
            assert!(json["detail"].as_str().unwrap().contains("admin"), "{json}");
        }
        let mut request = client.request(method.clone(), server.url(path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(*body);
        }
        let (status, _) = status_json(request.send().await.unwrap()).await;
        assert_eq!(status, 401, "{method} {path}");
    }
    // Nothing changed.
    let list: Vec<Value> =
        serde_json::from_str(&env.cli_ok(&["devices", "list", "--json"])).unwrap();
    assert_eq!(list.len(), 1);
    assert!(
        list[0].get("previous_secret_valid_until").is_none(),
        "{list:?}"
    );
    assert_eq!(stored_secrets(&env).await, (GIVEN.to_owned(), None));
}
