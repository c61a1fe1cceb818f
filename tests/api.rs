//! The dashboard and admin API over real HTTPS against a real PostgreSQL: every endpoint, its
//! errors and its scope checks.

mod common;

use std::path::Path;

use common::*;

#[test]
fn the_checked_in_openapi_document_is_current() {
    let current = things_receiver::api::docs::document_json();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &current).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == current,
        "docs/openapi.json is out of date: run UPDATE_OPENAPI=1 cargo test --test api openapi"
    );
}
