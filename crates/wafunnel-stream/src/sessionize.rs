//! `wafunnel sessionize`: internal topic → one sessionizer per partition →
//! ClickHouse.
//!
//! Contract:
//! - Reads every partition of the internal and dead-letter topics with
//!   `read_committed`, from the beginning: each partition's state is rebuilt
//!   by replaying it, so it is a pure function of the partition's records
//!   whatever happened before (crash, restart). One instance owns all
//!   partitions; running several in one group is not supported yet.
//! - Rows are full state, versioned by the next offset of their partition,
//!   so the rows rewritten during a replay are identical or older than what
//!   ClickHouse already holds: the views do not change.
//! - A batch is written to ClickHouse, retrying while it is unavailable
//!   (consumption waits meanwhile: memory stays bounded by one batch), and
//!   only then are the offsets committed. Committed offsets report progress
//!   and lag; they are never used to skip records.
//! - Every internal record is counted as applied, duplicate or late, every
//!   dead letter as dead-lettered, per source topic and partition, in
//!   `record_outcomes` (the `input_accounting` view sums them).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use wafunnel_core::config::{Accounts, Windows};
use wafunnel_core::event::Event;
use wafunnel_core::sessionizer::{Outcome, Sessionizer};

use crate::config::Config;
use crate::kafka::{self, LogContext};
use crate::metrics;
use crate::sink::{Batch, LateWrite, OutcomeWrite, Sink, SinkError};

/// Why sessionize stopped.
#[derive(Debug, thiserror::Error)]
pub enum SessionizeError {
    /// Kafka failed in a way retrying does not fix (bad topic, no broker at start).
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// ClickHouse refused in a way retrying does not fix.
    #[error("clickhouse: {0}")]
    Sink(#[from] SinkError),
    /// Bad configuration or topics.
    #[error("{0}")]
    Config(String),
}

type SourceKey = (String, u32);

struct Worker {
    sessionizer: Sessionizer,
    next_offset: i64,
    outcomes: BTreeMap<(SourceKey, &'static str), u64>,
    dirty: bool,
}

struct DeadLetterWorker {
    next_offset: i64,
    counts: BTreeMap<SourceKey, u64>,
    dirty: bool,
}

fn source(message: &BorrowedMessage<'_>) -> SourceKey {
    let topic = kafka::header(message, kafka::SOURCE_TOPIC)
        .unwrap_or("unknown")
        .to_owned();
    let partition = kafka::header(message, kafka::SOURCE_PARTITION)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    (topic, partition)
}

/// Runs sessionize until `shutdown` turns true. Returns the records processed.
pub async fn run(
    cfg: &Config,
    mut shutdown: watch::Receiver<bool>,
) -> Result<u64, SessionizeError> {
    let windows: Windows = cfg
        .windows()
        .map_err(|e| SessionizeError::Config(e.to_string()))?;
    let accounts: Accounts = cfg
        .accounts()
        .map_err(|e| SessionizeError::Config(e.to_string()))?;
    let consumer: StreamConsumer<LogContext> = kafka::client_config(&cfg.kafka)
        .set("group.id", &cfg.kafka.sessionize_group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create_with_context(LogContext)?;
    let partitions = kafka::topic_partitions(&cfg.kafka, Duration::from_secs(10))?;
    let internal = cfg.topics.internal.clone();
    let dead = cfg.topics.dead_letter.clone();
    let mut assignment = TopicPartitionList::new();
    for topic in [&internal, &dead] {
        let n = *partitions.get(topic.as_str()).ok_or_else(|| {
            SessionizeError::Config(format!("topic {topic} does not exist (create it, e.g. with `wafunnel check --create-topics`)"))
        })?;
        for p in 0..n {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let sink = Sink::new(&cfg.clickhouse);
    let mut workers: HashMap<u32, Worker> = HashMap::new();
    let mut dead_workers: HashMap<u32, DeadLetterWorker> = HashMap::new();
    let flush_interval = Duration::from_millis(cfg.batch.flush_interval_ms);
    let mut processed = 0u64;
    let mut late: Vec<LateWrite> = Vec::new();
    let mut last_gauges = Instant::now();
    tracing::info!(
        internal,
        dead_letter = dead,
        "sessionize started, rebuilding state from the beginning of each partition"
    );
    loop {
        let deadline = Instant::now() + flush_interval;
        let mut in_batch = 0usize;
        while in_batch < cfg.batch.max_records {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let message = tokio::select! {
                received = tokio::time::timeout(left, consumer.recv()) => match received {
                    Ok(Ok(message)) => message,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        continue;
                    }
                    Err(_) => break,
                },
                _ = shutdown.changed() => break,
            };
            in_batch += 1;
            processed += 1;
            let partition = message.partition() as u32;
            if message.topic() == dead {
                let worker = dead_workers
                    .entry(partition)
                    .or_insert_with(|| DeadLetterWorker {
                        next_offset: 0,
                        counts: BTreeMap::new(),
                        dirty: false,
                    });
                *worker.counts.entry(source(&message)).or_default() += 1;
                metrics::SESSIONIZE_DEAD_LETTERED.add(1);
                worker.next_offset = message.offset() + 1;
                worker.dirty = true;
                continue;
            }
            let worker = workers.entry(partition).or_insert_with(|| Worker {
                sessionizer: Sessionizer::new(partition, windows, accounts.clone()),
                next_offset: 0,
                outcomes: BTreeMap::new(),
                dirty: false,
            });
            worker.next_offset = message.offset() + 1;
            worker.dirty = true;
            let payload = message.payload().unwrap_or_default();
            let outcome = match serde_json::from_slice::<Event>(payload) {
                Ok(event) => match worker.sessionizer.apply(&event) {
                    Outcome::Applied => {
                        metrics::SESSIONIZE_APPLIED.add(1);
                        "applied"
                    }
                    Outcome::Duplicate => {
                        metrics::SESSIONIZE_DUPLICATE.add(1);
                        "duplicate"
                    }
                    Outcome::Late { watermark } => {
                        metrics::SESSIONIZE_LATE.add(1);
                        late.push(LateWrite {
                            topic: internal.clone(),
                            partition,
                            offset: message.offset(),
                            account_id: event.account_id.clone(),
                            event_id: event.event_id.clone(),
                            event_type: event.event_type().as_str().to_owned(),
                            event_time: event.time,
                            watermark,
                            reason: "older than the partition watermark minus the allowed lateness"
                                .into(),
                            raw: String::from_utf8_lossy(payload).into_owned(),
                        });
                        "late"
                    }
                },
                Err(e) => {
                    // Only ingest writes this topic; a record it did not write
                    // is counted, logged and skipped rather than stopping the partition.
                    tracing::error!(partition, offset = message.offset(), error = %e, "undecodable internal record");
                    "dead_lettered"
                }
            };
            *worker
                .outcomes
                .entry((source(&message), outcome))
                .or_default() += 1;
        }
        if *shutdown.borrow() && in_batch == 0 {
            break;
        }
        flush(
            &sink,
            &consumer,
            &internal,
            &dead,
            &mut workers,
            &mut dead_workers,
            &mut late,
        )
        .await?;
        if last_gauges.elapsed() >= GAUGE_EVERY {
            last_gauges = Instant::now();
            update_gauges(&consumer, &internal, &workers);
        }
        if *shutdown.borrow() {
            break;
        }
    }
    tracing::info!(processed, "sessionize stopped");
    Ok(processed)
}

/// How often the gauges that cost a scan or a broker round trip are updated.
const GAUGE_EVERY: Duration = Duration::from_secs(10);

fn update_gauges(
    consumer: &StreamConsumer<LogContext>,
    internal: &str,
    workers: &HashMap<u32, Worker>,
) {
    let open: usize = workers
        .values()
        .map(|w| w.sessionizer.stats().conversations)
        .sum();
    metrics::OPEN_CONVERSATIONS.set(open as i64);
    let mut lag = 0i64;
    for (&partition, worker) in workers {
        if let Ok((_, high)) =
            consumer.fetch_watermarks(internal, partition as i32, Duration::from_secs(1))
        {
            lag += (high - worker.next_offset).max(0);
        }
    }
    metrics::CONSUMER_LAG.set(lag);
}

/// Writes everything changed since the last flush, then commits the offsets.
async fn flush(
    sink: &Sink,
    consumer: &StreamConsumer<LogContext>,
    internal: &str,
    dead: &str,
    workers: &mut HashMap<u32, Worker>,
    dead_workers: &mut HashMap<u32, DeadLetterWorker>,
    late: &mut Vec<LateWrite>,
) -> Result<(), SessionizeError> {
    let mut batch = Batch {
        late: std::mem::take(late),
        ..Batch::default()
    };
    let mut offsets = TopicPartitionList::new();
    for (&partition, worker) in workers.iter_mut().filter(|(_, w)| w.dirty) {
        worker.dirty = false;
        let version = worker.next_offset as u64;
        batch
            .changes
            .push((partition, version, worker.sessionizer.drain()));
        for (((source_topic, source_partition), outcome), records) in &worker.outcomes {
            batch.outcomes.push(OutcomeWrite {
                stage: "sessionize".into(),
                source_topic: source_topic.clone(),
                source_partition: *source_partition,
                worker_topic: internal.to_owned(),
                worker_partition: partition,
                outcome: (*outcome).to_owned(),
                records: *records,
                version,
            });
        }
        offsets.add_partition_offset(
            internal,
            partition as i32,
            Offset::Offset(worker.next_offset),
        )?;
    }
    for (&partition, worker) in dead_workers.iter_mut().filter(|(_, w)| w.dirty) {
        worker.dirty = false;
        for ((source_topic, source_partition), records) in &worker.counts {
            batch.outcomes.push(OutcomeWrite {
                stage: "dead_letter".into(),
                source_topic: source_topic.clone(),
                source_partition: *source_partition,
                worker_topic: dead.to_owned(),
                worker_partition: partition,
                outcome: "dead_lettered".into(),
                records: *records,
                version: worker.next_offset as u64,
            });
        }
        offsets.add_partition_offset(dead, partition as i32, Offset::Offset(worker.next_offset))?;
    }
    if batch.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    sink.write_with_retry(&batch).await?;
    tracing::debug!(
        rows = batch.outcomes.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch written"
    );
    if offsets.count() > 0 {
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            // Offsets only report progress here: the next start replays anyway.
            tracing::warn!(error = %e, "failed to commit offsets");
        }
    }
    Ok(())
}
