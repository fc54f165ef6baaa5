//! Webhooks from a phone number sent before it was configured are
//! dead-lettered; once it is configured, `wafunnel redrive` (a process,
//! SIGKILLed once mid-way, then run again, then once more with nothing
//! left) re-drives each exactly once: the tables then equal those of the
//! in-process engine with the number configured from the start, and every
//! raw record is accounted for once.

use std::io::BufRead as _;
use std::time::{Duration, Instant};

use wafunnel_core::config::UserHasher;
use wafunnel_core::sessionizer::Sessionizer;
use wafunnel_core::tables::Tables;
use wafunnel_runtime::config::Config;

use super::{env, Accounting, Env, Pipeline, HASH_KEY};

/// The number the webhooks come from, configured only after they arrived.
const LATE_NUMBER: &str = "406540352242922";
const ADDED: &str = r#"
[[accounts]]
id = "act_4004"
currency = "GBP"
time_zone = "Europe/London"
phone_number_ids = ["406540352242922"]
"#;
const EARLY_BODIES: usize = 16;

fn body(number: &str, from: &str, id: &str, seconds: i64, referral: Option<&str>) -> Vec<u8> {
    let referral = referral.map_or(String::new(), |ad| {
        format!(r#""referral":{{"source_url":"https://fb.me/x","source_id":"{ad}","source_type":"ad","ctwa_clid":"clid-{id}"}},"#)
    });
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550001111","phone_number_id":"{number}"}},"messages":[{{{referral}"from":"{from}","id":"{id}","timestamp":"{seconds}","type":"text","text":{{"body":"hello"}}}}]}}}}]}}]}}"#
    )
    .into_bytes()
}

/// `wafunnel --config <config> redrive <args>`: its exit, standard output
/// and log lines; killed with SIGKILL after its first committed batch when
/// `kill` is set.
fn redrive(config: &std::path::Path, args: &[&str], kill: bool) -> (bool, String, Vec<String>) {
    let mut child = std::process::Command::new(env("WAFUNNEL_BIN"))
        .arg("--config")
        .arg(config)
        .arg("redrive")
        .args(args)
        .env("RUST_LOG", "warn,wafunnel_stream::redrive=info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the wafunnel binary");
    let stderr = child.stderr.take().expect("stderr");
    let mut logs = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("log line");
        let committed = line.contains("re-drive batch committed");
        logs.push(line);
        if kill && committed {
            child.kill().expect("SIGKILL");
            break;
        }
    }
    let output = child.wait_with_output().expect("wait");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        logs,
    )
}

/// The number in "<word> N dead letter(s)" of a run's summary line.
fn redriven(stdout: &str) -> (u64, u64) {
    let line = stdout.lines().last().expect("summary");
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = words
        .iter()
        .position(|w| *w == "dead")
        .and_then(|i| words[i - 1].parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let before = line
        .split("; ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    (n, before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn dead_letters_of_a_number_configured_late_are_re_driven_once_through_a_sigkill() {
    let mut env = Env::new("redrive", 1, 2).await;
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let start = now_s - 3 * 3600;
    // Bodies of a configured number and of the late one, interleaved in
    // time: a few contacts each, some from an ad.
    let mut bodies = Vec::new();
    for i in 0..EARLY_BODIES {
        let t = start + 60 * i as i64;
        let user = format!("44770090{:04}", i % 5);
        let ad = (i % 5 == i).then_some("120210000004004");
        bodies.push(body(LATE_NUMBER, &user, &format!("wamid.L{i}"), t, ad));
        let user = format!("55119000{:04}", i % 4);
        let ad = (i % 4 == i).then_some("120210000001001");
        bodies.push(body(
            "106540352242922",
            &user,
            &format!("wamid.K{i}"),
            t + 30,
            ad,
        ));
    }
    let records = bodies.len() as u64;
    env.produce(&env.webhook, 1, &bodies).await;
    let accounting = env.run_pipeline(records).await;
    assert_eq!(
        accounting,
        Accounting {
            applied: records - EARLY_BODIES as u64,
            duplicate: 0,
            late: 0,
            dead_lettered: EARLY_BODIES as u64,
        }
    );

    // The number is configured.
    let toml = format!("{}{ADDED}", env.toml);
    env.cfg = Config::from_toml(&toml).expect("config with the number");
    env.toml = toml.clone();
    let dir = std::env::temp_dir().join(format!("wafunnel-redrive-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("wafunnel.toml");
    std::fs::write(&config, &toml).expect("config file");

    // The reference: every body, the number configured from the start.
    let accounts = env.cfg.accounts().expect("accounts");
    let numbers = wafunnel_meta::PhoneNumbers::new(env.cfg.phone_numbers());
    let hasher = UserHasher::new(HASH_KEY.as_bytes());
    let mut reference = Sessionizer::new(0, env.cfg.windows().expect("windows"), accounts.clone());
    for b in &bodies {
        for raw in wafunnel_meta::normalize_webhook(b, &numbers).expect("valid body") {
            reference.apply(
                &raw.validate(&accounts, &hasher, now_s * 1000)
                    .expect("valid message"),
            );
        }
    }
    reference.finish();
    let mut tables = Tables::default();
    tables.apply(reference.drain());

    // A dry run lists each and what it would become, and writes nothing.
    let (ok, stdout, logs) = redrive(&config, &["--dry-run"], false);
    assert!(ok, "{stdout}\n{}", logs.join("\n"));
    let listed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("unknown_phone_number from"))
        .collect();
    assert_eq!(listed.len(), EARLY_BODIES, "{stdout}");
    assert!(
        listed.iter().all(|l| l.ends_with("forwarded: 1 event(s)")),
        "{stdout}"
    );
    // Malformed records are not chosen unless asked, and none is here.
    let (ok, stdout, _) = redrive(&config, &["--dry-run", "--reason", "malformed"], false);
    assert!(ok && redriven(&stdout) == (0, 0), "{stdout}");

    // Killed after its first transaction, then run to the end, then again.
    let (_, _, logs) = redrive(&config, &["--batch-size", "1"], true);
    assert!(
        logs.iter().any(|l| l.contains("re-drive batch committed")),
        "{}",
        logs.join("\n")
    );
    let (ok, stdout, logs) = redrive(&config, &["--batch-size", "2"], false);
    assert!(ok, "{stdout}\n{}", logs.join("\n"));
    let (second, before) = redriven(&stdout);
    assert_eq!(second + before, EARLY_BODIES as u64, "{stdout}");
    assert!(before >= 1 && second >= 1, "killed mid-way: {stdout}");
    let (ok, stdout, _) = redrive(&config, &[], false);
    assert!(ok, "{stdout}");
    assert_eq!(
        redriven(&stdout),
        (0, EARLY_BODIES as u64),
        "nothing left: {stdout}"
    );

    // Sessionize (and ingest) under the new configuration count them.
    let pipeline = Pipeline::start(&env);
    let started = Instant::now();
    let want = Accounting {
        applied: records,
        duplicate: 0,
        late: 0,
        dead_lettered: 0,
    };
    loop {
        let accounting = env.accounting().await;
        if accounting == want {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{accounting:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    pipeline.stop().await;
    super::assert_views_equal(&env, &tables).await;
    let _ = std::fs::remove_dir_all(&dir);
}
