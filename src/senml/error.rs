//! The single error type for everything that can be wrong with a pack.

/// Why a SenML pack was rejected.
///
/// A pack is accepted or rejected as a whole (RFC 8428 gives no way to
/// salvage part of a malformed pack), so the error names the first offending
/// record by its zero-based index in the JSON array. The `Display` text is
/// meant to be returned to the sender and logged as is: short, precise and
/// free of Rust-isms.
///
/// `serde_json::Error` is neither `Clone` nor `PartialEq`, so JSON syntax
/// errors are kept as their rendered message (which includes line and column).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SenmlError {
    /// The body is not syntactically valid JSON (or holds a number outside
    /// the `f64` range, which serde_json reports as a syntax error).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),

    /// The body is valid JSON, but its top level is not an array.
    #[error("not a JSON array")]
    NotAnArray,

    /// An element of the pack is not a JSON object.
    #[error("record {record}: not a JSON object")]
    NotAnObject {
        /// Zero-based index of the record in the pack.
        record: usize,
    },

    /// A known field holds a JSON value of the wrong type (including `null`).
    #[error("record {record}: field \"{field}\" must be {expected}")]
    WrongType {
        /// Zero-based index of the record in the pack.
        record: usize,
        /// The SenML label, e.g. `"v"`.
        field: &'static str,
        /// What the field must hold, e.g. `"a number"`.
        expected: &'static str,
    },

    /// A string field holds U+0000, which no text column can store.
    #[error("record {record}: field \"{field}\" contains a NUL character")]
    NulCharacter {
        /// Zero-based index of the record in the pack.
        record: usize,
        /// The SenML label, e.g. `"vs"`.
        field: &'static str,
    },

    /// A label ending in `_` (RFC 8428 "must understand"); we understand none.
    #[error("record {record}: unknown must-understand field {label:?}")]
    MustUnderstand {
        /// Zero-based index of the record in the pack.
        record: usize,
        /// The label as it appeared in the record.
        label: String,
    },

    /// `bver` names a newer SenML version than the one this code implements.
    #[error("record {record}: unsupported bver {bver}")]
    UnsupportedVersion {
        /// Zero-based index of the record in the pack.
        record: usize,
        /// The version found.
        bver: u64,
    },

    /// A record's `bver` differs from the version of the pack (RFC 8428 §4.4).
    #[error("record {record}: bver {bver} differs from the pack's version {version}")]
    MixedVersions {
        /// Zero-based index of the record in the pack.
        record: usize,
        /// The version this record gives.
        bver: u64,
        /// The version of the pack: the first record's, or 10.
        version: u64,
    },

    /// More than one of `v`, `vs`, `vb`, `vd` in one record.
    #[error("record {record}: has more than one value field ({})", fields.join(", "))]
    MultipleValues {
        /// Zero-based index of the record in the pack.
        record: usize,
        /// The value labels present, in the order `v`, `vs`, `vb`, `vd`.
        fields: Vec<&'static str>,
    },

    /// A record with a name but neither a value field nor `s`.
    #[error("record {record}: no value field and no sum")]
    MissingValue {
        /// Zero-based index of the record in the pack.
        record: usize,
    },

    /// `bn` + `n` is the empty string, so the measurement cannot be identified.
    #[error("record {record}: resolved name is empty")]
    EmptyName {
        /// Zero-based index of the record in the pack.
        record: usize,
    },

    /// `bn` + `n` contains a character outside RFC 8428 §4.5.1's set.
    #[error("record {record}: name {name:?} contains a character RFC 8428 forbids")]
    ForbiddenNameCharacter {
        /// Zero-based index of the record in the pack.
        record: usize,
        /// The resolved name (`bn` + `n`).
        name: String,
    },

    /// `bn` + `n` starts with `-`, `:`, `.`, `/` or `_` (RFC 8428 §4.5.1).
    #[error("record {record}: name {name:?} must start with a letter or digit")]
    BadNameStart {
        /// Zero-based index of the record in the pack.
        record: usize,
        /// The resolved name (`bn` + `n`).
        name: String,
    },

    /// `vd` does not decode as base64 in either alphabet.
    #[error("record {record}: field \"vd\" is not valid base64")]
    InvalidBase64 {
        /// Zero-based index of the record in the pack.
        record: usize,
    },

    /// A base field plus its regular field overflowed to infinity.
    #[error("record {record}: {sum} is not a finite number")]
    NotFinite {
        /// Zero-based index of the record in the pack.
        record: usize,
        /// Which addition overflowed, e.g. `"bt + t"`.
        sum: &'static str,
    },

    /// The resolved time cannot be represented as a timestamp.
    #[error("record {record}: time out of range")]
    TimeOutOfRange {
        /// Zero-based index of the record in the pack.
        record: usize,
    },

    /// The resolved time is a timestamp, but outside years 0001 to 9999: RFC 3339 cannot
    /// write it, so it could be stored yet never served.
    #[error("record {record}: time is outside the years 0001 to 9999")]
    TimeNotStorable {
        /// Zero-based index of the record in the pack.
        record: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::SenmlError;

    #[test]
    fn messages_name_the_record_and_the_reason() {
        let cases = [
            (
                SenmlError::MultipleValues {
                    record: 2,
                    fields: vec!["v", "vs"],
                },
                "record 2: has more than one value field (v, vs)",
            ),
            (
                SenmlError::ForbiddenNameCharacter {
                    record: 0,
                    name: "a b".to_owned(),
                },
                "record 0: name \"a b\" contains a character RFC 8428 forbids",
            ),
            (SenmlError::NotAnArray, "not a JSON array"),
            (
                SenmlError::WrongType {
                    record: 1,
                    field: "v",
                    expected: "a number",
                },
                "record 1: field \"v\" must be a number",
            ),
            (
                SenmlError::MustUnderstand {
                    record: 3,
                    label: "foo_".to_owned(),
                },
                "record 3: unknown must-understand field \"foo_\"",
            ),
            (
                SenmlError::UnsupportedVersion {
                    record: 0,
                    bver: 11,
                },
                "record 0: unsupported bver 11",
            ),
            (
                SenmlError::NotFinite {
                    record: 4,
                    sum: "bv + v",
                },
                "record 4: bv + v is not a finite number",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.to_string(), expected);
        }
    }
}
