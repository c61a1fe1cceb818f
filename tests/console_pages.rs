//! The console's device and destination pages in a real browser (headless Chromium over
//! WebDriver, see `common/browser.rs`) against the real binary: the device search, a chart's
//! zoom by drag and its reset by double click, text values, the timeline's links, the
//! silence badge, and an admin adding, rotating and removing destinations with the secret
//! shown once (and that secret being the one the server then accepts).

// Not every helper of the shared harness is used here.
#[allow(dead_code)]
#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use browser::{Browser, WAIT};
use common::{Env, SECRET, api_get, client, deliver};
use fantoccini::actions::{InputSource, MOUSE_BUTTON_LEFT, MouseActions, PointerAction};
use serde_json::{Value, json};

/// One browser at a time in this binary: two cores are shared with the server.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SENSOR: &str = "urn:dev:DEVEUI:0018B21000008C47:";
const MODEM: &str = "urn:dev:IMEI:356938035643809:";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A URN as one path segment of a console URL.
fn segment(urn: &str) -> String {
    urn.replace(':', "%3A")
}

/// A pack for `device`: numeric `temperature` points, and text and boolean records.
fn mixed_pack(
    device: &str,
    temperatures: &[(i64, f64)],
    texts: &[(i64, &str)],
    flags: &[(i64, bool)],
) -> Vec<u8> {
    let mut records: Vec<Value> = Vec::new();
    for (t, v) in temperatures {
        records.push(json!({"n": "temperature", "u": "Cel", "t": t, "v": v}));
    }
    for (t, s) in texts {
        records.push(json!({"n": "status", "t": t, "vs": s}));
    }
    for (t, b) in flags {
        records.push(json!({"n": "door", "t": t, "vb": b}));
    }
    records[0]["bn"] = json!(device);
    serde_json::to_vec(&records).unwrap()
}

/// The x scale of the first chart, in seconds: `[min, max]`.
async fn x_scale(browser: &Browser) -> (f64, f64) {
    let v = browser
        .js(
            "const u = document.querySelector('.chart').uplot; return [u.scales.x.min, u.scales.x.max];",
            vec![],
        )
        .await;
    (v[0].as_f64().unwrap(), v[1].as_f64().unwrap())
}

/// Waits until the first chart's x scale span `s` (seconds) passes `test`; returns it.
async fn until_span(browser: &Browser, what: &str, test: &str) -> f64 {
    let script = format!(
        "const u = document.querySelector('.chart').uplot; const s = u.scales.x.max - u.scales.x.min; \
         return ({test}) ? s : null;"
    );
    browser.until(what, WAIT, &script).await.as_f64().unwrap()
}

/// Where the first chart's plot area is in the viewport (scrolled into view first).
async fn plot_area(browser: &Browser) -> (f64, f64, f64) {
    let r = browser
        .js(
            "const o = document.querySelector('.chart .u-over'); o.scrollIntoView({block: 'center'}); \
             const r = o.getBoundingClientRect(); return [r.left, r.top, r.width, r.height];",
            vec![],
        )
        .await;
    let f = |i: usize| r[i].as_f64().unwrap();
    (f(0), f(1) + f(3) / 2.0, f(2))
}

async fn mouse(browser: &Browser, actions: Vec<PointerAction>) {
    let mut sequence = MouseActions::new("mouse".into());
    for action in actions {
        sequence = sequence.then(action);
    }
    browser.client.perform_actions(sequence).await.unwrap();
}

fn move_to(x: f64, y: f64, ms: u64) -> PointerAction {
    PointerAction::MoveTo {
        duration: Some(Duration::from_millis(ms)),
        x: x.round(),
        y: y.round(),
    }
}

#[tokio::test]
async fn devices_are_searched_by_urn_and_the_search_stays_in_the_url() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start("devices_search").await else {
        return;
    };
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let read = env.api_key("reader", "read");
    let server = env.serve(&[]);
    let client = client();
    for device in [SENSOR, MODEM] {
        let body = mixed_pack(device, &[(now(), 20.0)], &[], &[]);
        assert_eq!(
            deliver(&client, &server, plug, SECRET, &body)
                .await
                .status(),
            200
        );
    }

    browser.sign_in(&server.base_url, &read).await;
    browser.goto(&server.url("/console/devices")).await;
    browser
        .until(
            "both devices listed",
            WAIT,
            "return document.querySelectorAll('table.devices tbody tr').length === 2;",
        )
        .await;

    // A search in the address is applied (case-insensitively, by the server).
    browser.goto(&server.url("/console/devices?q=8c47")).await;
    let only = browser
        .until(
            "only the sensor listed",
            WAIT,
            "const rows = document.querySelectorAll('table.devices tbody tr'); \
             return rows.length === 1 ? rows[0].dataset.id : null;",
        )
        .await;
    assert_eq!(only, json!(SENSOR));
    assert_eq!(
        browser
            .js(
                "return document.querySelector('input[name=q]').value;",
                vec![]
            )
            .await,
        json!("8c47")
    );

    // Typing a new search puts it in the address and narrows the list.
    browser
        .js(
            "const q = document.querySelector('input[name=q]'); q.value = '3569'; \
             q.form.requestSubmit();",
            vec![],
        )
        .await;
    // The address changes at once, the rows when the answer is in: wait for the modem alone.
    let listed = browser
        .until(
            "only the modem listed",
            WAIT,
            &format!(
                "const rows = [...document.querySelectorAll('table.devices tbody tr')]; \
                 return rows.some(r => r.dataset.id === {}) ? rows.map(r => r.dataset.id) : null;",
                json!(MODEM)
            ),
        )
        .await;
    assert_eq!(listed, json!([MODEM]));
    assert_eq!(
        browser.js("return location.search;", vec![]).await,
        json!("?q=3569")
    );
    browser.shot("searched").await;

    // A row leads to the device's page.
    browser.click("table.devices tbody tr a").await;
    let heading = browser.wait_contains("h1", MODEM).await;
    assert_eq!(heading, MODEM);
    assert_eq!(
        browser.js("return location.pathname;", vec![]).await,
        json!(format!("/console/devices/{}", segment(MODEM)))
    );

    // A device never seen is said to be so, not drawn empty.
    browser
        .goto(&server.url("/console/devices/urn%3Adev%3AIMEI%3A000000000000000%3A"))
        .await;
    let error = browser.wait_text(".error").await;
    assert!(error.contains("No device"), "{error}");
    browser.close().await;
}

#[tokio::test]
async fn a_device_chart_zooms_by_drag_and_resets_by_double_click_beside_its_text_values_and_timeline()
 {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start("device_zoom").await else {
        return;
    };
    let env = Env::new().await;
    let plug = env.add_destination("acme", &[]);
    let read = env.api_key("reader", "read");
    let server = env.serve(&[]);
    let client = client();
    // Ten minutes apart over the last two hours: one bucket each at six hours (22 s buckets).
    let t = now();
    let temperatures: Vec<(i64, f64)> = (0..12)
        .map(|i| (t - 7200 + 600 * i, 18.0 + i as f64 / 4.0))
        .collect();
    let texts = [(t - 3000, "low battery"), (t - 60, "ok")];
    let flags = [(t - 1800, true)];
    let body = mixed_pack(SENSOR, &temperatures, &texts, &flags);
    assert_eq!(
        deliver(&client, &server, plug, SECRET, &body)
            .await
            .status(),
        200
    );

    browser.sign_in(&server.base_url, &read).await;
    browser
        .goto(&server.url(&format!("/console/devices/{}?range=6h", segment(SENSOR))))
        .await;
    let drawn = browser
        .until(
            "the temperature chart",
            WAIT,
            "const c = document.querySelector('.chart[data-name=temperature]'); \
             return c && c.querySelector('canvas') && c.uplot ? c.uplot.data[0].length : null;",
        )
        .await;
    assert_eq!(
        drawn,
        json!(temperatures.len()),
        "one point per record sent"
    );
    browser.shot("chart").await;

    // The time axis spans the chosen six hours, not only the two that hold data.
    let six_hours = 6.0 * 3600.0;
    let (min, max) = x_scale(&browser).await;
    assert!((max - min - six_hours).abs() < 60.0, "x scale {min}..{max}");

    // Dragging across a fifth of the plot zooms to it.
    let (left, middle, width) = plot_area(&browser).await;
    let from = left + width * 0.6;
    mouse(
        &browser,
        vec![
            move_to(from, middle, 0),
            PointerAction::Down {
                button: MOUSE_BUTTON_LEFT,
            },
            move_to(from + width * 0.2, middle, 150),
            PointerAction::Up {
                button: MOUSE_BUTTON_LEFT,
            },
        ],
    )
    .await;
    let zoomed = until_span(
        &browser,
        "a zoomed chart",
        &format!("s < {}", six_hours * 0.3),
    )
    .await;
    assert!(zoomed > six_hours * 0.1, "zoomed to {zoomed} s");
    browser.shot("zoomed").await;

    // A double click returns to the whole range.
    mouse(
        &browser,
        vec![
            move_to(from, middle, 0),
            PointerAction::Down {
                button: MOUSE_BUTTON_LEFT,
            },
            PointerAction::Up {
                button: MOUSE_BUTTON_LEFT,
            },
            PointerAction::Down {
                button: MOUSE_BUTTON_LEFT,
            },
            PointerAction::Up {
                button: MOUSE_BUTTON_LEFT,
            },
        ],
    )
    .await;
    let reset = until_span(
        &browser,
        "the chart back to six hours",
        &format!("Math.abs(s - {six_hours}) < 60"),
    )
    .await;
    assert!((reset - six_hours).abs() < 60.0);

    // Text and boolean values are tables, newest first.
    let status = browser
        .until(
            "the status values",
            WAIT,
            "const rows = [...document.querySelectorAll('.text-series[data-name=status] tbody tr')]; \
             return rows.length === 2 ? rows.map(r => r.cells[1].innerText) : null;",
        )
        .await;
    assert_eq!(status, json!(["ok", "low battery"]));
    let door = browser
        .text(".text-series[data-name=door] tbody tr td.value")
        .await;
    assert_eq!(door, "true");

    // The timeline's uplink opens the stored delivery.
    let (code, messages) = api_get(&client, &server, &read, "/api/v1/messages").await;
    assert_eq!(code, 200, "{messages}");
    let id = messages["items"][0]["id"].as_i64().unwrap();
    let href = browser
        .until(
            "the uplink in the timeline",
            WAIT,
            "const a = document.querySelector('table.timeline tbody tr[data-kind=uplink] a'); \
             return a ? a.getAttribute('href') : null;",
        )
        .await;
    assert_eq!(href, json!(format!("/console/deliveries/{id}")));
    browser.shot("values").await;

    // A preset puts its range in the address and the axis follows it.
    browser.click(".range button[data-range='1h']").await;
    until_span(
        &browser,
        "the chart over the last hour",
        "Math.abs(s - 3600) < 60",
    )
    .await;
    assert_eq!(
        browser.js("return location.search;", vec![]).await,
        json!("?range=1h")
    );

    // So does a custom range typed into the form (local time, as the axis shows it).
    browser
        .js(
            "const f = document.querySelector('.range form.custom'); \
             const t = new Date(Date.now() - 600e3), s = new Date(t - 5400e3); \
             const local = d => new Date(d - d.getTimezoneOffset() * 60e3).toISOString().slice(0, 19); \
             f.elements.from.value = local(s); f.elements.to.value = local(t); f.requestSubmit();",
            vec![],
        )
        .await;
    until_span(
        &browser,
        "the chart over the custom range",
        "Math.abs(s - 5400) < 2",
    )
    .await;
    let query = browser.js("return location.search;", vec![]).await;
    let query = query.as_str().unwrap();
    assert!(query.contains("from=") && query.contains("to="), "{query}");
    browser.close().await;
}

/// The row of a destination on the page (its plug, or its name while it has none).
fn destination_row(id: &str) -> String {
    format!("table.destinations tbody tr[data-id=\"{id}\"]")
}

/// Waits until the destinations table is no longer being read again, so its rows are the
/// ones a click will reach.
async fn table_settled(browser: &Browser) {
    browser
        .until(
            "the destinations table read again",
            WAIT,
            "return document.querySelector('table.destinations:not([aria-busy])') !== null;",
        )
        .await;
}

/// Waits for a `.secret-once` box and returns the secret in it.
async fn secret_shown(browser: &Browser, after: &str) -> String {
    let script = format!(
        "const c = document.querySelector('.secret-once code.secret-value'); \
         return c && c.innerText !== {} ? c.innerText : null;",
        json!(after)
    );
    browser
        .until("a secret shown once", WAIT, &script)
        .await
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn destinations_show_silence_and_an_admin_adds_rotates_and_removes_with_secrets_shown_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::start("destinations").await else {
        return;
    };
    let env = Env::new().await;
    let quiet = env.add_destination("quiet", &[]);
    let busy = env.add_destination("busy", &[]);
    let stale = env.add_destination("stale", &[]);
    let admin = env.api_key("operator", "admin");
    let read = env.api_key("reader", "read");
    let server = env.serve(&[]);
    let client = client();
    let body = mixed_pack(SENSOR, &[(now(), 20.0)], &[], &[]);
    assert_eq!(
        deliver(&client, &server, busy, SECRET, &body)
            .await
            .status(),
        200
    );
    // KPN went quiet two hours ago for this one: its only delivery is moved back in time.
    assert_eq!(
        deliver(&client, &server, stale, SECRET, &body)
            .await
            .status(),
        200
    );
    let mut db = common::connect(&env.database_url).await;
    let moved = sqlx::query(
        "UPDATE messages SET received_at = received_at - interval '2 hours 5 minutes' \
         WHERE destination_id = (SELECT id FROM destinations WHERE name = 'stale')",
    )
    .execute(&mut db)
    .await
    .unwrap();
    assert_eq!(moved.rows_affected(), 1);

    browser.sign_in(&server.base_url, &admin).await;
    browser.goto(&server.url("/console/destinations")).await;
    let quiet_row = destination_row(&quiet.to_string());
    let busy_row = destination_row(&busy.to_string());
    let silent = browser.wait_text(&format!("{quiet_row} .silent")).await;
    assert_eq!(silent, "nothing received yet");
    let stale_row = destination_row(&stale.to_string());
    let stale_silent = browser.wait_text(&format!("{stale_row} .silent")).await;
    assert_eq!(stale_silent, "nothing for 2 h");
    let stale_text = browser.text(&stale_row).await;
    assert!(
        stale_text.contains("1 stored"),
        "the day still counts it: {stale_text}"
    );
    let busy_text = browser.wait_contains(&busy_row, "1 stored").await;
    assert_eq!(
        browser.count(&format!("{busy_row} .silent")).await,
        0,
        "{busy_text}"
    );
    browser.shot("stats").await;

    // Added here: the generated secret is shown once, and it is the one the server accepts.
    browser
        .js(
            "const f = document.getElementById('add-destination'); f.elements.name.value = 'added-here'; \
             f.requestSubmit();",
            vec![],
        )
        .await;
    let added_secret = secret_shown(&browser, "").await;
    assert!(added_secret.len() >= 30, "{added_secret:?}");
    browser.wait_text(&destination_row("added-here")).await;
    browser.shot("added").await;
    let new_plug = uuid::Uuid::new_v4();
    let stored = deliver(&client, &server, new_plug, &added_secret, &body).await;
    assert_eq!(
        stored.status(),
        200,
        "a delivery signed with the secret shown"
    );

    // Rotation without overlap: a new secret shown once, the old one refused from now on.
    browser
        .js(
            &format!(
                "const r = document.querySelector({}); r.querySelector('select[name=overlap]').value = '0s'; \
                 r.querySelector('button.rotate').click();",
                json!(busy_row)
            ),
            vec![],
        )
        .await;
    let rotated_secret = secret_shown(&browser, &added_secret).await;
    assert_ne!(rotated_secret, added_secret);
    browser
        .wait_contains(".messages .notice", "no longer works")
        .await;
    // The secret is shown before the table is read again; its rows are replaced after that.
    table_settled(&browser).await;
    assert_eq!(
        deliver(&client, &server, busy, SECRET, &body)
            .await
            .status(),
        401
    );
    assert_eq!(
        deliver(&client, &server, busy, &rotated_secret, &body)
            .await
            .status(),
        200
    );

    // Removal asks first, then the row goes.
    browser.click(&format!("{quiet_row} button.remove")).await;
    assert_eq!(
        browser.count(&destination_row(&quiet.to_string())).await,
        1,
        "not before confirming"
    );
    browser
        .click(&format!("{quiet_row} button.confirm-remove"))
        .await;
    browser
        .until(
            "the removed destination gone",
            WAIT,
            &format!(
                "return document.querySelector({}) === null;",
                json!(quiet_row)
            ),
        )
        .await;
    let (code, list) = api_get(&client, &server, &admin, "/api/v1/destinations").await;
    assert_eq!(code, 200, "{list}");
    assert!(
        !list
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "quiet"),
        "{list}"
    );

    // Reloaded, the page has no secret left to show.
    browser.goto(&server.url("/console/destinations")).await;
    browser.wait_text(&busy_row).await;
    assert_eq!(browser.count(".secret-once").await, 0);

    // A read key sees the table without the controls.
    browser.click("#signout").await;
    browser.sign_in(&server.base_url, &read).await;
    browser.goto(&server.url("/console/destinations")).await;
    browser.wait_text(&busy_row).await;
    browser.shot("read").await;
    assert_eq!(browser.count("#add-destination").await, 0);
    assert_eq!(browser.count("td.manage").await, 0);
    assert_eq!(browser.count("button.rotate").await, 0);
    browser.close().await;
}
