//! Command-line and environment configuration, validated before anything starts.
//!
//! Every setting has a flag and, where it makes sense in containers, an environment variable.
//! Secrets (the database URL may hold a password) are read from the environment without
//! echoing their values in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Default of `--max-series-points`.
pub const DEFAULT_MAX_SERIES_POINTS: u64 = 10_000;

#[derive(Debug, Parser)]
#[command(
    name = "things-receiver",
    version,
    about = "Receives KPN Things deliveries, verifies them and stores them durably in PostgreSQL"
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    /// Log lines on stderr: `text` for people (coloured only on a terminal, and not with
    /// NO_COLOR set), `json` (one object per line) for log shippers.
    #[arg(long, global = true, env = "THINGS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Register M2M and Internet devices (and their secrets) for direct ingestion.
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Sign a SenML file exactly as KPN Things (or, with --door, a device) does and POST it
    /// to a receiver.
    Send(SendArgs),
    /// Queue, follow and cancel actuator downlinks to devices.
    #[command(subcommand)]
    Downlinks(DownlinksCommand),
    /// Check an endpoint the way KPN Things will reach it: scheme, port, DNS, certificate,
    /// protocols and suites, and (with --plug and --secret) a signed probe delivery.
    Doctor(DoctorArgs),
    /// Store, list and remove firmware images for updates over the air.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
    /// Start, follow and cancel firmware campaigns for registered devices.
    #[command(subcommand)]
    Fota(FotaCommand),
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, env = "THINGS_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain (leaf first). Repeat with --tls-key to serve an RSA and an ECDSA
    /// certificate together. Re-read on SIGHUP and when the file changes. Without it a
    /// development certificate is generated.
    #[arg(
        long,
        env = "THINGS_TLS_CERT",
        requires = "tls_key",
        value_delimiter = ','
    )]
    pub tls_cert: Vec<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC) matching the --tls-cert in the same
    /// position.
    #[arg(
        long,
        env = "THINGS_TLS_KEY",
        requires = "tls_cert",
        value_delimiter = ','
    )]
    pub tls_key: Vec<PathBuf>,
    /// Serve plain HTTP, for running behind a TLS-terminating proxy only.
    #[arg(long, env = "THINGS_PLAIN_HTTP", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub plain_http: bool,
    /// Largest accepted delivery body (e.g. 1MiB, 512KiB, 65536).
    #[arg(long, env = "THINGS_MAX_BODY", default_value = "1MiB", value_parser = parse_size)]
    pub max_body: usize,
    /// Database connections in the pool. The writer's transactions keep up to half of those
    /// beyond two between batches (at most --writer-concurrency); the rest serve the API.
    #[arg(long, env = "THINGS_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// How long a request waits for a database connection before answering 503.
    #[arg(long, env = "THINGS_DB_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub db_timeout: Duration,
    /// Largest local spool for deliveries the database cannot take (e.g. 1GiB); beyond it
    /// deliveries are answered 503 so that KPN retries.
    #[arg(long, env = "THINGS_SPOOL_MAX", default_value = "1GiB", value_parser = parse_size)]
    pub spool_max: usize,
    /// How long a delivery may wait for its database commit before it is spooled instead.
    #[arg(long, env = "THINGS_SPOOL_AFTER", default_value = "2s", value_parser = parse_duration)]
    pub spool_after: Duration,
    /// Refused, duplicate and spooled deliveries written to the database per second at most
    /// (by this process); the rest stay in the process's in-memory ring of the last 1024.
    #[arg(long, env = "THINGS_REJECTIONS_RATE", default_value_t = 20)]
    pub rejections_rate: u32,
    /// Total size of the recorded door events in the database (e.g. 256MiB); past it the
    /// oldest are deleted.
    #[arg(long, env = "THINGS_REJECTIONS_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
    pub rejections_max_bytes: usize,
    /// Most deliveries committed in one transaction (batches form from whatever is queued).
    #[arg(long, env = "THINGS_WRITER_BATCH", default_value_t = 512)]
    pub writer_batch: usize,
    /// Most transactions the writer keeps in flight at once (two: one executes while the
    /// other commits).
    #[arg(long, env = "THINGS_WRITER_CONCURRENCY", default_value_t = 2)]
    pub writer_concurrency: usize,
    /// Ingest requests in flight at once; more are answered 503 at once.
    #[arg(long, env = "THINGS_MAX_INFLIGHT", default_value_t = 2048)]
    pub max_inflight: usize,
    /// Keep measurements this long (e.g. 400d); older monthly partitions are dropped whole.
    /// Without it nothing is dropped.
    #[arg(long, env = "THINGS_RETENTION", value_parser = parse_duration)]
    pub retention: Option<Duration>,
    /// Most points one `GET /api/v1/series` answer may hold; larger requests are refused
    /// with a hint on how to narrow them.
    #[arg(long, env = "THINGS_MAX_SERIES_POINTS", default_value_t = DEFAULT_MAX_SERIES_POINTS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_series_points: u64,
    /// How long a console sign-in lasts (the session cookie's lifetime); revoking the API key
    /// it was opened with ends it sooner.
    #[arg(long, env = "THINGS_CONSOLE_SESSION_TTL", default_value = "12h", value_parser = parse_duration)]
    pub console_session_ttl: Duration,
    /// Also serve `/metrics` here, without an API key, over plain HTTP (e.g. 127.0.0.1:9100
    /// or a private address for the scraper). On the main listener `/metrics` always needs a
    /// `read` key.
    #[arg(long, env = "THINGS_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Also serve the device doors (and the firmware files) over plain HTTP here, for M2M
    /// devices on KPN's private APN, which speak plain HTTP (e.g. 0.0.0.0:8080). Nothing else
    /// is served there: no API, no `/ingest/kpn`.
    #[arg(long, env = "THINGS_DEVICE_LISTEN")]
    pub device_listen: Option<SocketAddr>,
    /// Largest accepted device uplink body (e.g. 64KiB).
    #[arg(long, env = "THINGS_DEVICE_MAX_BODY", default_value = "64KiB", value_parser = parse_size)]
    pub device_max_body: usize,
    #[command(flatten)]
    pub kpn: KpnArgs,
    #[command(flatten)]
    pub downlink: DownlinkArgs,
    #[command(flatten)]
    pub fota: FotaArgs,
    /// Largest firmware image `POST /api/v1/firmware` accepts (e.g. 16MiB).
    #[arg(long, env = "THINGS_MAX_FIRMWARE", default_value = "16MiB", value_parser = parse_size)]
    pub max_firmware: usize,
    /// A device that makes no progress in its campaign (no transition, no part downloaded)
    /// for this long is marked failed, so a silent device cannot stall a campaign.
    #[arg(long, env = "THINGS_FOTA_TIMEOUT", default_value = "7d", value_parser = parse_duration)]
    pub fota_timeout: Duration,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub acme: AcmeArgs,
}

/// Where KPN's identity provider and actuator API are. The client id and secret are never
/// flags (flags show in `ps`): they come from `KPN_CLIENT_ID` / `KPN_CLIENT_SECRET` or from
/// `--kpn-credentials-file`.
#[derive(Debug, Clone, Args)]
pub struct KpnArgs {
    /// Token endpoint of KPN's identity provider (GRIP); `{tenant}` is replaced by --kpn-tenant.
    #[arg(
        long,
        env = "KPN_TOKEN_URL",
        default_value = "https://auth.grip-on-it.com/v2/{tenant}/oidc/idp/c1/token"
    )]
    pub kpn_token_url: String,
    /// Your GRIP tenant id (Things Portal, Customer details), used in --kpn-token-url.
    #[arg(long, env = "KPN_TENANT_ID")]
    pub kpn_tenant: Option<String>,
    /// Audience of the token request: KPN Things' application id (not a UUID; sent as is).
    #[arg(
        long,
        env = "KPN_AUDIENCE",
        default_value = "4dc82561-f65f-523g-dek9-6c79ec314f02"
    )]
    pub kpn_audience: String,
    /// Base URL of KPN's API.
    #[arg(long, env = "KPN_API_URL", default_value = "https://api.kpnthings.com")]
    pub kpn_api_url: String,
    /// Path of the downlink call under --kpn-api-url.
    #[arg(
        long,
        env = "KPN_DOWNLINK_PATH",
        default_value = "/api/actuator/downlinks"
    )]
    pub kpn_downlink_path: String,
    /// Accept header of the downlink call.
    #[arg(
        long,
        env = "KPN_DOWNLINK_ACCEPT",
        default_value = "application/vnd.kpnthings.actuator.v1.response+json"
    )]
    pub kpn_downlink_accept: String,
    /// Act for this sub-customer: a context switch after every new token, then `x-client-id`.
    #[arg(long, env = "KPN_SUB_CUSTOMER")]
    pub kpn_sub_customer: Option<String>,
    /// Time limit of every call to KPN (connect, send, answer).
    #[arg(long, env = "KPN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub kpn_timeout: Duration,
    /// File with `KPN_CLIENT_ID=...` and `KPN_CLIENT_SECRET=...` lines (instead of the
    /// environment variables of those names).
    #[arg(long, env = "KPN_CREDENTIALS_FILE")]
    pub kpn_credentials_file: Option<PathBuf>,
}

/// How the outbox worker paces its attempts.
#[derive(Debug, Clone, Args)]
pub struct DownlinkArgs {
    /// Attempts before a downlink that keeps meeting temporary errors is marked failed.
    #[arg(long, env = "THINGS_DOWNLINK_MAX_ATTEMPTS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub downlink_max_attempts: u32,
    /// First retry delay; it doubles per attempt (with jitter) up to --downlink-retry-max.
    #[arg(long, env = "THINGS_DOWNLINK_RETRY_BASE", default_value = "2s", value_parser = parse_duration)]
    pub downlink_retry_base: Duration,
    /// Longest delay between two attempts.
    #[arg(long, env = "THINGS_DOWNLINK_RETRY_MAX", default_value = "5m", value_parser = parse_duration)]
    pub downlink_retry_max: Duration,
    /// How long a claimed downlink belongs to one process; after that (the process died
    /// mid-send) another takes it over. Must exceed six times --kpn-timeout.
    #[arg(long, env = "THINGS_DOWNLINK_LEASE", default_value = "2m", value_parser = parse_duration)]
    pub downlink_lease: Duration,
    /// How long a downlink for a registered device waits for the device's next uplink before
    /// it expires (KPN drops SMS downlinks after 48 hours); a request's `ttl` overrides it.
    #[arg(long, env = "THINGS_DOWNLINK_TTL", default_value = "48h", value_parser = parse_duration)]
    pub downlink_ttl: Duration,
}

/// What a firmware campaign is started with, by `serve`'s API and by `fota start` alike.
#[derive(Debug, Clone, Args)]
pub struct FotaArgs {
    /// The base URL devices download firmware from, as they reach this server (through NAT
    /// or KPN's APN), e.g. http://10.0.0.5:8080; the notification names `<base>/f/v1/<uuid>`.
    /// Campaigns cannot start without it.
    #[arg(long, env = "THINGS_FOTA_BASE_URL")]
    pub fota_base_url: Option<String>,
    /// The SenML record (string value) in which devices report their firmware version.
    #[arg(long, env = "THINGS_FOTA_VERSION_NAME", default_value = crate::firmware::DEFAULT_VERSION_NAME)]
    pub fota_version_name: String,
}

/// Automatic certificates by ACME TLS-ALPN-01 on the serving port.
#[derive(Debug, Clone, Args)]
pub struct AcmeArgs {
    /// Obtain and renew a certificate for this domain (repeatable) from an ACME CA, answering
    /// its TLS-ALPN-01 challenge on the serving port (which must be reachable as port 443).
    #[arg(long, env = "THINGS_ACME_DOMAIN", value_delimiter = ',',
          conflicts_with_all = ["tls_cert", "tls_key", "plain_http"])]
    pub acme_domain: Vec<String>,
    /// Contact address registered with the CA (expiry warnings).
    #[arg(long, env = "THINGS_ACME_EMAIL", requires = "acme_domain")]
    pub acme_email: Option<String>,
    /// ACME directory URL, or `production` / `staging` for Let's Encrypt's.
    #[arg(
        long,
        env = "THINGS_ACME_DIRECTORY",
        default_value = "production",
        requires = "acme_domain"
    )]
    pub acme_directory: String,
    /// Extra root certificate (PEM) trusted for the ACME directory's HTTPS. Only for a local
    /// test CA such as pebble; public CAs need no such file.
    #[arg(long, env = "THINGS_ACME_CA_ROOT", requires = "acme_domain")]
    pub acme_ca_root: Option<PathBuf>,
}

/// Connection limits and timeouts that keep slow or stalled clients from exhausting the server.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Time a client has to complete the TLS handshake.
    #[arg(long, env = "THINGS_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// Time a client has to send a request's complete headers (HTTP/1.1; also bounds the wait
    /// for the first request on any connection).
    #[arg(long, env = "THINGS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,
    /// Time a client has to send a whole request, head and body, once the head has arrived
    /// (408 beyond, and HTTP/1.1 closes the connection). Long answers (exports, the live
    /// stream) are not bounded by it.
    #[arg(long, env = "THINGS_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// A connection with no request in flight, or whose answers all wait for the client to
    /// read them, is closed after this long (idle keep-alive connections, HTTP/2 connections
    /// kept open with PINGs only, clients that stop reading an export).
    #[arg(long, env = "THINGS_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Open connections at most; connections beyond are closed at once.
    #[arg(long, env = "THINGS_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Open connections from one client address at most; more are closed at once. Behind a
    /// proxy (--plain-http) every connection comes from the proxy: raise it to
    /// --max-connections there.
    #[arg(long, env = "THINGS_MAX_CONNECTIONS_PER_IP", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: u32,
    /// Database connections of the separate pool that CSV/NDJSON exports and the live
    /// stream's listener use (one of them is the listener's), so that they never take the
    /// connections ingestion needs. An export finding it full is answered 503.
    #[arg(long, env = "THINGS_DB_STREAM_POOL", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(2..))]
    pub db_stream_pool: u32,
    /// Offer only HTTP/1.1 (ALPN offers h2 and http/1.1 by default).
    #[arg(long, env = "THINGS_NO_HTTP2")]
    pub no_http2: bool,
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

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Register a device: urn:dev:IMEI:<15 digits>: or urn:dev:DVNUUID:<uuid>:. Without
    /// --secret a 40-character alphanumeric secret is generated and printed once.
    Add {
        urn: String,
        /// The device's secret (30 to 100 printable ASCII characters).
        #[arg(long, env = "THINGS_DEVICE_SECRET", hide_env_values = true)]
        secret: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List registered devices (secrets are never shown).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Replace a device's secret; the old one stays valid for --overlap.
    Rotate {
        urn: String,
        #[arg(long, env = "THINGS_DEVICE_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// How long the previous secret is still accepted (e.g. 24h, 30m, 0s; at most 366d).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        overlap: Duration,
        #[arg(long)]
        json: bool,
    },
    /// End a device's registration; its stored data stays.
    Remove { urn: String },
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Receiver URL, e.g. https://localhost:8443/ingest/kpn. With --door, http:// (the plain
    /// device listener) or https://; a URL without a path gets the door's
    /// (/ingestion/m2m/senml/v1 or /ingestion/ip/senml/v1).
    #[arg(long)]
    pub url: String,
    /// Things-Plug-UUID of the destination: send as KPN Things does.
    #[arg(long, required_unless_present = "door", conflicts_with = "door")]
    pub plug: Option<uuid::Uuid>,
    /// Send as a device does instead, to a device door: `m2m` (KPN SIM, plain HTTP,
    /// `Host: m.m`) or `ip` (Internet devices); no plug header.
    #[arg(long, value_enum)]
    pub door: Option<DeviceDoor>,
    /// The destination's shared secret, or with --door the device's secret.
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

/// The two doors devices post their uplinks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceDoor {
    /// M2M devices: `/ingestion/m2m/senml/v1`.
    M2m,
    /// Internet devices: `/ingestion/ip/senml/v1`.
    Ip,
}

#[derive(Debug, Subcommand)]
pub enum DownlinksCommand {
    /// Queue a downlink: a running `serve` with KPN credentials sends it, or, for a device
    /// registered for the device doors, the answer to its next uplink carries it.
    Send {
        /// The device, e.g. urn:dev:DEVEUI:0018B21000008C47:
        urn: String,
        /// LoRaWAN FPort (1-223).
        #[arg(long)]
        port: Option<u16>,
        /// Payload as hex, e.g. 0a0b (at most 242 bytes).
        #[arg(long)]
        hex: String,
        /// Makes a retried command queue only once.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Wait until KPN accepted it (or the device's answer carried it) or it failed
        /// (exit status 1 unless accepted or delivered).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "2m", value_parser = parse_duration)]
        timeout: Duration,
        /// For a registered device: how long it waits for an uplink (default 48h), e.g. 6h.
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// List downlinks, newest first.
    List {
        #[arg(long)]
        device: Option<String>,
        /// queued, sending, accepted, failed, cancelled, delivered or expired.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show one downlink with KPN's answer or the reason it failed.
    Show {
        id: uuid::Uuid,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a downlink that has not been sent yet.
    Cancel { id: uuid::Uuid },
}

#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Store a firmware image (immutable; its size, SHA-256 and CRC-32 are computed now).
    Add {
        /// The image file.
        file: PathBuf,
        /// Its version, as devices report it (e.g. 1.2.0).
        #[arg(long)]
        version: String,
        #[arg(long)]
        name: Option<String>,
        /// Refuse the file unless its SHA-256 is this (hex).
        #[arg(long)]
        sha256: Option<String>,
        /// Largest accepted image.
        #[arg(long, env = "THINGS_MAX_FIRMWARE", default_value = "16MiB", value_parser = parse_size)]
        max_firmware: usize,
        #[arg(long)]
        json: bool,
    },
    /// List firmware images.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a firmware image no unfinished campaign uses.
    Remove { version: String },
}

#[derive(Debug, Subcommand)]
pub enum FotaCommand {
    /// Start a campaign: set the desired firmware of registered devices.
    Start {
        /// The firmware version to install.
        #[arg(long)]
        firmware: String,
        /// A registered device (repeatable).
        #[arg(long = "device", required = true)]
        devices: Vec<String>,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        fota: FotaArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show a campaign: counts per state and each device.
    Status {
        campaign: uuid::Uuid,
        #[arg(long)]
        json: bool,
    },
    /// List campaigns.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Cancel a campaign: devices not yet updated are cancelled and their downloads end.
    Cancel { campaign: uuid::Uuid },
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The URL configured at KPN, e.g. https://things.example.org/ingest/kpn
    pub url: String,
    /// Things-Plug-UUID of a destination, for a signed probe delivery.
    #[arg(long, requires = "secret")]
    pub plug: Option<uuid::Uuid>,
    /// The destination's shared secret, for a signed probe delivery.
    #[arg(
        long,
        env = "THINGS_DOCTOR_SECRET",
        hide_env_values = true,
        requires = "plug"
    )]
    pub secret: Option<String>,
    /// Also trust the root certificates in this PEM file. For testing against a private CA
    /// only: KPN trusts public CAs alone, so a pass with --ca-file says nothing about KPN.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Time allowed for each network step.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
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
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => {
            return Err(format!(
                "unknown size unit {unit:?}: use B, KiB, MiB or GiB"
            ));
        }
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
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("1TiB").is_err());
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
