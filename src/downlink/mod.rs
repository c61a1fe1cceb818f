//! Actuator downlinks: commands for devices, kept in a PostgreSQL outbox until they left.
//!
//! A request is checked ([`request`]) and queued ([`outbox`]) by the API or the CLI. For a
//! device known through KPN (transport `kpn`), the [`worker`] in every `serve` process sends
//! due rows through [`crate::kpn`], retrying temporary failures with [`backoff`]; a
//! [`supervisor`] restarts the worker should it fail. For a device registered for the device
//! doors (transport `response`, see [`answer`]), the answer to its next uplink carries it.
//! PostgreSQL is the queue, so a restart loses nothing and replicas share the work without
//! sending a downlink twice.

pub mod answer;
pub mod backoff;
pub mod outbox;
pub mod request;
pub mod supervisor;
pub mod view;
pub mod worker;

/// Where a downlink is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = DownlinkStatus, rename_all = "lowercase")]
pub enum Status {
    Queued,
    Sending,
    Accepted,
    Failed,
    Cancelled,
    /// A `response` downlink carried in the answer to an uplink.
    Delivered,
    /// A `response` downlink no uplink took within its ttl.
    Expired,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Queued,
        Status::Sending,
        Status::Accepted,
        Status::Failed,
        Status::Cancelled,
        Status::Delivered,
        Status::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Accepted => "accepted",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Delivered => "delivered",
            Status::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|s| s.as_str() == text.trim())
    }

    /// Whether nothing will happen to the downlink any more.
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Queued | Status::Sending)
    }
}
