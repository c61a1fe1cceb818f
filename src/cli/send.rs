//! `things-receiver send`: sign a SenML file exactly as KPN Things does and deliver it, or
//! with `--door`, as a device does to a device door.
//!
//! The file's bytes are sent untouched, so what is signed is what arrives. Both ways carry
//! `Things-Message-Token` = hex SHA-256(body || secret); only KPN Things names its plug. A
//! device door may answer with a downlink pack, printed as JSON, and with
//! `Things-Downlinks-Pending`, printed as it came, so that firmware builders see exactly
//! what their device would be given.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use reqwest::Url;

use crate::config::{DeviceDoor, SendArgs};
use crate::ingest::doors::device::PENDING_HEADER;
use crate::ingest::doors::kpn::{PLUG_HEADER, TOKEN_HEADER};
use crate::ingest::doors::{IP_PATH, M2M_PATH};
use crate::token::Token;

/// The `Host` an M2M device on KPN's private APN sends: it has no DNS.
const M2M_HOST: &str = "m.m";
/// Most of an answer kept for printing: a door answers a short reason or one pack.
const MAX_ANSWER: usize = 1024 * 1024;

/// The path of a device door, as KPN Things serves it.
pub fn door_path(door: DeviceDoor) -> &'static str {
    match door {
        DeviceDoor::M2m => M2M_PATH,
        DeviceDoor::Ip => IP_PATH,
    }
}

/// Returns whether the receiver answered with a 2xx status.
pub async fn run(args: SendArgs) -> anyhow::Result<bool> {
    let body = read_file(&args.file)?;
    let url = target_url(&args.url, args.door)?;
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(args.insecure)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let mut request = client.post(url.clone());
    let own_host = args
        .header
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"));
    for (name, value) in signed_headers(&body, &args.secret, args.plug, args.door, &url) {
        if !(own_host && name == "host") {
            request = request.header(name, value);
        }
    }
    for (name, value) in &args.header {
        request = request.header(name, value);
    }
    let mut response = request
        .body(body)
        .send()
        .await
        .with_context(|| format!("sending to {url}"))?;
    let status = response.status();
    let pending = response
        .headers()
        .get(PENDING_HEADER)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut answer = Vec::new();
    while let Some(chunk) = response.chunk().await.context("reading the answer")? {
        let room = MAX_ANSWER - answer.len();
        answer.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if answer.len() == MAX_ANSWER {
            break;
        }
    }
    print!(
        "{}",
        render(
            status.as_u16(),
            pending.as_deref(),
            &answer,
            args.door.is_some()
        )
    );
    Ok(status.is_success())
}

fn read_file(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// The URL to post to. For a device door, `http://` (the plain device listener) or
/// `https://`, and the door's path when the URL has none.
fn target_url(url: &str, door: Option<DeviceDoor>) -> anyhow::Result<Url> {
    let mut parsed = Url::parse(url).with_context(|| format!("--url {url:?} is not a URL"))?;
    let Some(door) = door else {
        return Ok(parsed);
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        anyhow::bail!(
            "--url {url:?} must start with http:// (the plain device listener) or https://"
        );
    }
    if parsed.path() == "/" {
        parsed.set_path(door_path(door));
    }
    Ok(parsed)
}

/// The headers of a delivery: the token over exactly `body`, KPN's plug header when sending
/// as KPN Things, and for an M2M device over plain HTTP the `Host` it sends.
fn signed_headers(
    body: &[u8],
    secret: &str,
    plug: Option<uuid::Uuid>,
    door: Option<DeviceDoor>,
    url: &Url,
) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        (TOKEN_HEADER, Token::sign(body, secret.as_bytes()).to_hex()),
        ("content-type", "application/json".to_owned()),
    ];
    if let Some(plug) = plug {
        headers.push((PLUG_HEADER, plug.to_string()));
    }
    if door == Some(DeviceDoor::M2m) && url.scheme() == "http" {
        headers.push(("host", M2M_HOST.to_owned()));
    }
    headers
}

/// What `send` prints: the status, the pending-downlinks count when given, and the answer's
/// body; a device door's 200 carries a downlink pack, shown as indented JSON.
fn render(status: u16, pending: Option<&str>, answer: &[u8], door: bool) -> String {
    let mut out = format!("{status}\n");
    if let Some(pending) = pending {
        out.push_str(&format!("Things-Downlinks-Pending: {pending}\n"));
    }
    if answer.is_empty() {
        return out;
    }
    let pack = (door && status == 200)
        .then(|| serde_json::from_slice::<serde_json::Value>(answer).ok())
        .flatten()
        .and_then(|pack| serde_json::to_string_pretty(&pack).ok());
    match pack {
        Some(pack) => out.push_str(&pack),
        None => out.push_str(&String::from_utf8_lossy(answer)),
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_device_signs_the_exact_bytes_with_its_secret_and_names_no_plug() {
        let body = br#"[{"bn":"urn:dev:IMEI:356938035643809:","n":"temperature","v":21.5}]"#;
        let secret = "device-secret-0123456789abcdefghij";
        let url = Url::parse("https://localhost:8443/ingestion/ip/senml/v1").unwrap();
        let headers = signed_headers(body, secret, None, Some(DeviceDoor::Ip), &url);
        let mut hasher = Sha256::new();
        hasher.update(body);
        hasher.update(secret.as_bytes());
        let expected = hex::encode(hasher.finalize());
        assert_eq!(header(&headers, TOKEN_HEADER), Some(expected.as_str()));
        assert_eq!(header(&headers, PLUG_HEADER), None);
        assert_eq!(header(&headers, "host"), None, "HTTPS keeps the URL's host");
        // One byte more is another token: nothing is re-encoded before signing.
        let mut spaced = body.to_vec();
        spaced.push(b'\n');
        let other = signed_headers(&spaced, secret, None, Some(DeviceDoor::Ip), &url);
        assert_ne!(header(&other, TOKEN_HEADER), Some(expected.as_str()));
    }

    #[test]
    fn an_m2m_device_over_plain_http_says_host_m_m() {
        let url = Url::parse("http://127.0.0.1:8081/ingestion/m2m/senml/v1").unwrap();
        let headers = signed_headers(b"[]", "s", None, Some(DeviceDoor::M2m), &url);
        assert_eq!(header(&headers, "host"), Some("m.m"));
        let headers = signed_headers(b"[]", "s", None, Some(DeviceDoor::Ip), &url);
        assert_eq!(header(&headers, "host"), None);
    }

    #[test]
    fn kpn_things_names_its_plug() {
        let plug = uuid::Uuid::new_v4();
        let url = Url::parse("https://localhost:8443/ingest/kpn").unwrap();
        let headers = signed_headers(b"[]", "s", Some(plug), None, &url);
        assert_eq!(
            header(&headers, PLUG_HEADER),
            Some(plug.to_string().as_str())
        );
        assert_eq!(header(&headers, "host"), None);
    }

    #[test]
    fn a_url_without_a_path_gets_the_doors() {
        let url = |text: &str, door| target_url(text, door).unwrap().to_string();
        assert_eq!(
            url("http://127.0.0.1:8081", Some(DeviceDoor::M2m)),
            "http://127.0.0.1:8081/ingestion/m2m/senml/v1"
        );
        assert_eq!(
            url("https://localhost:8443/", Some(DeviceDoor::Ip)),
            "https://localhost:8443/ingestion/ip/senml/v1"
        );
        // A path given is kept, whatever it is.
        assert_eq!(
            url(
                "http://127.0.0.1:8081/ingestion/ip/senml/v1",
                Some(DeviceDoor::M2m)
            ),
            "http://127.0.0.1:8081/ingestion/ip/senml/v1"
        );
        assert_eq!(
            url("https://gateway.example/things/m2m", Some(DeviceDoor::M2m)),
            "https://gateway.example/things/m2m"
        );
        // Without a door the URL is taken as it is.
        assert_eq!(
            url("https://localhost:8443", None),
            "https://localhost:8443/"
        );
    }

    #[test]
    fn a_door_needs_an_http_or_https_url() {
        for bad in [
            "localhost:8081",
            "ftp://localhost/",
            "127.0.0.1:8081",
            "not a url",
        ] {
            let error = target_url(bad, Some(DeviceDoor::M2m)).unwrap_err();
            assert!(error.to_string().contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn answers_print_status_pending_count_and_the_pack() {
        assert_eq!(render(202, None, b"", true), "202\n");
        let pack = br#"[{"bn":"urn:dev:IMEI:356938035643809:"},{"n":"payloadHex","vs":"0a0b"}]"#;
        assert_eq!(
            render(200, Some("2"), pack, true),
            "200\nThings-Downlinks-Pending: 2\n[\n  {\n    \"bn\": \"urn:dev:IMEI:356938035643809:\"\n  },\n  {\n    \"n\": \"payloadHex\",\n    \"vs\": \"0a0b\"\n  }\n]\n"
        );
        // Reasons and anything that is not a pack are shown as they came.
        assert_eq!(
            render(401, None, b"token not verified", true),
            "401\ntoken not verified\n"
        );
        assert_eq!(render(200, None, b"[oops", true), "200\n[oops\n");
        assert_eq!(render(200, None, b"{\"a\":1}", false), "200\n{\"a\":1}\n");
    }
}
