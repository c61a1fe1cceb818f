//! Certificate files that are re-read without a restart.
//!
//! Certificates are renewed every few weeks (Let's Encrypt: every 60 to 90 days) by a tool
//! that replaces the files. A restart would drop connections and risk KPN's few delivery
//! attempts, so the files are watched instead: on SIGHUP and whenever a file's size,
//! modification time or inode changes, every pair is loaded and checked again and, if all
//! are good, swapped in for new handshakes. A pair read in the middle of a replacement, or a
//! bad new pair, keeps the old set served and is logged; the next change is tried again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::resolver::CertResolver;
use super::{TlsError, check, kpn_provider, load_pem};

/// One certificate chain file and the file of its private key.
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Loads and checks every pair; any failure fails the whole set.
pub fn load_pairs(pairs: &[CertPair]) -> Result<Vec<Arc<CertifiedKey>>, TlsError> {
    let provider = kpn_provider();
    pairs
        .iter()
        .map(|pair| {
            let (chain, key) = load_pem(&pair.cert, &pair.key)?;
            check::certified_key(&pair.cert, &pair.key, chain, key, &provider).map(Arc::new)
        })
        .collect()
}

/// What identifies a file's current content cheaply.
type Fingerprint = Vec<Option<(SystemTime, u64, u64)>>;

fn fingerprint(pairs: &[CertPair]) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    pairs
        .iter()
        .flat_map(|pair| [&pair.cert, &pair.key])
        .map(|path| {
            std::fs::metadata(path).ok().map(|m| {
                (
                    m.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    m.len(),
                    m.ino(),
                )
            })
        })
        .collect()
}

/// Watches `pairs` and swaps newly loaded keys into `resolver`.
pub struct Reloader {
    pub pairs: Vec<CertPair>,
    pub resolver: Arc<CertResolver>,
    /// How often the files' metadata is compared.
    pub interval: Duration,
}

impl Reloader {
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    async fn run(self, shutdown: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; watching the files only");
                None
            }
        };
        let mut seen = fingerprint(&self.pairs);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The start-up load has already warned; the next check is a day later.
        let mut daily = tokio::time::interval_at(
            tokio::time::Instant::now() + EXPIRY_CHECK_INTERVAL,
            EXPIRY_CHECK_INTERVAL,
        );
        daily.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reason = tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
                _ = daily.tick() => {
                    warn_if_expiring(&self.resolver.current());
                    continue;
                }
                _ = ticker.tick() => {
                    let now = fingerprint(&self.pairs);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "file change"
                }
            };
            self.reload(reason);
        }
    }

    fn reload(&self, reason: &str) {
        match load_pairs(&self.pairs) {
            Ok(keys) => {
                let summary = describe(&keys);
                tracing::info!(reason, certificates = %summary, "certificates reloaded");
                warn_if_expiring(&keys);
                self.resolver.replace(keys);
            }
            Err(e) => {
                tracing::error!(
                    reason,
                    error = %e,
                    "certificate reload failed; still serving the previous certificates"
                );
            }
        }
    }
}

/// How often the served certificates' remaining validity is logged when it runs short.
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// Logs a warning for each served certificate that is due for renewal: KPN stops
/// delivering, silently, once it has expired.
pub fn warn_if_expiring(keys: &[Arc<CertifiedKey>]) {
    let now = check::now_unix();
    for key in keys {
        let Some(facts) = key
            .end_entity_cert()
            .ok()
            .and_then(|c| check::CertFacts::parse(c).ok())
        else {
            continue;
        };
        let days_left = facts.days_left(now);
        if days_left < check::RENEW_WITHIN_DAYS {
            tracing::warn!(
                subject = %facts.subject,
                days_left,
                expires = %check::format_time(facts.not_after),
                "certificate due for renewal: replace the files (they are re-read without a \
                 restart); KPN stops delivering once it expires"
            );
        }
    }
}

/// "subject (expires ...)" for each key, for logs and the banner.
pub fn describe(keys: &[Arc<CertifiedKey>]) -> String {
    keys.iter()
        .map(|key| {
            match key
                .end_entity_cert()
                .ok()
                .and_then(|c| check::CertFacts::parse(c).ok())
            {
                Some(facts) => format!(
                    "{} {:?} (expires {})",
                    facts.subject,
                    key.key.algorithm(),
                    check::format_time(facts.not_after)
                ),
                None => "unparsable certificate".to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
