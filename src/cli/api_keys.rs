//! `things-receiver api-keys ...`

use crate::admin::api_keys;
use crate::config::{ApiKeysCommand, DbArgs};

pub async fn run(db_args: &DbArgs, command: ApiKeysCommand) -> anyhow::Result<()> {
    let (database, _key) = super::open(db_args).await?;
    let pool = &database.pool;
    let result = async {
        match command {
            ApiKeysCommand::Create { name, scope } => {
                let (key, row) = api_keys::create(pool, &name, &scope).await?;
                eprintln!(
                    "API key {:?} created with scopes {}; it is shown only now:",
                    row.name,
                    row.scopes.join(",")
                );
                // The key alone on stdout, so that KEY=$(things-receiver api-keys create ...) works.
                println!("{key}");
            }
            ApiKeysCommand::List { json } => {
                let rows = api_keys::list(pool).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                } else {
                    println!(
                        "{:<24} {:<22} {:<25} {:<25} REVOKED",
                        "NAME", "SCOPES", "CREATED", "LAST USED"
                    );
                    for r in rows {
                        let fmt = |t: Option<chrono::DateTime<chrono::Utc>>| {
                            t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                                .unwrap_or_else(|| "-".into())
                        };
                        println!(
                            "{:<24} {:<22} {:<25} {:<25} {}",
                            r.name,
                            r.scopes.join(","),
                            fmt(Some(r.created_at)),
                            fmt(r.last_used_at),
                            fmt(r.revoked_at)
                        );
                    }
                }
            }
            ApiKeysCommand::Revoke { name } => {
                api_keys::revoke(pool, &name).await?;
                println!("API key {name:?} revoked.");
            }
        }
        Ok(())
    }
    .await;
    database.close().await;
    result
}
