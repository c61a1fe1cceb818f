//! How a downlink is shown by the API and the CLI.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::Status;
use crate::store::downlinks::DownlinkRow;
use crate::time_format::format_time;

/// A downlink and where it is in its life.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Downlink)]
pub struct DownlinkView {
    pub id: Uuid,
    /// The device URN as first seen (or as registered).
    pub device: String,
    /// `kpn` (sent through KPN's API) or `response` (carried in the answer to the device's
    /// next uplink on a device door).
    pub transport: String,
    /// The LoRa port, when one was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i16>,
    /// The payload in lower-case hex, when given as `payload_hex`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
    /// The SenML pack that is (or was) sent to KPN or carried in the device's answer.
    pub records: Value,
    #[schema(value_type = Status)]
    pub status: String,
    /// Attempts to hand it to KPN so far.
    pub attempts: i32,
    /// When the next attempt is due; present while queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The HTTP status of KPN's last answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kpn_status: Option<i16>,
    /// KPN's answer: JSON when it was JSON, else text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kpn_response: Option<Value>,
    /// The `Idempotency-Key` it was queued with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// When it was accepted by KPN, delivered, failed for good, expired or was cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// A `response` downlink: when it expires unless an uplink takes it first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// A delivered `response` downlink: the id of the message (uplink) whose answer
    /// carried it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<i64>,
}

impl From<DownlinkRow> for DownlinkView {
    fn from(row: DownlinkRow) -> Self {
        // Only KPN downlinks have attempts to schedule.
        let queued = row.status == Status::Queued.as_str() && row.transport == "kpn";
        DownlinkView {
            id: row.id,
            device: row.device,
            transport: row.transport,
            port: row.port,
            payload_hex: row.payload_hex,
            records: serde_json::from_str(&row.body).unwrap_or(Value::String(row.body)),
            status: row.status,
            attempts: row.attempts,
            next_attempt_at: queued.then(|| format_time(row.next_attempt_at)),
            error: row.last_error,
            kpn_status: row.kpn_status,
            kpn_response: row
                .kpn_response
                .map(|text| serde_json::from_str(&text).unwrap_or(Value::String(text))),
            idempotency_key: row.idempotency_key,
            created_at: format_time(row.created_at),
            updated_at: format_time(row.updated_at),
            finished_at: row.finished_at.map(format_time),
            expires_at: row.expires_at.map(format_time),
            message_id: row.message_id,
        }
    }
}
