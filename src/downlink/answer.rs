//! Downlinks for registered devices (transport `response`): not sent through KPN's API but
//! carried, one per answer, in the answer to the device's next uplink on a device door.
//!
//! The request is checked as for KPN ([`super::request`]); the pack the device gets starts
//! with a record of its own naming the device as registered, `[{"bn": URN}, ...]`, as KPN's
//! device-side answers do, and a downlink not taken within its ttl expires.

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::request::{Checked, RequestError, check_json};
use crate::senml::device_key;

/// Longest ttl a request may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Checks a queue request for the registered device `urn` (as registered) and builds the pack
/// its answer will carry. The request may also hold `ttl`, read by [`ttl`].
pub fn check(urn: &str, request: &Value) -> Result<Checked, RequestError> {
    let object = request.as_object().ok_or_else(|| RequestError::Malformed {
        field: "body",
        reason: "expected a JSON object".into(),
    })?;
    let mut without_ttl = object.clone();
    without_ttl.remove("ttl");
    let mut checked = check_json(&device_key(urn), &Value::Object(without_ttl))?;
    let mut pack: Vec<Value> = vec![json!({ "bn": urn })];
    match (&checked.payload_hex, object.get("records")) {
        (Some(hex), _) => pack.push(json!({ "n": "payloadHex", "vs": hex })),
        (None, Some(Value::Array(records))) => {
            for (i, record) in records.iter().enumerate() {
                let mut record: Map<String, Value> =
                    record.as_object().cloned().unwrap_or_default();
                // Checked to name this device; the leading record names it as registered.
                record.remove("bn");
                if record.is_empty() {
                    return Err(RequestError::Invalid {
                        field: "records",
                        reason: format!("record {i} is empty"),
                    });
                }
                pack.push(Value::Object(record));
            }
        }
        (None, _) => {}
    }
    checked.body = Value::Array(pack).to_string();
    Ok(checked)
}

/// The request's `ttl` (`"24h"`, `"90m"` or a number of seconds), else `default`.
pub fn ttl(request: &Value, default: Duration) -> Result<Duration, RequestError> {
    let invalid = |reason: String| RequestError::Invalid {
        field: "ttl",
        reason,
    };
    let ttl = match request.get("ttl") {
        None | Some(Value::Null) => return Ok(default),
        Some(Value::String(text)) => humantime::parse_duration(text.trim())
            .map_err(|e| invalid(format!("{text:?}: {e} (use e.g. 48h, 30m)")))?,
        Some(Value::Number(n)) => Duration::from_secs(
            n.as_u64()
                .ok_or_else(|| invalid("expected a whole number of seconds".into()))?,
        ),
        Some(_) => {
            return Err(RequestError::Malformed {
                field: "ttl",
                reason: "expected a duration such as \"48h\" or a number of seconds".into(),
            });
        }
    };
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(invalid(format!(
            "{} s; expected 1 s to {} days",
            ttl.as_secs(),
            MAX_TTL.as_secs() / 86_400
        )));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;

    const URN: &str = "urn:dev:IMEI:351234567890123:";

    #[test]
    fn packs_start_with_the_device_as_registered() {
        let hex = check(URN, &json!({"payload_hex": "0A0b", "ttl": "1h"})).unwrap();
        assert_eq!(
            hex.body,
            r#"[{"bn":"urn:dev:IMEI:351234567890123:"},{"n":"payloadHex","vs":"0a0b"}]"#
        );
        let records = check(
            URN,
            &json!({"records": [{"bn": "urn:dev:imei:351234567890123:", "n": "led", "vb": true}, {"n": "x", "v": 1}]}),
        )
        .unwrap();
        assert_eq!(
            records.body,
            r#"[{"bn":"urn:dev:IMEI:351234567890123:"},{"n":"led","vb":true},{"n":"x","v":1}]"#
        );
        let other = json!({"records": [{"bn": "urn:dev:IMEI:999999999999999:", "n": "led"}]});
        assert!(matches!(
            check(URN, &other),
            Err(RequestError::Invalid { .. })
        ));
        assert!(matches!(
            check(URN, &json!({"records": [{"bn": URN}]})),
            Err(RequestError::Invalid { .. })
        ));
    }

    #[test]
    fn ttls() {
        let default = Duration::from_secs(48 * 3600);
        assert_eq!(ttl(&json!({}), default), Ok(default));
        assert_eq!(
            ttl(&json!({"ttl": "90m"}), default),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(
            ttl(&json!({"ttl": 30}), default),
            Ok(Duration::from_secs(30))
        );
        assert!(matches!(
            ttl(&json!({"ttl": 0}), default),
            Err(RequestError::Invalid { .. })
        ));
        assert!(matches!(
            ttl(&json!({"ttl": "400d"}), default),
            Err(RequestError::Invalid { .. })
        ));
        assert!(matches!(
            ttl(&json!({"ttl": "soon"}), default),
            Err(RequestError::Invalid { .. })
        ));
        assert!(matches!(
            ttl(&json!({"ttl": true}), default),
            Err(RequestError::Malformed { .. })
        ));
    }
}
