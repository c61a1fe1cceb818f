//! Command-line and environment configuration, validated before anything starts.
//!
//! Every setting has a flag and, where it makes sense in containers, an environment variable.
//! Secrets (the database URL may hold a password) are read from the environment without
//! echoing their values in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "things-receiver",
    version,
    about = "Receives KPN Things deliveries, verifies them and stores them durably in PostgreSQL"
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the data lives; shared by every command so that the CLI and `serve` always agree.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Directory for the embedded PostgreSQL cluster, the secret key and the dev certificate.
    #[arg(long, global = true, env = "THINGS_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// External PostgreSQL instead of the embedded cluster (postgres://user:pass@host/db).
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the 32-byte key (base64) that encrypts shared secrets at rest.
    /// Default: DATA_DIR/secret.key, created on first use. THINGS_SECRET_KEY (base64) overrides it.
    #[arg(long, global = true, env = "THINGS_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
}

impl DbArgs {
    pub fn secret_key_path(&self) -> PathBuf {
        self.secret_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secret.key"))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS receiver and the dashboard API.
    Serve(ServeArgs),
    /// Manage KPN Things destinations and their shared secrets.
    #[command(subcommand)]
    Destinations(DestinationsCommand),
    /// Manage API keys for the dashboard API.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCommand),
    /// Sign a SenML file exactly as KPN Things does and POST it to a receiver.
    Send(SendArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "THINGS_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first). Without it a development certificate is generated.
    #[arg(long, env = "THINGS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) matching --tls-cert.
    #[arg(long, env = "THINGS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP, for running behind a TLS-terminating proxy only.
    #[arg(long, env = "THINGS_PLAIN_HTTP", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub plain_http: bool,
    /// Largest accepted delivery body (e.g. 1MiB, 512KiB, 65536).
    #[arg(long, env = "THINGS_MAX_BODY", default_value = "1MiB", value_parser = parse_size)]
    pub max_body: usize,
    /// Database connections in the pool.
    #[arg(long, env = "THINGS_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// How long a request waits for a database connection before answering 503.
    #[arg(long, env = "THINGS_DB_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_timeout: Duration,
    /// Most points one `GET /api/v1/series` answer may hold; larger requests are refused
    /// with a hint on how to narrow them.
    #[arg(long, env = "THINGS_MAX_SERIES_POINTS", default_value_t = crate::api::DEFAULT_MAX_SERIES_POINTS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_series_points: u64,
}

#[derive(Debug, Subcommand)]
pub enum DestinationsCommand {
    /// Add a destination. Without --secret a secret that meets KPN's rules is generated and
    /// printed once; without --plug the destination is pending until its first delivery.
    Add {
        #[arg(long)]
        name: String,
        /// KPN's Things-Plug-UUID for this destination, if known.
        #[arg(long)]
        plug: Option<uuid::Uuid>,
        /// The shared secret configured at KPN (at least 30 characters).
        #[arg(long, env = "THINGS_DESTINATION_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// Status code answered to KPN for accepted deliveries (KPN's expectedResponseCode).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(200..300))]
        response_code: u16,
        /// A static header KPN sends on every delivery, NAME=VALUE (repeatable).
        #[arg(long = "require-header", value_parser = parse_header)]
        require_header: Vec<(String, String)>,
        #[arg(long)]
        json: bool,
    },
    /// List destinations (secrets are never shown).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Replace a destination's secret; the old one stays valid for --overlap.
    Rotate {
        /// Plug UUID or name of the destination.
        destination: String,
        #[arg(long, env = "THINGS_DESTINATION_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// How long the previous secret is still accepted (e.g. 24h, 30m, 0s).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        overlap: Duration,
        #[arg(long)]
        json: bool,
    },
    /// Remove a destination; its stored messages stay.
    Remove {
        /// Plug UUID or name of the destination.
        destination: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Create a key and print it (alone, on stdout). It cannot be shown again.
    Create {
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: read, downlink, admin.
        #[arg(long, value_delimiter = ',', default_value = "read")]
        scope: Vec<String>,
    },
    /// List keys (never the keys themselves).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by name.
    Revoke { name: String },
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Receiver URL, e.g. https://localhost:8443/ingest/kpn
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub plug: uuid::Uuid,
    #[arg(long, env = "THINGS_SEND_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Extra header NAME=VALUE (repeatable), like the static headers of a KPN destination.
    #[arg(long = "header", value_parser = parse_header)]
    pub header: Vec<(String, String)>,
    /// Accept a self-signed or otherwise unverifiable certificate.
    #[arg(long)]
    pub insecure: bool,
    /// The SenML file to send, byte for byte ("-" for standard input).
    pub file: PathBuf,
}

/// Parses sizes such as `1MiB`, `512KiB`, `1M`, `65536`.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1MiB, 512KiB or 65536"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("unknown size unit {unit:?}: use B, KiB or MiB")),
    };
    number
        .checked_mul(factor)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a usable size"))
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (use e.g. 24h, 30m, 0s)"))
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=VALUE"))?;
    let name = name.trim();
    if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{name:?} is not a valid header name"));
    }
    if http::HeaderValue::from_str(value).is_err() {
        return Err(format!("the value of {name} is not a valid header value"));
    }
    Ok((name.to_ascii_lowercase(), value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1024 * 1024));
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("0").is_err());
        assert!(parse_size("1GiB").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("Device-Type=dragino-lds01"),
            Ok(("device-type".into(), "dragino-lds01".into()))
        );
        assert!(parse_header("no-equals").is_err());
        assert!(parse_header("bad name=x").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
