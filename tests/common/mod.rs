//! Test harness: a real PostgreSQL, the real binary (or the same server inside the test
//! process, [`Env::serve_in_process`]), real HTTPS.
//!
//! When `DATABASE_URL` is set, each test gets a fresh database on that server. Otherwise one
//! private cluster per test binary is started from the system's PostgreSQL binaries (the same
//! embedded-cluster code `serve` uses), and each test gets a fresh database in it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use things_receiver::store::embedded::{EmbeddedOptions, EmbeddedPostgres};
use things_receiver::token::Token;
use tokio::sync::OnceCell;

pub mod in_process;
pub mod load;
pub mod raw_tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_things-receiver");

/// A test secret that satisfies KPN's rules.
pub const SECRET: &str = "Sup3r-Secret#For.Things/Testing!2024";

static CLUSTER: OnceCell<(String, Option<EmbeddedPostgres>)> = OnceCell::const_new();

/// URL of the `postgres` database on the server tests create their databases on.
pub async fn admin_url() -> &'static str {
    let (url, _) = CLUSTER
        .get_or_init(|| async {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                return (url, None);
            }
            let name = std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "tests".into());
            let dir = PathBuf::from(format!("/tmp/things-receiver-test-pg/{name}"));
            std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
            let pg = EmbeddedPostgres::start(&dir, &EmbeddedOptions { durable: false })
                .await
                .expect("start the test PostgreSQL cluster");
            let url = format!(
                "postgres://{}@localhost:{}/postgres?host={}",
                pg.user(),
                pg.port(),
                pg.socket_dir().display()
            );
            if pg.owned() {
                drop_old_test_databases(&url).await;
            }
            (url, Some(pg))
        })
        .await;
    url
}

/// The cluster directory outlives a run; databases left by earlier runs go when it restarts.
async fn drop_old_test_databases(url: &str) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    for name in names {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

/// Creates a fresh, empty database and returns its URL and name.
pub async fn fresh_database() -> (String, String) {
    let admin = admin_url().await;
    let options: PgConnectOptions = admin.parse().unwrap();
    let mut conn = PgConnection::connect_with(&options).await.unwrap();
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    (database_url(admin, &name), name)
}

/// `url` with its database name replaced by `name`.
fn database_url(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme_host, _) = base.rsplit_once('/').unwrap();
    match query {
        Some(q) => format!("{scheme_host}/{name}?{q}"),
        None => format!("{scheme_host}/{name}"),
    }
}

/// A connection to `url` for assertions on what is stored.
pub async fn connect(url: &str) -> PgConnection {
    PgConnection::connect(url).await.unwrap()
}

/// One deployment under test: a data directory and a database, shared by the CLI and `serve`.
pub struct Env {
    pub data_dir: tempfile::TempDir,
    pub database_url: String,
    pub database_name: String,
}

impl Env {
    pub async fn new() -> Env {
        let (database_url, database_name) = fresh_database().await;
        Env {
            data_dir: tempfile::tempdir().unwrap(),
            database_url,
            database_name,
        }
    }

    pub fn command(&self) -> Command {
        cli_command(self.data_dir.path(), &self.database_url)
    }

    /// Lets the harness read `server`'s `/readyz` details, with a `read` key of this
    /// deployment created on first use.
    pub fn with_status_key(&self, mut server: Server) -> Server {
        let (data_dir, url) = (self.data_dir.path().to_owned(), self.database_url.clone());
        server.make_status_key = Some(Box::new(move || {
            let name = format!("harness-status-{}", uuid::Uuid::new_v4().simple());
            let out = cli_command(&data_dir, &url)
                .args(["api-keys", "create", "--name", &name, "--scope", "read"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        }));
        server
    }

    /// Runs a CLI command to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs a CLI command that must succeed and returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Adds a destination with a fresh plug and [`SECRET`]; returns the plug.
    pub fn add_destination(&self, name: &str, extra: &[&str]) -> uuid::Uuid {
        let plug = uuid::Uuid::new_v4();
        let plug_text = plug.to_string();
        let mut args = vec![
            "destinations",
            "add",
            "--name",
            name,
            "--plug",
            &plug_text,
            "--secret",
            SECRET,
        ];
        args.extend_from_slice(extra);
        self.cli_ok(&args);
        plug
    }

    /// Creates an API key with the given scopes and returns it.
    pub fn api_key(&self, name: &str, scopes: &str) -> String {
        self.cli_ok(&["api-keys", "create", "--name", name, "--scope", scopes])
            .trim()
            .to_owned()
    }

    /// Starts `serve` on a free loopback port and waits for its banner.
    pub fn serve(&self, extra: &[&str]) -> Server {
        let mut cmd = self.command();
        cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
        self.with_status_key(Server::start(cmd))
    }
}

/// The binary with a clean environment, pointed at a data directory and a database.
fn cli_command(data_dir: &Path, database_url: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("THINGS_LOG", "info,sqlx=warn")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--database-url")
        .arg(database_url);
    cmd
}

/// A running server: a `things-receiver serve` process, killed when dropped, or one started
/// inside the test process ([`Env::serve_in_process`]), stopped when dropped.
pub struct Server {
    process: Process,
    pub base_url: String,
    pub banner: String,
    /// The `read` key the harness shows to `/readyz` for its details.
    status_key: std::sync::OnceLock<String>,
    make_status_key: Option<Box<dyn Fn() -> String + Send + Sync>>,
    /// Every stderr line so far, when started with [`Server::start_capturing`].
    pub stderr: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
}

impl Server {
    pub fn start(cmd: Command) -> Server {
        Self::spawn(cmd, false)
    }

    /// Like [`start`](Self::start), keeping every line the server writes to stderr.
    pub fn start_capturing(cmd: Command) -> Server {
        Self::spawn(cmd, true)
    }

    fn spawn(mut cmd: Command, capture: bool) -> Server {
        let stderr_to = if capture {
            Stdio::piped()
        } else {
            Stdio::inherit()
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr_to)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().map(|pipe| {
            let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut banner = String::new();
        let mut base_url = None;
        // The banner's first line names the bound address; its last says how to stop.
        for line in lines.by_ref() {
            let line = line.unwrap();
            banner.push_str(&line);
            banner.push('\n');
            if let Some(rest) = line.split(" listening on ").nth(1) {
                base_url = Some(rest.trim().to_owned());
            }
            if line.starts_with("Stop with") {
                break;
            }
        }
        let Some(base_url) = base_url else {
            let status = child.wait().unwrap();
            panic!("serve exited ({status}) before listening; stdout:\n{banner}");
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            process: Process::Child(child),
            base_url,
            banner,
            status_key: std::sync::OnceLock::new(),
            make_status_key: None,
            stderr,
        }
    }

    /// The `read` key the harness uses for `/readyz` details (see [`Env::with_status_key`]).
    pub fn set_status_key(&self, key: &str) {
        let _ = self.status_key.set(key.to_owned());
    }

    pub fn status_key(&self) -> &str {
        self.status_key.get_or_init(|| {
            let make = self.make_status_key.as_ref().expect(
                "/readyz details need a read key: Env::with_status_key or Server::set_status_key",
            );
            make()
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub fn pid(&self) -> i32 {
        match &self.process {
            Process::Child(child) => child.id() as i32,
            Process::InProcess(_) => panic!("an in-process server has no process of its own"),
        }
    }

    /// Waits for the process to exit by itself (after a signal the test sent).
    pub async fn wait_exit(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.process.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits for the process to exit. Async so that the test's own HTTP
    /// connections keep being served (an HTTP/2 client must answer the server's GOAWAY ping
    /// for a graceful close).
    pub async fn stop(mut self) -> std::process::ExitStatus {
        match &self.process {
            Process::Child(child) => nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap(),
            Process::InProcess(server) => server.shutdown.trigger(),
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.process.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.process {
            Process::Child(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Process::InProcess(server) => server.stop_now(),
        }
    }
}

/// What runs the server of a [`Server`].
enum Process {
    Child(Child),
    InProcess(in_process::Running),
}

impl Process {
    /// The exit status once it has stopped (an in-process server "exits" 0 when `run`
    /// returned `Ok`, 1 otherwise).
    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        match self {
            Process::Child(child) => child.try_wait().unwrap(),
            Process::InProcess(server) => server.try_wait(),
        }
    }
}

/// An HTTPS client that accepts the development certificate.
pub fn client() -> reqwest::Client {
    things_receiver::tls::install_default_provider();
    reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs `body` signed with `secret` for `plug`, as KPN Things does.
pub async fn deliver(
    client: &reqwest::Client,
    server: &Server,
    plug: uuid::Uuid,
    secret: &str,
    body: &[u8],
) -> reqwest::Response {
    let token = Token::sign(body, secret.as_bytes()).to_hex();
    deliver_with(client, server, plug, &token, body, &[]).await
}

pub async fn deliver_with(
    client: &reqwest::Client,
    server: &Server,
    plug: uuid::Uuid,
    token: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = client
        .post(server.url("/ingest/kpn"))
        .header("Things-Plug-UUID", plug.to_string())
        .header("Things-Message-Token", token)
        .header("Content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body.to_vec()).send().await.unwrap()
}

/// Status and JSON body of a response.
pub async fn status_json(response: reqwest::Response) -> (u16, serde_json::Value) {
    let status = response.status().as_u16();
    let json = response.json().await.unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// GET an API path with a key, returning status and JSON.
pub async fn api_get(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    path: &str,
) -> (u16, serde_json::Value) {
    let response = client
        .get(server.url(path))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    status_json(response).await
}

/// Polls `/readyz` until `check` holds for its JSON, i.e. until a change made by another
/// process has reached the server; fails after 10 s.
pub async fn wait_ready(
    client: &reqwest::Client,
    server: &Server,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let json = readyz(client, server).await;
        if check(&json) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "server never reached the expected state: {json}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The detailed JSON `/readyz` answers to a `read` key (whatever its status).
pub async fn readyz(client: &reqwest::Client, server: &Server) -> serde_json::Value {
    client
        .get(server.url("/readyz"))
        .bearer_auth(server.status_key())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The cache version `/readyz` reports, to wait for a change that keeps the counts.
pub async fn destinations_version(client: &reqwest::Client, server: &Server) -> String {
    readyz(client, server).await["destinations"]["version"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Runs a CLI command that changes destinations and waits until the running server has
/// reloaded them (its cache version changes); returns the command's stdout.
pub async fn change_destinations(
    env: &Env,
    client: &reqwest::Client,
    server: &Server,
    args: &[&str],
) -> String {
    change_cache(env, client, server, "destinations", args).await
}

/// The same for device registrations (`devices ...`).
pub async fn change_devices(
    env: &Env,
    client: &reqwest::Client,
    server: &Server,
    args: &[&str],
) -> String {
    change_cache(env, client, server, "devices", args).await
}

/// Runs a CLI command and waits until the `/readyz` version of `cache` changes.
async fn change_cache(
    env: &Env,
    client: &reqwest::Client,
    server: &Server,
    cache: &str,
    args: &[&str],
) -> String {
    let version = |j: &serde_json::Value| j[cache]["version"].as_str().unwrap_or("").to_owned();
    let before = version(&readyz(client, server).await);
    let out = env.cli_ok(args);
    wait_ready(client, server, |j| version(j) != before).await;
    out
}

/// A PostgreSQL cluster of the test's own, so that it can be stopped and started again,
/// and an [`Env`] on its `postgres` database. Keep the directory as long as the cluster.
pub async fn own_cluster(
    prefix: &str,
    durable: bool,
) -> (
    tempfile::TempDir,
    things_receiver::store::embedded::EmbeddedPostgres,
    Env,
) {
    use things_receiver::store::embedded::{EmbeddedOptions, EmbeddedPostgres};
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .unwrap();
    let pg = EmbeddedPostgres::start(dir.path(), &EmbeddedOptions { durable })
        .await
        .unwrap();
    let env = Env {
        data_dir: tempfile::tempdir().unwrap(),
        database_url: format!(
            "postgres://{}@localhost:{}/postgres?host={}",
            pg.user(),
            pg.port(),
            pg.socket_dir().display()
        ),
        database_name: "postgres".into(),
    };
    (dir, pg, env)
}

/// The bytes of a fixture pack, exactly as KPN would send it.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}
