//! The pack an uplink's answer carries to start a download, exactly as KPN's FOTA document
//! shows it: `[{"bn":URN},{"n":"url","vs":"<base>/f/v1/<uuid>"},{"n":"token","vs":TOKEN}]`.

use crate::secrets::SecretKey;
use crate::store::deliveries::FotaNotice;

use super::FILE_PATH_PREFIX;

/// What the device doors need to write a notification: the key its token derives from.
#[derive(Clone)]
pub struct Notifier {
    pub key: SecretKey,
}

impl Notifier {
    /// The pack for `notice`, the same every time for the same target.
    pub fn pack(&self, notice: &FotaNotice) -> String {
        let url = file_url(&notice.base_url, notice.target);
        let token = super::token::derive(&self.key, notice.target);
        serde_json::json!([
            {"bn": notice.urn},
            {"n": "url", "vs": url},
            {"n": "token", "vs": token},
        ])
        .to_string()
    }
}

/// `<base>/f/v1/<uuid>`, whether or not the base ends in a slash.
pub fn file_url(base: &str, target: uuid::Uuid) -> String {
    format!("{}{FILE_PATH_PREFIX}{target}", base.trim_end_matches('/'))
}
