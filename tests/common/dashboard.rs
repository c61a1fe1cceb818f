//! Helpers for the dashboard API tests: SenML packs with known values, JSON requests.

use serde_json::{Value, json};

use super::Server;

/// A SenML pack for `device` with one record per (name, unix time, value).
pub fn pack(device: &str, records: &[(&str, i64, f64)]) -> Vec<u8> {
    let records: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, (name, time, value))| {
            let mut record = json!({"n": name, "t": time, "v": value});
            if i == 0 {
                record["bn"] = json!(device);
            }
            record
        })
        .collect();
    serde_json::to_vec(&records).unwrap()
}

/// Sends `method path` with a key and an optional JSON body; returns status and JSON.
pub async fn api_send(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, server.url(path)).bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    super::status_json(request.send().await.unwrap()).await
}

/// GET with an `Accept` header; returns status, content type and body text.
pub async fn api_get_as(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    path: &str,
    accept: &str,
) -> (u16, String, String) {
    let response = client
        .get(server.url(path))
        .bearer_auth(key)
        .header("Accept", accept)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, content_type, response.text().await.unwrap())
}
