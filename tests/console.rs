//! The console's serving and sign-in: the page and its assets under a strict policy, the
//! session cookie standing for its API key (and no longer than it), and the CSRF defence of
//! state-changing requests made with the cookie.

mod common;

use std::time::{Duration, Instant};

use common::{Env, client};
use reqwest::header::HeaderMap;
use serde_json::json;

/// `things_session=...` out of a sign-in answer, with the cookie's attributes.
fn session_cookie(headers: &HeaderMap) -> (String, String) {
    let set = headers
        .get("set-cookie")
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_string();
    let pair = set.split(';').next().unwrap().trim().to_string();
    (pair, set)
}

fn origin(server: &common::Server) -> String {
    let url = reqwest::Url::parse(&server.url("/")).unwrap();
    format!(
        "https://{}:{}",
        url.host_str().unwrap(),
        url.port().unwrap()
    )
}

async fn sign_in(server: &common::Server, key: &str) -> (String, String) {
    let response = client()
        .post(server.url("/console/session"))
        .header("origin", origin(server))
        .json(&json!({ "key": key }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (cookie, _) = session_cookie(response.headers());
    let body: serde_json::Value = response.json().await.unwrap();
    (cookie, body["csrf"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn every_console_path_is_the_page_under_a_strict_policy() {
    let env = Env::new().await;
    let server = env.serve_in_process(&[]).await;
    let client = client();
    for path in [
        "/console",
        "/console/",
        "/console/deliveries/42",
        "/console/devices/urn%3Adev%3Aimei%3A1",
    ] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        let policy = headers["content-security-policy"].to_str().unwrap();
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(policy.contains(part), "{policy}");
        }
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["cache-control"], "no-store");
        let page = response.text().await.unwrap();
        assert!(page.contains("/console/assets/app.js"), "{page}");
        assert!(!page.contains("<script>"), "inline script in the page");
    }

    // Assets carry their hash and are revalidated by it.
    let response = client
        .get(server.url("/console/assets/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let etag = response.headers()["etag"].clone();
    let again = client
        .get(server.url("/console/assets/index.html"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let missing = client
        .get(server.url("/console/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test]
async fn the_device_listener_serves_no_console() {
    let env = Env::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let _server = env.serve_in_process(&["--device-listen", &address]).await;
    let client = client();
    for path in ["/console", "/console/session", "/console/assets/index.html"] {
        let response = client
            .get(format!("http://{address}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
}

#[tokio::test]
async fn a_session_stands_for_its_key_until_the_key_is_revoked() {
    let env = Env::new().await;
    let key = env.api_key("reader", "read");
    let server = env.serve_in_process(&[]).await;
    let client = client();

    let wrong = client
        .post(server.url("/console/session"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("key=not-a-key")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    let response = client
        .post(server.url("/console/session"))
        .header("origin", origin(&server))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (cookie, attributes) = session_cookie(response.headers());
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/",
        "Max-Age=43200",
    ] {
        assert!(attributes.contains(attribute), "{attributes}");
    }
    assert!(!attributes.contains(&key), "the key is not the cookie");
    let view: serde_json::Value = response.json().await.unwrap();
    assert_eq!(view["scopes"], json!(["read"]));
    let csrf = view["csrf"].as_str().unwrap().to_string();
    assert!(csrf.len() >= 40);

    let current: serde_json::Value = client
        .get(server.url("/console/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(current["csrf"], csrf.as_str());

    let devices = client
        .get(server.url("/api/v1/devices"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(devices.status(), 200);
    // A read key's session may not manage.
    let admin = client
        .get(server.url("/api/v1/destinations"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 403);

    env.cli_ok(&["api-keys", "revoke", "reader"]);
    let after = client
        .get(server.url("/api/v1/devices"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    let gone = client
        .get(server.url("/console/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 401);
}

#[tokio::test]
async fn a_form_without_script_goes_on_to_the_console() {
    let env = Env::new().await;
    let key = env.api_key("reader", "read");
    let server = env.serve_in_process(&[]).await;
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .post(server.url("/console/session"))
        .header("accept", "text/html")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("key={key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/console");
    session_cookie(response.headers());
}

#[tokio::test]
async fn sessions_expire() {
    let env = Env::new().await;
    let key = env.api_key("reader", "read");
    let server = env.serve_in_process(&["--console-session-ttl", "1s"]).await;
    let (cookie, _) = sign_in(&server, &key).await;
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = client
            .get(server.url("/api/v1/devices"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(Instant::now() < deadline, "the session outlived its ttl");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_state_changing_request_with_the_cookie_needs_our_origin_and_the_token() {
    let env = Env::new().await;
    let key = env.api_key("root", "admin");
    let server = env.serve_in_process(&[]).await;
    let (cookie, csrf) = sign_in(&server, &key).await;
    let client = client();
    let ours = origin(&server);
    let add = |name: &str| json!({ "name": name });

    let cases: [(&str, Option<&str>, Option<&str>); 5] = [
        ("no origin", None, Some(csrf.as_str())),
        (
            "another site",
            Some("https://evil.example"),
            Some(csrf.as_str()),
        ),
        (
            "another port",
            Some("https://127.0.0.1:1"),
            Some(csrf.as_str()),
        ),
        ("no token", Some(ours.as_str()), None),
        ("wrong token", Some(ours.as_str()), Some("x")),
    ];
    for (case, origin, token) in cases {
        let mut request = client
            .post(server.url("/api/v1/destinations"))
            .header("cookie", &cookie)
            .json(&add("refused"));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 403, "{case}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"], "forbidden", "{case}");
    }
    let listed: serde_json::Value = client
        .get(server.url("/api/v1/destinations"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");

    let created = client
        .post(server.url("/api/v1/destinations"))
        .header("cookie", &cookie)
        .header("origin", &ours)
        .header("x-csrf-token", &csrf)
        .json(&add("accepted"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // A bearer key is not ambient: no Origin or token needed.
    let bearer = client
        .post(server.url("/api/v1/destinations"))
        .bearer_auth(&key)
        .json(&add("by-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 201);

    // Nor can another site sign a visitor in, or out.
    let foreign = client
        .post(server.url("/console/session"))
        .header("origin", "https://evil.example")
        .json(&json!({ "key": key }))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    let out = client
        .delete(server.url("/console/session"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 403);
    let out = client
        .delete(server.url("/console/session"))
        .header("cookie", &cookie)
        .header("origin", &ours)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let after = client
        .get(server.url("/api/v1/devices"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
}
