//! The server inside the test process: `server::run` on a `127.0.0.1:0` listener, with the
//! same flags `serve` parses, on its own runtime and thread (so a test blocked in a CLI
//! command never stalls it), against the test's database and data directory.
//!
//! For tests where the process is not the point. The metrics recorder is process-wide and
//! logs are not captured here, so tests that read metrics, logs or stderr, send signals or
//! kill PostgreSQL use [`Env::serve`] instead.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use things_receiver::config::{Cli, Command};
use things_receiver::server::{self, Settings, Shutdown};

use super::{Env, Process, Server};

/// How long a started server may take to answer `/healthz`.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// How long dropping a server may wait for it to stop.
const STOP_DEADLINE: Duration = Duration::from_secs(30);

/// A server `run` on its own thread.
pub(super) struct Running {
    pub(super) shutdown: Shutdown,
    thread: Option<JoinHandle<Result<(), String>>>,
    status: Option<ExitStatus>,
}

impl Running {
    pub(super) fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() && self.thread.as_ref().is_some_and(|t| t.is_finished()) {
            let result = self.thread.take().unwrap().join();
            let ok = matches!(result, Ok(Ok(())));
            if let Ok(Err(e)) = &result {
                eprintln!("in-process server failed: {e}");
            }
            self.status = Some(ExitStatus::from_raw(if ok { 0 } else { 1 << 8 }));
        }
        self.status
    }

    /// Forces the shutdown and waits (bounded) for the server's thread to end.
    pub(super) fn stop_now(&mut self) {
        self.shutdown.force();
        let deadline = Instant::now() + STOP_DEADLINE;
        while self.try_wait().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Env {
    /// Like [`Env::serve`] with the same `extra` flags, but inside this process; returns
    /// once the server answers `/healthz`.
    pub async fn serve_in_process(&self, extra: &[&str]) -> Server {
        things_receiver::tls::install_default_provider();
        let mut argv: Vec<String> = vec![
            "things-receiver".into(),
            "--data-dir".into(),
            self.data_dir.path().display().to_string(),
            "--database-url".into(),
            self.database_url.clone(),
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let cli = Cli::try_parse_from(&argv).expect("serve flags parse");
        let Command::Serve(serve) = cli.command else {
            unreachable!("the command is serve")
        };
        let scheme = if serve.plain_http { "http" } else { "https" };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base_url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let shutdown = Shutdown::new();
        let thread = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let result = runtime.block_on(async move {
                    let mut settings = Settings::from_args(&cli.db, &serve).await?;
                    settings.banner = false;
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    server::run(listener, settings, shutdown).await
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
                result.map_err(|e| format!("{e:#}"))
            })
        };
        let mut running = Running {
            shutdown,
            thread: Some(thread),
            status: None,
        };
        let client = super::client();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = running.try_wait() {
                panic!("the in-process server stopped ({status}) before answering");
            }
            let health = client
                .get(format!("{base_url}/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the in-process server never answered /healthz"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let server = Server {
            process: Process::InProcess(running),
            base_url,
            banner: String::new(),
            status_key: std::sync::OnceLock::new(),
            make_status_key: None,
            stderr: None,
        };
        self.with_status_key(server)
    }
}
