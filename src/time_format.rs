//! How times are written in answers and views: RFC 3339 in UTC, as short as exact allows.
//!
//! Shared by the API's JSON and the downlink view (API and CLI), so a time reads the same
//! wherever it is shown.

use chrono::{DateTime, SecondsFormat, Utc};

/// RFC 3339 in UTC with only as many fraction digits as needed: `2020-03-31T10:12:30.5Z`.
pub fn format_time(time: DateTime<Utc>) -> String {
    let text = time.to_rfc3339_opts(SecondsFormat::Micros, true);
    // "....ss.ffffffZ": trim trailing zeros of the fraction, and the dot if nothing is left.
    let without_z = &text[..text.len() - 1];
    let trimmed = without_z.trim_end_matches('0').trim_end_matches('.');
    format!("{trimmed}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_short_but_exact() {
        let t = |micros| DateTime::from_timestamp_micros(micros).unwrap();
        assert_eq!(
            format_time(t(1_585_649_550_500_000)),
            "2020-03-31T10:12:30.5Z"
        );
        assert_eq!(
            format_time(t(1_585_649_550_000_000)),
            "2020-03-31T10:12:30Z"
        );
        assert_eq!(
            format_time(t(1_585_649_550_000_001)),
            "2020-03-31T10:12:30.000001Z"
        );
        assert_eq!(
            format_time(t(1_585_649_560_000_000)),
            "2020-03-31T10:12:40Z"
        );
    }
}
