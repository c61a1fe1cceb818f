//! `Things-Message-Token`: how KPN Things signs a delivery, and how we check it.
//!
//! The token is `hex(SHA-256(body || secret))`: a plain hash over the raw body bytes exactly
//! as they arrived, followed by the shared secret. It is not an HMAC and carries no
//! timestamp or message id, so the same body always has the same token; that is what makes
//! `(destination, token)` a natural idempotency key.
//!
//! Verification never re-serialises the JSON (KPN writes numbers such as `1.76675482e9` that
//! any re-serialiser would change) and compares digests in constant time.

use std::cell::Cell;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A decoded 32-byte token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub [u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.to_hex())
    }
}

impl Token {
    /// Parses 64 hexadecimal characters, upper or lower case.
    pub fn parse(text: &str) -> Option<Token> {
        let text = text.trim();
        if text.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(Token(out))
    }

    /// Lower-case hex, the way KPN writes it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Signs `body` with `secret` exactly as KPN Things does.
    pub fn sign(body: &[u8], secret: &[u8]) -> Token {
        BodyDigest::new(body).finish(secret)
    }
}

/// SHA-256 state after the body bytes, before the secret.
///
/// Hashing the body dominates the cost of checking a token; the secret adds at most two
/// compression rounds. Keeping the body state lets us try every candidate secret of a
/// destination (current, previous during a rotation, pending ones) for the price of one.
#[derive(Clone)]
pub struct BodyDigest {
    body: Sha256,
    /// Finishes computed so far: what a verification costs beyond the body, which must not
    /// depend on which plug was named (tests check it).
    finishes: Cell<usize>,
}

impl BodyDigest {
    pub fn new(body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(body);
        BodyDigest {
            body: hasher,
            finishes: Cell::new(0),
        }
    }

    /// The token this body would carry if signed with `secret`.
    pub fn finish(&self, secret: &[u8]) -> Token {
        self.finishes.set(self.finishes.get() + 1);
        let mut hasher = self.body.clone();
        hasher.update(secret);
        Token(hasher.finalize().into())
    }

    /// How many times [`finish`](Self::finish) (or `verify`) has run on this digest.
    pub fn finishes(&self) -> usize {
        self.finishes.get()
    }

    /// Whether `token` is this body signed with `secret`, compared in constant time.
    pub fn verify(&self, secret: &[u8], token: &Token) -> bool {
        self.finish(secret).0.ct_eq(&token.0).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KPN's own device SDK test vectors (see tests/fixtures/token-vectors.json).
    #[test]
    fn kpn_vectors() {
        let vectors: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../tests/fixtures/token-vectors.json")).unwrap();
        assert_eq!(vectors.len(), 3);
        for v in vectors {
            let body = v["body"].as_str().unwrap().as_bytes();
            let secret = v["secret"].as_str().unwrap().as_bytes();
            let token = Token::parse(v["token"].as_str().unwrap()).unwrap();
            assert_eq!(Token::sign(body, secret), token);
            assert!(BodyDigest::new(body).verify(secret, &token));
            assert!(!BodyDigest::new(body).verify(b"MYKEY3", &token));
        }
    }

    #[test]
    fn parse_accepts_either_case_and_rejects_junk() {
        let lower = "4d53c667486bb4679922b901dd733a936a07983f73275941abfb3068a0ba8748";
        let upper = lower.to_uppercase();
        assert_eq!(Token::parse(lower), Token::parse(&upper));
        assert_eq!(Token::parse(lower).unwrap().to_hex(), lower);
        assert!(Token::parse(&lower[1..]).is_none());
        assert!(Token::parse(&format!("{}0", lower)).is_none());
        assert!(Token::parse(&lower.replace('4', "g")).is_none());
        assert!(Token::parse("").is_none());
    }

    #[test]
    fn one_changed_byte_fails() {
        let token = Token::sign(b"[{\"n\":\"a\",\"v\":1}]", b"secret");
        assert!(!BodyDigest::new(b"[{\"n\":\"a\",\"v\":2}]").verify(b"secret", &token));
    }
}
