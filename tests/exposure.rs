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
    for _ in 0..=things_receiver::web::auth_limit::MAX_FAILURES {
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

fn metrics_address(server: &Server) -> String {
    server
        .banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics:"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no metrics line in the banner:\n{}", server.banner))
        .to_owned()
}

#[tokio::test]
async fn metrics_need_a_key_unless_served_on_their_own_listener() {
    let env = Env::new().await;
    let key = env.api_key("scraper", "read");
    let server = env.serve(&["--metrics-listen", "127.0.0.1:0"]);
    let client = client();
    let body = fixture("value-kinds.json");
    let r = deliver(&client, &server, uuid::Uuid::new_v4(), SECRET, &body).await;
    assert_eq!(r.status(), 401);
    // Counted without its reason: an unknown plug and a wrong token look the same here too.
    let split = "things_verification_failures_total{door=\"destination\"} 1";

    // The public listener, from loopback (as every client is behind a reverse proxy).
    let open = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 401);
    assert!(!open.text().await.unwrap().contains(split));
    let keyed = client
        .get(server.url("/metrics"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status(), 200);
    let text = keyed.text().await.unwrap();
    assert!(text.contains(split), "{text}");
    assert!(!text.contains("unknown_plug"), "{text}");

    // The separate listener needs no key.
    let url = metrics_address(&server);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let scraped = client.get(&url).send().await.unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains(split));
}

#[tokio::test]
async fn readyz_answers_a_status_alone_and_details_only_to_a_key() {
    let env = Env::new().await;
    let server = env.serve(&["--db-timeout", "1s"]);
    let client = client();
    let public = |server: &Server| {
        let request = client.get(server.url("/readyz"));
        async move { status_json(request.send().await.unwrap()).await }
    };
    assert_eq!(
        public(&server).await,
        (200, serde_json::json!({"status": "ready"}))
    );
    let detailed = readyz(&client, &server).await;
    assert_eq!(detailed["status"], "ready");
    assert_eq!(detailed["database"], "ok");
    assert_eq!(detailed["spool"]["deliveries"], 0);
    let wrong = client
        .get(server.url("/readyz"))
        .bearer_auth("not-a-key-of-ours")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);

    // The database error text is a detail: the public answer stays a status. The spool still
    // takes deliveries, so the replica stays in service, degraded.
    cut_off(&env).await;
    assert_eq!(
        public(&server).await,
        (200, serde_json::json!({"status": "degraded: spooling"}))
    );
    let detailed = readyz(&client, &server).await;
    assert_eq!(detailed["status"], "degraded: spooling");
    assert!(
        detailed["database"]
            .as_str()
            .unwrap()
            .starts_with("unreachable"),
        "{detailed}"
    );
}
