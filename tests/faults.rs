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
    // The replica still stores deliveries, so a load balancer must keep it.
    let (status, json) = status_json(client.get(server.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(
        (status, &json["status"]),
        (200, &"degraded: spooling".into()),
        "{json}"
    );

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

#[tokio::test]
async fn a_spooled_delivery_the_database_always_refuses_is_quarantined_and_replay_goes_on() {
    use things_receiver::ingest::delivery::{RawDelivery, Sender};
    use things_receiver::ingest::spool::{QUARANTINE_DIR, Spool};
    use things_receiver::token::Token;

    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let mut db = connect(&env.database_url).await;
    let destination: uuid::Uuid = sqlx::query_scalar("SELECT id FROM destinations WHERE plug = $1")
        .bind(plug)
        .fetch_one(&mut db)
        .await
        .unwrap();
    let delivery = |destination_id: uuid::Uuid, i: usize| {
        let body = common::load::unique_pack(i);
        RawDelivery {
            sender: Sender::Destination {
                id: destination_id,
                bind_plug: None,
            },
            token: Token::sign(&body, SECRET.as_bytes()),
            received_at: chrono::Utc::now(),
            body: body.into(),
            headers: Default::default(),
        }
    };
    // What an earlier run left: first a delivery for a destination this database does not
    // have (it can never be stored, not even raw), then, in later segments, good ones.
    let spool_dir = env.data_dir.path().join("spool");
    let spool = Spool::open(&spool_dir, 1 << 30).unwrap();
    spool
        .append(&delivery(uuid::Uuid::new_v4(), 0))
        .await
        .unwrap();
    spool.append(&delivery(destination, 1)).await.unwrap();
    drop(spool);
    let spool = Spool::open(&spool_dir, 1 << 30).unwrap();
    for i in 2..6 {
        spool.append(&delivery(destination, i)).await.unwrap();
    }
    drop(spool);

    let server = env.serve(&[]);
    let client = client();
    wait_ready(&client, &server, |j| j["spool"]["deliveries"] == 0).await;
    assert_stored_once(&mut db, &[1, 2, 3, 4, 5]).await;
    let quarantined: Vec<_> = std::fs::read_dir(spool_dir.join(QUARANTINE_DIR))
        .unwrap()
        .collect();
    assert_eq!(quarantined.len(), 1, "the refused delivery is kept, raw");
    let segments = std::fs::read_dir(&spool_dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "spool")
        })
        .count();
    assert_eq!(segments, 0, "every segment was replayed and deleted");
}

/// The embedded cluster's postmaster, as `serve` started it in `data_dir`.
fn embedded_postmaster(data_dir: &std::path::Path) -> Option<nix::unistd::Pid> {
    let text = std::fs::read_to_string(data_dir.join("pg/postmaster.pid")).ok()?;
    let pid = text.lines().next()?.trim().parse().ok()?;
    Some(nix::unistd::Pid::from_raw(pid))
}

/// Polls `/readyz` until `check` holds for its status and JSON; fails after `within`.
async fn readyz_until(
    client: &reqwest::Client,
    server: &Server,
    within: Duration,
    check: impl Fn(u16, &serde_json::Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let request = client
            .get(server.url("/readyz"))
            .bearer_auth(server.status_key());
        let (status, json) = status_json(request.send().await.unwrap()).await;
        if check(status, &json) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "/readyz never got there: {status} {json}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn database_ok(status: u16, json: &serde_json::Value) -> bool {
    status == 200 && json["database"] == "ok"
}

#[tokio::test]
async fn a_killed_embedded_postmaster_is_restarted_and_nothing_acknowledged_is_lost() {
    let data = tempfile::tempdir().unwrap();
    let command = || {
        let mut cmd = std::process::Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("THINGS_LOG", "info,sqlx=warn")
            .arg("--data-dir")
            .arg(data.path());
        cmd
    };
    let mut serve = command();
    serve.args(["serve", "--listen", "127.0.0.1:0", "--db-timeout", "1s"]);
    serve.args(["--spool-after", "500ms"]);
    let server = Server::start(serve);
    let plug = uuid::Uuid::new_v4().to_string();
    let added = command()
        .args([
            "destinations",
            "add",
            "--name",
            "d",
            "--plug",
            &plug,
            "--secret",
            SECRET,
        ])
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let key = command()
        .args(["api-keys", "create", "--name", "status", "--scope", "read"])
        .output()
        .unwrap();
    assert!(key.status.success());
    server.set_status_key(String::from_utf8(key.stdout).unwrap().trim());
    let plug: uuid::Uuid = plug.parse().unwrap();
    let client = client();
    wait_ready(&client, &server, |j| j["destinations"]["bound"] == 1).await;

    // Kill the postmaster once a third is acknowledged, holding the cluster directory's start
    // lock for a while so that the outage is long enough to look at.
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let outage = {
        let client = client.clone();
        let pg_dir = std::fs::canonicalize(data.path().join("pg")).unwrap();
        let readyz_url = server.url("/readyz");
        let status_key = server.status_key().to_owned();
        let data_dir = data.path().to_owned();
        tokio::spawn(async move {
            kill_rx.await.unwrap();
            let lock = nix::fcntl::Flock::lock(
                std::fs::File::open(&pg_dir).unwrap(),
                nix::fcntl::FlockArg::LockExclusive,
            )
            .unwrap();
            let postmaster = embedded_postmaster(&data_dir).unwrap();
            nix::sys::signal::kill(postmaster, Signal::SIGKILL).unwrap();
            let killed = Instant::now();
            let proc = format!("/proc/{postmaster}");
            while std::path::Path::new(&proc).exists() {
                assert!(
                    killed.elapsed() < Duration::from_secs(2),
                    "not reaped within 2 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let reaped = killed.elapsed();
            // While the database is down the spool takes deliveries, and /readyz says so.
            loop {
                let request = client.get(&readyz_url).bearer_auth(&status_key);
                let response = request.send().await.unwrap();
                let (status, json) = status_json(response).await;
                if status == 200
                    && json["status"] == "degraded: spooling"
                    && json["spool"]["deliveries"].as_u64().unwrap() > 0
                {
                    break;
                }
                assert!(
                    killed.elapsed() < Duration::from_secs(30),
                    "{status} {json}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            drop(lock);
            (reaped, Instant::now())
        })
    };
    let kill_tx = std::sync::Mutex::new(Some(kill_tx));
    let log = send_all(
        &client,
        &server.url("/ingest/kpn"),
        plug,
        SECRET,
        (0..DELIVERIES).collect(),
        CONCURRENCY,
        |acks| {
            if acks == DELIVERIES / 3
                && let Some(tx) = kill_tx.lock().unwrap().take()
            {
                let _ = tx.send(());
            }
        },
    )
    .await;
    let (reaped, released) = outage.await.unwrap();
    readyz_until(&client, &server, Duration::from_secs(60), database_ok).await;
    eprintln!(
        "postmaster reaped {reaped:?} after SIGKILL; database back {:?} after the start lock was released",
        released.elapsed()
    );

    // A second kill, this time nothing in the way: time from SIGKILL to a ready database.
    let first = embedded_postmaster(data.path()).unwrap();
    nix::sys::signal::kill(first, Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    readyz_until(&client, &server, Duration::from_secs(60), |s, j| {
        database_ok(s, j) && embedded_postmaster(data.path()).is_some_and(|p| p != first)
    })
    .await;
    eprintln!(
        "database back {:?} after SIGKILL of its postmaster",
        killed.elapsed()
    );

    let acked = retry_until_acked(&client, &server, plug, log).await;
    assert_eq!(acked.len(), DELIVERIES);
    wait_ready(&client, &server, |j| j["spool"]["deliveries"] == 0).await;
    let pg_dir = std::fs::canonicalize(data.path().join("pg")).unwrap();
    let url = format!(
        "postgres://postgres@localhost:5432/things?host={}",
        pg_dir.display()
    );
    let mut db = connect(&url).await;
    assert_stored_once(&mut db, &acked).await;
    drop(db);
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn readyz_is_503_only_when_neither_database_nor_spool_can_take_a_delivery() {
    let dir = tempfile::Builder::new()
        .prefix("things-ready-pg")
        .tempdir_in("/tmp")
        .unwrap();
    let options = EmbeddedOptions { durable: false };
    let pg = EmbeddedPostgres::start(dir.path(), &options).await.unwrap();
    let url = format!(
        "postgres://{}@localhost:{}/postgres?host={}",
        pg.user(),
        pg.port(),
        pg.socket_dir().display()
    );
    let env = Env {
        data_dir: tempfile::tempdir().unwrap(),
        database_url: url,
        database_name: "postgres".into(),
    };
    let plug = env.add_destination("d", &[]);
    // Room for a few deliveries only.
    let server = env.serve(&[
        "--db-timeout",
        "1s",
        "--spool-after",
        "300ms",
        "--spool-max",
        "2KiB",
    ]);
    let client = client();
    readyz_until(&client, &server, Duration::from_secs(10), database_ok).await;
    pg.stop().await.unwrap();
    readyz_until(&client, &server, Duration::from_secs(10), |s, j| {
        s == 200 && j["status"] == "degraded: spooling"
    })
    .await;

    let mut refused = false;
    for i in 0..50 {
        let body = common::load::unique_pack(i);
        let status = deliver(&client, &server, plug, SECRET, &body)
            .await
            .status();
        if status == 503 {
            refused = true;
            break;
        }
        assert_eq!(status, 200, "spooled");
    }
    assert!(refused, "the small spool filled up");
    let (status, json) = status_json(client.get(server.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(
        (status, &json["status"]),
        (503, &"not ready".into()),
        "{json}"
    );

    let pg = EmbeddedPostgres::start(dir.path(), &options).await.unwrap();
    readyz_until(&client, &server, Duration::from_secs(30), |s, j| {
        database_ok(s, j) && j["spool"]["deliveries"] == 0
    })
    .await;
    drop(server);
    pg.stop().await.unwrap();
}

/// The writer keeps its database connections between batches. One that died while idle (its
/// backend ended, as when the database restarts) costs the next batch a fresh connection,
/// not a spooled delivery.
#[tokio::test]
async fn a_writer_connection_that_died_idle_is_replaced_without_spooling() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let mut db = connect(&env.database_url).await;
    // More rounds than the writer has slots, so that kept connections are used again.
    for round in 0..8 {
        let body = format!(r#"[{{"bn":"urn:dev:IMEI:356938035643809:","n":"t","v":{round}}}]"#);
        let (status, json) =
            status_json(deliver(&client, &server, plug, SECRET, body.as_bytes()).await).await;
        assert_eq!(
            (status, json["status"].as_str()),
            (200, Some("stored")),
            "{json}"
        );
        // Every other backend of this database ends, the writer's kept ones among them.
        let ended: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
               AND backend_type = 'client backend'",
        )
        .fetch_one(&mut db)
        .await
        .unwrap();
        assert!(ended > 0);
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stored, 8);
}

/// The ids the writer remembers belong to the database it learnt them from. When the database
/// is replaced under a running server (a backup restored, a standby promoted), which ends every
/// connection, the next batch looks its ids up again instead of writing against rows that
/// are gone or now belong to another device.
#[tokio::test]
async fn remembered_ids_are_forgotten_when_the_database_goes_away() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&[]).await;
    let client = client();
    let mut db = connect(&env.database_url).await;
    let urn = "urn:dev:IMEI:356938035643809:";
    let send = |v: u32| {
        let body = format!(r#"[{{"bn":"{urn}","n":"t","v":{v}}}]"#);
        let (client, server) = (&client, &server);
        async move { status_json(deliver(client, server, plug, SECRET, body.as_bytes()).await).await }
    };
    // Warm every slot: each one has remembered the device and its series.
    for v in 0..8 {
        let (status, json) = send(v).await;
        assert_eq!(
            (status, json["status"].as_str()),
            (200, Some("stored")),
            "{json}"
        );
    }
    // The data is replaced by a copy in which those ids belong to another device.
    sqlx::raw_sql(
        "TRUNCATE messages, measurements, latest_values, series, devices RESTART IDENTITY CASCADE; \
         INSERT INTO devices (urn_key, urn, kind, first_seen, last_seen) \
             VALUES ('urn:dev:IMEI:000000000000001:', 'urn:dev:IMEI:000000000000001:', 'IMEI', now(), now()); \
         INSERT INTO series (device_id, name) SELECT id, 't' FROM devices;",
    )
    .execute(&mut db)
    .await
    .unwrap();
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND backend_type = 'client backend'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert!(ended > 0);

    for v in 0..8 {
        let (status, json) = send(100 + v).await;
        assert_eq!(status, 200, "{json}");
    }
    // Every row written since belongs to the device that sent it.
    let wrong: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM messages g JOIN devices d ON d.id = g.device_id \
                 WHERE d.urn_key <> $1) \
              + (SELECT count(*) FROM measurements m JOIN series s ON s.id = m.series_id \
                 JOIN devices d ON d.id = s.device_id WHERE d.urn_key <> $1) \
              + (SELECT count(*) FROM messages WHERE device_id IS NULL)",
    )
    .bind(things_receiver::senml::device_key(urn))
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(wrong, 0);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM measurements")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(stored, 8);
}

/// A batch that cannot commit (here it waits for a device's row, which another transaction
/// holds) must not hold up the deliveries behind it: the next batch runs beside it. With one
/// transaction in flight (`--writer-concurrency 1`) the second delivery would wait behind the
/// first until `--spool-after` and be spooled instead of stored.
#[tokio::test]
async fn a_batch_stuck_on_a_lock_does_not_hold_up_the_deliveries_behind_it() {
    let env = Env::new().await;
    let plug = env.add_destination("d", &[]);
    let server = env.serve_in_process(&["--spool-after", "10s"]).await;
    let client = client();
    let (stuck, free) = (
        "urn:dev:IMEI:356938035643809:",
        "urn:dev:IMEI:490154203237518:",
    );
    let body = |urn: &str, v: u32| format!(r#"[{{"bn":"{urn}","n":"t","v":{v}}}]"#);
    let bodies = [body(stuck, 0), body(free, 0), body(stuck, 1), body(free, 1)];
    // Both devices and their series are known to the writer: each later delivery is the
    // one-statement batch, which updates its device's row.
    for b in &bodies[..2] {
        let (status, json) =
            status_json(deliver(&client, &server, plug, SECRET, b.as_bytes()).await).await;
        assert_eq!((status, json["status"].as_str()), (200, Some("stored")));
    }
    let mut blocker = connect(&env.database_url).await;
    let blocker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut blocker)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("SELECT 1 FROM devices WHERE urn_key = $1 FOR UPDATE")
        .bind(things_receiver::senml::device_key(stuck))
        .execute(&mut blocker)
        .await
        .unwrap();

    let held = async {
        status_json(deliver(&client, &server, plug, SECRET, bodies[2].as_bytes()).await).await
    };
    let behind = async {
        let mut db = connect(&env.database_url).await;
        let waiting = "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))";
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let n: i64 = sqlx::query_scalar(waiting)
                .bind(blocker_pid)
                .fetch_one(&mut db)
                .await
                .unwrap();
            if n > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "the first batch never waited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answer =
            status_json(deliver(&client, &server, plug, SECRET, bodies[3].as_bytes()).await).await;
        let still_waiting: i64 = sqlx::query_scalar(waiting)
            .bind(blocker_pid)
            .fetch_one(&mut db)
            .await
            .unwrap();
        sqlx::query("COMMIT").execute(&mut blocker).await.unwrap();
        (answer, still_waiting)
    };
    let ((held_status, held_json), ((status, json), still_waiting)) = tokio::join!(held, behind);
    assert_eq!(
        (status, json["status"].as_str()),
        (200, Some("stored")),
        "{json}"
    );
    assert_eq!(
        still_waiting, 1,
        "stored while the first batch still waited"
    );
    assert_eq!(
        (held_status, held_json["status"].as_str()),
        (200, Some("stored")),
        "{held_json}"
    );
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT d.urn_key, d.message_count FROM devices d ORDER BY d.urn_key")
            .fetch_all(&mut connect(&env.database_url).await)
            .await
            .unwrap();
    assert_eq!(
        counts,
        [
            (things_receiver::senml::device_key(stuck), 2),
            (things_receiver::senml::device_key(free), 2)
        ]
    );
}
