//! Webhook bodies written from Meta's documented shapes, and the events
//! they must give (`tests/golden/webhook/NAME.json` → `NAME.expected`).
//! `WAFUNNEL_UPDATE_GOLDEN=1` rewrites the expected files: review the diff.

use std::path::Path;

use wafunnel_core::event::{RawEvent, RawTime};
use wafunnel_meta::{normalize_webhook, PhoneNumbers};

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
        let got = match normalize_webhook(&body, &numbers) {
            Ok(events) if events.is_empty() => "ignored\n".to_owned(),
            Ok(events) => events.iter().map(|e| render(e) + "\n").collect(),
            Err(r) => format!("rejected {} {}\n", r.code(), r.field().unwrap_or("-")),
        };
        let expected_path = path.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &got).expect("write");
            continue;
        }
        let want = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} missing", expected_path.display()));
        assert_eq!(got, want, "{}", path.display());
    }
}
