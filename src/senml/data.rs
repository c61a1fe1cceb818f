//! Decoding `vd` (data values).

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::error::SenmlError;

/// Padding is optional: KPN's device SDK omits it, KPN's documentation
/// shows it, and RFC 8428 §5 (via RFC 4648 §5) allows leaving it out.
const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);

const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Decodes a `vd` string.
///
/// RFC 8428 specifies the URL-safe alphabet, but senders in the wild
/// (including KPN's examples) use the standard one. The two alphabets differ
/// only in `+/` versus `-_`, so the presence of `-` or `_` picks the URL-safe
/// alphabet and everything else is tried as standard; a string mixing both
/// is rejected either way.
pub(crate) fn decode(record: usize, text: &str) -> Result<Vec<u8>, SenmlError> {
    let engine = if text.bytes().any(|b| b == b'-' || b == b'_') {
        &URL_SAFE
    } else {
        &STANDARD
    };
    engine
        .decode(text)
        .map_err(|_| SenmlError::InvalidBase64 { record })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_and_unpadded() {
        assert_eq!(decode(0, "aGFsbG9vb29vISE="), Ok(b"hallooooo!!".to_vec()));
        assert_eq!(decode(0, "aGFsbG9vb29vISE"), Ok(b"hallooooo!!".to_vec()));
        // KPN SDK token vector body: unpadded.
        assert_eq!(decode(0, "aG9paG9pAA"), Ok(b"hoihoi\0".to_vec()));
        assert_eq!(decode(0, "aG9paG9pAA=="), Ok(b"hoihoi\0".to_vec()));
        assert_eq!(decode(0, ""), Ok(Vec::new()));
    }

    #[test]
    fn both_alphabets() {
        let bytes = vec![0xfb, 0xff, 0xbf];
        assert_eq!(decode(0, "+/+/"), Ok(bytes.clone()));
        assert_eq!(decode(0, "-_-_"), Ok(bytes));
        assert_eq!(decode(0, "-_8"), Ok(vec![0xfb, 0xff]));
        assert_eq!(decode(0, "+/8="), Ok(vec![0xfb, 0xff]));
    }

    #[test]
    fn rejects_garbage() {
        for text in ["!!!!", "+/-_", "a", "aG9p aG9p", "aGVsbG8=x", "aGk==="] {
            assert_eq!(
                decode(4, text),
                Err(SenmlError::InvalidBase64 { record: 4 }),
                "{text:?}"
            );
        }
        assert_eq!(
            SenmlError::InvalidBase64 { record: 4 }.to_string(),
            "record 4: field \"vd\" is not valid base64"
        );
    }
}
