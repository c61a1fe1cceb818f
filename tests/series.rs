//! Measurements keyed by series (migration 0008): a database holding data of the old shape is
//! converted in place with every answer of the API as before, and the references that no
//! foreign key checks any more hold for everything ingestion writes, also under concurrency.

mod common;

use common::*;
use serde_json::{Value, json};
use sqlx::Connection;
use things_receiver::senml::device_key;
use things_receiver::store::stored_text;

const A: &str = "urn:dev:DEVEUI:00000000000000A1:";
const B: &str = "urn:dev:DEVEUI:00000000000000B2:";

/// The schema as it was before series: every migration before 0008.
async fn migrate_to_old_shape(url: &str) {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.migrations = migrator
        .migrations
        .iter()
        .filter(|m| m.version < 8)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let mut conn = connect(url).await;
    migrator.run(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

/// Old-shape rows, as the old write path stored them: a monthly partition and the DEFAULT one,
/// one name with two units at the same time, an escaped string, a boolean, data with a sum and
/// a sum alone; latest values as the old upsert kept them.
async fn load_old_shape(url: &str) {
    let mut db = connect(url).await;
    let (escaped, flag) = stored_text::to_storage("a\u{0}b");
    assert_eq!(flag, Some(true));
    sqlx::raw_sql(
        "CREATE TABLE measurements_y2024m01 PARTITION OF measurements \
             FOR VALUES FROM ('2024-01-01 00:00:00+00') TO ('2024-02-01 00:00:00+00'); \
         INSERT INTO destinations (id, name, secret_sealed) \
             VALUES ('00000000-0000-0000-0000-0000000000d1', 'old', '\\x00');",
    )
    .execute(&mut db)
    .await
    .unwrap();
    for (id, urn) in [(1i64, A), (2, B)] {
        sqlx::query(
            "INSERT INTO devices (id, urn_key, urn, kind, first_seen, last_seen) OVERRIDING SYSTEM VALUE \
             VALUES ($1, $2, $3, 'DEVEUI', '2019-06-01Z', '2024-01-11Z')",
        )
        .bind(id)
        .bind(device_key(urn))
        .bind(urn)
        .execute(&mut db)
        .await
        .unwrap();
    }
    sqlx::raw_sql(
        "INSERT INTO messages (id, destination_id, token, received_at, body, status, device_id, record_count) \
         OVERRIDING SYSTEM VALUE VALUES \
         (1, '00000000-0000-0000-0000-0000000000d1', sha256('1'), '2024-01-10Z', '[]', 'stored', 1, 4), \
         (2, '00000000-0000-0000-0000-0000000000d1', sha256('2'), '2019-06-01Z', '[]', 'stored', 1, 1), \
         (3, '00000000-0000-0000-0000-0000000000d1', sha256('3'), '2024-01-11Z', '[]', 'stored', 2, 2); \
         SELECT setval(pg_get_serial_sequence('messages', 'id'), 3);",
    )
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO measurements (id, device_id, time, name, unit, value, string_value, \
                                   string_escaped, bool_value, data_value, sum, message_id) \
         OVERRIDING SYSTEM VALUE VALUES \
         (10, 1, '2024-01-10 00:00:00Z', 't', 'Cel', 21.5, NULL, NULL, NULL, NULL, NULL, 1), \
         (11, 1, '2024-01-10 00:00:00Z', 't', 'K', 294.65, NULL, NULL, NULL, NULL, NULL, 1), \
         (12, 1, '2024-01-10 00:01:00Z', 's', NULL, NULL, $1, true, NULL, NULL, NULL, 1), \
         (13, 1, '2024-01-10 00:02:00Z', 'b', NULL, NULL, NULL, NULL, true, NULL, NULL, 1), \
         (14, 1, '2019-06-01 00:00:00Z', 't', 'Cel', 20, NULL, NULL, NULL, NULL, NULL, 2), \
         (15, 2, '2024-01-11 00:00:00.5Z', 'd', NULL, NULL, NULL, NULL, NULL, '\\x010203', 4.5, 3), \
         (16, 2, '2024-01-11 00:00:01Z', 'x', NULL, NULL, NULL, NULL, NULL, NULL, 7, 3)",
    )
    .bind(escaped.as_ref())
    .execute(&mut db)
    .await
    .unwrap();
    sqlx::raw_sql(
        "SELECT setval(pg_get_serial_sequence('measurements', 'id'), 16); \
         INSERT INTO latest_values (device_id, name, time, unit, value, string_value, string_escaped, \
                                    bool_value, data_value, sum, message_id) \
         SELECT DISTINCT ON (device_id, name) device_id, name, time, unit, value, string_value, \
                string_escaped, bool_value, data_value, sum, message_id \
         FROM measurements ORDER BY device_id, name, time DESC, id DESC",
    )
    .execute(&mut db)
    .await
    .unwrap();
}

fn item(device: &str, name: &str, unit: Option<&str>, time: &str, value: Value) -> Value {
    let mut item = json!({"device": device, "name": name, "time": time});
    if let Some(unit) = unit {
        item["unit"] = json!(unit);
    }
    for (field, v) in value.as_object().unwrap() {
        item[field] = v.clone();
    }
    item
}

/// Every item of `/measurements` for `query`, following the cursors with pages of 2.
async fn all_pages(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    query: &str,
) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor = String::new();
    for _ in 0..10 {
        let (status, page) = api_get(
            client,
            server,
            key,
            &format!("/api/v1/measurements?limit=2{query}{cursor}"),
        )
        .await;
        assert_eq!(status, 200, "{page}");
        items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return items,
        }
    }
    panic!("more pages than rows");
}

#[tokio::test]
async fn old_shape_data_is_migrated_in_place_and_answers_as_before() {
    let env = Env::new().await;
    migrate_to_old_shape(&env.database_url).await;
    load_old_shape(&env.database_url).await;
    // The CLI opens the database, which applies 0008.
    let key = env.api_key("dash", "read");
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();

    // Same ids, same partitions, same values.
    let mut db = connect(&env.database_url).await;
    let rows: Vec<(i64, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT m.id, d.urn, s.name, s.unit, m.tableoid::regclass::text \
         FROM measurements m JOIN series s ON s.id = m.series_id JOIN devices d ON d.id = s.device_id \
         ORDER BY m.id",
    )
    .fetch_all(&mut db)
    .await
    .unwrap();
    let shape: Vec<(i64, &str, &str, Option<&str>, &str)> = rows
        .iter()
        .map(|(id, d, n, u, p)| (*id, d.as_str(), n.as_str(), u.as_deref(), p.as_str()))
        .collect();
    assert_eq!(
        shape,
        vec![
            (10, A, "t", Some("Cel"), "measurements_y2024m01"),
            (11, A, "t", Some("K"), "measurements_y2024m01"),
            (12, A, "s", None, "measurements_y2024m01"),
            (13, A, "b", None, "measurements_y2024m01"),
            (14, A, "t", Some("Cel"), "measurements_default"),
            (15, B, "d", None, "measurements_y2024m01"),
            (16, B, "x", None, "measurements_y2024m01"),
        ]
    );
    let series: i64 = sqlx::query_scalar("SELECT count(*) FROM series")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(series, 6, "one per (device, name, unit)");

    // The answers, newest first, across pages whose cursors carry the old ids.
    let everything = vec![
        item(B, "x", None, "2024-01-11T00:00:01Z", json!({"sum": 7.0})),
        item(
            B,
            "d",
            None,
            "2024-01-11T00:00:00.5Z",
            json!({"data_value": "AQID", "sum": 4.5}),
        ),
        item(
            A,
            "b",
            None,
            "2024-01-10T00:02:00Z",
            json!({"bool_value": true}),
        ),
        item(
            A,
            "s",
            None,
            "2024-01-10T00:01:00Z",
            json!({"string_value": "a\u{0}b"}),
        ),
        item(
            A,
            "t",
            Some("K"),
            "2024-01-10T00:00:00Z",
            json!({"value": 294.65}),
        ),
        item(
            A,
            "t",
            Some("Cel"),
            "2024-01-10T00:00:00Z",
            json!({"value": 21.5}),
        ),
        item(
            A,
            "t",
            Some("Cel"),
            "2019-06-01T00:00:00Z",
            json!({"value": 20.0}),
        ),
    ];
    assert_eq!(all_pages(&client, &server, &key, "").await, everything);
    let of_a: Vec<Value> = everything[2..].to_vec();
    assert_eq!(
        all_pages(&client, &server, &key, &format!("&device={A}")).await,
        of_a
    );
    let named_t: Vec<Value> = everything[4..].to_vec();
    assert_eq!(all_pages(&client, &server, &key, "&name=t").await, named_t);
    assert_eq!(
        all_pages(&client, &server, &key, &format!("&device={A}&name=t")).await,
        named_t
    );
    assert_eq!(
        all_pages(
            &client,
            &server,
            &key,
            "&from=2024-01-10T00:00:00Z&to=2024-01-10T00:02:00Z"
        )
        .await,
        everything[3..6].to_vec()
    );

    // Both units of one name share its buckets, as they shared the old (device, name) index.
    let (status, json) = api_get(
        &client,
        &server,
        &key,
        &format!(
            "/api/v1/series?device={A}&name=t&from=2024-01-10T00:00:00Z&to=2024-01-10T00:02:00Z&every=1m&agg=count"
        ),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        json["series"],
        json!([{"name": "t", "unit": "K", "points": [
            {"time": "2024-01-10T00:00:00Z", "value": 2.0},
        ]}])
    );
    // fill=previous reaches back into the DEFAULT partition for the value before the range.
    let (_, json) = api_get(
        &client,
        &server,
        &key,
        &format!(
            "/api/v1/series?device={A}&name=t&from=2020-01-01T00:00:00Z&to=2020-01-01T00:01:00Z&every=1m&fill=previous"
        ),
    )
    .await;
    assert_eq!(
        json["series"][0]["points"],
        json!([{"time": "2020-01-01T00:00:00Z", "value": 20.0}])
    );
    let (_, latest) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/devices/{A}/latest"),
    )
    .await;
    let names: Vec<(&str, &Value)> = latest["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    assert_eq!(names.len(), 3, "{latest}");
    assert_eq!(names[2].0, "t");
    assert_eq!(names[2].1["value"], 294.65);

    // New rows continue after the old ids and come first.
    let body = format!(r#"[{{"bn":"{A}","bt":1704931300,"n":"t","u":"Cel","v":22}}]"#);
    assert_eq!(
        deliver(&client, &server, plug, SECRET, body.as_bytes())
            .await
            .status(),
        200
    );
    let newest: i64 = sqlx::query_scalar("SELECT max(id) FROM measurements")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(newest > 16, "{newest}");
    let pages = all_pages(&client, &server, &key, "").await;
    assert_eq!(pages.len(), everything.len() + 1);
    assert_eq!(pages[0]["time"], "2024-01-11T00:01:40Z");
    assert_eq!(pages[0]["value"], 22.0);
    let series_after: i64 = sqlx::query_scalar("SELECT count(*) FROM series")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(
        series_after, 6,
        "the existing series was found, not doubled"
    );
}

/// Rows whose reference points nowhere, or that no transaction storing a message of their
/// series' device wrote.
const BROKEN_REFERENCES: &str = "SELECT \
     (SELECT count(*) FROM measurements m WHERE NOT EXISTS (SELECT 1 FROM series s WHERE s.id = m.series_id)) \
   + (SELECT count(*) FROM measurements m JOIN series s ON s.id = m.series_id \
        WHERE NOT EXISTS (SELECT 1 FROM messages g WHERE g.xmin = m.xmin AND g.device_id = s.device_id)) \
   + (SELECT count(*) FROM series s WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = s.device_id)) \
   + (SELECT count(*) FROM latest_values l WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = l.device_id)) \
   + (SELECT count(*) FROM latest_values l WHERE NOT EXISTS (SELECT 1 FROM messages g WHERE g.id = l.message_id)) \
   + (SELECT count(*) FROM messages g WHERE g.device_id IS NOT NULL \
        AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = g.device_id)) \
   + (SELECT count(*) FROM devices d \
        WHERE d.message_count <> (SELECT count(*) FROM messages g WHERE g.device_id = d.id))";

#[tokio::test]
async fn references_hold_by_construction_under_concurrent_ingestion() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();

    // Nothing checks them row by row any more: no foreign key and no row trigger on
    // measurements; on messages only the sender's references (from outside the transaction)
    // are checked, and no other insert trigger runs.
    let mut db = connect(&env.database_url).await;
    let (foreign_keys, row_triggers): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_constraint c JOIN pg_partition_tree('measurements') p \
                 ON c.conrelid = p.relid WHERE c.contype = 'f'), \
                (SELECT count(*) FROM pg_trigger t JOIN pg_partition_tree('measurements') p \
                 ON t.tgrelid = p.relid WHERE t.tgtype & 1 = 1)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((foreign_keys, row_triggers), (0, 0));
    let (checked, insert_triggers): (Vec<String>, i64) = sqlx::query_as(
        "SELECT (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_constraint c \
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey) \
                 WHERE c.conrelid = 'messages'::regclass AND c.contype = 'f'), \
                (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = 'messages'::regclass \
                 AND t.tgtype & 4 = 4 AND NOT t.tgisinternal)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(
        (checked, insert_triggers),
        (vec!["destination_id".into(), "device_key_id".into()], 0)
    );

    // 8 devices seen for the first time by many concurrent deliveries at once, each with
    // names and units that make new series in several batches at the same time.
    let mut tasks = Vec::new();
    for i in 0..160u32 {
        let client = client.clone();
        let url = server.url("/ingest/kpn");
        tasks.push(tokio::spawn(async move {
            let unit = if i % 3 == 0 { r#","u":"K""# } else { "" };
            let body = format!(
                r#"[{{"bn":"urn:dev:DEVEUI:{:016X}:","bt":{},"n":"t{}","v":{i}{unit}}},{{"n":"h","vb":true}},{{"n":"t{}","v":1}}]"#,
                i % 8,
                1_704_067_200 + i,
                i % 5,
                (i + 1) % 5,
            );
            let token = things_receiver::token::Token::sign(body.as_bytes(), SECRET.as_bytes());
            client
                .post(url)
                .header("Things-Plug-UUID", plug.to_string())
                .header("Things-Message-Token", token.to_hex())
                .header("Content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), 200);
    }

    let (messages, records, rows, series, broken): (i64, i64, i64, i64, i64) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT count(*) FROM messages), (SELECT sum(record_count)::int8 FROM messages), \
                    (SELECT count(*) FROM measurements), \
                    (SELECT count(*) FROM series), ({BROKEN_REFERENCES})"
        )))
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!((messages, records, rows), (160, 480, 480));
    // What was sent, as (device, name, unit): each exactly once.
    let mut sent = std::collections::HashSet::new();
    for i in 0..160u32 {
        sent.insert((i % 8, format!("t{}", i % 5), i % 3 == 0));
        sent.insert((i % 8, "h".to_owned(), false));
        sent.insert((i % 8, format!("t{}", (i + 1) % 5), false));
    }
    let expected = sent.len() as i64;
    assert_eq!(series, expected, "no series twice");
    assert_eq!(broken, 0);
    let latest: i64 = sqlx::query_scalar("SELECT count(*) FROM latest_values")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let names: i64 = sqlx::query_scalar("SELECT count(DISTINCT (device_id, name)) FROM series")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(latest, names);
}

/// The writer remembers the ids of devices and series, but only those of transactions that
/// committed: a series inserted by a transaction that then fails is not reused by the next one.
#[tokio::test]
async fn ids_of_a_transaction_that_did_not_commit_are_not_reused() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let mut db = connect(&env.database_url).await;
    // While `refuse_commit` holds a row, any transaction that inserts a series fails at
    // its commit, after every statement of the batch has run.
    sqlx::raw_sql(
        "CREATE TABLE refuse_commit (x int); \
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
             IF EXISTS (SELECT 1 FROM refuse_commit) THEN RAISE EXCEPTION 'refused at commit'; END IF; \
             RETURN NULL; END $$; \
         CREATE CONSTRAINT TRIGGER series_refused AFTER INSERT ON series \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let send = |n: u32, name: &str| {
        let body = format!(
            r#"[{{"bn":"{A}","bt":{},"n":"{name}","v":{n}}}]"#,
            1_704_067_200 + n
        );
        let token = things_receiver::token::Token::sign(body.as_bytes(), SECRET.as_bytes());
        client
            .post(server.url("/ingest/kpn"))
            .header("Things-Plug-UUID", plug.to_string())
            .header("Things-Message-Token", token.to_hex())
            .header("Content-type", "application/json")
            .body(body)
            .send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();

    assert_eq!(status(send(1, "t").await.unwrap()), 200);
    sqlx::query("INSERT INTO refuse_commit VALUES (1)")
        .execute(&mut db)
        .await
        .unwrap();
    // The batch fails at commit; the delivery is kept, quarantined, without measurements.
    assert_eq!(status(send(2, "h").await.unwrap()), 200);
    sqlx::query("DELETE FROM refuse_commit")
        .execute(&mut db)
        .await
        .unwrap();
    assert_eq!(status(send(3, "h").await.unwrap()), 200);

    let statuses: Vec<(String, i32)> =
        sqlx::query_as("SELECT status, record_count FROM messages ORDER BY id")
            .fetch_all(&mut db)
            .await
            .unwrap();
    assert_eq!(
        statuses,
        [("stored", 1), ("quarantined", 0), ("stored", 1)].map(|(s, c)| (s.to_owned(), c))
    );
    let (rows, series, broken): (i64, i64, i64) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT (SELECT count(*) FROM measurements), (SELECT count(*) FROM series), \
                ({BROKEN_REFERENCES})"
    )))
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((rows, series, broken), (2, 2, 0));
}
