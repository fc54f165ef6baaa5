//! `wafunnel ingest`: raw topics → validated, re-keyed events and dead letters.
//!
//! Contract:
//! - Each raw record is decoded with its topic's format and validated with
//!   the configured accounts, the user-hash key, and its own Kafka timestamp
//!   as the clock (so a replay decides exactly as the first run did).
//! - A valid record becomes the validated event (the raw user id is already
//!   replaced by its keyed hash) on the internal topic, in the binary form
//!   of [`crate::internal`] with the source topic, partition and offset
//!   inside it, keyed by `Event::partition_key` so one contact's events, and
//!   one ad's spend, share a partition.
//! - An invalid record goes, as its raw bytes, to the dead-letter topic with
//!   the reason code, detail and source in headers.
//! - A batch's outputs and its consumed offsets are committed in one Kafka
//!   transaction: each record is forwarded or dead-lettered exactly once.
//!   Records are produced without a future per record ([`crate::forward`]):
//!   the commit waits for every delivery and fails if one failed.
//!   When a transaction fails, it is aborted and the same batch, still in
//!   memory, is processed again; if the process dies instead, the next owner
//!   reads the batch again from the last committed offsets.
//! - A retryable decode failure (schema registry unreachable) makes ingest
//!   wait and retry instead of dead-lettering good records.
//! - One instance reads every raw partition (assigned, not subscribed).
//!   All instances of one `kafka.ingest_group` share one transactional id,
//!   so a second one fences the first (which stops) instead of forwarding
//!   every record again.
//! - A `wafunnel check` canary is forwarded in its partition's order but
//!   takes no part in the alignment, so a check never holds a partition
//!   back or makes an event late.
//! - Raw partitions are kept within `windows.max_partition_skew` of each
//!   other in event time (see [`Alignment`]), so a backfill cannot turn
//!   good events into late ones downstream.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use wafunnel_avro::{AvroCodec, CachingRegistry, Decoder, Format, HttpRegistry};
use wafunnel_core::config::{Accounts, UserHasher};
use wafunnel_core::event::{Event, Rejection};
use wafunnel_core::wire::Source;

use wafunnel_runtime::config::Config;

use crate::check::CANARY_ACCOUNT;
use crate::dead_letter;
use crate::forward;
use crate::internal::Encoder;
use wafunnel_runtime::error::{Classify, Fault};
use wafunnel_runtime::kafka::{self, ConnectError, LogContext};
use wafunnel_runtime::metrics::metrics;
use wafunnel_runtime::shutdown::Shutdown;

const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why ingest stopped or a batch failed.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Kafka failed; the batch is retried (fatal only when the producer is fenced).
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The brokers cannot be used with these settings.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A record could not be decoded for a reason that may pass (registry down).
    #[error("retryable decode failure: {0}")]
    Decode(wafunnel_avro::Error),
    /// Bad configuration: fatal.
    #[error("configuration: {0}")]
    Config(String),
    /// Another ingest instance with the same configuration took over.
    #[error("fenced: another ingest instance took over transactional id {0} (one ingest runs per kafka.ingest_group; this one stops)")]
    Fenced(String),
    /// The stop was abandoned before the batch in hand was committed (the
    /// next run reads it again from the committed offsets).
    #[error("stopped before the last batch was committed (the next run reads it again)")]
    Abandoned,
}

impl Classify for IngestError {
    fn fault(&self) -> Fault {
        match self {
            IngestError::Kafka(e) if is_fatal(e) => Fault::User,
            IngestError::Kafka(_) | IngestError::Decode(_) | IngestError::Abandoned => {
                Fault::External
            }
            IngestError::Connect(e) => e.fault(),
            IngestError::Config(_) | IngestError::Fenced(_) => Fault::User,
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            IngestError::Kafka(e) => !is_fatal(e),
            IngestError::Decode(_) => true,
            IngestError::Connect(_)
            | IngestError::Config(_)
            | IngestError::Fenced(_)
            | IngestError::Abandoned => false,
        }
    }
}

/// The result of deciding one record. Events are kept as events: they are
/// encoded when produced, into buffers reused for the whole batch.
enum Decision {
    Forward {
        event: Event,
    },
    /// A `wafunnel check` canary: forwarded like an event, but its time
    /// (now) takes no part in the event-time alignment.
    Canary {
        event: Event,
    },
    /// A record that holds several events (a webhook body): each is
    /// forwarded, or dead-lettered on its own; `event_time` is the latest.
    Many {
        events: Vec<Event>,
        rejected: Vec<(&'static str, String)>,
        event_time: i64,
    },
    /// A valid record with nothing to count (a body of read receipts): it
    /// is counted once, as ignored, through a marker on the internal topic.
    Ignored,
    DeadLetter {
        reason: &'static str,
        detail: String,
    },
}

impl Decision {
    /// The event time that places the record in the alignment, if it has one.
    fn event_time(&self) -> Option<i64> {
        match self {
            Decision::Forward { event } => Some(event.time),
            Decision::Many { event_time, .. } => Some(*event_time),
            Decision::Canary { .. } | Decision::Ignored | Decision::DeadLetter { .. } => None,
        }
    }
}

type Partition = (String, i32);

/// Records decided and waiting for one transaction.
type Decided = Vec<(OwnedMessage, Decision)>;

/// Keeps the raw partitions within `skew_ms` of each other in event time.
///
/// Kafka gives no order across partitions: a backfill may deliver one
/// partition's month before another's first day, and downstream everything
/// behind the watermark by more than the allowed lateness would be late. A
/// partition whose next event is further ahead than `skew_ms` of the
/// slowest partition is paused, its record held, until the others catch up.
/// The slowest partition is never held, so this never deadlocks; a
/// partition that stays at its end while it holds another back stops holding
/// it (it is idle) until it delivers again.
///
/// Idleness is confirmed only while a record is held: a partition that was
/// at its end before a burst (every partition of a quiet pipeline before a
/// backfill) must not be idle when the burst starts, or the first partition
/// fetched would run ahead of the others' records that are on their way.
struct Alignment {
    skew_ms: i64,
    assigned: Vec<Partition>,
    forwarded: HashMap<Partition, i64>,
    at_end: std::collections::HashSet<Partition>,
    /// When each partition was first seen at its end, not yet confirmed.
    end_seen: HashMap<Partition, Instant>,
    /// When each partition's end was last asked of the broker.
    end_checked: HashMap<Partition, Instant>,
    held: HashMap<Partition, std::collections::VecDeque<(OwnedMessage, Decision)>>,
    /// Since when some record has been held, without a break.
    holding_since: Option<Instant>,
    paused: std::collections::HashSet<Partition>,
}

/// Records held for a partition that runs ahead before it is paused.
const HOLD_BEFORE_PAUSE: usize = 5_000;
/// How long a partition must stay at its end before it stops holding others
/// back: right after a broker restart, its high watermark can be stale.
const END_CONFIRM: Duration = Duration::from_secs(2);
/// Asking the broker where a partition ends is a round trip: with a trickle
/// of small batches, every batch reaches the end again, and asking each time
/// made ingest spend its time waiting on those answers.
const END_CHECK_EVERY: Duration = Duration::from_millis(500);

impl Alignment {
    /// Where a partition stands: its next held event, else the last event forwarded.
    fn position(&self, p: &Partition) -> Option<i64> {
        if self.at_end.contains(p) {
            return None;
        }
        if let Some(event_time) = self
            .held
            .get(p)
            .and_then(|q| q.front())
            .and_then(|(_, d)| d.event_time())
        {
            return Some(event_time);
        }
        // A partition that delivered nothing yet may be far behind: it holds others back.
        Some(self.forwarded.get(p).copied().unwrap_or(i64::MIN))
    }

    /// The slowest position among the other partitions.
    fn floor(&self, except: &Partition) -> Option<i64> {
        self.assigned
            .iter()
            .filter(|p| *p != except)
            .filter_map(|p| self.position(p))
            .min()
    }

    fn ahead(&self, p: &Partition, event_time: i64) -> bool {
        self.floor(p)
            .is_some_and(|floor| event_time > floor.saturating_add(self.skew_ms))
    }
}

/// Counts of one ingest run, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestCounts {
    /// Records forwarded to the internal topic.
    pub forwarded: u64,
    /// Records (or events of a record) sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Valid records with nothing to count.
    pub ignored: u64,
}

struct Ingest {
    consumer: StreamConsumer<LogContext>,
    producer: forward::Producer,
    decoders: HashMap<String, Decoder<HttpRegistry>>,
    accounts: Accounts,
    hasher: UserHasher,
    internal: String,
    dead_letter: String,
    max_records: usize,
    flush_interval: Duration,
    counts: IngestCounts,
    alignment: Alignment,
    dead_letters: dead_letter::Policy,
    transactional_id: String,
    producer_config: rdkafka::ClientConfig,
    phone_numbers: wafunnel_meta::PhoneNumbers,
}

/// Runs ingest until `shutdown` stops it: the batch in hand is committed
/// first (retried until the stop is abandoned).
pub async fn run(cfg: &Config, shutdown: Shutdown) -> Result<IngestCounts, IngestError> {
    let partitions = match kafka::connect(&cfg.kafka, &shutdown).await {
        Ok(partitions) => partitions,
        // Stopped before there was anything to do: a clean stop.
        Err(ConnectError::Stopped(_)) => return Ok(IngestCounts::default()),
        Err(e) => return Err(e.into()),
    };
    let mut ingest = Ingest::new(cfg, &partitions)?;
    metrics().set_ready(true);
    tracing::info!(topics = ?cfg.topics.raw.iter().map(|t| &t.name).collect::<Vec<_>>(), "ingest started");
    while !shutdown.is_stopping() {
        let batch = ingest.collect(&shutdown).await?;
        if batch.is_empty() {
            continue;
        }
        let mut batch = batch;
        let mut delay = Duration::from_millis(100);
        loop {
            match ingest.commit_batch(&batch, &shutdown).await {
                Ok(counts) => {
                    ingest.counts.forwarded += counts.forwarded;
                    ingest.counts.dead_lettered += counts.dead_lettered;
                    ingest.counts.ignored += counts.ignored;
                    metrics().ingest_forwarded.inc_by(counts.forwarded);
                    metrics().ingest_dead_lettered.inc_by(counts.dead_lettered);
                    metrics()
                        .paused_partitions
                        .set(ingest.alignment.paused.len() as i64);
                    metrics().set_ready(true);
                    break;
                }
                Err(IngestError::Kafka(e)) if is_fatal(&e) => {
                    return Err(IngestError::Fenced(ingest.transactional_id.clone()))
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    metrics().kafka_transaction_retries.inc();
                    metrics().set_ready(false);
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "ingest batch failed, retrying");
                    if !shutdown.sleep(delay).await {
                        return Err(IngestError::Abandoned);
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                    // The failed transaction is resolved (aborted, or
                    // completed by a new producer's init) before the batch
                    // is tried again, and what it did commit is not redone.
                    if let Err(e) = ingest.settle().await {
                        if !e.is_retryable() {
                            return Err(e);
                        }
                        tracing::warn!(error = %e, "cannot settle the failed transaction yet");
                        continue;
                    }
                    match ingest.drop_committed(batch) {
                        Ok(left) => batch = left,
                        Err((e, kept)) => {
                            batch = kept;
                            tracing::warn!(error = %e, "cannot read committed offsets yet");
                            continue;
                        }
                    }
                    if batch.is_empty() {
                        break;
                    }
                }
            }
        }
    }
    metrics().set_ready(false);
    tracing::info!(
        forwarded = ingest.counts.forwarded,
        dead_lettered = ingest.counts.dead_lettered,
        "ingest stopped"
    );
    Ok(ingest.counts)
}

/// One transactional id per ingest group: a second instance started with
/// the same configuration fences the first (whose next commit fails and
/// which then exits) instead of forwarding every record a second time.
fn transactional_id(cfg: &Config) -> String {
    format!("{}-transactions", cfg.kafka.ingest_group)
}

fn is_fatal(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    )
}

impl Ingest {
    fn new(cfg: &Config, partitions: &HashMap<String, i32>) -> Result<Self, IngestError> {
        let consumer: StreamConsumer<LogContext> = kafka::create(
            kafka::client_config(&cfg.kafka)
                .set("group.id", &cfg.kafka.ingest_group)
                .set("enable.auto.commit", "false")
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "true")
                .set("fetch.wait.max.ms", "100")
                // Small fetches keep the partitions interleaved, so that event
                // time advances evenly and nothing looks late downstream.
                .set("max.partition.fetch.bytes", "65536"),
        )?;
        // One instance owns every raw partition, assigned directly rather
        // than through group rebalances: event-time alignment needs to see
        // all partitions, and a restarted instance must not run ahead on
        // some while others wait for a dead member's session to expire.
        // Offsets still commit to the group, inside the transactions.
        let mut assignment = TopicPartitionList::new();
        for topic in &cfg.topics.raw {
            let count = *partitions.get(&topic.name).ok_or_else(|| {
                IngestError::Config(format!(
                    "topic {} does not exist (create it, e.g. with `wafunnel check --create-topics`)",
                    topic.name
                ))
            })?;
            for partition in 0..count {
                assignment.add_partition(&topic.name, partition);
            }
        }
        let mut producer_config = kafka::client_config(&cfg.kafka);
        producer_config
            .set("transactional.id", transactional_id(cfg))
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("compression.type", "lz4");
        let producer = forward::create(&producer_config)?;
        // Fence any earlier instance first: only then are the committed
        // offsets final (a fenced one cannot commit past them any more).
        kafka::blocking(|| producer.init_transactions(TXN_TIMEOUT))?;
        consumer.assign(&kafka::blocking(|| resume_offsets(&consumer, assignment))?)?;
        let registry = match &cfg.schema_registry {
            Some(r) => {
                Some(HttpRegistry::new(&r.url).map_err(|e| IngestError::Config(e.to_string()))?)
            }
            None => None,
        };
        let mut decoders = HashMap::new();
        for topic in &cfg.topics.raw {
            let decoder = Decoder::new(
                topic.format,
                AvroCodec::new(),
                registry.clone().map(CachingRegistry::new),
            )
            .map_err(|e| IngestError::Config(format!("topic {}: {e}", topic.name)))?;
            decoders.insert(topic.name.clone(), decoder);
        }
        Ok(Ingest {
            consumer,
            producer,
            decoders,
            accounts: cfg
                .accounts()
                .map_err(|e| IngestError::Config(e.to_string()))?,
            hasher: UserHasher::new(cfg.user_hash_key()),
            internal: cfg.topics.internal.clone(),
            dead_letter: cfg.topics.dead_letter.clone(),
            max_records: cfg.batch.max_records,
            flush_interval: Duration::from_millis(cfg.batch.flush_interval_ms),
            counts: IngestCounts::default(),
            dead_letters: dead_letter::Policy {
                keep_raw_user_ids: cfg.dead_letter.keep_raw_user_ids,
                max_payload_bytes: cfg.dead_letter.max_payload_bytes,
            },
            transactional_id: transactional_id(cfg),
            producer_config,
            phone_numbers: wafunnel_meta::PhoneNumbers::new(cfg.phone_numbers()),
            alignment: Alignment {
                skew_ms: cfg
                    .max_partition_skew_ms()
                    .map_err(|e| IngestError::Config(e.to_string()))?,
                assigned: Vec::new(),
                forwarded: HashMap::new(),
                at_end: Default::default(),
                end_seen: HashMap::new(),
                holding_since: None,
                end_checked: HashMap::new(),
                held: HashMap::new(),
                paused: Default::default(),
            },
        })
    }

    /// Receives and decides records until the batch is full or the flush
    /// interval ends, holding back partitions that run ahead in event time.
    async fn collect(
        &mut self,
        shutdown: &Shutdown,
    ) -> Result<Vec<(OwnedMessage, Decision)>, IngestError> {
        let mut batch = Vec::new();
        self.refresh_assignment();
        self.check_idle_partitions();
        self.release(&mut batch)?;
        let deadline = Instant::now() + self.flush_interval;
        while batch.len() < self.max_records {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let message = tokio::select! {
                received = tokio::time::timeout(left, self.consumer.recv()) => match received {
                    Ok(Ok(message)) => message.detach(),
                    Ok(Err(KafkaError::PartitionEOF(partition))) => {
                        self.mark_at_end(partition);
                        self.release(&mut batch)?;
                        continue;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "kafka consume error");
                        continue;
                    }
                    Err(_) => break,
                },
                () = shutdown.stopping() => break,
            };
            let decision = self.decide_with_retry(&message, shutdown).await?;
            let partition: Partition = (message.topic().to_owned(), message.partition());
            if !self.alignment.assigned.contains(&partition) {
                // The first records arrive right after an assignment.
                self.refresh_assignment();
            }
            self.alignment.at_end.remove(&partition);
            self.alignment.end_seen.remove(&partition);
            // Behind held records of its partition, any record waits its
            // turn: committing its offset first would skip them on a restart.
            let hold = self.alignment.held.contains_key(&partition)
                || decision
                    .event_time()
                    .is_some_and(|t| self.alignment.ahead(&partition, t));
            match decision {
                decision if hold => {
                    let event_time = decision.event_time().unwrap_or(i64::MIN);
                    self.alignment
                        .holding_since
                        .get_or_insert_with(Instant::now);
                    let queue = self.alignment.held.entry(partition.clone()).or_default();
                    queue.push_back((message, decision));
                    // Small skews are absorbed in memory; a partition far
                    // ahead is paused so that memory stays bounded.
                    if queue.len() == HOLD_BEFORE_PAUSE {
                        tracing::debug!(
                            topic = partition.0,
                            partition = partition.1,
                            event_time,
                            "partition ahead in event time, paused"
                        );
                        self.pause(&partition, true)?;
                        self.alignment.paused.insert(partition);
                    }
                }
                decision => {
                    if let Some(event_time) = decision.event_time() {
                        let slot = self
                            .alignment
                            .forwarded
                            .entry(partition)
                            .or_insert(i64::MIN);
                        *slot = (*slot).max(event_time);
                    }
                    batch.push((message, decision));
                }
            }
            self.release(&mut batch)?;
        }
        Ok(batch)
    }

    fn refresh_assignment(&mut self) {
        if let Ok(assignment) = self.consumer.assignment() {
            self.alignment.assigned = assignment
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
        }
    }

    /// librdkafka reports the end of a partition by number only: with
    /// several raw topics, check which of them really are at their end.
    fn mark_at_end(&mut self, partition: i32) {
        self.refresh_assignment();
        let candidates: Vec<Partition> = self
            .alignment
            .assigned
            .iter()
            .filter(|p| p.1 == partition)
            .cloned()
            .collect();
        for candidate in candidates {
            self.check_end(candidate);
        }
    }

    /// Marks `candidate` as at its end if everything in it was delivered. A
    /// partition at its end (or empty) holds no other partition back.
    fn check_end(&mut self, candidate: Partition) {
        if self
            .alignment
            .end_checked
            .get(&candidate)
            .is_some_and(|at| at.elapsed() < END_CHECK_EVERY)
        {
            return;
        }
        self.alignment
            .end_checked
            .insert(candidate.clone(), Instant::now());
        let (topic, partition) = (&candidate.0, candidate.1);
        let Ok((low, high)) =
            self.consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(2))
        else {
            return;
        };
        let position = self
            .consumer
            .position()
            .ok()
            .and_then(|tpl| {
                tpl.find_partition(topic, partition)
                    .and_then(|e| e.offset().to_raw())
            })
            .filter(|o| *o >= 0)
            // Nothing delivered since the assignment: reading starts at the
            // committed offset, which may already be the end.
            .or_else(|| {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                self.consumer
                    .committed_offsets(tpl, Duration::from_secs(2))
                    .ok()
                    .and_then(|c| {
                        c.find_partition(topic, partition)
                            .and_then(|e| e.offset().to_raw())
                    })
                    .filter(|o| *o >= 0)
            });
        let at_end = match position {
            Some(position) => position >= high,
            None => low == high,
        };
        if !at_end {
            self.alignment.end_seen.remove(&candidate);
            return;
        }
        let end_seen = *self
            .alignment
            .end_seen
            .entry(candidate.clone())
            .or_insert_with(Instant::now);
        let Some(holding_since) = self.alignment.holding_since else {
            return;
        };
        if end_seen.max(holding_since).elapsed() >= END_CONFIRM {
            self.alignment.at_end.insert(candidate);
        }
    }

    /// While records are held, idle partitions are checked for having
    /// reached their end (and for staying there).
    fn check_idle_partitions(&mut self) {
        if self.alignment.held.is_empty() {
            return;
        }
        let idle: Vec<Partition> = self
            .alignment
            .assigned
            .iter()
            .filter(|p| {
                !self.alignment.held.contains_key(*p) && !self.alignment.at_end.contains(*p)
            })
            .cloned()
            .collect();
        for p in idle {
            self.check_end(p);
        }
    }

    /// Moves the held records of partitions that are no longer ahead into the batch.
    fn release(&mut self, batch: &mut Vec<(OwnedMessage, Decision)>) -> Result<(), IngestError> {
        loop {
            let ready = self.alignment.held.iter().find_map(|(p, queue)| {
                let (_, decision) = queue.front()?;
                match decision.event_time() {
                    Some(t) if self.alignment.ahead(p, t) => None,
                    _ => Some(p.clone()),
                }
            });
            let Some(partition) = ready else {
                return Ok(());
            };
            // One record at a time: the queue may span more than the skew.
            let Some(queue) = self.alignment.held.get_mut(&partition) else {
                return Ok(());
            };
            let Some((message, decision)) = queue.pop_front() else {
                return Ok(());
            };
            let left = queue.len();
            if left == 0 {
                self.alignment.held.remove(&partition);
                if self.alignment.held.is_empty() {
                    self.alignment.holding_since = None;
                }
            }
            if left < HOLD_BEFORE_PAUSE / 2 && self.alignment.paused.remove(&partition) {
                self.pause(&partition, false)?;
            }
            if let Some(event_time) = decision.event_time() {
                let slot = self
                    .alignment
                    .forwarded
                    .entry(partition)
                    .or_insert(i64::MIN);
                *slot = (*slot).max(event_time);
            }
            batch.push((message, decision));
        }
    }

    fn pause(&self, (topic, partition): &Partition, pause: bool) -> Result<(), IngestError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, *partition);
        if pause {
            self.consumer.pause(&tpl)?;
        } else {
            self.consumer.resume(&tpl)?;
        }
        Ok(())
    }

    async fn decide_with_retry(
        &self,
        message: &OwnedMessage,
        shutdown: &Shutdown,
    ) -> Result<Decision, IngestError> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.decide(message).await {
                Err(IngestError::Decode(e)) => {
                    // Consumption waits: good records are never dead-lettered for this.
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot decode yet, retrying");
                    if !shutdown.sleep(delay).await {
                        return Err(IngestError::Abandoned);
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                other => return other,
            }
        }
    }

    async fn decide(&self, message: &OwnedMessage) -> Result<Decision, IngestError> {
        let Some(bytes) = message.payload() else {
            return Ok(Decision::DeadLetter {
                reason: "malformed",
                detail: "record has no value".into(),
            });
        };
        let Some(decoder) = self.decoders.get(message.topic()) else {
            return Err(IngestError::Config(format!(
                "no decoder for topic {}",
                message.topic()
            )));
        };
        let record_time = message.timestamp().to_millis();
        let now = record_time.unwrap_or_else(wall_clock_ms);
        let raw = match decoder.format() {
            Format::WhatsappWebhook => return self.decide_webhook(bytes, now),
            Format::MetaInsights => {
                match wafunnel_meta::insights_row(bytes, record_time, &self.accounts) {
                    Ok(raw) => raw,
                    Err(rejection) => return Ok(dead_letter(&rejection)),
                }
            }
            _ => match decoder.decode(bytes).await {
                Ok(raw) => raw,
                Err(e) if e.is_retryable() => return Err(IngestError::Decode(e)),
                Err(e) => {
                    return Ok(Decision::DeadLetter {
                        reason: e.code(),
                        detail: dead_letter::detail_text(&e.to_string()),
                    })
                }
            },
        };
        match raw.validate(&self.accounts, &self.hasher, now) {
            Ok(event) if event.account_id == CANARY_ACCOUNT => Ok(Decision::Canary { event }),
            Ok(event) => Ok(Decision::Forward { event }),
            Err(rejection) => Ok(dead_letter(&rejection)),
        }
    }

    /// A webhook body: rejected whole, ignored, or its events each
    /// forwarded or dead-lettered (docs/SEMANTICS.md section 6.1).
    fn decide_webhook(&self, bytes: &[u8], now: i64) -> Result<Decision, IngestError> {
        let raws = match wafunnel_meta::normalize_webhook(bytes, &self.phone_numbers) {
            Ok(raws) if raws.is_empty() => return Ok(Decision::Ignored),
            Ok(raws) => raws,
            Err(rejection) => return Ok(dead_letter(&rejection)),
        };
        let mut events = Vec::with_capacity(raws.len());
        let mut rejected = Vec::new();
        let mut event_time = i64::MIN;
        for (i, raw) in raws.iter().enumerate() {
            match raw.validate(&self.accounts, &self.hasher, now) {
                Ok(event) => {
                    event_time = event_time.max(event.time);
                    events.push(event);
                }
                Err(rejection) => rejected.push((
                    rejection.code(),
                    format!("event {i} of the body: {}", dead_letter::detail(&rejection)),
                )),
            }
        }
        // With only rejected events there is no time to align on: MIN holds nobody.
        Ok(Decision::Many {
            events,
            rejected,
            event_time,
        })
    }

    /// Resolves a failed transaction: aborted if the producer can, else the
    /// producer is replaced by a new one with the same transactional id,
    /// whose initialisation completes or aborts whatever the old one left
    /// (after a broker crash it may be neither).
    async fn settle(&mut self) -> Result<(), IngestError> {
        // A fenced producer must not be replaced: a new one would fence the
        // instance that took over, and the two would take turns forwarding.
        if self.fenced() {
            return Err(IngestError::Fenced(self.transactional_id.clone()));
        }
        match kafka::blocking(|| self.producer.abort_transaction(TXN_TIMEOUT)) {
            Ok(()) => return Ok(()),
            Err(e) if is_fatal(&e) => {
                return Err(IngestError::Fenced(self.transactional_id.clone()))
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot abort the transaction, starting a new producer")
            }
        }
        let producer = forward::create(&self.producer_config)?;
        match kafka::blocking(|| producer.init_transactions(TXN_TIMEOUT)) {
            Ok(()) => {
                self.producer = producer;
                Ok(())
            }
            Err(e) if is_fatal(&e) => Err(IngestError::Fenced(self.transactional_id.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the producer's fatal error, if any, is that it was fenced.
    fn fenced(&self) -> bool {
        self.producer
            .client()
            .fatal_error()
            .is_some_and(|(code, _)| {
                matches!(
                    code,
                    RDKafkaErrorCode::Fenced
                        | RDKafkaErrorCode::ProducerFenced
                        | RDKafkaErrorCode::InvalidProducerEpoch
                )
            })
    }

    /// The records of `batch` whose offsets the group has not committed:
    /// after a transaction of unknown outcome, those it did commit are not
    /// forwarded again.
    fn drop_committed(&self, batch: Decided) -> Result<Decided, (IngestError, Decided)> {
        let mut tpl = TopicPartitionList::new();
        for (message, _) in &batch {
            if tpl
                .find_partition(message.topic(), message.partition())
                .is_none()
            {
                tpl.add_partition(message.topic(), message.partition());
            }
        }
        let committed = match kafka::blocking(|| {
            self.consumer
                .committed_offsets(tpl, Duration::from_secs(10))
        }) {
            Ok(c) => c,
            Err(e) => return Err((e.into(), batch)),
        };
        let before = batch.len();
        let left: Decided = batch
            .into_iter()
            .filter(|(m, _)| {
                let next = committed
                    .find_partition(m.topic(), m.partition())
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(-1);
                m.offset() >= next
            })
            .collect();
        if left.len() < before {
            tracing::info!(
                committed = before - left.len(),
                left = left.len(),
                "part of the failed batch had been committed"
            );
        }
        Ok(left)
    }

    async fn commit_batch(
        &self,
        batch: &[(OwnedMessage, Decision)],
        shutdown: &Shutdown,
    ) -> Result<IngestCounts, IngestError> {
        kafka::blocking(|| self.producer.begin_transaction())?;
        let counts = self.produce_batch(batch)?;
        let offsets = next_offsets(batch)?;
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| IngestError::Config("no consumer group metadata".into()))?;
        kafka::blocking(|| {
            self.producer
                .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
        })?;
        // The commit waits for every delivery and fails if one failed. One
        // that timed out may still complete: it is asked again (librdkafka's
        // contract), never abandoned for a new transaction.
        loop {
            match kafka::blocking(|| self.producer.commit_transaction(TXN_TIMEOUT)) {
                Ok(()) => break,
                Err(KafkaError::Transaction(e)) if e.is_retriable() => {
                    tracing::warn!(error = %e, "commit not confirmed yet, asking again");
                    if !shutdown.sleep(Duration::from_millis(500)).await {
                        return Err(IngestError::Abandoned);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(counts)
    }

    /// Produces the outputs of `batch` into the open transaction: events and
    /// markers to the internal topic, rejections to the dead-letter topic.
    fn produce_batch(
        &self,
        batch: &[(OwnedMessage, Decision)],
    ) -> Result<IngestCounts, IngestError> {
        let mut counts = IngestCounts::default();
        let mut encoder = Encoder::default();
        for (message, decision) in batch {
            let source = Source {
                topic: message.topic(),
                partition: message.partition() as u32,
                offset: message.offset(),
            };
            let mut forward = |event: &Event| {
                let (key, payload) = encoder.event(&source, event);
                forward::send(
                    &self.producer,
                    BaseRecord::to(&self.internal).key(key).payload(payload),
                )
            };
            match decision {
                Decision::Forward { event } | Decision::Canary { event } => {
                    counts.forwarded += 1;
                    forward(event)?;
                }
                Decision::Many {
                    events, rejected, ..
                } => {
                    counts.forwarded += events.len() as u64;
                    counts.dead_lettered += rejected.len() as u64;
                    for event in events {
                        forward(event)?;
                    }
                    for (reason, detail) in rejected {
                        self.send_dead_letter(message, reason, detail)?;
                    }
                }
                Decision::Ignored => {
                    counts.ignored += 1;
                    let (key, payload) = encoder.ignored(&source);
                    forward::send(
                        &self.producer,
                        BaseRecord::to(&self.internal).key(key).payload(payload),
                    )?;
                }
                Decision::DeadLetter { reason, detail } => {
                    counts.dead_lettered += 1;
                    self.send_dead_letter(message, reason, detail)?;
                }
            }
        }
        Ok(counts)
    }

    fn send_dead_letter(
        &self,
        message: &OwnedMessage,
        reason: &'static str,
        detail: &str,
    ) -> Result<(), IngestError> {
        let (topic, key, payload, headers) = self.dead_letter_record(message, reason, detail);
        let mut record = BaseRecord::to(topic).payload(&payload).headers(headers);
        if let Some(key) = &key {
            record = record.key(key);
        }
        forward::send(&self.producer, record)?;
        Ok(())
    }

    /// The dead letter of `message` for `reason`: its payload and key with
    /// user ids hashed (unless configured otherwise) and cut to size.
    fn dead_letter_record<'s>(
        &'s self,
        message: &OwnedMessage,
        reason: &'static str,
        detail: &str,
    ) -> (&'s str, Option<Vec<u8>>, Vec<u8>, OwnedHeaders) {
        tracing::debug!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            reason,
            "dead-lettered"
        );
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let mut headers = OwnedHeaders::new_with_capacity(7)
            .insert(Header {
                key: kafka::SOURCE_TOPIC,
                value: Some(message.topic()),
            })
            .insert(Header {
                key: kafka::SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: kafka::SOURCE_OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: kafka::REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: kafka::DETAIL,
                value: Some(detail),
            });
        let written = dead_letter::payload(
            message.payload().unwrap_or_default(),
            self.dead_letters,
            &self.hasher,
        );
        if let Some((size, digest)) = &written.truncated {
            let size = size.to_string();
            headers = headers
                .insert(Header {
                    key: dead_letter::ORIGINAL_SIZE,
                    value: Some(size.as_str()),
                })
                .insert(Header {
                    key: dead_letter::ORIGINAL_DIGEST,
                    value: Some(digest.as_str()),
                });
        }
        // The key may be the contact's phone number too.
        let key = match (self.dead_letters.keep_raw_user_ids, message.key()) {
            (true, key) => key.map(<[u8]>::to_vec),
            (false, Some(key)) => {
                Some(dead_letter::payload(key, self.dead_letters, &self.hasher).bytes)
            }
            (false, None) => None,
        };
        (self.dead_letter.as_str(), key, written.bytes, headers)
    }
}

/// How long ingest keeps asking the group coordinator for its offsets at start.
const RESUME_WAIT: Duration = Duration::from_secs(120);

/// The committed offset of every assigned partition, the beginning where none
/// is committed. Asked here, with retries, rather than left to the client:
/// with a direct assignment, librdkafka gives up on a partition whose offset
/// fetch failed (a coordinator still loading after a broker start), and the
/// partition is never read.
fn resume_offsets(
    consumer: &StreamConsumer<LogContext>,
    assignment: TopicPartitionList,
) -> Result<TopicPartitionList, IngestError> {
    let deadline = Instant::now() + RESUME_WAIT;
    let committed = loop {
        let answer = consumer
            .committed_offsets(assignment.clone(), Duration::from_secs(5))
            .and_then(|committed| {
                // A partition whose offset could not be read must not start
                // from the beginning: it would forward its records again.
                for element in committed.elements() {
                    element.error()?;
                }
                Ok(committed)
            });
        match answer {
            Ok(committed) => break committed,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot read committed offsets yet, retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut resume = TopicPartitionList::new();
    for element in committed.elements() {
        let offset = match element.offset() {
            Offset::Offset(n) if n >= 0 => Offset::Offset(n),
            _ => Offset::Beginning,
        };
        resume.add_partition_offset(element.topic(), element.partition(), offset)?;
    }
    Ok(resume)
}

/// The offsets a batch's transaction commits: past each partition's last
/// record. A batch spans few partitions, so a list beats a map keyed by an
/// owned topic name per record.
fn next_offsets(batch: &[(OwnedMessage, Decision)]) -> Result<TopicPartitionList, KafkaError> {
    let mut next: Vec<(&str, i32, i64)> = Vec::new();
    for (message, _) in batch {
        let (topic, partition) = (message.topic(), message.partition());
        match next
            .iter_mut()
            .find(|(t, p, _)| *p == partition && *t == topic)
        {
            Some((_, _, offset)) => *offset = (*offset).max(message.offset() + 1),
            None => next.push((topic, partition, message.offset() + 1)),
        }
    }
    let mut offsets = TopicPartitionList::with_capacity(next.len());
    for (topic, partition, offset) in next {
        offsets.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(offsets)
}

fn dead_letter(rejection: &Rejection) -> Decision {
    Decision::DeadLetter {
        reason: rejection.code(),
        detail: dead_letter::detail(rejection),
    }
}

fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
