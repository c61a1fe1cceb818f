//! The outbox's claim, against a real PostgreSQL: concurrent claims never share a row and
//! never wait for each other, and a lease that runs out hands the row over.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use things_receiver::config::DbArgs;
use things_receiver::store::downlinks::{self, NewRow, Target};
use things_receiver::store::{Database, PoolSettings};

async fn outbox_with(rows: usize) -> (Database, tempfile::TempDir) {
    let (url, _) = common::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let args = DbArgs {
        data_dir: dir.path().to_owned(),
        database_url: Some(url),
        secret_key_file: None,
    };
    let database = Database::open(&args, &PoolSettings::default())
        .await
        .unwrap();
    let device: i64 = sqlx::query_scalar(
        "INSERT INTO devices (urn_key, urn, kind, first_seen, last_seen) \
         VALUES ('urn:dev:DEVEUI:0018B21000008C47:', 'urn:dev:DEVEUI:0018B21000008C47:', 'DEVEUI', now(), now()) \
         RETURNING id",
    )
    .fetch_one(&database.pool)
    .await
    .unwrap();
    for _ in 0..rows {
        let row = NewRow {
            id: uuid::Uuid::new_v4(),
            target: Target::Kpn { device_id: device },
            port: Some(2),
            payload_hex: Some("00"),
            body: "[]",
            idempotency_key: None,
            request_hash: &[0; 32],
        };
        downlinks::insert(&database.pool, &row)
            .await
            .unwrap()
            .unwrap();
    }
    (database, dir)
}

#[tokio::test]
async fn concurrent_claims_take_disjoint_rows_without_waiting() {
    let (database, _dir) = outbox_with(10).await;
    let lease = Duration::from_secs(60);

    // One claim still open (its transaction holds the row locks) ...
    let mut open = database.pool.begin().await.unwrap();
    let first = downlinks::claim(&mut *open, 4, lease).await.unwrap();
    assert_eq!(first.len(), 4);

    // ... does not hold up another, which gets only the other rows.
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        downlinks::claim(&database.pool, 100, lease),
    )
    .await
    .expect("a concurrent claim waited for the open one")
    .unwrap();
    let first: HashSet<_> = first.iter().map(|c| c.id).collect();
    let second: HashSet<_> = second.iter().map(|c| c.id).collect();
    assert_eq!(second.len(), 6);
    assert!(first.is_disjoint(&second));
    open.commit().await.unwrap();

    // Everything is claimed now: nothing more to take while the leases run.
    assert!(
        downlinks::claim(&database.pool, 100, lease)
            .await
            .unwrap()
            .is_empty()
    );
    database.close().await;
}

#[tokio::test]
async fn an_expired_lease_hands_the_row_over_and_fences_the_old_holder() {
    let (database, _dir) = outbox_with(1).await;
    let pool = &database.pool;
    let claimed = downlinks::claim(pool, 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let (id, first_attempt) = (claimed[0].id, claimed[0].attempts);
    assert!(
        downlinks::claim(pool, 10, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty()
    );

    // Once the lease has run out, another claim takes the row over as the next attempt.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        let again = downlinks::claim(pool, 10, Duration::from_secs(60))
            .await
            .unwrap();
        if !again.is_empty() {
            break again;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((again[0].id, again[0].attempts), (id, first_attempt + 1));

    // The old holder's late outcome is ignored; the new holder's counts.
    assert!(
        !downlinks::mark_accepted(pool, id, first_attempt, 200, "late")
            .await
            .unwrap()
    );
    assert!(
        downlinks::mark_accepted(pool, id, first_attempt + 1, 200, "{}")
            .await
            .unwrap()
    );
    let row = downlinks::get(pool, id).await.unwrap().unwrap();
    assert_eq!((row.status.as_str(), row.attempts), ("accepted", 2));
    database.close().await;
}

/// What the listener saw, in order.
#[derive(Debug, PartialEq)]
enum Heard {
    Resync,
    Notified(String),
    Lost,
}

struct Recorder(tokio::sync::mpsc::UnboundedSender<Heard>);

impl things_receiver::store::listen::Subscriber for Recorder {
    async fn resync(&mut self) -> Result<(), sqlx::Error> {
        let _ = self.0.send(Heard::Resync);
        Ok(())
    }
    async fn notified(
        &mut self,
        notification: Option<sqlx::postgres::PgNotification>,
    ) -> Result<(), sqlx::Error> {
        let payload = notification.map_or_else(String::new, |n| n.payload().to_owned());
        let _ = self.0.send(Heard::Notified(payload));
        Ok(())
    }
    fn lost(&mut self) {
        let _ = self.0.send(Heard::Lost);
    }
}

/// The listener the outbox worker (and the secret cache) runs on: resync before anything
/// else, notifications delivered, and a connection killed under it is noticed, reconnected
/// and resynced, after which notifications arrive again.
#[tokio::test]
async fn the_listener_resyncs_after_every_reconnect() {
    use things_receiver::store::listen::{Listen, listen};
    let (database, _dir) = outbox_with(0).await;
    let pool = database.pool.clone();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = {
        let (pool, shutdown) = (pool.clone(), shutdown.clone());
        tokio::spawn(async move {
            let what = Listen {
                name: "test",
                channels: &["things_test_channel"],
                idle: None,
            };
            listen(&pool, what, &mut Recorder(tx), &shutdown).await;
        })
    };
    let next = async |heard: &mut tokio::sync::mpsc::UnboundedReceiver<Heard>| {
        tokio::time::timeout(Duration::from_secs(20), heard.recv())
            .await
            .expect("the listener reports within the deadline")
            .expect("the listener runs")
    };
    assert_eq!(next(&mut heard).await, Heard::Resync);
    sqlx::query("SELECT pg_notify('things_test_channel', 'one')")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(next(&mut heard).await, Heard::Notified("one".into()));

    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()) t",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(killed, 1, "one listening connection");
    assert_eq!(next(&mut heard).await, Heard::Lost);
    assert_eq!(next(&mut heard).await, Heard::Resync);
    sqlx::query("SELECT pg_notify('things_test_channel', 'two')")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(next(&mut heard).await, Heard::Notified("two".into()));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the listener stops on shutdown")
        .unwrap();
    database.close().await;
}
