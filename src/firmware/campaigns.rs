//! Campaigns: the desired version for a set of registered devices, and each device's way
//! there (`pending` -> `notified` -> `downloading` -> `downloaded` -> `updated`, or `failed`,
//! or `cancelled`), with the time of every transition. One implementation for the CLI and
//! the API.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{BASE_URL_NEEDED, FirmwareError, files::checked_text, token};
use crate::secrets::SecretKey;
use crate::senml::device_key;
use crate::store::fota::{self, CampaignRow, NewCampaign, NewTarget, StartRefused, TargetRow};
use crate::store::{device_keys, firmware};

/// Every state, in the order a device goes through them.
pub const STATES: [&str; 7] = [
    "pending",
    "notified",
    "downloading",
    "downloaded",
    "updated",
    "failed",
    "cancelled",
];

/// Most devices in one campaign.
pub const MAX_DEVICES: usize = 10_000;

/// A campaign to start.
pub struct StartRequest<'a> {
    pub firmware: &'a str,
    pub devices: &'a [String],
    pub name: Option<&'a str>,
    /// `--fota-base-url`: refused without it.
    pub base_url: Option<&'a str>,
    /// `--fota-version-name`.
    pub version_name: &'a str,
}

/// One device of a campaign.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeviceView {
    pub urn: String,
    /// pending, notified, downloading, downloaded, updated, failed or cancelled.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported_version: Option<String>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    pub bytes_served: i64,
    pub parts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_part_at: Option<DateTime<Utc>>,
    /// When it entered each state it went through.
    pub transitions: BTreeMap<String, DateTime<Utc>>,
}

impl From<TargetRow> for DeviceView {
    fn from(row: TargetRow) -> Self {
        let times = [
            ("pending", Some(row.pending_at)),
            ("notified", row.notified_at),
            ("downloading", row.downloading_at),
            ("downloaded", row.downloaded_at),
            ("updated", row.updated_at),
            ("failed", row.failed_at),
            ("cancelled", row.cancelled_at),
        ];
        DeviceView {
            urn: row.urn,
            state: row.state,
            reported_version: row.reported_version,
            failure: row.failure,
            bytes_served: row.bytes_served,
            parts: row.parts,
            last_part_at: row.last_part_at,
            transitions: times
                .into_iter()
                .filter_map(|(s, t)| t.map(|t| (s.to_owned(), t)))
                .collect(),
        }
    }
}

/// A campaign as shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CampaignView {
    pub id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The desired version.
    pub firmware: String,
    pub base_url: String,
    /// The record devices report their version in.
    pub version_name: String,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Every device is updated, failed or cancelled.
    pub finished: bool,
    /// Devices per state (every state, zeros included).
    pub counts: BTreeMap<String, i64>,
    /// Each device, in URN order (only for one campaign).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceView>>,
}

fn view(row: CampaignRow, targets: Vec<TargetRow>, with_devices: bool) -> CampaignView {
    let mut counts: BTreeMap<String, i64> = STATES.iter().map(|s| (s.to_string(), 0)).collect();
    for t in &targets {
        *counts.entry(t.state.clone()).or_default() += 1;
    }
    let finished = targets
        .iter()
        .all(|t| matches!(t.state.as_str(), "updated" | "failed" | "cancelled"));
    CampaignView {
        id: row.id,
        name: row.name,
        firmware: row.firmware_version,
        base_url: row.base_url,
        version_name: row.version_name,
        created_at: row.created_at,
        cancelled_at: row.cancelled_at,
        finished,
        counts,
        devices: with_devices.then(|| targets.into_iter().map(DeviceView::from).collect()),
    }
}

/// Starts a campaign: every listed device must be registered (404 names the first that is
/// not) and in no unfinished campaign (409). A device whose latest report already is the
/// desired version is `updated` at once.
pub async fn start(
    pool: &PgPool,
    key: &SecretKey,
    request: &StartRequest<'_>,
) -> Result<CampaignView, FirmwareError> {
    let base_url = check_base_url(request.base_url)?;
    let version_name = checked_text("version record name", request.version_name)?;
    let name = request.name.map(|n| checked_text("name", n)).transpose()?;
    if request.devices.is_empty() {
        return Err(FirmwareError::Invalid(
            "a campaign needs at least one device".into(),
        ));
    }
    if request.devices.len() > MAX_DEVICES {
        return Err(FirmwareError::Invalid(format!(
            "a campaign has at most {MAX_DEVICES} devices"
        )));
    }
    let image = firmware::get_by_version(pool, request.firmware.trim())
        .await?
        .ok_or_else(|| FirmwareError::NotFound(format!("firmware version {}", request.firmware)))?;
    let mut targets: Vec<NewTarget> = Vec::with_capacity(request.devices.len());
    for urn in request.devices {
        let registration = device_keys::get(pool, &device_key(urn.trim()))
            .await?
            .ok_or_else(|| FirmwareError::NotFound(format!("registered device {}", urn.trim())))?;
        if targets.iter().any(|t| t.device_key_id == registration.id) {
            continue;
        }
        let id = Uuid::new_v4();
        targets.push(NewTarget {
            id,
            device_key_id: registration.id,
            urn: registration.urn,
            token_hash: token::hash(&token::derive(key, id)),
        });
    }
    let new = NewCampaign {
        id: Uuid::new_v4(),
        name,
        firmware_id: image.id,
        firmware_version: &image.version,
        base_url,
        version_name,
        targets,
    };
    match fota::start(pool, &new).await {
        Ok(_) => {}
        Err(StartRefused::Busy(urns)) => {
            return Err(FirmwareError::Conflict(if urns.is_empty() {
                "a device was just put in another campaign".into()
            } else {
                format!(
                    "already in a campaign that is not finished: {}",
                    urns.join(", ")
                )
            }));
        }
        Err(StartRefused::FirmwareGone) => {
            return Err(FirmwareError::NotFound(format!(
                "firmware version {} (removed just now)",
                image.version
            )));
        }
        Err(StartRefused::Database(e)) => return Err(e.into()),
    }
    get(pool, new.id).await
}

/// An absolute `http://` or `https://` URL without query or fragment.
fn check_base_url(base: Option<&str>) -> Result<&str, FirmwareError> {
    let base = base
        .map(str::trim)
        .filter(|b| !b.is_empty())
        .ok_or(FirmwareError::NotConfigured(BASE_URL_NEEDED))?;
    let ok = match reqwest::Url::parse(base) {
        Ok(url) => {
            matches!(url.scheme(), "http" | "https")
                && url.host().is_some()
                && url.query().is_none()
                && url.fragment().is_none()
        }
        Err(_) => false,
    };
    if !ok {
        return Err(FirmwareError::Invalid(format!(
            "--fota-base-url {base:?} is not an http:// or https:// URL without query"
        )));
    }
    Ok(base.trim_end_matches('/'))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<CampaignView, FirmwareError> {
    let row = fota::campaign(pool, id)
        .await?
        .ok_or_else(|| FirmwareError::NotFound(format!("campaign {id}")))?;
    let targets = fota::targets(pool, &[id]).await?;
    Ok(view(row, targets, true))
}

/// Every campaign, newest first, with its counts.
pub async fn list(pool: &PgPool) -> Result<Vec<CampaignView>, FirmwareError> {
    let rows = fota::campaigns(pool).await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut by_campaign: BTreeMap<Uuid, Vec<TargetRow>> = BTreeMap::new();
    for t in fota::targets(pool, &ids).await? {
        by_campaign.entry(t.campaign_id).or_default().push(t);
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let targets = by_campaign.remove(&r.id).unwrap_or_default();
            view(r, targets, false)
        })
        .collect())
}

/// Cancels a campaign: its devices not yet updated are `cancelled`, their links answer 410.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<CampaignView, FirmwareError> {
    if !fota::cancel(pool, id).await? {
        return Err(FirmwareError::NotFound(format!("campaign {id}")));
    }
    get(pool, id).await
}
