//! `things-receiver send`: sign a SenML file exactly as KPN Things does and deliver it.
//!
//! The file's bytes are sent untouched, so what is signed is what arrives.

use std::io::Read;
use std::time::Duration;

use anyhow::Context;

use crate::config::SendArgs;
use crate::ingest::doors::kpn::{PLUG_HEADER, TOKEN_HEADER};
use crate::token::Token;

/// Returns whether the receiver answered with a 2xx status.
pub async fn run(args: SendArgs) -> anyhow::Result<bool> {
    let body = if args.file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        buf
    } else {
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?
    };
    let token = Token::sign(&body, args.secret.as_bytes());
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(args.insecure)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let mut request = client
        .post(&args.url)
        .header(PLUG_HEADER, args.plug.to_string())
        .header(TOKEN_HEADER, token.to_hex())
        .header("content-type", "application/json");
    for (name, value) in &args.header {
        request = request.header(name, value);
    }
    let response = request
        .body(body)
        .send()
        .await
        .with_context(|| format!("sending to {}", args.url))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{}", status.as_u16());
    if !text.is_empty() {
        println!("{text}");
    }
    Ok(status.is_success())
}
