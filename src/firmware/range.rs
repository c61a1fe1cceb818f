//! `Range: bytes=...` as RFC 9110 section 14 has it, for one image of `total` bytes (never
//! empty): a single range (`a-b`, `a-`, `-n`) is served clipped to the image; a start past
//! the end is unsatisfiable (416); several ranges, another unit or a malformed header are
//! answered with the whole image, which the RFC allows (a server MAY ignore `Range`).

/// What to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// 200 with the whole image.
    Whole,
    /// 206 with bytes `first..=last` (`last` already clipped to `total - 1`).
    Part { first: u64, last: u64 },
    /// 416 with `Content-Range: bytes */total`.
    Unsatisfiable,
}

/// The answer to a request with the `Range` header `header` (if any).
pub fn answer(header: Option<&str>, total: u64) -> Answer {
    let Some(header) = header else {
        return Answer::Whole;
    };
    if total == 0 {
        // Images are never empty; should one be, no range of it exists.
        return Answer::Unsatisfiable;
    }
    let Some(spec) = strip_unit(header.trim()) else {
        return Answer::Whole;
    };
    if spec.contains(',') {
        return Answer::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Answer::Whole;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix: the last n bytes; all of them when n exceeds the image.
        let Some(n) = number(last) else {
            return Answer::Whole;
        };
        if n == 0 {
            return Answer::Unsatisfiable;
        }
        return Answer::Part {
            first: total.saturating_sub(n),
            last: total - 1,
        };
    }
    let Some(first) = number(first) else {
        return Answer::Whole;
    };
    let last = if last.is_empty() {
        u64::MAX
    } else {
        match number(last) {
            Some(last) if last >= first => last,
            // `a-b` with b < a is an invalid range: the header is ignored.
            _ => return Answer::Whole,
        }
    };
    if first >= total {
        return Answer::Unsatisfiable;
    }
    Answer::Part {
        first,
        last: last.min(total - 1),
    }
}

/// The range set after `bytes=` (the unit is case-insensitive), or `None` for another unit.
fn strip_unit(header: &str) -> Option<&str> {
    let (unit, rest) = header.split_once('=')?;
    unit.trim().eq_ignore_ascii_case("bytes").then_some(rest)
}

/// A non-empty run of ASCII digits that fits in a u64.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::Answer::*;
    use super::*;

    const TOTAL: u64 = 1000;

    fn at(header: &str) -> Answer {
        answer(Some(header), TOTAL)
    }

    #[test]
    fn no_header_is_the_whole_image() {
        assert_eq!(answer(None, TOTAL), Whole);
    }

    #[test]
    fn first_and_last_bytes() {
        assert_eq!(at("bytes=0-0"), Part { first: 0, last: 0 });
        assert_eq!(at("bytes=0-99"), Part { first: 0, last: 99 });
        assert_eq!(
            at("bytes=999-999"),
            Part {
                first: 999,
                last: 999
            }
        );
        assert_eq!(
            at("bytes=0-999"),
            Part {
                first: 0,
                last: 999
            }
        );
    }

    #[test]
    fn the_last_range_is_clipped() {
        assert_eq!(
            at("bytes=768-1023"),
            Part {
                first: 768,
                last: 999
            }
        );
        assert_eq!(
            at("bytes=999-1000"),
            Part {
                first: 999,
                last: 999
            }
        );
        assert_eq!(
            at("bytes=0-18446744073709551615"),
            Part {
                first: 0,
                last: 999
            }
        );
    }

    #[test]
    fn open_ended_and_suffix() {
        assert_eq!(
            at("bytes=900-"),
            Part {
                first: 900,
                last: 999
            }
        );
        assert_eq!(
            at("bytes=0-"),
            Part {
                first: 0,
                last: 999
            }
        );
        assert_eq!(
            at("bytes=-1"),
            Part {
                first: 999,
                last: 999
            }
        );
        assert_eq!(
            at("bytes=-100"),
            Part {
                first: 900,
                last: 999
            }
        );
        assert_eq!(
            at("bytes=-1000"),
            Part {
                first: 0,
                last: 999
            }
        );
        assert_eq!(
            at("bytes=-5000"),
            Part {
                first: 0,
                last: 999
            }
        );
    }

    #[test]
    fn a_start_past_the_end_is_unsatisfiable() {
        assert_eq!(at("bytes=1000-1000"), Unsatisfiable);
        assert_eq!(at("bytes=1000-"), Unsatisfiable);
        assert_eq!(at("bytes=5000-6000"), Unsatisfiable);
        assert_eq!(at("bytes=-0"), Unsatisfiable);
    }

    #[test]
    fn several_ranges_other_units_and_malformed_headers_get_the_whole_image() {
        for header in [
            "bytes=0-1,5-6",
            "bytes=0-1, 2000-3000",
            "items=0-1",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=+1-2",
            "bytes=1-2-3",
            "bytes=99999999999999999999-",
            "bytes=0x10-",
        ] {
            assert_eq!(at(header), Whole, "{header}");
        }
    }

    #[test]
    fn the_unit_is_case_insensitive_and_whitespace_is_tolerated() {
        assert_eq!(at("Bytes=0-9"), Part { first: 0, last: 9 });
        assert_eq!(
            at(" bytes = 10 - 19 "),
            Part {
                first: 10,
                last: 19
            }
        );
    }

    #[test]
    fn an_empty_image_has_no_range() {
        assert_eq!(answer(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(answer(Some("bytes=-1"), 0), Unsatisfiable);
    }

    #[test]
    fn a_one_byte_image() {
        assert_eq!(answer(Some("bytes=0-"), 1), Part { first: 0, last: 0 });
        assert_eq!(answer(Some("bytes=-9"), 1), Part { first: 0, last: 0 });
        assert_eq!(answer(Some("bytes=1-"), 1), Unsatisfiable);
    }
}
