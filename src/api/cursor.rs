//! Opaque keyset-pagination cursors: the (time, id) of the last item of a page, or its id
//! alone for a list in id order.
//!
//! Keyset pagination keeps every page as cheap as the first on large tables, unlike OFFSET.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

pub fn encode(time: DateTime<Utc>, id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", time.timestamp_micros(), id))
}

pub fn decode(text: &str) -> Option<(DateTime<Utc>, i64)> {
    let raw = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
    let raw = std::str::from_utf8(&raw).ok()?;
    let (micros, id) = raw.split_once('.')?;
    Some((
        DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id.parse().ok()?,
    ))
}

/// A cursor of a list in id order (devices): the id of the last item of a page.
pub fn encode_id(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("d.{id}"))
}

pub fn decode_id(text: &str) -> Option<i64> {
    let raw = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("d.")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = DateTime::from_timestamp_micros(1_585_650_750_500_000).unwrap();
        assert_eq!(decode(&encode(t, 42)), Some((t, 42)));
        assert_eq!(decode("not a cursor"), None);
        assert_eq!(decode(""), None);
        assert_eq!(decode_id(&encode_id(42)), Some(42));
        assert_eq!(decode_id(&encode(t, 42)), None);
        assert_eq!(decode_id(""), None);
    }
}
