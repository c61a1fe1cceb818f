//! Resolving a pack into self-contained measurements (RFC 8428 §4.6).

use chrono::{DateTime, Utc};

use super::error::SenmlError;
use super::record::Record;
use super::urn::parse_device_urn;
use super::{data, name, time};

/// The newest SenML version we implement (RFC 8428's default `bver`).
const SUPPORTED_VERSION: u64 = 10;

/// One resolved SenML record: every base field applied, time absolute.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The device, spelled as in the pack: the `urn:dev:TYPE:ID:` prefix of
    /// the resolved name when it has one, otherwise the base name in effect
    /// (possibly empty). Use [`device_key`](super::device_key) to look it up.
    pub device: String,
    /// The measurement name: what follows the device URN in the resolved
    /// name, or the record's `n` when there is no device URN.
    pub name: String,
    /// `u`, else the base unit in effect, else none.
    pub unit: Option<String>,
    /// When the value was measured, rounded to whole microseconds.
    pub time: DateTime<Utc>,
    /// The value; `None` only when the record has a sum (`s`) and no value.
    pub value: Option<Value>,
    /// The resolved sum (see [`resolve`] for when a base sum applies).
    pub sum: Option<f64>,
}

/// A measured value, one variant per SenML value field.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `v` plus the base value in effect.
    Number(f64),
    /// `vs`, kept as text even when it looks like a number.
    String(String),
    /// `vb`.
    Bool(bool),
    /// `vd`, base64-decoded.
    Data(Vec<u8>),
}

/// Parses and resolves a SenML JSON pack (RFC 8428) as received.
///
/// The whole pack is rejected on the first malformed record: a pack is one
/// message from one sender, and storing half of it would hide the problem.
///
/// Resolution follows RFC 8428 §4, with these points worth knowing:
///
/// - Base fields may appear in any record and hold from that record on until
///   changed (§4.1).
/// - A record with no `n`, no value field and no `s` only sets base values
///   and yields no measurement. RFC 8428 would reject it, but KPN's legacy
///   packs open with exactly such a record (`{"bn":…,"bt":…}`).
/// - Times below 2^28 are relative to `received_at` (§4.5.3); a record with
///   no time at all therefore gets the receipt time, as KPN does.
/// - The base value applies only to `v`: it cannot be added to a string,
///   boolean or data value, and we do not invent a numeric value for a
///   record that has only a sum.
/// - The base sum, unlike the base value, applies even to records without
///   `s`. RFC 8428 §4.5.4 says that if only one of Base Sum and Sum is
///   present the missing one counts as zero, the two are added, and only
///   when neither is present does the measurement have no sum. So once `bs`
///   is in effect, every measurement has `sum = bs + s` (`s` defaulting to
///   0). Whether a record needs a value field is still decided by `s` alone
///   (§4.2: a value is required "unless there is a Sum field").
/// - `bver` above 10 is rejected: a newer version may change meanings we
///   would silently misread. A pack has one version (§4.4): a later `bver`
///   other than the first record's (or 10, when it had none) rejects it.
/// - Numbers are read to the nearest double (serde_json's `float_roundtrip`),
///   so a value is stored as `str::parse::<f64>` would read it.
pub fn resolve(body: &[u8], received_at: DateTime<Utc>) -> Result<Vec<Measurement>, SenmlError> {
    let pack: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| SenmlError::InvalidJson(e.to_string()))?;
    let serde_json::Value::Array(records) = pack else {
        return Err(SenmlError::NotAnArray);
    };
    // Round once so that relative times land on whole microseconds too.
    let now_micros = time::round_to_micros(received_at);
    let mut base = Base::default();
    let mut measurements = Vec::with_capacity(records.len());
    for (index, json) in records.into_iter().enumerate() {
        let record = Record::from_json(index, json)?;
        if let Some(measurement) = base.resolve(index, record, now_micros)? {
            measurements.push(measurement);
        }
    }
    Ok(measurements)
}

/// The base values in effect at the current record.
///
/// Missing base name, time and value behave as "" and 0 (RFC 8428 §4.5),
/// so they are stored that way; unit and sum are optional because "no base
/// unit" and "no base sum" mean something different from any value.
#[derive(Debug, Default)]
struct Base {
    /// The pack's version: the first record's `bver`, else 10 (RFC 8428 §4.4).
    version: Option<u64>,
    name: String,
    time: f64,
    unit: Option<String>,
    value: f64,
    sum: Option<f64>,
}

impl Base {
    /// Applies `record`'s base fields, then resolves the record against the
    /// updated base. Returns `None` for a base-only record.
    fn resolve(
        &mut self,
        index: usize,
        mut record: Record,
        now_micros: i64,
    ) -> Result<Option<Measurement>, SenmlError> {
        if let Some(bver) = record.bver
            && bver > SUPPORTED_VERSION
        {
            return Err(SenmlError::UnsupportedVersion {
                record: index,
                bver,
            });
        }
        let version = *self
            .version
            .get_or_insert(record.bver.unwrap_or(SUPPORTED_VERSION));
        if let Some(bver) = record.bver
            && bver != version
        {
            return Err(SenmlError::MixedVersions {
                record: index,
                bver,
                version,
            });
        }
        // Base fields apply to the record that carries them (RFC 8428 §4.1).
        if let Some(bn) = record.bn.take() {
            self.name = bn;
        }
        if let Some(bt) = record.bt.take() {
            self.time = bt;
        }
        if let Some(bu) = record.bu.take() {
            self.unit = Some(bu);
        }
        if let Some(bv) = record.bv.take() {
            self.value = bv;
        }
        if let Some(bs) = record.bs.take() {
            self.sum = Some(bs);
        }

        match record.value_count() {
            0 if record.s.is_none() => {
                return match record.n {
                    None => Ok(None),
                    Some(_) => Err(SenmlError::MissingValue { record: index }),
                };
            }
            0 | 1 => {}
            _ => {
                return Err(SenmlError::MultipleValues {
                    record: index,
                    fields: record.value_labels(),
                });
            }
        }

        let (device, measurement_name) = self.split_name(index, record.n.unwrap_or_default())?;

        let seconds = finite(index, "bt + t", self.time + record.t.unwrap_or(0.0))?;
        let time = time::resolve(index, seconds, now_micros)?;

        let value = if let Some(v) = record.v {
            Some(Value::Number(finite(index, "bv + v", self.value + v)?))
        } else if let Some(vs) = record.vs {
            Some(Value::String(vs))
        } else if let Some(vb) = record.vb {
            Some(Value::Bool(vb))
        } else if let Some(vd) = record.vd {
            Some(Value::Data(data::decode(index, &vd)?))
        } else {
            None
        };

        let sum = match (self.sum, record.s) {
            (None, None) => None,
            (bs, s) => Some(finite(
                index,
                "bs + s",
                bs.unwrap_or(0.0) + s.unwrap_or(0.0),
            )?),
        };

        Ok(Some(Measurement {
            device,
            name: measurement_name,
            unit: record.u.or_else(|| self.unit.clone()),
            time,
            value,
            sum,
        }))
    }

    /// Checks `bn` + `n` and splits it into device and measurement name.
    ///
    /// The URN is looked for in the concatenation, not in `bn` alone, so a
    /// sender that spreads the device URN over `bn` and `n` (or puts all of it
    /// in `n`) is still attributed to the right device.
    fn split_name(&self, index: usize, n: String) -> Result<(String, String), SenmlError> {
        let mut full = String::with_capacity(self.name.len() + n.len());
        full.push_str(&self.name);
        full.push_str(&n);
        name::check(index, &full)?;
        match parse_device_urn(&full).map(|urn| urn.len) {
            Some(device_len) => {
                let rest = full.split_off(device_len);
                Ok((full, rest))
            }
            None => Ok((self.name.clone(), n)),
        }
    }
}

/// Rejects sums of two finite numbers that overflowed.
fn finite(record: usize, sum: &'static str, value: f64) -> Result<f64, SenmlError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(SenmlError::NotFinite { record, sum })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Receipt time used throughout: 2023-11-14T22:13:20Z.
    const RECEIVED: i64 = 1_700_000_000;

    fn received() -> DateTime<Utc> {
        at(RECEIVED, 0)
    }

    fn at(seconds: i64, micros: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, micros * 1_000).expect("test time in range")
    }

    fn ok(body: &str) -> Vec<Measurement> {
        resolve(body.as_bytes(), received()).expect("pack resolves")
    }

    fn err(body: &str) -> String {
        resolve(body.as_bytes(), received())
            .expect_err("pack is rejected")
            .to_string()
    }

    fn measurement(
        device: &str,
        name: &str,
        unit: Option<&str>,
        time: DateTime<Utc>,
        value: Value,
    ) -> Measurement {
        Measurement {
            device: device.to_owned(),
            name: name.to_owned(),
            unit: unit.map(str::to_owned),
            time,
            value: Some(value),
            sum: None,
        }
    }

    fn text(s: &str) -> Value {
        Value::String(s.to_owned())
    }

    // ---- fixtures (byte-exact copies of /work/shared/fixtures) ----

    const LORA_RAW_LEGACY: &str = r#"[{"bn":"urn:dev:DEVEUI:0018B21000008C47:","bt":1654194188},{"n":"payload","vs":"6a0000e42c01a900e42c01a500e42c01a500e42c01a600e42c01a900e42c01ab"},{"n":"port","v":1}]"#;
    const LORA_RAW_MERGED: &str = r#"[{"bn":"urn:dev:DEVEUI:0059AC0000000000:","bt":1.76675482e9,"n":"payload","vs":"1b0c6e0c6a64"},{"n":"port","v":3.0},{"n":"timeOrigin","vs":"NETWORK"}]"#;
    const VALUE_KINDS: &str = r#"[{"bn":"urn:dev:DEVEUI:0123456789ABCDEF:","bt":1.58565075E9,"n":"temperature","v":20.5,"u":"Cel"},{"n":"batteryVoltage","v":3.6,"u":"V","t":10},{"n":"active","vb":true},{"n":"modus","vs":"Active"},{"n":"image","vd":"aGFsbG9vb29vISE="}]"#;
    const INTERNET_UPLINK_NO_TIME: &str = r#"[{"bn":"urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:","n":"co2","u":"ppm","v":612},{"n":"occupied","vb":true}]"#;
    const M2M_UPLINK: &str = r#"[{"bn":"urn:dev:IMEI:356938035643809:","bt":1700000000},{"n":"temperature","u":"Cel","v":19.25},{"n":"batteryVoltage","u":"V","v":3.61},{"n":"firmware","vs":"1.0.0"}]"#;
    const LORA_LOCATION: &str = r#"[{"bn":"urn:dev:DEVEUI:A41163C212345678:","bt":1637165561},{"n":"locOrigin","vs":"KPNLORA"},{"n":"latitude","u":"lat","v":51.794884},{"n":"longitude","u":"lon","v":4.66354},{"n":"radius","u":"m","v":212.0},{"n":"locAccuracy","v":86.0},{"n":"locPrecision","v":92.0},{"n":"locTime","v":1637165560}]"#;

    #[test]
    fn fixture_lora_raw_legacy() {
        let device = "urn:dev:DEVEUI:0018B21000008C47:";
        let time = at(1_654_194_188, 0);
        assert_eq!(
            ok(LORA_RAW_LEGACY),
            [
                measurement(
                    device,
                    "payload",
                    None,
                    time,
                    text("6a0000e42c01a900e42c01a500e42c01a500e42c01a600e42c01a900e42c01ab")
                ),
                measurement(device, "port", None, time, Value::Number(1.0)),
            ]
        );
    }

    #[test]
    fn fixture_lora_raw_merged() {
        let device = "urn:dev:DEVEUI:0059AC0000000000:";
        let time = at(1_766_754_820, 0);
        assert_eq!(
            ok(LORA_RAW_MERGED),
            [
                measurement(device, "payload", None, time, text("1b0c6e0c6a64")),
                measurement(device, "port", None, time, Value::Number(3.0)),
                measurement(device, "timeOrigin", None, time, text("NETWORK")),
            ]
        );
    }

    #[test]
    fn fixture_value_kinds() {
        let device = "urn:dev:DEVEUI:0123456789ABCDEF:";
        let time = at(1_585_650_750, 0);
        assert_eq!(
            ok(VALUE_KINDS),
            [
                measurement(
                    device,
                    "temperature",
                    Some("Cel"),
                    time,
                    Value::Number(20.5)
                ),
                // t=10 on an absolute bt is an offset from bt, not from receipt.
                measurement(
                    device,
                    "batteryVoltage",
                    Some("V"),
                    at(1_585_650_760, 0),
                    Value::Number(3.6)
                ),
                // `u` is not a base field: it does not carry over.
                measurement(device, "active", None, time, Value::Bool(true)),
                measurement(device, "modus", None, time, text("Active")),
                measurement(
                    device,
                    "image",
                    None,
                    time,
                    Value::Data(b"hallooooo!!".to_vec())
                ),
            ]
        );
    }

    #[test]
    fn fixture_internet_uplink_no_time_gets_receipt_time() {
        let device = "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:";
        assert_eq!(
            ok(INTERNET_UPLINK_NO_TIME),
            [
                measurement(device, "co2", Some("ppm"), received(), Value::Number(612.0)),
                measurement(device, "occupied", None, received(), Value::Bool(true)),
            ]
        );
    }

    #[test]
    fn fixture_m2m_uplink() {
        let device = "urn:dev:IMEI:356938035643809:";
        let time = at(1_700_000_000, 0);
        assert_eq!(
            ok(M2M_UPLINK),
            [
                measurement(
                    device,
                    "temperature",
                    Some("Cel"),
                    time,
                    Value::Number(19.25)
                ),
                measurement(
                    device,
                    "batteryVoltage",
                    Some("V"),
                    time,
                    Value::Number(3.61)
                ),
                // Version strings stay text.
                measurement(device, "firmware", None, time, text("1.0.0")),
            ]
        );
    }

    #[test]
    fn fixture_lora_location() {
        let resolved = ok(LORA_LOCATION);
        assert_eq!(resolved.len(), 7);
        assert!(
            resolved
                .iter()
                .all(|m| m.device == "urn:dev:DEVEUI:A41163C212345678:"
                    && m.time == at(1_637_165_561, 0)
                    && m.sum.is_none())
        );
        assert_eq!(resolved[0].name, "locOrigin");
        assert_eq!(resolved[0].value, Some(text("KPNLORA")));
        assert_eq!(resolved[1].name, "latitude");
        assert_eq!(resolved[1].unit.as_deref(), Some("lat"));
        assert_eq!(resolved[1].value, Some(Value::Number(51.794884)));
        assert_eq!(resolved[6].name, "locTime");
        assert_eq!(resolved[6].value, Some(Value::Number(1_637_165_560.0)));
    }

    // ---- pack shape ----

    #[test]
    fn empty_pack_is_valid() {
        assert_eq!(ok("[]"), []);
        assert_eq!(ok(" [ ] \n"), []);
    }

    #[test]
    fn body_must_be_a_json_array_of_objects() {
        assert_eq!(err(r#"{"n":"x","v":1}"#), "not a JSON array");
        assert_eq!(err("42"), "not a JSON array");
        assert_eq!(
            err(r#"[{"n":"x","v":1},[]]"#),
            "record 1: not a JSON object"
        );
        assert_eq!(err(r#"[null]"#), "record 0: not a JSON object");
    }

    #[test]
    fn invalid_json_reports_serde_position() {
        let message = err(r#"[{"n":"x","v":1}"#);
        assert!(message.starts_with("invalid JSON: "), "{message}");
        assert!(message.contains("line 1 column"), "{message}");
        assert!(err("").starts_with("invalid JSON: "));
        assert!(err("[1,]").starts_with("invalid JSON: "));
        assert!(resolve(b"[{\"n\":\"\xff\",\"v\":1}]", received()).is_err());
    }

    #[test]
    fn numbers_beyond_f64_are_invalid_json() {
        let message = err(r#"[{"n":"x","v":1e400}]"#);
        assert!(
            message.starts_with("invalid JSON: number out of range"),
            "{message}"
        );
    }

    // ---- base fields ----

    #[test]
    fn base_fields_may_change_mid_pack() {
        let resolved = ok(r#"[
            {"bn":"urn:dev:IMEI:111111111111111:","bt":1600000000,"bu":"Cel","n":"a","v":1},
            {"n":"b","v":2},
            {"bn":"urn:dev:IMEI:222222222222222:","bu":"V","n":"c","v":3},
            {"bt":1600000100,"n":"d","v":4},
            {"n":"e","v":5,"u":"A"}
        ]"#);
        let summary: Vec<_> = resolved
            .iter()
            .map(|m| {
                (
                    m.device.as_str(),
                    m.name.as_str(),
                    m.unit.as_deref(),
                    m.time.timestamp(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "urn:dev:IMEI:111111111111111:",
                    "a",
                    Some("Cel"),
                    1_600_000_000
                ),
                (
                    "urn:dev:IMEI:111111111111111:",
                    "b",
                    Some("Cel"),
                    1_600_000_000
                ),
                (
                    "urn:dev:IMEI:222222222222222:",
                    "c",
                    Some("V"),
                    1_600_000_000
                ),
                (
                    "urn:dev:IMEI:222222222222222:",
                    "d",
                    Some("V"),
                    1_600_000_100
                ),
                (
                    "urn:dev:IMEI:222222222222222:",
                    "e",
                    Some("A"),
                    1_600_000_100
                ),
            ]
        );
    }

    #[test]
    fn base_value_is_added_to_v_only() {
        let resolved = ok(r#"[
            {"bn":"d:","bv":100,"n":"a","v":1.5},
            {"n":"b","vs":"x"},
            {"n":"c","v":-100},
            {"bv":0.25,"n":"d","v":1}
        ]"#);
        let values: Vec<_> = resolved.iter().map(|m| m.value.clone()).collect();
        assert_eq!(
            values,
            [
                Some(Value::Number(101.5)),
                Some(text("x")),
                Some(Value::Number(0.0)),
                Some(Value::Number(1.25)),
            ]
        );
    }

    #[test]
    fn sum_without_value_is_a_measurement() {
        let resolved = ok(r#"[{"bn":"meter","n":"energy","u":"J","s":42}]"#);
        assert_eq!(
            resolved,
            [Measurement {
                device: "meter".into(),
                name: "energy".into(),
                unit: Some("J".into()),
                time: received(),
                value: None,
                sum: Some(42.0),
            }]
        );
    }

    #[test]
    fn sum_without_name_is_not_a_base_only_record() {
        let resolved = ok(r#"[{"bn":"meter","s":7}]"#);
        assert_eq!(resolved.len(), 1);
        assert_eq!(
            (resolved[0].device.as_str(), resolved[0].name.as_str()),
            ("meter", "")
        );
        assert_eq!(resolved[0].sum, Some(7.0));
    }

    #[test]
    fn base_sum_is_added_to_sum_and_applies_without_s() {
        let resolved = ok(r#"[
            {"bn":"meter","n":"a","v":1},
            {"bs":1000,"n":"b","s":5},
            {"n":"c","v":7},
            {"n":"d","s":-1000}
        ]"#);
        let sums: Vec<_> = resolved.iter().map(|m| m.sum).collect();
        // Before any bs or s: no sum. Once bs is in effect, RFC 8428 §4.5.4
        // treats a missing s as 0, so "c" has sum 1000.
        assert_eq!(sums, [None, Some(1005.0), Some(1000.0), Some(0.0)]);
        assert_eq!(resolved[1].value, None);
        assert_eq!(resolved[2].value, Some(Value::Number(7.0)));
    }

    #[test]
    fn base_sum_alone_does_not_excuse_a_missing_value() {
        assert_eq!(
            err(r#"[{"bs":1},{"n":"x"}]"#),
            "record 1: no value field and no sum"
        );
    }

    #[test]
    fn value_and_sum_together() {
        let resolved = ok(r#"[{"bn":"m","n":"x","v":2,"s":3}]"#);
        assert_eq!(resolved[0].value, Some(Value::Number(2.0)));
        assert_eq!(resolved[0].sum, Some(3.0));
    }

    #[test]
    fn base_only_record_anywhere_yields_nothing() {
        let resolved = ok(r#"[
            {"bn":"urn:dev:DEVEUI:0018B21000008C47:","bt":1654194188},
            {"n":"a","v":1},
            {"bt":1654194200,"bu":"V","ut":60,"l":"x"},
            {"n":"b","v":2},
            {}
        ]"#);
        let summary: Vec<_> = resolved
            .iter()
            .map(|m| (m.name.as_str(), m.unit.as_deref(), m.time.timestamp()))
            .collect();
        assert_eq!(
            summary,
            [("a", None, 1_654_194_188), ("b", Some("V"), 1_654_194_200)]
        );
    }

    #[test]
    fn base_only_record_is_still_type_checked() {
        assert_eq!(
            err(r#"[{"bn":7}]"#),
            "record 0: field \"bn\" must be a string"
        );
        assert_eq!(err(r#"[{"bver":11}]"#), "record 0: unsupported bver 11");
        assert_eq!(
            err(r#"[{"x_":1}]"#),
            "record 0: unknown must-understand field \"x_\""
        );
    }

    #[test]
    fn record_without_n_but_with_value_uses_base_name() {
        let resolved = ok(r#"[{"bn":"urn:dev:ow:10e2073a01080063","v":23.1,"u":"Cel"}]"#);
        assert_eq!(resolved[0].device, "urn:dev:ow:10e2073a01080063");
        assert_eq!(resolved[0].name, "");
        assert_eq!(resolved[0].value, Some(Value::Number(23.1)));
    }

    // ---- time ----

    #[test]
    fn relative_times_are_offsets_from_receipt() {
        let resolved = ok(r#"[
            {"bn":"d","n":"a","v":1,"t":10},
            {"n":"b","v":1,"t":-5.5},
            {"n":"c","v":1},
            {"bt":-60,"n":"d","v":1,"t":-1}
        ]"#);
        let times: Vec<_> = resolved.iter().map(|m| m.time).collect();
        assert_eq!(
            times,
            [
                at(RECEIVED + 10, 0),
                at(RECEIVED - 6, 500_000),
                received(),
                at(RECEIVED - 61, 0),
            ]
        );
    }

    #[test]
    fn relative_time_threshold_is_2_pow_28() {
        let resolved = ok(r#"[
            {"bn":"d","n":"a","v":1,"t":268435455},
            {"n":"b","v":1,"t":268435456},
            {"bt":268435000,"n":"c","v":1,"t":456}
        ]"#);
        assert_eq!(resolved[0].time, at(RECEIVED + 268_435_455, 0));
        assert_eq!(resolved[1].time, at(268_435_456, 0));
        // bt + t is what is compared, not each on its own.
        assert_eq!(resolved[2].time, at(268_435_456, 0));
    }

    #[test]
    fn fractional_and_exponent_times_round_to_microseconds() {
        let resolved = ok(r#"[
            {"bn":"d","bt":1585650750.5,"n":"a","v":1},
            {"bt":1.58565075E9,"n":"b","v":1,"t":0.25},
            {"bt":1.5856507501234567e9,"n":"c","v":1}
        ]"#);
        assert_eq!(resolved[0].time, at(1_585_650_750, 500_000));
        assert_eq!(
            resolved[0].time.to_rfc3339(),
            "2020-03-31T10:32:30.500+00:00"
        );
        assert_eq!(resolved[1].time, at(1_585_650_750, 250_000));
        assert_eq!(resolved[2].time, at(1_585_650_750, 123_457));
    }

    #[test]
    fn receipt_time_is_rounded_to_microseconds() {
        let received = DateTime::from_timestamp(RECEIVED, 123_456_789).expect("valid");
        let resolved =
            resolve(br#"[{"n":"x","v":1},{"n":"y","v":1,"t":1}]"#, received).expect("valid");
        assert_eq!(resolved[0].time, at(RECEIVED, 123_457));
        assert_eq!(resolved[1].time, at(RECEIVED + 1, 123_457));
    }

    #[test]
    fn time_errors() {
        assert_eq!(
            err(r#"[{"n":"x","v":1,"t":1e20}]"#),
            "record 0: time out of range"
        );
        assert_eq!(
            err(r#"[{"n":"x","v":1},{"n":"y","v":1,"t":-1e20}]"#),
            "record 1: time out of range"
        );
        assert_eq!(
            err(r#"[{"bt":1e308,"n":"x","v":1,"t":1e308}]"#),
            "record 0: bt + t is not a finite number"
        );
    }

    // ---- values ----

    #[test]
    fn vd_accepts_both_alphabets_with_or_without_padding() {
        let resolved = ok(r#"[
            {"bn":"device-name","n":"a","vd":"aG9paG9pAA"},
            {"n":"b","vd":"aG9paG9pAA=="},
            {"n":"c","vd":"-_8"},
            {"n":"d","vd":"+/8="}
        ]"#);
        let values: Vec<_> = resolved.iter().map(|m| m.value.clone()).collect();
        assert_eq!(
            values,
            [
                Some(Value::Data(b"hoihoi\0".to_vec())),
                Some(Value::Data(b"hoihoi\0".to_vec())),
                Some(Value::Data(vec![0xfb, 0xff])),
                Some(Value::Data(vec![0xfb, 0xff])),
            ]
        );
        assert_eq!(
            err(
                r#"[{"n":"a","v":1},{"n":"b","v":1},{"n":"c","v":1},{"n":"d","v":1},{"n":"e","vd":"!"}]"#
            ),
            "record 4: field \"vd\" is not valid base64"
        );
    }

    #[test]
    fn vs_keeps_numbers_as_text() {
        let resolved = ok(r#"[{"n":"x","vs":"12.50"}]"#);
        assert_eq!(resolved[0].value, Some(text("12.50")));
    }

    #[test]
    fn value_errors() {
        assert_eq!(
            err(r#"[{"n":"a","v":1},{"n":"b","v":1},{"n":"c","v":1,"vs":"1"}]"#),
            "record 2: has more than one value field (v, vs)"
        );
        assert_eq!(
            err(r#"[{"n":"c","vb":true,"vd":"AA","s":1}]"#),
            "record 0: has more than one value field (vb, vd)"
        );
        assert_eq!(
            err(r#"[{"n":"a","v":1},{"n":"b"}]"#),
            "record 1: no value field and no sum"
        );
        assert_eq!(
            err(r#"[{"n":"b","u":"V","t":1}]"#),
            "record 0: no value field and no sum"
        );
        assert_eq!(
            err(r#"[{"n":"a","v":"1"}]"#),
            "record 0: field \"v\" must be a number"
        );
        assert_eq!(
            err(r#"[{"n":"a","vb":null}]"#),
            "record 0: field \"vb\" must be a boolean"
        );
        assert_eq!(
            err(r#"[{"bv":1e308,"n":"a","v":1e308}]"#),
            "record 0: bv + v is not a finite number"
        );
        assert_eq!(
            err(r#"[{"bs":-1e308,"n":"a","s":-1e308}]"#),
            "record 0: bs + s is not a finite number"
        );
    }

    #[test]
    fn ut_is_validated_and_ignored() {
        assert_eq!(ok(r#"[{"n":"a","v":1,"ut":300}]"#).len(), 1);
        assert_eq!(
            err(r#"[{"n":"a","v":1,"ut":"5m"}]"#),
            "record 0: field \"ut\" must be a number"
        );
    }

    // ---- labels and version ----

    #[test]
    fn must_understand_labels_reject_the_pack() {
        assert_eq!(
            err(r#"[{"n":"a","v":1},{"n":"b","v":1},{"n":"c","v":1},{"n":"d","v":1,"foo_":1}]"#),
            "record 3: unknown must-understand field \"foo_\""
        );
        // KPN SDK token vector 3 (ThingsML indices).
        let thingsml = r#"[{"bn":"device-name","i_":-23,"vd":"aG9paG9pAA"},{"i_":-19,"vb":true}]"#;
        assert_eq!(
            err(thingsml),
            "record 0: unknown must-understand field \"i_\""
        );
    }

    #[test]
    fn unknown_plain_labels_are_ignored() {
        let resolved = ok(r#"[{"bn":"d","n":"a","v":1,"l":"[]","foo":{"bar":null},"i":3}]"#);
        assert_eq!(
            resolved,
            [measurement("d", "a", None, received(), Value::Number(1.0))]
        );
    }

    #[test]
    fn bver_up_to_10_is_accepted() {
        assert_eq!(
            ok(r#"[{"bver":5,"n":"a","v":1},{"bver":5,"n":"b","v":1},{"n":"c","v":1}]"#).len(),
            3
        );
        assert_eq!(
            ok(r#"[{"n":"a","v":1},{"bver":10,"n":"b","v":1}]"#).len(),
            2
        );
        assert_eq!(
            err(r#"[{"n":"a","v":1},{"bver":11,"n":"b","v":1}]"#),
            "record 1: unsupported bver 11"
        );
        assert_eq!(
            err(r#"[{"bver":10.5,"n":"a","v":1}]"#),
            "record 0: field \"bver\" must be a positive integer"
        );
        assert_eq!(
            err(r#"[{"bver":0,"n":"a","v":1}]"#),
            "record 0: field \"bver\" must be a positive integer"
        );
    }

    #[test]
    fn one_pack_has_one_version() {
        // RFC 8428 §4.4: every record of a pack has the same version; a record without
        // bver has the one in effect (10 when none was given).
        assert_eq!(
            err(r#"[{"bver":10,"n":"a","v":1},{"bver":5,"n":"b","v":1}]"#),
            "record 1: bver 5 differs from the pack's version 10"
        );
        assert_eq!(
            err(r#"[{"n":"a","v":1},{"bver":9,"n":"b","v":1}]"#),
            "record 1: bver 9 differs from the pack's version 10"
        );
        assert_eq!(
            err(r#"[{"bver":7},{"n":"a","v":1},{"bver":8,"n":"b","v":1}]"#),
            "record 2: bver 8 differs from the pack's version 7"
        );
    }

    #[test]
    fn string_values_may_hold_nul_names_and_units_may_not() {
        let resolved = ok(r#"[{"bn":"d","n":"s","vs":"a\u0000b"}]"#);
        assert_eq!(resolved[0].value, Some(text("a\u{0}b")));
        assert_eq!(
            err(r#"[{"bn":"d","n":"s\u0000","vs":"x"}]"#),
            "record 0: field \"n\" contains a NUL character"
        );
        assert_eq!(
            err(r#"[{"bn":"d","n":"s","u":"\u0000","v":1}]"#),
            "record 0: field \"u\" contains a NUL character"
        );
    }

    #[test]
    fn numbers_parse_to_the_nearest_double() {
        // Literals of 15 to 19 significant digits, spread over many magnitudes; without
        // serde_json's float_roundtrip about one in five comes out one ulp off.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let literals: Vec<String> = (0..2000)
            .map(|i| {
                let digits = 15 + (i % 5) as usize;
                let mantissa = format!("{:019}", next() % 10_000_000_000_000_000_000);
                let exponent = (next() % 40) as i32 - 20;
                format!(
                    "{}.{}e{exponent}",
                    &mantissa[..1].replace('0', "1"),
                    &mantissa[1..digits]
                )
            })
            .collect();
        let records: Vec<String> = literals
            .iter()
            .map(|l| format!(r#"{{"n":"x","v":{l}}}"#))
            .collect();
        let pack = format!(r#"[{{"bn":"d","bt":1.7e9}},{}]"#, records.join(","));
        let resolved = ok(&pack);
        let mut wrong = Vec::new();
        for (literal, measurement) in literals.iter().zip(&resolved) {
            let nearest: f64 = literal.parse().expect("valid literal");
            if measurement.value != Some(Value::Number(nearest)) {
                wrong.push(literal);
            }
        }
        assert!(
            wrong.is_empty(),
            "{} of 2000 misread: {wrong:?}",
            wrong.len()
        );
    }

    // ---- names and devices ----

    #[test]
    fn name_rules_apply_to_resolved_name() {
        assert_eq!(
            err(r#"[{"n":"a b","v":1}]"#),
            "record 0: name \"a b\" contains a character RFC 8428 forbids"
        );
        assert_eq!(
            err(r#"[{"bn":"dev ","n":"x","v":1}]"#),
            "record 0: name \"dev x\" contains a character RFC 8428 forbids"
        );
        assert_eq!(
            err(r#"[{"bn":"-dev","n":"x","v":1}]"#),
            "record 0: name \"-devx\" must start with a letter or digit"
        );
        assert_eq!(err(r#"[{"v":1}]"#), "record 0: resolved name is empty");
        assert_eq!(
            err(r#"[{"bn":"","n":"","v":1}]"#),
            "record 0: resolved name is empty"
        );
        // The first character is judged after concatenation.
        assert_eq!(ok(r#"[{"bn":"a","n":"_b","v":1}]"#)[0].name, "_b");
    }

    #[test]
    fn device_urn_is_split_from_the_name() {
        let resolved = ok(r#"[
            {"bn":"urn:dev:DEVEUI:0123456789ABCDEF:","n":"temperature","v":1},
            {"bn":"device-name","n":"humidity","v":1},
            {"bn":"","n":"urn:dev:ow:10e2073a01080063","v":1},
            {"n":"urn:dev:IMEI:356938035643809:battery","v":1},
            {"bn":"URN:DEV:deveui:0123456789abcdef:","n":"x:y","v":1},
            {"bn":"urn:dev:mac:","n":"0024befffe804ff1:","v":1},
            {"bn":"urn:dev:DEVEUI:0123456789ABCDEF:","v":1}
        ]"#);
        let split: Vec<_> = resolved
            .iter()
            .map(|m| (m.device.as_str(), m.name.as_str()))
            .collect();
        assert_eq!(
            split,
            [
                ("urn:dev:DEVEUI:0123456789ABCDEF:", "temperature"),
                ("device-name", "humidity"),
                ("", "urn:dev:ow:10e2073a01080063"),
                ("urn:dev:IMEI:356938035643809:", "battery"),
                // Original spelling kept; colons in the rest stay in the name.
                ("URN:DEV:deveui:0123456789abcdef:", "x:y"),
                // The URN may be spread over bn and n.
                ("urn:dev:mac:0024befffe804ff1:", ""),
                ("urn:dev:DEVEUI:0123456789ABCDEF:", ""),
            ]
        );
    }

    #[test]
    fn non_urn_base_name_is_the_device() {
        let resolved = ok(
            r#"[{"bn":"device-name","n":"humidity","vd":"aG9paG9pAA"},{"n":"power","vb":true},{"n":"pressure","v":1.500000},{"n":"temperature","v":10},{"n":"breadth","vs":"haihai"}]"#,
        );
        assert_eq!(
            resolved,
            [
                measurement(
                    "device-name",
                    "humidity",
                    None,
                    received(),
                    Value::Data(b"hoihoi\0".to_vec())
                ),
                measurement("device-name", "power", None, received(), Value::Bool(true)),
                measurement(
                    "device-name",
                    "pressure",
                    None,
                    received(),
                    Value::Number(1.5)
                ),
                measurement(
                    "device-name",
                    "temperature",
                    None,
                    received(),
                    Value::Number(10.0)
                ),
                measurement("device-name", "breadth", None, received(), text("haihai")),
            ]
        );
    }

    #[test]
    fn first_error_wins() {
        assert_eq!(
            err(r#"[{"n":"a","v":1},{"n":"b b","v":1},{"n":"c","v":"x"}]"#),
            "record 1: name \"b b\" contains a character RFC 8428 forbids"
        );
    }
}
