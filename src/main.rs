//! The `things-receiver` binary: parses the command line and runs one command.

use std::process::ExitCode;

use clap::Parser;
use things_receiver::config::{Cli, Command, LogFormat};
use things_receiver::{cli, server, tls};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Cli::parse();
    init_logging(args.log_format);
    tls::install_default_provider();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Serve(serve) => server::serve(&args.db, &serve).await.map(|()| true),
            Command::Destinations(command) => cli::destinations::run(&args.db, command)
                .await
                .map(|()| true),
            Command::ApiKeys(command) => cli::api_keys::run(&args.db, command).await.map(|()| true),
            Command::Devices(command) => cli::devices::run(&args.db, command).await.map(|()| true),
            Command::Send(send) => cli::send::run(send).await,
            Command::Downlinks(command) => cli::downlinks::run(&args.db, command).await,
            Command::Doctor(doctor) => cli::doctor::run(doctor).await,
            Command::Firmware(command) => {
                cli::firmware::run(&args.db, command).await.map(|()| true)
            }
            Command::Fota(command) => cli::fota::run(&args.db, command).await.map(|()| true),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `THINGS_LOG`.
fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("THINGS_LOG").unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(colour()).init(),
    }
}

/// Colour codes only for a person at a terminal who has not asked for none
/// (<https://no-color.org>): in a file, a pipe or a journal they are noise.
fn colour() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
