//! Monthly partitions of measurements: created ahead, outliers kept, retention drops whole
//! months and nothing else.

mod common;

use chrono::{TimeZone, Utc};
use common::*;
use serde_json::json;
use things_receiver::config::DbArgs;
use things_receiver::store::{Database, PoolSettings, partitions};

async fn partition_names(pool: &sqlx::PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'measurements' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn partitions_are_created_ahead_and_expired_ones_dropped_whole() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("dash", "read");
    let server = env.serve(&[]);
    let client = client();

    // Serving created this month and the next two.
    let db = Database::open(
        &DbArgs {
            data_dir: env.data_dir.path().to_owned(),
            database_url: Some(env.database_url.clone()),
            secret_key_file: None,
        },
        &PoolSettings::default(),
    )
    .await
    .unwrap();
    let now = Utc::now();
    let names = partition_names(&db.pool).await;
    let this_month = format!("measurements_y{}", now.format("%Ym%m"));
    assert!(names.contains(&this_month), "{names:?}");
    assert_eq!(names.len(), 1 + 3, "default + three months: {names:?}");

    // Old device times land in the DEFAULT partition...
    let old = br#"[{"bn":"urn:dev:DEVEUI:00000000000000B1:","bt":1580515200,"n":"t","v":1},{"n":"t","t":86400,"v":2}]"#;
    assert_eq!(
        deliver(&client, &server, plug, SECRET, old).await.status(),
        200
    );
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM measurements_default")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(in_default, 2);

    // ...and move into their month's partition when it is created.
    let feb_2020 = Utc.with_ymd_and_hms(2020, 2, 10, 0, 0, 0).unwrap();
    assert_eq!(partitions::ensure(&db.pool, feb_2020).await.unwrap(), 3);
    let moved: i64 = sqlx::query_scalar("SELECT count(*) FROM measurements_y2020m02")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(moved, 2);
    let (_, page) = api_get(
        &client,
        &server,
        &key,
        "/api/v1/measurements?device=urn:dev:DEVEUI:00000000000000B1:",
    )
    .await;
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        2,
        "still readable: {page}"
    );

    // Retention drops months that ended before the cutoff, whole, and keeps the rest.
    let recent = br#"[{"bn":"urn:dev:DEVEUI:00000000000000B2:","n":"t","v":3}]"#;
    assert_eq!(
        deliver(&client, &server, plug, SECRET, recent)
            .await
            .status(),
        200
    );
    let dropped =
        partitions::drop_expired(&db.pool, now, std::time::Duration::from_secs(400 * 86400))
            .await
            .unwrap();
    assert_eq!(
        dropped,
        vec![
            "measurements_y2020m02",
            "measurements_y2020m03",
            "measurements_y2020m04"
        ]
    );
    let (_, page) = api_get(&client, &server, &key, "/api/v1/measurements").await;
    assert_eq!(
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["value"].clone())
            .collect::<Vec<_>>(),
        vec![json!(3.0)]
    );
    db.close().await;
}
