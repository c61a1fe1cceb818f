//! `things-receiver send --door m2m|ip`: a pack signed as a device signs it, posted without a
//! plug header, and the answer printed as the device would get it. Against the real server's
//! device door, and against a scripted HTTP/1.1 peer on loopback that answers what a door may
//! answer (202, 200 with a downlink pack and `Things-Downlinks-Pending`, 401, 503), so that
//! what `send` sends and prints is checked byte for byte.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use things_receiver::token::Token;

const DVNUUID: &str = "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:";
const IMEI: &str = "urn:dev:IMEI:356938035643809:";
const DEVICE_SECRET: &str = "Device-Secret-For-Send-Tests-0123456789";

/// The binary with a clean environment, not tied to any database: `send` needs none.
fn send(args: &[&str]) -> Output {
    Command::new(BIN)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("send")
        .args(args)
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pack_file(dir: &std::path::Path, urn: &str) -> (std::path::PathBuf, Vec<u8>) {
    // Spacing and key order a serializer would not produce: what is sent must be these bytes.
    let body =
        format!("[ {{\"bn\": \"{urn}\", \"n\":\"temperature\",\"u\":\"Cel\",\"v\":21.5}} ]\n");
    let path = dir.join("uplink.json");
    std::fs::write(&path, &body).unwrap();
    (path, body.into_bytes())
}

/// One request as the scripted peer received it.
struct Received {
    request_line: String,
    /// Header names in lower case, values as sent.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP/1.1 peer that answers one request with `answer` (bytes as written) and
/// hands the request it read to the test. Returns its base URL (no path).
fn scripted_peer(answer: Vec<u8>) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        stream.write_all(&answer).unwrap();
        stream.flush().unwrap();
        let _ = tx.send(Received {
            request_line: request_line.trim_end().to_owned(),
            headers,
            body,
        });
    });
    (base, rx)
}

fn received(rx: &mpsc::Receiver<Received>) -> Received {
    rx.recv_timeout(Duration::from_secs(30))
        .expect("send never reached the scripted peer")
}

#[test]
fn an_m2m_uplink_over_plain_http_is_signed_as_a_device_signs_it_and_its_downlink_printed() {
    let dir = tempfile::tempdir().unwrap();
    let (file, body) = pack_file(dir.path(), IMEI);
    let pack = format!(r#"[{{"bn":"{IMEI}"}},{{"n":"payloadHex","vs":"0a0b"}}]"#);
    let answer = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nThings-Downlinks-Pending: 2\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{pack}",
        pack.len()
    );
    let (base, rx) = scripted_peer(answer.into_bytes());

    // No path in the URL: the M2M door's.
    let out = send(&[
        "--door",
        "m2m",
        "--url",
        &base,
        "--secret",
        DEVICE_SECRET,
        file.to_str().unwrap(),
    ]);
    let request = received(&rx);
    assert_eq!(
        request.request_line,
        "POST /ingestion/m2m/senml/v1 HTTP/1.1"
    );
    assert_eq!(request.header("host"), Some("m.m"));
    assert_eq!(request.header("things-plug-uuid"), None);
    assert_eq!(request.body, body);
    assert_eq!(
        request.header("things-message-token"),
        Some(
            Token::sign(&body, DEVICE_SECRET.as_bytes())
                .to_hex()
                .as_str()
        )
    );
    assert_eq!(request.header("content-type"), Some("application/json"));

    assert!(out.status.success(), "{out:?}");
    let shown =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&pack).unwrap())
            .unwrap();
    assert_eq!(
        stdout(&out),
        format!("200\nThings-Downlinks-Pending: 2\n{shown}\n")
    );
}

#[test]
fn refusals_print_the_status_and_reason_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = pack_file(dir.path(), DVNUUID);
    for (answer, printed) in [
        (
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain\r\nContent-Length: 18\r\n\
             Connection: close\r\n\r\ntoken not verified",
            "401\ntoken not verified\n",
        ),
        (
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            "503\n",
        ),
    ] {
        let (base, rx) = scripted_peer(answer.as_bytes().to_vec());
        let url = format!("{base}/ingestion/ip/senml/v1");
        let out = send(&[
            "--door",
            "ip",
            "--url",
            &url,
            "--secret",
            DEVICE_SECRET,
            file.to_str().unwrap(),
        ]);
        let request = received(&rx);
        assert_eq!(request.request_line, "POST /ingestion/ip/senml/v1 HTTP/1.1");
        // Only an M2M device on KPN's APN says m.m.
        assert_ne!(request.header("host"), Some("m.m"));
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert_eq!(stdout(&out), printed);
    }
}

#[test]
fn door_and_plug_exclude_each_other_and_one_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = pack_file(dir.path(), IMEI);
    let file = file.to_str().unwrap();
    let plug = uuid::Uuid::new_v4().to_string();
    let base = ["--url", "http://127.0.0.1:9", "--secret", DEVICE_SECRET];
    let both = send(&[&base[..], &["--door", "m2m", "--plug", &plug, file]].concat());
    assert_eq!(both.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("cannot be used with"),
        "{both:?}"
    );
    let neither = send(&[&base[..], &[file]].concat());
    assert_eq!(neither.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&neither.stderr).contains("--plug"),
        "{neither:?}"
    );
    let ftp = send(&[
        "--door",
        "ip",
        "--url",
        "ftp://127.0.0.1:9/",
        "--secret",
        DEVICE_SECRET,
        file,
    ]);
    assert_eq!(ftp.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&ftp.stderr).contains("http://"),
        "{ftp:?}"
    );
}

/// Against the real server's Internet door on the main HTTPS listener: a registered device's
/// uplink is accepted (202, no downlink pending), a wrong secret is 401. Needs the device
/// doors in the server.
#[tokio::test]
async fn a_registered_device_is_accepted_by_the_server_and_a_wrong_secret_is_not() {
    let env = Env::new().await;
    env.cli_ok(&["devices", "add", DVNUUID, "--secret", DEVICE_SECRET]);
    let server = env.serve_in_process(&[]).await;
    let (file, _) = pack_file(env.data_dir.path(), DVNUUID);
    let file = file.to_str().unwrap().to_owned();
    let base = server.base_url.clone();
    let run = move |secret: &'static str| {
        let (base, file) = (base.clone(), file.clone());
        // `send` blocks; the in-process server runs on its own thread meanwhile.
        move || {
            send(&[
                "--door",
                "ip",
                "--url",
                &base,
                "--insecure",
                "--secret",
                secret,
                &file,
            ])
        }
    };

    let out = tokio::task::spawn_blocking(run(DEVICE_SECRET))
        .await
        .unwrap();
    assert_eq!(stdout(&out), "202\n", "{out:?}");
    assert!(out.status.success());

    let wrong = "Not-The-Device-Secret-At-All-0123456789";
    let out = tokio::task::spawn_blocking(run(wrong)).await.unwrap();
    assert!(stdout(&out).starts_with("401\n"), "{out:?}");
    assert_eq!(out.status.code(), Some(1));
}
