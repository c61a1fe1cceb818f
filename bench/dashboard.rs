//! Dashboard API benchmark: loads a synthetic fleet into a private PostgreSQL cluster, runs
//! the real `things-receiver` binary against it and times the real API over HTTPS.
//!
//! `cargo bench --bench dashboard` (release build). The data set is configurable so it can be
//! run small: BENCH_DEVICES (default 1000) x BENCH_NAMES (10) x BENCH_POINTS (1000 per name)
//! spread over BENCH_DAYS (90); BENCH_REQUESTS (default 200) timed requests per scenario.
//! Everything lives in a temporary directory that is removed at the end.
//!
//! Figures are reported as median and p99, and as ratios to a baseline measured in the same
//! run over the same connection (`GET /healthz`: TLS, HTTP and routing but no database), with
//! the `EXPLAIN (ANALYZE, BUFFERS)` plan of each query and the storage cost per measurement.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use things_receiver::store::embedded::{EmbeddedOptions, EmbeddedPostgres};

const BIN: &str = env!("CARGO_BIN_EXE_things-receiver");
const SECRET: &str = "Bench-Secret#For.Things/Loading!2024";
/// 2024-01-01T00:00:00Z: the start of the loaded period.
const START: i64 = 1_704_067_200;
/// Points (of every device) per load statement.
const LOAD_BATCH: i64 = 50;

fn setting(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v: &i64| *v > 0)
        .unwrap_or(default)
}

struct Shape {
    devices: i64,
    names: i64,
    points: i64,
    days: i64,
}

impl Shape {
    fn urn(&self, device: i64) -> String {
        format!("urn:dev:DEVEUI:{device:016X}:")
    }
    /// Seconds between two points of one series.
    fn step(&self) -> i64 {
        (self.days * 86_400 / self.points).max(1)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    things_receiver::tls::install_default_provider();
    let shape = Shape {
        devices: setting("BENCH_DEVICES", 1000),
        names: setting("BENCH_NAMES", 10),
        points: setting("BENCH_POINTS", 1000),
        days: setting("BENCH_DAYS", 90),
    };
    let requests = setting("BENCH_REQUESTS", 200) as usize;
    let total = shape.devices * shape.names * shape.points;
    println!(
        "# Dashboard API benchmark\n\n{} devices x {} names x {} points over {} days = {} measurements; {} requests per scenario\n",
        shape.devices, shape.names, shape.points, shape.days, total, requests
    );

    let work = tempfile::tempdir()?;
    let pg = EmbeddedPostgres::start(&work.path().join("pg"), &EmbeddedOptions { durable: false })
        .await?;
    let result = run(&shape, requests, &pg, work.path()).await;
    if let Err(e) = pg.stop().await {
        eprintln!("stopping the benchmark cluster: {e}");
    }
    result
}

async fn run(
    shape: &Shape,
    requests: usize,
    pg: &EmbeddedPostgres,
    work: &std::path::Path,
) -> anyhow::Result<()> {
    let admin_url = format!(
        "postgres://{}@localhost:{}/postgres?host={}",
        pg.user(),
        pg.port(),
        pg.socket_dir().display()
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
    sqlx::raw_sql("CREATE DATABASE bench")
        .execute(&mut admin)
        .await?;
    let url = admin_url.replace("/postgres?", "/bench?");

    // The CLI migrates the database, adds the destination and an API key, as an operator would.
    let data_dir = work.join("data");
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(BIN)
            .env("THINGS_LOG", "warn")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--database-url")
            .arg(&url)
            .args(args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    };
    cli(&[
        "destinations",
        "add",
        "--name",
        "bench",
        "--plug",
        "0b9f6a0e-5c3a-4d6e-9f1a-2b3c4d5e6f70",
        "--secret",
        SECRET,
    ])?;
    let key = cli(&["api-keys", "create", "--name", "bench", "--scope", "read"])?
        .trim()
        .to_owned();

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await?;
    let loaded = Instant::now();
    load(&pool, shape).await?;
    println!(
        "Loaded in {:.1} s (bulk INSERT ... SELECT in time order, {LOAD_BATCH} points of every device per statement, then VACUUM ANALYZE)\n",
        loaded.elapsed().as_secs_f64()
    );
    storage(&pool).await?;

    let mut server = Server::start(&data_dir, &url)?;
    let outcome = measure(shape, requests, &pool, &server.base_url, &key).await;
    server.stop();
    outcome
}

/// Bulk load: per batch of points one statement per table, generated inside PostgreSQL.
/// Triggers are skipped (`session_replication_role = replica`) and what they maintain is
/// computed once at the end: message counts and latest values.
async fn load(pool: &PgPool, shape: &Shape) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql("SET session_replication_role = replica; SET synchronous_commit = off")
        .execute(&mut *conn)
        .await?;
    let destination: uuid::Uuid = sqlx::query_scalar("SELECT id FROM destinations LIMIT 1")
        .fetch_one(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO devices (urn_key, urn, kind, first_seen, last_seen, message_count) \
         SELECT k, k, 'DEVEUI', to_timestamp($2), to_timestamp($2 + $3 * ($4 - 1)), $4 \
         FROM (SELECT 'urn:dev:DEVEUI:' || lpad(upper(to_hex(d)), 16, '0') || ':' AS k \
               FROM generate_series(1, $1::int8) d) s",
    )
    .bind(shape.devices)
    .bind(START as f64)
    .bind(shape.step() as f64)
    .bind(shape.points)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO series (device_id, name, unit) \
         SELECT d.id, 'name' || n, 'Cel' FROM devices d CROSS JOIN generate_series(1, $1::int8) n \
         ORDER BY d.id, n",
    )
    .bind(shape.names)
    .execute(&mut *conn)
    .await?;
    // In time order, every device interleaved, as real ingestion writes them: the rows of
    // one series are spread over the table, not clustered.
    let mut first = 0;
    while first < shape.points {
        let last = (first + LOAD_BATCH - 1).min(shape.points - 1);
        let batch = Instant::now();
        let before: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM messages")
            .fetch_one(&mut *conn)
            .await?;
        // One message per (device, point), carrying one record per name.
        sqlx::query(
            "INSERT INTO messages (destination_id, token, received_at, body, headers, status, record_count, device_id) \
             SELECT $1, sha256(int8send(dv.id * 1000000 + p)), \
                    to_timestamp($4 + p * $5 + (dv.id % 60)), \
                    convert_to('[{\"bn\":\"' || dv.urn || '\",\"bt\":' || ($4 + p * $5 + (dv.id % 60)) || ',\"n\":\"temperature\",\"v\":21.5}]', 'UTF8'), \
                    '{\"content-type\":\"application/json\"}', 'stored', $6, dv.id \
             FROM generate_series($2::int8, $3::int8) p CROSS JOIN devices dv \
             ORDER BY p, dv.id",
        )
        .bind(destination)
        .bind(first)
        .bind(last)
        .bind(START as f64)
        .bind(shape.step() as f64)
        .bind(shape.names as i32)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO measurements (series_id, time, value) \
             SELECT s.id, m.received_at, \
                    round((20 + 10 * sin(extract(epoch FROM m.received_at) / 86400.0 + n) + random())::numeric, 2)::float8 \
             FROM messages m CROSS JOIN generate_series(1, $2::int8) n \
             JOIN series s ON s.device_id = m.device_id AND s.name = 'name' || n \
             WHERE m.id > $1 ORDER BY m.id, n",
        )
        .bind(before)
        .bind(shape.names)
        .execute(&mut *conn)
        .await?;
        eprintln!(
            "  points {first}..{last} of every device loaded in {:.1} s",
            batch.elapsed().as_secs_f64()
        );
        first = last + 1;
    }
    sqlx::query(
        "WITH last AS (SELECT device_id, max(id) AS id FROM messages GROUP BY device_id) \
         INSERT INTO latest_values (device_id, name, time, unit, value, message_id) \
         SELECT DISTINCT ON (s.device_id, s.name) s.device_id, s.name, m.time, s.unit, m.value, last.id \
         FROM measurements m JOIN series s ON s.id = m.series_id \
         JOIN last ON last.device_id = s.device_id \
         ORDER BY s.device_id, s.name, m.time DESC, m.id DESC",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&mut *conn).await?;
    Ok(())
}

/// Bytes on disk per measurement: heap, TOAST and every index, over all partitions if the
/// table is partitioned, plus the series table (heap and indexes) the rows refer to.
async fn storage(pool: &PgPool) -> anyhow::Result<()> {
    let (rows, heap, indexes, series): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM measurements), \
                sum(pg_table_size(relid))::int8, sum(pg_indexes_size(relid))::int8, \
                (SELECT CASE WHEN to_regclass('series') IS NULL THEN 0 \
                        ELSE pg_total_relation_size('series') END)::int8 \
         FROM (SELECT relid FROM pg_partition_tree('measurements') \
               UNION SELECT 'measurements'::regclass) t",
    )
    .fetch_one(pool)
    .await?;
    let per_row = |bytes: i64| bytes as f64 / rows.max(1) as f64;
    println!("## Storage\n");
    println!(
        "| measurements | table | indexes | series | total | bytes per row (table + indexes + series) |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {rows} | {} MiB | {} MiB | {} MiB | {} MiB | {:.0} + {:.0} + {:.1} = {:.0} |\n",
        heap >> 20,
        indexes >> 20,
        series >> 20,
        (heap + indexes + series) >> 20,
        per_row(heap),
        per_row(indexes),
        per_row(series),
        per_row(heap + indexes + series)
    );
    Ok(())
}

struct Server {
    child: Child,
    base_url: String,
}

impl Server {
    fn start(data_dir: &std::path::Path, url: &str) -> anyhow::Result<Server> {
        let mut child = Command::new(BIN)
            .env("THINGS_LOG", "warn")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--database-url")
            .arg(url)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut base_url = None;
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.split(" listening on ").nth(1) {
                base_url = Some(rest.trim().to_owned());
            }
            if line.starts_with("Stop with") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        match base_url {
            Some(base_url) => Ok(Server { child, base_url }),
            None => {
                let _ = child.kill();
                anyhow::bail!("the server did not start")
            }
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds a request path or an SQL text from the shape, a device number and a day offset.
type Builder = Box<dyn Fn(&Shape, i64, i64) -> String>;

struct Scenario {
    name: &'static str,
    /// The path of one request.
    path: Builder,
    /// The SQL the API runs for it, for EXPLAIN (with the same parameters).
    explain: Option<Builder>,
}

fn day_start(day: i64) -> i64 {
    START + day * 86_400
}

fn rfc3339(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

async fn measure(
    shape: &Shape,
    requests: usize,
    pool: &PgPool,
    base_url: &str,
    key: &str,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    // The tenth page of all measurements starts after nine pages: find its cursor once.
    let mut cursor = String::new();
    for _ in 0..9 {
        let page: serde_json::Value = client
            .get(format!("{base_url}/api/v1/measurements?limit=100{cursor}"))
            .bearer_auth(key)
            .send()
            .await?
            .json()
            .await?;
        let next = page["next_cursor"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("fewer than ten pages"))?;
        cursor = format!("&cursor={next}");
    }
    let tenth = cursor.clone();
    // The API's first window across devices ends at the newest delivery, found first.
    let newest: f64 =
        sqlx::query_scalar("SELECT extract(epoch FROM max(received_at))::float8 FROM messages")
            .fetch_one(pool)
            .await?;
    let days = shape.days.max(31);
    let series_days = move |d: i64| (d % (days - 30)).max(0);
    let scenarios: Vec<Scenario> = vec![
        Scenario {
            name: "baseline: GET /healthz",
            path: Box::new(|_, _, _| "/healthz".to_owned()),
            explain: None,
        },
        Scenario {
            name: "latest values of one device",
            path: Box::new(|s, d, _| format!("/api/v1/devices/{}/latest", s.urn(d))),
            explain: Some(Box::new(|_, d, _| {
                format!(
                    "SELECT name, time, unit, value, string_value, bool_value, data_value, sum \
                     FROM latest_values WHERE device_id = {d} ORDER BY name"
                )
            })),
        },
        Scenario {
            name: "one day of one series, 1-minute buckets",
            path: Box::new(move |s, d, day| {
                let from = day_start(series_days(day));
                format!(
                    "/api/v1/series?device={}&name=name3&from={}&to={}&every=1m",
                    s.urn(d),
                    rfc3339(from),
                    rfc3339(from + 86_400)
                )
            }),
            explain: Some(Box::new(move |_, d, day| {
                let from = day_start(series_days(day));
                series_sql(d, from, from + 86_400, "1 minute")
            })),
        },
        Scenario {
            name: "30 days of one series, 1-hour buckets",
            path: Box::new(move |s, d, day| {
                let from = day_start(series_days(day));
                format!(
                    "/api/v1/series?device={}&name=name3&from={}&to={}&every=1h",
                    s.urn(d),
                    rfc3339(from),
                    rfc3339(from + 30 * 86_400)
                )
            }),
            explain: Some(Box::new(move |_, d, day| {
                let from = day_start(series_days(day));
                series_sql(d, from, from + 30 * 86_400, "1 hour")
            })),
        },
        Scenario {
            name: "first page of measurements (100)",
            path: Box::new(|_, _, _| "/api/v1/measurements?limit=100".to_owned()),
            explain: Some(Box::new(move |_, _, _| page_sql(newest))),
        },
        Scenario {
            name: "tenth page of measurements (100)",
            path: Box::new(move |_, _, _| format!("/api/v1/measurements?limit=100{tenth}")),
            explain: None,
        },
        Scenario {
            name: "first page of one device's measurements (100)",
            path: Box::new(|s, d, _| format!("/api/v1/measurements?device={}&limit=100", s.urn(d))),
            explain: Some(Box::new(|_, d, _| device_page_sql(d))),
        },
        Scenario {
            name: "devices page (100, with message counts)",
            path: Box::new(|_, _, _| "/api/v1/devices?limit=100".to_owned()),
            explain: Some(Box::new(|_, _, _| {
                "SELECT id, urn, kind, first_seen, last_seen, message_count FROM devices \
                 WHERE TRUE ORDER BY id LIMIT 101"
                    .to_owned()
            })),
        },
    ];

    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut results = Vec::new();
    for scenario in &scenarios {
        // Warm-up: connection, plans, caches.
        for _ in 0..5 {
            let path = (scenario.path)(shape, 1, 0);
            let status = client
                .get(format!("{base_url}{path}"))
                .bearer_auth(key)
                .send()
                .await?
                .status();
            anyhow::ensure!(status.is_success(), "{path}: {status}");
        }
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0usize;
        for _ in 0..requests {
            let device = rng.random_range(1..=shape.devices);
            let day = rng.random_range(0..shape.days);
            let path = (scenario.path)(shape, device, day);
            let started = Instant::now();
            let response = client
                .get(format!("{base_url}{path}"))
                .bearer_auth(key)
                .send()
                .await?;
            let status = response.status();
            let body = response.bytes().await?;
            times.push(started.elapsed());
            anyhow::ensure!(status.is_success(), "{path}: {status}");
            bytes += body.len();
        }
        times.sort();
        let median = times[times.len() / 2];
        let p99 = times[((times.len() * 99) / 100).min(times.len() - 1)];
        results.push((scenario.name, median, p99, bytes / requests));
    }

    let baseline = results[0].1.as_secs_f64();
    println!("## Latency (HTTPS, one keep-alive connection, sequential requests)\n");
    println!("| scenario | median ms | p99 ms | median / baseline | answer bytes |");
    println!("|---|---|---|---|---|");
    for (name, median, p99, bytes) in &results {
        println!(
            "| {name} | {:.2} | {:.2} | {:.1}x | {bytes} |",
            median.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            median.as_secs_f64() / baseline
        );
    }
    println!("\n## Plans (EXPLAIN ANALYZE, BUFFERS, for a random device)\n");
    let device = rng.random_range(1..=shape.devices);
    let day = rng.random_range(0..shape.days);
    for scenario in &scenarios {
        let Some(explain) = &scenario.explain else {
            continue;
        };
        let sql = explain(shape, device, day);
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, BUFFERS) {sql}"
        )))
        .fetch_all(pool)
        .await?;
        println!("### {}\n\n```\n{}\n```\n", scenario.name, plan.join("\n"));
    }
    Ok(())
}

/// The query `GET /series` runs (store::series::buckets, agg=avg).
fn series_sql(device: i64, from: i64, to: i64, every: &str) -> String {
    format!(
        "SELECT s.name, date_bin(INTERVAL '{every}', m.time, TIMESTAMPTZ 'epoch') AS bucket, avg(m.value) AS value \
         FROM series s JOIN measurements m ON m.series_id = s.id \
         WHERE s.device_id = {device} AND s.name = ANY(ARRAY['name3']) \
           AND m.time >= to_timestamp({from}) AND m.time < to_timestamp({to}) \
         GROUP BY s.name, bucket ORDER BY s.name, bucket"
    )
}

const ROW_COLUMNS: &str = "m.id, d.urn AS device, s.name, s.unit, m.time, m.value, \
     m.string_value, m.string_escaped, m.bool_value, m.data_value, m.sum";

/// The query `GET /measurements` runs for a first page across devices
/// (store::measurements::list): its first time window, the hour before the newest delivery.
fn page_sql(newest: f64) -> String {
    format!(
        "SELECT {ROW_COLUMNS} FROM (SELECT * FROM measurements m \
               WHERE m.time >= to_timestamp({newest}) - INTERVAL '1 hour' \
               ORDER BY m.time DESC, m.id DESC LIMIT 101) m \
         JOIN series s ON s.id = m.series_id JOIN devices d ON d.id = s.device_id \
         ORDER BY m.time DESC, m.id DESC"
    )
}

/// The query `GET /measurements?device=` runs for a first page: the newest rows of each of
/// the device's series, merged.
fn device_page_sql(device: i64) -> String {
    format!(
        "SELECT {ROW_COLUMNS} FROM series s JOIN devices d ON d.id = s.device_id \
         CROSS JOIN LATERAL (SELECT * FROM measurements m WHERE m.series_id = s.id \
                             ORDER BY m.time DESC, m.id DESC LIMIT 101) m \
         WHERE s.device_id = {device} ORDER BY m.time DESC, m.id DESC LIMIT 101"
    )
}
