//! Recovery benchmark, for `scripts/bench-recovery.sh`: how long a
//! sessionize instance takes from start to processing again when its
//! partition holds N open conversations, and how big their snapshot is.
//!
//! ```text
//! cargo run --release -p wafunnel-stream --example bench_recovery -- \
//!     BOOTSTRAP CLICKHOUSE_URL CONVERSATIONS RUNS
//! ```
//!
//! Builds a partition state of CONVERSATIONS open conversations (one ad click
//! each, all inside the lateness window, so nothing is evicted), writes its
//! snapshot to a fresh state topic, then RUNS times: produces one new event
//! to the internal partition, starts `sessionize::run` and times until that
//! event is applied (group join, snapshot read and decoded, first record),
//! then stops it (which writes a new snapshot). Each run's configuration
//! lists one more account, with a phone number, than the one before: the
//! restart of an agency onboarding a client. Prints `key=value` lines.

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use wafunnel_core::config::UserHasher;
use wafunnel_core::event::parse_json_event;
use wafunnel_core::sessionizer::Sessionizer;
use wafunnel_runtime::config::Config;
use wafunnel_runtime::kafka::{self, LogContext, TopicLayout};
use wafunnel_runtime::metrics::metrics;
use wafunnel_runtime::shutdown::Shutdown;
use wafunnel_stream::state::StateStore;

const HASH_KEY: &str = "bench-recovery-hash-key";
/// 2026-01-05T00:00:00Z.
const T0: i64 = 1_767_571_200_000;

fn usage() -> ! {
    eprintln!("usage: bench_recovery BOOTSTRAP CLICKHOUSE_URL CONVERSATIONS RUNS");
    std::process::exit(2)
}

fn click(i: u64, time: i64) -> String {
    format!(
        r#"{{"event_id":"click-{i}","type":"ad_click","account_id":"act_1001","user_id":"user-{i}","event_time":{time},"ad_id":"ad-{}","campaign_id":"campaign-{}","adset_id":"adset-{}"}}"#,
        i % 500,
        i % 20,
        i % 100
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, clickhouse, conversations, runs] = args.as_slice() else {
        usage()
    };
    let conversations: u64 = conversations.parse().unwrap_or_else(|_| usage());
    let runs: u32 = runs.parse().unwrap_or_else(|_| usage());
    let suffix = std::process::id();
    let text = format!(
        r#"
user_hash_key = "{HASH_KEY}"
[kafka]
bootstrap = "{bootstrap}"
sessionize_group = "bench-recovery-{suffix}"
[topics]
raw = [{{ name = "bench-recovery-raw-{suffix}" }}]
internal = "bench-recovery-events-{suffix}"
dead_letter = "bench-recovery-dead-{suffix}"
state = "bench-recovery-state-{suffix}"
internal_partitions = 1
[clickhouse]
url = "{clickhouse}"
database = "bench_recovery_{suffix}"
[[accounts]]
id = "act_1001"
[state]
# Only the snapshot written at stop: the runs time restores, not periodic snapshots.
snapshot_records = 1000000000
snapshot_interval_ms = 3600000
"#
    );
    let cfg = Config::from_toml(&text).expect("config");
    kafka::create_topics(
        &cfg.kafka,
        &[(&cfg.topics.internal, 1), (&cfg.topics.dead_letter, 1)],
    )
    .await
    .expect("create topics");
    kafka::create_state_topic(
        &cfg.kafka,
        &cfg.topics.state,
        TopicLayout {
            partitions: Some(1),
            replication: None,
        },
    )
    .await
    .expect("create state topic");
    wafunnel_stream::sink::migrate(&cfg.clickhouse)
        .await
        .expect("migrate");

    let accounts = cfg.accounts().expect("accounts");
    let hasher = UserHasher::new(HASH_KEY.as_bytes());
    let now = T0 + 2 * 3_600_000;
    let started = Instant::now();
    let mut sessionizer = Sessionizer::new(0, cfg.windows().expect("windows"), accounts.clone());
    for i in 0..conversations {
        let line = click(i, T0 + (i * 3_600_000 / conversations.max(1)) as i64);
        let event = parse_json_event(line.as_bytes(), &accounts, &hasher, now).expect("valid");
        sessionizer.apply(&event);
    }
    drop(sessionizer.drain());
    let open = sessionizer.stats().conversations;
    println!("open_conversations={open}");
    println!("build_seconds={:.2}", started.elapsed().as_secs_f64());

    let store = StateStore::new(&cfg, 1).expect("state store");
    let started = Instant::now();
    let written = store
        .save(0, 1, 0, Vec::new(), &sessionizer)
        .expect("snapshot");
    println!("snapshot_seconds={:.2}", started.elapsed().as_secs_f64());
    println!("snapshot_bytes={}", written.bytes);
    println!(
        "snapshot_bytes_per_conversation={:.1}",
        written.bytes as f64 / open.max(1) as f64
    );
    println!("state_topic={}", cfg.topics.state);
    drop(sessionizer);
    drop(store);

    let producer: FutureProducer<LogContext> = kafka::client_config(&cfg.kafka)
        .create_with_context(LogContext)
        .expect("producer");
    let mut restart = Vec::new();
    let mut restore = Vec::new();
    let mut stop = Vec::new();
    let mut onboarded = text.clone();
    for run in 0..runs {
        onboarded.push_str(&format!(
            "[[accounts]]\nid = \"act_new_{run}\"\ncurrency = \"EUR\"\ntime_zone = \"Europe/Madrid\"\nphone_number_ids = [\"90{run}\"]\n"
        ));
        let probe = click(
            conversations + u64::from(run),
            T0 + 3_600_000 + i64::from(run),
        );
        let event = parse_json_event(probe.as_bytes(), &accounts, &hasher, now).expect("valid");
        // Written as ingest writes its records.
        let mut payload = Vec::new();
        let source = wafunnel_core::wire::Source {
            topic: "bench-recovery-probe",
            partition: 0,
            offset: i64::from(run),
        };
        wafunnel_core::wire::encode_event(&source, &event, &mut payload);
        producer
            .send(
                FutureRecord::<(), _>::to(&cfg.topics.internal)
                    .payload(&payload)
                    .partition(0),
                Duration::from_secs(10),
            )
            .await
            .expect("probe delivered");

        let applied_before = metrics().sessionize_applied.get();
        let restore_before = metrics().restore_seconds.get();
        let restores_before = metrics().restores_from_snapshot.get();
        let shutdown = Shutdown::new();
        let stop_tx = shutdown.clone();
        let run_cfg = Config::from_toml(&onboarded).expect("config");
        let started = Instant::now();
        let service =
            tokio::spawn(async move { wafunnel_stream::sessionize::run(&run_cfg, shutdown).await });
        while metrics().sessionize_applied.get() == applied_before {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the probe was not applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let to_processing = started.elapsed().as_secs_f64();
        let restore_secs = metrics().restore_seconds.get() - restore_before;
        assert_eq!(
            metrics().restores_from_snapshot.get(),
            restores_before + 1,
            "the partition was restored from its snapshot"
        );
        let stopping = Instant::now();
        stop_tx.stop();
        service.await.expect("join").expect("sessionize");
        let stop_secs = stopping.elapsed().as_secs_f64();
        println!(
            "run={run} restart_to_processing_seconds={to_processing:.2} restore_seconds={restore_secs:.2} stop_with_snapshot_seconds={stop_secs:.2}"
        );
        restart.push(to_processing);
        restore.push(restore_secs);
        stop.push(stop_secs);
    }
    if runs > 0 {
        println!(
            "range restart_to_processing_seconds={} restore_seconds={} stop_with_snapshot_seconds={}",
            range(&restart),
            range(&restore),
            range(&stop)
        );
        println!(
            "median restart_to_processing_seconds={:.2} restore_seconds={:.2} stop_with_snapshot_seconds={:.2}",
            median(restart),
            median(restore),
            median(stop)
        );
    }
}

fn range(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}-{max:.2}")
}
