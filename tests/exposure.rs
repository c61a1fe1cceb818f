//! What an outsider can learn or cost us: API key handling, `/metrics` and `/readyz`.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Cuts the server off its database: no new connections, existing ones terminated.
async fn cut_off(env: &Env) {
    let mut admin = connect(admin_url().await).await;
    let db = &env.database_name;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {db} ALLOW_CONNECTIONS false"
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
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
        assert!(Instant::now() < deadline, "backends still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status_with(client: &reqwest::Client, server: &Server, auth: &str, path: &str) -> u16 {
    client
        .get(server.url(path))
        .header("Authorization", auth)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let env = Env::new().await;
    let key = env.api_key("dash", "read");
    let server = env.serve(&[]);
    let client = client();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let status = status_with(
            &client,
            &server,
            &format!("{scheme} {key}"),
            "/api/v1/devices",
        )
        .await;
        assert_eq!(status, 200, "{scheme}");
    }
}

#[tokio::test]
async fn an_address_over_the_wrong_key_limit_is_refused_before_any_lookup() {
    let env = Env::new().await;
    let key = env.api_key("dash", "read");
    let server = env.serve(&[]);
    let client = client();
    let path = "/api/v1/devices";
    assert_eq!(
        status_with(&client, &server, &format!("Bearer {key}"), path).await,
        200
    );
    let wrong = "Bearer not-a-key-of-ours";
    let mut limited = false;
    for _ in 0..=things_receiver::api::auth_limit::MAX_FAILURES {
        match status_with(&client, &server, wrong, path).await {
            401 => {}
            429 => {
                limited = true;
                break;
            }
            other => panic!("a wrong key got {other}"),
        }
    }
    assert!(limited, "wrong keys were never limited");
    // A key that worked before still works from the same address.
    assert_eq!(
        status_with(&client, &server, &format!("Bearer {key}"), path).await,
        200
    );
    // Without a database a lookup could only fail (503): the limit answers without one.
    cut_off(&env).await;
    assert_eq!(status_with(&client, &server, wrong, path).await, 429);
}
