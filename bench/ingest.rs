//! Ingest throughput benchmark: `cargo bench --bench ingest`.
//!
//! Drives the real release binary over TLS with keep-alive, against its real PostgreSQL
//! (a private cluster with fsync on), with unique, correctly signed KPN-shaped packs of 3 to 10
//! records. In the same invocation it measures two ceilings on the same machine:
//!
//! - a bare TLS server (same rustls policy) that only verifies the token and answers 200;
//! - a direct bulk insert of the same rows into PostgreSQL (`store_batch`, 500 deliveries per
//!   transaction, commits durable), into a fresh database of the current schema and, side by
//!   side, into one of the schema before series (`old_schema.rs`: its DDL and write path),
//!   alternated twice, best of each;
//!
//! and prints our throughput as a ratio of each, because this machine is shared and noisy.
//! A last phase drives the device door (`/ingestion/ip/senml/v1`, registered IMEI devices
//! signing with their own secret) at full speed, for its rate beside the destination door's.
//! Our server and the TLS ceiling are measured at `BENCH_CONCURRENCY` connections and at 8
//! (few concurrent senders, as a small KPN tenant gives).
//! Environment: `BENCH_SECONDS` (per phase, default 10), `BENCH_CONCURRENCY` (default 64),
//! `BENCH_SERVER_ARGS` (extra `serve` flags, e.g. `--writer-concurrency 1`).

mod old_schema;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use things_receiver::secrets::SecretKey;
use things_receiver::senml;
use things_receiver::store::deliveries::{Delivery, RawDelivery, Sender, store_batch};
use things_receiver::store::embedded::{EmbeddedOptions, EmbeddedPostgres};
use things_receiver::store::known_ids::KnownIds;
use things_receiver::token::{BodyDigest, Token};

const SECRET: &str = "Bench#Secret-0123456789abcdefghijklmn";
const BIN: &str = env!("CARGO_BIN_EXE_things-receiver");

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Devices registered for the device-door phase: as many as the destination phase's packs name.
const DEVICES: u64 = 1000;

/// The URN of registered device `n` (of [`DEVICES`]).
fn device_urn(n: u64) -> String {
    format!("urn:dev:IMEI:35000000000{n:04}:")
}

/// How a phase signs and addresses its deliveries.
#[derive(Clone, Copy)]
enum Door {
    /// KPN's destination door, with this plug; packs of 1000 LoRa devices.
    Destination(uuid::Uuid),
    /// The Internet device door; packs of the registered devices.
    Device,
}

/// A unique pack of 3 to 10 records.
fn pack(i: u64) -> Vec<u8> {
    pack_for(
        &format!(
            "urn:dev:DEVEUI:{:016X}:",
            0x0059_AC00_0000_0000u64 + i % 1000
        ),
        i,
    )
}

/// A unique pack of 3 to 10 records of the device `urn`.
fn pack_for(urn: &str, i: u64) -> Vec<u8> {
    let records = 3 + i % 8;
    let mut pack = format!(
        r#"[{{"bn":"{urn}","bt":{},"n":"payload","vs":"{:08x}"}}"#,
        1_700_000_000 + i,
        i
    );
    for r in 1..records {
        pack.push_str(&format!(
            r#",{{"n":"m{r}","u":"Cel","v":{}.{}}}"#,
            i % 40,
            r
        ));
    }
    pack.push(']');
    pack.into_bytes()
}

struct Run {
    deliveries: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
    errors: u64,
}

impl Run {
    fn rate(&self) -> f64 {
        self.deliveries as f64 / self.seconds
    }
    fn percentile(&mut self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }
}

/// Sends unique packs from `concurrency` keep-alive connections for `seconds`; with
/// `rate` set, paces them to that many per second in total.
async fn load(
    url: &str,
    door: Door,
    concurrency: u64,
    seconds: u64,
    rate: Option<f64>,
    start_at: u64,
) -> Run {
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .http1_only()
        .pool_max_idle_per_host(concurrency as usize)
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(start_at));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = client.clone();
        let url = url.to_owned();
        let next = next.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r));
            let mut due = Instant::now()
                + interval.map_or(Duration::ZERO, |i| {
                    i.mul_f64(worker as f64 / concurrency as f64)
                });
            while !stop.load(Ordering::Relaxed) {
                if let Some(interval) = interval {
                    tokio::time::sleep_until(due.into()).await;
                    due += interval;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let body = match door {
                    Door::Destination(_) => pack(i),
                    Door::Device => pack_for(&device_urn(i % DEVICES), i),
                };
                let token = Token::sign(&body, SECRET.as_bytes()).to_hex();
                let sent = Instant::now();
                let mut request = client.post(&url);
                if let Door::Destination(plug) = door {
                    request = request.header("Things-Plug-UUID", plug.to_string());
                }
                let result = request
                    .header("Things-Message-Token", token)
                    .header("Content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match result {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed().as_micros() as u64);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut run = Run {
        deliveries: 0,
        seconds: 0.0,
        latencies_us: Vec::new(),
        errors: 0,
    };
    for task in tasks {
        let (latencies, errors) = task.await.unwrap();
        run.deliveries += latencies.len() as u64;
        run.latencies_us.extend(latencies);
        run.errors += errors;
    }
    run.seconds = started.elapsed().as_secs_f64();
    run
}

/// CPU seconds (user + system) used so far by `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of `pid` in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The verify-only ceiling: same TLS policy, token check, 200.
async fn bare_server(data_dir: &Path) -> (String, axum_server::Handle<std::net::SocketAddr>) {
    let (cert, key) = things_receiver::tls::dev_certificate(data_dir).unwrap();
    let (chain, key) = things_receiver::tls::load_pem(&cert, &key).unwrap();
    let config = things_receiver::tls::server_config(chain, key).unwrap();
    let app = axum::Router::new().route(
        "/ingest/kpn",
        axum::routing::post(|headers: HeaderMap, body: Bytes| async move {
            let token = headers
                .get("things-message-token")
                .and_then(|v| v.to_str().ok())
                .and_then(Token::parse);
            match token {
                Some(t) if BodyDigest::new(&body).verify(SECRET.as_bytes(), &t) => StatusCode::OK,
                _ => StatusCode::UNAUTHORIZED,
            }
        }),
    );
    let handle = axum_server::Handle::new();
    let server = axum_server::bind_rustls(
        "127.0.0.1:0".parse().unwrap(),
        axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)),
    )
    .handle(handle.clone());
    tokio::spawn(server.serve(app.into_make_service()));
    let addr = handle.listening().await.unwrap();
    (format!("https://{addr}/ingest/kpn"), handle)
}

/// The database ceiling: the same deliveries stored directly, 500 per transaction, on two
/// connections (as many as commit concurrently in the server's writer at a time, roughly);
/// with `old`, through the schema and write path before series.
async fn bulk_insert(
    url: &str,
    destination: uuid::Uuid,
    seconds: u64,
    start_at: u64,
    old: bool,
) -> Run {
    let next = Arc::new(AtomicU64::new(start_at));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Shared by both connections, as the server's writer shares it between its transactions.
    let known = Arc::new(KnownIds::new());
    for _ in 0..2 {
        let url = url.to_owned();
        let next = next.clone();
        let known = known.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            let mut done = 0u64;
            while Instant::now() < deadline {
                let first = next.fetch_add(500, Ordering::Relaxed);
                if old {
                    let batch: Vec<old_schema::Old> = (first..first + 500)
                        .map(|i| {
                            let body = pack(i);
                            let received_at = Utc::now();
                            old_schema::Old {
                                token: Token::sign(&body, SECRET.as_bytes()).0,
                                records: senml::resolve(&body, received_at).unwrap(),
                                received_at,
                                body,
                            }
                        })
                        .collect();
                    old_schema::store_batch(&mut conn, destination, &batch).await;
                    done += 500;
                    continue;
                }
                let batch: Vec<Delivery> = (first..first + 500)
                    .map(|i| {
                        let body = Bytes::from(pack(i));
                        let token = Token::sign(&body, SECRET.as_bytes());
                        let received_at = Utc::now();
                        Delivery {
                            decoded: senml::resolve(&body, received_at).map_err(|e| e.to_string()),
                            answers_device: false,
                            raw: RawDelivery {
                                sender: Sender::Destination {
                                    id: destination,
                                    bind_plug: None,
                                },
                                token,
                                received_at,
                                body,
                                headers: Default::default(),
                            },
                        }
                    })
                    .collect();
                store_batch(&mut conn, &batch, &known).await.unwrap();
                done += 500;
            }
            done
        }));
    }
    let mut deliveries = 0;
    for task in tasks {
        deliveries += task.await.unwrap();
    }
    Run {
        deliveries,
        seconds: started.elapsed().as_secs_f64(),
        latencies_us: Vec::new(),
        errors: 0,
    }
}

#[tokio::main]
async fn main() {
    things_receiver::tls::install_default_provider();
    let seconds = env_or("BENCH_SECONDS", 10);
    let concurrency = env_or("BENCH_CONCURRENCY", 64);
    let work = tempfile::Builder::new()
        .prefix("things-bench")
        .tempdir_in("/tmp")
        .unwrap();

    // PostgreSQL with its production settings: fsync and synchronous_commit on.
    let pg = EmbeddedPostgres::start(&work.path().join("pg"), &EmbeddedOptions { durable: true })
        .await
        .unwrap();
    let url = format!(
        "postgres://{}@localhost:{}/postgres?host={}",
        pg.user(),
        pg.port(),
        pg.socket_dir().display()
    );
    let data_dir = work.path().join("data");
    let cli = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--database-url")
            .arg(&url)
            .args(args)
            .env("THINGS_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let plug = uuid::Uuid::new_v4();
    cli(&[
        "destinations",
        "add",
        "--name",
        "bench",
        "--plug",
        &plug.to_string(),
        "--secret",
        SECRET,
    ]);
    // The CLI created the sealing key; registering in-process is faster than a CLI each.
    {
        let key = SecretKey::load(None, &data_dir.join("secret.key"), false).unwrap();
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        for n in 0..DEVICES {
            things_receiver::admin::devices::add(&pool, &key, &device_urn(n), Some(SECRET.into()))
                .await
                .unwrap();
        }
        pool.close().await;
    }

    let mut server = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--database-url")
        .arg(&url)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(
            std::env::var("BENCH_SERVER_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env("THINGS_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let base_url = {
        use std::io::BufRead;
        let stdout = server.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let first = lines.next().unwrap().unwrap();
        std::thread::spawn(move || for _ in lines {});
        first
            .split(" listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_owned()
    };
    let server_url = format!("{base_url}/ingest/kpn");
    let device_url = format!("{base_url}/ingestion/ip/senml/v1");
    let pid = server.id();

    println!(
        "ingest benchmark: {seconds} s per phase, {concurrency} keep-alive TLS connections, packs of 3-10 records"
    );

    // 1. Our server at full speed.
    let cpu_before = cpu_seconds(pid);
    let mut ours = load(
        &server_url,
        Door::Destination(plug),
        concurrency,
        seconds,
        None,
        0,
    )
    .await;
    let cpu = cpu_seconds(pid) - cpu_before;
    let max_rate = ours.rate();
    // 2. Our server at half that rate, for latency.
    let mut half = load(
        &server_url,
        Door::Destination(plug),
        concurrency,
        seconds,
        Some(max_rate / 2.0),
        100_000_000,
    )
    .await;
    // 3. Our server with few senders.
    let mut few = load(
        &server_url,
        Door::Destination(plug),
        8,
        seconds,
        None,
        400_000_000,
    )
    .await;
    let rss = peak_rss_mib(pid);
    // 4. The device door at full speed, on the same server.
    let mut devices = load(
        &device_url,
        Door::Device,
        concurrency,
        seconds,
        None,
        600_000_000,
    )
    .await;

    // Count what is really stored (spooled deliveries would not count as stored).
    let mut db = PgConnection::connect(&url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = server.wait();

    // 4. Ceiling: verify-only TLS server.
    let (bare_url, handle) = bare_server(&work.path().join("bare")).await;
    let mut bare = load(
        &bare_url,
        Door::Destination(plug),
        concurrency,
        seconds,
        None,
        200_000_000,
    )
    .await;
    let mut bare_few = load(
        &bare_url,
        Door::Destination(plug),
        8,
        seconds,
        None,
        500_000_000,
    )
    .await;
    handle.shutdown();

    // 5. Ceilings: direct bulk insert of the same rows into fresh databases, of the schema
    // before series and of the current one, one after the other.
    let bulk_db = |name: &str| url.replace("/postgres?", &format!("/{name}?"));
    for name in ["bulk_old", "bulk_new"] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut db)
            .await
            .unwrap();
    }
    let destination = uuid::Uuid::new_v4();
    let mut old_db = PgConnection::connect(&bulk_db("bulk_old")).await.unwrap();
    old_schema::migrate(&mut old_db).await;
    let mut new_db = PgConnection::connect(&bulk_db("bulk_new")).await.unwrap();
    sqlx::migrate!("./migrations")
        .run(&mut new_db)
        .await
        .unwrap();
    for conn in [&mut old_db, &mut new_db] {
        sqlx::query(
            "INSERT INTO destinations (id, name, secret_sealed) VALUES ($1, 'bench', '\\x00')",
        )
        .bind(destination)
        .execute(conn)
        .await
        .unwrap();
    }
    // Alternated twice, best of each kept: the machine is shared, and a burst of other work
    // should not decide the comparison.
    let (mut bulk_old, mut bulk) = (Vec::new(), Vec::new());
    for round in 0..2u64 {
        let start = 300_000_000 + round * 50_000_000;
        bulk_old.push(bulk_insert(&bulk_db("bulk_old"), destination, seconds, start, true).await);
        bulk.push(bulk_insert(&bulk_db("bulk_new"), destination, seconds, start, false).await);
    }
    let best = |runs: Vec<Run>| {
        runs.into_iter()
            .max_by(|a, b| a.rate().total_cmp(&b.rate()))
            .unwrap()
    };
    let (bulk_old, bulk) = (best(bulk_old), best(bulk));

    println!();
    println!(
        "{:<44} {:>12} {:>9} {:>9} {:>9}",
        "phase", "deliveries/s", "p50 ms", "p99 ms", "errors"
    );
    let line = |name: &str, run: &mut Run| {
        let (p50, p99) = (run.percentile(0.5), run.percentile(0.99));
        println!(
            "{:<44} {:>12.0} {:>9.2} {:>9.2} {:>9}",
            name,
            run.rate(),
            p50,
            p99,
            run.errors
        );
    };
    line(
        &format!("things-receiver, full speed, {concurrency} conn"),
        &mut ours,
    );
    line("things-receiver, half of max rate", &mut half);
    line("things-receiver, full speed, 8 conn", &mut few);
    line("things-receiver, device door, full speed", &mut devices);
    line(
        &format!("ceiling: TLS + token check, {concurrency} conn"),
        &mut bare,
    );
    line("ceiling: TLS + token check, 8 conn", &mut bare_few);
    for (name, run) in [
        ("ceiling: bulk insert (500/tx), old schema", &bulk_old),
        ("ceiling: bulk insert (500/tx), this schema", &bulk),
    ] {
        println!(
            "{:<44} {:>12.0} {:>9} {:>9} {:>9}",
            name,
            run.rate(),
            "-",
            "-",
            0
        );
    }
    println!();
    println!(
        "stored in PostgreSQL: {stored} of {} acknowledged",
        ours.deliveries + half.deliveries + few.deliveries + devices.deliveries
    );
    println!(
        "server CPU at full speed: {:.2} cores; server peak RSS: {rss:.1} MiB",
        cpu / ours.seconds
    );
    println!(
        "ratio to TLS+verify ceiling: {:.3} at {concurrency} connections, {:.3} at 8",
        max_rate / bare.rate(),
        few.rate() / bare_few.rate()
    );
    println!(
        "ratio to bulk-insert ceiling: {:.2}",
        max_rate / bulk.rate()
    );
    println!(
        "bulk-insert ceiling, this schema / old schema: {:.2}",
        bulk.rate() / bulk_old.rate()
    );
    println!(
        "device door: {:.2} of the destination door's rate, {:.2} of the TLS+verify ceiling",
        devices.rate() / max_rate,
        devices.rate() / bare.rate()
    );
    pg.stop().await.unwrap();
}
