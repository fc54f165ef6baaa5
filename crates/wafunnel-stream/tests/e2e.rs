//! End-to-end tests on a real Kafka broker and ClickHouse server, started by
//! `deploy/local/up.sh` (`scripts/test.sh` does it). Each test has its own
//! topics and its own database.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use wafunnel_avro::Format;
use wafunnel_core::config::{Accounts, UserHasher};
use wafunnel_core::event::parse_json_event;
use wafunnel_core::export::{ConversionExport, ExportDecision};
use wafunnel_core::sessionizer::{OutcomeCounts, Sessionizer};
use wafunnel_core::tables::Tables;
use wafunnel_core::time::DayClock;
use wafunnel_runtime::config::Config;
use wafunnel_runtime::kafka::{self, LogContext, TopicLayout};
use wafunnel_runtime::shutdown::Shutdown;
use wafunnel_stream::sink::{self, ConversationCh};

#[path = "e2e/accounts.rs"]
mod accounts;
#[path = "e2e/faults.rs"]
mod faults;
#[path = "e2e/grants.rs"]
mod grants;
#[path = "../../wafunnel-capi/tests/graph/mod.rs"]
mod graph;
#[path = "e2e/isolation.rs"]
mod isolation;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/ops.rs"]
mod ops;
#[path = "e2e/redrive.rs"]
mod redrive;
#[path = "e2e/webhook.rs"]
mod webhook;

const HASH_KEY: &str = "e2e-test-user-hash-key";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the services with deploy/local/up.sh (scripts/test.sh does)"
        )
    })
}

struct Env {
    cfg: Config,
    toml: String,
    raw: String,
    avro: String,
    webhook: String,
    insights: String,
}

impl Env {
    async fn new(name: &str, raw_partitions: i32, internal_partitions: i32) -> Env {
        // The services' logs (RUST_LOG) go with the test's captured output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let suffix = format!("{name}-{}", std::process::id());
        let raw = format!("raw-{suffix}");
        let avro = format!("raw-avro-{suffix}");
        let webhook = format!("raw-webhook-{suffix}");
        let insights = format!("raw-insights-{suffix}");
        let text = format!(
            r#"
user_hash_key = "{HASH_KEY}"
[kafka]
bootstrap = "{bootstrap}"
ingest_group = "ingest-{suffix}"
sessionize_group = "sessionize-{suffix}"
[topics]
raw = [{{ name = "{raw}", format = "json" }}, {{ name = "{avro}", format = "avro-single-object" }}, {{ name = "{webhook}", format = "whatsapp-webhook" }}, {{ name = "{insights}", format = "meta-insights" }}]
internal = "events-{suffix}"
dead_letter = "dead-{suffix}"
state = "state-{suffix}"
capi = "capi-{suffix}"
alignment = "alignment-{suffix}"
internal_partitions = {internal_partitions}
[clickhouse]
url = "{url}"
self_url = "{url}"
database = "wafunnel_{db}"
[[accounts]]
id = "act_1001"
currency = "USD"
time_zone = "UTC"
phone_number_ids = ["106540352242922"]
[[accounts]]
id = "act_2002"
currency = "BRL"
time_zone = "America/Sao_Paulo"
phone_number_ids = ["206540352242922"]
[[accounts]]
id = "act_3003"
currency = "EUR"
time_zone = "Europe/Madrid"
phone_number_ids = ["306540352242922"]
[capi]
# The lateness: every export is emitted with its total-order attribution,
# so the pipeline's equal the in-process engine's.
delay = "24h"
[batch]
max_records = 20000
flush_interval_ms = 300
[state]
# Often, so that restarts and rebalances in these tests resume from snapshots.
snapshot_records = 3000
snapshot_interval_ms = 1000
"#,
            bootstrap = env("KAFKA_BOOTSTRAP"),
            url = env("CLICKHOUSE_URL").trim_end_matches('/'),
            db = suffix.replace('-', "_"),
        );
        let cfg = Config::from_toml(&text).expect("test config");
        let toml = text.clone();
        kafka::create_topics(
            &cfg.kafka,
            &[
                (&raw, raw_partitions),
                (&avro, 1),
                (&webhook, 1),
                (&insights, 1),
                (&cfg.topics.internal, internal_partitions),
                (&cfg.topics.dead_letter, 1),
                (&cfg.topics.capi, internal_partitions),
            ],
        )
        .await
        .expect("create topics");
        kafka::create_state_topic(
            &cfg.kafka,
            &cfg.topics.state,
            TopicLayout {
                partitions: Some(internal_partitions),
                replication: None,
            },
        )
        .await
        .expect("create state topic");
        kafka::create_alignment_topic(&cfg.kafka, &cfg.topics.alignment, None)
            .await
            .expect("create alignment topic");
        sink::migrate(&cfg.clickhouse).await.expect("migrate");
        Env {
            cfg,
            toml,
            raw,
            avro,
            webhook,
            insights,
        }
    }

    async fn produce(&self, topic: &str, partitions: i32, records: &[Vec<u8>]) {
        let producer: FutureProducer<LogContext> = kafka::client_config(&self.cfg.kafka)
            // In order through retries, like a well-behaved upstream producer.
            .set("enable.idempotence", "true")
            // Up to what the topic accepts (a test sends a record near 1 MB).
            .set("message.max.bytes", "1048576")
            .set("linger.ms", "20")
            .create_with_context(LogContext)
            .expect("producer");
        let mut pending = Vec::new();
        for (i, payload) in records.iter().enumerate() {
            let mut record = FutureRecord::<(), _>::to(topic)
                .payload(payload)
                .partition(i as i32 % partitions);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((_, back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }
        for delivery in pending {
            delivery.await.expect("delivered").expect("acknowledged");
        }
    }

    /// Runs ingest and sessionize until every input record is accounted for.
    async fn run_pipeline(&self, expected_records: u64) -> Accounting {
        self.run_pipeline_with(
            Config::from_toml(&self.toml_again()).expect("config"),
            Config::from_toml(&self.toml_again()).expect("config"),
            expected_records,
        )
        .await
    }

    /// Runs ingest and sessionize, each with its own configuration, until
    /// every input record is accounted for.
    async fn run_pipeline_with(
        &self,
        ingest_cfg: Config,
        sessionize_cfg: Config,
        expected_records: u64,
    ) -> Accounting {
        let pipeline = Pipeline::start_with(ingest_cfg, sessionize_cfg);
        let started = Instant::now();
        let accounting = loop {
            let accounting = self.accounting().await;
            if accounting.total() >= expected_records {
                break accounting;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "only {accounting:?} of {expected_records} records accounted for"
            );
            assert!(
                !pipeline.ingest.is_finished() && !pipeline.sessionize.is_finished(),
                "a service stopped early"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        pipeline.stop().await;
        accounting
    }

    /// The configuration text, for a service that needs its own `Config`.
    fn toml_again(&self) -> String {
        self.toml.clone()
    }

    async fn accounting(&self) -> Accounting {
        let db = sink::client(&self.cfg.clickhouse);
        db.query("SELECT sum(applied), sum(duplicate), sum(late), sum(dead_lettered) FROM input_accounting")
            .fetch_one::<Accounting>()
            .await
            .unwrap_or_default()
    }
}

/// Ingest and sessionize running in this process until `stop`.
struct Pipeline {
    shutdown: Shutdown,
    ingest: tokio::task::JoinHandle<
        Result<wafunnel_stream::ingest::IngestCounts, wafunnel_stream::ingest::IngestError>,
    >,
    sessionize: tokio::task::JoinHandle<Result<u64, wafunnel_stream::sessionize::SessionizeError>>,
}

impl Pipeline {
    fn start(env: &Env) -> Pipeline {
        Pipeline::start_with(
            Config::from_toml(&env.toml_again()).expect("config"),
            Config::from_toml(&env.toml_again()).expect("config"),
        )
    }

    fn start_with(ingest_cfg: Config, sessionize_cfg: Config) -> Pipeline {
        let shutdown = Shutdown::new();
        let (a, b) = (shutdown.clone(), shutdown.clone());
        Pipeline {
            shutdown,
            ingest: tokio::spawn(async move { wafunnel_stream::ingest::run(&ingest_cfg, a).await }),
            sessionize: tokio::spawn(async move {
                wafunnel_stream::sessionize::run(&sessionize_cfg, b).await
            }),
        }
    }

    async fn stop(self) {
        self.shutdown.stop();
        self.ingest.await.expect("join").expect("ingest");
        self.sessionize.await.expect("join").expect("sessionize");
    }
}

/// A port nothing listens on yet.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, clickhouse::Row)]
struct Accounting {
    applied: u64,
    duplicate: u64,
    late: u64,
    dead_lettered: u64,
}

impl Accounting {
    fn total(&self) -> u64 {
        self.applied + self.duplicate + self.late + self.dead_lettered
    }
}

#[derive(Debug, PartialEq, Deserialize, clickhouse::Row)]
struct FunnelDailyCh {
    account_id: String,
    campaign_id: String,
    adset_id: String,
    ad_id: String,
    day: u16,
    clicks: i64,
    inbound_messages: i64,
    conversations_started: i64,
    conversations_messaged: i64,
    ghost_conversations: i64,
    replied: i64,
    replied_le_5m: i64,
    replied_le_1h: i64,
    replied_le_24h: i64,
    replied_gt_24h: i64,
    sum_first_response_ms: i64,
    outbound_in_free_window: i64,
    outbound_after_free_window: i64,
    over_messaged_conversations: i64,
    qualified_leads: i64,
    purchases: i64,
    revenue: i64,
    spend: i64,
    impressions: i64,
    reported_conversations: i64,
    cost_per_conversation: Option<i64>,
    cost_per_messaged_conversation: Option<i64>,
    click_to_message_rate: Option<f64>,
    outbound_billable: i64,
    currency: String,
}

#[derive(Debug, PartialEq, Eq, Deserialize, clickhouse::Row)]
struct ContactsDailyCh {
    account_id: String,
    day: u16,
    unique_contacts: i64,
    organic_inbound_messages: i64,
    organic_contacts: i64,
    unattributed_leads: i64,
    unattributed_purchases: i64,
    messaging_contacts: i64,
    currency: String,
    purchases_on_day: i64,
    /// Decimal(18, 4) as its integer units.
    revenue_on_day: i64,
}

/// What `conversations` adds to a conversation's own fields: the account's
/// day and currency, and the ad's hierarchy.
#[derive(Debug, PartialEq, Eq, Deserialize, clickhouse::Row)]
struct ConversationDimsCh {
    account_id: String,
    ad_id: String,
    user_hash: String,
    started_at: i64,
    start_day: u16,
    campaign_id: String,
    adset_id: String,
    currency: String,
}

fn currency(accounts: &Accounts, account_id: &str) -> String {
    accounts.get(account_id).currency.as_str().to_owned()
}

fn expected_funnel(tables: &Tables, accounts: &Accounts) -> Vec<FunnelDailyCh> {
    tables
        .funnel_daily()
        .into_iter()
        .map(|r| FunnelDailyCh {
            account_id: r.account_id.to_string(),
            campaign_id: r.campaign_id.to_string(),
            adset_id: r.adset_id.to_string(),
            ad_id: r.ad_id.to_string(),
            day: r.day.0 as u16,
            clicks: r.clicks,
            inbound_messages: r.inbound_messages,
            conversations_started: r.conversations_started,
            conversations_messaged: r.conversations_messaged,
            ghost_conversations: r.ghost_conversations,
            replied: r.replied,
            replied_le_5m: r.replied_le_5m,
            replied_le_1h: r.replied_le_1h,
            replied_le_24h: r.replied_le_24h,
            replied_gt_24h: r.replied_gt_24h,
            sum_first_response_ms: r.sum_first_response_ms,
            outbound_in_free_window: r.outbound_in_free_window,
            outbound_after_free_window: r.outbound_after_free_window,
            over_messaged_conversations: r.over_messaged_conversations,
            qualified_leads: r.qualified_leads,
            purchases: r.purchases,
            revenue: r.revenue.0,
            spend: r.spend.0,
            impressions: r.impressions,
            reported_conversations: r.reported_conversations,
            cost_per_conversation: r.cost_per_conversation.map(|m| m.0),
            cost_per_messaged_conversation: r.cost_per_messaged_conversation.map(|m| m.0),
            click_to_message_rate: r.click_to_message_rate,
            outbound_billable: r.outbound_billable,
            currency: currency(accounts, &r.account_id),
        })
        .collect()
}

fn expected_contacts(tables: &Tables, accounts: &Accounts) -> Vec<ContactsDailyCh> {
    tables
        .contacts_daily()
        .into_iter()
        .map(|r| ContactsDailyCh {
            account_id: r.account_id.to_string(),
            day: r.day.0 as u16,
            unique_contacts: r.unique_contacts,
            organic_inbound_messages: r.organic_inbound_messages,
            organic_contacts: r.organic_contacts,
            unattributed_leads: r.unattributed_leads,
            unattributed_purchases: r.unattributed_purchases,
            messaging_contacts: r.messaging_contacts,
            currency: currency(accounts, &r.account_id),
            purchases_on_day: r.purchases_on_day,
            revenue_on_day: r.revenue_on_day.0,
        })
        .collect()
}

/// The three BI views equal the in-process tables, every row and column.
async fn assert_views_equal(env: &Env, tables: &Tables) {
    let db = sink::client(&env.cfg.clickhouse);
    let accounts = env.cfg.accounts().expect("accounts");
    let funnel: Vec<FunnelDailyCh> = db
        .query("SELECT * FROM funnel_daily ORDER BY account_id, campaign_id, adset_id, ad_id, day")
        .fetch_all()
        .await
        .expect("funnel_daily");
    let expected = expected_funnel(tables, &accounts);
    assert_eq!(funnel.len(), expected.len());
    for (got, want) in funnel.iter().zip(&expected) {
        assert_eq!(got, want);
    }
    let contacts: Vec<ContactsDailyCh> = db
        .query("SELECT * FROM contacts_daily ORDER BY account_id, day")
        .fetch_all()
        .await
        .expect("contacts_daily");
    assert_eq!(contacts, expected_contacts(tables, &accounts));
    let conversations: Vec<ConversationCh> = db
        .query(
            "SELECT account_id, ad_id, user_hash, started_at, last_activity_at, clicks, \
             first_click_at, inbound_messages, first_inbound_at, outbound_messages, \
             first_reply_at, first_response_ms, response_bucket, free_window_ends_at, \
             outbound_in_free_window, outbound_after_free_window, followups_in_free_window, \
             over_messaged, qualified_at, purchases, revenue, first_purchase_at, \
             time_to_close_ms, click_id \
             FROM conversations ORDER BY account_id, ad_id, user_hash, started_at",
        )
        .fetch_all()
        .await
        .expect("conversations");
    let mut want: Vec<ConversationCh> = tables
        .conversations()
        .iter()
        .map(ConversationCh::from)
        .collect();
    want.sort_by(|a, b| {
        (&a.account_id, &a.ad_id, &a.user_hash, a.started_at).cmp(&(
            &b.account_id,
            &b.ad_id,
            &b.user_hash,
            b.started_at,
        ))
    });
    assert_eq!(conversations.len(), want.len());
    for (got, want) in conversations.iter().zip(&want) {
        assert_eq!(got, want);
    }

    // The account's day and currency, and the hierarchy funnel_daily shows.
    let hierarchy: HashMap<(String, String), (String, String)> = expected
        .iter()
        .map(|r| {
            let key = (r.account_id.clone(), r.ad_id.clone());
            (key, (r.campaign_id.clone(), r.adset_id.clone()))
        })
        .collect();
    let dims: Vec<ConversationDimsCh> = db
        .query(
            "SELECT account_id, ad_id, user_hash, started_at, start_day, campaign_id, adset_id, \
             currency FROM conversations ORDER BY account_id, ad_id, user_hash, started_at",
        )
        .fetch_all()
        .await
        .expect("conversations");
    let want: Vec<ConversationDimsCh> = want
        .into_iter()
        .map(|c| {
            let mut clock = DayClock::new(accounts.get(&c.account_id).time_zone);
            let (campaign_id, adset_id) =
                hierarchy[&(c.account_id.clone(), c.ad_id.clone())].clone();
            ConversationDimsCh {
                start_day: clock.day_of(c.started_at).0 as u16,
                currency: currency(&accounts, &c.account_id),
                account_id: c.account_id,
                ad_id: c.ad_id,
                user_hash: c.user_hash,
                started_at: c.started_at,
                campaign_id,
                adset_id,
            }
        })
        .collect();
    assert_eq!(dims, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn a_generated_log_gives_the_in_process_tables_exactly() {
    let env = Env::new("e2e", 4, 4).await;
    let lines = generated(100_000);
    assert!(lines.len() >= 100_000, "{} records", lines.len());

    // The reference: the same records through one in-process sessionizer.
    let (tables, outcomes) = reference(&env, &lines);
    assert_eq!(outcomes.late, 0, "the generated log has no late event");
    let duplicates = outcomes.duplicate;

    env.produce(&env.raw, 4, &lines).await;
    let accounting = env.run_pipeline(lines.len() as u64).await;
    assert_eq!(
        accounting,
        Accounting {
            applied: lines.len() as u64 - duplicates,
            duplicate: duplicates,
            late: 0,
            dead_lettered: 0
        }
    );

    assert_views_equal(&env, &tables).await;
    assert_exports_emitted(&env, &tables).await;
}

/// One row of `capi_daily`.
#[derive(Debug, Deserialize, clickhouse::Row)]
struct CapiDailyCh {
    account_id: String,
    day: u16,
    event_name: String,
    status: String,
    exports: i64,
}

/// The exports on the capi topic agree with the in-process engine's: an
/// export id seen there (once or more) carries exactly the in-process
/// export, and every in-process export whose event is well behind the end
/// of the log (its partition's watermark moved `capi.delay` past it) is
/// there.
async fn assert_exports_emitted(
    env: &Env,
    tables: &Tables,
) -> std::collections::BTreeMap<String, ConversionExport> {
    let expected: std::collections::BTreeMap<String, ConversionExport> = tables
        .exports()
        .into_iter()
        .map(|x| (x.export_id.clone(), x))
        .collect();
    assert!(
        expected
            .values()
            .any(|x| x.decision == ExportDecision::Send),
        "the log has conversions to send"
    );
    let consumer: StreamConsumer<LogContext> = kafka::client_config(&env.cfg.kafka)
        .set("group.id", format!("capi-reader-{}", std::process::id()))
        .create_with_context(LogContext)
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..env.cfg.topics.internal_partitions {
        assignment
            .add_partition_offset(&env.cfg.topics.capi, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut seen = std::collections::BTreeMap::new();
    while let Ok(message) = tokio::time::timeout(Duration::from_secs(5), consumer.recv()).await {
        let message = message.expect("consume");
        let export: ConversionExport =
            serde_json::from_slice(message.payload().expect("payload")).expect("an export");
        assert_eq!(
            message.key(),
            Some(export.export_id.as_bytes()),
            "keyed by export id"
        );
        assert_eq!(
            expected.get(&export.export_id),
            Some(&export),
            "as in process"
        );
        seen.insert(export.export_id.clone(), export);
    }
    // Every partition's watermark is at least the latest event time left on
    // it (older records may be deleted): what is `capi.delay` behind the
    // lowest of them is due everywhere.
    let internal: StreamConsumer<LogContext> = kafka::client_config(&env.cfg.kafka)
        .set(
            "group.id",
            format!("internal-reader-{}", std::process::id()),
        )
        .set("isolation.level", "read_committed")
        .create_with_context(LogContext)
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    let partitions = env.cfg.topics.internal_partitions;
    for p in 0..partitions {
        assignment
            .add_partition_offset(&env.cfg.topics.internal, p, Offset::Beginning)
            .expect("partition");
    }
    internal.assign(&assignment).expect("assign");
    let mut latest = vec![i64::MIN; partitions as usize];
    while let Ok(message) = tokio::time::timeout(Duration::from_secs(5), internal.recv()).await {
        let message = message.expect("consume");
        if let Ok(wafunnel_core::wire::Record {
            content: wafunnel_core::wire::Content::Event(event),
            ..
        }) = wafunnel_stream::internal::decode(message.payload().unwrap_or_default(), |key| {
            kafka::header(&message, key)
        }) {
            let slot = &mut latest[message.partition() as usize];
            *slot = (*slot).max(event.time);
        }
    }
    let windows = env.cfg.windows().expect("windows");
    let settled = latest.iter().min().expect("partitions") - windows.capi_delay_ms;
    let missing: Vec<&ConversionExport> = expected
        .values()
        .filter(|x| x.event_time <= settled && !seen.contains_key(&x.export_id))
        .collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    assert!(
        seen.len() * 2 > expected.len(),
        "{} of {}",
        seen.len(),
        expected.len()
    );
    seen
}

/// One record of the dead-letter topic.
#[derive(Debug)]
struct DeadLetter {
    payload: Vec<u8>,
    reason: String,
    detail: String,
    original_size: Option<usize>,
    original_digest: Option<String>,
}

async fn dead_letters(env: &Env, expected: usize) -> Vec<DeadLetter> {
    let consumer: StreamConsumer<LogContext> = kafka::client_config(&env.cfg.kafka)
        .set("group.id", format!("dlq-reader-{}", std::process::id()))
        .set("isolation.level", "read_committed")
        .create_with_context(LogContext)
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&env.cfg.topics.dead_letter, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    while out.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("dead letters arrive")
            .expect("consume");
        assert!(
            kafka::header(&message, kafka::SOURCE_OFFSET).is_some(),
            "source offset header"
        );
        out.push(DeadLetter {
            payload: message.payload().unwrap_or_default().to_vec(),
            reason: kafka::header(&message, kafka::REASON)
                .expect("reason header")
                .to_owned(),
            detail: kafka::header(&message, kafka::DETAIL)
                .unwrap_or_default()
                .to_owned(),
            original_size: kafka::header(&message, wafunnel_stream::dead_letter::ORIGINAL_SIZE)
                .and_then(|v| v.parse().ok()),
            original_digest: kafka::header(&message, wafunnel_stream::dead_letter::ORIGINAL_DIGEST)
                .map(str::to_owned),
        });
    }
    out
}

/// One row of `dead_letters_daily`, with whether its day is today.
#[derive(Debug, PartialEq, Eq, Deserialize, clickhouse::Row)]
struct ReasonDayCh {
    reason: String,
    on_today: u8,
    dead_letters: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn bad_records_are_dead_lettered_with_their_reason_and_accounted_for() {
    let env = Env::new("bad", 1, 2).await;
    let future = 4_102_444_800_000_i64; // 2100-01-01
    let good = |i: u32| {
        format!(
            r#"{{"event_id":"g{i}","type":"ad_click","account_id":"act_1001","user_id":"u{i}","event_time":"2026-03-02T10:00:{i:02}Z","ad_id":"ad_1"}}"#
        )
    };
    let phone = "5511987654321";
    let bad: Vec<(String, &str)> = vec![
        (r#"{"event_id":"t1","type":"ad_click","account_id":"act_1001""#.into(), "malformed"),
        (r#"{"event_id":"w1","type":"ad_click","account_id":"act_1001","user_id":"u","event_time":true,"ad_id":"a"}"#.into(), "invalid_field"),
        (r#"{"event_id":"k1","type":"refund","account_id":"act_1001","user_id":"u","event_time":1772445660000}"#.into(), "unknown_type"),
        (format!(r#"{{"event_id":"f1","type":"lead","account_id":"act_1001","user_id":"u","event_time":{future}}}"#), "future_timestamp"),
        (r#"{"event_id":"c1","type":"purchase","account_id":"act_2002","user_id":"u","event_time":1772445660000,"value":"10","currency":"USD"}"#.into(), "currency_mismatch"),
        (r#"{"event_id":"d1","type":"ad_click","type":"purchase","account_id":"act_1001","user_id":"u","event_time":1772445660000,"ad_id":"a","value":"1","currency":"USD","order_id":"o"}"#.into(), "duplicate_field"),
        (r#"{"event_id":"v1","type":"purchase","account_id":"act_1001","user_id":"u","event_time":1772445660000,"value":"99999999999999.9999","currency":"USD","order_id":"o"}"#.into(), "out_of_range"),
        (r#"{"event_id":"s1","type":"ad_spend","account_id":"act_1001","event_time":1772445660000,"ad_id":"a","date":"2200-01-01","spend":"1","currency":"USD"}"#.into(), "out_of_range"),
        (format!(r#"{{"event_id":"p1","type":"ad_click","account_id":"act_1001","user_id":{phone},"event_time":1772445660000,"ad_id":"a"}}"#), "invalid_field"),
    ];
    let mut json: Vec<Vec<u8>> = Vec::new();
    for (i, (line, _)) in bad.iter().enumerate() {
        json.push(good(i as u32).into_bytes());
        json.push(line.clone().into_bytes());
    }
    json.push(good(30).into_bytes());
    // Accepted by the topic, too large to forward whole with its headers.
    let mut huge = b"{\"junk\":\"".to_vec();
    huge.resize(999_000, b'x');
    json.push(huge.clone());
    json.push(good(31).into_bytes());
    // Avro single-object records: one valid, one truncated, one with a fingerprint nobody knows.
    let codec = wafunnel_avro::AvroCodec::new();
    let single = codec
        .encode_single_object(&wafunnel_core::event::decode_json(good(40).as_bytes()).expect("raw"))
        .expect("encode");
    let truncated = single[..single.len() - 3].to_vec();
    let mut unknown = single.clone();
    unknown[2..10].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef]);
    let avro = vec![single.clone(), truncated.clone(), unknown.clone()];

    env.produce(&env.raw, 1, &json).await;
    env.produce(&env.avro, 1, &avro).await;
    let total = (json.len() + avro.len()) as u64;
    let accounting = env.run_pipeline(total).await;
    assert_eq!(
        accounting,
        Accounting {
            applied: bad.len() as u64 + 3,
            duplicate: 0,
            late: 0,
            dead_lettered: bad.len() as u64 + 3
        }
    );

    let letters = dead_letters(&env, bad.len() + 3).await;
    let hasher = UserHasher::new(HASH_KEY.as_bytes());
    let policy = wafunnel_stream::dead_letter::Policy {
        keep_raw_user_ids: false,
        max_payload_bytes: env.cfg.dead_letter.max_payload_bytes,
    };
    // A dead letter is found by the digest of its record, or by its payload
    // when that is the record itself.
    let letter_of = |bytes: &[u8]| {
        let digest = hasher.digest(bytes);
        letters.iter().find(|l| match &l.original_digest {
            Some(d) => *d == digest,
            None => l.payload == bytes,
        })
    };
    for (line, reason) in &bad {
        // Written with the user id replaced by its keyed hash (nothing, for
        // the line that is not JSON).
        let written =
            wafunnel_stream::dead_letter::payload(line.as_bytes(), Format::Json, policy, &hasher)
                .bytes;
        let letter =
            letter_of(line.as_bytes()).unwrap_or_else(|| panic!("no dead letter for {line}"));
        assert_eq!(letter.payload, written, "{line}");
        assert_eq!(letter.reason, *reason, "{line}");
        let text = String::from_utf8_lossy(&letter.payload);
        assert!(
            !text.contains(r#""user_id":"u""#) && !text.contains(phone),
            "{text}"
        );
        assert!(!letter.detail.contains(phone), "{}", letter.detail);
    }
    let reason_of = |bytes: &[u8]| letter_of(bytes).map(|l| l.reason.clone());
    // dead_letters_daily: every dead letter once, under its reason, on the
    // UTC day it was dead-lettered (today).
    let mut want: Vec<ReasonDayCh> = Vec::new();
    for letter in &letters {
        match want.iter_mut().find(|r| r.reason == letter.reason) {
            Some(row) => row.dead_letters += 1,
            None => want.push(ReasonDayCh {
                reason: letter.reason.clone(),
                on_today: 1,
                dead_letters: 1,
            }),
        }
    }
    want.sort_by(|a, b| a.reason.cmp(&b.reason));
    let got: Vec<ReasonDayCh> = sink::client(&env.cfg.clickhouse)
        .query(
            "SELECT reason, toUInt8(day = today()) AS on_today, dead_letters \
             FROM dead_letters_daily ORDER BY reason, day",
        )
        .fetch_all()
        .await
        .expect("dead_letters_daily");
    assert_eq!(got, want);

    assert_eq!(reason_of(&truncated).as_deref(), Some("bad_avro"));
    assert_eq!(reason_of(&unknown).as_deref(), Some("unknown_schema_id"));
    // Avro and bytes that are not JSON: no payload, only size and digest.
    assert!(letter_of(&truncated).is_some_and(|l| l.payload.is_empty()));
    let cut = letter_of(&huge).expect("the huge record is dead-lettered");
    assert_eq!(cut.original_size, Some(huge.len()));
    assert!(cut.payload.is_empty());
    assert_eq!(cut.reason, "malformed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn check_sends_a_canary_through_the_running_pipeline() {
    let env = Env::new("check", 1, 1).await;
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let ingest_cfg = Config::from_toml(&env.toml_again()).expect("config");
    let sessionize_cfg = Config::from_toml(&env.toml_again()).expect("config");
    let ingest_shutdown = shutdown.clone();
    let ingest =
        tokio::spawn(
            async move { wafunnel_stream::ingest::run(&ingest_cfg, ingest_shutdown).await },
        );
    let sessionize =
        tokio::spawn(
            async move { wafunnel_stream::sessionize::run(&sessionize_cfg, shutdown).await },
        );
    let passed = wafunnel_stream::check::run(&env.cfg, false, Duration::from_secs(120)).await;
    stop.stop();
    ingest.await.expect("join").expect("ingest");
    sessionize.await.expect("join").expect("sessionize");
    assert!(passed, "check failed: see its output above");
}

/// A seeded generated log of about `events` records.
fn generated(events: u64) -> Vec<Vec<u8>> {
    wafunnel_gen::generate(&wafunnel_gen::GenConfig::scaled(events))
        .records
        .into_iter()
        .map(|r| r.line)
        .collect()
}

/// The tables of one in-process sessionizer fed the whole log, and its outcome counts.
fn reference(env: &Env, lines: &[Vec<u8>]) -> (Tables, OutcomeCounts) {
    let accounts = env.cfg.accounts().expect("accounts");
    let hasher = UserHasher::new(HASH_KEY.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let mut reference = Sessionizer::new(0, env.cfg.windows().expect("windows"), accounts.clone());
    for line in lines {
        let event =
            parse_json_event(line, &accounts, &hasher, now).expect("generated lines are valid");
        reference.apply(&event);
    }
    // Every export, as at the end of a finite input: the pipeline's are a
    // prefix of them in time.
    reference.finish();
    let mut tables = Tables::default();
    tables.apply(reference.drain());
    (tables, reference.outcome_counts())
}

/// A deterministic pseudo-random sequence (xorshift), so a failing schedule can be rerun.
struct Schedule(u64);

impl Schedule {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

type Instance = (
    Shutdown,
    tokio::task::JoinHandle<Result<u64, wafunnel_stream::sessionize::SessionizeError>>,
);

fn start_sessionize(env: &Env) -> Instance {
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let cfg = Config::from_toml(&env.toml_again()).expect("config");
    let handle =
        tokio::spawn(async move { wafunnel_stream::sessionize::run(&cfg, shutdown).await });
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn three_instances_stopped_and_started_give_the_same_tables_on_1_3_and_8_partitions() {
    for internal_partitions in [1, 3, 8] {
        let env = Env::new(
            &format!("scale{internal_partitions}"),
            4,
            internal_partitions,
        )
        .await;
        let lines = generated(40_000);
        let (tables, _) = reference(&env, &lines);
        env.produce(&env.raw, 4, &lines).await;
        let ingest_shutdown = Shutdown::new();
        let stop_ingest = ingest_shutdown.clone();
        let ingest_cfg = Config::from_toml(&env.toml_again()).expect("config");
        let ingest = tokio::spawn(async move {
            wafunnel_stream::ingest::run(&ingest_cfg, ingest_shutdown).await
        });
        let mut instances: Vec<Option<Instance>> =
            (0..3).map(|_| Some(start_sessionize(&env))).collect();
        let mut schedule = Schedule(0x9e37_79b9_7f4a_7c15 ^ internal_partitions as u64);
        // Instances leave and join the group while the log is processed, so
        // partitions move with their state in the middle of the stream.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(200 + schedule.next(600))).await;
            let i = schedule.next(3) as usize;
            match instances[i].take() {
                Some((stop, handle)) => {
                    stop.stop();
                    handle.await.expect("join").expect("sessionize");
                }
                None => instances[i] = Some(start_sessionize(&env)),
            }
        }
        for instance in instances.iter_mut().filter(|i| i.is_none()) {
            *instance = Some(start_sessionize(&env));
        }
        let expected = lines.len() as u64;
        let started = Instant::now();
        while env.accounting().await.total() < expected {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "{internal_partitions} partitions: only {:?} of {expected} records accounted for",
                env.accounting().await
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        stop_ingest.stop();
        ingest.await.expect("join").expect("ingest");
        for (stop, handle) in instances.into_iter().flatten() {
            stop.stop();
            handle.await.expect("join").expect("sessionize");
        }
        let accounting = env.accounting().await;
        assert_eq!(accounting.total(), expected, "{accounting:?}");
        assert_eq!((accounting.late, accounting.dead_lettered), (0, 0));
        assert_views_equal(&env, &tables).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse and WAFUNNEL_BIN: run scripts/test.sh"]
async fn three_ingest_and_three_sessionize_processes_killed_give_the_same_tables() {
    let env_ = Env::new("killall", 4, 4).await;
    let lines = generated(40_000);
    let (tables, outcomes) = reference(&env_, &lines);
    assert_eq!(outcomes.late, 0, "the generated log has no late event");
    env_.produce(&env_.raw, 4, &lines).await;
    let dir = std::env::temp_dir().join(format!("wafunnel-killall-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Each ingest instance keeps its name across restarts, as a pod does,
    // so a restart aborts at once what its killed predecessor left open.
    let mut ingest: Vec<Service> = (0..3)
        .map(|i| {
            let config = dir.join(format!("ingest-{i}.toml"));
            let toml = env_.toml_again().replacen(
                "[kafka]\n",
                &format!("[kafka]\ningest_instance = \"ingest-{i}\"\n"),
                1,
            );
            std::fs::write(&config, toml).expect("config");
            Service::new(&config, "ingest", dir.join(format!("ingest-{i}.log")))
        })
        .collect();
    let config = dir.join("wafunnel.toml");
    std::fs::write(&config, env_.toml_again()).expect("config");
    let mut sessionize: Vec<Service> = (0..3)
        .map(|i| {
            Service::new(
                &config,
                "sessionize",
                dir.join(format!("sessionize-{i}.log")),
            )
        })
        .collect();
    ingest.iter_mut().for_each(Service::start);
    sessionize.iter_mut().for_each(Service::start);
    // SIGKILLs alternate between the two groups, at random members, while
    // the log is processed: partitions move between ingest instances with
    // transactions left open, and between sessionize instances with state.
    let mut schedule = Schedule(0x5851_f42d_4c95_7f2d);
    for round in 0..8 {
        tokio::time::sleep(Duration::from_millis(1000 + schedule.next(1500))).await;
        let group = if round % 2 == 0 {
            &mut ingest
        } else {
            &mut sessionize
        };
        let victim = &mut group[schedule.next(3) as usize];
        victim.kill9();
        victim.start();
    }
    let expected = lines.len() as u64;
    let started = Instant::now();
    while env_.accounting().await.total() < expected {
        ingest.iter_mut().for_each(Service::keep_alive);
        sessionize.iter_mut().for_each(Service::keep_alive);
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "only {:?} of {expected} records accounted for; logs in {}",
            env_.accounting().await,
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Settle: a record forwarded or counted twice would show up now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    ingest.iter_mut().for_each(Service::kill9);
    sessionize.iter_mut().for_each(Service::kill9);
    let accounting = env_.accounting().await;
    assert_eq!(
        accounting,
        Accounting {
            applied: expected - outcomes.duplicate,
            duplicate: outcomes.duplicate,
            late: 0,
            dead_lettered: 0,
        },
        "every record exactly once, none late; logs in {}",
        dir.display()
    );
    assert_views_equal(&env_, &tables).await;
    let exits: Vec<u32> = ingest.iter().chain(&sessionize).map(|s| s.exits).collect();
    assert_eq!(
        exits,
        [0; 6],
        "services exited by themselves; logs in {}",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A service run as its own process, so that it can be killed with SIGKILL.
struct Service {
    args: Vec<String>,
    child: Option<std::process::Child>,
    log: std::path::PathBuf,
    /// Times it exited by itself and was started again.
    exits: u32,
}

impl Service {
    fn new(config: &std::path::Path, command: &str, log: std::path::PathBuf) -> Service {
        let args = vec![
            "--config".into(),
            config.display().to_string(),
            command.into(),
        ];
        Service {
            args,
            child: None,
            log,
            exits: 0,
        }
    }

    fn start(&mut self) {
        let bin = env("WAFUNNEL_BIN");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = std::process::Command::new(bin)
            .args(&self.args)
            .env("RUST_LOG", "warn,wafunnel_stream::sessionize=info")
            // Several services on one host: each on a port of its own.
            .env("WAFUNNEL__METRICS__LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the wafunnel binary");
        self.child = Some(child);
    }

    /// Restarts it if it exited by itself (as a supervisor would).
    fn keep_alive(&mut self) {
        if let Some(child) = &mut self.child {
            if child.try_wait().expect("wait").is_some() {
                self.exits += 1;
                self.start();
            }
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn local_script(script: &str, command: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/local")
        .join(script);
    let status = std::process::Command::new(path)
        .arg(command)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run deploy script");
    assert!(status.success(), "{script} {command} failed");
}

/// Waits until the state topic holds a snapshot of one of the partitions.
async fn wait_for_a_snapshot(env_: &Env, partitions: i32, logs: &std::path::Path) {
    let consumer: rdkafka::consumer::BaseConsumer<LogContext> =
        kafka::create(&kafka::client_config(&env_.cfg.kafka)).expect("consumer");
    let started = Instant::now();
    loop {
        let written: i64 = (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(&env_.cfg.topics.state, p, Duration::from_secs(10))
                    .map_or(0, |(_, high)| high)
            })
            .sum();
        if written > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "no snapshot written; logs in {}",
            logs.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse and WAFUNNEL_BIN: run scripts/test.sh"]
async fn kills_outages_and_broker_restarts_do_not_change_the_tables() {
    let env_ = Env::new("chaos", 4, 4).await;
    let lines = generated(
        std::env::var("WAFUNNEL_CHAOS_EVENTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(30_000),
    );
    let (tables, _) = reference(&env_, &lines);
    env_.produce(&env_.raw, 4, &lines).await;

    let dir = std::env::temp_dir().join(format!("wafunnel-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("wafunnel.toml");
    // The Graph API stand-in receives the Conversions API exports of every
    // account; `wafunnel capi` is killed with SIGKILL like the others.
    let graph = graph::Graph::new(|_, _| graph::ok());
    let graph_addr = graph::free_addr();
    graph.serve_on(graph_addr).await;
    let mut toml = env_.toml_again().replacen(
        "[capi]\n",
        &format!("[capi]\nbase_url = \"http://{graph_addr}\"\nlinger = \"300ms\"\nbackoff_max = \"2s\"\n"),
        1,
    );
    for account in ["act_1001", "act_2002", "act_3003"] {
        toml.push_str(&format!(
            "[capi.accounts.{account}]\ndataset_id = \"ds-{account}\"\nwaba_id = \"waba-{account}\"\naccess_token = \"token-{account}\"\n"
        ));
    }
    std::fs::write(&config, toml).expect("config");
    let mut ingest = Service::new(&config, "ingest", dir.join("ingest.log"));
    let mut capi = Service::new(&config, "capi", dir.join("capi.log"));
    // Three sessionize instances in one group: each kill moves partitions,
    // with their state, to the others and back when it restarts.
    let mut sessionize: Vec<Service> = (0..3)
        .map(|i| {
            Service::new(
                &config,
                "sessionize",
                dir.join(format!("sessionize-{i}.log")),
            )
        })
        .collect();
    ingest.start();
    sessionize.iter_mut().for_each(Service::start);
    capi.start();
    // Faults start once a snapshot exists: every kill stalls the group's
    // rebalance until the dead member's session times out, so a schedule
    // started earlier could run to its end before any partition was
    // snapshotted, and the restores it is meant to exercise would not happen.
    wait_for_a_snapshot(&env_, 4, &dir).await;

    // A fixed schedule of faults, spread over the run: kill -9 of a
    // sessionize instance ten times, of ingest three times and of capi
    // three times, ClickHouse down for a while, the Kafka broker restarted
    // and twice killed with SIGKILL.
    let faults = [
        "kill-sessionize",
        "kill-ingest",
        "kill-capi",
        "kill-sessionize",
        "clickhouse-down",
        "kill-sessionize",
        "kill-sessionize",
        "kafka-restart",
        "kill-capi",
        "kill-sessionize",
        "kafka-crash",
        "kill-ingest",
        "kill-sessionize",
        "kill-sessionize",
        "kill-capi",
        "kill-ingest",
        "kafka-crash",
        "kill-sessionize",
        "kill-sessionize",
    ];
    let mut schedule = Schedule(0x2545_f491_4f6c_dd1d);
    for fault in faults {
        tokio::time::sleep(Duration::from_millis(700 + schedule.next(1500))).await;
        match fault {
            "kill-sessionize" => {
                let victim = &mut sessionize[schedule.next(3) as usize];
                victim.kill9();
                victim.start();
            }
            "kill-ingest" => {
                ingest.kill9();
                ingest.start();
            }
            "kill-capi" => {
                capi.kill9();
                capi.start();
            }
            "clickhouse-down" => {
                local_script("clickhouse.sh", "stop");
                // CI keeps the outage short; the full run uses 30 to 60 s.
                let outage = std::env::var("WAFUNNEL_CHAOS_OUTAGE_SECS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(8);
                tokio::time::sleep(Duration::from_secs(outage)).await;
                local_script("clickhouse.sh", "start");
            }
            "kafka-crash" => local_script("kafka.sh", "crash"),
            _ => local_script("kafka.sh", "restart"),
        }
        ingest.keep_alive();
        sessionize.iter_mut().for_each(Service::keep_alive);
        capi.keep_alive();
    }
    let started = Instant::now();
    let expected = lines.len() as u64;
    loop {
        ingest.keep_alive();
        sessionize.iter_mut().for_each(Service::keep_alive);
        capi.keep_alive();
        if env_.accounting().await.total() >= expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not every record accounted for; logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ingest.kill9();
    sessionize.iter_mut().for_each(Service::kill9);

    let accounting = env_.accounting().await;
    assert_eq!(
        accounting.total(),
        expected,
        "every record exactly once: {accounting:?}"
    );
    assert_eq!((accounting.late, accounting.dead_lettered), (0, 0));
    assert_views_equal(&env_, &tables).await;

    // The exports: those emitted are the in-process engine's; Meta (the
    // stand-in) received every one to send at least once and nothing
    // else, and capi_daily counts each once with its final status.
    let emitted = assert_exports_emitted(&env_, &tables).await;
    let mut expected_daily = std::collections::BTreeMap::new();
    for x in emitted.values() {
        let status = x.decision.final_status().unwrap_or("sent");
        *expected_daily
            .entry((
                x.account_id.to_string(),
                x.day.to_string(),
                x.event_name.as_str().to_owned(),
                status.to_owned(),
            ))
            .or_insert(0i64) += 1;
    }
    let db = sink::client(&env_.cfg.clickhouse);
    let started = Instant::now();
    let daily = loop {
        capi.keep_alive();
        let rows: Vec<CapiDailyCh> = db
            .query("SELECT account_id, day, event_name, status, exports FROM capi_daily")
            .fetch_all()
            .await
            .unwrap_or_default();
        let total: i64 = rows.iter().map(|r| r.exports).sum();
        if total >= emitted.len() as i64 {
            break rows;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "capi stored {total} of {} exports; logs in {}",
            emitted.len(),
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    capi.kill9();
    let daily: std::collections::BTreeMap<(String, String, String, String), i64> = daily
        .into_iter()
        .map(|r| {
            let day = wafunnel_core::time::Day(i32::from(r.day)).to_string();
            ((r.account_id, day, r.event_name, r.status), r.exports)
        })
        .collect();
    assert_eq!(daily, expected_daily, "capi_daily is exact");
    let received: std::collections::BTreeSet<String> = graph
        .seen()
        .into_iter()
        .flat_map(|request| request.event_ids)
        .collect();
    let to_send: std::collections::BTreeSet<String> = emitted
        .values()
        .filter(|x| x.decision == ExportDecision::Send)
        .map(|x| x.export_id.clone())
        .collect();
    assert_eq!(
        received, to_send,
        "every export to send reached Meta, nothing else did"
    );

    // Every fault is survived in place: no service had to be restarted.
    let exits: Vec<u32> = std::iter::once(&ingest)
        .chain(sessionize.iter())
        .chain(std::iter::once(&capi))
        .map(|s| s.exits)
        .collect();
    assert_eq!(
        exits,
        [0, 0, 0, 0, 0],
        "services exited by themselves; logs in {}",
        dir.display()
    );
    let restored = (0..3)
        .map(|i| {
            std::fs::read_to_string(dir.join(format!("sessionize-{i}.log"))).unwrap_or_default()
        })
        .filter(|log| log.contains("state restored from snapshot"))
        .count();
    assert!(
        restored > 0,
        "no instance resumed from a snapshot; logs in {}",
        dir.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
