//! Streaming exports: `Accept: text/csv` or `Accept: application/x-ndjson` on the listing
//! endpoints returns every matching row, with no page limit, without holding the result in
//! memory.
//!
//! A task reads the rows with a database cursor-like stream (`fetch`), encodes them into
//! chunks of about [`CHUNK`] bytes and hands them to the response body through a channel of
//! [`DEPTH`] chunks. When the client reads slowly the channel fills, the task stops reading,
//! and PostgreSQL's socket buffer fills in turn: memory stays bounded whatever the size of the
//! export. When the client goes away the task ends at its next send. A database error in the
//! middle aborts the response, so a cut-short export never looks complete.
//!
//! The task holds its database connection for as long as the client takes to read, so it
//! comes from the separate stream pool, never from the one ingestion uses; it is taken before
//! answering, so a full stream pool is a 503, not a broken body. A client that stops reading
//! is cut by the connection's idle timer (`hardening`), which drops the body and so ends the
//! task and frees the connection.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool, Postgres, QueryBuilder};
use tokio::sync::mpsc;

use crate::error::AppError;

const CHUNK: usize = 64 * 1024;
const DEPTH: usize = 4;

/// How the client asked for the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Ndjson,
}

impl Format {
    /// From the `Accept` header: CSV or NDJSON when named, JSON pages otherwise.
    pub fn from_headers(headers: &HeaderMap) -> Format {
        let accept = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .collect::<Vec<_>>();
        if accept.iter().any(|a| a == "text/csv") {
            Format::Csv
        } else if accept.iter().any(|a| a == "application/x-ndjson") {
            Format::Ndjson
        } else {
            Format::Json
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Ndjson => "application/x-ndjson",
        }
    }
}

/// One exported row type: how it looks as a CSV line and as a JSON line.
pub trait ExportRow: for<'r> FromRow<'r, PgRow> + Send + Unpin + 'static {
    const CSV_HEADER: &'static str;
    fn write_csv(self, out: &mut Vec<u8>);
    fn write_json(self, out: &mut Vec<u8>);
}

/// Streams every row of `query` in `format` (CSV or NDJSON), read through `pool`.
pub async fn stream<R: ExportRow>(
    pool: &PgPool,
    mut query: QueryBuilder<Postgres>,
    format: Format,
    filename: &str,
) -> Result<Response, AppError> {
    let mut connection = pool.acquire().await?;
    let (sender, mut receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(DEPTH);
    tokio::spawn(async move {
        let mut buffer = Vec::with_capacity(CHUNK + 1024);
        if format == Format::Csv {
            buffer.extend_from_slice(R::CSV_HEADER.as_bytes());
            buffer.push(b'\n');
        }
        let mut rows = query.build_query_as::<R>().fetch(&mut *connection);
        loop {
            match rows.try_next().await {
                Ok(Some(row)) => {
                    match format {
                        Format::Csv => row.write_csv(&mut buffer),
                        _ => row.write_json(&mut buffer),
                    }
                    buffer.push(b'\n');
                    if buffer.len() >= CHUNK {
                        let chunk = Bytes::from(std::mem::replace(
                            &mut buffer,
                            Vec::with_capacity(CHUNK + 1024),
                        ));
                        if sender.send(Ok(chunk)).await.is_err() {
                            return; // the client went away
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "export aborted by a database error");
                    let _ = sender.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            }
        }
        if !buffer.is_empty() {
            let _ = sender.send(Ok(Bytes::from(buffer))).await;
        }
    });
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| {
        receiver.poll_recv(cx)
    }));
    let disposition = format!(
        "attachment; filename=\"{filename}.{}\"",
        if format == Format::Csv {
            "csv"
        } else {
            "ndjson"
        }
    );
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// Appends one CSV field (RFC 4180: quoted when it holds a comma, quote or line break).
pub fn csv_field(out: &mut Vec<u8>, text: &str) {
    if text.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(text.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

/// Appends CSV fields separated by commas; `None` is an empty field.
pub fn csv_line(out: &mut Vec<u8>, fields: &[Option<&str>]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if let Some(text) = field {
            csv_field(out, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        let mut out = Vec::new();
        csv_line(
            &mut out,
            &[Some("a"), None, Some("b,c"), Some("say \"hi\"")],
        );
        assert_eq!(out, b"a,,\"b,c\",\"say \"\"hi\"\"\"");
    }

    #[test]
    fn accept_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(Format::from_headers(&headers), Format::Json);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/csv;q=0.9, */*"),
        );
        assert_eq!(Format::from_headers(&headers), Format::Csv);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/x-ndjson"),
        );
        assert_eq!(Format::from_headers(&headers), Format::Ndjson);
    }
}
