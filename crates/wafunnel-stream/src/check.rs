//! `wafunnel check`: test your own funnel before you spend a dollar. Each
//! step prints `ok` or `FAIL` with the detail; a canary click goes through
//! ingest and sessionize (both must be running) and is read back from the
//! `check_canaries` table.
//!
//! Contract: a check changes no number. The canary is an event of the
//! reserved account [`CANARY_ACCOUNT`]; ingest forwards it in its
//! partition's order without letting its time (now) take part in the
//! event-time alignment, and sessionize records it in `check_canaries`
//! without applying it, so it moves no watermark, makes no event late and
//! appears in no BI view and in no input count, whenever the check runs:
//! before a backfill, during one, or on a pipeline far behind.

use std::time::{Duration, Instant};

use rdkafka::producer::{FutureProducer, FutureRecord};
use wafunnel_avro::Format;

use wafunnel_runtime::config::{redact_url, Config};
use wafunnel_runtime::kafka::{self, LogContext, TopicLayout};
use wafunnel_runtime::scrub::scrub;

/// The reserved account of canary events: events of this account are never
/// applied to the tables, only recorded in `check_canaries`.
pub const CANARY_ACCOUNT: &str = "wafunnel-canary";

/// Prints a step's result; the detail may quote a server's answer, so it is
/// scrubbed of secrets.
fn report(step: &str, result: Result<String, String>) -> bool {
    match result {
        Ok(detail) => {
            println!("ok    {step}: {}", scrub(&detail));
            true
        }
        Err(detail) => {
            println!("FAIL  {step}: {}", scrub(&detail));
            false
        }
    }
}

/// Runs every step; returns whether all passed.
pub async fn run(cfg: &Config, create_topics: bool, timeout: Duration) -> bool {
    let partitions = match kafka::topic_partitions(&cfg.kafka, Duration::from_secs(5)) {
        Ok(p) => p,
        Err(e) => {
            return report(
                "kafka broker reachable",
                Err(format!("{}: {e}", cfg.kafka.bootstrap)),
            )
        }
    };
    report("kafka broker reachable", Ok(cfg.kafka.bootstrap.clone()));
    let layout = |partitions| TopicLayout {
        partitions,
        replication: cfg.topics.replication_factor,
    };
    let mut wanted: Vec<(&str, TopicLayout)> = cfg
        .topics
        .raw
        .iter()
        .map(|t| (t.name.as_str(), layout(cfg.topics.raw_partitions)))
        .collect();
    let internal = layout(Some(cfg.topics.internal_partitions));
    wanted.push((&cfg.topics.internal, internal));
    wanted.push((&cfg.topics.dead_letter, layout(Some(1))));
    wanted.push((&cfg.topics.state, internal));
    // Conversions API exports: as many partitions as the internal topic, whose
    // partitions emit them.
    wanted.push((&cfg.topics.capi, internal));
    // Where ingest instances publish their raw partitions' positions.
    wanted.push((&cfg.topics.alignment, layout(Some(1))));
    let missing: Vec<(&str, TopicLayout)> = wanted
        .iter()
        .copied()
        .filter(|(t, _)| !partitions.contains_key(*t))
        .collect();
    if !missing.is_empty() && create_topics {
        // The receiver's topic accepts the largest body it accepts.
        let webhook_topic = cfg.webhook.topic.as_deref().or_else(|| {
            cfg.topics
                .raw
                .iter()
                .find(|t| t.format == Format::WhatsappWebhook)
                .map(|t| t.name.as_str())
        });
        let mut created = Ok(());
        for &(name, layout) in &missing {
            created = if name == cfg.topics.state {
                kafka::create_state_topic(&cfg.kafka, name, layout).await
            } else if name == cfg.topics.internal {
                kafka::create_internal_topic(&cfg.kafka, name, layout).await
            } else if name == cfg.topics.alignment {
                kafka::create_alignment_topic(&cfg.kafka, name, layout.replication).await
            } else if let Some(webhook) = webhook_topic.filter(|t| *t == name) {
                let max_body_bytes = cfg.webhook.max_body_bytes;
                kafka::create_webhook_topic(&cfg.kafka, webhook, layout, max_body_bytes).await
            } else if name == cfg.topics.dead_letter {
                let retention = cfg.dead_letter_retention_ms().unwrap_or(-1);
                kafka::create_dead_letter_topic(&cfg.kafka, name, layout, retention).await
            } else {
                kafka::create_topic(&cfg.kafka, name, layout).await
            };
            if created.is_err() {
                break;
            }
        }
        if let Err(e) = created {
            return report(
                "topics present",
                Err(format!(
                    "cannot create {}: {e}",
                    missing
                        .iter()
                        .map(|(t, _)| *t)
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            );
        }
        report(
            "topics created",
            Ok(missing
                .iter()
                .map(|(t, _)| *t)
                .collect::<Vec<_>>()
                .join(", ")),
        );
    } else if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
        return report(
            "topics present",
            Err(format!(
                "missing {} (run with --create-topics)",
                names.join(", ")
            )),
        );
    } else {
        report(
            "topics present",
            Ok(wanted
                .iter()
                .map(|(t, _)| *t)
                .collect::<Vec<_>>()
                .join(", ")),
        );
    }

    match kafka::topic_setting_problems(&cfg.kafka, &cfg.topics.internal, &cfg.topics.state).await {
        Ok(problems) if problems.is_empty() => report(
            "topic settings",
            Ok(format!(
                "{} keeps everything, {} is compacted",
                cfg.topics.internal, cfg.topics.state
            )),
        ),
        // Counting still works; restores may not: a warning, not a failure.
        Ok(problems) => {
            for problem in problems {
                println!("warn  topic settings: {}", scrub(&problem));
            }
            true
        }
        Err(e) => {
            println!(
                "warn  topic settings: cannot read them: {}",
                scrub(&e.to_string())
            );
            true
        }
    };

    let db = crate::sink::client(&cfg.clickhouse);
    match db.query("SELECT 1").fetch_one::<u8>().await {
        Ok(_) => report("clickhouse reachable", Ok(redact_url(&cfg.clickhouse.url))),
        Err(e) => {
            return report(
                "clickhouse reachable",
                Err(format!("{}: {e}", redact_url(&cfg.clickhouse.url))),
            )
        }
    };
    match crate::sink::is_migrated(&db).await {
        Ok(true) => report(
            "clickhouse migrated",
            Ok(format!("database {}", cfg.clickhouse.database)),
        ),
        Ok(false) => {
            return report(
                "clickhouse migrated",
                Err("migrations missing: run `wafunnel migrate`".into()),
            )
        }
        Err(e) => {
            return report(
                "clickhouse migrated",
                Err(format!("{e} (run `wafunnel migrate`)")),
            )
        }
    };

    let Some(topic) = cfg.topics.raw.iter().find(|t| t.format == Format::Json) else {
        return report(
            "canary",
            Err("no JSON raw topic to send the canary to".into()),
        );
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let user = format!("canary-{now}");
    let line = format!(
        r#"{{"event_id":"canary-{now}","type":"ad_click","account_id":"{CANARY_ACCOUNT}","user_id":"{user}","event_time":{now},"ad_id":"canary","campaign_id":"canary","adset_id":"canary"}}"#
    );
    let producer: FutureProducer<LogContext> =
        match kafka::create(&kafka::client_config(&cfg.kafka)) {
            Ok(p) => p,
            Err(e) => return report("canary sent", Err(e.to_string())),
        };
    if let Err((e, _)) = producer
        .send(
            FutureRecord::to(&topic.name).key(&user).payload(&line),
            Duration::from_secs(10),
        )
        .await
    {
        return report("canary sent", Err(e.to_string()));
    }
    report("canary sent", Ok(format!("to {}", topic.name)));
    let canary_id = format!("canary-{now}");
    let started = Instant::now();
    while started.elapsed() < timeout {
        let seen = db
            .query("SELECT count() FROM check_canaries WHERE canary_id = ?")
            .bind(&canary_id)
            .fetch_one::<u64>()
            .await;
        if matches!(seen, Ok(n) if n > 0) {
            return report(
                "canary in clickhouse",
                Ok(format!(
                    "through ingest and sessionize after {:.1} s",
                    started.elapsed().as_secs_f64()
                )),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    report(
        "canary in clickhouse",
        Err(format!(
            "not visible after {} s: are `wafunnel ingest` and `wafunnel sessionize` running?",
            timeout.as_secs()
        )),
    )
}
