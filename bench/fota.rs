//! Firmware file server benchmark: parts per second for 256-byte and 4 KiB parts on
//! keep-alive connections, against `GET /healthz` in the same run over the same transport.
//!
//! `cargo bench --bench fota` (release build). Starts a private PostgreSQL cluster and the
//! real binary, registers devices, stores a 1 MiB image, starts a campaign, gets each device's
//! url and token as the device does (an uplink), then runs each scenario for BENCH_SECONDS
//! (default 3) on BENCH_CONNECTIONS (default 8) concurrent HTTP/1.1 keep-alive connections,
//! each reconnecting when the server closes it (after 100 file requests, as KPN's file server
//! does), each downloading for its own device (a download may have at most 19,999 parts).
//! Parts are measured on the plain device listener and over TLS on the main listener, where
//! `GET /healthz` (TLS, HTTP and routing, no database) is the baseline. Every part's
//! `Digest: crc32=` is checked. Everything lives in a temporary directory removed at the end.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::Connection;
use things_receiver::store::embedded::{EmbeddedOptions, EmbeddedPostgres};
use things_receiver::token::Token;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_things-receiver");
const SECRET: &str = "Device-Secret-For-The-M2M-Door-0123456789";
const IMAGE: usize = 1024 * 1024;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    things_receiver::tls::install_default_provider();
    let seconds = setting("BENCH_SECONDS", 3);
    let connections = setting("BENCH_CONNECTIONS", 8) as usize;
    let work = tempfile::tempdir()?;
    let pg = EmbeddedPostgres::start(&work.path().join("pg"), &EmbeddedOptions { durable: false })
        .await?;
    let result = run(&pg, work.path(), Duration::from_secs(seconds), connections).await;
    if let Err(e) = pg.stop().await {
        eprintln!("stopping the benchmark cluster: {e}");
    }
    result
}

async fn run(
    pg: &EmbeddedPostgres,
    work: &std::path::Path,
    duration: Duration,
    connections: usize,
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
    let mut image = vec![0u8; IMAGE];
    rand::rng().fill(&mut image[..]);
    let file = work.join("image.bin");
    std::fs::write(&file, &image)?;
    // One device per connection and part scenario (plain 256, plain 4096, TLS 256, TLS 4096).
    let urns: Vec<String> = (0..connections * 4)
        .map(|n| format!("urn:dev:IMEI:{:015}:", 356_938_035_000_000u64 + n as u64))
        .collect();
    for urn in &urns {
        cli(&["devices", "add", urn, "--secret", SECRET])?;
    }
    cli(&[
        "firmware",
        "add",
        &file.display().to_string(),
        "--version",
        "2.0.0",
    ])?;

    let device = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let base = format!("http://{device}");
    let listen = device.to_string();
    let mut server = Server::start(
        &data_dir,
        &url,
        &["--device-listen", &listen, "--fota-base-url", &base],
    )?;
    let mut start = vec![
        "fota",
        "start",
        "--firmware",
        "2.0.0",
        "--fota-base-url",
        &base,
    ];
    for urn in &urns {
        start.extend(["--device", urn.as_str()]);
    }
    cli(&start)?;
    let http = reqwest::Client::new();
    let mut downloads = Vec::new();
    for urn in &urns {
        let body = format!(r#"[{{"bn":"{urn}","n":"firmware","vs":"1.0.0"}}]"#);
        let answer = http
            .post(format!("{base}/ingestion/m2m/senml/v1"))
            .header(
                "Things-Message-Token",
                Token::sign(body.as_bytes(), SECRET.as_bytes()).to_hex(),
            )
            .body(body)
            .send()
            .await?
            .text()
            .await?;
        let pack: serde_json::Value = serde_json::from_str(&answer)?;
        let path = pack[1]["vs"]
            .as_str()
            .and_then(|u| u.strip_prefix(&base))
            .ok_or_else(|| anyhow::anyhow!("no url in {answer}"))?
            .to_owned();
        let token = pack[2]["vs"].as_str().unwrap_or_default().to_owned();
        downloads.push((path, token));
    }
    let mut downloads = downloads.chunks(connections).map(<[_]>::to_vec);

    println!(
        "# Firmware file server benchmark\n\n{connections} keep-alive HTTP/1.1 connections, {} s \
         per scenario, 1 MiB image, parts at rolling offsets\n",
        duration.as_secs()
    );
    println!("| scenario | requests/s | connections opened | vs TLS /healthz |");
    println!("|---|---:|---:|---:|");
    let tls = TlsTarget::new(&server.base_url)?;
    let healthz = vec![("/healthz".to_owned(), String::new()); connections];
    let baseline = tls.scenario(&healthz, None, duration).await?;
    println!(
        "| TLS: GET /healthz | {:.0} | {} | 1.00 |",
        baseline.0, baseline.1
    );
    for part in [256usize, 4096] {
        let mine = downloads.next().unwrap_or_default();
        let (rate, opened) = scenario(&listen, &mine, Some(part), duration).await?;
        println!(
            "| plain device listener: {part}-byte parts | {rate:.0} | {opened} | {:.2} |",
            rate / baseline.0
        );
    }
    for part in [256usize, 4096] {
        let mine = downloads.next().unwrap_or_default();
        let (rate, opened) = tls.scenario(&mine, Some(part), duration).await?;
        println!(
            "| TLS: {part}-byte parts | {rate:.0} | {opened} | {:.2} |",
            rate / baseline.0
        );
    }
    server.stop();
    Ok(())
}

/// Requests per second and connections opened over `duration` on `connections` connections.
/// Parts one connection asks for at most: its download's limit is 19,999.
const MAX_PER_CONNECTION: usize = 19_000;

/// Over raw TCP to the plain device listener, one connection per `(path, token)` at a time.
async fn scenario(
    addr: &str,
    downloads: &[(String, String)],
    part: Option<usize>,
    duration: Duration,
) -> anyhow::Result<(f64, usize)> {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (n, (path, token)) in downloads.iter().enumerate() {
        let (addr, path, token) = (addr.to_owned(), path.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            let mut opened = 0usize;
            let mut offset = n * 7919 % IMAGE;
            while Instant::now() < deadline && done < MAX_PER_CONNECTION {
                let mut stream = AsyncBufReader::new(TcpStream::connect(&addr).await?);
                opened += 1;
                loop {
                    let range = part.map(|p| {
                        offset = (offset + p) % IMAGE;
                        format!("Range: bytes={offset}-{}\r\n", offset + p - 1)
                    });
                    let request = format!(
                        "GET {path} HTTP/1.1\r\nHost: d\r\nAuthorization: Bearer {token}\r\n{}\r\n",
                        range.unwrap_or_default()
                    );
                    stream.get_mut().write_all(request.as_bytes()).await?;
                    let (close, body, digest) = read_answer(&mut stream).await?;
                    if part.is_some() {
                        anyhow::ensure!(
                            digest == Some(format!("crc32={:08x}", crc32fast::hash(&body))),
                            "a part's Digest does not match its body"
                        );
                    }
                    done += 1;
                    if close || Instant::now() >= deadline || done >= MAX_PER_CONNECTION {
                        break;
                    }
                }
            }
            anyhow::Ok((done, opened))
        }));
    }
    let (mut done, mut opened) = (0, 0);
    for task in tasks {
        let (d, o) = task.await??;
        done += d;
        opened += o;
    }
    Ok((done as f64 / started.elapsed().as_secs_f64(), opened))
}

/// Reads one answer: whether it closes the connection, its body and its `Digest`.
async fn read_answer(
    stream: &mut AsyncBufReader<TcpStream>,
) -> anyhow::Result<(bool, Vec<u8>, Option<String>)> {
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(
            stream.read(&mut byte).await? == 1,
            "connection closed mid-answer"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let value = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let length: usize = value("content-length:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    Ok((
        value("connection:").as_deref() == Some("close"),
        body,
        value("digest:"),
    ))
}

/// The main listener over TLS (the development certificate), with one reqwest client per
/// connection so each keeps its own keep-alive connection.
struct TlsTarget {
    base_url: String,
}

impl TlsTarget {
    fn new(base_url: &str) -> anyhow::Result<TlsTarget> {
        Ok(TlsTarget {
            base_url: base_url.to_owned(),
        })
    }

    /// Requests per second over `duration`, and connections opened (counted from the answers
    /// that close theirs, plus the first of each client).
    async fn scenario(
        &self,
        downloads: &[(String, String)],
        part: Option<usize>,
        duration: Duration,
    ) -> anyhow::Result<(f64, usize)> {
        let deadline = Instant::now() + duration;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (n, (path, token)) in downloads.iter().enumerate() {
            let url = format!("{}{path}", self.base_url);
            let token = token.clone();
            let client = reqwest::Client::builder()
                .http1_only()
                .tls_danger_accept_invalid_certs(true)
                .pool_max_idle_per_host(1)
                .build()?;
            tasks.push(tokio::spawn(async move {
                let (mut done, mut opened) = (0usize, 1usize);
                let mut offset = n * 7919 % IMAGE;
                while Instant::now() < deadline && done < MAX_PER_CONNECTION {
                    let mut request = client.get(&url).bearer_auth(&token);
                    if let Some(p) = part {
                        offset = (offset + p) % IMAGE;
                        request =
                            request.header("range", format!("bytes={offset}-{}", offset + p - 1));
                    }
                    let response = request.send().await?;
                    anyhow::ensure!(response.status().is_success(), "{}", response.status());
                    let close = response
                        .headers()
                        .get("connection")
                        .is_some_and(|v| v == "close");
                    let digest = response
                        .headers()
                        .get("digest")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let body = response.bytes().await?;
                    if part.is_some() {
                        anyhow::ensure!(
                            digest == Some(format!("crc32={:08x}", crc32fast::hash(&body))),
                            "a part's Digest does not match its body"
                        );
                    }
                    done += 1;
                    opened += usize::from(close);
                }
                anyhow::Ok((done, opened))
            }));
        }
        let (mut done, mut opened) = (0, 0);
        for task in tasks {
            let (d, o) = task.await??;
            done += d;
            opened += o;
        }
        Ok((done as f64 / started.elapsed().as_secs_f64(), opened))
    }
}

struct Server {
    child: Child,
    base_url: String,
}

impl Server {
    fn start(data_dir: &std::path::Path, url: &str, extra: &[&str]) -> anyhow::Result<Server> {
        let mut child = Command::new(BIN)
            .env("THINGS_LOG", "warn")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--database-url")
            .arg(url)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
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
