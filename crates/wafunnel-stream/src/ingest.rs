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
//!   When a transaction fails, it is resolved (aborted, or completed by a
//!   new producer's initialisation) and every owned partition is read again
//!   from its committed offsets; if the process dies instead, the next owner
//!   reads the batch again from the last committed offsets.
//! - A retryable decode failure (schema registry unreachable) makes ingest
//!   wait and retry instead of dead-lettering good records.
//! - Instances share the raw partitions in the consumer group
//!   `kafka.ingest_group` (see [`group`]: eager rebalances; records of a
//!   revoked partition not yet committed are dropped, and its next owner
//!   reads them from the committed offsets). Each instance has its own
//!   transactional id, `<ingest_group>-<ingest_instance>`, and commits its
//!   offsets with the consumer's group metadata, so an instance the group
//!   has moved on from cannot commit (KIP-447). Two running instances given
//!   one `kafka.ingest_instance` fence each other: the fenced one stops.
//! - Deciding a record and writing its outputs ([`Route`]) is the same for
//!   a record re-driven from its dead letter ([`crate::redrive`]).
//! - A `wafunnel check` canary is forwarded in its partition's order but
//!   takes no part in the alignment, so a check never holds a partition
//!   back or makes an event late.
//! - Raw partitions are kept within `windows.max_partition_skew` of each
//!   other in event time, across instances (see [`align`]), so a backfill
//!   cannot turn good events into late ones downstream.

mod align;
mod group;

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
use align::{
    Alignment, AlignmentTopic, Partition, END_CHECK_EVERY, END_CONFIRM, HOLD_BEFORE_PAUSE,
};
use group::GroupContext;
use rand::RngCore as _;
use wafunnel_runtime::error::{Classify, Fault};
use wafunnel_runtime::kafka::{self, ConnectError};
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
    /// Another ingest instance with the same transactional id took over.
    #[error("fenced: another ingest instance took over transactional id {0} (each running instance needs its own kafka.ingest_instance; this one stops)")]
    Fenced(String),
    /// The assigned partitions' committed offsets could not be read.
    #[error("cannot start the assigned raw partitions: {0}")]
    Resume(String),
    /// The stop was abandoned before the batch in hand was committed (the
    /// next run reads it again from the committed offsets).
    #[error("stopped before the last batch was committed (the next run reads it again)")]
    Abandoned,
}

impl Classify for IngestError {
    fn fault(&self) -> Fault {
        match self {
            IngestError::Kafka(e) if is_fatal(e) => Fault::User,
            IngestError::Kafka(_)
            | IngestError::Decode(_)
            | IngestError::Abandoned
            | IngestError::Resume(_) => Fault::External,
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
            | IngestError::Abandoned
            | IngestError::Resume(_) => false,
        }
    }
}

/// The result of deciding one record. Events are kept as events: they are
/// encoded when produced, into buffers reused for the whole batch.
pub(crate) enum Decision {
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

/// Records decided and waiting for one transaction.
type Decided = Vec<(OwnedMessage, Decision)>;

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

/// What decides a raw record and writes its outputs: the same for ingest
/// and for a re-drive.
pub(crate) struct Route {
    decoders: HashMap<String, Decoder<HttpRegistry>>,
    accounts: Accounts,
    hasher: UserHasher,
    internal: String,
    dead_letter: String,
    dead_letters: dead_letter::Policy,
    phone_numbers: wafunnel_meta::PhoneNumbers,
}

struct Ingest {
    consumer: StreamConsumer<GroupContext>,
    producer: forward::Producer,
    route: Route,
    max_records: usize,
    flush_interval: Duration,
    counts: IngestCounts,
    alignment: Alignment,
    positions: AlignmentTopic,
    transactional_id: String,
    producer_config: rdkafka::ClientConfig,
}

/// Runs ingest until `shutdown` stops it: the batch in hand is committed
/// first; if its transaction fails, it is resolved (retried until the stop
/// is abandoned) and the batch is left to be read again.
pub async fn run(cfg: &Config, shutdown: Shutdown) -> Result<IngestCounts, IngestError> {
    let partitions = match kafka::connect(&cfg.kafka, &shutdown).await {
        Ok(partitions) => partitions,
        // Stopped before there was anything to do: a clean stop.
        Err(ConnectError::Stopped(_)) => return Ok(IngestCounts::default()),
        Err(e) => return Err(e.into()),
    };
    let mut ingest = Ingest::new(cfg, &partitions).await?;
    metrics().set_ready(true);
    tracing::info!(topics = ?cfg.topics.raw.iter().map(|t| &t.name).collect::<Vec<_>>(), "ingest started");
    while !shutdown.is_stopping() {
        let batch = ingest.collect(&shutdown).await?;
        if batch.is_empty() {
            if ingest.positions.publication_due() {
                ingest.publish_positions();
            }
            continue;
        }
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
                ingest.publish_positions();
            }
            Err(IngestError::Kafka(e)) if is_fatal(&e) => {
                return Err(IngestError::Fenced(ingest.transactional_id.clone()))
            }
            Err(e) if !e.is_retryable() => return Err(e),
            Err(e) => {
                metrics().kafka_transaction_retries.inc();
                metrics().set_ready(false);
                tracing::warn!(error = %e, "ingest batch failed, reading it again");
                ingest.recover(&shutdown).await?;
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

/// This instance's own transactional id, `<ingest_group>-<ingest_instance>`,
/// with a random instance name unless one is configured.
fn transactional_id(cfg: &Config) -> String {
    let instance = cfg.kafka.ingest_instance.clone().unwrap_or_else(|| {
        let mut bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut bytes);
        hex::encode(bytes)
    });
    format!("{}-{instance}", cfg.kafka.ingest_group)
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
    async fn new(cfg: &Config, partitions: &HashMap<String, i32>) -> Result<Self, IngestError> {
        let consumer: StreamConsumer<GroupContext> =
            kafka::committing_consumer_config(&cfg.kafka, &cfg.kafka.ingest_group)
                .set("enable.partition.eof", "true")
                .set("fetch.wait.max.ms", "100")
                // Small fetches keep the partitions interleaved, so that event
                // time advances evenly and nothing looks late downstream.
                .set("max.partition.fetch.bytes", "65536")
                // The rebalance handler gives up and takes whole sets: the
                // eager protocol (module `group`).
                .set("partition.assignment.strategy", "roundrobin")
                .create_with_context(GroupContext::default())
                .map_err(kafka::redact)?;
        let mut all = Vec::new();
        for topic in &cfg.topics.raw {
            let count = *partitions.get(&topic.name).ok_or_else(|| {
                IngestError::Config(format!(
                    "topic {} does not exist (create it, e.g. with `wafunnel check --create-topics`)",
                    topic.name
                ))
            })?;
            all.extend((0..count).map(|partition| (topic.name.clone(), partition)));
        }
        let transactional_id = transactional_id(cfg);
        let mut producer_config = kafka::client_config(&cfg.kafka);
        producer_config
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            .set("linger.ms", "20")
            .set("compression.type", "lz4");
        let producer = forward::create(&producer_config)?;
        // With a configured instance name, this completes or aborts what a
        // killed predecessor left open, so its partitions' offsets are final.
        kafka::blocking(|| producer.init_transactions(TXN_TIMEOUT))?;
        let positions = AlignmentTopic::open(cfg, partitions).await?;
        let topics: Vec<&str> = cfg.topics.raw.iter().map(|t| t.name.as_str()).collect();
        consumer.subscribe(&topics)?;
        Ok(Ingest {
            consumer,
            producer,
            route: Route::new(cfg)?,
            max_records: cfg.batch.max_records,
            flush_interval: Duration::from_millis(cfg.batch.flush_interval_ms),
            counts: IngestCounts::default(),
            transactional_id,
            producer_config,
            alignment: Alignment::new(
                cfg.max_partition_skew_ms()
                    .map_err(|e| IngestError::Config(e.to_string()))?,
                all,
            ),
            positions,
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
            if left.is_zero() || (!batch.is_empty() && self.alignment.blocked()) {
                break;
            }
            // Not longer than the other instances' positions may wait.
            let wait = left.min(align::READ_EVERY);
            let message = tokio::select! {
                received = tokio::time::timeout(wait, self.consumer.recv()) => match received {
                    Ok(Ok(message)) => message.detach(),
                    Ok(Err(KafkaError::PartitionEOF(partition))) => {
                        self.after_poll(&mut batch)?;
                        self.mark_at_end(partition);
                        self.release(&mut batch)?;
                        continue;
                    }
                    Ok(Err(e)) => {
                        self.after_poll(&mut batch)?;
                        tracing::warn!(error = %e, "kafka consume error");
                        continue;
                    }
                    Err(_) => {
                        self.after_poll(&mut batch)?;
                        continue;
                    }
                },
                () = shutdown.stopping() => break,
            };
            self.after_poll(&mut batch)?;
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
                    let queue = self.alignment.held.entry(partition.clone()).or_default();
                    queue.push_back((message, decision));
                    let held = queue.len();
                    self.alignment.refresh_holding();
                    // Small skews are absorbed in memory; a partition far
                    // ahead is paused so that memory stays bounded.
                    if held == HOLD_BEFORE_PAUSE {
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
            let assigned: Vec<Partition> = assignment
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            if assigned != self.alignment.assigned {
                self.alignment.assigned = assigned;
                self.alignment.refresh_others();
            }
        }
    }

    /// Acts on what polling the consumer may have changed: an assignment
    /// that could not start stops ingest; the records of revoked partitions
    /// collected or held and not committed are dropped (their next owner
    /// reads them from the committed offsets); and, when due, the other
    /// instances' positions are read.
    fn after_poll(&mut self, batch: &mut Decided) -> Result<(), IngestError> {
        if let Some(e) = self.consumer.context().fatal() {
            return Err(IngestError::Resume(e));
        }
        let revoked = self.consumer.context().take_revoked();
        if !revoked.is_empty() {
            let before = batch.len();
            batch.retain(|(m, _)| {
                !revoked
                    .iter()
                    .any(|(topic, partition)| topic == m.topic() && *partition == m.partition())
            });
            let held = self.alignment.forget(&revoked);
            self.refresh_assignment();
            tracing::info!(
                collected = before - batch.len(),
                held,
                "uncommitted records of revoked partitions dropped"
            );
        }
        if self.positions.read_due() {
            self.read_positions();
            self.release(batch)?;
        }
        Ok(())
    }

    /// Takes in the entries other instances published.
    fn read_positions(&mut self) {
        let entries = self.positions.read();
        if entries.is_empty() {
            return;
        }
        self.alignment.published.extend(entries);
        self.alignment.refresh_others();
    }

    /// Publishes where this instance's partitions stand, as committed.
    fn publish_positions(&mut self) {
        self.refresh_assignment();
        let entries = self.alignment.entries(&self.transactional_id);
        self.positions.publish(&entries);
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
        if !self.alignment.someone_holds() {
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
            if self.alignment.held.is_empty() {
                return Ok(());
            }
            let horizon = self.alignment.horizon();
            let ready = self.alignment.held.iter().find_map(|(p, queue)| {
                let (_, decision) = queue.front()?;
                match decision.event_time() {
                    Some(t) if horizon.ahead(p, t) => None,
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
                self.alignment.refresh_holding();
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
            match self.route.decide(message, None).await {
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

    /// After a failed batch: resolves its transaction, then reads every
    /// owned partition again from its committed offsets, so whatever the
    /// transaction did commit is not redone, and an instance the group has
    /// moved on from learns it at its next poll instead of retrying a
    /// commit that cannot succeed. Retried with backoff until it succeeds.
    async fn recover(&mut self, shutdown: &Shutdown) -> Result<(), IngestError> {
        let mut delay = Duration::from_millis(100);
        loop {
            if !shutdown.sleep(delay).await {
                return Err(IngestError::Abandoned);
            }
            delay = (delay * 2).min(Duration::from_secs(10));
            if let Err(e) = self.settle().await {
                if !e.is_retryable() {
                    return Err(e);
                }
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot settle the failed transaction yet");
                continue;
            }
            match self.rewind() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot read committed offsets yet")
                }
            }
        }
    }

    /// Moves every owned partition back to its committed offset, dropping
    /// what is held back for alignment (it is read again).
    fn rewind(&mut self) -> Result<(), IngestError> {
        let assignment = self.consumer.assignment()?;
        let resume = kafka::blocking(|| group::resume_offsets(&self.consumer, assignment))?;
        let partitions: Vec<Partition> = resume
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let sought = self
            .consumer
            .seek_partitions(resume.clone(), Duration::from_secs(10))?;
        for element in sought.elements() {
            element.error()?;
        }
        let mut paused = TopicPartitionList::new();
        for (topic, partition) in partitions
            .iter()
            .filter(|p| self.alignment.paused.contains(*p))
        {
            paused.add_partition(topic, *partition);
        }
        if paused.count() > 0 {
            self.consumer.resume(&paused)?;
        }
        let held = self.alignment.forget(&partitions);
        tracing::info!(
            partitions = partitions.len(),
            held,
            "partitions read again from their committed offsets"
        );
        Ok(())
    }

    async fn commit_batch(
        &self,
        batch: &[(OwnedMessage, Decision)],
        shutdown: &Shutdown,
    ) -> Result<IngestCounts, IngestError> {
        kafka::blocking(|| self.producer.begin_transaction())?;
        let counts = self.route.produce_batch(&self.producer, batch)?;
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
}

impl Route {
    /// The route of `cfg`'s raw topics, accounts and dead-letter policy.
    pub(crate) fn new(cfg: &Config) -> Result<Route, IngestError> {
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
        Ok(Route {
            decoders,
            accounts: cfg
                .accounts()
                .map_err(|e| IngestError::Config(e.to_string()))?,
            hasher: UserHasher::new(cfg.user_hash_key()),
            internal: cfg.topics.internal.clone(),
            dead_letter: cfg.topics.dead_letter.clone(),
            dead_letters: dead_letter::Policy {
                keep_raw_user_ids: cfg.dead_letter.keep_raw_user_ids,
                max_payload_bytes: cfg.dead_letter.max_payload_bytes,
            },
            phone_numbers: wafunnel_meta::PhoneNumbers::new(cfg.phone_numbers()),
        })
    }

    /// Decides `message`, validated at `clock` (default: its own timestamp).
    pub(crate) async fn decide(
        &self,
        message: &OwnedMessage,
        clock: Option<i64>,
    ) -> Result<Decision, IngestError> {
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
        let now = clock.or(record_time).unwrap_or_else(wall_clock_ms);
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

    /// Event `index` of webhook body `message` alone, decided as ingest
    /// decides it within its body: the re-drive of one rejected event of a
    /// body whose other events were forwarded.
    pub(crate) fn decide_body_event(
        &self,
        message: &OwnedMessage,
        index: usize,
        now: i64,
    ) -> Decision {
        let bytes = message.payload().unwrap_or_default();
        let raws = match wafunnel_meta::normalize_webhook(bytes, &self.phone_numbers) {
            Ok(raws) => raws,
            Err(rejection) => return dead_letter(&rejection),
        };
        let Some(raw) = raws.get(index) else {
            return Decision::DeadLetter {
                reason: "malformed",
                detail: format!("the body has no event {index}"),
            };
        };
        match raw.validate(&self.accounts, &self.hasher, now) {
            Ok(event) => Decision::Many {
                event_time: event.time,
                events: vec![event],
                rejected: Vec::new(),
            },
            Err(rejection) => Decision::Many {
                events: Vec::new(),
                rejected: vec![(
                    rejection.code(),
                    format!(
                        "event {index} of the body: {}",
                        dead_letter::detail(&rejection)
                    ),
                )],
                event_time: i64::MIN,
            },
        }
    }

    /// The key that hashes user ids and digests dead-lettered payloads.
    pub(crate) fn hasher(&self) -> &UserHasher {
        &self.hasher
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

    /// Produces the outputs of `batch` into the open transaction: events and
    /// markers to the internal topic, rejections to the dead-letter topic.
    pub(crate) fn produce_batch(
        &self,
        producer: &forward::Producer,
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
                    producer,
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
                        self.send_dead_letter(producer, message, reason, detail)?;
                    }
                }
                Decision::Ignored => {
                    counts.ignored += 1;
                    let (key, payload) = encoder.ignored(&source);
                    forward::send(
                        producer,
                        BaseRecord::to(&self.internal).key(key).payload(payload),
                    )?;
                }
                Decision::DeadLetter { reason, detail } => {
                    counts.dead_lettered += 1;
                    self.send_dead_letter(producer, message, reason, detail)?;
                }
            }
        }
        Ok(counts)
    }

    fn send_dead_letter(
        &self,
        producer: &forward::Producer,
        message: &OwnedMessage,
        reason: &'static str,
        detail: &str,
    ) -> Result<(), IngestError> {
        let (topic, key, payload, headers) = self.dead_letter_record(message, reason, detail);
        let mut record = BaseRecord::to(topic).payload(&payload).headers(headers);
        if let Some(key) = &key {
            record = record.key(key);
        }
        forward::send(producer, record)?;
        Ok(())
    }

    /// The dead letter of `message` for `reason`: its payload reduced to
    /// the fields of its format, user ids and key hashed (unless configured
    /// otherwise), cut to size (module `dead_letter`).
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
        // A topic without a decoder has none to read either: as opaque bytes.
        let format = self
            .decoders
            .get(message.topic())
            .map_or(Format::AvroConfluent, Decoder::format);
        let written = dead_letter::payload(
            message.payload().unwrap_or_default(),
            format,
            self.dead_letters,
            &self.hasher,
        );
        if let Some((size, digest)) = &written.original {
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
        let key = message
            .key()
            .map(|key| dead_letter::key(key, self.dead_letters, &self.hasher));
        (self.dead_letter.as_str(), key, written.bytes, headers)
    }
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

pub(crate) fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
