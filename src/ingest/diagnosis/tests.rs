//! Each cause from a recorded request and a set of senders, without a database.

use super::*;
use chrono::TimeDelta;

const BODY: &[u8] = b"[{\"bn\":\"urn:dev:IMEI:351234567890123:\",\"n\":\"t\",\"v\":1}]";

fn destination(name: &str, plug: Uuid, current: &[u8]) -> Candidate {
    Candidate {
        name: name.into(),
        plug: Some(plug),
        urn_key: None,
        current: current.to_vec(),
        previous: None,
        required_headers: BTreeMap::new(),
    }
}

fn device(urn: &str, current: &[u8]) -> Candidate {
    Candidate {
        name: urn.into(),
        plug: None,
        urn_key: Some(crate::senml::device_key(urn)),
        current: current.to_vec(),
        previous: None,
        required_headers: BTreeMap::new(),
    }
}

fn headers(token: &Token, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut h: BTreeMap<String, String> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h.insert("things-message-token".into(), token.to_hex());
    h
}

fn event<'a>(
    door: &'a str,
    plug: Option<Uuid>,
    device_key: Option<&'a str>,
    headers: &'a BTreeMap<String, String>,
    body: &'a [u8],
) -> Recorded<'a> {
    Recorded {
        door,
        verdict: "rejected",
        status: 401,
        reason: "not_verified",
        detail: Some("unknown plug or wrong token"),
        plug,
        device_key,
        headers,
        body: Some(body),
        body_truncated: false,
        body_size: Some(body.len() as i64),
        message_id: None,
    }
}

fn cause(event: &Recorded<'_>, senders: &Senders) -> Diagnosis {
    diagnose(event, senders, false, Utc::now())
}

#[test]
fn rotated_away_secret_names_the_end_of_its_overlap() {
    let plug = Uuid::new_v4();
    let ended = Utc::now() - TimeDelta::minutes(5);
    let mut own = destination("acme", plug, b"new secret");
    own.previous = Some((b"old secret".to_vec(), ended));
    let senders = Senders {
        candidates: vec![own],
        ..Senders::default()
    };
    let h = headers(&Token::sign(BODY, b"old secret"), &[]);
    let d = cause(&event("destination", Some(plug), None, &h, BODY), &senders);
    assert_eq!(d.cause, "rotated_secret");
    assert_eq!(d.details["destination"], "acme");
    assert_eq!(
        d.details["overlap_ended_at"],
        crate::time_format::format_time(ended)
    );
}

#[test]
fn another_destinations_secret_and_unknown_plugs() {
    let (plug, other) = (Uuid::new_v4(), Uuid::new_v4());
    let mut senders = Senders {
        candidates: vec![
            destination("acme", plug, b"acme secret"),
            destination("globex", other, b"globex secret"),
        ],
        ..Senders::default()
    };
    let h = headers(&Token::sign(BODY, b"globex secret"), &[]);
    let d = cause(&event("destination", Some(plug), None, &h, BODY), &senders);
    assert_eq!(
        (d.cause, &d.details["destination"]),
        ("other_destination_secret", &json!("globex"))
    );

    let unknown = Uuid::new_v4();
    let h = headers(&Token::sign(BODY, b"junk"), &[]);
    let d = cause(
        &event("destination", Some(unknown), None, &h, BODY),
        &senders,
    );
    assert_eq!(
        (d.cause, &d.details["removed_destination"]),
        ("unknown_plug", &Value::Null)
    );
    senders.removed_destination = Some("initech".into());
    let d = cause(
        &event("destination", Some(unknown), None, &h, BODY),
        &senders,
    );
    assert_eq!(d.details["removed_destination"], "initech");
    let d = cause(&event("destination", Some(plug), None, &h, BODY), &senders);
    assert_eq!(
        (d.cause, &d.details["destination"]),
        ("wrong_secret", &json!("acme"))
    );
}

#[test]
fn body_altered_in_transit() {
    let plug = Uuid::new_v4();
    let senders = Senders {
        candidates: vec![destination("acme", plug, b"acme secret")],
        ..Senders::default()
    };
    let cases: &[(&[u8], &[u8], &str)] = &[
        (
            b"[{\"n\":\"t\",\"v\":1}]",
            b"[ {\"n\": \"t\", \"v\": 1} ]",
            "whitespace_stripped",
        ),
        (
            b"[{\"n\":\"t\",\n\"v\":1}]\n",
            b"[{\"n\":\"t\",\r\n\"v\":1}]\r\n",
            "crlf_to_lf",
        ),
        (
            b"[{\"n\":\"t\",\"v\":1}]",
            b"[{\"n\":\"t\",\"v\":1}]\n",
            "trailing_newline_removed",
        ),
        (
            b"[{\"n\":\"t\",\"v\":1.0}]",
            b"[{\"v\":1.0,\"n\":\"t\"}]",
            "json_reserialised",
        ),
    ];
    for (signed, sent, transformation) in cases {
        let signed = if *transformation == "json_reserialised" {
            serde_json::to_vec(&serde_json::from_slice::<Value>(sent).unwrap()).unwrap()
        } else {
            signed.to_vec()
        };
        let h = headers(&Token::sign(&signed, b"acme secret"), &[]);
        let d = cause(&event("destination", Some(plug), None, &h, sent), &senders);
        assert_eq!(d.cause, "body_altered", "{transformation}");
        assert_eq!(d.details["transformation"], *transformation);
    }
}

#[test]
fn required_headers_missing_or_different() {
    let plug = Uuid::new_v4();
    let mut own = destination("acme", plug, b"acme secret");
    own.required_headers
        .insert("device-type".into(), "dragino".into());
    let senders = Senders {
        candidates: vec![own],
        ..Senders::default()
    };
    let token = Token::sign(BODY, b"acme secret");
    let h = headers(&token, &[]);
    let d = cause(&event("destination", Some(plug), None, &h, BODY), &senders);
    assert_eq!(
        (d.cause, &d.details["header"]),
        ("required_header_missing", &json!("device-type"))
    );
    let h = headers(&token, &[("device-type", "other")]);
    let d = cause(&event("destination", Some(plug), None, &h, BODY), &senders);
    assert_eq!(d.cause, "required_header_different");
}

#[test]
fn device_causes() {
    let urn = "urn:dev:IMEI:351234567890123:";
    let key = crate::senml::device_key(urn);
    let ended = Utc::now() - TimeDelta::seconds(1);
    let mut own = device(urn, b"device secret");
    own.previous = Some((b"old device secret".to_vec(), ended));
    let mut senders = Senders {
        candidates: vec![own, device("urn:dev:IMEI:351234567890124:", b"neighbour")],
        ..Senders::default()
    };
    let at = |secret: &[u8]| headers(&Token::sign(BODY, secret), &[]);
    let h = at(b"wrong");
    let d = cause(&event("m2m", None, Some(&key), &h, BODY), &senders);
    assert_eq!(
        (d.cause, &d.details["device"]),
        ("wrong_secret", &json!(urn))
    );
    let h = at(b"old device secret");
    let d = cause(&event("m2m", None, Some(&key), &h, BODY), &senders);
    assert_eq!(d.cause, "rotated_secret");
    assert_eq!(d.details["device"], urn);
    let h = at(b"neighbour");
    let d = cause(&event("ip", None, Some(&key), &h, BODY), &senders);
    assert_eq!(d.cause, "other_device_secret");
    senders.candidates.remove(0);
    senders.removed_registration = true;
    let h = at(b"device secret");
    let d = cause(&event("m2m", None, Some(&key), &h, BODY), &senders);
    assert_eq!(
        (d.cause, &d.details["removed_registration"]),
        ("unknown_device", &json!(true))
    );
}

#[test]
fn head_refusals_and_what_cannot_be_checked() {
    let h = BTreeMap::new();
    let mut e = event("destination", None, None, &h, BODY);
    e.status = 400;
    e.reason = "missing_header";
    e.detail = Some("missing header Things-Plug-UUID");
    let d = cause(&e, &Senders::default());
    assert_eq!(
        (d.cause, &d.details["header"]),
        ("missing_header", &json!("Things-Plug-UUID"))
    );
    e.reason = "malformed_header";
    e.detail = Some("malformed header Things-Message-Token: expected 64 hexadecimal characters");
    let d = cause(&e, &Senders::default());
    assert_eq!(
        (d.cause, &d.details["header"]),
        ("malformed_header", &json!("Things-Message-Token"))
    );
    e.status = 413;
    e.reason = "payload_too_large";
    e.detail = Some("body larger than 1024 bytes");
    e.body_size = Some(5000);
    let d = cause(&e, &Senders::default());
    assert_eq!(d.cause, "body_too_large");
    assert_eq!(
        (&d.details["limit"], &d.details["size"]),
        (&json!(1024), &json!(5000))
    );
    let mut e = event("destination", Some(Uuid::new_v4()), None, &h, BODY);
    e.body_truncated = true;
    assert_eq!(cause(&e, &Senders::default()).cause, "body_not_kept");
    assert_eq!(
        diagnose(&e, &Senders::default(), true, Utc::now()).cause,
        "verifies_now"
    );
}
