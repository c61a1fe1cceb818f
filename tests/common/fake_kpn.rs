//! A local stand-in for KPN's identity provider (GRIP) and actuator API, as strict as KPN.
//!
//! It checks every request's method, path, query, headers and JSON body and answers what KPN
//! would; anything unexpected is answered 400 and recorded as a violation, which tests assert
//! to be empty. Tokens live as long as the test says and are refused after that. Tests can
//! script failures for the next downlink calls and read back every call made.
//!
//! It runs on its own thread and runtime, so that a test blocked on a CLI command (which may
//! wait for a downlink to reach this server) cannot starve it.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

pub const TENANT: &str = "d2c0c5b4-tenant";
pub const AUDIENCE: &str = "4dc82561-f65f-523g-dek9-6c79ec314f02";
pub const CLIENT_ID: &str = "things-test-client";
pub const CLIENT_SECRET: &str = "k3y-S3cret/with=odd&chars";
pub const ACCEPT: &str = "application/vnd.kpnthings.actuator.v1.response+json";

/// What the next downlink call gets instead of success.
#[derive(Debug, Clone)]
pub enum Fail {
    Status(u16),
    /// 429 with `Retry-After: seconds`.
    TooMany(u64),
    /// 401, whatever the token.
    Unauthorized,
    /// 302 to a login page, whatever the token (KPN's answer to a bad token).
    Redirect,
    /// Answers 200, but only after this long (longer than the client's timeout: a timeout).
    Slow(Duration),
    /// Answers 200 with a body that never ends.
    Endless,
    /// Answers 200 with a body holding a raw NUL byte.
    NulByte,
}

/// One downlink call that passed the checks.
#[derive(Debug, Clone)]
pub struct Call {
    pub external_reference: String,
    pub port: u16,
    pub device: String,
    pub payload_hex: String,
    pub token: String,
    pub client_id: Option<String>,
    pub at: Instant,
    /// The status answered (or about to be, for a slow answer).
    pub answered: u16,
}

struct Inner {
    lifetime: Duration,
    tokens: HashMap<String, Instant>,
    token_requests: usize,
    calls: Vec<Call>,
    script: VecDeque<Fail>,
    violations: Vec<String>,
    /// Downlink calls refused because their token had expired.
    expired: usize,
    /// How an unknown or expired token is answered: 401 or 302.
    bad_token_status: u16,
    sub_customer: Option<String>,
    switched: HashSet<String>,
    context_switches: usize,
    /// Every successful downlink answer waits this long.
    latency: Duration,
    /// Every token answer waits this long.
    token_latency: Duration,
    /// What token answers say as `expires_in` instead of the lifetime (`Null`: no field).
    expires_in: Option<Value>,
}

type Shared = Arc<Mutex<Inner>>;

pub struct FakeKpn {
    pub base_url: String,
    shared: Shared,
}

impl FakeKpn {
    /// Starts the fake; tokens it issues say (and last) `lifetime`.
    pub fn start(lifetime: Duration) -> FakeKpn {
        let shared: Shared = Arc::new(Mutex::new(Inner {
            lifetime,
            tokens: HashMap::new(),
            token_requests: 0,
            calls: Vec::new(),
            script: VecDeque::new(),
            violations: Vec::new(),
            expired: 0,
            bad_token_status: 401,
            sub_customer: None,
            switched: HashSet::new(),
            context_switches: 0,
            latency: Duration::ZERO,
            token_latency: Duration::from_millis(100),
            expires_in: None,
        }));
        let app = Router::new()
            .route("/v2/{tenant}/oidc/idp/c1/token", post(token))
            .route("/api/actuator/downlinks", post(downlink))
            .route(
                "/api/v1/lifecycle/clients/{id}/context-switch",
                post(context_switch),
            )
            .fallback(unexpected)
            .with_state(shared.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        FakeKpn {
            base_url: format!("http://{addr}"),
            shared,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock().unwrap()
    }

    pub fn token_url(&self) -> String {
        format!("{}/v2/{{tenant}}/oidc/idp/c1/token", self.base_url)
    }

    /// The flags that point `serve` at this fake.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--kpn-token-url".into(),
            self.token_url(),
            "--kpn-tenant".into(),
            TENANT.into(),
            "--kpn-api-url".into(),
            self.base_url.clone(),
        ]
    }

    /// Scripts the answers to the next downlink calls, in order.
    pub fn fail_next(&self, fails: &[Fail]) {
        self.lock().script.extend(fails.iter().cloned());
    }

    pub fn set_bad_token_status(&self, status: u16) {
        self.lock().bad_token_status = status;
    }

    pub fn set_sub_customer(&self, id: &str) {
        self.lock().sub_customer = Some(id.to_owned());
    }

    /// Token answers say `expires_in: value` (left out for `Null`); tokens still live as
    /// long as the fake was started with.
    pub fn set_expires_in(&self, value: Value) {
        self.lock().expires_in = Some(value);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    pub fn token_requests(&self) -> usize {
        self.lock().token_requests
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn expired_rejections(&self) -> usize {
        self.lock().expired
    }

    pub fn context_switches(&self) -> usize {
        self.lock().context_switches
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// When each token was issued, in order.
    pub fn issued_at(&self) -> Vec<Instant> {
        let inner = self.lock();
        let mut times: Vec<Instant> = inner.tokens.values().map(|e| *e - inner.lifetime).collect();
        times.sort();
        times
    }

    /// Whether every token issued so far has expired.
    pub fn all_tokens_expired(&self) -> bool {
        let now = Instant::now();
        self.lock().tokens.values().all(|expiry| *expiry <= now)
    }
}

fn violation(shared: &Shared, what: String) -> Response {
    shared.lock().unwrap().violations.push(what.clone());
    (StatusCode::BAD_REQUEST, axum::Json(json!({"error": what}))).into_response()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn unexpected(State(shared): State<Shared>, request: axum::extract::Request) -> Response {
    violation(
        &shared,
        format!("unexpected {} {}", request.method(), request.uri()),
    )
}

/// GRIP's token endpoint: a JSON client-credentials body, nothing else.
async fn token(
    State(shared): State<Shared>,
    Path(tenant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if tenant != TENANT {
        return violation(&shared, format!("token request for tenant {tenant}"));
    }
    if query.is_some() {
        return violation(&shared, format!("token request with a query: {query:?}"));
    }
    let content_type = header(&headers, "content-type").unwrap_or_default();
    if content_type != "application/json; charset=utf-8" && content_type != "application/json" {
        return violation(
            &shared,
            format!("token request Content-Type {content_type:?}"),
        );
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return violation(&shared, "token request body is not a JSON object".into());
    };
    let keys: HashSet<&str> = fields.keys().map(String::as_str).collect();
    let expected: HashSet<&str> = ["grant_type", "audience", "client_id", "client_secret"].into();
    if keys != expected {
        return violation(&shared, format!("token request fields {keys:?}"));
    }
    if fields["grant_type"] != "client_credentials" || fields["audience"] != AUDIENCE {
        return violation(&shared, format!("token request {fields:?}"));
    }
    let latency = {
        let mut inner = shared.lock().unwrap();
        inner.token_requests += 1;
        inner.token_latency
    };
    // Slow enough that callers arriving meanwhile must wait for this answer.
    tokio::time::sleep(latency).await;
    let mut inner = shared.lock().unwrap();
    if fields["client_id"] != CLIENT_ID || fields["client_secret"] != CLIENT_SECRET {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
    let lifetime = inner.lifetime;
    inner
        .tokens
        .insert(token.clone(), Instant::now() + lifetime);
    let mut answer = json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
    });
    match &inner.expires_in {
        None => {}
        Some(Value::Null) => {
            answer.as_object_mut().unwrap().remove("expires_in");
        }
        Some(value) => answer["expires_in"] = value.clone(),
    }
    axum::Json(answer).into_response()
}

/// The bearer token if it is live; otherwise the answer KPN gives.
fn check_token(inner: &mut Inner, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let refused = |status: u16| {
        let status = StatusCode::from_u16(status).unwrap();
        if status.is_redirection() {
            (
                status,
                [(header::LOCATION, "https://auth.grip-on-it.com/login")],
            )
                .into_response()
        } else {
            (status, axum::Json(json!({"error": "unauthorized"}))).into_response()
        }
    };
    let token = header(headers, "authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    match inner.tokens.get(&token) {
        Some(expiry) if *expiry > Instant::now() => Ok(token),
        Some(_) => {
            inner.expired += 1;
            Err(Box::new(refused(inner.bad_token_status)))
        }
        None => Err(Box::new(refused(inner.bad_token_status))),
    }
}

async fn context_switch(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut inner = shared.lock().unwrap();
    if inner.sub_customer.as_deref() != Some(id.as_str()) {
        drop(inner);
        return violation(&shared, format!("context switch to {id}"));
    }
    if !body.is_empty() {
        drop(inner);
        return violation(&shared, "context switch with a body".into());
    }
    let token = match check_token(&mut inner, &headers) {
        Ok(token) => token,
        Err(answer) => return *answer,
    };
    inner.context_switches += 1;
    inner.switched.insert(token);
    StatusCode::NO_CONTENT.into_response()
}

/// The actuator call, checked field by field.
async fn downlink(
    State(shared): State<Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    let pairs: Vec<(String, String)> = url_pairs(&query);
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    if keys != ["port", "externalReference"] {
        return violation(&shared, format!("downlink query {query:?}"));
    }
    let port: u16 = match pairs[0].1.parse() {
        Ok(p) if (1..=223).contains(&p) => p,
        _ => return violation(&shared, format!("downlink port {:?}", pairs[0].1)),
    };
    let external_reference = pairs[1].1.clone();
    if uuid::Uuid::parse_str(&external_reference).is_err() {
        return violation(&shared, format!("externalReference {external_reference:?}"));
    }
    if header(&headers, "accept") != Some(ACCEPT) {
        return violation(
            &shared,
            format!("downlink Accept {:?}", headers.get("accept")),
        );
    }
    let content_type = header(&headers, "content-type").unwrap_or_default();
    if content_type != "application/json" {
        return violation(&shared, format!("downlink Content-Type {content_type:?}"));
    }
    let (device, payload_hex) = match parse_pack(&body) {
        Ok(parsed) => parsed,
        Err(what) => return violation(&shared, what),
    };

    let (answer, slow) = {
        let mut inner = shared.lock().unwrap();
        let token = match check_token(&mut inner, &headers) {
            Ok(token) => token,
            Err(answer) => return *answer,
        };
        let client_id = header(&headers, "x-client-id").map(str::to_owned);
        if let Some(sub) = &inner.sub_customer {
            if client_id.as_deref() != Some(sub.as_str()) || !inner.switched.contains(&token) {
                drop(inner);
                return violation(
                    &shared,
                    format!(
                        "sub-customer call with x-client-id {client_id:?} without a context switch for its token"
                    ),
                );
            }
        } else if client_id.is_some() {
            drop(inner);
            return violation(&shared, "x-client-id without a sub-customer".into());
        }
        let fail = inner.script.pop_front();
        let (answer, slow) = match fail {
            None => (ok_answer(&external_reference), inner.latency),
            Some(Fail::Status(code)) => (
                (
                    StatusCode::from_u16(code).unwrap(),
                    axum::Json(json!({"error": format!("scripted {code}")})),
                )
                    .into_response(),
                Duration::ZERO,
            ),
            Some(Fail::TooMany(seconds)) => (
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, seconds.to_string())],
                    axum::Json(json!({"error": "slow down"})),
                )
                    .into_response(),
                Duration::ZERO,
            ),
            Some(Fail::Unauthorized) => (
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"error": "unauthorized"})),
                )
                    .into_response(),
                Duration::ZERO,
            ),
            Some(Fail::Redirect) => (
                (
                    StatusCode::FOUND,
                    [(header::LOCATION, "https://auth.grip-on-it.com/login")],
                )
                    .into_response(),
                Duration::ZERO,
            ),
            Some(Fail::Slow(delay)) => (ok_answer(&external_reference), delay),
            Some(Fail::Endless) => (endless_answer(&external_reference), Duration::ZERO),
            Some(Fail::NulByte) => (
                (StatusCode::OK, b"queued\0 ok".to_vec()).into_response(),
                Duration::ZERO,
            ),
        };
        inner.calls.push(Call {
            external_reference,
            port,
            device,
            payload_hex,
            token,
            client_id,
            at: Instant::now(),
            answered: answer.status().as_u16(),
        });
        (answer, slow)
    };
    if !slow.is_zero() {
        tokio::time::sleep(slow).await;
    }
    answer
}

fn ok_answer(external_reference: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, ACCEPT)],
        axum::Json(json!({"externalReference": external_reference, "status": "SCHEDULED"})),
    )
        .into_response()
}

/// A 200 whose body starts like a real answer and then goes on for ever.
fn endless_answer(external_reference: &str) -> Response {
    let start = format!(r#"{{"externalReference":"{external_reference}","padding":""#);
    let head =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(start)) });
    let tail = futures_util::stream::repeat_with(|| Ok(Bytes::from_static(&[b'x'; 8192])));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, ACCEPT)],
        axum::body::Body::from_stream(futures_util::StreamExt::chain(head, tail)),
    )
        .into_response()
}

/// `[{"bn":"urn:dev:DEVEUI:<16 hex>:","n":"payloadHex","vs":"<hex>"}]` and nothing else.
fn parse_pack(body: &[u8]) -> Result<(String, String), String> {
    let pack: Value =
        serde_json::from_slice(body).map_err(|_| "downlink body is not JSON".to_owned())?;
    let records = pack.as_array().filter(|r| r.len() == 1);
    let record = records
        .and_then(|r| r[0].as_object())
        .ok_or_else(|| format!("downlink body is not one record: {pack}"))?;
    let keys: HashSet<&str> = record.keys().map(String::as_str).collect();
    if keys != HashSet::from(["bn", "n", "vs"]) || record["n"] != "payloadHex" {
        return Err(format!("downlink record {pack}"));
    }
    let bn = record["bn"].as_str().unwrap_or_default();
    let eui = bn
        .strip_prefix("urn:dev:DEVEUI:")
        .and_then(|rest| rest.strip_suffix(':'))
        .filter(|eui| eui.len() == 16 && eui.chars().all(|c| c.is_ascii_hexdigit()));
    if eui.is_none() {
        return Err(format!("downlink bn {bn:?}"));
    }
    let vs = record["vs"].as_str().unwrap_or_default();
    if vs.is_empty() || vs.len() % 2 != 0 || !vs.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("downlink vs {vs:?}"));
    }
    Ok((bn.to_owned(), vs.to_owned()))
}

/// Query pairs in order, percent-decoded.
fn url_pairs(query: &str) -> Vec<(String, String)> {
    reqwest::Url::parse(&format!("http://x/?{query}"))
        .map(|u| {
            u.query_pairs()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}
