//! `things-receiver downlinks ...`: queue, list, show and cancel downlinks in the shared
//! outbox. The CLI only writes the outbox; the worker of a running `serve` with KPN
//! credentials sends what is queued.

use std::time::{Duration, Instant};

use crate::config::{DbArgs, DownlinksCommand};
use crate::downlink::Status;
use crate::downlink::outbox;
use crate::downlink::view::DownlinkView;
use crate::store::downlinks::DownlinkRow;

/// How long a downlink for a registered device waits for its uplink unless `--ttl` says.
const DEFAULT_TTL: Duration = Duration::from_secs(48 * 3600);

/// How often `send --wait` looks at the downlink.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// Returns whether the command succeeded (for `send --wait`: whether KPN accepted it).
pub async fn run(db_args: &DbArgs, command: DownlinksCommand) -> anyhow::Result<bool> {
    let (database, _key) = super::open(db_args).await?;
    let pool = &database.pool;
    let result = async {
        match command {
            DownlinksCommand::Send {
                urn,
                port,
                hex,
                idempotency_key,
                wait,
                timeout,
                ttl,
                json,
            } => {
                let recipient = outbox::recipient(pool, &urn).await?;
                let mut request = serde_json::json!({ "payload_hex": hex, "port": port });
                if let Some(ttl) = &ttl {
                    request["ttl"] = ttl.clone().into();
                }
                let (target, checked) = outbox::check_for(&recipient, &request, DEFAULT_TTL)?;
                let queued = outbox::queue(
                    pool,
                    target,
                    recipient.urn_key(),
                    &checked,
                    idempotency_key.as_deref(),
                )
                .await?;
                let carrier = match recipient {
                    outbox::Recipient::Kpn { .. } => "a running serve with KPN credentials sends it",
                    outbox::Recipient::Registered { .. } => {
                        "it rides on the answer to the device's next uplink"
                    }
                };
                if !wait {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&queued)?);
                    } else {
                        println!("{}", queued.id);
                        eprintln!("Downlink {} {}; {carrier}.", queued.id, queued.status);
                    }
                    return Ok(true);
                }
                eprintln!("Downlink {} queued; {carrier}; waiting...", queued.id);
                let row = wait_until_final(pool, queued.id, timeout).await?;
                let accepted = row.status == Status::Accepted.as_str()
                    || row.status == Status::Delivered.as_str();
                print_one(row, json)?;
                Ok(accepted)
            }
            DownlinksCommand::List {
                device,
                status,
                limit,
                json,
            } => {
                let status = status
                    .map(|s| {
                        Status::parse(&s).ok_or_else(|| {
                            anyhow::anyhow!(
                                "--status {s:?}: expected queued, sending, accepted, failed or cancelled"
                            )
                        })
                    })
                    .transpose()?;
                let rows =
                    outbox::list(pool, device.as_deref(), status, None, limit.clamp(1, 1000))
                        .await?;
                if json {
                    let views: Vec<DownlinkView> = rows.into_iter().map(Into::into).collect();
                    println!("{}", serde_json::to_string_pretty(&views)?);
                } else {
                    print_table(&rows);
                }
                Ok(true)
            }
            DownlinksCommand::Show { id, json } => {
                print_one(outbox::get(pool, id).await?, json)?;
                Ok(true)
            }
            DownlinksCommand::Cancel { id } => {
                outbox::cancel(pool, id).await?;
                println!("Downlink {id} cancelled.");
                Ok(true)
            }
        }
    }
    .await;
    database.close().await;
    result
}

async fn wait_until_final(
    pool: &sqlx::PgPool,
    id: uuid::Uuid,
    timeout: Duration,
) -> anyhow::Result<DownlinkRow> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = outbox::get(pool, id).await?;
        if Status::parse(&row.status).is_some_and(Status::is_final) {
            return Ok(row);
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "downlink {id} is still {} after {}: is serve running with KPN credentials? \
                 Follow it with: things-receiver downlinks show {id}",
                row.status,
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

fn print_one(row: DownlinkRow, json: bool) -> anyhow::Result<()> {
    let view = DownlinkView::from(row);
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    println!("id:        {}", view.id);
    println!("device:    {}", view.device);
    if let Some(port) = view.port {
        println!("port:      {port}");
    }
    match &view.payload_hex {
        Some(hex) => println!("payload:   {hex}"),
        None => println!("records:   {}", view.records),
    }
    println!("status:    {}", view.status);
    println!("attempts:  {}", view.attempts);
    if let Some(next) = &view.next_attempt_at {
        println!("next try:  {next}");
    }
    if let Some(error) = &view.error {
        println!("error:     {error}");
    }
    if let Some(status) = view.kpn_status {
        println!("kpn:       {status}");
    }
    if let Some(answer) = &view.kpn_response {
        println!("answer:    {answer}");
    }
    println!("created:   {}", view.created_at);
    println!("updated:   {}", view.updated_at);
    Ok(())
}

fn print_table(rows: &[DownlinkRow]) {
    if rows.is_empty() {
        println!("No downlinks.");
        return;
    }
    println!(
        "{:<36} {:<10} {:>4} {:>8} {:<22} DEVICE",
        "ID", "STATUS", "PORT", "ATTEMPTS", "CREATED"
    );
    for r in rows {
        println!(
            "{:<36} {:<10} {:>4} {:>8} {:<22} {}",
            r.id,
            r.status,
            r.port.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.attempts,
            r.created_at.format("%Y-%m-%d %H:%M:%S"),
            r.device
        );
    }
}
