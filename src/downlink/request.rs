//! What a caller may ask to send, checked before anything is queued.
//!
//! A request names a LoRa port and a hex payload, or gives SenML records directly (devices
//! without ports). Shape errors (not JSON, wrong types, both or neither payload kinds) are
//! 400s; values KPN would refuse (odd or non-hex payload, too long, port outside 1-223) are
//! 422s, so a caller can tell a broken client from a bad command.

use serde_json::{Map, Value, json};

use crate::senml::{DeviceKind, device_key, device_kind};

/// The largest LoRaWAN application payload (data rate DR5 and up, EU868).
pub const MAX_PAYLOAD_BYTES: usize = 242;
/// LoRaWAN application ports; 0 is MAC commands, 224 and up are reserved.
pub const PORTS: std::ops::RangeInclusive<u64> = 1..=223;
/// Most records a pack given as `records` may hold.
pub const MAX_RECORDS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request is not shaped like a downlink request (400).
    #[error("{field}: {reason}")]
    Malformed { field: &'static str, reason: String },
    /// Well-formed, but not something KPN would send (422).
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn malformed(field: &'static str, reason: impl Into<String>) -> RequestError {
    RequestError::Malformed {
        field,
        reason: reason.into(),
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A checked downlink, ready to queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub port: Option<u16>,
    /// Lower-case hex, when given as a payload.
    pub payload_hex: Option<String>,
    /// The SenML pack for KPN, as JSON text.
    pub body: String,
}

/// Checks a JSON request body for the device whose normalised URN is `urn_key`.
pub fn check_json(urn_key: &str, request: &Value) -> Result<Checked, RequestError> {
    let object = request
        .as_object()
        .ok_or_else(|| malformed("body", "expected a JSON object"))?;
    if let Some(unknown) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "port" | "payload_hex" | "records"))
    {
        return Err(malformed(
            "body",
            format!("unknown field {unknown:?}: expected port, payload_hex or records"),
        ));
    }
    let port = match object.get("port") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(
            n.as_u64()
                .ok_or_else(|| invalid("port", "expected a LoRa port from 1 to 223"))?,
        ),
        Some(_) => return Err(malformed("port", "expected a number")),
    };
    match (object.get("payload_hex"), object.get("records")) {
        (Some(Value::String(hex)), None) => check_hex(urn_key, port, hex),
        (Some(_), None) => Err(malformed("payload_hex", "expected a string of hex digits")),
        (None, Some(Value::Array(records))) => check_records(urn_key, port, records),
        (None, Some(_)) => Err(malformed("records", "expected an array of SenML records")),
        (Some(_), Some(_)) => Err(malformed("body", "give payload_hex or records, not both")),
        (None, None) => Err(malformed("body", "give payload_hex (with port) or records")),
    }
}

/// Checks a port and hex payload (the CLI's form).
pub fn check_hex(urn_key: &str, port: Option<u64>, hex: &str) -> Result<Checked, RequestError> {
    let port = check_port(urn_key, port)?;
    let hex = hex.trim();
    if hex.is_empty() {
        return Err(invalid("payload_hex", "the payload is empty"));
    }
    if let Some(bad) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(invalid(
            "payload_hex",
            format!("{bad:?} is not a hex digit"),
        ));
    }
    if !hex.len().is_multiple_of(2) {
        return Err(invalid(
            "payload_hex",
            "odd number of hex digits: every byte takes two",
        ));
    }
    if hex.len() / 2 > MAX_PAYLOAD_BYTES {
        return Err(invalid(
            "payload_hex",
            format!(
                "{} bytes; a LoRa downlink holds at most {MAX_PAYLOAD_BYTES}",
                hex.len() / 2
            ),
        ));
    }
    let hex = hex.to_ascii_lowercase();
    let body = json!([{ "bn": urn_key, "n": "payloadHex", "vs": hex }]).to_string();
    Ok(Checked {
        port,
        payload_hex: Some(hex),
        body,
    })
}

fn check_port(urn_key: &str, port: Option<u64>) -> Result<Option<u16>, RequestError> {
    match port {
        Some(p) if PORTS.contains(&p) => Ok(Some(p as u16)),
        Some(p) => Err(invalid(
            "port",
            format!("{p} is not a LoRa application port (1-223)"),
        )),
        None if device_kind(urn_key) == DeviceKind::DevEui => {
            Err(invalid("port", "a LoRa device needs a port (1-223)"))
        }
        None => Ok(None),
    }
}

fn check_records(
    urn_key: &str,
    port: Option<u64>,
    records: &[Value],
) -> Result<Checked, RequestError> {
    let port = check_port(urn_key, port)?;
    if records.is_empty() {
        return Err(invalid("records", "no records"));
    }
    if records.len() > MAX_RECORDS {
        return Err(invalid(
            "records",
            format!("{} records; at most {MAX_RECORDS}", records.len()),
        ));
    }
    let mut pack: Vec<Map<String, Value>> = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        let record = record
            .as_object()
            .ok_or_else(|| malformed("records", format!("record {i} is not an object")))?;
        match record.get("bn") {
            None => {}
            Some(Value::String(bn)) if device_key(bn) == urn_key => {}
            Some(Value::String(bn)) => {
                return Err(invalid(
                    "records",
                    format!("record {i} names another device ({bn})"),
                ));
            }
            Some(_) => {
                return Err(malformed(
                    "records",
                    format!("record {i}: bn is not a string"),
                ));
            }
        }
        if record.len() == usize::from(record.contains_key("bn")) {
            return Err(invalid("records", format!("record {i} is empty")));
        }
        pack.push(record.clone());
    }
    // KPN finds the device by the base name: the first record carries it.
    pack[0].insert("bn".to_owned(), Value::String(urn_key.to_owned()));
    let body = Value::Array(pack.into_iter().map(Value::Object).collect()).to_string();
    Ok(Checked {
        port,
        payload_hex: None,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LORA: &str = "urn:dev:DEVEUI:0018B21000008C47:";
    const M2M: &str = "urn:dev:IMEI:123456789012345:";

    fn status(result: Result<Checked, RequestError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(RequestError::Malformed { .. }) => "400",
            Err(RequestError::Invalid { .. }) => "422",
        }
    }

    #[test]
    fn hex_payloads() {
        let checked = check_json(LORA, &json!({"port": 2, "payload_hex": "0A0b"})).unwrap();
        assert_eq!(checked.port, Some(2));
        assert_eq!(checked.payload_hex.as_deref(), Some("0a0b"));
        assert_eq!(
            checked.body,
            r#"[{"bn":"urn:dev:DEVEUI:0018B21000008C47:","n":"payloadHex","vs":"0a0b"}]"#
        );
        let ok_max = "ab".repeat(MAX_PAYLOAD_BYTES);
        assert_eq!(status(check_hex(LORA, Some(1), &ok_max)), "ok");
        assert_eq!(
            status(check_hex(LORA, Some(223), &format!("{ok_max}ab"))),
            "422"
        );
        assert_eq!(status(check_hex(LORA, Some(2), "abc")), "422");
        assert_eq!(status(check_hex(LORA, Some(2), "zz")), "422");
        assert_eq!(status(check_hex(LORA, Some(2), "")), "422");
    }

    #[test]
    fn ports() {
        for (port, expected) in [(0, "422"), (1, "ok"), (223, "ok"), (224, "422")] {
            assert_eq!(
                status(check_hex(LORA, Some(port), "00")),
                expected,
                "{port}"
            );
        }
        assert_eq!(status(check_hex(LORA, None, "00")), "422");
        assert_eq!(status(check_hex(M2M, None, "00")), "ok");
        assert_eq!(
            status(check_json(LORA, &json!({"port": -1, "payload_hex": "00"}))),
            "422"
        );
        assert_eq!(
            status(check_json(LORA, &json!({"port": 2.5, "payload_hex": "00"}))),
            "422"
        );
        assert_eq!(
            status(check_json(LORA, &json!({"port": "2", "payload_hex": "00"}))),
            "400"
        );
    }

    #[test]
    fn shapes() {
        for body in [
            json!([]),
            json!({}),
            json!({"port": 2}),
            json!({"port": 2, "payload_hex": 10}),
            json!({"port": 2, "payload_hex": "00", "records": []}),
            json!({"port": 2, "payload_hex": "00", "extra": 1}),
            json!({"records": {"n": "x"}}),
            json!({"records": [1]}),
        ] {
            assert_eq!(status(check_json(M2M, &body)), "400", "{body}");
        }
    }

    #[test]
    fn records() {
        let checked = check_json(M2M, &json!({"records": [{"n": "interval", "v": 60}]})).unwrap();
        let pack: Value = serde_json::from_str(&checked.body).unwrap();
        assert_eq!(pack, json!([{"bn": M2M, "n": "interval", "v": 60}]));
        assert_eq!(checked.port, None);
        let other = json!({"records": [{"bn": "urn:dev:IMEI:999999999999999:", "n": "x", "v": 1}]});
        assert_eq!(status(check_json(M2M, &other)), "422");
        let same = json!({"records": [{"bn": "URN:DEV:imei:123456789012345:", "n": "x", "v": 1}]});
        assert_eq!(status(check_json(M2M, &same)), "ok");
        assert_eq!(status(check_json(M2M, &json!({"records": []}))), "422");
        assert_eq!(
            status(check_json(M2M, &json!({"records": [{"bn": M2M}]}))),
            "422"
        );
    }
}
