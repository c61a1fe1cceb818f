//! `things-receiver firmware ...`: firmware images in the shared database.

use anyhow::Context;

use crate::config::{DbArgs, FirmwareCommand};
use crate::firmware::files::{self, FirmwareView};

pub async fn run(db_args: &DbArgs, command: FirmwareCommand) -> anyhow::Result<()> {
    // The file is read before the database is opened: a wrong path fails fast.
    let image = match &command {
        FirmwareCommand::Add {
            file, max_firmware, ..
        } => {
            let size = std::fs::metadata(file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            if size > *max_firmware as u64 {
                anyhow::bail!(
                    "{} has {size} bytes, more than --max-firmware ({max_firmware} bytes)",
                    file.display()
                );
            }
            Some(std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?)
        }
        _ => None,
    };
    let (database, _key) = super::open(db_args).await?;
    let pool = &database.pool;
    let result = async {
        match command {
            FirmwareCommand::Add {
                version,
                name,
                sha256,
                max_firmware,
                json,
                ..
            } => {
                let image = image.unwrap_or_default();
                let added = files::add(
                    pool,
                    &version,
                    name.as_deref(),
                    &image,
                    max_firmware,
                    sha256.as_deref(),
                )
                .await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&added)?);
                } else {
                    println!(
                        "Firmware {} stored: {} bytes, SHA-256 {}, CRC-32 {}.",
                        added.version, added.size, added.sha256, added.crc32
                    );
                }
                Ok(())
            }
            FirmwareCommand::List { json } => {
                let list = files::list(pool).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&list)?);
                } else {
                    print_table(&list);
                }
                Ok(())
            }
            FirmwareCommand::Remove { version } => {
                files::remove(pool, &version).await?;
                println!("Firmware {} removed.", version.trim());
                Ok(())
            }
        }
    }
    .await;
    database.close().await;
    result
}

fn print_table(list: &[FirmwareView]) {
    if list.is_empty() {
        println!("No firmware. Add one with: things-receiver firmware add FILE --version V");
        return;
    }
    println!(
        "{:<20} {:>10} {:<8} {:<64} ADDED",
        "VERSION", "SIZE", "CRC-32", "SHA-256"
    );
    for f in list {
        println!(
            "{:<20} {:>10} {:<8} {:<64} {}",
            f.version,
            f.size,
            f.crc32,
            f.sha256,
            f.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
}
