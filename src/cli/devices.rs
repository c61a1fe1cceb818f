//! `things-receiver devices ...`: registrations for direct ingestion.

use anyhow::Context;

use crate::admin::devices::{self, DeviceKeyInfo, DeviceWithSecret};
use crate::config::{DbArgs, DevicesCommand};

pub async fn run(db_args: &DbArgs, command: DevicesCommand) -> anyhow::Result<()> {
    let (database, key) = super::open(db_args).await?;
    let pool = &database.pool;
    let result = async {
        match command {
            DevicesCommand::Add { urn, secret, json } => {
                let added = devices::add(pool, &key, &urn, secret).await?;
                print_with_secret(&added, json, "registered")
            }
            DevicesCommand::List { json } => {
                let list = devices::list(pool).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    print_table(&list);
                }
                Ok(())
            }
            DevicesCommand::Rotate {
                urn,
                secret,
                overlap,
                json,
            } => {
                let rotated = devices::rotate(pool, &key, &urn, secret, overlap).await?;
                print_with_secret(&rotated, json, "has a new secret")
            }
            DevicesCommand::Remove { urn } => {
                let removed = devices::remove(pool, &urn).await?;
                println!(
                    "Device {} is no longer registered; its stored data is kept.",
                    removed.urn
                );
                Ok(())
            }
        }
    }
    .await;
    database.close().await;
    result
}

fn print_with_secret(item: &DeviceWithSecret, json: bool, what: &str) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(item).context("encoding JSON")?
        );
        return Ok(());
    }
    let d = &item.device;
    println!("Device {} ({}) {what}.", d.urn, d.kind);
    if let Some(until) = d.previous_secret_valid_until {
        println!("The previous secret is accepted until {until}.");
    }
    if let Some(secret) = &item.secret {
        println!("Device secret (shown only now; configure it on the device):");
        println!("{secret}");
    }
    Ok(())
}

fn print_table(list: &[DeviceKeyInfo]) {
    if list.is_empty() {
        println!("No registered devices. Register one with: things-receiver devices add URN");
        return;
    }
    println!(
        "{:<56} {:<8} {:<26} PREVIOUS SECRET UNTIL",
        "URN", "KIND", "REGISTERED"
    );
    for d in list {
        let until = d
            .previous_secret_valid_until
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<56} {:<8} {:<26} {}",
            d.urn,
            d.kind,
            d.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            until
        );
    }
}
