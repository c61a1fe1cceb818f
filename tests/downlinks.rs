//! Downlinks end to end: the real binary, a real PostgreSQL, and a strict local fake of KPN's
//! identity provider and actuator API (`common/fake_kpn.rs`).

mod common;
#[path = "common/fake_kpn.rs"]
mod fake_kpn;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use fake_kpn::{CLIENT_ID, CLIENT_SECRET, Fail, FakeKpn};
use serde_json::{Value, json};

const DEVICE: &str = "urn:dev:DEVEUI:0018B21000008C47:";
const HOUR: Duration = Duration::from_secs(3600);

/// Flags every test server gets unless the test gives its own value.
const DEFAULTS: &[(&str, &str)] = &[
    ("--kpn-timeout", "1s"),
    ("--downlink-retry-base", "100ms"),
    ("--downlink-retry-max", "1s"),
    ("--downlink-lease", "7s"),
];

/// `serve` with KPN credentials in its environment, pointed at `fake`.
fn serve_kpn(env: &Env, fake: &FakeKpn, extra: &[&str]) -> Server {
    let mut cmd = env.command();
    cmd.env("KPN_CLIENT_ID", CLIENT_ID)
        .env("KPN_CLIENT_SECRET", CLIENT_SECRET);
    env.with_status_key(serve_cmd(cmd, fake, extra))
}

fn serve_cmd(mut cmd: std::process::Command, fake: &FakeKpn, extra: &[&str]) -> Server {
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .args(fake.flags())
        .args(extra);
    for (flag, value) in DEFAULTS {
        if !extra.contains(flag) {
            cmd.args([flag, value]);
        }
    }
    Server::start(cmd)
}

/// Makes [`DEVICE`] known by storing a delivery for it, as KPN would send it.
async fn make_device_known(env: &Env, server: &Server, client: &reqwest::Client) {
    let plug = env.add_destination("lora", &[]);
    // The destination reaches the running server through its change notification.
    wait_ready(client, server, |j| j["destinations"]["bound"] == 1).await;
    let response = deliver(
        client,
        server,
        plug,
        SECRET,
        &fixture("lora-raw-legacy.json"),
    )
    .await;
    assert_eq!(response.status(), 200);
}

async fn post_downlink(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    urn: &str,
    body: Value,
    idempotency_key: Option<&str>,
) -> (u16, Value) {
    let mut request = client
        .post(server.url(&format!("/api/v1/devices/{urn}/downlinks")))
        .bearer_auth(key)
        .json(&body);
    if let Some(k) = idempotency_key {
        request = request.header("Idempotency-Key", k);
    }
    status_json(request.send().await.unwrap()).await
}

/// Queues a downlink that must be accepted for queueing; returns its id.
async fn queue(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    port: u16,
    hex: &str,
) -> String {
    let (status, body) = post_downlink(
        client,
        server,
        key,
        DEVICE,
        json!({"port": port, "payload_hex": hex}),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued", "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Polls the downlink until it reaches `want`; fails if it ends otherwise or takes > 30 s.
async fn wait_for(
    client: &reqwest::Client,
    server: &Server,
    key: &str,
    id: &str,
    want: &str,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = api_get(client, server, key, &format!("/api/v1/downlinks/{id}")).await;
        assert_eq!(status, 200, "{body}");
        let now = body["status"].as_str().unwrap().to_owned();
        if now == want {
            return body;
        }
        let is_final = ["accepted", "failed", "cancelled"].contains(&now.as_str());
        assert!(!is_final, "downlink ended {now}, expected {want}: {body}");
        assert!(Instant::now() < deadline, "downlink still {now}: {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `check` holds for the fake, at most 30 s.
async fn wait_until(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn calls_for(fake: &FakeKpn, id: &str) -> usize {
    fake.calls()
        .iter()
        .filter(|c| c.external_reference == id)
        .count()
}

#[tokio::test]
async fn many_downlinks_share_one_token_and_reach_kpn_exactly_as_asked() {
    let fake = FakeKpn::start(HOUR);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let client = client();

    // Queued while no process can send: the first worker takes them all in one batch and
    // sends them at once, so they all need the first token at the same moment.
    let server = env.with_status_key(serve_cmd(env.command(), &fake, &[]));
    make_device_known(&env, &server, &client).await;
    let mut asked = HashMap::new();
    for i in 0..10u16 {
        let hex = format!("0b{i:02x}");
        let port = (100 + i).to_string();
        let id = env.cli_ok(&["downlinks", "send", DEVICE, "--port", &port, "--hex", &hex]);
        asked.insert(id.trim().to_owned(), (100 + i, hex));
    }
    drop(server);
    let server = serve_kpn(&env, &fake, &[]);
    for id in asked.keys() {
        wait_for(&client, &server, &key, id, "accepted").await;
    }
    assert_eq!(
        fake.token_requests(),
        1,
        "callers waiting for a token each asked for one"
    );

    for i in 0..20u16 {
        let hex = format!("0A{i:02X}");
        let id = queue(&client, &server, &key, i + 1, &hex).await;
        asked.insert(id, (i + 1, hex.to_lowercase()));
    }
    for id in asked.keys() {
        let done = wait_for(&client, &server, &key, id, "accepted").await;
        assert_eq!(done["attempts"], 1);
        assert_eq!(done["kpn_status"], 200);
        assert_eq!(done["kpn_response"]["externalReference"], id.as_str());
    }

    assert_eq!(fake.token_requests(), 1, "one token serves every downlink");
    let calls = fake.calls();
    assert_eq!(calls.len(), 30);
    for call in &calls {
        let (port, hex) = &asked[&call.external_reference];
        assert_eq!((call.port, &call.payload_hex), (*port, hex));
        assert_eq!(call.device, DEVICE);
        assert_eq!(call.client_id, None);
    }
    assert_eq!(fake.violations(), Vec::<String>::new());

    // Listing: by device in any spelling, by status, in pages.
    let lower = DEVICE.to_lowercase();
    let (status, page) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/downlinks?device={lower}&status=accepted&limit=15"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 15);
    assert_eq!(page["items"][0]["payload_hex"], "0a13", "newest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/downlinks?device={lower}&status=accepted&limit=15&cursor={cursor}"),
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 15);
    assert_eq!(rest["next_cursor"], Value::Null);
    let (_, none) = api_get(&client, &server, &key, "/api/v1/downlinks?status=queued").await;
    assert_eq!(none["items"], json!([]));
}

#[tokio::test]
async fn the_token_is_replaced_before_it_expires() {
    // KPN's tokens last an hour; these ten seconds, so the client replaces them in the last two.
    let lifetime = Duration::from_secs(10);
    let fake = FakeKpn::start(lifetime);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let server = serve_kpn(&env, &fake, &[]);
    let client = client();
    make_device_known(&env, &server, &client).await;

    let first = queue(&client, &server, &key, 2, "01").await;
    wait_for(&client, &server, &key, &first, "accepted").await;
    let issued = fake.issued_at()[0];
    let expires = issued + lifetime;
    // Close to its end, but still valid.
    wait_until("the token to near its end", || {
        issued.elapsed() >= Duration::from_millis(8500)
    })
    .await;
    let second = queue(&client, &server, &key, 2, "02").await;
    wait_for(&client, &server, &key, &second, "accepted").await;

    let calls = fake.calls();
    assert_eq!(fake.token_requests(), 2);
    assert!(calls[1].at < expires, "the test was too slow to check this");
    assert_ne!(
        calls[0].token, calls[1].token,
        "a token about to expire was used instead of being replaced"
    );

    // Long after expiry: replaced, never sent expired.
    wait_until("the tokens to expire", || fake.all_tokens_expired()).await;
    let third = queue(&client, &server, &key, 2, "03").await;
    wait_for(&client, &server, &key, &third, "accepted").await;
    assert_eq!(fake.token_requests(), 3);
    assert_eq!(fake.expired_rejections(), 0, "an expired token was sent");
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_401_or_302_gets_exactly_one_new_token_and_one_retry() {
    let fake = FakeKpn::start(HOUR);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let server = serve_kpn(&env, &fake, &[]);
    let client = client();
    make_device_known(&env, &server, &client).await;

    let mut tokens = 0;
    for refusal in [Fail::Unauthorized, Fail::Redirect] {
        // Refused once: a new token, the same call again, accepted in one attempt.
        fake.fail_next(std::slice::from_ref(&refusal));
        let id = queue(&client, &server, &key, 2, "0a0b").await;
        let done = wait_for(&client, &server, &key, &id, "accepted").await;
        assert_eq!(done["attempts"], 1, "{refusal:?}");
        assert_eq!(calls_for(&fake, &id), 2, "{refusal:?}");
        tokens += 1;
        assert_eq!(fake.token_requests(), tokens + 1, "{refusal:?}");
        let calls: Vec<_> = fake
            .calls()
            .into_iter()
            .filter(|c| c.external_reference == id)
            .collect();
        assert_ne!(calls[0].token, calls[1].token, "{refusal:?}");

        // Refused again with the new token: no third call, the downlink fails with a reason.
        fake.fail_next(&[refusal.clone(), refusal.clone()]);
        let id = queue(&client, &server, &key, 2, "0a0c").await;
        let done = wait_for(&client, &server, &key, &id, "failed").await;
        tokens += 1;
        assert_eq!(calls_for(&fake, &id), 2, "{refusal:?}");
        assert_eq!(fake.token_requests(), tokens + 1, "{refusal:?}");
        let code = if matches!(refusal, Fail::Redirect) {
            302
        } else {
            401
        };
        assert_eq!(done["kpn_status"], code);
        assert!(
            done["error"].as_str().unwrap().contains(&code.to_string()),
            "{done}"
        );
    }
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn temporary_failures_are_retried_with_backoff_honouring_retry_after() {
    let fake = FakeKpn::start(HOUR);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let server = serve_kpn(&env, &fake, &[]);
    let client = client();
    make_device_known(&env, &server, &client).await;

    fake.fail_next(&[
        Fail::Status(500),
        Fail::TooMany(1),
        Fail::Slow(Duration::from_secs(3)), // beyond --kpn-timeout 1s
        Fail::Status(503),
    ]);
    let id = queue(&client, &server, &key, 5, "ff").await;
    let done = wait_for(&client, &server, &key, &id, "accepted").await;
    assert_eq!(done["attempts"], 5, "{done}");
    let calls = fake.calls();
    assert_eq!(calls.len(), 5);
    assert_eq!(
        calls.iter().map(|c| c.answered).collect::<Vec<_>>(),
        [500, 429, 200, 503, 200]
    );
    assert!(
        calls[2].at - calls[1].at >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn refusals_fail_at_once_and_endless_errors_fail_after_the_last_attempt() {
    let fake = FakeKpn::start(HOUR);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let server = serve_kpn(&env, &fake, &["--downlink-max-attempts", "3"]);
    let client = client();
    make_device_known(&env, &server, &client).await;

    for code in [400, 403, 404] {
        fake.fail_next(&[Fail::Status(code)]);
        let id = queue(&client, &server, &key, 2, "00").await;
        let done = wait_for(&client, &server, &key, &id, "failed").await;
        assert_eq!(done["attempts"], 1, "{done}");
        assert_eq!(done["kpn_status"], code);
        assert!(done["error"].as_str().unwrap().contains(&code.to_string()));
        assert_eq!(calls_for(&fake, &id), 1);
    }

    fake.fail_next(&[Fail::Status(502), Fail::Status(502), Fail::Status(502)]);
    let id = queue(&client, &server, &key, 2, "00").await;
    let done = wait_for(&client, &server, &key, &id, "failed").await;
    assert_eq!(done["attempts"], 3, "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("gave up after 3 attempts") && error.contains("502"),
        "{error}"
    );
    assert_eq!(calls_for(&fake, &id), 3);

    // A failed downlink cannot be cancelled any more.
    let response = client
        .delete(server.url(&format!("/api/v1/downlinks/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(response).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn queued_downlinks_survive_a_restart() {
    let fake = FakeKpn::start(HOUR);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let client = client();

    // The first attempt fails and the next is minutes away when the service stops.
    let server = serve_kpn(
        &env,
        &fake,
        &["--downlink-retry-base", "5m", "--downlink-retry-max", "5m"],
    );
    make_device_known(&env, &server, &client).await;
    fake.fail_next(&[Fail::Status(503)]);
    let retried = queue(&client, &server, &key, 2, "0101").await;
    wait_until("the first attempt", || fake.calls().len() == 1).await;
    let waiting = wait_for(&client, &server, &key, &retried, "queued").await;
    assert_eq!(waiting["attempts"], 1);
    assert!(server.stop().await.success());

    // Queued while no service runs at all.
    let out = env.cli_ok(&["downlinks", "send", DEVICE, "--port", "3", "--hex", "BEEF"]);
    let offline = out.trim().to_owned();
    assert!(uuid::Uuid::parse_str(&offline).is_ok(), "{out}");

    // The retry is not due for minutes: make it due now, as if the time had passed.
    let mut db = connect(&env.database_url).await;
    sqlx::query("UPDATE downlinks SET next_attempt_at = now() WHERE id = $1::uuid")
        .bind(&retried)
        .execute(&mut db)
        .await
        .unwrap();

    let server = serve_kpn(&env, &fake, &[]);
    let done = wait_for(&client, &server, &key, &retried, "accepted").await;
    assert_eq!(done["attempts"], 2);
    let done = wait_for(&client, &server, &key, &offline, "accepted").await;
    assert_eq!(
        (done["attempts"].clone(), done["port"].clone()),
        (json!(1), json!(3))
    );
    assert_eq!(calls_for(&fake, &retried), 2);
    assert_eq!(calls_for(&fake, &offline), 1);
    let call = fake
        .calls()
        .into_iter()
        .find(|c| c.external_reference == offline)
        .unwrap();
    assert_eq!(call.payload_hex, "beef");
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn two_processes_never_send_the_same_downlink_twice() {
    let fake = FakeKpn::start(HOUR);
    fake.set_latency(Duration::from_millis(20));
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let a = serve_kpn(&env, &fake, &[]);
    let b = serve_kpn(&env, &fake, &[]);
    let client = client();
    make_device_known(&env, &a, &client).await;

    // First attempts are turned away, so that all downlinks wait in the outbox together.
    const N: usize = 60;
    fake.fail_next(&vec![Fail::TooMany(3); N]);
    let mut ids = Vec::new();
    for i in 0..N {
        let server = if i % 2 == 0 { &a } else { &b };
        ids.push(queue(&client, server, &key, 2, &format!("{i:04x}")).await);
    }
    wait_until("every first attempt", || fake.calls().len() >= N).await;
    let mut db = connect(&env.database_url).await;
    // Make them all due at one instant: both workers wake for it and claim at once.
    sqlx::query(
        "UPDATE downlinks SET next_attempt_at = now() + interval '1 second' WHERE status = 'queued'",
    )
    .execute(&mut db)
    .await
    .unwrap();
    for id in &ids {
        wait_for(&client, &a, &key, id, "accepted").await;
    }

    let accepted: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.answered == 200)
        .collect();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for call in &accepted {
        *per_id.entry(call.external_reference.as_str()).or_default() += 1;
    }
    assert!(
        ids.iter().all(|id| per_id.get(id.as_str()) == Some(&1)),
        "some downlink was sent twice: {per_id:?}"
    );
    assert_eq!(accepted.len(), N);
    // Each process caches its own token: at most one request each.
    assert!(fake.token_requests() <= 2);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_downlink_stranded_mid_send_is_taken_over_after_its_lease() {
    let fake = FakeKpn::start(HOUR);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let client = client();
    let crashing = serve_kpn(&env, &fake, &[]);
    make_device_known(&env, &crashing, &client).await;

    // The call hangs at KPN; the process dies before it learns the outcome.
    fake.fail_next(&[Fail::Slow(Duration::from_secs(60))]);
    let id = queue(&client, &crashing, &key, 2, "dead").await;
    wait_until("the call to reach KPN", || fake.calls().len() == 1).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(crashing.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(crashing);
    let mut db = connect(&env.database_url).await;
    let (status, lease_left): (String, f64) = sqlx::query_as(
        "SELECT status, EXTRACT(EPOCH FROM lease_until - now())::float8 FROM downlinks WHERE id = $1::uuid",
    )
    .bind(&id)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(status, "sending");
    assert!(lease_left > 0.0, "the lease should still run: {lease_left}");

    let started = Instant::now();
    let server = serve_kpn(&env, &fake, &[]);
    let done = wait_for(&client, &server, &key, &id, "accepted").await;
    assert_eq!(done["attempts"], 2);
    // Not taken over before the lease ran out.
    assert!(started.elapsed().as_secs_f64() >= lease_left - 0.5);
    // Sent again with the same external reference, so KPN can tell it is the same downlink.
    assert_eq!(calls_for(&fake, &id), 2);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn bad_requests_get_clear_errors_and_send_nothing() {
    let fake = FakeKpn::start(HOUR);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let reader = env.api_key("dash", "read");
    let client = client();

    // Without credentials the service runs and says what to configure.
    let plain = env.with_status_key(serve_cmd(env.command(), &fake, &[]));
    let (status, body) = post_downlink(
        &client,
        &plain,
        &key,
        DEVICE,
        json!({"port": 2, "payload_hex": "00"}),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("not_configured")),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap().contains("KPN_CLIENT_ID"),
        "{body}"
    );
    drop(plain);

    let server = serve_kpn(&env, &fake, &[]);
    make_device_known(&env, &server, &client).await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"port": 2, "payload_hex": "abc"}), 422, "payload_hex"),
        (json!({"port": 2, "payload_hex": "0g"}), 422, "payload_hex"),
        (
            json!({"port": 2, "payload_hex": "00".repeat(243)}),
            422,
            "payload_hex",
        ),
        (json!({"port": 2, "payload_hex": ""}), 422, "payload_hex"),
        (json!({"port": 0, "payload_hex": "00"}), 422, "port"),
        (json!({"port": 224, "payload_hex": "00"}), 422, "port"),
        (json!({"payload_hex": "00"}), 422, "port"),
        (json!({"port": "2", "payload_hex": "00"}), 400, "port"),
        (json!({"port": 2}), 400, "payload_hex"),
        (
            json!({"port": 2, "payload_hex": "00", "records": []}),
            400,
            "not both",
        ),
        (json!([1, 2]), 400, "object"),
    ];
    for (body, want, mentions) in cases {
        let (status, answer) =
            post_downlink(&client, &server, &key, DEVICE, body.clone(), None).await;
        assert_eq!(status, want, "{body} -> {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(mentions),
            "{body} -> {answer}"
        );
    }
    let not_json = client
        .post(server.url(&format!("/api/v1/devices/{DEVICE}/downlinks")))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{port: 2")
        .send()
        .await
        .unwrap();
    assert_eq!(status_json(not_json).await.0, 400);

    let (status, body) = post_downlink(
        &client,
        &server,
        &key,
        "urn:dev:DEVEUI:FFFFFFFFFFFFFFFF:",
        json!({"port": 2, "payload_hex": "00"}),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (status, _) = post_downlink(
        &client,
        &server,
        &reader,
        DEVICE,
        json!({"port": 2, "payload_hex": "00"}),
        None,
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = api_get(&client, &server, &key, "/api/v1/downlinks/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, _) = api_get(
        &client,
        &server,
        &key,
        &format!("/api/v1/downlinks/{}", uuid::Uuid::new_v4()),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = api_get(&client, &server, &key, "/api/v1/downlinks?status=done").await;
    assert_eq!(status, 400);

    assert_eq!(fake.calls().len(), 0);
    assert_eq!(fake.token_requests(), 0);
    let mut db = connect(&env.database_url).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM downlinks")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn idempotency_keys_and_cancelling() {
    let fake = FakeKpn::start(HOUR);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let client = client();
    let server = serve_kpn(
        &env,
        &fake,
        &["--downlink-retry-base", "5m", "--downlink-retry-max", "5m"],
    );
    make_device_known(&env, &server, &client).await;

    // The same request twice with one key queues once.
    let body = json!({"port": 7, "payload_hex": "0102"});
    let (s1, first) =
        post_downlink(&client, &server, &key, DEVICE, body.clone(), Some("cmd-1")).await;
    let (s2, again) = post_downlink(&client, &server, &key, DEVICE, body, Some("cmd-1")).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["id"], again["id"]);
    let id = first["id"].as_str().unwrap();
    let (status, other) = post_downlink(
        &client,
        &server,
        &key,
        DEVICE,
        json!({"port": 7, "payload_hex": "0103"}),
        Some("cmd-1"),
    )
    .await;
    assert_eq!(
        (status, other["error"].as_str()),
        (409, Some("conflict")),
        "{other}"
    );
    wait_for(&client, &server, &key, id, "accepted").await;
    assert_eq!(calls_for(&fake, id), 1);

    // Cancelled between attempts: never sent again.
    fake.fail_next(&[Fail::Status(500)]);
    let id = queue(&client, &server, &key, 2, "0c").await;
    wait_until("the first attempt", || calls_for(&fake, &id) == 1).await;
    wait_for(&client, &server, &key, &id, "queued").await;
    let response = client
        .delete(server.url(&format!("/api/v1/downlinks/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let (status, cancelled) = status_json(response).await;
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (200, Some("cancelled")),
        "{cancelled}"
    );
    assert!(cancelled["error"].as_str().unwrap().contains("500"));

    // The CLI: queue, show, cancel, list; a cancelled downlink is not sent.
    let out = env.cli_ok(&["downlinks", "send", DEVICE, "--port", "9", "--hex", "aa"]);
    let cli_id = out.trim().to_owned();
    let shown = env.cli_ok(&["downlinks", "show", &cli_id, "--json"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert!(["queued", "sending", "accepted"].contains(&shown["status"].as_str().unwrap()));
    let out = env.cli(&["downlinks", "cancel", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled"));
    let listed = env.cli_ok(&["downlinks", "list", "--status", "cancelled", "--json"]);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    // send --wait follows it until KPN took it.
    let out = env.cli_ok(&[
        "downlinks",
        "send",
        DEVICE,
        "--port",
        "2",
        "--hex",
        "0a0b",
        "--wait",
        "--json",
    ]);
    let waited: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(waited["status"], "accepted", "{waited}");
    assert_eq!(waited["kpn_status"], 200);

    assert_eq!(calls_for(&fake, &id), 1);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn a_sub_customer_gets_a_context_switch_and_its_client_id() {
    let fake = FakeKpn::start(HOUR);
    fake.set_sub_customer("sub-customer-42");
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let client = client();
    // Credentials from a file this time.
    let file = env.data_dir.path().join("kpn.env");
    std::fs::write(
        &file,
        format!("# KPN API key\nKPN_CLIENT_ID={CLIENT_ID}\nKPN_CLIENT_SECRET='{CLIENT_SECRET}'\n"),
    )
    .unwrap();
    let file = file.to_str().unwrap().to_owned();
    let server = env.with_status_key(serve_cmd(
        env.command(),
        &fake,
        &[
            "--kpn-credentials-file",
            &file,
            "--kpn-sub-customer",
            "sub-customer-42",
        ],
    ));
    make_device_known(&env, &server, &client).await;

    let a = queue(&client, &server, &key, 2, "01").await;
    let b = queue(&client, &server, &key, 2, "02").await;
    wait_for(&client, &server, &key, &a, "accepted").await;
    wait_for(&client, &server, &key, &b, "accepted").await;
    assert_eq!(fake.token_requests(), 1);
    assert_eq!(fake.context_switches(), 1);
    assert!(
        fake.calls()
            .iter()
            .all(|c| c.client_id.as_deref() == Some("sub-customer-42"))
    );
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn wrong_credentials_fail_downlinks_with_the_reason_and_never_show_the_secret() {
    let fake = FakeKpn::start(HOUR);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let client = client();
    let wrong_secret = "not-the-Secret-4711";
    let mut cmd = env.command();
    cmd.env("KPN_CLIENT_ID", CLIENT_ID)
        .env("KPN_CLIENT_SECRET", wrong_secret);
    let server = env.with_status_key(serve_cmd(cmd, &fake, &["--downlink-max-attempts", "2"]));
    make_device_known(&env, &server, &client).await;

    let id = queue(&client, &server, &key, 2, "00").await;
    let done = wait_for(&client, &server, &key, &id, "failed").await;
    assert_eq!(done["attempts"], 2);
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("gave up after 2 attempts") && error.contains("401"),
        "{error}"
    );
    assert_eq!(fake.token_requests(), 2);
    assert!(fake.calls().is_empty(), "a call went out without a token");
    let (_, listed) = api_get(&client, &server, &key, "/api/v1/downlinks").await;
    assert!(!listed.to_string().contains(wrong_secret));
    assert!(!server.banner.contains(wrong_secret));
    assert_eq!(fake.violations(), Vec::<String>::new());
}

/// Strange identity-provider answers (`expires_in` absurd, negative, missing, not a number)
/// and a KPN answer without end: downlinks still go out, and the worker never fails (its
/// supervisor would count a panic as a restart).
#[tokio::test]
async fn strange_kpn_answers_neither_stop_nor_crash_the_worker() {
    let fake = FakeKpn::start(HOUR);
    let env = Env::new().await;
    let key = env.api_key("ops", "downlink");
    let client = client();
    let server = serve_kpn(&env, &fake, &[]);
    make_device_known(&env, &server, &client).await;

    let cases = [
        json!(1e300),
        json!(-60),
        Value::Null,
        json!("soon"),
        json!("1e300"),
        json!(f64::MAX),
    ];
    for (i, expires_in) in cases.iter().enumerate() {
        fake.set_expires_in(expires_in.clone());
        let hex = format!("0c{i:02x}");
        let first = queue(&client, &server, &key, 7, &hex).await;
        let done = wait_for(&client, &server, &key, &first, "accepted").await;
        assert_eq!(done["kpn_status"], 200, "{expires_in}: {done}");
        // The next one needs a new token: the current one is refused once.
        fake.fail_next(&[Fail::Unauthorized]);
        let second = queue(&client, &server, &key, 7, &hex).await;
        wait_for(&client, &server, &key, &second, "accepted").await;
        let worker = &readyz(&client, &server).await["downlink_worker"];
        assert_eq!(worker["running"], true, "{expires_in}: {worker}");
        assert_eq!(worker["restarts"], 0, "{expires_in}: {worker}");
    }

    // An answer that never ends is read only so far, and the downlink counts as accepted.
    fake.fail_next(&[Fail::Endless]);
    let id = queue(&client, &server, &key, 7, "0d").await;
    let done = wait_for(&client, &server, &key, &id, "accepted").await;
    let answer = done["kpn_response"].as_str().expect("truncated text");
    assert!(
        answer.starts_with(&format!(r#"{{"externalReference":"{id}","padding":"xxx"#)),
        "{done}"
    );
    assert!(answer.len() < 5000, "{} bytes kept", answer.len());

    // A NUL in the answer cannot go into a text column: it is replaced, so the outcome is
    // recorded (and the downlink not sent again when its lease runs out).
    fake.fail_next(&[Fail::NulByte]);
    let id = queue(&client, &server, &key, 7, "0e").await;
    let done = wait_for(&client, &server, &key, &id, "accepted").await;
    assert_eq!(done["kpn_response"], "queued\u{FFFD} ok", "{done}");
    assert_eq!(calls_for(&fake, &id), 1);
    let worker = &readyz(&client, &server).await["downlink_worker"];
    assert_eq!(worker, &json!({"running": true, "restarts": 0}));
    assert_eq!(fake.violations(), Vec::<String>::new());
}
