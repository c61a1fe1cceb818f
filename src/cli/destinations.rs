//! `things-receiver destinations ...`

use anyhow::Context;

use crate::admin::destinations::{self, AddRequest, DestinationInfo, WithSecret};
use crate::config::{DbArgs, DestinationsCommand};

pub async fn run(db_args: &DbArgs, command: DestinationsCommand) -> anyhow::Result<()> {
    let (database, key) = super::open(db_args).await?;
    let pool = &database.pool;
    let result = async {
        match command {
            DestinationsCommand::Add {
                name,
                plug,
                secret,
                response_code,
                require_header,
                json,
            } => {
                let added = destinations::add(
                    pool,
                    &key,
                    AddRequest {
                        name,
                        plug,
                        secret,
                        response_code,
                        required_headers: require_header.into_iter().collect(),
                    },
                )
                .await?;
                print_with_secret(&added, json, "added")
            }
            DestinationsCommand::List { json } => {
                let list = destinations::list(pool).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    print_table(&list);
                }
                Ok(())
            }
            DestinationsCommand::Rotate {
                destination,
                secret,
                overlap,
                json,
            } => {
                let rotated =
                    destinations::rotate(pool, &key, &destination, secret, overlap).await?;
                print_with_secret(&rotated, json, "rotated")
            }
            DestinationsCommand::Remove { destination } => {
                let removed = destinations::remove(pool, &destination).await?;
                println!(
                    "Destination {:?} removed; its stored messages are kept.",
                    removed.name
                );
                Ok(())
            }
        }
    }
    .await;
    database.close().await;
    result
}

fn print_with_secret(item: &WithSecret, json: bool, verb: &str) -> anyhow::Result<()> {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(item).context("encoding JSON")?
        );
        return Ok(());
    }
    let d = &item.destination;
    match d.plug {
        Some(plug) => println!("Destination {:?} {verb} for plug {plug}.", d.name),
        None => println!(
            "Destination {:?} {verb}; it is pending: the first delivery signed with its secret binds KPN's plug UUID to it.",
            d.name
        ),
    }
    if let Some(until) = d.previous_secret_valid_until {
        println!("The previous secret is accepted until {until}.");
    }
    if let Some(secret) = &item.secret {
        println!("Shared secret (shown only now; enter it in the KPN Things destination):");
        println!("{secret}");
    }
    Ok(())
}

fn print_table(list: &[DestinationInfo]) {
    if list.is_empty() {
        println!("No destinations. Add one with: things-receiver destinations add --name NAME");
        return;
    }
    println!(
        "{:<38} {:<24} {:<8} {:<5} HEADERS",
        "PLUG", "NAME", "STATE", "CODE"
    );
    for d in list {
        let plug = d.plug.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let headers: Vec<String> = d
            .required_headers
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:<38} {:<24} {:<8} {:<5} {}",
            plug,
            d.name,
            d.state,
            d.response_code,
            headers.join(",")
        );
    }
}
