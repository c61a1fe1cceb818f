//! Download tokens: one bearer token per (campaign, device), derived from the target's random
//! id under the secret key, so that it needs no storage in the clear: the database keeps only
//! its SHA-256, and every process holding the key can put it in a notification again (a
//! retried uplink, another replica).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::secrets::SecretKey;

const PURPOSE: &str = "things-receiver fota download token";

/// The token of target `id`: 43 URL-safe characters (256 bits).
pub fn derive(key: &SecretKey, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(key.derive(PURPOSE, id.as_bytes()))
}

/// What is stored of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `presented` is the token whose hash is `stored`, in constant time.
pub fn matches(presented: &str, stored: &[u8]) -> bool {
    bool::from(hash(presented)[..].ct_eq(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_per_target_and_match_only_their_hash() {
        let dir = tempfile::tempdir().unwrap();
        let key = SecretKey::load(None, &dir.path().join("k"), true).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let ta = derive(&key, a);
        assert_eq!(ta, derive(&key, a));
        assert_ne!(ta, derive(&key, b));
        assert_eq!(ta.len(), 43);
        assert!(matches(&ta, &hash(&ta)));
        assert!(!matches(&derive(&key, b), &hash(&ta)));
        assert!(!matches("", &hash(&ta)));
    }
}
