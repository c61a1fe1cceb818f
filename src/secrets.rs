//! Shared secrets: generated to KPN's rules, and encrypted at rest.
//!
//! A destination's shared secret is what lets anyone forge deliveries, so the database only
//! ever holds it sealed with XChaCha20-Poly1305 under a key that lives outside the database
//! (a key file or an environment variable). The destination id is the associated data, so a
//! sealed secret copied onto another row does not open. A check value sealed with the same key
//! makes a wrong key fail loudly at start instead of as a stream of 401s.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::Rng;

use crate::config::DbArgs;

/// Characters KPN accepts as the "special" class of a destination secret.
pub const SPECIAL_CHARACTERS: &str = "#?!@$%^&(){}:.,/+*;";
/// KPN documents both 30 and 32 as the minimum; we accept the lower and generate more.
pub const MIN_SECRET_LEN: usize = 30;
const GENERATED_SECRET_LEN: usize = 40;
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the secret key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the secret key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the secret key in {origin} is not valid: expected 32 bytes in base64 (generate one with: head -c 32 /dev/urandom | base64)"
    )]
    Malformed { origin: String },
    #[error(
        "the secret key from {origin} does not match the key this database's secrets were encrypted with; \
         use the original key (--secret-key-file or THINGS_SECRET_KEY) or point at another database"
    )]
    WrongKey { origin: String },
}

/// Why a stored secret could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("a stored secret could not be decrypted with the configured key")]
pub struct SealError;

/// The symmetric key that seals secrets at rest.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
    /// A key for deriving values (HMAC-SHA-256), itself derived from the sealing key so that
    /// no value derived with it can reveal or be confused with the sealing key.
    derive: [u8; 32],
    origin: String,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(from {})", self.origin)
    }
}

/// The key `serve` and every CLI command use: `THINGS_SECRET_KEY`, or else the key file
/// (`--secret-key-file`, default `DATA_DIR/secret.key`). Only the default location is created
/// automatically: an explicitly named file that does not exist is a configuration mistake,
/// not a first run.
pub fn open_key(db_args: &DbArgs) -> Result<SecretKey, KeyError> {
    let env_key = std::env::var("THINGS_SECRET_KEY").ok();
    let create = db_args.secret_key_file.is_none();
    SecretKey::load(env_key.as_deref(), &db_args.secret_key_path(), create)
}

impl SecretKey {
    /// Loads the key from the environment value if given, else from `file`, creating the
    /// file with a fresh random key when `create` is set and it does not exist yet.
    pub fn load(env_value: Option<&str>, file: &Path, create: bool) -> Result<Self, KeyError> {
        if let Some(text) = env_value {
            return Self::from_base64(text, "THINGS_SECRET_KEY".into());
        }
        let origin = file.display().to_string();
        match std::fs::read_to_string(file) {
            Ok(text) => {
                warn_if_exposed(file);
                Self::from_base64(&text, origin)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut key = [0u8; 32];
                rand::rng().fill(&mut key);
                write_private(file, format!("{}\n", STANDARD.encode(key)).as_bytes()).map_err(
                    |source| KeyError::Create {
                        path: file.to_owned(),
                        source,
                    },
                )?;
                tracing::info!(path = %file.display(), "created a new secret key");
                Ok(Self::from_bytes(&key, origin))
            }
            Err(source) => Err(KeyError::Read {
                path: file.to_owned(),
                source,
            }),
        }
    }

    fn from_base64(text: &str, origin: String) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::Malformed {
                origin: origin.clone(),
            })?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed {
            origin: origin.clone(),
        })?;
        Ok(Self::from_bytes(&key, origin))
    }

    fn from_bytes(key: &[u8; 32], origin: String) -> Self {
        SecretKey {
            cipher: XChaCha20Poly1305::new(key.into()),
            derive: hmac_sha256(key, b"things-receiver derivation key"),
            origin,
        }
    }

    /// A value only holders of this key can compute from `input` (HMAC-SHA-256 under a key
    /// derived from this one): for secrets that need not be stored because every process
    /// and command holding the key can compute them again, such as firmware download tokens.
    pub fn derive(&self, purpose: &str, input: &[u8]) -> [u8; 32] {
        let mut message = Vec::with_capacity(purpose.len() + 1 + input.len());
        message.extend_from_slice(purpose.as_bytes());
        message.push(0);
        message.extend_from_slice(input);
        hmac_sha256(&self.derive, &message)
    }

    /// Where the key came from, for error messages (never the key itself).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Encrypts `plaintext` bound to `context`: random nonce followed by the ciphertext.
    pub fn seal(&self, plaintext: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill(&mut nonce);
        let nonce = XNonce::from(nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context,
                },
            )
            .expect("XChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts what [`seal`](Self::seal) produced with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context,
                },
            )
            .map_err(|_| SealError)
    }

    /// The error to report when this key fails to open the database's check value.
    pub fn wrong_key(&self) -> KeyError {
        KeyError::WrongKey {
            origin: self.origin.clone(),
        }
    }
}

/// Warns when group or others may read the key file: whoever reads it can open every stored
/// secret and forge deliveries. A warning, not a refusal, because secret mounts (Kubernetes'
/// default mode is 0644) are often readable only inside a container of one user anyway.
fn warn_if_exposed(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(file) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o044 != 0 {
        tracing::warn!(path = %file.display(), mode = format!("{mode:04o}"),
            "the secret key file can be read by group or others: chmod 600 it");
    }
}

/// Writes a file readable by its owner only, refusing to overwrite an existing one; the file
/// and its directory entry are fsynced, so a key that sealed secrets is never lost to a crash.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)?.sync_all()
}

/// Why a user-supplied shared secret was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SecretRuleError {
    #[error("the secret has {0} characters; KPN Things requires at least {MIN_SECRET_LEN}")]
    TooShort(usize),
    #[error("the secret may contain printable ASCII characters only, without spaces")]
    NotPrintable,
}

/// Checks a secret given by the user (who configured it at KPN, which enforced its own rules).
pub fn check_secret(secret: &str) -> Result<(), SecretRuleError> {
    if !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SecretRuleError::NotPrintable);
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(SecretRuleError::TooShort(secret.len()));
    }
    Ok(())
}

/// A fresh secret that satisfies every rule KPN applies: 40 characters with at least one
/// upper-case letter, one lower-case letter, one digit and one of KPN's special characters.
pub fn generate_secret() -> String {
    const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
    const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
    const DIGIT: &[u8] = b"23456789";
    let special = SPECIAL_CHARACTERS.as_bytes();
    let all: Vec<u8> = [UPPER, LOWER, DIGIT, special].concat();
    let mut rng = rand::rng();
    let mut pick = |set: &[u8]| set[rng.random_range(0..set.len())];
    let mut chars: Vec<u8> = vec![pick(UPPER), pick(LOWER), pick(DIGIT), pick(special)];
    while chars.len() < GENERATED_SECRET_LEN {
        chars.push(pick(&all));
    }
    // Shuffle so the guaranteed classes are not always in front.
    for i in (1..chars.len()).rev() {
        let j = rng.random_range(0..=i);
        chars.swap(i, j);
    }
    String::from_utf8(chars).expect("the alphabet is ASCII")
}

/// A random token-like string from an alphanumeric alphabet (API keys, device secrets).
pub fn random_alphanumeric(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// HMAC-SHA-256 (RFC 2104) over `sha2`, the hash already in use here.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut inner = Sha256::new();
    let mut outer = Sha256::new();
    let mut pad = [0u8; 64];
    pad[..32].copy_from_slice(key);
    inner.update(pad.map(|b| b ^ 0x36));
    outer.update(pad.map(|b| b ^ 0x5c));
    inner.update(message);
    outer.update(inner.finalize());
    outer.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_bytes(&[7u8; 32], "test".into())
    }

    #[test]
    fn seal_round_trips_and_binds_context() {
        let sealed = key().seal(b"s3cret", b"dest-1");
        assert_ne!(&sealed[NONCE_LEN..], b"s3cret");
        assert_eq!(key().open(&sealed, b"dest-1").unwrap(), b"s3cret");
        assert!(key().open(&sealed, b"dest-2").is_err());
        let other = SecretKey::from_bytes(&[8u8; 32], "other".into());
        assert!(other.open(&sealed, b"dest-1").is_err());
        assert!(key().open(&sealed[..10], b"dest-1").is_err());
    }

    #[test]
    fn generated_secrets_follow_kpn_rules() {
        for _ in 0..200 {
            let s = generate_secret();
            assert!(s.len() >= 32);
            assert!(s.bytes().any(|b| b.is_ascii_uppercase()));
            assert!(s.bytes().any(|b| b.is_ascii_lowercase()));
            assert!(s.bytes().any(|b| b.is_ascii_digit()));
            assert!(s.chars().any(|c| SPECIAL_CHARACTERS.contains(c)));
            assert!(check_secret(&s).is_ok());
        }
        assert_ne!(generate_secret(), generate_secret());
    }

    #[test]
    fn short_or_unprintable_secrets_are_refused() {
        assert_eq!(check_secret("abc"), Err(SecretRuleError::TooShort(3)));
        assert_eq!(
            check_secret(&format!("{} x", "a".repeat(40))),
            Err(SecretRuleError::NotPrintable)
        );
        assert!(check_secret(&"a".repeat(30)).is_ok());
    }

    #[test]
    fn key_file_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let a = SecretKey::load(None, &path, true).unwrap();
        let sealed = a.seal(b"x", b"c");
        let b = SecretKey::load(None, &path, true).unwrap();
        assert_eq!(b.open(&sealed, b"c").unwrap(), b"x");
        let mode = std::fs::metadata(&path).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
        assert!(matches!(
            SecretKey::load(Some("bm90IGEga2V5"), &path, true),
            Err(KeyError::Malformed { .. })
        ));
        assert!(matches!(
            SecretKey::load(None, &dir.path().join("missing"), false),
            Err(KeyError::Read { .. })
        ));
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 1: a 20-byte key is zero-padded to the block like any short key.
        let mut key = [0u8; 32];
        key[..20].copy_from_slice(&[0x0b; 20]);
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }
}
