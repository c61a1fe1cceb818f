//! Query-parameter parsing shared by the API handlers, with errors that name the parameter.

use chrono::{DateTime, Utc};

use crate::error::AppError;
use crate::senml::time::storable;

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 1000;

/// An RFC 3339 time within years 0001 to 9999 (in UTC), the range SenML times are held to
/// as well: so a parameter never names a time the database cannot compare with.
pub fn time(name: &'static str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, AppError> {
    value
        .map(|v| {
            let time = DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    AppError::bad_parameter(
                        name,
                        "expected an RFC 3339 time such as 2024-01-31T12:00:00Z",
                    )
                })?;
            if storable(time) {
                Ok(time)
            } else {
                Err(AppError::bad_parameter(
                    name,
                    "must be within the years 0001 to 9999 (UTC)",
                ))
            }
        })
        .transpose()
}

/// Longest text parameter accepted (names, URNs, search strings).
pub const MAX_TEXT: usize = 1000;

/// A text parameter: empty means absent; text PostgreSQL cannot store (NUL) or absurdly long
/// text is refused here rather than failing in the database.
pub fn text(name: &'static str, value: Option<String>) -> Result<Option<String>, AppError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) if v.contains('\0') => Err(AppError::bad_parameter(name, "must not contain NUL")),
        Some(v) if v.len() > MAX_TEXT => Err(AppError::bad_parameter(
            name,
            format!("longer than {MAX_TEXT} bytes"),
        )),
        Some(v) => Ok(Some(v)),
    }
}

pub fn limit(value: Option<&str>) -> Result<i64, AppError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                AppError::bad_parameter(
                    "limit",
                    format!("expected a whole number from 1 to {MAX_LIMIT}"),
                )
            }),
    }
}

/// A cursor this API returned. Its time is held to the same range as time parameters, so a
/// forged cursor is a 400 like any other bad parameter, not a database error.
pub fn cursor(value: Option<&str>) -> Result<Option<(DateTime<Utc>, i64)>, AppError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            super::cursor::decode(v)
                .filter(|(time, _)| storable(*time))
                .ok_or_else(|| {
                    AppError::bad_parameter("cursor", "not a cursor returned by this API")
                })
        })
        .transpose()
}

/// A cursor of a list in id order that this API returned.
pub fn id_cursor(value: Option<&str>) -> Result<Option<i64>, AppError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            super::cursor::decode_id(v).ok_or_else(|| {
                AppError::bad_parameter("cursor", "not a cursor returned by this API")
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some("5")).unwrap(), 5);
        assert!(limit(Some("0")).is_err());
        assert!(limit(Some("1001")).is_err());
        assert!(limit(Some("x")).is_err());
    }

    #[test]
    fn times_and_cursors_stay_within_years_1_to_9999() {
        assert!(time("from", Some("9999-12-31T23:59:59.999999Z")).is_ok());
        assert!(time("from", Some("0001-01-01T00:00:00Z")).is_ok());
        // RFC 3339 with an offset can name a UTC time just outside either end.
        assert!(time("from", Some("0001-01-01T00:00:00+01:00")).is_err());
        assert!(time("to", Some("9999-12-31T23:59:59-01:00")).is_err());
        let far = DateTime::from_timestamp(8_000_000_000_000, 0).unwrap();
        let early = DateTime::from_timestamp(-300_000_000_000, 0).unwrap();
        for t in [far, early] {
            let forged = super::super::cursor::encode(t, 1);
            assert!(cursor(Some(&forged)).is_err(), "{t}");
        }
        let fine = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let encoded = super::super::cursor::encode(fine, 7);
        assert_eq!(cursor(Some(&encoded)).unwrap(), Some((fine, 7)));
    }
}
