//! The `things-receiver` binary: parses the command line and runs one command.

use std::process::ExitCode;

use clap::Parser;
use things_receiver::config::{Cli, Command};
use things_receiver::{cli, server, tls};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("THINGS_LOG")
                .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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
            Command::Serve(serve) => server::run(&args.db, &serve).await.map(|()| true),
            Command::Destinations(command) => cli::destinations::run(&args.db, command)
                .await
                .map(|()| true),
            Command::ApiKeys(command) => cli::api_keys::run(&args.db, command).await.map(|()| true),
            Command::Send(send) => cli::send::run(send).await,
            Command::Downlinks(command) => cli::downlinks::run(&args.db, command).await,
            Command::Doctor(doctor) => cli::doctor::run(doctor).await,
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
