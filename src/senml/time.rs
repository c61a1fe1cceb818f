//! Turning SenML time (floating-point seconds) into timestamps.

use chrono::{DateTime, Utc};

use super::error::SenmlError;

/// RFC 8428 §4.5.3: a resolved time below 2^28 seconds (about 8.5 years) is
/// relative to "now"; at or above it, it is seconds since the Unix epoch.
/// No real device reports absolute times in the 1970s, so the ranges do not
/// overlap in practice.
const RELATIVE_BELOW: f64 = 268_435_456.0;

/// The earliest time we store or accept: 0001-01-01T00:00:00Z, in microseconds.
///
/// PostgreSQL's `timestamptz` reaches further (4713 BC to 294276 AD), but RFC 3339 has
/// four-digit years only, so anything outside years 0001 to 9999 could be stored yet not
/// served. One range for SenML times and API parameters keeps every stored time servable
/// and every parameter storable.
pub const EARLIEST_MICROS: i64 = -62_135_596_800_000_000;
/// The latest time we store or accept: 9999-12-31T23:59:59.999999Z, in microseconds.
pub const LATEST_MICROS: i64 = 253_402_300_799_999_999;

/// Whether `time` lies within years 0001 to 9999 (see [`EARLIEST_MICROS`]).
pub fn storable(time: DateTime<Utc>) -> bool {
    // Compared in microseconds: that is what is stored, and a nanosecond past the last
    // microsecond rounds down into range.
    (EARLIEST_MICROS..=LATEST_MICROS).contains(&time.timestamp_micros())
}

/// Converts a resolved SenML time to an absolute timestamp.
///
/// `now_micros` is the receipt time in whole microseconds since the epoch:
/// relative times are offsets from the moment we received the pack, which
/// is the best "now" we have (and what KPN does for uplinks without time).
///
/// The result is rounded to the nearest microsecond: an `f64` holding an
/// epoch time has about 0.2 µs resolution today, so finer digits are noise,
/// and microseconds are what downstream storage keeps.
pub(crate) fn resolve(
    record: usize,
    seconds: f64,
    now_micros: i64,
) -> Result<DateTime<Utc>, SenmlError> {
    let out_of_range = SenmlError::TimeOutOfRange { record };
    let micros = seconds * 1_000_000.0;
    // Bound before casting: `as i64` would saturate silently. chrono's range
    // (±262,000 years) is far inside i64 microseconds, so this loses nothing.
    if !micros.is_finite() || micros.abs() >= 9.0e18 {
        return Err(out_of_range);
    }
    let micros = micros.round() as i64;
    let absolute = if seconds < RELATIVE_BELOW {
        now_micros.checked_add(micros).ok_or(out_of_range.clone())?
    } else {
        micros
    };
    if !(EARLIEST_MICROS..=LATEST_MICROS).contains(&absolute) {
        return Err(SenmlError::TimeNotStorable { record });
    }
    DateTime::from_timestamp_micros(absolute).ok_or(out_of_range)
}

/// `time` in whole microseconds since the epoch, rounded half up.
///
/// Done by hand rather than with `SubsecRound::round_subsecs`, whose
/// `DateTime` addition panics at the edge of chrono's range; the caller's
/// final conversion reports out-of-range results instead.
pub(crate) fn round_to_micros(time: DateTime<Utc>) -> i64 {
    let micros = time.timestamp_micros();
    if time.timestamp_subsec_nanos() % 1_000 >= 500 {
        micros.saturating_add(1)
    } else {
        micros
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000_000;

    fn micros(t: DateTime<Utc>) -> i64 {
        t.timestamp_micros()
    }

    #[test]
    fn absolute_times_are_epoch_seconds() {
        assert_eq!(
            resolve(0, 1_654_194_188.0, NOW).map(micros),
            Ok(1_654_194_188_000_000)
        );
        // Exactly 2^28 is absolute.
        assert_eq!(
            resolve(0, RELATIVE_BELOW, NOW).map(micros),
            Ok(268_435_456_000_000)
        );
    }

    #[test]
    fn times_below_2_pow_28_are_relative_to_now() {
        assert_eq!(resolve(0, 0.0, NOW).map(micros), Ok(NOW));
        assert_eq!(resolve(0, 10.0, NOW).map(micros), Ok(NOW + 10_000_000));
        assert_eq!(resolve(0, -60.5, NOW).map(micros), Ok(NOW - 60_500_000));
        assert_eq!(
            resolve(0, RELATIVE_BELOW - 1.0, NOW).map(micros),
            Ok(NOW + 268_435_455_000_000)
        );
    }

    #[test]
    fn rounds_to_whole_microseconds() {
        assert_eq!(
            resolve(0, 1_585_650_750.5, NOW).map(micros),
            Ok(1_585_650_750_500_000)
        );
        assert_eq!(
            resolve(0, 1_585_650_750.123_456_7, NOW).map(micros),
            Ok(1_585_650_750_123_457)
        );
        assert_eq!(resolve(0, 0.000_000_4, NOW).map(micros), Ok(NOW));
        assert_eq!(resolve(0, 0.000_000_6, NOW).map(micros), Ok(NOW + 1));
    }

    #[test]
    fn receipt_time_rounds_half_up() {
        let at = |nanos| DateTime::from_timestamp(1_700_000_000, nanos).expect("valid");
        assert_eq!(round_to_micros(at(0)), NOW);
        assert_eq!(round_to_micros(at(499)), NOW);
        assert_eq!(round_to_micros(at(500)), NOW + 1);
        assert_eq!(round_to_micros(at(123_456_789)), NOW + 123_457);
        assert_eq!(
            round_to_micros(DateTime::<Utc>::MAX_UTC),
            DateTime::<Utc>::MAX_UTC.timestamp_micros() + 1
        );
    }

    #[test]
    fn out_of_range_is_an_error() {
        for seconds in [1e300, -1e300, 1e17, -1e17, f64::INFINITY, f64::NAN] {
            assert_eq!(
                resolve(2, seconds, NOW),
                Err(SenmlError::TimeOutOfRange { record: 2 }),
                "{seconds}"
            );
        }
        assert_eq!(
            SenmlError::TimeOutOfRange { record: 0 }.to_string(),
            "record 0: time out of range"
        );
    }

    #[test]
    fn times_outside_years_1_to_9999_are_refused() {
        let not_storable = Err(SenmlError::TimeNotStorable { record: 1 });
        // Relative (below 2^28) and far in the past; absolute and far in the future.
        assert_eq!(resolve(1, -3e11, NOW), not_storable);
        assert_eq!(resolve(1, 8e12, NOW), not_storable);
        assert_eq!(resolve(1, 253_402_300_800.0, NOW), not_storable);
        // The edges themselves are fine.
        // (Whole seconds: an f64 this large has no microsecond resolution left.)
        let last = resolve(1, 253_402_300_799.0, NOW).expect("in range");
        assert_eq!(last.timestamp_micros(), LATEST_MICROS - 999_999);
        assert!(storable(last));
        let first_relative = (EARLIEST_MICROS - NOW) as f64 / 1e6;
        let first = resolve(1, first_relative, NOW).expect("in range");
        assert_eq!(first.timestamp_micros(), EARLIEST_MICROS);
        assert_eq!(resolve(1, first_relative - 1.0, NOW), not_storable);
        assert_eq!(
            SenmlError::TimeNotStorable { record: 3 }.to_string(),
            "record 3: time is outside the years 0001 to 9999"
        );
        assert!(!storable(
            DateTime::from_timestamp_micros(LATEST_MICROS + 1).expect("chrono range")
        ));
    }
}
