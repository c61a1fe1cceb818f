//! A small load client for fault tests: unique KPN-shaped packs, sent concurrently, with a
//! log of which deliveries were acknowledged.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use things_receiver::token::Token;
use tokio::sync::Mutex;

/// A unique LoRa-shaped pack of 3 to 10 records; `i` makes it unique.
pub fn unique_pack(i: usize) -> Vec<u8> {
    let records = 3 + i % 8;
    let mut pack = format!(
        r#"[{{"bn":"urn:dev:DEVEUI:{:016X}:","bt":{},"n":"payload","vs":"{:08x}"}}"#,
        0x0018_B210_0000_0000u64 + (i % 50) as u64,
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

/// Number of measurement rows `unique_pack(i)` resolves to.
pub fn records_in(i: usize) -> usize {
    3 + i % 8
}

/// What happened to each delivery of a run.
#[derive(Default)]
pub struct Log {
    /// Indices answered 2xx.
    pub acked: Vec<usize>,
    /// Indices answered 503 (to be retried, as KPN does).
    pub retry: Vec<usize>,
    /// Indices whose request failed without an answer (connection lost).
    pub lost: Vec<usize>,
    /// Any other status: a bug.
    pub unexpected: Vec<(usize, u16)>,
}

/// Sends `indices` with `concurrency` requests in flight; `on_ack` sees the running count of
/// acknowledgements (to trigger a fault mid-run).
pub async fn send_all(
    client: &reqwest::Client,
    url: &str,
    plug: uuid::Uuid,
    secret: &str,
    indices: Vec<usize>,
    concurrency: usize,
    on_ack: impl Fn(usize) + Send + Sync,
) -> Log {
    let log = Arc::new(Mutex::new(Log::default()));
    let acks = AtomicUsize::new(0);
    futures_util::stream::iter(indices)
        .for_each_concurrent(concurrency, |i| {
            let log = log.clone();
            let acks = &acks;
            let on_ack = &on_ack;
            async move {
                let body = unique_pack(i);
                let token = Token::sign(&body, secret.as_bytes()).to_hex();
                let result = client
                    .post(url)
                    .header("Things-Plug-UUID", plug.to_string())
                    .header("Things-Message-Token", token)
                    .header("Content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let mut log = log.lock().await;
                match result.map(|r| r.status().as_u16()) {
                    Ok(s) if (200..300).contains(&s) => {
                        log.acked.push(i);
                        drop(log);
                        on_ack(acks.fetch_add(1, Ordering::SeqCst) + 1);
                    }
                    Ok(503) => log.retry.push(i),
                    Ok(s) => log.unexpected.push((i, s)),
                    Err(_) => log.lost.push(i),
                }
            }
        })
        .await;
    Arc::try_unwrap(log)
        .unwrap_or_else(|_| panic!("log still shared"))
        .into_inner()
}

/// Tokens (lower-case hex) of the given deliveries.
pub fn tokens(indices: &[usize], secret: &str) -> Vec<Vec<u8>> {
    indices
        .iter()
        .map(|&i| Token::sign(&unique_pack(i), secret.as_bytes()).0.to_vec())
        .collect()
}
