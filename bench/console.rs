//! The console's deliveries list against a million messages: loads a synthetic history into
//! a private PostgreSQL cluster, runs the real `things-receiver` binary against it and times
//! `GET /api/v1/deliveries` over HTTPS: the first page, a page deep behind a cursor, each
//! filter, and text search for a common and a rare string.
//!
//! `cargo bench --bench console` (release build). BENCH_MESSAGES (default 1,000,000) over
//! BENCH_DAYS (30), BENCH_EVENTS door events (5,000), BENCH_REQUESTS (100) timed requests
//! per scenario. Median and p99, and the `EXPLAIN (ANALYZE, BUFFERS)` of the main queries.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgPool};
use things_receiver::store::embedded::{EmbeddedOptions, EmbeddedPostgres};

const BIN: &str = env!("CARGO_BIN_EXE_things-receiver");
const SECRET: &str = "Bench-Secret#For.Things/Loading!2024";
/// 2024-01-01T00:00:00Z: the start of the loaded period.
const START: i64 = 1_704_067_200;
/// Destinations, devices (the last tenth registered for the device doors).
const DESTINATIONS: i64 = 10;
const DEVICES: i64 = 1000;
/// Messages per load statement.
const LOAD_BATCH: i64 = 100_000;
/// One message in this many carries the rare marker.
const RARE_EVERY: i64 = 250_000;

fn setting(name: &str, default: i64) -> i64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v: &i64| *v > 0)
        .unwrap_or(default)
}

fn urn(device: i64) -> String {
    format!("urn:dev:IMEI:35{device:013}:")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    things_receiver::tls::install_default_provider();
    let messages = setting("BENCH_MESSAGES", 1_000_000);
    let days = setting("BENCH_DAYS", 30);
    let events = setting("BENCH_EVENTS", 5_000);
    let requests = setting("BENCH_REQUESTS", 100) as usize;
    println!(
        "# Console deliveries list benchmark\n\n{messages} messages over {days} days \
         ({DESTINATIONS} destinations, {DEVICES} devices, a tenth of them through the device \
         doors, 1% quarantined), {events} door events; {requests} requests per scenario\n"
    );
    let work = tempfile::tempdir()?;
    let pg = EmbeddedPostgres::start(&work.path().join("pg"), &EmbeddedOptions { durable: false })
        .await?;
    let result = run(messages, days, events, requests, &pg, work.path()).await;
    if let Err(e) = pg.stop().await {
        eprintln!("stopping the benchmark cluster: {e}");
    }
    result
}

async fn run(
    messages: i64,
    days: i64,
    events: i64,
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
    for d in 0..DESTINATIONS {
        let plug = format!("0b9f6a0e-5c3a-4d6e-9f1a-2b3c4d5e6f{d:02}");
        let name = format!("dest{d}");
        cli(&[
            "destinations",
            "add",
            "--name",
            &name,
            "--plug",
            &plug,
            "--secret",
            SECRET,
        ])?;
    }
    // A destination that never received anything: its last stored delivery is looked for too.
    cli(&[
        "destinations",
        "add",
        "--name",
        "silent",
        "--plug",
        "0b9f6a0e-5c3a-4d6e-9f1a-2b3c4d5e6fff",
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
    load(&pool, messages, days, events).await?;
    println!(
        "Loaded in {:.1} s (INSERT ... SELECT generate_series in time order, then VACUUM ANALYZE)\n",
        loaded.elapsed().as_secs_f64()
    );
    let mut server = Server::start(&data_dir, &url)?;
    let outcome = measure(requests, days, &pool, &server.base_url, &key).await;
    server.stop();
    outcome
}

/// Devices, registrations for the last tenth, then messages in time order (every device
/// interleaved, as ingestion writes them) and door events spread over the same period.
async fn load(pool: &PgPool, messages: i64, days: i64, events: i64) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql("SET session_replication_role = replica; SET synchronous_commit = off")
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO devices (urn_key, urn, kind, first_seen, last_seen) \
         SELECT 'urn:dev:IMEI:35' || lpad(d::text, 13, '0') || ':', \
                'urn:dev:IMEI:35' || lpad(d::text, 13, '0') || ':', 'IMEI', \
                to_timestamp($2), to_timestamp($2) FROM generate_series(1, $1::int8) d",
    )
    .bind(DEVICES)
    .bind(START as f64)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO device_keys (id, urn_key, urn, kind, secret_sealed) \
         SELECT gen_random_uuid(), urn_key, urn, 'IMEI', '\\x00' FROM devices \
         WHERE id > $1 * 9 / 10",
    )
    .bind(DEVICES)
    .execute(&mut *conn)
    .await?;
    let step = (days * 86_400) as f64 / messages as f64;
    let mut first = 1;
    while first <= messages {
        let last = (first + LOAD_BATCH - 1).min(messages);
        let batch = Instant::now();
        // Message g: device g % DEVICES + 1; the devices past nine tenths post through the
        // device doors (m2m and ip alternately), the others through destination g % 10.
        sqlx::query(
            "INSERT INTO messages (destination_id, device_key_id, door, token, received_at, body, \
                                   headers, status, decode_error, record_count, device_id) \
             SELECT CASE WHEN k.id IS NULL THEN x.id END, k.id, \
                    CASE WHEN k.id IS NULL THEN 'destination' WHEN g % 2 = 0 THEN 'm2m' ELSE 'ip' END, \
                    sha256(int8send(g)), to_timestamp($3 + g * $4), \
                    convert_to(CASE WHEN g % 100 = 7 THEN 'not json ' || g \
                               ELSE '[{\"bn\":\"' || dv.urn || '\",\"bt\":' || ($3 + g * $4)::int8 \
                                    || ',\"n\":\"temperature\",\"u\":\"Cel\",\"v\":' || (g % 40) \
                                    || CASE WHEN g % $5 = 0 THEN '},{\"n\":\"rare-marker\",\"vs\":\"x\"' ELSE '' END \
                                    || '},{\"n\":\"humidity\",\"v\":50}]' END, 'UTF8'), \
                    '{\"content-type\":\"application/json\"}', \
                    CASE WHEN g % 100 = 7 THEN 'quarantined' ELSE 'stored' END, \
                    CASE WHEN g % 100 = 7 THEN 'not a SenML pack' END, \
                    CASE WHEN g % 100 = 7 THEN 0 ELSE 2 END, \
                    CASE WHEN g % 100 = 7 THEN NULL ELSE dv.id END \
             FROM generate_series($1::int8, $2::int8) g \
             JOIN devices dv ON dv.id = g % 1000 + 1 \
             LEFT JOIN device_keys k ON k.urn_key = dv.urn_key \
             JOIN (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n FROM destinations \
                   WHERE name <> 'silent') x \
               ON x.n = g % 10 \
             ORDER BY g",
        )
        .bind(first)
        .bind(last)
        .bind(START as f64)
        .bind(step)
        .bind(RARE_EVERY)
        .execute(&mut *conn)
        .await?;
        eprintln!(
            "  messages {first}..{last} loaded in {:.1} s",
            batch.elapsed().as_secs_f64()
        );
        first = last + 1;
    }
    // Door events: rejections (most), duplicates and spooled, across the period.
    sqlx::query(
        "INSERT INTO door_events (id, received_at, door, verdict, status, reason, plug, \
                                  device_urn, body, body_size, stored_bytes) \
         SELECT gen_random_uuid(), to_timestamp($2 + g * $3), \
                CASE WHEN g % 5 = 0 THEN 'ip' ELSE 'destination' END, \
                CASE WHEN g % 10 = 1 THEN 'duplicate' WHEN g % 10 = 2 THEN 'spooled' ELSE 'rejected' END, \
                CASE WHEN g % 10 IN (1, 2) THEN 200 ELSE 401 END, \
                CASE WHEN g % 10 = 1 THEN 'duplicate' WHEN g % 10 = 2 THEN 'spooled' \
                     WHEN g % 3 = 0 THEN 'bad_pack' ELSE 'not_verified' END, \
                CASE WHEN g % 5 = 0 THEN NULL \
                     ELSE ('0b9f6a0e-5c3a-4d6e-9f1a-2b3c4d5e6f' || lpad((g % 10)::text, 2, '0'))::uuid END, \
                CASE WHEN g % 5 = 0 THEN 'urn:dev:IMEI:35' || lpad((g % 1000 + 1)::text, 13, '0') || ':' END, \
                convert_to('[{\"n\":\"temperature\",\"v\":1}]', 'UTF8'), 28, 200 \
         FROM generate_series(1, $1::int8) g",
    )
    .bind(events)
    .bind(START as f64)
    .bind((days * 86_400) as f64 / events as f64)
    .execute(&mut *conn)
    .await?;
    sqlx::raw_sql("VACUUM ANALYZE").execute(&mut *conn).await?;
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

async fn measure(
    requests: usize,
    days: i64,
    pool: &PgPool,
    base_url: &str,
    key: &str,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let get = |path: String| {
        let client = client.clone();
        let url = format!("{base_url}{path}");
        async move {
            let response = client.get(&url).bearer_auth(key).send().await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{url}: {}",
                response.status()
            );
            let body = response.bytes().await?;
            Ok::<_, anyhow::Error>(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
        }
    };
    // The cursor of the 50th page (5,000 items deep).
    let mut cursor = String::new();
    for _ in 0..49 {
        let page = get(format!("/api/v1/deliveries?limit=100{cursor}")).await?;
        let next = page["next_cursor"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("fewer than 50 pages"))?;
        cursor = format!("&cursor={next}");
    }
    let mid = START + days * 86_400 / 2;
    let window = format!("from={}&to={}", rfc3339(mid), rfc3339(mid + 3_600));
    let scenarios: Vec<(&str, String)> = vec![
        (
            "healthz (baseline: TLS, HTTP, routing)",
            "/healthz".to_owned(),
        ),
        ("first page (100)", "/api/v1/deliveries".to_owned()),
        ("first page (20)", "/api/v1/deliveries?limit=20".to_owned()),
        (
            "50th page (cursor)",
            format!("/api/v1/deliveries?limit=100{cursor}"),
        ),
        ("door=ip", "/api/v1/deliveries?door=ip".to_owned()),
        (
            "destination=dest3",
            "/api/v1/deliveries?destination=dest3".to_owned(),
        ),
        (
            "device (a destination device)",
            format!("/api/v1/deliveries?device={}", urn(17)),
        ),
        (
            "device (a registered device)",
            format!("/api/v1/deliveries?device={}", urn(950)),
        ),
        (
            "verdict=quarantined",
            "/api/v1/deliveries?verdict=quarantined".to_owned(),
        ),
        (
            "verdict=rejected",
            "/api/v1/deliveries?verdict=rejected".to_owned(),
        ),
        (
            "reason=not_verified",
            "/api/v1/deliveries?reason=not_verified".to_owned(),
        ),
        (
            "from/to (one hour mid-period)",
            format!("/api/v1/deliveries?{window}"),
        ),
        (
            "q=temperature (common)",
            "/api/v1/deliveries?q=temperature".to_owned(),
        ),
        (
            "q=rare-marker (1 in 250,000)",
            "/api/v1/deliveries?q=rare-marker&limit=2".to_owned(),
        ),
        (
            "destinations/stats (11, one silent)",
            "/api/v1/destinations/stats".to_owned(),
        ),
    ];
    let mut results = Vec::new();
    for (name, path) in &scenarios {
        for _ in 0..3 {
            get(path.clone()).await?;
        }
        // The rare string scans the table: fewer repetitions.
        let n = if name.starts_with("q=rare") {
            requests.min(10)
        } else {
            requests
        };
        let mut times = Vec::with_capacity(n);
        let mut items = 0;
        for _ in 0..n {
            let started = Instant::now();
            let page = get(path.clone()).await?;
            times.push(started.elapsed());
            items = page["items"].as_array().map_or(0, Vec::len);
        }
        times.sort();
        let median = times[times.len() / 2];
        let p99 = times[((times.len() * 99) / 100).min(times.len() - 1)];
        results.push((*name, median, p99, items, n));
    }
    println!("## Latency (HTTPS, one keep-alive connection, sequential requests)\n");
    println!("| scenario | requests | median ms | p99 ms | items |");
    println!("|---|---|---|---|---|");
    for (name, median, p99, items, n) in &results {
        println!(
            "| {name} | {n} | {:.2} | {:.2} | {items} |",
            median.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
        );
    }

    println!("\n## Plans (EXPLAIN (ANALYZE, BUFFERS))\n");
    let messages_sql = |condition: &str| {
        format!(
            "SELECT m.id, m.received_at, m.door, x.name, x.plug, coalesce(d.urn, k.urn), \
                    m.status, m.record_count, octet_length(m.body), x.response_code \
             FROM messages m LEFT JOIN destinations x ON x.id = m.destination_id \
             LEFT JOIN devices d ON d.id = m.device_id \
             LEFT JOIN device_keys k ON k.id = m.device_key_id \
             WHERE TRUE {condition} ORDER BY m.received_at DESC, m.id DESC LIMIT 101"
        )
    };
    let plans = [
        ("messages, first page", messages_sql("")),
        (
            "messages, destination=dest3",
            messages_sql(
                "AND m.destination_id = ANY(ARRAY(SELECT id FROM destinations WHERE name = 'dest3'))",
            ),
        ),
        (
            "messages, device (the branch by its devices row)",
            messages_sql(&format!(
                "AND m.device_id = (SELECT id FROM devices WHERE urn_key = '{}')",
                urn(950)
            )),
        ),
        (
            "messages, device (the branch of its registrations, devices row absent)",
            format!(
                "SELECT * FROM (SELECT m.id, m.received_at FROM messages m \
                 WHERE m.device_id IS NULL AND m.device_key_id = ANY(ARRAY( \
                 SELECT id FROM device_keys WHERE urn_key = '{}')) OFFSET 0) m \
                 ORDER BY m.received_at DESC, m.id DESC LIMIT 101",
                urn(950)
            ),
        ),
        (
            "destinations/stats: last stored delivery of each destination",
            "SELECT d.name, l.t FROM destinations d LEFT JOIN LATERAL ( \
             SELECT m.received_at AS t FROM messages m \
             WHERE m.destination_id >= d.id AND m.destination_id <= d.id AND m.status = 'stored' \
             ORDER BY m.destination_id, m.received_at DESC LIMIT 1) l ON true \
             WHERE d.removed_at IS NULL ORDER BY d.name"
                .to_owned(),
        ),
        ("messages, door=ip", messages_sql("AND m.door = 'ip'")),
        (
            "messages, q=temperature",
            messages_sql("AND position(convert_to('temperature', 'UTF8') in m.body) > 0"),
        ),
        (
            "door events, verdict=rejected",
            "SELECT e.id, e.received_at FROM door_events e WHERE e.verdict = 'rejected' \
             ORDER BY e.received_at DESC, e.id DESC LIMIT 101"
                .to_owned(),
        ),
    ];
    for (name, sql) in plans {
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (ANALYZE, BUFFERS) {sql}"
        )))
        .fetch_all(pool)
        .await?;
        println!("### {name}\n\n```\n{}\n```\n", plan.join("\n"));
    }
    let (table, indexes): (i64, i64) =
        sqlx::query_as("SELECT pg_table_size('messages'), pg_indexes_size('messages')")
            .fetch_one(pool)
            .await?;
    println!(
        "messages: table {} MiB, indexes {} MiB\n",
        table >> 20,
        indexes >> 20
    );
    Ok(())
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
