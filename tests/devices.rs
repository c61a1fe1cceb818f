//! `things-receiver devices ...` against a real database: registrations for direct ingestion,
//! their secrets sealed at rest, soft removal, and the notification other processes follow.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use sqlx::Row;
use things_receiver::secrets::SecretKey;

const IMEI: &str = "urn:dev:IMEI:356938035643809:";
const DVNUUID: &str = "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:";
/// A device secret with characters outside KPN's strict alphabet, which "all ASCII" allows.
const GIVEN: &str = "device secret #1: printable ASCII ~ 30+";
const GIVEN_2: &str = "Second-Device-Secret-For-Rotation-0123";

fn is_generated_secret(line: &str) -> bool {
    line.len() == 40 && line.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The key the CLI sealed with (created in the data directory on first use).
fn sealing_key(env: &Env) -> SecretKey {
    SecretKey::load(None, &env.data_dir.path().join("secret.key"), false).unwrap()
}

/// Every row of `device_keys` as text, bytea columns in hex: what anyone reading the
/// database (or a dump of it) sees.
async fn table_text(env: &Env) -> String {
    let mut db = connect(&env.database_url).await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT t::text FROM device_keys t")
        .fetch_all(&mut db)
        .await
        .unwrap();
    rows.join("\n")
}

fn assert_not_stored_in_plain_text(table: &str, secret: &str) {
    assert!(!table.contains(secret), "secret in plain text: {table}");
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!table.contains(&hex), "secret in plain bytes: {table}");
}

#[tokio::test]
async fn add_prints_a_generated_secret_once_and_refuses_bad_or_duplicate_urns() {
    let env = Env::new().await;

    let out = env.cli_ok(&["devices", "add", IMEI]);
    let secrets: Vec<&str> = out.lines().filter(|l| is_generated_secret(l)).collect();
    assert_eq!(secrets.len(), 1, "{out}");
    let secret = secrets[0];
    assert_eq!(out.matches(secret).count(), 1, "{out}");
    assert!(out.contains(IMEI) && out.contains("IMEI"), "{out}");
    assert_not_stored_in_plain_text(&table_text(&env).await, secret);

    // A given secret is accepted and not echoed back; --json has no secret field then.
    let out = env.cli_ok(&["devices", "add", DVNUUID, "--secret", GIVEN, "--json"]);
    let added: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(added["urn"], DVNUUID);
    assert_eq!(added["kind"], "DVNUUID");
    assert!(added.get("secret").is_none(), "{out}");
    assert!(!out.contains(GIVEN));

    // --json with a generated secret carries it once.
    let other = "urn:dev:IMEI:490154203237518:";
    let added: Value =
        serde_json::from_str(&env.cli_ok(&["devices", "add", other, "--json"])).unwrap();
    assert!(is_generated_secret(added["secret"].as_str().unwrap()));

    for bad in [
        "urn:dev:DEVEUI:0018B21000008C47:",
        "urn:dev:IMEI:35693803564380:",
        "urn:dev:IMEI:356938035643809",
        "urn:dev:DVNUUID:not-a-uuid:",
    ] {
        let out = env.cli(&["devices", "add", bad]);
        assert!(!out.status.success(), "{bad} accepted");
        let message = stderr(&out);
        assert!(
            message.contains("urn:dev:IMEI:<15 digits>:")
                && message.contains("urn:dev:DVNUUID:<uuid>:"),
            "{bad}: {message}"
        );
    }
    let out = env.cli(&[
        "devices",
        "add",
        "urn:dev:IMEI:111111111111111:",
        "--secret",
        "too-short",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("30 to 100"), "{}", stderr(&out));

    // The same device in another spelling is the same registration.
    let out = env.cli(&["devices", "add", "URN:DEV:imei:356938035643809:"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already registered"),
        "{}",
        stderr(&out)
    );
    let mut db = connect(&env.database_url).await;
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM device_keys WHERE removed_at IS NULL")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(live, 3);
}

#[tokio::test]
async fn list_never_shows_secrets() {
    let env = Env::new().await;
    let out = env.cli_ok(&["devices", "list"]);
    assert!(out.contains("No registered devices"), "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&env.cli_ok(&["devices", "list", "--json"])).unwrap(),
        serde_json::json!([])
    );

    let generated = env.cli_ok(&["devices", "add", IMEI]);
    let generated = generated
        .lines()
        .find(|l| is_generated_secret(l))
        .unwrap()
        .to_owned();
    env.cli_ok(&["devices", "add", DVNUUID, "--secret", GIVEN]);

    let text = env.cli_ok(&["devices", "list"]);
    assert!(text.contains(IMEI) && text.contains(DVNUUID), "{text}");
    let json = env.cli_ok(&["devices", "list", "--json"]);
    for out in [&text, &json] {
        assert!(!out.contains(&generated) && !out.contains(GIVEN), "{out}");
    }
    let list: Vec<Value> = serde_json::from_str(&json).unwrap();
    let urns: Vec<&str> = list.iter().map(|d| d["urn"].as_str().unwrap()).collect();
    assert_eq!(urns, [DVNUUID, IMEI]);
    for device in &list {
        let mut keys: Vec<&str> = device
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort();
        assert_eq!(keys, ["created_at", "kind", "urn"], "{device}");
        chrono::DateTime::parse_from_rfc3339(device["created_at"].as_str().unwrap()).unwrap();
    }
}

#[tokio::test]
async fn rotate_keeps_both_secrets_sealed_for_the_overlap() {
    let env = Env::new().await;
    env.cli_ok(&["devices", "add", IMEI, "--secret", GIVEN]);

    let before = chrono::Utc::now();
    // Any spelling of the URN finds the registration.
    let out = env.cli_ok(&[
        "devices",
        "rotate",
        "urn:dev:imei:356938035643809:",
        "--secret",
        GIVEN_2,
        "--overlap",
        "1h",
        "--json",
    ]);
    let rotated: Value = serde_json::from_str(&out).unwrap();
    assert!(rotated.get("secret").is_none(), "{out}");
    let until = chrono::DateTime::parse_from_rfc3339(
        rotated["previous_secret_valid_until"].as_str().unwrap(),
    )
    .unwrap();
    let overlap = until.signed_duration_since(before);
    assert!(
        overlap > chrono::Duration::minutes(59) && overlap < chrono::Duration::minutes(61),
        "{overlap}"
    );

    // Both secrets are in the row, sealed: neither readable, both open with the key and
    // the row's id, and only with that id.
    let table = table_text(&env).await;
    assert_not_stored_in_plain_text(&table, GIVEN);
    assert_not_stored_in_plain_text(&table, GIVEN_2);
    let mut db = connect(&env.database_url).await;
    let row = sqlx::query(
        "SELECT id, secret_sealed, previous_sealed, previous_expires_at FROM device_keys",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    let id: uuid::Uuid = row.get("id");
    let current: Vec<u8> = row.get("secret_sealed");
    let previous: Vec<u8> = row.get("previous_sealed");
    let key = sealing_key(&env);
    assert_eq!(
        key.open(&current, id.as_bytes()).unwrap(),
        GIVEN_2.as_bytes()
    );
    assert_eq!(
        key.open(&previous, id.as_bytes()).unwrap(),
        GIVEN.as_bytes()
    );
    assert!(key.open(&current, uuid::Uuid::new_v4().as_bytes()).is_err());

    // Without --secret a new one is generated and shown once.
    let out = env.cli_ok(&["devices", "rotate", IMEI, "--overlap", "0s"]);
    let secrets: Vec<&str> = out.lines().filter(|l| is_generated_secret(l)).collect();
    assert_eq!(secrets.len(), 1, "{out}");
    let row = sqlx::query("SELECT secret_sealed, previous_sealed FROM device_keys")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let current: Vec<u8> = row.get("secret_sealed");
    let previous: Vec<u8> = row.get("previous_sealed");
    assert_eq!(
        key.open(&current, id.as_bytes()).unwrap(),
        secrets[0].as_bytes()
    );
    assert_eq!(
        key.open(&previous, id.as_bytes()).unwrap(),
        GIVEN_2.as_bytes()
    );

    let out = env.cli(&["devices", "rotate", IMEI, "--overlap", "400d"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("366 days"), "{}", stderr(&out));
    let out = env.cli(&["devices", "rotate", DVNUUID]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[tokio::test]
async fn remove_is_soft_and_the_device_can_be_registered_again() {
    let env = Env::new().await;
    env.cli_ok(&["devices", "add", IMEI, "--secret", GIVEN]);
    env.cli_ok(&["devices", "rotate", IMEI, "--secret", GIVEN_2]);

    let out = env.cli_ok(&["devices", "remove", IMEI]);
    assert!(out.contains("stored data is kept"), "{out}");
    let list: Vec<Value> =
        serde_json::from_str(&env.cli_ok(&["devices", "list", "--json"])).unwrap();
    assert!(list.is_empty(), "{list:?}");
    let out = env.cli(&["devices", "remove", IMEI]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));

    // The row stays, its secrets gone.
    let mut db = connect(&env.database_url).await;
    let row = sqlx::query(
        "SELECT removed_at IS NOT NULL AS removed, length(secret_sealed) AS len, \
             previous_sealed IS NULL AS no_previous FROM device_keys",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(row.get::<bool, _>("removed"));
    assert_eq!(row.get::<i32, _>("len"), 0);
    assert!(row.get::<bool, _>("no_previous"));

    let out = env.cli_ok(&["devices", "add", IMEI]);
    assert!(out.lines().any(is_generated_secret), "{out}");
    let list: Vec<Value> =
        serde_json::from_str(&env.cli_ok(&["devices", "list", "--json"])).unwrap();
    assert_eq!(list.len(), 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM device_keys")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}

#[tokio::test]
async fn every_change_notifies_the_other_processes() {
    let env = Env::new().await;
    // The migrations run on the CLI's first use.
    env.cli_ok(&["devices", "list"]);
    let mut listener = sqlx::postgres::PgListener::connect(&env.database_url)
        .await
        .unwrap();
    listener.listen("things_device_keys_changed").await.unwrap();
    for args in [
        &["devices", "add", IMEI][..],
        &["devices", "rotate", IMEI],
        &["devices", "remove", IMEI],
    ] {
        env.cli_ok(args);
        let notification = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .unwrap_or_else(|_| panic!("no notification after {args:?}"))
            .unwrap();
        assert_eq!(notification.channel(), "things_device_keys_changed");
    }
}
