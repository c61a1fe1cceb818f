//! One SenML record as written on the wire: every known field type-checked,
//! nothing resolved yet.

use serde_json::{Map, Value as Json};

use super::error::SenmlError;

/// The fields of one record, each `None` when absent.
///
/// Field names follow the SenML JSON labels (RFC 8428 §5) so that the
/// resolution code reads like the RFC. `ut` is checked but not kept: we have
/// no use for the update interval.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Record {
    pub(crate) bn: Option<String>,
    pub(crate) bt: Option<f64>,
    pub(crate) bu: Option<String>,
    pub(crate) bv: Option<f64>,
    pub(crate) bs: Option<f64>,
    pub(crate) bver: Option<u64>,
    pub(crate) n: Option<String>,
    pub(crate) u: Option<String>,
    pub(crate) v: Option<f64>,
    pub(crate) vs: Option<String>,
    pub(crate) vb: Option<bool>,
    pub(crate) vd: Option<String>,
    pub(crate) s: Option<f64>,
    pub(crate) t: Option<f64>,
}

impl Record {
    /// Takes one element of the pack apart, moving strings out of the JSON
    /// tree rather than copying them.
    ///
    /// Unknown labels are ignored as RFC 8428 §4.4 requires, except labels
    /// ending in `_`, which the sender marked "must understand": we implement
    /// no such extension, so accepting the record would silently
    /// misinterpret it (ThingsML's `i_` is the one seen in practice; KPN
    /// decodes it before forwarding).
    pub(crate) fn from_json(record: usize, json: Json) -> Result<Self, SenmlError> {
        let Json::Object(fields) = json else {
            return Err(SenmlError::NotAnObject { record });
        };
        Self::from_fields(record, fields)
    }

    fn from_fields(record: usize, fields: Map<String, Json>) -> Result<Self, SenmlError> {
        let mut out = Record::default();
        for (label, value) in fields {
            match label.as_str() {
                "bn" => out.bn = Some(string(record, "bn", value)?),
                "bt" => out.bt = Some(number(record, "bt", &value)?),
                "bu" => out.bu = Some(string(record, "bu", value)?),
                "bv" => out.bv = Some(number(record, "bv", &value)?),
                "bs" => out.bs = Some(number(record, "bs", &value)?),
                "bver" => out.bver = Some(version(record, &value)?),
                "n" => out.n = Some(string(record, "n", value)?),
                "u" => out.u = Some(string(record, "u", value)?),
                "v" => out.v = Some(number(record, "v", &value)?),
                "vs" => out.vs = Some(text(record, "vs", value)?),
                "vb" => out.vb = Some(boolean(record, "vb", &value)?),
                "vd" => out.vd = Some(string(record, "vd", value)?),
                "s" => out.s = Some(number(record, "s", &value)?),
                "t" => out.t = Some(number(record, "t", &value)?),
                "ut" => {
                    number(record, "ut", &value)?;
                }
                _ if label.ends_with('_') => {
                    return Err(SenmlError::MustUnderstand { record, label });
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// The value labels present in this record, in a fixed order, for
    /// reporting more than one.
    pub(crate) fn value_labels(&self) -> Vec<&'static str> {
        [
            ("v", self.v.is_some()),
            ("vs", self.vs.is_some()),
            ("vb", self.vb.is_some()),
            ("vd", self.vd.is_some()),
        ]
        .into_iter()
        .filter_map(|(label, present)| present.then_some(label))
        .collect()
    }

    /// How many of `v`, `vs`, `vb`, `vd` are present.
    pub(crate) fn value_count(&self) -> usize {
        usize::from(self.v.is_some())
            + usize::from(self.vs.is_some())
            + usize::from(self.vb.is_some())
            + usize::from(self.vd.is_some())
    }
}

/// A name, unit or base64 field: U+0000 is refused (no name may hold it, RFC 8428 §4.5.1,
/// and a unit or base64 text with it is no unit or data).
fn string(record: usize, field: &'static str, value: Json) -> Result<String, SenmlError> {
    match text(record, field, value)? {
        s if s.contains('\0') => Err(SenmlError::NulCharacter { record, field }),
        s => Ok(s),
    }
}

/// A string value (`vs`): any JSON string, U+0000 included (RFC 8428 puts no limit on it;
/// the store escapes it, see `store::stored_text`).
fn text(record: usize, field: &'static str, value: Json) -> Result<String, SenmlError> {
    match value {
        Json::String(s) => Ok(s),
        _ => Err(SenmlError::WrongType {
            record,
            field,
            expected: "a string",
        }),
    }
}

/// Any JSON number: integer, fraction or exponent form. serde_json never
/// yields a non-finite number (out-of-range literals fail the parse).
fn number(record: usize, field: &'static str, value: &Json) -> Result<f64, SenmlError> {
    value.as_f64().ok_or(SenmlError::WrongType {
        record,
        field,
        expected: "a number",
    })
}

fn boolean(record: usize, field: &'static str, value: &Json) -> Result<bool, SenmlError> {
    value.as_bool().ok_or(SenmlError::WrongType {
        record,
        field,
        expected: "a boolean",
    })
}

/// `bver` is a positive integer (RFC 8428 §4.4). JSON has no integer type,
/// so an integral number written with a fraction (`10.0`) is accepted too;
/// `10.5`, zero and negative numbers are not.
fn version(record: usize, value: &Json) -> Result<u64, SenmlError> {
    let wrong = SenmlError::WrongType {
        record,
        field: "bver",
        expected: "a positive integer",
    };
    if let Some(version) = value.as_u64() {
        return if version > 0 { Ok(version) } else { Err(wrong) };
    }
    match value.as_f64() {
        // Saturating cast: anything this large is an unsupported version anyway.
        Some(f) if f >= 1.0 && f.fract() == 0.0 => Ok(f as u64),
        _ => Err(wrong),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Record, SenmlError> {
        let json: Json = serde_json::from_str(text).expect("test JSON is valid");
        Record::from_json(7, json)
    }

    #[test]
    fn reads_every_known_field() {
        let record = parse(
            r#"{"bn":"b","bt":1,"bu":"V","bv":2,"bs":3,"bver":10,"n":"x","u":"A",
                "v":4.5,"vs":"s","vb":false,"vd":"AA","s":5,"t":-6,"ut":60}"#,
        )
        .expect("valid record");
        assert_eq!(
            record,
            Record {
                bn: Some("b".into()),
                bt: Some(1.0),
                bu: Some("V".into()),
                bv: Some(2.0),
                bs: Some(3.0),
                bver: Some(10),
                n: Some("x".into()),
                u: Some("A".into()),
                v: Some(4.5),
                vs: Some("s".into()),
                vb: Some(false),
                vd: Some("AA".into()),
                s: Some(5.0),
                t: Some(-6.0),
            }
        );
        assert_eq!(record.value_count(), 4);
        assert_eq!(record.value_labels(), ["v", "vs", "vb", "vd"]);
    }

    #[test]
    fn type_errors_name_field_and_expected_type() {
        let cases = [
            (r#"{"bn":1}"#, "bn", "a string"),
            (r#"{"bu":true}"#, "bu", "a string"),
            (r#"{"n":null}"#, "n", "a string"),
            (r#"{"u":[]}"#, "u", "a string"),
            (r#"{"vs":3}"#, "vs", "a string"),
            (r#"{"vd":{}}"#, "vd", "a string"),
            (r#"{"bt":"1"}"#, "bt", "a number"),
            (r#"{"bv":null}"#, "bv", "a number"),
            (r#"{"bs":false}"#, "bs", "a number"),
            (r#"{"v":"20.5"}"#, "v", "a number"),
            (r#"{"s":null}"#, "s", "a number"),
            (r#"{"t":"now"}"#, "t", "a number"),
            (r#"{"ut":"x"}"#, "ut", "a number"),
            (r#"{"vb":"true"}"#, "vb", "a boolean"),
            (r#"{"vb":1}"#, "vb", "a boolean"),
            (r#"{"bver":10.5}"#, "bver", "a positive integer"),
            (r#"{"bver":-1}"#, "bver", "a positive integer"),
            (r#"{"bver":"10"}"#, "bver", "a positive integer"),
            (r#"{"bver":0}"#, "bver", "a positive integer"),
            (r#"{"bver":0.0}"#, "bver", "a positive integer"),
            (r#"{"bver":0.5}"#, "bver", "a positive integer"),
        ];
        for (text, field, expected) in cases {
            assert_eq!(
                parse(text),
                Err(SenmlError::WrongType {
                    record: 7,
                    field,
                    expected
                }),
                "{text}"
            );
        }
        assert_eq!(
            parse(r#"{"v":"1"}"#).map_err(|e| e.to_string()),
            Err("record 7: field \"v\" must be a number".to_owned())
        );
    }

    #[test]
    fn bver_accepts_integers_in_any_spelling() {
        assert_eq!(parse(r#"{"bver":10}"#).map(|r| r.bver), Ok(Some(10)));
        assert_eq!(parse(r#"{"bver":10.0}"#).map(|r| r.bver), Ok(Some(10)));
        assert_eq!(parse(r#"{"bver":1}"#).map(|r| r.bver), Ok(Some(1)));
        assert_eq!(parse(r#"{"bver":1e1}"#).map(|r| r.bver), Ok(Some(10)));
    }

    #[test]
    fn numbers_in_exponent_and_fraction_form() {
        let record = parse(r#"{"bt":1.58565075E9,"v":3.0,"t":1e-6}"#).expect("valid");
        assert_eq!(record.bt, Some(1_585_650_750.0));
        assert_eq!(record.v, Some(3.0));
        assert_eq!(record.t, Some(0.000_001));
    }

    #[test]
    fn must_understand_labels_are_rejected() {
        assert_eq!(
            parse(r#"{"n":"x","v":1,"foo_":1}"#),
            Err(SenmlError::MustUnderstand {
                record: 7,
                label: "foo_".into()
            })
        );
        // ThingsML index, as in KPN's SDK token vectors.
        assert!(matches!(
            parse(r#"{"bn":"device-name","i_":-23,"vd":"aG9paG9pAA"}"#),
            Err(SenmlError::MustUnderstand { .. })
        ));
        assert!(matches!(
            parse(r#"{"_":null}"#),
            Err(SenmlError::MustUnderstand { .. })
        ));
    }

    #[test]
    fn other_unknown_labels_are_ignored_whatever_their_type() {
        let record = parse(r#"{"n":"x","v":1,"l":"link","foo":null,"_x":[1]}"#).expect("valid");
        assert_eq!(record.n.as_deref(), Some("x"));
        assert_eq!(record.v, Some(1.0));
    }

    #[test]
    fn non_objects_are_rejected() {
        for text in ["[]", "1", "\"x\"", "null", "true"] {
            assert_eq!(parse(text), Err(SenmlError::NotAnObject { record: 7 }));
        }
    }
}
