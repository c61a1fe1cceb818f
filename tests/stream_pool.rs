//! Exports and the live stream hold database connections for as long as their clients take:
//! they must never take the connections ingestion needs, and a client that stops reading
//! must not hold one for ever.

mod common;

use std::time::{Duration, Instant};

use common::raw_tls::*;
use common::*;
use tokio::io::AsyncWriteExt;

/// Rows exported: far more than socket buffers, hyper's buffer and the export channel hold
/// together, so that an export whose client does not read keeps its database query open.
const ROWS: i64 = 300_000;

/// One delivery for a device, then [`ROWS`] measurements of it.
async fn seed(env: &Env, server: &Server, plug: uuid::Uuid) {
    let body = br#"[{"bn":"urn:dev:IMEI:356938035643809:","n":"t","v":1}]"#;
    let response = deliver(&client(), server, plug, SECRET, body).await;
    assert_eq!(response.status(), 200);
    let mut db = connect(&env.database_url).await;
    sqlx::query(
        "WITH s AS (INSERT INTO series (device_id, name) SELECT id, 'level' FROM devices \
                    RETURNING id) \
         INSERT INTO measurements (series_id, time, value) \
         SELECT s.id, TIMESTAMPTZ '2024-01-01' + g * INTERVAL '1 second', g \
         FROM s, generate_series(1, $1) g",
    )
    .bind(ROWS)
    .execute(&mut db)
    .await
    .unwrap();
}

/// Backends of this test's database running an export's query.
async fn exports_running(env: &Env) -> i64 {
    let mut db = connect(&env.database_url).await;
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 \
         AND backend_type = 'client backend' AND state = 'active' AND query LIKE 'SELECT m.id, d.urn AS device%'",
    )
    .bind(&env.database_name)
    .fetch_one(&mut db)
    .await
    .unwrap()
}

#[tokio::test]
async fn exports_whose_clients_stop_reading_leave_ingestion_its_connections() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("reader", "read");
    // Two connections for ingestion and the API; the stream pool has its default four (the
    // live listener and three exports).
    let server = env.serve(&["--db-pool", "2", "--db-timeout", "2s"]);
    seed(&env, &server, plug).await;

    // Three exports whose clients read the response head and then nothing.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut tls = tls_from(&server, localhost(), &[b"http/1.1"])
            .await
            .unwrap();
        tls.write_all(
            format!(
                "GET /api/v1/measurements HTTP/1.1\r\nHost: localhost\r\n\
                 Authorization: Bearer {key}\r\nAccept: text/csv\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let head = read_head(&mut tls, Duration::from_secs(10)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        stalled.push(tls);
    }
    // Each holds its query open, stalled behind its client.
    let deadline = Instant::now() + Duration::from_secs(10);
    while exports_running(&env).await < 3 {
        assert!(Instant::now() < deadline, "the exports are not all running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Deliveries are stored in the database, not spooled, and the API answers.
    let client = client();
    for i in 0..5 {
        let body = format!("[{{\"bn\":\"urn:dev:IMEI:356938035643809:\",\"n\":\"u\",\"v\":{i}}}]");
        let response = deliver(&client, &server, plug, SECRET, body.as_bytes()).await;
        let (status, json) = status_json(response).await;
        assert_eq!(status, 200, "{json}");
        assert_eq!(json["status"], "stored", "delivery {i}: {json}");
    }
    let (status, json) = api_get(&client, &server, &key, "/api/v1/devices").await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(exports_running(&env).await, 3, "an export ended early");
    drop(stalled);
}

#[tokio::test]
async fn an_export_whose_client_stops_reading_is_cut_and_frees_its_connection() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let key = env.api_key("reader", "read");
    // The stream pool holds the live listener and one export. The request deadline is far
    // shorter than the final export takes to read: it bounds receiving requests, not answers.
    let server = env.serve(&[
        "--idle-timeout",
        "1s",
        "--request-timeout",
        "1s",
        "--db-stream-pool",
        "2",
        "--db-timeout",
        "2s",
    ]);
    seed(&env, &server, plug).await;

    // Over HTTP/2 the client keeps the connection's bytes moving with PINGs, but reads
    // nothing of the export (its flow-control window is never released).
    let bearer = format!("Bearer {key}");
    let mut h2 = h2_connect(&server).await;
    let response = h2
        .get(
            &server,
            "/api/v1/measurements",
            &[("authorization", &bearer), ("accept", "text/csv")],
        )
        .await;
    assert_eq!(response.status(), 200);
    let took = h2
        .ping_until_closed(Duration::from_millis(200), Duration::from_secs(15))
        .await;
    assert!(took >= Duration::from_millis(900), "cut after {took:?}");
    drop(response);

    // Its database connection is back: the next export gets it and is complete.
    let deadline = Instant::now() + Duration::from_secs(10);
    while exports_running(&env).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the cut export's query still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = client()
        .get(server.url("/api/v1/measurements"))
        .bearer_auth(&key)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let csv = response.text().await.unwrap();
    assert_eq!(csv.lines().count() as i64, ROWS + 2, "header and every row");
}
