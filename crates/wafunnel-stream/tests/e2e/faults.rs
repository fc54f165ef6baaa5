//! What must not change a number: checks, ingest instances sharing the
//! raw partitions, retention of dead letters, notations of a phone number.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::{Offset, TopicPartitionList};
use wafunnel_runtime::config::Config;
use wafunnel_runtime::kafka::{self, LogContext};
use wafunnel_runtime::shutdown::Shutdown;
use wafunnel_stream::ingest::{IngestCounts, IngestError};
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

/// Waits until the ingest group has `members` members and its partitions
/// are assigned.
async fn wait_for_stable_group(env_: &Env, members: usize) {
    let consumer: rdkafka::consumer::BaseConsumer<LogContext> =
        kafka::create(&kafka::client_config(&env_.cfg.kafka)).expect("consumer");
    let group = &env_.cfg.kafka.ingest_group;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let list = rdkafka::consumer::Consumer::fetch_group_list(
            &consumer,
            Some(group),
            Duration::from_secs(5),
        );
        let ready = list.as_ref().is_ok_and(|list| {
            list.groups()
                .iter()
                .any(|g| g.state() == "Stable" && g.members().len() == members)
        });
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the ingest group {group} never had {members} members assigned"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An ingest instance of the test's group, running in this process.
fn start_ingest(
    toml: &str,
) -> (
    Shutdown,
    tokio::task::JoinHandle<Result<IngestCounts, IngestError>>,
) {
    let cfg = Config::from_toml(toml).expect("config");
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let handle = tokio::spawn(async move { wafunnel_stream::ingest::run(&cfg, stop).await });
    (shutdown, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn ingest_instances_joining_and_leaving_forward_every_record_once() {
    let env_ = Env::new("threeingest", 4, 2).await;
    let lines = generated(30_000);
    let (tables, outcomes) = reference(&env_, &lines);
    // A third of the log first, the rest once all three have their
    // partitions: how fast the first instance reads must not decide whether
    // the others get any work.
    let (head, rest) = lines.split_at(lines.len() / 3);
    env_.produce(&env_.raw, 4, head).await;
    let first = Pipeline::start(&env_);
    // Let the first one commit some batches before the others join: each
    // join takes partitions away from it in the middle of the stream.
    while env_.accounting().await.total() == 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let second = start_ingest(&env_.toml_again());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let third = start_ingest(&env_.toml_again());
    wait_for_stable_group(&env_, 3).await;
    env_.produce(&env_.raw, 4, rest).await;
    // One leaves while the others work: its partitions move to them.
    second.0.stop();
    let second = second.1.await.expect("join").expect("second ingest");
    let accounting = wait_for_total(&env_, lines.len() as u64).await;
    // Settle: anything forwarded twice would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(env_.accounting().await, accounting);
    assert_eq!(
        accounting,
        Accounting {
            applied: lines.len() as u64 - outcomes.duplicate,
            duplicate: outcomes.duplicate,
            late: 0,
            dead_lettered: 0,
        },
        "every record once"
    );
    third.0.stop();
    let third = third.1.await.expect("join").expect("third ingest");
    first.shutdown.stop();
    let first_counts = first.ingest.await.expect("join").expect("first ingest");
    first.sessionize.await.expect("join").expect("sessionize");
    let shares = [first_counts, second, third].map(|c| c.forwarded);
    assert!(
        shares.iter().filter(|&&n| n > 0).count() >= 2,
        "the instances shared the work: {shares:?}"
    );
    assert_views_equal(&env_, &tables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn a_slow_ingest_instance_holds_the_others_back_in_event_time() {
    // Two raw partitions, each a fortnight of events in time order; one
    // instance forwards in batches of 50, the other in batches of 20,000.
    // Alone, the fast one would forward its fortnight while the slow one
    // is still on its first days, whose events would then be late.
    let env_ = Env::new("slowalign", 2, 2).await;
    let lines = generated(20_000);
    let (tables, outcomes) = reference(&env_, &lines);
    env_.produce(&env_.raw, 2, &lines).await;
    let slow = env_.toml_again().replacen(
        "[batch]\nmax_records = 20000\n",
        "[batch]\nmax_records = 50\n",
        1,
    );
    assert_ne!(slow, env_.toml_again(), "the slow configuration differs");
    // The slow one starts alone with every partition (aligned in one
    // process); the fast one then takes half of them.
    let slow = start_ingest(&slow);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pipeline = Pipeline::start(&env_);
    let accounting = wait_for_total(&env_, lines.len() as u64).await;
    slow.0.stop();
    let slow = slow.1.await.expect("join").expect("slow ingest");
    pipeline.stop().await;
    assert!(slow.forwarded > 0, "the slow instance took part");
    assert_eq!(
        accounting,
        Accounting {
            applied: lines.len() as u64 - outcomes.duplicate,
            duplicate: outcomes.duplicate,
            late: 0,
            dead_lettered: 0,
        },
        "no event made late by the other instance's partition"
    );
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
