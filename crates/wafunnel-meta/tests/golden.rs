//! Webhook bodies written from Meta's documented shapes, the events they
//! must give (`tests/golden/webhook/NAME.json` → `NAME.expected`) and what
//! the receiver stores of them (`NAME.stored`: the minimized body, which
//! must give the same events).
//! `WAFUNNEL_UPDATE_GOLDEN=1` rewrites the expected files: review the diff.

use std::path::Path;

use wafunnel_core::event::{RawEvent, RawTime};
use wafunnel_meta::{minimize, normalize_webhook, PhoneNumbers};

fn render(event: &RawEvent<'_>) -> String {
    let mut fields = vec![];
    let mut text = |name: &str, v: &Option<std::borrow::Cow<'_, str>>| {
        if let Some(v) = v {
            fields.push(format!("{name}={v}"));
        }
    };
    text("type", &event.event_type);
    text("event_id", &event.event_id);
    text("account_id", &event.account_id);
    text("user_id", &event.user_id);
    text("referral_ad_id", &event.referral_ad_id);
    text("click_id", &event.click_id);
    if let Some(RawTime::Millis(ms)) = event.event_time {
        fields.push(format!("event_time={ms}"));
    }
    if let Some(t) = event.template {
        fields.push(format!("template={t}"));
    }
    if let Some(b) = event.billable {
        fields.push(format!("billable={b}"));
    }
    fields.join(" ")
}

#[test]
fn webhook_bodies_give_the_documented_events() {
    let numbers = PhoneNumbers::new([
        ("106540352242922".to_owned(), "act_1001".to_owned()),
        ("206540352242922".to_owned(), "act_2002".to_owned()),
    ]);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/webhook");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    assert!(names.len() >= 15, "{} golden bodies", names.len());
    let update = std::env::var_os("WAFUNNEL_UPDATE_GOLDEN").is_some();
    for path in names {
        let body = std::fs::read(&path).expect("body");
        let outcome = |body: &[u8]| match normalize_webhook(body, &numbers) {
            Ok(events) if events.is_empty() => "ignored\n".to_owned(),
            Ok(events) => events.iter().map(|e| render(e) + "\n").collect(),
            Err(r) => format!("rejected {} {}\n", r.code(), r.field().unwrap_or("-")),
        };
        let got = outcome(&body);
        let stored = match minimize(&body, &|v| v.clone()) {
            Ok(stored) => {
                assert_eq!(outcome(&stored), got, "{}: minimized", path.display());
                let value: serde_json::Value = serde_json::from_slice(&stored).expect("json");
                serde_json::to_string_pretty(&value).expect("json") + "\n"
            }
            Err(e) => format!("stored as received: {e}\n"),
        };
        // Profile names, contents and the business's display number are gone.
        for gone in [
            "Ana",
            "Bruno",
            "15550001111",
            "my ",
            "Rua",
            "caption",
            "emoji",
        ] {
            assert!(!stored.contains(gone), "{}: {gone} stored", path.display());
        }
        for (extension, text) in [("expected", &got), ("stored", &stored)] {
            let expected_path = path.with_extension(extension);
            if update {
                std::fs::write(&expected_path, text).expect("write");
                continue;
            }
            let want = std::fs::read_to_string(&expected_path)
                .unwrap_or_else(|_| panic!("{} missing", expected_path.display()));
            assert_eq!(text, &want, "{}", expected_path.display());
        }
    }
}
