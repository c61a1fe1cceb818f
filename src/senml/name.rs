//! RFC 8428 §4.5.1 name rules.

use super::error::SenmlError;

/// Checks a resolved name (`bn` + `n`).
///
/// RFC 8428 restricts names to `A-Z a-z 0-9 - : . / _`, starting with a
/// letter or digit, so that they can be used unescaped in URIs, database
/// keys and metric names. We enforce it because names end up as exactly such
/// keys downstream; a pack that breaks it is malformed, not merely unusual.
pub(crate) fn check(record: usize, name: &str) -> Result<(), SenmlError> {
    let Some(&first) = name.as_bytes().first() else {
        return Err(SenmlError::EmptyName { record });
    };
    if !name.bytes().all(allowed) {
        return Err(SenmlError::ForbiddenNameCharacter {
            record,
            name: name.to_owned(),
        });
    }
    if !first.is_ascii_alphanumeric() {
        return Err(SenmlError::BadNameStart {
            record,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Byte-wise check: every allowed character is ASCII, and every byte of a
/// multi-byte UTF-8 character is ≥ 0x80, so no non-ASCII character can pass.
fn allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b':' | b'.' | b'/' | b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_rfc_character_set() {
        for name in [
            "a",
            "0",
            "urn:dev:DEVEUI:0123456789ABCDEF:temperature",
            "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:co2",
            "http:/x.y/a_b-c",
            "Z9._-:/",
        ] {
            assert_eq!(check(0, name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn rejects_forbidden_characters() {
        for name in [
            "a b", "a\u{e9}", "temp%", "a\nb", "x?y", "a+b", "a@b", "a#b",
        ] {
            assert_eq!(
                check(3, name),
                Err(SenmlError::ForbiddenNameCharacter {
                    record: 3,
                    name: name.to_owned()
                }),
                "{name:?}"
            );
        }
        assert_eq!(
            check(0, "a b").map_err(|e| e.to_string()),
            Err("record 0: name \"a b\" contains a character RFC 8428 forbids".to_owned())
        );
    }

    #[test]
    fn rejects_bad_first_character() {
        for name in ["-a", ":a", ".a", "/a", "_a"] {
            assert_eq!(
                check(1, name),
                Err(SenmlError::BadNameStart {
                    record: 1,
                    name: name.to_owned()
                }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(check(0, ""), Err(SenmlError::EmptyName { record: 0 }));
        assert_eq!(
            SenmlError::EmptyName { record: 0 }.to_string(),
            "record 0: resolved name is empty"
        );
    }
}
