//! `/console/session`: signing in with an API key, the current session, signing out.
//!
//! The key is typed once into the page's form and exchanged for a session cookie
//! (`web::session`), so it never sits in the browser's storage; the page reads its CSRF token
//! and scopes from `GET /console/session`. Wrong keys count against the address like wrong
//! bearer keys do, so the form is no faster a guessing oracle than the API.

use std::net::SocketAddr;

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::assets::secure;
use crate::admin::key_hash;
use crate::error::AppError;
use crate::store::console_sessions::{self, SessionRow};
use crate::time_format::format_time;
use crate::web::session;
use crate::web::state::ApiKeyState;

/// A sign-in form is one field; nothing longer is read.
const MAX_FORM: usize = 4096;

#[derive(Deserialize)]
struct SignIn {
    key: String,
}

/// What the page learns of its session.
#[derive(Serialize)]
struct SessionView {
    scopes: Vec<String>,
    csrf: String,
    expires_at: String,
}

impl From<SessionRow> for SessionView {
    fn from(row: SessionRow) -> Self {
        SessionView {
            scopes: row.scopes,
            csrf: row.csrf,
            expires_at: format_time(row.expires_at),
        }
    }
}

/// `POST /console/session`: form `key=...` or JSON `{"key": "..."}`. A browser's request must
/// come from our own page (its `Origin`), so no other site can sign a visitor in as itself.
pub(super) async fn sign_in(
    State(state): State<ApiKeyState>,
    request: axum::extract::Request,
) -> Response {
    secure(match sign_in_inner(&state, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    })
}

async fn sign_in_inner(
    state: &ApiKeyState,
    request: axum::extract::Request,
) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    if parts.headers.contains_key(axum::http::header::ORIGIN) {
        session::same_origin(&parts)?;
    }
    let address = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    if let Some(address) = address {
        state
            .limiter
            .check(address)
            .map_err(AppError::TooManyAttempts)?;
    }
    let form = is_form(&parts);
    let key = read_key(body, form).await?;
    let token = session::new_secret();
    let csrf = session::new_secret();
    let ttl =
        chrono::TimeDelta::from_std(state.session_ttl).unwrap_or(chrono::TimeDelta::hours(12));
    let expires_at = Utc::now() + ttl;
    let created = console_sessions::create(
        &state.pool,
        &key_hash(key.trim()),
        &session::token_hash(&token),
        &csrf,
        expires_at,
    )
    .await?;
    let Some(row) = created else {
        if let Some(address) = address {
            state.limiter.failed(address);
        }
        return Err(AppError::Unauthenticated);
    };
    let cookie = session::set_cookie(&token, ttl.num_seconds());
    let no_store = (CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // A form posted without the page's script (no `fetch`) goes on to the console.
    if form && wants_html(&parts) {
        let to = (LOCATION, HeaderValue::from_static("/console"));
        return Ok((StatusCode::SEE_OTHER, [(SET_COOKIE, cookie), no_store, to]).into_response());
    }
    Ok((
        [(SET_COOKIE, cookie), no_store],
        Json(SessionView::from(row)),
    )
        .into_response())
}

fn is_form(parts: &Parts) -> bool {
    parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

fn wants_html(parts: &Parts) -> bool {
    parts
        .headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

async fn read_key(body: Body, form: bool) -> Result<String, AppError> {
    let bytes = to_bytes(body, MAX_FORM)
        .await
        .map_err(|_| AppError::PayloadTooLarge(MAX_FORM))?;
    let key = if form {
        form_urlencoded::parse(&bytes)
            .find(|(name, _)| name == "key")
            .map(|(_, value)| value.into_owned())
    } else {
        serde_json::from_slice::<SignIn>(&bytes).ok().map(|s| s.key)
    };
    key.filter(|k| !k.trim().is_empty())
        .ok_or(AppError::BadParameter {
            name: "key",
            reason: "an API key is required".into(),
        })
}

/// `GET /console/session`: the session of the cookie, or 401.
pub(super) async fn current(State(state): State<ApiKeyState>, parts: Parts) -> Response {
    let found = match session::cookie_value(&parts.headers) {
        Some(cookie) => console_sessions::find(&state.pool, &session::token_hash(cookie)).await,
        None => Ok(None),
    };
    secure(match found {
        Ok(Some(row)) => (
            [(CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            Json(SessionView::from(row)),
        )
            .into_response(),
        Ok(None) => AppError::Unauthenticated.into_response(),
        Err(e) => AppError::from(e).into_response(),
    })
}

/// `DELETE /console/session`: signs out (with the CSRF defence, so no other site can).
pub(super) async fn sign_out(State(state): State<ApiKeyState>, parts: Parts) -> Response {
    secure(match sign_out_inner(&state, &parts).await {
        Ok(()) => (
            StatusCode::NO_CONTENT,
            [(SET_COOKIE, session::clear_cookie())],
        )
            .into_response(),
        Err(e) => e.into_response(),
    })
}

async fn sign_out_inner(state: &ApiKeyState, parts: &Parts) -> Result<(), AppError> {
    let Some(cookie) = session::cookie_value(&parts.headers) else {
        return Ok(());
    };
    let hash = session::token_hash(cookie);
    if let Some(row) = console_sessions::find(&state.pool, &hash).await? {
        session::same_origin(parts)?;
        session::check_token(&parts.headers, &row.csrf)?;
        console_sessions::delete(&state.pool, &hash).await?;
    }
    Ok(())
}
