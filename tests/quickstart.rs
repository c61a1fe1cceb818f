//! The README's promise: `serve` with no configuration runs on an embedded PostgreSQL under
//! `./data`, the CLI works beside it, and stopping (or crashing) leaves nothing broken.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// The binary run in `dir` with a clean environment: no DATABASE_URL, default `./data`.
fn bin(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("THINGS_LOG", "warn");
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out: Output = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The postmaster pid recorded in the cluster directory.
fn postmaster_pid(dir: &Path) -> i32 {
    let text = std::fs::read_to_string(dir.join("data/pg/postmaster.pid")).unwrap();
    text.lines().next().unwrap().trim().parse().unwrap()
}

fn is_running(pid: i32) -> bool {
    // A zombie has exited; only a live process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

async fn wait_until_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_running(pid) {
        assert!(Instant::now() < deadline, "process {pid} is still running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn zero_config_serve_runs_on_embedded_postgres_and_cleans_up() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path();
    let plug = uuid::Uuid::new_v4().to_string();

    let mut cmd = bin(dir);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::start(cmd);
    assert!(server.base_url.starts_with("https://127.0.0.1:"));
    for expected in [
        "embedded PostgreSQL",
        "DEV ONLY",
        "destinations add",
        "self-signed",
        "/console (sign in with an API key)",
    ] {
        assert!(
            server.banner.contains(expected),
            "banner lacks {expected:?}:\n{}",
            server.banner
        );
    }
    assert!(dir.join("data/secret.key").exists());
    assert!(dir.join("data/tls/dev-cert.pem").exists());
    let postmaster = postmaster_pid(dir);

    // The CLI attaches to the cluster `serve` runs.
    run_ok(bin(dir).args([
        "destinations",
        "add",
        "--name",
        "quick",
        "--plug",
        &plug,
        "--secret",
        SECRET,
    ]));
    let key = run_ok(bin(dir).args(["api-keys", "create", "--name", "dash", "--scope", "read"]));
    let key = key.trim();
    let client = client();
    server.set_status_key(key);
    wait_ready(&client, &server, |j| j["destinations"]["bound"] == 1).await;

    // `send` signs exactly as KPN does; the dev certificate needs --insecure.
    let fixture_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/value-kinds.json");
    let url = server.url("/ingest/kpn");
    let refused = bin(dir)
        .args(["send", "--url", &url, "--plug", &plug, "--secret", SECRET])
        .arg(&fixture_path)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a self-signed certificate must need --insecure"
    );
    let sent = run_ok(
        bin(dir)
            .args([
                "send",
                "--insecure",
                "--url",
                &url,
                "--plug",
                &plug,
                "--secret",
                SECRET,
            ])
            .arg(&fixture_path),
    );
    assert_eq!(sent.lines().next(), Some("200"), "{sent}");
    let (status, page) = api_get(&client, &server, key, "/api/v1/measurements").await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 5);

    // SIGTERM stops the service and, cleanly, its cluster.
    assert!(server.stop().await.success());
    wait_until_gone(postmaster).await;

    // Without `serve`, the CLI starts the cluster itself and stops it again.
    let listed = run_ok(bin(dir).args(["destinations", "list"]));
    assert!(listed.contains(&plug), "{listed}");
    assert!(!listed.contains(SECRET));
    assert!(
        !dir.join("data/pg/postmaster.pid").exists(),
        "the CLI left its cluster running"
    );

    // A crash (SIGKILL) takes the cluster down with it; the next start recovers.
    let mut cmd = bin(dir);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::start(cmd);
    let postmaster = postmaster_pid(dir);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until_gone(postmaster).await;
    drop(server);

    let mut cmd = bin(dir);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::start(cmd);
    let (_, page) = api_get(&client, &server, key, "/api/v1/measurements").await;
    assert_eq!(
        page["items"].as_array().unwrap().len(),
        5,
        "data survives a crash"
    );
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn a_wrong_secret_key_fails_at_start_with_a_clear_message() {
    let env = Env::new().await;
    env.add_destination("d", &[]);
    let other_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = env
        .command()
        .env("THINGS_SECRET_KEY", other_key)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("does not match"), "{stderr}");

    let out = env
        .command()
        .env("THINGS_SECRET_KEY", "too-short")
        .args(["destinations", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 bytes"));
}

#[tokio::test]
async fn secrets_are_encrypted_at_rest_and_validated() {
    let env = Env::new().await;
    let out = env.cli(&[
        "destinations",
        "add",
        "--name",
        "short",
        "--secret",
        "Short#1a",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 30"));

    env.add_destination("d", &[]);
    let generated = env.cli_ok(&["destinations", "add", "--name", "gen"]);
    let secret = generated.lines().last().unwrap().trim().to_owned();
    assert!(secret.len() >= 32, "{generated}");

    let mut db = connect(&env.database_url).await;
    let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT secret_sealed FROM destinations")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    for sealed in rows {
        let text = String::from_utf8_lossy(&sealed);
        assert!(!text.contains(SECRET) && !text.contains(&secret));
    }
    let listed = env.cli_ok(&["destinations", "list", "--json"]);
    assert!(!listed.contains(SECRET) && !listed.contains(&secret));
}

#[tokio::test]
async fn a_key_file_readable_by_others_is_warned_about() {
    let env = Env::new().await;
    env.cli_ok(&["destinations", "list"]);
    let key_file = env.data_dir.path().join("secret.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600,
        "created private"
    );
    let quiet = env.cli(&["destinations", "list"]);
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("chmod 600"));

    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.cli(&["destinations", "list"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("can be read by group or others: chmod 600"),
        "{stderr}"
    );
    assert!(
        !stderr.contains(key.trim()),
        "the key itself is never logged"
    );
}

/// Removes a relocated cluster's home when the test ends, however it ends.
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test]
async fn as_root_in_a_private_home_the_quick_start_works_without_loosening_it() {
    use std::os::unix::fs::PermissionsExt;
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: only root runs PostgreSQL as another user (postgres)");
        return;
    }
    // Like `git clone` into /root or a Debian home: a 0700 directory above the clone.
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    let clone = home.join("things-receiver");
    std::fs::create_dir(&clone).unwrap();
    let location_file = clone.join("data/pg.location");
    let mut cleanup = RemoveOnDrop(None);

    let mut cmd = bin(&clone);
    cmd.args(["serve", "--listen", "127.0.0.1:0"]);
    let server = Server::start(cmd);
    let location = std::fs::read_to_string(&location_file).expect("pg.location written");
    let cluster = Path::new(location.trim()).to_owned();
    cleanup.0 = cluster.parent().map(Path::to_owned);
    assert!(
        cluster.join("PG_VERSION").is_file(),
        "{}",
        cluster.display()
    );
    // The cluster's own folder: private to postgres.
    let home_of_cluster = std::fs::metadata(cluster.parent().unwrap()).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(home_of_cluster.mode() & 0o777, 0o700);
    if let Some(postgres) = nix::unistd::User::from_name("postgres").unwrap() {
        assert_eq!(
            home_of_cluster.uid(),
            postgres.uid.as_raw(),
            "owned by postgres"
        );
    }
    assert!(
        server
            .banner
            .contains(&format!("cluster:     {}", cluster.display())),
        "the banner says where the cluster lives:\n{}",
        server.banner
    );
    assert!(server.banner.contains("pg.location"), "{}", server.banner);

    // The CLI finds the same cluster: the running server sees the destination it adds.
    let plug = uuid::Uuid::new_v4().to_string();
    run_ok(bin(&clone).args([
        "destinations",
        "add",
        "--name",
        "home",
        "--plug",
        &plug,
        "--secret",
        SECRET,
    ]));
    let key =
        run_ok(bin(&clone).args(["api-keys", "create", "--name", "status", "--scope", "read"]));
    server.set_status_key(key.trim());
    let client = client();
    wait_ready(&client, &server, |j| j["destinations"]["bound"] == 1).await;
    assert!(server.stop().await.success());

    // And later runs find it too, without the server.
    let listed = run_ok(bin(&clone).args(["destinations", "list"]));
    assert!(listed.contains(&plug), "{listed}");
    let mode = std::fs::metadata(&home).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the home directory was left as it was");
}
