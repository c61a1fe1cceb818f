//! What a proxy or a client library may do to a body between signing and sending: each
//! transformation of the received bytes that the token is tried against.

/// A change of the body, or `None` when it would change nothing.
type Transformation = fn(&[u8]) -> Option<Vec<u8>>;

/// The transformations, by the name the diagnosis gives, narrowest first (stripping white
/// space also removes a trailing newline: the narrower explanation is named).
pub const TRANSFORMATIONS: &[(&str, Transformation)] = &[
    ("trailing_newline_removed", trailing_newline_removed),
    ("crlf_to_lf", crlf_to_lf),
    ("whitespace_stripped", whitespace_stripped),
    ("json_reserialised", json_reserialised),
];

/// White space outside JSON strings removed; `None` when there is none.
fn whitespace_stripped(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            out.push(b);
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if !b.is_ascii_whitespace() {
            in_string = b == b'"';
            out.push(b);
        }
    }
    (out.len() != body.len()).then_some(out)
}

fn crlf_to_lf(body: &[u8]) -> Option<Vec<u8>> {
    if !body.windows(2).any(|w| w == b"\r\n") {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\r' && body.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(body[i]);
        i += 1;
    }
    Some(out)
}

fn trailing_newline_removed(body: &[u8]) -> Option<Vec<u8>> {
    let cut = body
        .strip_suffix(b"\r\n")
        .or_else(|| body.strip_suffix(b"\n"))?;
    Some(cut.to_vec())
}

/// Parsed and written again by serde_json (compact, numbers as serde_json writes them).
fn json_reserialised(body: &[u8]) -> Option<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let out = serde_json::to_vec(&value).ok()?;
    (out != body).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_transformation() {
        assert_eq!(
            whitespace_stripped(b"[ {\"n\": \"a b\"} ]\n").unwrap(),
            b"[{\"n\":\"a b\"}]"
        );
        assert_eq!(whitespace_stripped(b"[1]"), None);
        assert_eq!(crlf_to_lf(b"[\r\n1]\r\n").unwrap(), b"[\n1]\n");
        assert_eq!(crlf_to_lf(b"[1]\n"), None);
        assert_eq!(trailing_newline_removed(b"[1]\r\n").unwrap(), b"[1]");
        assert_eq!(trailing_newline_removed(b"[1]"), None);
        assert_eq!(
            json_reserialised(b"[ {\"v\": 1, \"n\": \"t\"} ]").unwrap(),
            serde_json::to_vec(&serde_json::json!([{"v": 1, "n": "t"}])).unwrap()
        );
        assert_eq!(json_reserialised(b"[{\"v\":1}]"), None);
        assert_eq!(json_reserialised(b"not json"), None);
    }
}
