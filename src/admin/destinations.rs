//! Adding, listing, rotating and removing destinations.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::{AdminError, conflict_or};
use crate::ingest::verify::destinations::MAX_PENDING;
use crate::secrets::{SecretKey, check_secret, generate_secret};
use crate::store::destinations::{self, DestinationRow, NewDestination};

/// A destination as shown to people: never its secrets.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DestinationInfo {
    pub id: Uuid,
    pub plug: Option<Uuid>,
    pub name: String,
    /// `active`, or `pending` until the first delivery binds a plug.
    pub state: &'static str,
    pub response_code: u16,
    pub required_headers: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    /// Until when the previous secret is still accepted, during a rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
}

impl From<DestinationRow> for DestinationInfo {
    fn from(row: DestinationRow) -> Self {
        DestinationInfo {
            id: row.id,
            plug: row.plug,
            name: row.name,
            state: if row.plug.is_some() {
                "active"
            } else {
                "pending"
            },
            response_code: row.response_code as u16,
            required_headers: row.required_headers.0,
            created_at: row.created_at,
            previous_secret_valid_until: row.previous_expires_at.filter(|t| *t > Utc::now()),
        }
    }
}

/// A destination together with its secret, returned once on creation or rotation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WithSecret {
    #[serde(flatten)]
    pub destination: DestinationInfo,
    /// The secret, only when we generated it: it must then be entered at KPN, and it is
    /// never shown again. A secret the user gave is not echoed back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

pub struct AddRequest {
    pub name: String,
    pub plug: Option<Uuid>,
    pub secret: Option<String>,
    pub response_code: u16,
    pub required_headers: BTreeMap<String, String>,
}

pub async fn add(
    pool: &PgPool,
    key: &SecretKey,
    request: AddRequest,
) -> Result<WithSecret, AdminError> {
    let name = super::checked_name("destination", &request.name)?.to_owned();
    let mut required_headers = BTreeMap::new();
    for (header, value) in request.required_headers {
        let header = header.trim().to_ascii_lowercase();
        if header.is_empty() || http::HeaderName::from_bytes(header.as_bytes()).is_err() {
            return Err(AdminError::Invalid(format!(
                "{header:?} is not a valid header name"
            )));
        }
        // HTTP strips the spaces around a received value, so a stored one must not keep them.
        let value = value.trim().to_owned();
        if http::HeaderValue::from_str(&value).is_err() {
            return Err(AdminError::Invalid(format!(
                "the value of {header} is not a valid header value"
            )));
        }
        required_headers.insert(header, value);
    }
    if !(200..300).contains(&request.response_code) {
        return Err(AdminError::Invalid(
            "the response code must be a 2xx status".into(),
        ));
    }
    if request.plug.is_none() {
        refuse_too_many_pending(pool).await?;
    }
    let (secret, secret_generated) = choose_secret(request.secret)?;
    let id = Uuid::new_v4();
    let new = NewDestination {
        id,
        plug: request.plug,
        name: name.clone(),
        secret_sealed: key.seal(secret.as_bytes(), id.as_bytes()),
        response_code: request.response_code,
        required_headers,
    };
    let row = destinations::insert(pool, &new).await.map_err(|e| {
        conflict_or(e, || {
            format!("a destination named {name:?} or with that plug already exists")
        })
    })?;
    Ok(WithSecret {
        destination: row.into(),
        secret: secret_generated.then_some(secret),
    })
}

/// An unknown plug is tried against at most [`MAX_PENDING`] pending destinations (so that
/// its cost does not depend on how many there are): one more could never be bound.
async fn refuse_too_many_pending(pool: &PgPool) -> Result<(), AdminError> {
    let pending = destinations::list_active(pool)
        .await?
        .iter()
        .filter(|row| row.plug.is_none())
        .count();
    if pending >= MAX_PENDING {
        return Err(AdminError::Invalid(format!(
            "{pending} destinations are already pending (at most {MAX_PENDING}): give the plug \
             UUID, or let one receive its first delivery"
        )));
    }
    Ok(())
}

pub async fn list(pool: &PgPool) -> Result<Vec<DestinationInfo>, AdminError> {
    Ok(destinations::list_active(pool)
        .await?
        .into_iter()
        .map(DestinationInfo::from)
        .collect())
}

pub async fn rotate(
    pool: &PgPool,
    key: &SecretKey,
    plug_or_name: &str,
    secret: Option<String>,
    overlap: Duration,
) -> Result<WithSecret, AdminError> {
    let (secret, secret_generated) = choose_secret(secret)?;
    let row = destinations::find(pool, plug_or_name)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("destination {plug_or_name:?}")))?;
    let sealed = key.seal(secret.as_bytes(), row.id.as_bytes());
    let row = destinations::rotate(pool, row.id, &sealed, overlap)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("destination {plug_or_name:?}")))?;
    Ok(WithSecret {
        destination: row.into(),
        secret: secret_generated.then_some(secret),
    })
}

pub async fn remove(pool: &PgPool, plug_or_name: &str) -> Result<DestinationInfo, AdminError> {
    let row = destinations::find(pool, plug_or_name)
        .await?
        .ok_or_else(|| AdminError::NotFound(format!("destination {plug_or_name:?}")))?;
    if !destinations::remove(pool, row.id).await? {
        return Err(AdminError::NotFound(format!(
            "destination {plug_or_name:?}"
        )));
    }
    Ok(row.into())
}

fn choose_secret(given: Option<String>) -> Result<(String, bool), AdminError> {
    match given {
        Some(secret) => {
            check_secret(&secret)?;
            Ok((secret, false))
        }
        None => Ok((generate_secret(), true)),
    }
}
