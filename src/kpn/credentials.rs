//! The API key (client id and secret) for KPN's identity provider.
//!
//! Read from the environment or from a file, never from flags: a flag's value shows in `ps`
//! and in shell history. The secret is kept out of `Debug` output so it cannot reach a log.

use std::fmt;
use std::path::{Path, PathBuf};

pub const CLIENT_ID_VAR: &str = "KPN_CLIENT_ID";
pub const CLIENT_SECRET_VAR: &str = "KPN_CLIENT_SECRET";

/// What to configure for downlinks, for messages that refuse them.
pub const HOW_TO_CONFIGURE: &str = "downlinks need KPN API credentials: set KPN_CLIENT_ID and \
     KPN_CLIENT_SECRET (or --kpn-credentials-file) and KPN_TENANT_ID (--kpn-tenant) for serve";

#[derive(Clone)]
pub struct Credentials {
    pub client_id: String,
    secret: String,
}

impl Credentials {
    pub fn new(client_id: impl Into<String>, secret: impl Into<String>) -> Credentials {
        Credentials {
            client_id: client_id.into(),
            secret: secret.into(),
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read the KPN credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the KPN credentials file {path} lacks {missing}")]
    Incomplete {
        path: PathBuf,
        missing: &'static str,
    },
    #[error("{present} is set but {missing} is not: set both")]
    HalfSet {
        present: &'static str,
        missing: &'static str,
    },
}

/// The credentials from `file` if given, else from the environment; `None` when neither
/// configures any (downlinks are then refused, the rest of the service runs).
pub fn load(file: Option<&Path>) -> Result<Option<Credentials>, CredentialsError> {
    match file {
        Some(path) => from_file(path).map(Some),
        None => from_pairs(
            std::env::var(CLIENT_ID_VAR).ok(),
            std::env::var(CLIENT_SECRET_VAR).ok(),
        ),
    }
}

fn from_pairs(
    id: Option<String>,
    secret: Option<String>,
) -> Result<Option<Credentials>, CredentialsError> {
    let id = id.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let secret = secret
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    match (id, secret) {
        (Some(id), Some(secret)) => Ok(Some(Credentials::new(id, secret))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(CredentialsError::HalfSet {
            present: CLIENT_ID_VAR,
            missing: CLIENT_SECRET_VAR,
        }),
        (None, Some(_)) => Err(CredentialsError::HalfSet {
            present: CLIENT_SECRET_VAR,
            missing: CLIENT_ID_VAR,
        }),
    }
}

/// `KEY=VALUE` lines (an env file, as container secrets are often mounted); blank lines and
/// `#` comments are ignored, values may be quoted.
fn from_file(path: &Path) -> Result<Credentials, CredentialsError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (id, secret) = parse_env_file(&text);
    let incomplete = |missing| CredentialsError::Incomplete {
        path: path.to_owned(),
        missing,
    };
    let id = id.ok_or_else(|| incomplete(CLIENT_ID_VAR))?;
    let secret = secret.ok_or_else(|| incomplete(CLIENT_SECRET_VAR))?;
    Ok(Credentials::new(id, secret))
}

fn parse_env_file(text: &str) -> (Option<String>, Option<String>) {
    let (mut id, mut secret) = (None, None);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_start_matches("export ").trim();
        let value = unquote(value.trim());
        if value.is_empty() {
            continue;
        }
        match key {
            CLIENT_ID_VAR => id = Some(value.to_owned()),
            CLIENT_SECRET_VAR => secret = Some(value.to_owned()),
            _ => {}
        }
    }
    (id, secret)
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_lines() {
        let text = "# KPN\nexport KPN_CLIENT_ID=abc\nKPN_CLIENT_SECRET=\"s3=cr#t\"\nOTHER=x\n";
        assert_eq!(
            parse_env_file(text),
            (Some("abc".into()), Some("s3=cr#t".into()))
        );
        assert_eq!(parse_env_file("KPN_CLIENT_ID=\n"), (None, None));
    }

    #[test]
    fn both_or_neither() {
        assert!(from_pairs(None, None).unwrap().is_none());
        assert!(from_pairs(Some("id".into()), Some(" ".into())).is_err());
        let c = from_pairs(Some("id".into()), Some("secret".into()))
            .unwrap()
            .unwrap();
        assert_eq!((c.client_id.as_str(), c.secret()), ("id", "secret"));
        assert!(!format!("{c:?}").contains("secret\""));
    }
}
