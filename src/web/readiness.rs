//! The answer of `GET /readyz`: a public status, and details for holders of a read key.
//!
//! A load balancer needs only the status code and a word; the details (database error text,
//! destination and spool counts) help an attacker as much as an operator, so they are sent
//! only with a valid `read` API key. `web::health::readyz` lists the conditions; each one records its
//! detail and, when it is not met, lowers the level here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// How ready the process is; the worst condition wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ready,
    /// Still takes deliveries (answered 200), but not in the normal way.
    Degraded,
    /// Cannot take deliveries: 503, so that a load balancer sends them elsewhere.
    NotReady,
}

#[derive(Debug)]
pub struct Readiness {
    level: Level,
    /// Why it is degraded, named in the public status (`degraded: spooling`).
    degraded: Vec<&'static str>,
    details: Map<String, Value>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            level: Level::Ready,
            degraded: Vec::new(),
            details: Map::new(),
        }
    }
}

impl Readiness {
    /// Records a detail, shown only to holders of a read key.
    pub fn detail(&mut self, name: &str, value: impl Into<Value>) {
        self.details.insert(name.to_owned(), value.into());
    }

    /// Takes deliveries, but `reason` should be known to whoever watches the status.
    pub fn degrade(&mut self, reason: &'static str) {
        self.level = self.level.max(Level::Degraded);
        if !self.degraded.contains(&reason) {
            self.degraded.push(reason);
        }
    }

    /// Cannot take deliveries.
    pub fn fail(&mut self) {
        self.level = Level::NotReady;
    }

    pub fn level(&self) -> Level {
        self.level
    }

    /// `ready`, `degraded: REASON, ...` or `not ready`.
    pub fn status(&self) -> String {
        match self.level {
            Level::Ready => "ready".to_owned(),
            Level::Degraded => format!("degraded: {}", self.degraded.join(", ")),
            Level::NotReady => "not ready".to_owned(),
        }
    }

    pub fn status_code(&self) -> StatusCode {
        match self.level {
            Level::Ready | Level::Degraded => StatusCode::OK,
            Level::NotReady => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// `{"status": ...}` alone.
    pub fn public(self) -> Response {
        let body = serde_json::json!({ "status": self.status() });
        (self.status_code(), Json(body)).into_response()
    }

    /// The status followed by every detail.
    pub fn detailed(self) -> Response {
        let mut body = Map::new();
        body.insert("status".to_owned(), self.status().into());
        let code = self.status_code();
        body.extend(self.details);
        (code, Json(Value::Object(body))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_condition_wins() {
        let mut r = Readiness::default();
        assert_eq!(
            (r.status(), r.status_code()),
            ("ready".into(), StatusCode::OK)
        );
        r.degrade("spooling");
        r.degrade("spooling");
        assert_eq!(r.status(), "degraded: spooling");
        assert_eq!(r.status_code(), StatusCode::OK);
        r.fail();
        r.degrade("other");
        assert_eq!(
            (r.status(), r.status_code()),
            ("not ready".into(), StatusCode::SERVICE_UNAVAILABLE)
        );
    }
}
