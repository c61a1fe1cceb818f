//! SenML string values as PostgreSQL text, which cannot hold U+0000.
//!
//! A string with NUL is stored as its JSON string literal (`"a\u0000b"`, quotes included)
//! and flagged in `string_escaped`; any other string is stored as it is, unflagged. The flag,
//! not the text, says which form a row holds, so no stored string is ever misread, and
//! ordinary strings are stored and answered byte for byte as before.

use std::borrow::Cow;

/// The text to store for `value`, and the `string_escaped` flag to store with it.
pub fn to_storage(value: &str) -> (Cow<'_, str>, Option<bool>) {
    if value.contains('\0') {
        // Serializing a string cannot fail; its JSON form never contains a raw NUL.
        let escaped = serde_json::to_string(value).unwrap_or_default();
        (Cow::Owned(escaped), Some(true))
    } else {
        (Cow::Borrowed(value), None)
    }
}

/// The string a stored text and flag stand for. A flagged text that is not a JSON string
/// (which only a hand edit could cause) is answered as stored rather than lost.
pub fn from_storage(text: String, escaped: Option<bool>) -> String {
    if escaped == Some(true) {
        serde_json::from_str(&text).unwrap_or(text)
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_with_nul_round_trip_and_others_are_untouched() {
        for value in [
            "",
            "plain",
            "a\u{0}b",
            "\u{0}",
            "\\u0000",
            "\"quoted\"",
            "é\u{0}\u{1b}",
        ] {
            let (stored, flag) = to_storage(value);
            assert!(!stored.contains('\0'), "{value:?}");
            assert_eq!(flag.is_some(), value.contains('\0'), "{value:?}");
            assert_eq!(from_storage(stored.into_owned(), flag), value);
        }
        // Unflagged text is never decoded, whatever it looks like.
        assert_eq!(from_storage("\"a\\u0000b\"".into(), None), "\"a\\u0000b\"");
        assert_eq!(from_storage("not json".into(), Some(true)), "not json");
    }
}
