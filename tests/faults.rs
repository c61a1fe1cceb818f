//! Faults during load: a killed receiver, a stopped database, every delivery twice. Whatever
//! happens, every acknowledged delivery ends up stored exactly once.

mod common;

use std::time::{Duration, Instant};

use common::load::{Log, records_in, send_all, tokens};
use common::*;
use nix::sys::signal::Signal;
use sqlx::postgres::PgConnection;
use things_receiver::store::embedded::{EmbeddedOptions, EmbeddedPostgres};

const DELIVERIES: usize = 1500;
const CONCURRENCY: usize = 24;

/// Asserts that exactly the deliveries `indices` are stored, each once, with all their rows.
async fn assert_stored_once(db: &mut PgConnection, indices: &[usize]) {
    let expected = tokens(indices, SECRET);
    let found: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE token = ANY($1)")
        .bind(&expected)
        .fetch_one(&mut *db)
        .await
        .unwrap();
    assert_eq!(
        found as usize,
        indices.len(),
        "acknowledged deliveries missing"
    );
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut *db)
        .await
        .unwrap();
    assert_eq!(
        total as usize,
        indices.len(),
        "something stored twice or unasked"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM measurements")
        .fetch_one(&mut *db)
        .await
        .unwrap();
    let expected_rows: usize = indices.iter().map(|&i| records_in(i)).sum();
    assert_eq!(rows as usize, expected_rows);
}

/// Resends what was not acknowledged until everything is, like KPN's retries (bounded).
async fn retry_until_acked(
    client: &reqwest::Client,
    server: &Server,
    plug: uuid::Uuid,
    mut log: Log,
) -> Vec<usize> {
    let mut acked = std::mem::take(&mut log.acked);
    let mut pending: Vec<usize> = log.retry.drain(..).chain(log.lost.drain(..)).collect();
    assert!(
        log.unexpected.is_empty(),
        "unexpected answers: {:?}",
        log.unexpected
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} deliveries never acknowledged",
            pending.len()
        );
        let mut again = send_all(
            client,
            &server.url("/ingest/kpn"),
            plug,
            SECRET,
            pending,
            CONCURRENCY,
            |_| {},
        )
        .await;
        assert!(
            again.unexpected.is_empty(),
            "unexpected answers: {:?}",
            again.unexpected
        );
        acked.append(&mut again.acked);
        pending = again.retry.into_iter().chain(again.lost).collect();
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    acked.sort_unstable();
    acked.dedup();
    acked
}

/// Sends every delivery, signalling the server once a third of them are acknowledged.
async fn load_then_signal(
    client: &reqwest::Client,
    server: &Server,
    plug: uuid::Uuid,
    signal: Signal,
) -> Log {
    let pid = nix::unistd::Pid::from_raw(server.pid());
    let url = server.url("/ingest/kpn");
    send_all(
        client,
        &url,
        plug,
        SECRET,
        (0..DELIVERIES).collect(),
        CONCURRENCY,
        |acks| {
            if acks == DELIVERIES / 3 {
                let _ = nix::sys::signal::kill(pid, signal);
            }
        },
    )
    .await
}

#[tokio::test]
async fn sigkill_mid_load_loses_no_acknowledged_delivery() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve(&[]);
    let client = client();
    let log = load_then_signal(&client, &server, plug, Signal::SIGKILL).await;
    drop(server);
    assert!(!log.lost.is_empty(), "the kill happened mid-load");
    let acked_before_kill = log.acked.clone();

    let server = env.serve(&[]);
    let acked = retry_until_acked(&client, &server, plug, log).await;
    assert_eq!(acked.len(), DELIVERIES);
    wait_ready(&client, &server, |j| j["spool"]["deliveries"] == 0).await;
    let mut db = connect(&env.database_url).await;
    assert_stored_once(&mut db, &acked).await;
    // In particular every delivery acknowledged before the kill.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE token = ANY($1)")
        .bind(tokens(&acked_before_kill, SECRET))
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stored as usize, acked_before_kill.len());
}

#[tokio::test]
async fn stopping_postgres_mid_load_loses_nothing_after_replay() {
    // A cluster of its own, so it can be stopped and started.
    let dir = tempfile::Builder::new()
        .prefix("things-fault-pg")
        .tempdir_in("/tmp")
        .unwrap();
    let options = EmbeddedOptions { durable: true };
    let pg = EmbeddedPostgres::start(dir.path(), &options).await.unwrap();
    let url = format!(
        "postgres://{}@localhost:{}/postgres?host={}",
        pg.user(),
        pg.port(),
        pg.socket_dir().display()
    );
    let env = Env {
        data_dir: tempfile::tempdir().unwrap(),
        database_url: url.clone(),
        database_name: "postgres".into(),
    };
    let plug = env.add_destination("d", &[]);
    let server = env.serve(&["--db-timeout", "1s", "--spool-after", "500ms"]);
    let client = client();
    // The status key must have worked once to be accepted while the database is away.
    readyz(&client, &server).await;

    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let stopper = tokio::spawn(async move {
        // Stop the database once a third of the deliveries are acknowledged.
        tokio::task::spawn_blocking(move || stop_rx.recv())
            .await
            .unwrap()
            .unwrap();
        pg.stop().await.unwrap();
    });
    let log = send_all(
        &client,
        &server.url("/ingest/kpn"),
        plug,
        SECRET,
        (0..DELIVERIES).collect(),
        CONCURRENCY,
        |acks| {
            if acks == DELIVERIES / 3 {
                let _ = stop_tx.send(());
            }
        },
    )
    .await;
    stopper.await.unwrap();
    let spooled = readyz(&client, &server).await["spool"]["deliveries"]
        .as_u64()
        .unwrap();
    assert!(spooled > 0, "deliveries during the outage were spooled");

    let pg = EmbeddedPostgres::start(dir.path(), &options).await.unwrap();
    let acked = retry_until_acked(&client, &server, plug, log).await;
    assert_eq!(acked.len(), DELIVERIES);
    wait_ready(&client, &server, |j| j["spool"]["deliveries"] == 0).await;
    let mut db = connect(&url).await;
    assert_stored_once(&mut db, &acked).await;
    drop(server);
    pg.stop().await.unwrap();
}

#[tokio::test]
async fn every_delivery_sent_twice_at_once_is_stored_once() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve(&[]);
    let client = client();
    let n = 600;
    let twice: Vec<usize> = (0..n).flat_map(|i| [i, i]).collect();
    let log = send_all(
        &client,
        &server.url("/ingest/kpn"),
        plug,
        SECRET,
        twice,
        CONCURRENCY,
        |_| {},
    )
    .await;
    assert_eq!(
        log.acked.len(),
        2 * n,
        "retry {:?} lost {:?}",
        log.retry.len(),
        log.lost.len()
    );
    let mut db = connect(&env.database_url).await;
    assert_stored_once(&mut db, &(0..n).collect::<Vec<_>>()).await;
}

#[tokio::test]
async fn sigterm_mid_load_finishes_what_it_acknowledged_and_exits_cleanly() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve(&[]);
    let client = client();
    let log = load_then_signal(&client, &server, plug, Signal::SIGTERM).await;
    assert!(
        server.wait_exit().await.success(),
        "a clean exit after SIGTERM"
    );
    assert!(log.acked.len() >= DELIVERIES / 3);
    assert!(log.unexpected.is_empty(), "{:?}", log.unexpected);

    // Everything acknowledged before and during the shutdown is stored (nothing was spooled:
    // the database stayed up), and nothing else.
    let mut db = connect(&env.database_url).await;
    let mut acked = log.acked.clone();
    acked.sort_unstable();
    assert_stored_once(&mut db, &acked).await;
}
