//! The device an uplink names, read before the body is verified.
//!
//! A device door needs the device's secret to verify the body, and the device is named in
//! the body: the first record's `bn`. Reading it must cost no more than that record, whatever
//! follows (the body is not verified yet), so the pack is not built: serde_json's streaming
//! deserializer reads the opening `[` and the first record, and nothing after it. The first
//! record is read whole, and of several `bn` labels in it the last counts, as in the full
//! parse ([`super::resolve`]), so that the device whose secret verifies the body is the
//! device the full parse reads. Whatever is wrong after the first record is for the full
//! parse to find, after verification: such a body is stored quarantined, not refused.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess};

/// Why no device could be read from a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeekError {
    /// The body does not start (after whitespace) with a JSON array.
    #[error("not a JSON array")]
    NotAnArray,
    /// The array is empty, its first element is not a valid JSON object, or that object has
    /// no `bn`, or its `bn` is not a string.
    #[error("the first record has no string bn")]
    NoBaseName,
}

/// The first record's `bn`, borrowed from `body` unless it holds escapes.
pub fn peek_device(body: &[u8]) -> Result<Cow<'_, str>, PeekError> {
    peek_from(&mut serde_json::Deserializer::from_slice(body))
}

fn peek_from<'de, R: serde_json::de::Read<'de>>(
    deserializer: &mut serde_json::Deserializer<R>,
) -> Result<Cow<'de, str>, PeekError> {
    let mut found = None;
    // After the first record the deserializer expects `]`; finding `,` (or anything else)
    // it stops with an error at once, without reading on. That error is not ours to report:
    // `found` says whether the first record was read.
    let _ = deserializer.deserialize_seq(Pack { found: &mut found });
    found.unwrap_or(Err(PeekError::NotAnArray))
}

/// Visits the pack: takes its first element and stops.
struct Pack<'a, 'de> {
    found: &'a mut Option<Result<Cow<'de, str>, PeekError>>,
}

impl<'de> de::Visitor<'de> for Pack<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML pack")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let first = seq.next_element_seed(FirstRecord);
        *self.found = Some(match first {
            Ok(Some(Some(bn))) => Ok(bn),
            _ => Err(PeekError::NoBaseName),
        });
        Ok(())
    }
}

/// The first record: its last `bn` if that is a string.
struct FirstRecord;

impl<'de> DeserializeSeed<'de> for FirstRecord {
    type Value = Option<Cow<'de, str>>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> de::Visitor<'de> for FirstRecord {
    type Value = Option<Cow<'de, str>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut bn = None;
        while let Some(MaybeText(label)) = map.next_key()? {
            if label.as_deref() == Some("bn") {
                bn = map.next_value::<MaybeText>()?.0;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(bn)
    }
}

/// Any JSON value, kept only when it is a string (borrowed when it holds no escapes).
struct MaybeText<'de>(Option<Cow<'de, str>>);

impl<'de> de::Deserialize<'de> for MaybeText<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MaybeTextVisitor)
    }
}

struct MaybeTextVisitor;

impl<'de> de::Visitor<'de> for MaybeTextVisitor {
    type Value = MaybeText<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(MaybeText(Some(Cow::Borrowed(text))))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(MaybeText(Some(Cow::Owned(text.to_owned()))))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<Self::Value, E> {
        Ok(MaybeText(Some(Cow::Owned(text))))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(MaybeText(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(MaybeText(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(MaybeText(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(MaybeText(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(MaybeText(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        de::Visitor::visit_seq(IgnoredAny, seq).map(|_| MaybeText(None))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        de::Visitor::visit_map(IgnoredAny, map).map(|_| MaybeText(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMEI: &str = "urn:dev:IMEI:123456789012345:";

    fn peek(body: &str) -> Result<Cow<'_, str>, PeekError> {
        peek_device(body.as_bytes())
    }

    #[test]
    fn reads_the_first_records_bn() {
        assert_eq!(
            peek(&format!(r#"[{{"bn":"{IMEI}","n":"t","v":1}}]"#)).unwrap(),
            IMEI
        );
        // Not the first label, values of every type before it, whitespace everywhere.
        let body = format!(
            " \n\t[ {{ \"n\" : \"t\", \"v\": -1.5e3, \"vb\": true, \"x\": null, \
             \"o\": {{\"bn\": \"inner\", \"a\": [1, {{}}]}}, \"vs\": \"a]b\", \
             \"bn\" :\r\n \"{IMEI}\" }} , {{\"n\":\"h\",\"v\":2}} ] "
        );
        assert_eq!(peek(&body).unwrap(), IMEI);
    }

    #[test]
    fn borrows_plain_strings_and_unescapes_escaped_ones() {
        let body = format!(r#"[{{"bn":"{IMEI}"}}]"#);
        assert!(matches!(peek(&body).unwrap(), Cow::Borrowed(_)));
        let escaped = r#"[{"b\u006e":"urn:dev:IMEI:\u0031\"23456789012345:\/"}]"#;
        let bn = peek(escaped).unwrap();
        assert!(matches!(bn, Cow::Owned(_)));
        assert_eq!(bn, "urn:dev:IMEI:1\"23456789012345:/");
    }

    #[test]
    fn the_last_bn_of_the_first_record_counts_as_in_the_full_parse() {
        let body =
            format!(r#"[{{"bn":"urn:dev:IMEI:999999999999999:","bn":"{IMEI}","n":"t","v":1}}]"#);
        assert_eq!(peek(&body).unwrap(), IMEI);
        let full = crate::senml::resolve(body.as_bytes(), chrono::Utc::now()).unwrap();
        assert_eq!(full[0].device, IMEI);
        assert_eq!(
            peek(&format!(r#"[{{"bn":"{IMEI}","bn":7}}]"#)),
            Err(PeekError::NoBaseName)
        );
    }

    #[test]
    fn bodies_that_are_not_arrays() {
        for body in [
            "",
            "   ",
            "{\"bn\":\"x\"}",
            "\"[\"",
            "null",
            "1",
            "garbage",
            "\u{feff}[{\"bn\":\"x\"}]",
        ] {
            assert_eq!(peek(body), Err(PeekError::NotAnArray), "{body:?}");
        }
    }

    #[test]
    fn first_records_without_a_string_bn() {
        for body in [
            "[]",
            "[ ]",
            "[",
            "[1, {\"bn\":\"x\"}]",
            "[[{\"bn\":\"x\"}]]",
            "[\"bn\"]",
            "[{}]",
            "[{\"n\":\"t\",\"v\":1}, {\"bn\":\"x\"}]",
            "[{\"bn\":null}]",
            "[{\"bn\":42}]",
            "[{\"bn\":[\"x\"]}]",
            "[{\"bn\":{\"x\":1}}]",
            "[{\"bn\":\"x\"",
            "[{\"bn\":\"x\",}]",
            "[{\"bn\":\"x\", \"v\": 01}]",
            "[{\"bn\":\"unterminated}]",
            "[{\"bn\":\"bad escape \\q\"}]",
        ] {
            assert_eq!(peek(body), Err(PeekError::NoBaseName), "{body:?}");
        }
    }

    #[test]
    fn invalid_json_after_the_first_record_is_left_to_the_full_parse() {
        for tail in [
            "",
            "]",
            ",",
            ", {",
            ", garbage",
            "]]]]",
            ", {\"bn\": 1}, nul]",
        ] {
            let body = format!(r#"[{{"bn":"{IMEI}"}}{tail}"#);
            assert_eq!(peek(&body).unwrap(), IMEI, "{body:?}");
            // The full parse refuses each of these (bar the complete pack) afterwards.
            if tail != "]" {
                assert!(crate::senml::resolve(body.as_bytes(), chrono::Utc::now()).is_err());
            }
        }
        // Nesting past serde_json's recursion limit after the first record is never seen.
        let deep = format!(r#"[{{"bn":"{IMEI}"}},{}]"#, "[".repeat(10_000));
        assert_eq!(peek(&deep).unwrap(), IMEI);
    }

    /// Counts the bytes the deserializer pulls from a reader, to show where it stops.
    struct Counting<'a> {
        rest: &'a [u8],
        read: usize,
    }

    impl std::io::Read for Counting<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.rest.len());
            buf[..n].copy_from_slice(&self.rest[..n]);
            self.rest = &self.rest[n..];
            self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn a_huge_trailing_array_is_not_read() {
        let first = format!(r#"[{{"bn":"{IMEI}","n":"t","v":1}}"#);
        let mut body = first.clone().into_bytes();
        while body.len() < 8 << 20 {
            body.extend_from_slice(br#",{"n":"t","v":1}"#);
        }
        body.push(b']');
        assert_eq!(peek_device(&body).unwrap(), IMEI);

        let mut reader = Counting {
            rest: &body,
            read: 0,
        };
        let bn = peek_from(&mut serde_json::Deserializer::from_reader(&mut reader)).unwrap();
        assert_eq!(bn, IMEI);
        // The first record, then the comma that ends the look: nothing further.
        assert!(
            reader.read <= first.len() + 2,
            "read {} bytes of {}",
            reader.read,
            body.len()
        );
    }
}
