//! Firmware over the air, as KPN's FOTA document describes it: images (`files`), campaigns
//! that set a desired version for registered devices (`campaigns`), the url/token pack an
//! uplink's answer carries (`notification`, `token`), and the ranged file server the device
//! downloads from (`http`, with `range`, the image `cache` and batched `progress`).
//!
//! One layer with `ingest` and `downlink`: it uses the store and the secret key, and the API
//! handlers (`api::firmware`, `api::campaigns`) and the device doors use it.

pub mod cache;
pub mod campaigns;
pub mod downloads;
pub mod files;
pub mod http;
pub mod notification;
pub mod progress;
pub mod range;
pub mod token;

/// Where the file server answers: `GET /f/v1/{uuid}`.
pub const FILE_PATH_PREFIX: &str = "/f/v1/";
/// As KPN's file server: the 100th request on one connection is answered with
/// `Connection: close`.
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 100;
/// As KPN's file server: at most this many parts per download (campaign and device).
pub const MAX_PARTS: i64 = 19_999;
/// The record a device reports its version in, as KPN's device SDK sends it.
pub const DEFAULT_VERSION_NAME: &str = "firmware";

/// What a firmware or campaign operation can fail with, for the CLI and the API alike.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    #[error("{0}")]
    Invalid(String),
    #[error("firmware larger than {0} bytes (--max-firmware)")]
    TooLarge(usize),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Campaigns need `--fota-base-url`.
    #[error("{0}")]
    NotConfigured(&'static str),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Why a campaign cannot start without a base URL, said wherever one is refused.
pub const BASE_URL_NEEDED: &str = "no --fota-base-url (THINGS_FOTA_BASE_URL): devices reach the \
    file server through NAT or KPN's APN, so the address they must download from cannot be \
    guessed; give it, e.g. --fota-base-url http://10.0.0.5:8080";
