//! The console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`) against the real binary, asserting on the DOM. Without them these tests
//! say so and pass, except under `CI`, where they fail (see `common/browser.rs`).
//!
//! One browser at a time: the live-list deadline (2 s) is about the server, not about five
//! Chromiums sharing two cores.

mod common;
// Only this binary drives a browser, so the harness is not compiled into every other one.
#[path = "common/browser.rs"]
mod browser;

use std::time::{Duration, Instant};

use browser::{Browser, WAIT};
use common::{Env, SECRET, api_get, change_destinations, client, deliver, deliver_with};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use things_receiver::token::Token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The secret a destination is rotated to; the old [`SECRET`] stops at once (no overlap).
const NEW_SECRET: &str = "N3w-Secret#After.Rotation/Testing!2026";
const DEVICE: &str = "urn:dev:IMEI:356938035643809:";

/// A SenML pack for `device` with one record per (name, unix time, value).
fn pack(device: &str, records: &[(&str, i64, f64)]) -> Vec<u8> {
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

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Selector of the list row for an item.
fn row(kind: &str, id: &str) -> String {
    format!("table.deliveries tbody tr[data-kind={kind}][data-id=\"{id}\"]")
}

/// The newest rejection's id, once the recorder has persisted it.
async fn wait_rejection(client: &reqwest::Client, server: &common::Server, key: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, page) = api_get(client, server, key, "/api/v1/rejections").await;
        assert_eq!(status, 200, "{page}");
        if let Some(id) = page["items"][0]["id"].as_str() {
            return id.to_owned();
        }
        assert!(Instant::now() < deadline, "no rejection recorded: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A destination whose rotation (no overlap) left SECRET behind, and a delivery signed with
/// it, refused; returns the plug and the rejection's id.
async fn rotated_away_rejection(
    env: &Env,
    client: &reqwest::Client,
    server: &common::Server,
    admin: &str,
    body: &[u8],
) -> (uuid::Uuid, String) {
    let plug = env.add_destination("acme", &[]);
    change_destinations(
        env,
        client,
        server,
        &[
            "destinations",
            "rotate",
            "acme",
            "--secret",
            NEW_SECRET,
            "--overlap",
            "0s",
        ],
    )
    .await;
    let refused = deliver(client, server, plug, SECRET, body).await;
    assert_eq!(refused.status(), 401);
    (plug, wait_rejection(client, server, admin).await)
}

#[tokio::test]
async fn a_signed_delivery_appears_live_and_its_page_shows_the_records() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start("live_delivery").await else {
        return;
    };
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let admin = env.api_key("console", "admin");
    let server = env.serve(&[]);
    let client = client();

    browser.sign_in(&server.base_url, &admin).await;
    assert_eq!(browser.wait_text("h1").await, "Deliveries");
    // Subscribed to the stream, and the (empty) history has loaded: anything now is live.
    browser
        .until(
            "the live stream connected over an empty list",
            WAIT,
            "const s = document.querySelector('.live .state.on'); const e = document.querySelector('.empty');\
             return !!s && !!e && !e.hidden;",
        )
        .await;
    browser.shot("empty").await;

    let t = now();
    let body = pack(
        DEVICE,
        &[
            ("temperature", t - 60, 21.5),
            ("humidity", t - 60, 40.25),
            ("temperature", t - 30, 21.75),
        ],
    );
    let sent = Instant::now();
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &body)
            .await
            .status(),
        200
    );
    let id = browser
        .until(
            "the delivery in the live list",
            Duration::from_secs(2),
            "const r = document.querySelector('table.deliveries tbody tr[data-kind=message]');\
             return r ? r.dataset.id : null;",
        )
        .await;
    let elapsed = sent.elapsed();
    eprintln!("the live row appeared {elapsed:?} after the delivery was sent");
    assert!(
        elapsed <= Duration::from_secs(2),
        "live row after {elapsed:?}"
    );
    browser.shot("live").await;
    let id = id.as_str().unwrap().to_owned();
    let (_, messages) = api_get(&client, &server, &admin, "/api/v1/messages").await;
    assert_eq!(messages["items"][0]["id"].to_string(), id, "{messages}");
    let text = browser.text(&row("message", &id)).await;
    for expected in ["KPN destination", "acme", "stored", "200", "3"] {
        assert!(
            text.contains(expected),
            "{expected:?} not in the row {text:?}"
        );
    }

    // The keyboard: j highlights the first row, Enter opens it.
    browser.keys(&['j']).await;
    browser
        .until(
            "the first row highlighted",
            WAIT,
            &format!(
                "return !!document.querySelector({});",
                json!(format!("{}.current", row("message", &id)))
            ),
        )
        .await;
    browser.keys(&[fantoccini::key::Key::Enter.into()]).await;
    browser
        .until(
            "the delivery's page",
            WAIT,
            &format!(
                "return location.pathname === {} && document.querySelectorAll('table.records tbody tr').length === 3;",
                json!(format!("/console/deliveries/{id}"))
            ),
        )
        .await;
    browser.shot("delivery").await;
    let records = browser.text("table.records tbody").await;
    for expected in ["temperature", "21.5", "humidity", "40.25", "21.75"] {
        assert!(
            records.contains(expected),
            "{expected:?} not in {records:?}"
        );
    }
    let raw = browser
        .js("return document.getElementById('raw').textContent;", vec![])
        .await;
    assert_eq!(
        raw.as_str().unwrap().as_bytes(),
        body.as_slice(),
        "the raw body, exactly"
    );
    let sha = hex::encode(Sha256::digest(&body));
    assert_eq!(browser.text("code.sha256").await, sha);
    let send = browser.text("#copy-send-command").await;
    assert!(
        send.contains("things-receiver send") && send.contains(&plug.to_string()),
        "{send}"
    );
    let curl = browser.text("#copy-curl-command").await;
    assert!(
        curl.contains("sha256sum") && curl.contains("$THINGS_SECRET"),
        "{curl}"
    );
    for command in [&send, &curl] {
        assert!(!command.contains(SECRET), "a secret leaked into {command}");
    }

    // Signing out ends the session, not just the page.
    browser.click("button#signout").await;
    browser.wait_text("form#signin").await;
    let status = browser
        .js_async(
            "const done = arguments[0]; fetch('/console/session').then(r => done(r.status), e => done(String(e)));",
            vec![],
        )
        .await;
    assert_eq!(status, json!(401));
    browser.close().await;
}

#[tokio::test]
async fn pause_holds_live_rows_back_and_the_filter_is_in_the_url() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start("pause_filter").await else {
        return;
    };
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let read = env.api_key("reader", "read");
    let server = env.serve(&[]);
    let client = client();
    let live = "const s = document.querySelector('.live .state.on'); const e = document.querySelector('.empty');\
                return !!s && !!e && !e.hidden;";

    browser.sign_in(&server.base_url, &read).await;
    browser.until("the live stream connected", WAIT, live).await;
    browser.click("button#pause").await;
    for i in 0..2 {
        let body = pack(DEVICE, &[("temperature", now() - 10 + i, 20.0)]);
        assert_eq!(
            deliver(&client, &server, plug, SECRET, &body)
                .await
                .status(),
            200
        );
    }
    browser.wait_contains("#held", "2 new while paused").await;
    assert_eq!(
        browser.count("table.deliveries tbody tr").await,
        0,
        "held back while paused"
    );
    browser.shot("paused").await;
    browser.click("button#pause").await;
    browser
        .until(
            "both rows in after Resume",
            WAIT,
            "return document.querySelectorAll('table.deliveries tbody tr[data-kind=message]').length === 2;",
        )
        .await;
    assert_eq!(browser.text("#held").await, "");
    browser.shot("resumed").await;

    // Only refusals: the filter goes into the URL and applies to history and the stream.
    browser
        .js(
            "document.querySelector('form#filters select[name=verdict]').value = 'rejected';",
            vec![],
        )
        .await;
    browser.click("form#filters button[type=submit]").await;
    browser
        .until(
            "the filtered, empty list with the filter in the URL",
            WAIT,
            &format!("return new URLSearchParams(location.search).get('verdict') === 'rejected' && (() => {{ {live} }})();"),
        )
        .await;
    let stored = pack(DEVICE, &[("temperature", now() - 5, 21.0)]);
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &stored)
            .await
            .status(),
        200
    );
    let wrong = "Wr0ng-Secret#Not.This/Destination!2026";
    assert_eq!(
        deliver(&client, &server, plug, wrong, &stored)
            .await
            .status(),
        401
    );
    let text = browser
        .until(
            "the refusal, live",
            WAIT,
            "const r = document.querySelector('table.deliveries tbody tr[data-kind=event]'); return r ? r.innerText : null;",
        )
        .await;
    assert!(text.as_str().unwrap().contains("rejected"), "{text}");
    assert_eq!(
        browser
            .count("table.deliveries tbody tr[data-kind=message]")
            .await,
        0,
        "a stored delivery passed the verdict filter"
    );
    browser.shot("filtered").await;
    // A permalink with the filter draws the same list.
    browser.client.refresh().await.unwrap();
    browser
        .until(
            "the filtered list after a reload",
            WAIT,
            "return document.querySelector('form#filters select[name=verdict]')?.value === 'rejected'\
             && document.querySelectorAll('table.deliveries tbody tr[data-kind=event]').length === 1\
             && document.querySelectorAll('table.deliveries tbody tr[data-kind=message]').length === 0;",
        )
        .await;
    browser.close().await;
}

#[tokio::test]
async fn markup_in_a_delivery_stays_text_and_a_quarantine_says_why() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start("markup").await else {
        return;
    };
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let read = env.api_key("reader", "read");
    let server = env.serve(&[]);
    let client = client();
    // Not a valid SenML name, so it is quarantined, and markup in the body and a header.
    let body = br#"[{"bn":"urn:dev:IMEI:356938035643809:","n":"<img src=x id=pwned-body>","v":1}]"#;
    let token = Token::sign(body, SECRET.as_bytes()).to_hex();
    let answer = deliver_with(
        &client,
        &server,
        plug,
        &token,
        body,
        &[("x-note", "<b id=\"pwned-header\">bold</b>")],
    )
    .await;
    assert_eq!(answer.status(), 200);
    let (_, messages) = api_get(&client, &server, &read, "/api/v1/messages").await;
    let id = messages["items"][0]["id"].to_string();

    browser.sign_in(&server.base_url, &read).await;
    browser
        .goto(&server.url(&format!("/console/deliveries/{id}")))
        .await;
    let reason = browser.wait_text(".quarantine").await;
    assert!(!reason.is_empty());
    let raw = browser
        .js("return document.getElementById('raw').textContent;", vec![])
        .await;
    assert_eq!(raw.as_str().unwrap().as_bytes(), body.as_slice());
    let headers = browser.text("table.headers").await;
    assert!(
        headers.contains("<b id=\"pwned-header\">bold</b>"),
        "{headers}"
    );
    browser.shot("quarantined").await;
    let injected = browser
        .js(
            "return ['pwned-body', 'pwned-header'].filter(id => document.getElementById(id)).length;",
            vec![],
        )
        .await;
    assert_eq!(injected, json!(0), "markup from a delivery became elements");
    browser.close().await;
}

#[tokio::test]
async fn a_rotated_away_secret_is_diagnosed_and_replay_stores_it_after_the_fix() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start("rotated_replay").await else {
        return;
    };
    let env = Env::new().await;
    let admin = env.api_key("console", "admin");
    let server = env.serve(&[]);
    let client = client();
    let body = pack(DEVICE, &[("temperature", now() - 10, 19.5)]);
    let (_plug, rejection) = rotated_away_rejection(&env, &client, &server, &admin, &body).await;

    browser.sign_in(&server.base_url, &admin).await;
    let listed = browser.wait_text(&row("event", &rejection)).await;
    assert!(listed.contains("rejected"), "{listed:?}");
    browser.shot("listed").await;
    browser
        .click(&format!("{} a", row("event", &rejection)))
        .await;
    let diagnosis = browser.wait_contains("#diagnosis", "rotated").await;
    assert!(diagnosis.contains("rotated_secret"), "{diagnosis}");
    browser.shot("diagnosis").await;

    // The fix: the destination goes back to the secret KPN still signs with.
    change_destinations(
        &env,
        &client,
        &server,
        &[
            "destinations",
            "rotate",
            "acme",
            "--secret",
            SECRET,
            "--overlap",
            "0s",
        ],
    )
    .await;
    browser.click("button#replay").await;
    let href = browser
        .until(
            "the link to the stored delivery",
            WAIT,
            "const a = document.querySelector('.replay-result a.replayed'); return a ? a.getAttribute('href') : null;",
        )
        .await;
    browser.shot("replayed").await;
    let href = href.as_str().unwrap().to_owned();
    let message_id = href
        .strip_prefix("/console/deliveries/")
        .unwrap()
        .to_owned();
    let (status, message) = api_get(
        &client,
        &server,
        &admin,
        &format!("/api/v1/messages/{message_id}"),
    )
    .await;
    assert_eq!(status, 200, "{message}");
    assert_eq!(message["replay_of"], json!(rejection));
    browser.click(".replay-result a.replayed").await;
    let back = browser.wait_text("a.replay-of").await;
    assert!(back.contains(&rejection), "{back}");
    assert_eq!(browser.count("table.records tbody tr").await, 1);
    browser.shot("stored").await;
    browser.close().await;
}

#[tokio::test]
async fn a_read_key_sees_a_rejection_but_cannot_replay_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start("read_key").await else {
        return;
    };
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let admin = env.api_key("admin", "admin");
    let read = env.api_key("reader", "read");
    let server = env.serve(&[]);
    let client = client();
    let body = pack(DEVICE, &[("temperature", now() - 10, 19.5)]);
    let wrong = "Wr0ng-Secret#Not.This/Destination!2026";
    assert_eq!(
        deliver(&client, &server, plug, wrong, &body).await.status(),
        401
    );
    let rejection = wait_rejection(&client, &server, &admin).await;

    browser.sign_in(&server.base_url, &read).await;
    browser
        .click(&format!("{} a", row("event", &rejection)))
        .await;
    let note = browser.wait_contains(".notice", "admin").await;
    assert!(note.contains("diagnosis"), "{note}");
    assert_eq!(
        browser.count("button#replay").await,
        0,
        "a read key gets no replay button"
    );
    assert_eq!(browser.count("#diagnosis").await, 0);
    browser.shot("rejection").await;

    // Asking anyway, with the session's own CSRF token, from the console's origin: 403.
    let status = browser
        .js_async(
            "const [id, done] = arguments;\
             fetch('/console/session').then(r => r.json())\
               .then(s => fetch(`/api/v1/rejections/${id}/replay`, {method: 'POST', credentials: 'same-origin', headers: {'X-CSRF-Token': s.csrf}}))\
               .then(r => done(r.status), e => done(String(e)));",
            vec![json!(rejection)],
        )
        .await;
    assert_eq!(status, json!(403));
    let (_, event) = api_get(
        &client,
        &server,
        &admin,
        &format!("/api/v1/rejections/{rejection}"),
    )
    .await;
    assert_eq!(event["replayed_message_id"], Value::Null, "{event}");
    browser.close().await;
}

/// A page on another origin (plain HTTP on another loopback port) that POSTs to `target`
/// with the browser's credentials as soon as it loads, then marks itself done.
async fn foreign_site(target: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let page = format!(
        "<!doctype html><html><body><p id=\"state\">sending</p><script>\
         fetch({target}, {{method: 'POST', mode: 'no-cors', credentials: 'include',\
           headers: {{'Content-Type': 'text/plain'}}, body: '{{}}'}})\
           .then(() => 'sent', e => 'failed: ' + e)\
           .then(t => {{ document.getElementById('state').textContent = 'done ' + t; }});\
         </script></body></html>",
        target = json!(target)
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let page = page.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_cross_site_post_is_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start("cross_site").await else {
        return;
    };
    let env = Env::new().await;
    let admin = env.api_key("console", "admin");
    let server = env.serve(&[]);
    let client = client();
    let body = pack(DEVICE, &[("temperature", now() - 10, 19.5)]);
    let (_plug, rejection) = rotated_away_rejection(&env, &client, &server, &admin, &body).await;
    // Fixed, so that a replay the server accepted would store it.
    change_destinations(
        &env,
        &client,
        &server,
        &[
            "destinations",
            "rotate",
            "acme",
            "--secret",
            SECRET,
            "--overlap",
            "0s",
        ],
    )
    .await;
    let replay_path = format!("/api/v1/rejections/{rejection}/replay");

    // Signed in, the browser visits another site that POSTs to our API with credentials.
    browser.sign_in(&server.base_url, &admin).await;
    let (site, task) = foreign_site(server.url(&replay_path)).await;
    browser.goto(&site).await;
    browser.wait_contains("#state", "done").await;
    browser.shot("foreign").await;
    let (_, event) = api_get(
        &client,
        &server,
        &admin,
        &format!("/api/v1/rejections/{rejection}"),
    )
    .await;
    assert_eq!(
        event["replayed_message_id"],
        Value::Null,
        "replayed from another site: {event}"
    );
    task.abort();

    // The same with the session cookie and its CSRF token but a foreign Origin: 403. Only
    // our own origin with the token goes through, so the refusals were about where it came
    // from.
    let login = client
        .post(server.url("/console/session"))
        .header("Origin", &server.base_url)
        .json(&json!({"key": admin}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let cookie = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("things_session="))
        .and_then(|v| v.split(';').next())
        .expect("the session cookie")
        .to_owned();
    let csrf = login.json::<Value>().await.unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    let post = |origin: &str, token: Option<&str>| {
        let mut request = client
            .post(server.url(&replay_path))
            .header("Cookie", &cookie)
            .header("Origin", origin);
        if let Some(token) = token {
            request = request.header("X-CSRF-Token", token);
        }
        request.send()
    };
    let foreign = site.trim_end_matches('/');
    assert_eq!(post(foreign, Some(&csrf)).await.unwrap().status(), 403);
    assert_eq!(post(&server.base_url, None).await.unwrap().status(), 403);
    assert_eq!(
        post(&server.base_url, Some("not-the-token"))
            .await
            .unwrap()
            .status(),
        403
    );
    let (_, event) = api_get(
        &client,
        &server,
        &admin,
        &format!("/api/v1/rejections/{rejection}"),
    )
    .await;
    assert_eq!(event["replayed_message_id"], Value::Null, "{event}");
    assert_eq!(
        post(&server.base_url, Some(&csrf)).await.unwrap().status(),
        201
    );
    browser.close().await;
}

#[tokio::test]
async fn a_device_page_draws_a_chart_of_the_sent_points() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start("device_chart").await else {
        return;
    };
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let read = env.api_key("reader", "read");
    let server = env.serve(&[]);
    let client = client();
    // Twenty minutes apart over the last two hours: one bucket each in the default range.
    let t = now();
    let values = [18.0, 18.5, 19.25, 20.0, 19.5, 21.0];
    let points: Vec<(&str, i64, f64)> = values
        .iter()
        .enumerate()
        .map(|(i, v)| ("temperature", t - 7200 + 1200 * i as i64, *v))
        .collect();
    let body = pack(DEVICE, &points);
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &body)
            .await
            .status(),
        200
    );

    browser.sign_in(&server.base_url, &read).await;
    let urn = DEVICE.replace(':', "%3A");
    browser
        .goto(&server.url(&format!("/console/devices/{urn}")))
        .await;
    let drawn = browser
        .until(
            "a chart with uPlot's canvas",
            WAIT,
            "const c = document.querySelector('.chart'); \
             if (!c || !c.querySelector('canvas') || !c.uplot) return null;\
             return c.uplot.data[1].filter(v => v !== null && v !== undefined).length;",
        )
        .await;
    browser.shot("chart").await;
    assert_eq!(drawn, json!(values.len()), "points uPlot holds");
    let ys = browser
        .js(
            "return document.querySelector('.chart').uplot.data[1].filter(v => v !== null);",
            vec![],
        )
        .await;
    let ys: Vec<f64> = serde_json::from_value(ys).unwrap();
    assert_eq!(ys, values, "the values drawn are the values sent");
    browser.close().await;
}
