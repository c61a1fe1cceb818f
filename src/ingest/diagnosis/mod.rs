//! Why a recorded refusal was refused: computed when an admin opens it, never on the hot
//! path. The door's answer is the same for an unknown plug and a wrong token; this, behind
//! the `admin` scope, tells them apart and goes further: a secret rotated away, another
//! destination's (or device's) secret, a body altered in transit, a required static header
//! missing or different.
//!
//! [`diagnose`] is pure: it takes the recorded request and every sender with its opened
//! secrets ([`Senders`], loaded by [`load`]), so each cause is unit-tested without a
//! database. Whether the request verifies today is asked of the door's own verification
//! (`ingest::verify`) by the caller and passed in.

mod load;
mod transform;

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::token::{BodyDigest, Token};
pub use load::load;
use transform::TRANSFORMATIONS;

/// The recorded request, as the diagnosis needs it.
#[derive(Debug, Clone, Copy)]
pub struct Recorded<'a> {
    pub door: &'a str,
    pub verdict: &'a str,
    pub status: u16,
    pub reason: &'a str,
    pub detail: Option<&'a str>,
    pub plug: Option<Uuid>,
    /// A device door's normalised URN.
    pub device_key: Option<&'a str>,
    pub headers: &'a BTreeMap<String, String>,
    pub body: Option<&'a [u8]>,
    pub body_truncated: bool,
    pub body_size: Option<i64>,
    pub message_id: Option<i64>,
}

/// One sender (a destination or a device registration) with its opened secrets.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The destination's name, or the device's URN.
    pub name: String,
    /// A destination's plug (`None` while pending); for a device, unused.
    pub plug: Option<Uuid>,
    pub urn_key: Option<String>,
    pub current: Vec<u8>,
    /// The previous secret and the end of its overlap (possibly past).
    pub previous: Option<(Vec<u8>, DateTime<Utc>)>,
    /// A destination's required static headers, names lower case.
    pub required_headers: BTreeMap<String, String>,
}

/// Every live sender of the door's kind, and what removed ones tell.
#[derive(Debug, Default)]
pub struct Senders {
    pub candidates: Vec<Candidate>,
    /// The removed destination that had the recorded plug.
    pub removed_destination: Option<String>,
    /// Whether a registration of the recorded device was removed.
    pub removed_registration: bool,
}

/// The cause, a sentence for an operator, and the cause's fields.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Diagnosis {
    pub cause: &'static str,
    pub summary: String,
    #[serde(flatten)]
    pub details: serde_json::Map<String, Value>,
}

fn found(cause: &'static str, summary: String, details: Value) -> Diagnosis {
    Diagnosis {
        cause,
        summary,
        details: match details {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
    }
}

/// The headers as recorded, as a `HeaderMap` again (for the door's header checks and the
/// kept headers of a replay); a name or value that no longer parses is left out.
pub fn header_map(headers: &BTreeMap<String, String>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.insert(name, value);
        }
    }
    map
}

/// Names the cause of a recorded event. `verifies_now`: whether the door's verification
/// accepts the recorded request against today's configuration.
pub fn diagnose(
    event: &Recorded<'_>,
    senders: &Senders,
    verifies_now: bool,
    now: DateTime<Utc>,
) -> Diagnosis {
    match event.verdict {
        "duplicate" => {
            return found(
                "duplicate",
                match event.message_id {
                    Some(id) => format!("A retry of message {id}, which was stored before."),
                    None => "A retry of a delivery stored before.".into(),
                },
                json!({}),
            );
        }
        "spooled" => {
            return found(
                "spooled",
                "Accepted into the local spool while the database could not take it; stored by \
                 the spool's replay."
                    .into(),
                json!({}),
            );
        }
        _ => {}
    }
    let detail = event.detail.unwrap_or("");
    match event.reason {
        "missing_header" => {
            let header = detail.strip_prefix("missing header ").unwrap_or(detail);
            return found(
                "missing_header",
                format!("The request had no {header} header."),
                json!({ "header": header }),
            );
        }
        "malformed_header" => {
            let rest = detail.strip_prefix("malformed header ").unwrap_or(detail);
            let (header, why) = rest.split_once(": ").unwrap_or((rest, "malformed"));
            return found(
                "malformed_header",
                format!("The {header} header was not usable: {why}."),
                json!({ "header": header }),
            );
        }
        "payload_too_large" => {
            let limit: Option<u64> = detail
                .strip_prefix("body larger than ")
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok());
            return found(
                "body_too_large",
                format!(
                    "The body ({} bytes) was larger than the limit ({} bytes).",
                    event.body_size.map_or("?".into(), |s| s.to_string()),
                    limit.map_or("?".into(), |l| l.to_string())
                ),
                json!({ "limit": limit, "size": event.body_size }),
            );
        }
        "bad_pack" => {
            return found(
                "bad_pack",
                format!("The body does not name its device: {detail}."),
                json!({}),
            );
        }
        "bad_body" => {
            return found(
                "bad_body",
                "The body could not be read to its end (the client stopped sending).".into(),
                json!({}),
            );
        }
        _ => {}
    }
    if verifies_now {
        return found(
            "verifies_now",
            "The request verifies against today's configuration: the configuration changed \
             since, and a replay will store it."
                .into(),
            json!({}),
        );
    }
    let Some(body) = event.body.filter(|_| !event.body_truncated) else {
        return found(
            "body_not_kept",
            "The body was not kept whole, so the token cannot be checked again.".into(),
            json!({}),
        );
    };
    let token = event
        .headers
        .get("things-message-token")
        .and_then(|t| Token::parse(t.trim()));
    let Some(token) = token else {
        return found(
            "malformed_header",
            "The Things-Message-Token header was not usable.".into(),
            json!({ "header": "Things-Message-Token" }),
        );
    };
    if event.door == "destination" {
        destination(event, body, &token, senders, now)
    } else {
        device(event, body, &token, senders, now)
    }
}

/// Which secret of `c` signs `digest`: the current one, the previous one within its
/// overlap, or the previous one after it (with the end of the overlap).
enum Signs {
    No,
    Valid,
    Expired(DateTime<Utc>),
}

fn signs(c: &Candidate, digest: &BodyDigest, token: &Token, now: DateTime<Utc>) -> Signs {
    if digest.verify(&c.current, token) {
        return Signs::Valid;
    }
    match &c.previous {
        Some((secret, until)) if digest.verify(secret, token) => {
            if now < *until {
                Signs::Valid
            } else {
                Signs::Expired(*until)
            }
        }
        _ => Signs::No,
    }
}

/// The transformation of the body that `c`'s secrets sign.
fn altered(c: &Candidate, body: &[u8], token: &Token) -> Option<&'static str> {
    TRANSFORMATIONS.iter().find_map(|(name, transform)| {
        let changed = transform(body)?;
        let digest = BodyDigest::new(&changed);
        let signed = digest.verify(&c.current, token)
            || c.previous
                .as_ref()
                .is_some_and(|(secret, _)| digest.verify(secret, token));
        signed.then_some(*name)
    })
}

fn destination(
    event: &Recorded<'_>,
    body: &[u8],
    token: &Token,
    senders: &Senders,
    now: DateTime<Utc>,
) -> Diagnosis {
    let digest = BodyDigest::new(body);
    let own = event
        .plug
        .and_then(|plug| senders.candidates.iter().find(|c| c.plug == Some(plug)));
    if let Some(own) = own {
        match signs(own, &digest, token, now) {
            Signs::Valid => {
                if let Some(d) = required_headers(own, event.headers) {
                    return d;
                }
            }
            Signs::Expired(until) => {
                return found(
                    "rotated_secret",
                    format!(
                        "Signed with the previous secret of destination {}, rotated away: its \
                         overlap ended at {}.",
                        own.name,
                        crate::time_format::format_time(until)
                    ),
                    json!({ "destination": own.name, "overlap_ended_at": crate::time_format::format_time(until) }),
                );
            }
            Signs::No => {}
        }
    }
    let other = senders
        .candidates
        .iter()
        .filter(|c| own.is_none_or(|own| own.plug != c.plug))
        .find(|c| !matches!(signs(c, &digest, token, now), Signs::No));
    if let Some(other) = other {
        return found(
            "other_destination_secret",
            format!(
                "Signed with the secret of destination {}: the plug is misaddressed.",
                other.name
            ),
            json!({ "destination": other.name }),
        );
    }
    let Some(own) = own else {
        return found(
            "unknown_plug",
            match &senders.removed_destination {
                Some(name) => {
                    format!("The plug belonged to destination {name}, which was removed.")
                }
                None => "No destination has this plug.".into(),
            },
            json!({ "removed_destination": senders.removed_destination }),
        );
    };
    if let Some(transformation) = altered(own, body, token) {
        return found(
            "body_altered",
            format!(
                "The token matches the body of destination {} after a change in transit ({}).",
                own.name,
                transformation.replace('_', " ")
            ),
            json!({ "transformation": transformation }),
        );
    }
    found(
        "wrong_secret",
        format!(
            "The token does not match the body with any secret of destination {}.",
            own.name
        ),
        json!({ "destination": own.name }),
    )
}

/// The first required static header the request lacks or carries with another value.
fn required_headers(own: &Candidate, headers: &BTreeMap<String, String>) -> Option<Diagnosis> {
    own.required_headers.iter().find_map(|(name, expected)| {
        match headers.get(&name.to_ascii_lowercase()) {
            None => Some(found(
                "required_header_missing",
                format!(
                    "The token is right, but the header {name} that destination {} requires was missing.",
                    own.name
                ),
                json!({ "header": name }),
            )),
            Some(value) if value.trim() != expected.trim() => Some(found(
                "required_header_different",
                format!(
                    "The token is right, but the header {name} differs from what destination {} requires.",
                    own.name
                ),
                json!({ "header": name }),
            )),
            Some(_) => None,
        }
    })
}

fn device(
    event: &Recorded<'_>,
    body: &[u8],
    token: &Token,
    senders: &Senders,
    now: DateTime<Utc>,
) -> Diagnosis {
    let digest = BodyDigest::new(body);
    let key = event.device_key.unwrap_or("");
    let own = senders
        .candidates
        .iter()
        .find(|c| c.urn_key.as_deref() == Some(key));
    let Some(own) = own else {
        return found(
            "unknown_device",
            if senders.removed_registration {
                format!("The device {key} was registered, but its registration was removed.")
            } else {
                format!("The device {key} is not registered.")
            },
            json!({ "removed_registration": senders.removed_registration }),
        );
    };
    if let Signs::Expired(until) = signs(own, &digest, token, now) {
        return found(
            "rotated_secret",
            format!(
                "Signed with the previous secret of device {}, rotated away: its overlap ended at {}.",
                own.name,
                crate::time_format::format_time(until)
            ),
            json!({ "device": own.name, "overlap_ended_at": crate::time_format::format_time(until) }),
        );
    }
    let other = senders
        .candidates
        .iter()
        .filter(|c| c.urn_key != own.urn_key)
        .find(|c| !matches!(signs(c, &digest, token, now), Signs::No));
    if let Some(other) = other {
        return found(
            "other_device_secret",
            format!("Signed with the secret of device {}.", other.name),
            json!({ "device": other.name }),
        );
    }
    if let Some(transformation) = altered(own, body, token) {
        return found(
            "body_altered",
            format!(
                "The token matches the body of device {} after a change in transit ({}).",
                own.name,
                transformation.replace('_', " ")
            ),
            json!({ "transformation": transformation }),
        );
    }
    found(
        "wrong_secret",
        format!(
            "The token does not match the body with any secret of device {}.",
            own.name
        ),
        json!({ "device": own.name }),
    )
}

#[cfg(test)]
mod tests;
