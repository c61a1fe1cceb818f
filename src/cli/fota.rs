//! `things-receiver fota ...`: firmware campaigns in the shared database; a running `serve`
//! notifies the devices and serves the downloads.

use crate::config::{DbArgs, FotaCommand};
use crate::firmware::campaigns::{self, CampaignView, StartRequest};

pub async fn run(db_args: &DbArgs, command: FotaCommand) -> anyhow::Result<()> {
    let (database, key) = super::open(db_args).await?;
    let pool = &database.pool;
    let result = async {
        match command {
            FotaCommand::Start {
                firmware,
                devices,
                name,
                fota,
                json,
            } => {
                let request = StartRequest {
                    firmware: &firmware,
                    devices: &devices,
                    name: name.as_deref(),
                    base_url: fota.fota_base_url.as_deref(),
                    version_name: &fota.fota_version_name,
                };
                let campaign = campaigns::start(pool, &key, &request).await?;
                print(&campaign, json)
            }
            FotaCommand::Status { campaign, json } => {
                print(&campaigns::get(pool, campaign).await?, json)
            }
            FotaCommand::List { json } => {
                let list = campaigns::list(pool).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                    return Ok(());
                }
                if list.is_empty() {
                    println!("No campaigns. Start one with: things-receiver fota start");
                }
                for c in &list {
                    println!("{} {} {}", c.id, c.firmware, counts(c));
                }
                Ok(())
            }
            FotaCommand::Cancel { campaign } => {
                let c = campaigns::cancel(pool, campaign).await?;
                println!("Campaign {} cancelled: {}", c.id, counts(&c));
                Ok(())
            }
        }
    }
    .await;
    database.close().await;
    result
}

fn counts(c: &CampaignView) -> String {
    let parts: Vec<String> = c
        .counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    parts.join(", ")
}

fn print(c: &CampaignView, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(c)?);
        return Ok(());
    }
    println!("Campaign {} (firmware {}): {}", c.id, c.firmware, counts(c));
    for d in c.devices.iter().flatten() {
        let last = d
            .last_part_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<56} {:<12} {:>10} bytes {:>6} parts  last part {}",
            d.urn, d.state, d.bytes_served, d.parts, last
        );
    }
    Ok(())
}
