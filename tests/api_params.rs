//! Every query and path parameter of every API endpoint gets a fixed set of hostile values
//! (NUL, bad UTF-8, huge and negative numbers, times outside what can be stored, forged
//! cursors, overlong text, empty and repeated parameters) against a real server (in this
//! process) and a real PostgreSQL: no answer may be a 5xx. A bad parameter is the client's
//! error, never a "cannot be stored right now".

mod common;
#[path = "common/fake_kpn.rs"]
mod fake_kpn;

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::*;
use fake_kpn::{CLIENT_ID, CLIENT_SECRET, FakeKpn};
use futures_util::StreamExt;
use reqwest::Method;

const DEVICE: &str = "urn:dev:DEVEUI:0018B21000008C47:";

/// Hostile values, already percent-encoded as they go on the wire.
fn hostile_values() -> Vec<String> {
    let cursor = |raw: &str| URL_SAFE_NO_PAD.encode(raw);
    let mut values: Vec<String> = [
        "",
        "%00",
        "a%00b",
        "%FF",
        "%C3%28",
        "%E2%82",
        "%ED%A0%80",
        "%",
        "%zz",
        "-1",
        "0",
        "1",
        "-0",
        "1.5",
        "1e308",
        "-1e308",
        "NaN",
        "inf",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775809",
        "99999999999999999999999999",
        "0000-01-01T00:00:00Z",
        "0001-01-01T00:00:00%2B01:00",
        "9999-12-31T23:59:59-23:59",
        "10000-01-01T00:00:00Z",
        "%2B275760-09-13T00:00:00Z",
        "-0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "2024-02-30T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "9999-12-31T23:59:59.999999Z",
        "1ns",
        "0s",
        "999999999999999999d",
        "1s",
        "urn:dev:DEVEUI:0018B21000008C47:",
        "..%2F..%2Fetc",
        "%20",
        "a,,b,%00",
        "00000000-0000-0000-0000-000000000000",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    for raw in [
        "9223372036854775807.1",
        "-9223372036854775808.1",
        "8000000000000000000.1",
        "-300000000000000000.1",
        "253402300800000000.1",
        "1704067200000000.-1",
        "1704067200000000.9223372036854775808",
        "d.-1",
        "d.9223372036854775807",
        "1.2.3",
        "\u{0}.1",
    ] {
        values.push(cursor(raw));
    }
    values.push("a".repeat(5000));
    values.push("%00".repeat(300));
    values.push(format!("{}%00", "%C3%A9".repeat(400)));
    values
}

/// One endpoint: method, path (with `{}` for a path parameter), the valid query it needs
/// otherwise, its query parameters, and an Accept header.
struct Endpoint {
    method: Method,
    path: &'static str,
    base: &'static [(&'static str, &'static str)],
    params: &'static [&'static str],
    accept: Option<&'static str>,
    body: Option<&'static str>,
}

const fn get(
    path: &'static str,
    base: &'static [(&'static str, &'static str)],
    params: &'static [&'static str],
) -> Endpoint {
    Endpoint {
        method: Method::GET,
        path,
        base,
        params,
        accept: None,
        body: None,
    }
}

fn endpoints() -> Vec<Endpoint> {
    const SERIES_BASE: &[(&str, &str)] = &[("device", DEVICE), ("name", "port")];
    let export = |path, params, accept| Endpoint {
        accept: Some(accept),
        ..get(path, &[], params)
    };
    vec![
        get("/api/v1/devices", &[], &["q", "kind", "limit", "cursor"]),
        get("/api/v1/devices/{}", &[], &[]),
        get("/api/v1/devices/{}/latest", &[], &[]),
        get(
            "/api/v1/series",
            SERIES_BASE,
            &["device", "name", "from", "to", "every", "agg", "fill"],
        ),
        get(
            "/api/v1/measurements",
            &[],
            &["device", "name", "from", "to", "limit", "cursor"],
        ),
        export(
            "/api/v1/measurements",
            &["device", "name", "from", "to", "cursor"],
            "text/csv",
        ),
        export(
            "/api/v1/measurements",
            &["device", "from", "to", "cursor"],
            "application/x-ndjson",
        ),
        get("/api/v1/stream", &[], &["device", "name"]),
        get(
            "/api/v1/messages",
            &[],
            &["status", "from", "to", "limit", "cursor"],
        ),
        export(
            "/api/v1/messages",
            &["status", "from", "to", "cursor"],
            "text/csv",
        ),
        get("/api/v1/messages/{}/raw", &[], &[]),
        get(
            "/api/v1/downlinks",
            &[],
            &["device", "status", "limit", "cursor"],
        ),
        get("/api/v1/downlinks/{}", &[], &[]),
        Endpoint {
            method: Method::DELETE,
            ..get("/api/v1/downlinks/{}", &[], &[])
        },
        Endpoint {
            method: Method::POST,
            body: Some(r#"{"port":1,"payload_hex":"00"}"#),
            ..get("/api/v1/devices/{}/downlinks", &[], &[])
        },
        Endpoint {
            method: Method::POST,
            ..get("/api/v1/destinations/{}/rotate", &[], &[])
        },
        Endpoint {
            method: Method::DELETE,
            ..get("/api/v1/destinations/{}", &[], &[])
        },
        Endpoint {
            method: Method::DELETE,
            ..get("/api/v1/api-keys/{}", &[], &[])
        },
    ]
}

/// Every request of the run: the endpoint, and the path and query it is sent with.
fn requests() -> Vec<(usize, String)> {
    let values = hostile_values();
    let mut out = Vec::new();
    for (index, endpoint) in endpoints().iter().enumerate() {
        let query = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        };
        let path_values: Vec<&str> = if endpoint.path.contains("{}") {
            values.iter().map(String::as_str).collect()
        } else {
            vec![""]
        };
        for value in path_values {
            let path = endpoint.path.replace("{}", value);
            out.push((index, format!("{path}?{}", query(endpoint.base))));
        }
        for param in endpoint.params {
            for value in &values {
                let mut pairs: Vec<(&str, &str)> = endpoint
                    .base
                    .iter()
                    .copied()
                    .filter(|(k, _)| k != param)
                    .collect();
                pairs.push((param, value));
                out.push((index, format!("{}?{}", endpoint.path, query(&pairs))));
                // The same parameter twice, and a valid value next to the hostile one.
                pairs.push((param, value));
                out.push((index, format!("{}?{}", endpoint.path, query(&pairs))));
                pairs.pop();
                pairs.pop();
                pairs.extend([(*param, "1"), (*param, value.as_str())]);
                out.push((index, format!("{}?{}", endpoint.path, query(&pairs))));
            }
        }
    }
    out
}

#[tokio::test]
async fn no_parameter_value_gets_a_5xx_from_any_endpoint() {
    let fake = FakeKpn::start(Duration::from_secs(3600));
    let env = Env::new().await;
    let key = env.api_key("fuzz", "admin");
    let plug = env.add_destination("lora", &[]);
    // In this process the credentials come from a file: the environment is the test's own.
    let credentials = env.data_dir.path().join("kpn.env");
    std::fs::write(
        &credentials,
        format!("KPN_CLIENT_ID={CLIENT_ID}\nKPN_CLIENT_SECRET={CLIENT_SECRET}\n"),
    )
    .unwrap();
    let mut flags = fake.flags();
    flags.extend([
        "--kpn-credentials-file".into(),
        credentials.display().to_string(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = env.serve_in_process(&flags).await;
    let client = client();
    wait_ready(&client, &server, |j| j["destinations"]["bound"] == 1).await;
    let stored = deliver(
        &client,
        &server,
        plug,
        SECRET,
        &fixture("lora-raw-legacy.json"),
    )
    .await;
    assert_eq!(stored.status(), 200);

    let endpoints = endpoints();
    let requests = requests();
    let started = Instant::now();
    let failures: Vec<String> = futures_util::stream::iter(requests.iter())
        .map(|(index, target)| {
            let endpoint = &endpoints[*index];
            let url = reqwest::Url::parse(&server.url(target)).expect("test URL parses");
            let mut request = client
                .request(endpoint.method.clone(), url)
                .bearer_auth(&key)
                .timeout(Duration::from_secs(10));
            if let Some(accept) = endpoint.accept {
                request = request.header("accept", accept);
            }
            if let Some(body) = endpoint.body {
                request = request
                    .header("content-type", "application/json")
                    .body(body);
            }
            async move {
                match request.send().await {
                    // The status line is what counts; a stream or export is not read on.
                    Ok(response) if response.status().is_server_error() => {
                        let status = response.status();
                        let body = response.text().await.unwrap_or_default();
                        Some(format!("{} {target} -> {status} {body}", endpoint.method))
                    }
                    Ok(_) => None,
                    Err(e) => Some(format!("{} {target} -> {e}", endpoint.method)),
                }
            }
        })
        .buffer_unordered(8)
        .filter_map(|failure| async move { failure })
        .collect()
        .await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed:\n{}",
        failures.len(),
        requests.len(),
        failures.join("\n")
    );
    // Still serving: the hostile values left nothing broken behind.
    let (status, _) = api_get(&client, &server, &key, "/api/v1/devices").await;
    assert_eq!(status, 200);
    eprintln!(
        "{} requests in {:.1} s",
        requests.len(),
        started.elapsed().as_secs_f64()
    );
}
