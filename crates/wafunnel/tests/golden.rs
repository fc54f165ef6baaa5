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

#[test]
fn every_golden_log_replays_to_its_expected_tables() {
    let mut cases = 0;
    for entry in std::fs::read_dir(golden_root()).expect("tests/golden") {
        let case = entry.expect("entry").path();
        if !case.is_dir() {
            continue;
        }
        let out = tempfile::tempdir().expect("tempdir");
        let output = Command::new(env!("CARGO_BIN_EXE_wafunnel"))
            .args([
                "replay",
                "--now",
                "2026-06-01T00:00:00Z",
                "--user-hash-key",
                "golden",
            ])
            .args(["--account", "act_br=BRL/America/Sao_Paulo"])
            .arg(case.join("events.ndjson"))
            .arg("--out")
            .arg(out.path())
            .output()
            .expect("run wafunnel");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for table in ["funnel_daily", "contacts_daily", "conversations"] {
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
    ] {
        assert!(report.contains(needle), "missing `{needle}` in\n{report}");
    }
    assert!(!rows(&out.path().join("funnel_daily.ndjson")).is_empty());
    assert!(!rows(&out.path().join("conversations.ndjson")).is_empty());
}
