//! Golden files: small hand-written event logs under `tests/golden/*/`, each
//! with the tables checked by hand against docs/SEMANTICS.md in `expected/`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden")
}

fn rows(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| serde_json::from_str(l).expect("json row"))
        .collect()
}

/// Replays a golden log with the settings of tests/golden/README.md; it must succeed.
fn replay_golden(events: &Path, out: &Path) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_wafunnel"))
        .args([
            "replay",
            "--now",
            "2026-06-01T00:00:00Z",
            "--user-hash-key",
            "golden",
        ])
        .args(["--account", "act_br=BRL/America/Sao_Paulo"])
        .args(["--capi-dataset", "act_1=1780000000000001/106540352242001"])
        .args(["--capi-dataset", "act_br=1780000000000002/106540352242002"])
        .arg(events)
        .arg("--out")
        .arg(out)
        .output()
        .expect("run wafunnel");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn every_golden_log_replays_to_its_expected_tables() {
    let mut cases = 0;
    for entry in std::fs::read_dir(golden_root()).expect("tests/golden") {
        let case = entry.expect("entry").path();
        if !case.is_dir() {
            continue;
        }
        let out = tempfile::tempdir().expect("tempdir");
        let output = replay_golden(&case.join("events.ndjson"), out.path());
        for table in [
            "funnel_daily",
            "contacts_daily",
            "conversations",
            "capi_exports",
            "capi_requests",
        ] {
            let file = format!("{table}.ndjson");
            assert_eq!(
                rows(&out.path().join(&file)),
                rows(&case.join("expected").join(&file)),
                "{} {table}",
                case.display()
            );
        }
        let expected_errors = case.join("expected/errors.txt");
        let stderr = String::from_utf8_lossy(&output.stderr);
        for line in std::fs::read_to_string(expected_errors)
            .unwrap_or_default()
            .lines()
        {
            assert!(stderr.contains(line), "missing `{line}` in\n{stderr}");
        }
        cases += 1;
    }
    assert!(cases >= 2, "golden cases missing: found {cases}");
}

#[test]
fn the_report_reconciles_meta_with_the_messages() {
    let out = tempfile::tempdir().expect("tempdir");
    let output = replay_golden(
        &golden_root().join("contract_example/events.ndjson"),
        out.path(),
    );
    let report = String::from_utf8_lossy(&output.stdout);
    // Meta's 127, two conversations started (one a ghost click), one that
    // messaged once, one person; the organic message is not in the chain.
    assert!(
        report.contains(
            "reconciliation: Meta says 127 -> 2 conversations started -> 1 messaged (1 inbound messages) -> 1 people who messaged"
        ),
        "{report}"
    );
}

#[test]
fn demo_prints_the_report_and_writes_the_tables() {
    let out = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_wafunnel"))
        .args(["demo", "--events", "5000", "--out"])
        .arg(out.path())
        .output()
        .expect("run wafunnel");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "account act_1001",
        "Meta says",
        "first reply",
        "free 72h window",
        "qualified leads",
        "told to Meta (Conversions API)",
        "ghosts: started minus messaged",
        "Meta says -> started: Meta counts a conversation per person per ad once per 7 days",
    ] {
        assert!(report.contains(needle), "missing `{needle}` in\n{report}");
    }
    assert!(!rows(&out.path().join("funnel_daily.ndjson")).is_empty());
    assert!(!rows(&out.path().join("conversations.ndjson")).is_empty());
    // The requests it would have sent: every export decided `send`, once,
    // in requests of at most 1000 events, without any user id.
    let exports = rows(&out.path().join("capi_exports.ndjson"));
    let to_send: std::collections::BTreeSet<String> = exports
        .iter()
        .filter(|x| x["decision"] == "send")
        .map(|x| x["export_id"].as_str().expect("id").to_owned())
        .collect();
    assert!(!to_send.is_empty());
    let mut sent = std::collections::BTreeSet::new();
    for request in rows(&out.path().join("capi_requests.ndjson")) {
        let path = request["path"].as_str().expect("path");
        assert!(path.starts_with("/v21.0/DATASET_ID_OF_act_"), "{path}");
        let events = request["body"]["data"].as_array().expect("data");
        assert!(!events.is_empty() && events.len() <= 1000);
        for event in events {
            assert_eq!(event["action_source"], "business_messaging");
            assert!(event["user_data"]["ctwa_clid"].is_string());
            assert!(event.get("user_id").is_none() && event["user_data"].get("ph").is_none());
            assert!(sent.insert(event["event_id"].as_str().expect("id").to_owned()));
        }
    }
    assert_eq!(sent, to_send);
}

#[test]
fn demo_sends_its_traffic_as_meta_does_with_meta() {
    let output = Command::new(env!("CARGO_BIN_EXE_wafunnel"))
        .args(["demo", "--events", "5000", "--meta"])
        .output()
        .expect("run wafunnel");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "as Meta sends it",
        "whatsapp-webhook",
        "meta-insights",
        "account act_3003",
        "rejected 0",
        "outbound billed by Meta",
    ] {
        assert!(report.contains(needle), "missing `{needle}` in\n{report}");
    }
}

#[test]
fn replay_reads_webhook_bodies_and_insights_rows_together() {
    let dir = tempfile::tempdir().expect("tempdir");
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../wafunnel-meta/tests/golden/webhook");
    // One body per line: a referral from an ad, receipts only, an unknown number.
    let bodies: String = ["ad_referral", "statuses_not_sent", "unknown_number"]
        .iter()
        .map(|name| {
            let body = std::fs::read_to_string(golden.join(format!("{name}.json"))).expect("body");
            body.replace('\n', "") + "\n"
        })
        .collect();
    std::fs::write(dir.path().join("bodies.ndjson"), bodies).expect("write");
    std::fs::write(
        dir.path().join("rows.ndjson"),
        concat!(
            r#"{"account_id":"1001","campaign_id":"c1","ad_id":"120210000000001","date_start":"2026-03-02","date_stop":"2026-03-02","spend":"120.50","actions":[{"action_type":"onsite_conversion.messaging_conversation_started_7d","value":"127"}],"fetched_at":"2026-03-03T01:00:00Z"}"#,
            "\n"
        ),
    )
    .expect("write");
    let out = dir.path().join("tables");
    let output = Command::new(env!("CARGO_BIN_EXE_wafunnel"))
        .current_dir(dir.path())
        .args([
            "replay",
            "--input",
            "whatsapp-webhook=bodies.ndjson",
            "--input",
            "meta-insights=rows.ndjson",
            "--phone-number",
            "106540352242922=act_1001",
            "--now",
            "2026-03-05T00:00:00Z",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run wafunnel");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        report.contains("records 4: applied 2, duplicates 0, late 0, rejected 1"),
        "{report}"
    );
    assert!(
        report.contains("ignored (valid, nothing to count): 1"),
        "{report}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bodies.ndjson:3: rejected (unknown_phone_number)"),
        "{stderr}"
    );
    // The referral's conversation carries the ad, and the row's spend lands on it.
    let funnel = rows(&out.join("funnel_daily.ndjson"));
    let ad = funnel
        .iter()
        .find(|r| r["ad_id"] == "120210000000001")
        .expect("the ad's row");
    assert_eq!(
        (
            ad["conversations_started"].as_i64(),
            ad["reported_conversations"].as_i64()
        ),
        (Some(1), Some(127))
    );
    assert_eq!(ad["spend"], "120.5000");
}
