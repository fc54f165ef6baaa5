//! What must not change a number: checks, a second ingest, retention of
//! dead letters, notations of a phone number.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::{Offset, TopicPartitionList};
use wafunnel_runtime::config::Config;
use wafunnel_runtime::kafka::{self, LogContext};
use wafunnel_runtime::shutdown::Shutdown;
use wafunnel_stream::ingest::IngestError;
use wafunnel_stream::sink;

use super::{assert_views_equal, generated, reference, Accounting, Env, Pipeline};

async fn wait_for_total(env: &Env, expected: u64) -> Accounting {
    let started = Instant::now();
    loop {
        let accounting = env.accounting().await;
        if accounting.total() >= expected {
            return accounting;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {accounting:?} of {expected} records accounted for"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn a_check_before_and_during_a_backfill_changes_no_number() {
    let env_ = Env::new("checkbackfill", 4, 4).await;
    // Months in the past: a backfill, far behind a canary stamped now.
    let lines = generated(20_000);
    let (tables, outcomes) = reference(&env_, &lines);
    let pipeline = Pipeline::start(&env_);
    assert!(
        wafunnel_stream::check::run(&env_.cfg, false, Duration::from_secs(120)).await,
        "check before the backfill"
    );
    let half = lines.len() / 2;
    env_.produce(&env_.raw, 4, &lines[..half]).await;
    let (passed, ()) = tokio::join!(
        wafunnel_stream::check::run(&env_.cfg, false, Duration::from_secs(180)),
        env_.produce(&env_.raw, 4, &lines[half..]),
    );
    assert!(passed, "check in the middle of the backfill");
    let accounting = wait_for_total(&env_, lines.len() as u64).await;
    pipeline.stop().await;
    assert_eq!(
        accounting,
        Accounting {
            applied: lines.len() as u64 - outcomes.duplicate,
            duplicate: outcomes.duplicate,
            late: 0,
            dead_lettered: 0,
        },
        "the canaries made events late, or were counted"
    );
    assert_views_equal(&env_, &tables).await;
    let db = sink::client(&env_.cfg.clickhouse);
    let canaries: u64 = db
        .query("SELECT count() FROM check_canaries FINAL")
        .fetch_one()
        .await
        .expect("canaries");
    assert_eq!(
        canaries, 2,
        "each check's canary is where the check reads it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn a_second_ingest_is_fenced_and_nothing_is_forwarded_twice() {
    let env_ = Env::new("twoingest", 4, 2).await;
    let lines = generated(20_000);
    let (tables, outcomes) = reference(&env_, &lines);
    env_.produce(&env_.raw, 4, &lines).await;
    let first = Pipeline::start(&env_);
    // Let the first one commit some batches before the second starts.
    while env_.accounting().await.total() == 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second_cfg = Config::from_toml(&env_.toml_again()).expect("config");
    let second_stop = Shutdown::new();
    let stop = second_stop.clone();
    let second = tokio::spawn(async move { wafunnel_stream::ingest::run(&second_cfg, stop).await });
    let accounting = wait_for_total(&env_, lines.len() as u64).await;
    // Settle: anything forwarded twice would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env_.accounting().await, accounting);
    assert_eq!(accounting.total(), lines.len() as u64, "{accounting:?}");
    assert_eq!(
        accounting.duplicate, outcomes.duplicate,
        "records forwarded twice"
    );
    second_stop.stop();
    first.shutdown.stop();
    let results = [
        first.ingest.await.expect("join").map(|_| ()),
        second.await.expect("join").map(|_| ()),
    ];
    first.sessionize.await.expect("join").expect("sessionize");
    let fenced = results
        .iter()
        .filter(|r| matches!(r, Err(IngestError::Fenced(_))))
        .count();
    assert_eq!(fenced, 1, "one of the two stops, fenced: {results:?}");
    assert_views_equal(&env_, &tables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn dead_letter_counts_survive_deleted_records_and_a_restart() {
    let env_ = Env::new("dlretention", 1, 1).await;
    let good = |i: usize| {
        format!(
            r#"{{"event_id":"g{i}","type":"ad_click","account_id":"act_1001","user_id":"u{i}","event_time":1772445660000,"ad_id":"ad_1"}}"#
        )
        .into_bytes()
    };
    let mut records: Vec<Vec<u8>> = (0..30)
        .map(|i| format!("not json {i}").into_bytes())
        .collect();
    records.extend((0..10).map(good));
    env_.produce(&env_.raw, 1, &records).await;
    let pipeline = Pipeline::start(&env_);
    let before = wait_for_total(&env_, 40).await;
    pipeline.stop().await;
    assert_eq!((before.dead_lettered, before.applied), (30, 10));

    // Retention (here: DeleteRecords) removes the oldest dead letters.
    let admin: AdminClient<LogContext> =
        kafka::create(&kafka::client_config(&env_.cfg.kafka)).expect("admin");
    let mut below = TopicPartitionList::new();
    below
        .add_partition_offset(&env_.cfg.topics.dead_letter, 0, Offset::Offset(20))
        .expect("offset");
    admin
        .delete_records(&below, &AdminOptions::new())
        .await
        .expect("delete records");

    // A restart, and more records, both kinds.
    let mut more: Vec<Vec<u8>> = (30..35)
        .map(|i| format!("not json {i}").into_bytes())
        .collect();
    more.extend((10..15).map(good));
    env_.produce(&env_.raw, 1, &more).await;
    let pipeline = Pipeline::start(&env_);
    let after = wait_for_total(&env_, 50).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pipeline.stop().await;
    assert_eq!(env_.accounting().await, after);
    assert_eq!(
        after,
        Accounting {
            applied: 15,
            duplicate: 0,
            late: 0,
            dead_lettered: 35
        },
        "dead letters deleted by retention are still counted, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn a_phone_number_in_three_notations_is_one_contact() {
    let env_ = Env::new("phones", 1, 1).await;
    let records: Vec<Vec<u8>> = ["5511987654321", "+5511987654321", "+55 11 98765-4321"]
        .iter()
        .enumerate()
        .map(|(i, user)| {
            format!(
                r#"{{"event_id":"c{i}","type":"ad_click","account_id":"act_1001","user_id":"{user}","event_time":{},"ad_id":"ad_1"}}"#,
                1_772_445_660_000_i64 + i as i64 * 60_000
            )
            .into_bytes()
        })
        .collect();
    env_.produce(&env_.raw, 1, &records).await;
    let accounting = env_.run_pipeline(3).await;
    assert_eq!(accounting.applied, 3);
    let db = sink::client(&env_.cfg.clickhouse);
    let (conversations, clicks): (u64, u64) = db
        .query("SELECT count(), sum(clicks) FROM conversations")
        .fetch_one()
        .await
        .expect("conversations");
    assert_eq!((conversations, clicks), (1, 3), "one contact, three clicks");
    let contacts: i64 = db
        .query("SELECT sum(unique_contacts) FROM contacts_daily")
        .fetch_one()
        .await
        .expect("contacts");
    assert_eq!(contacts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn the_internal_topic_stops_growing_and_a_restart_is_still_exact() {
    let env_ = Env::new("trim", 2, 2).await;
    let lines = generated(20_000);
    let (tables, _) = reference(&env_, &lines);
    let pipeline = Pipeline::start(&env_);
    // In slices, so that partitions are snapshotted several times.
    for chunk in lines.chunks(lines.len() / 4 + 1) {
        env_.produce(&env_.raw, 2, chunk).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    wait_for_total(&env_, lines.len() as u64).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pipeline.stop().await;
    let consumer: rdkafka::consumer::BaseConsumer<LogContext> =
        kafka::create(&kafka::client_config(&env_.cfg.kafka)).expect("consumer");
    for partition in 0..2 {
        let (low, high) = rdkafka::consumer::Consumer::fetch_watermarks(
            &consumer,
            &env_.cfg.topics.internal,
            partition,
            Duration::from_secs(10),
        )
        .expect("watermarks");
        assert!(
            low > 0 && low < high,
            "partition {partition}: nothing deleted ({low}..{high})"
        );
    }

    // A restart resumes from the snapshots: the same tables.
    let pipeline = Pipeline::start(&env_);
    tokio::time::sleep(Duration::from_secs(3)).await;
    pipeline.stop().await;
    assert_eq!(env_.accounting().await.total(), lines.len() as u64);
    assert_views_equal(&env_, &tables).await;

    // Other windows make the snapshots unusable, and the records before
    // them are gone: sessionize refuses to count on instead of guessing.
    let changed = Config::from_toml(&format!(
        "{}\n[windows]\nlateness = \"23h\"\n",
        env_.toml_again()
    ))
    .expect("config");
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        wafunnel_stream::sessionize::run(&changed, Shutdown::new()),
    )
    .await
    .expect("sessionize stops by itself");
    let message = result.expect_err("no exact resume possible").to_string();
    assert!(message.contains("rebuild"), "{message}");
}
