//! The webhook receiver on a real port against the real broker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rdkafka::consumer::{BaseConsumer, Consumer};
use sha2::Sha256;
use wafunnel_runtime::config::Config;
use wafunnel_runtime::kafka::{self, LogContext};
use wafunnel_runtime::shutdown::Shutdown;

use super::{free_port, local_script, Env};

const SECRET: &str = "test-app-secret";
const TOKEN: &str = "test-verify-token";

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One HTTP/1.1 request; `(status, body)`.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("write");
    // A server may answer (413) before reading all of a large body.
    let _ = s.write_all(body);
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

/// The receiver configured by `text`, running until `shutdown`, once `port`
/// accepts connections.
async fn spawn_receiver(
    text: &str,
    port: u16,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<Result<(), wafunnel_webhook::WebhookError>> {
    let (cfg, shutdown) = (Config::from_toml(text).expect("config"), shutdown.clone());
    let receiver = tokio::spawn(async move { wafunnel_webhook::run(&cfg, shutdown).await });
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "receiver did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    receiver
}

/// POSTs `bodies` to `/webhook`, one after the other, each signed, each
/// required to be stored (200).
async fn post_signed(port: u16, bodies: Vec<Vec<u8>>) {
    tokio::task::spawn_blocking(move || {
        for body in bodies {
            let signature = sign(&body);
            let (code, answer) = request(
                port,
                "POST",
                "/webhook",
                &[("x-hub-signature-256", signature)],
                &body,
            );
            assert_eq!(code, 200, "{answer}");
        }
    })
    .await
    .expect("join");
}

fn stored(cfg: &Config, topic: &str) -> i64 {
    let consumer: BaseConsumer<LogContext> =
        kafka::create(&kafka::client_config(&cfg.kafka)).expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .expect("watermarks");
    high - low
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn the_receiver_stores_verified_bodies_once_and_refuses_the_rest() {
    let env_ = Env::new("webhook", 1, 1).await;
    let port = free_port();
    let text = format!(
        "{}\n[webhook]\nlisten = \"127.0.0.1:{port}\"\npath_prefix = \"/wa\"\ntopic = \"{}\"\nmax_body_bytes = 4096\nstore_timeout_ms = 3000\nverify_token = \"{TOKEN}\"\napp_secret = \"{SECRET}\"\n",
        env_.toml_again(),
        env_.raw
    );
    let cfg = Config::from_toml(&text).expect("config");
    let shutdown = Shutdown::new();
    let receiver = spawn_receiver(&text, port, &shutdown).await;
    let path = "/wa/webhook";
    let blocking = |f: Box<dyn FnOnce() -> (u16, String) + Send>| tokio::task::spawn_blocking(f);

    // The subscription handshake.
    let (code, body) = blocking(Box::new(move || {
        request(
            port,
            "GET",
            &format!("{path}?hub.mode=subscribe&hub.verify_token={TOKEN}&hub.challenge=1158201444"),
            &[],
            b"",
        )
    }))
    .await
    .expect("join");
    assert_eq!((code, body.as_str()), (200, "1158201444"));
    let (code, _) = blocking(Box::new(move || {
        request(
            port,
            "GET",
            &format!("{path}?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1"),
            &[],
            b"",
        )
    }))
    .await
    .expect("join");
    assert_eq!(code, 403);

    let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"106540352242922"},"messages":[{"from":"5511987654321","id":"wamid.W1","timestamp":"1772445660","type":"text","text":{"body":"hi"}}]}}]}]}"#.to_vec();
    let post = |body: Vec<u8>, signature: Option<String>| {
        blocking(Box::new(move || {
            let headers: Vec<(&str, String)> = signature
                .map(|s| {
                    vec![
                        ("x-hub-signature-256", s),
                        ("content-type", "application/json".into()),
                    ]
                })
                .unwrap_or_default();
            request(port, "POST", path, &headers, &body)
        }))
    };
    let (code, _) = post(body.clone(), Some(sign(&body))).await.expect("join");
    assert_eq!(code, 200, "a good signature is stored");
    assert_eq!(stored(&cfg, &env_.raw), 1);
    for signature in [None, Some(sign(b"another body")), Some("sha256=00".into())] {
        let (code, _) = post(body.clone(), signature).await.expect("join");
        assert_eq!(code, 401);
    }
    assert_eq!(stored(&cfg, &env_.raw), 1, "refused bodies are not stored");
    let big = vec![b'x'; 5000];
    let (code, _) = post(big.clone(), Some(sign(&big))).await.expect("join");
    assert_eq!(code, 413);
    // Meta's retry of the same body is stored again (a duplicate downstream).
    let (code, _) = post(body.clone(), Some(sign(&body))).await.expect("join");
    assert_eq!(code, 200);
    assert_eq!(stored(&cfg, &env_.raw), 2);

    // Kafka down: 503, never 200, so Meta retries; back: 200 again.
    local_script("kafka.sh", "stop");
    let (code, _) = post(body.clone(), Some(sign(&body))).await.expect("join");
    local_script("kafka.sh", "start");
    assert_eq!(
        code, 503,
        "a body that cannot be stored is not acknowledged"
    );
    let started = Instant::now();
    loop {
        let (code, _) = post(body.clone(), Some(sign(&body))).await.expect("join");
        if code == 200 {
            break;
        }
        assert_eq!(code, 503);
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the receiver did not recover"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let records = stored(&cfg, &env_.raw);
    assert!(
        (3..=4).contains(&records),
        "{records}: at most the 503'd body may have landed late"
    );
    let (_, metrics) = blocking(Box::new(|| {
        (0, wafunnel_runtime::metrics::metrics().render())
    }))
    .await
    .expect("join");
    for result in [
        "stored",
        "bad_signature",
        "too_large",
        "unavailable",
        "verified",
        "refused",
    ] {
        assert!(
            metrics.contains(&format!(
                "wafunnel_webhook_requests_total{{result=\"{result}\"}}"
            )),
            "{result}"
        );
    }
    shutdown.stop();
    receiver.await.expect("join").expect("receiver");
}

/// The golden webhook bodies of `wafunnel-meta`.
fn golden_bodies() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../wafunnel-meta/tests/golden/webhook");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden bodies")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("body"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn webhook_bodies_and_insights_rows_give_the_tables_of_the_same_events_in_process() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use wafunnel_core::config::UserHasher;
    use wafunnel_core::sessionizer::{Outcome, Sessionizer};
    use wafunnel_core::tables::Tables;

    let env_ = Env::new("webhookflow", 1, 2).await;
    let port = free_port();
    let text = format!(
        "{}\n[webhook]\nlisten = \"127.0.0.1:{port}\"\nverify_token = \"{TOKEN}\"\napp_secret = \"{SECRET}\"\n",
        env_.toml_again()
    );
    let cfg = Config::from_toml(&text).expect("config");
    assert_eq!(
        cfg.webhook_settings().expect("webhook").topic,
        env_.webhook,
        "the whatsapp-webhook topic"
    );
    let shutdown = Shutdown::new();
    let receiver = spawn_receiver(&text, port, &shutdown).await;
    // Every golden body, and Meta's retries of two of them.
    let mut bodies = golden_bodies();
    bodies.push(bodies[0].clone());
    bodies.push(bodies[2].clone());
    post_signed(port, bodies.clone()).await;
    // Insights rows straight to their topic: one fetched twice (the later
    // fetch wins), one without fetched_at (its record's timestamp decides).
    let row = |spend: &str, fetched: &str| {
        format!(
            r#"{{"account_id":"1001","campaign_id":"c1","adset_id":"as1","ad_id":"120210000000001","date_start":"2026-03-02","date_stop":"2026-03-02","spend":"{spend}","impressions":"1000","clicks":"30","actions":[{{"action_type":"onsite_conversion.messaging_conversation_started_7d","value":"7"}}]{fetched}}}"#
        )
    };
    // All within the allowed lateness of the bodies' times (2026-03-02 10:00).
    let record_time = 1_772_481_600_000_i64;
    let rows = [
        (
            row("10.00", r#","fetched_at":"2026-03-02T12:00:00Z""#),
            None,
        ),
        (
            row("12.50", r#","fetched_at":"2026-03-02T18:00:00Z""#),
            None,
        ),
        (
            row("3.00", "").replace("120210000000001", "ad_2"),
            Some(record_time),
        ),
    ];
    let producer: FutureProducer<LogContext> =
        kafka::create(kafka::client_config(&cfg.kafka).set("enable.idempotence", "true"))
            .expect("producer");
    for (payload, timestamp) in &rows {
        let mut record = FutureRecord::<(), _>::to(&env_.insights).payload(payload.as_bytes());
        if let Some(t) = timestamp {
            record = record.timestamp(*t);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .expect("produced");
    }

    // The same records through the engine in this process.
    let accounts = cfg.accounts().expect("accounts");
    let numbers = wafunnel_meta::PhoneNumbers::new(cfg.phone_numbers());
    let hasher = UserHasher::new(super::HASH_KEY.as_bytes());
    let now = 1_800_000_000_000;
    let mut reference = Sessionizer::new(0, cfg.windows().expect("windows"), accounts.clone());
    let (mut applied, mut duplicate, mut dead, mut ignored) = (0u64, 0u64, 0u64, 0u64);
    let mut apply = |raw: Result<
        wafunnel_core::event::RawEvent<'_>,
        wafunnel_core::event::Rejection,
    >| {
        match raw.and_then(|r| r.validate(&accounts, &hasher, now)) {
            Ok(event) => match reference.apply(&event) {
                Outcome::Applied => applied += 1,
                Outcome::Duplicate => duplicate += 1,
                Outcome::Late { .. } => panic!("nothing is late here"),
            },
            Err(_) => dead += 1,
        }
    };
    for body in &bodies {
        match wafunnel_meta::normalize_webhook(body, &numbers) {
            Ok(raws) if raws.is_empty() => ignored += 1,
            Ok(raws) => raws.into_iter().for_each(|r| apply(Ok(r))),
            Err(e) => apply(Err(e)),
        }
    }
    for (payload, timestamp) in &rows {
        apply(wafunnel_meta::insights_row(
            payload.as_bytes(),
            *timestamp,
            &accounts,
        ));
    }
    let mut tables = Tables::default();
    tables.apply(reference.drain());
    assert!(duplicate >= 2, "Meta's retries are duplicates");

    // `Accounting::total` leaves ignored bodies out; they are checked below.
    let accounting = env_.run_pipeline(applied + duplicate + dead).await;
    shutdown.stop();
    receiver.await.expect("join").expect("receiver");
    assert_eq!(
        (
            accounting.applied,
            accounting.duplicate,
            accounting.late,
            accounting.dead_lettered
        ),
        (applied, duplicate, 0, dead)
    );
    let db = wafunnel_stream::sink::client(&cfg.clickhouse);
    let counted: u64 = db
        .query("SELECT sum(ignored) FROM input_accounting")
        .fetch_one()
        .await
        .expect("ignored");
    assert_eq!(counted, ignored, "bodies with nothing to count, once each");
    super::assert_views_equal(&env_, &tables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn a_generated_campaign_sent_as_meta_does_gives_the_tables_of_its_canonical_events() {
    use wafunnel_gen::{GenConfig, PayloadFormat, RecordKind};

    let env_ = Env::new("webhookgen", 1, 2).await;
    let port = free_port();
    let text = format!(
        "{}\n[webhook]\nlisten = \"127.0.0.1:{port}\"\nverify_token = \"{TOKEN}\"\napp_secret = \"{SECRET}\"\n",
        env_.toml_again()
    );
    let cfg = Config::from_toml(&text).expect("config");
    // The generated accounts use the configured business numbers.
    let mut gen = GenConfig {
        meta: true,
        contacts_per_account: 250,
        duplicate_rate: 0.05,
        invalid_rate: 0.01,
        ..GenConfig::demo()
    };
    for account in &mut gen.accounts {
        account.phone_number_id = cfg
            .phone_numbers()
            .into_iter()
            .find(|(_, id)| *id == account.account_id)
            .unwrap_or_else(|| panic!("{} has no number", account.account_id))
            .0;
    }
    let accounts = cfg.accounts().expect("accounts");
    let hasher = wafunnel_core::config::UserHasher::new(super::HASH_KEY.as_bytes());
    // The services judge future timestamps by the real clock, long after
    // the generated campaign: lines made invalid only by a future time are
    // valid to them, so they are left out.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let records: Vec<wafunnel_gen::MetaRecord> = wafunnel_gen::meta_stream(&gen)
        .filter(|r| {
            !matches!(r.kind, RecordKind::Invalid { .. })
                || wafunnel_core::event::parse_json_event(&r.payload, &accounts, &hasher, now)
                    .is_err()
        })
        .collect();
    let payloads = |format: PayloadFormat| -> Vec<Vec<u8>> {
        records
            .iter()
            .filter(|r| r.format == format)
            .map(|r| r.payload.clone())
            .collect()
    };
    let bodies = payloads(PayloadFormat::WhatsappWebhook);
    let (rows, lines) = (
        payloads(PayloadFormat::MetaInsights),
        payloads(PayloadFormat::Json),
    );
    assert!(
        bodies.len() > 1000 && rows.len() > 300 && lines.len() > 500,
        "{} bodies, {} rows, {} lines",
        bodies.len(),
        rows.len(),
        lines.len()
    );
    assert!(
        records
            .iter()
            .any(|r| r.kind == RecordKind::Duplicate && r.format == PayloadFormat::WhatsappWebhook),
        "Meta's retries"
    );

    // The reference: the same events, as canonical JSON, in arrival order.
    let canonical: Vec<Vec<u8>> = records
        .iter()
        .flat_map(|r| r.canonical.iter().map(|c| c.line.clone()))
        .collect();
    let mut reference = wafunnel_core::sessionizer::Sessionizer::new(
        0,
        cfg.windows().expect("windows"),
        accounts.clone(),
    );
    let mut dead = 0u64;
    for line in &canonical {
        match wafunnel_core::event::parse_json_event(line, &accounts, &hasher, now) {
            Ok(event) => {
                reference.apply(&event);
            }
            Err(_) => dead += 1,
        }
    }
    let mut tables = wafunnel_core::tables::Tables::default();
    tables.apply(reference.drain());
    let outcomes = reference.outcome_counts();
    assert_eq!(outcomes.late, 0, "nothing is late here");
    assert!(dead > 0, "invalid lines are in the mix");

    // Bodies through the signed receiver, rows and lines to their topics.
    let shutdown = Shutdown::new();
    let receiver = spawn_receiver(&text, port, &shutdown).await;
    post_signed(port, bodies).await;
    env_.produce(&env_.insights, 1, &rows).await;
    env_.produce(&env_.raw, 1, &lines).await;

    let accounting = env_.run_pipeline(canonical.len() as u64).await;
    shutdown.stop();
    receiver.await.expect("join").expect("receiver");
    assert_eq!(
        (
            accounting.applied,
            accounting.duplicate,
            accounting.late,
            accounting.dead_lettered
        ),
        (outcomes.applied, outcomes.duplicate, 0, dead)
    );
    super::assert_views_equal(&env_, &tables).await;
}

/// A signed-able webhook body of exactly `size` bytes: one text message of
/// random letters, which compression cannot shrink.
fn body_of_size(size: usize) -> Vec<u8> {
    let head = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"phone_number_id":"106540352242922"},"messages":[{"from":"5511987654321","id":"wamid.BIG","timestamp":"1772445660","type":"text","text":{"body":""#;
    let tail = r#""}}]}}]}]}"#;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let letters = (0..size - head.len() - tail.len()).map(|_| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b'a' + (x % 26) as u8
    });
    let body: Vec<u8> = head.bytes().chain(letters).chain(tail.bytes()).collect();
    assert_eq!(body.len(), size);
    body
}

/// The newest record of partition 0 of `topic`.
fn newest(cfg: &Config, topic: &str) -> Vec<u8> {
    use rdkafka::Message;
    let consumer: BaseConsumer<LogContext> = kafka::client_config(&cfg.kafka)
        .set("group.id", "webhook-limits-reader")
        .create_with_context(LogContext)
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(30))
        .expect("watermarks");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, rdkafka::Offset::Offset(high - 1))
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    loop {
        if let Some(message) = consumer.poll(Duration::from_secs(30)) {
            return message
                .expect("record")
                .payload()
                .unwrap_or_default()
                .to_vec();
        }
    }
}

fn receiver_toml(env_: &Env, port: u16, topic: &str, extra: &str) -> String {
    format!(
        "{}\n[webhook]\nlisten = \"127.0.0.1:{port}\"\ntopic = \"{topic}\"\nstore_timeout_ms = 5000\nverify_token = \"{TOKEN}\"\napp_secret = \"{SECRET}\"\n{extra}\n",
        env_.toml_again(),
    )
}

async fn post(port: u16, body: Vec<u8>) -> u16 {
    tokio::task::spawn_blocking(move || {
        let signature = sign(&body);
        request(
            port,
            "POST",
            "/webhook",
            &[("x-hub-signature-256", signature)],
            &body,
        )
        .0
    })
    .await
    .expect("join")
}

/// The largest body the receiver accepts is stored, on a topic made by
/// `check --create-topics`; on a topic that holds less, the bodies it
/// cannot hold are answered 413 at once (a permanent refusal), never 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn the_largest_accepted_body_is_stored_or_refused_413_never_503() {
    let env_ = Env::new("wlimits", 1, 1).await;
    let max = 1_048_576; // the default webhook.max_body_bytes
    let sized = format!("{}-sized", env_.raw);
    kafka::create_webhook_topic(
        &env_.cfg.kafka,
        &sized,
        kafka::TopicLayout {
            partitions: Some(1),
            replication: None,
        },
        max,
    )
    .await
    .expect("create topic");
    let whole = "keep_message_contents = true";
    for (topic, extra, size, want) in [
        // Stored byte for byte: exactly the largest accepted body.
        (sized.as_str(), whole, max, 200),
        (sized.as_str(), whole, max + 1, 413),
        // A topic with the broker's default limit (1,048,588).
        (env_.raw.as_str(), whole, 1_000_500, 200),
        (env_.raw.as_str(), whole, max, 413),
        // Minimized, the same body is small.
        (env_.raw.as_str(), "", max, 200),
    ] {
        let port = free_port();
        let text = receiver_toml(&env_, port, topic, extra);
        let cfg = Config::from_toml(&text).expect("config");
        let shutdown = Shutdown::new();
        let receiver = spawn_receiver(&text, port, &shutdown).await;
        let body = body_of_size(size);
        let before = stored(&cfg, topic);
        let started = Instant::now();
        let code = post(port, body.clone()).await;
        assert_eq!(code, want, "{size} bytes to {topic} ({extra})");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered at once"
        );
        if want == 200 {
            assert_eq!(stored(&cfg, topic), before + 1);
            let record = newest(&cfg, topic);
            if extra == whole {
                assert!(record == body, "stored byte for byte");
            } else {
                assert!(record.len() < 1000, "{} bytes stored", record.len());
                assert!(record.windows(9).any(|w| w == b"wamid.BIG"));
            }
        } else {
            assert_eq!(stored(&cfg, topic), before, "nothing stored");
        }
        shutdown.stop();
        receiver.await.expect("join").expect("receiver");
    }
}

/// 1,100 connections trickling a body at a byte a second hold more than
/// the 1,024 slots: a signed POST is still answered within 2 s; 200 idle
/// connections on the operator port (64 slots): `/healthz` within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn slow_and_idle_connections_starve_neither_deliveries_nor_probes() {
    use tokio::io::AsyncWriteExt;
    let env_ = Env::new("wslow", 1, 1).await;
    let port = free_port();
    let text = receiver_toml(&env_, port, &env_.raw, "");
    let cfg = Config::from_toml(&text).expect("config");
    let shutdown = Shutdown::new();
    let receiver = spawn_receiver(&text, port, &shutdown).await;
    let slow: Vec<_> = (0..1_100)
        .map(|_| {
            tokio::spawn(async move {
                // Reconnects when dropped, as an attacker would.
                loop {
                    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let head = format!("POST /webhook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {}\r\ncontent-length: 100000\r\n\r\n", sign(b"x"));
                    if s.write_all(head.as_bytes()).await.is_ok() {
                        while s.write_all(b"x").await.is_ok() {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let body = body_of_size(2_000);
    let before = stored(&cfg, &env_.raw);
    for _ in 0..3 {
        let started = Instant::now();
        let code = post(port, body.clone()).await;
        let took = started.elapsed();
        assert_eq!(code, 200);
        assert!(took < Duration::from_secs(2), "a signed POST took {took:?}");
    }
    assert_eq!(stored(&cfg, &env_.raw), before + 3);

    let operator = wafunnel_runtime::http::start_operator(
        "127.0.0.1:0".parse().expect("addr"),
        "metrics.listen",
    )
    .await
    .expect("operator port");
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(
            tokio::net::TcpStream::connect(operator)
                .await
                .expect("connect"),
        );
    }
    for _ in 0..3 {
        let started = Instant::now();
        let answer = tokio::task::spawn_blocking(move || {
            request(operator.port(), "GET", "/healthz", &[], b"")
        })
        .await
        .expect("join");
        let took = started.elapsed();
        assert_eq!(answer.0, 200);
        assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
    }
    for task in slow {
        task.abort();
    }
    drop(idle);
    shutdown.stop();
    receiver.await.expect("join").expect("receiver");
}

/// A body with a profile name, a text and a location, from `number`, with
/// `message` as its one message's extra fields.
fn body_with_contents(number: &str, message: &str) -> Vec<u8> {
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"metadata":{{"display_phone_number":"15550001111","phone_number_id":"{number}"}},"contacts":[{{"profile":{{"name":"Ana Souza"}},"wa_id":"5511987654321"}}],"messages":[{{"from":"5511987654321","type":"text","text":{{"body":"my secret plan"}},"location":{{"name":"Rua Secreta 12"}}{message}}}]}}}}]}}]}}"#
    )
    .into_bytes()
}

/// Webhook bodies as Meta sent them (a receiver that kept contents, or an
/// earlier release), dead-lettered for every reason a body can have: no
/// dead letter holds the phone number, the name or what was written, and
/// each names its source record by digest, for a re-drive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn dead_lettered_webhook_bodies_hold_no_phone_number_name_or_content() {
    let env_ = Env::new("wdead", 1, 1).await;
    let future = 4_102_444_800_i64; // 2100-01-01
    let bodies: Vec<(Vec<u8>, &str)> = vec![
        (
            body_with_contents("999000111", r#","id":"wamid.U","timestamp":"1772445950""#),
            "unknown_phone_number",
        ),
        (
            b"Ana Souza 5511987654321: my secret plan".to_vec(),
            "malformed",
        ),
        (
            br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"contacts":[{"profile":{"name":"Ana Souza"},"wa_id":"5511987654321"}],"messages":[{"from":"5511987654321","text":{"body":"my secret plan"}}]}}]}]}"#.to_vec(),
            "missing_field",
        ),
        (
            body_with_contents("106540352242922", r#","timestamp":"1772445950""#),
            "missing_field",
        ),
        (
            body_with_contents("106540352242922", r#","id":"wamid.T","timestamp":"yesterday""#),
            "invalid_field",
        ),
        (
            body_with_contents("106540352242922", &format!(r#","id":"wamid.F","timestamp":"{future}""#)),
            "future_timestamp",
        ),
        (
            br#"{"object":"page","entry":[{"messaging":[{"sender":{"id":"5511987654321"},"message":{"text":"Ana: my secret plan"}}]}]}"#.to_vec(),
            "invalid_field",
        ),
    ];
    let records: Vec<Vec<u8>> = bodies.iter().map(|(b, _)| b.clone()).collect();
    env_.produce(&env_.webhook, 1, &records).await;
    let accounting = env_.run_pipeline(records.len() as u64).await;
    assert_eq!(
        accounting.dead_lettered,
        records.len() as u64,
        "{accounting:?}"
    );
    let letters = super::dead_letters(&env_, records.len()).await;
    let hasher = wafunnel_core::config::UserHasher::new(super::HASH_KEY.as_bytes());
    let contact = format!("#{:?}", hasher.hash("5511987654321"));
    for (body, reason) in &bodies {
        let digest = hasher.digest(body);
        let letter = letters
            .iter()
            .find(|l| l.original_digest.as_deref() == Some(digest.as_str()))
            .unwrap_or_else(|| panic!("no dead letter names {}", String::from_utf8_lossy(body)));
        assert_eq!(letter.reason, *reason, "{}", letter.detail);
        assert_eq!(letter.original_size, Some(body.len()));
        let text = String::from_utf8_lossy(&letter.payload);
        for gone in ["5511", "15550001111", "Ana", "Souza", "secret", "Rua"] {
            assert!(!text.contains(gone), "{gone} in the payload {text}");
            assert!(
                !letter.detail.contains(gone),
                "{gone} in the detail {}",
                letter.detail
            );
        }
        if text.contains("\"from\"") {
            assert!(text.contains(&contact), "the contact keyed: {text}");
        }
        if *reason == "unknown_phone_number" {
            assert!(letter.detail.contains("999000111"), "{}", letter.detail);
            assert!(text.contains("wamid.U"), "ids are kept: {text}");
        }
    }
}

/// Bodies posted by 16 clients while the broker is killed with SIGKILL and
/// started again: every body answered 200 is in the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn every_acknowledged_body_survives_a_broker_sigkill() {
    let env_ = Env::new("wkill", 1, 1).await;
    let port = free_port();
    let text = receiver_toml(&env_, port, &env_.webhook, "");
    let cfg = Config::from_toml(&text).expect("config");
    let shutdown = Shutdown::new();
    let receiver = spawn_receiver(&text, port, &shutdown).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let posters: Vec<_> = (0..16)
        .map(|client| {
            let stop = std::sync::Arc::clone(&stop);
            tokio::task::spawn_blocking(move || {
                let mut acknowledged = Vec::new();
                let mut refused = 0u32;
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("wamid.K{client}x{i}");
                    let body = body_with_contents(
                        "106540352242922",
                        &format!(r#","id":"{id}","timestamp":"1772445950""#),
                    );
                    let signature = sign(&body);
                    let (code, _) = request(
                        port,
                        "POST",
                        "/webhook",
                        &[("x-hub-signature-256", signature)],
                        &body,
                    );
                    match code {
                        200 => acknowledged.push(id),
                        503 => {
                            refused += 1;
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        other => panic!("answered {other}"),
                    }
                }
                (acknowledged, refused)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    local_script("kafka.sh", "crash");
    // Until every client was acknowledged again after the restart.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    let mut unavailable = 0;
    for poster in posters {
        let (ids, refused) = poster.await.expect("join");
        acknowledged.extend(ids);
        unavailable += refused;
    }
    eprintln!(
        "{} bodies acknowledged, {unavailable} answered 503 while the broker was down",
        acknowledged.len()
    );
    assert!(unavailable > 0, "the broker was down for a while");
    shutdown.stop();
    receiver.await.expect("join").expect("receiver");
    assert!(
        acknowledged.len() > 200,
        "{} acknowledged",
        acknowledged.len()
    );
    let consumer: BaseConsumer<LogContext> = kafka::client_config(&cfg.kafka)
        .set("group.id", "webhook-kill-reader")
        .set("isolation.level", "read_committed")
        .create_with_context(LogContext)
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(&env_.webhook, 0, rdkafka::Offset::Beginning)
        .expect("partition");
    consumer.assign(&assignment).expect("assign");
    let total = stored(&cfg, &env_.webhook);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..total {
        let message = loop {
            if let Some(m) = consumer.poll(Duration::from_secs(30)) {
                break m.expect("record");
            }
        };
        let body: serde_json::Value =
            serde_json::from_slice(rdkafka::Message::payload(&message).expect("payload"))
                .expect("json");
        let id = body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        assert!(!body.to_string().contains("secret"), "stored minimized");
        seen.insert(id);
    }
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !seen.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged bodies lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
}
