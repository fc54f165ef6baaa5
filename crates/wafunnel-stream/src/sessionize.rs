//! `wafunnel sessionize`: internal topic → one sessionizer per partition →
//! ClickHouse.
//!
//! Contract:
//! - Instances share the work in one consumer group (`kafka.sessionize_group`)
//!   over the internal and dead-letter topics, read with `read_committed`.
//!   Any number of instances gives the same tables: a partition's state is a
//!   pure function of the partition's records, whoever processes them.
//! - On assignment, before the partition's first record is processed, its
//!   state is restored from the newest usable snapshot in the state topic
//!   ([`crate::state`]) and consumption starts at the snapshot's offset; with
//!   no usable snapshot it starts from the beginning and replays. Dead-letter
//!   partitions are always replayed (they hold only counts).
//! - On revocation the partition's pending rows are written, its offsets
//!   committed and its state snapshotted before it is given up, so the next
//!   owner starts where this one stopped. If that cannot finish in time
//!   (ClickHouse down), the work is dropped and the next owner reproduces it
//!   exactly from the last snapshot. Records of a partition not (or no
//!   longer) assigned, or below its resume offset, are skipped, so nothing
//!   is applied twice.
//! - Rows are full state, versioned by the next offset of their partition,
//!   so rows rewritten after a restore, or written late by an instance that
//!   lost the partition, are identical or older than what ClickHouse keeps:
//!   the views do not change.
//! - A batch is written to ClickHouse, retrying while it is unavailable;
//!   only then are its Conversions API exports produced to the capi topic
//!   and acknowledged ([`crate::exports`]), and only then are its offsets
//!   committed. The batch is delivered in the background while the next one
//!   is collected and applied ([`crate::in_flight`]), but at most one is in
//!   flight: the next is taken from the sessionizers only once the previous
//!   one was acknowledged, in order, so while ClickHouse is down
//!   consumption stops after one more batch (memory stays bounded by two).
//! - When a partition's snapshot is due, and when stopping, the batch is
//!   delivered before anything more is applied, and the snapshot taken
//!   after its acknowledgement: it holds exactly the state whose rows are
//!   all acknowledged. A snapshot therefore never runs ahead of ClickHouse
//!   or of the capi topic. A revocation waits for the batch in flight
//!   before it writes, commits and snapshots the revoked partitions. A
//!   batch that fails (refused, or the stop abandoned) stops the service
//!   with every partition given up unsnapshotted: their next owners replay
//!   from the last snapshots. Committed offsets report progress and lag;
//!   restores use snapshots.
//! - Every internal record is counted as applied, duplicate or late, every
//!   dead letter as dead-lettered, per source topic and partition, in
//!   `record_outcomes` (the `input_accounting` view sums them). The counts
//!   are cumulative and part of the snapshot. The source of an internal
//!   record is read from its payload, or from its headers for records of
//!   the earlier JSON form ([`crate::internal`]), which are read as before.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use wafunnel_core::config::{Accounts, Windows};
use wafunnel_core::sessionizer::{Outcome, Sessionizer};
use wafunnel_core::time::DAY_MS;
use wafunnel_core::wire::{Content, Source};

use crate::check::CANARY_ACCOUNT;
use crate::exports::{ExportError, ExportProducer};
use crate::in_flight::{InFlight, Settled};
use crate::internal;
use crate::sink::{
    Batch, CanaryWrite, LateWrite, OutcomeWrite, ReasonWrite, Sink, SinkError, UnknownNumberWrite,
};
use crate::state::{OutcomeCount, SnapshotError, StateStore};
use wafunnel_runtime::config::Config;
use wafunnel_runtime::error::{Classify, Fault};
use wafunnel_runtime::kafka::ConnectError;
use wafunnel_runtime::kafka::{self, blocking, LogContext};
use wafunnel_runtime::metrics::metrics;
use wafunnel_runtime::shutdown::Shutdown;

/// Why sessionize stopped.
#[derive(Debug, thiserror::Error)]
pub enum SessionizeError {
    /// Kafka failed in a way retrying does not fix (bad topic, bad settings).
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The brokers cannot be used with these settings.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// ClickHouse refused in a way retrying does not fix.
    #[error("clickhouse: {0}")]
    Sink(#[from] SinkError),
    /// The state store could not be set up.
    #[error("state: {0}")]
    State(#[from] SnapshotError),
    /// Conversions API exports could not be delivered to their topic.
    #[error(transparent)]
    Exports(#[from] ExportError),
    /// Bad configuration or topics.
    #[error("{0}")]
    Config(String),
}

impl Classify for SessionizeError {
    fn fault(&self) -> Fault {
        match self {
            SessionizeError::Kafka(_) | SessionizeError::Config(_) => Fault::User,
            SessionizeError::Connect(e) => e.fault(),
            SessionizeError::Sink(e) => e.fault(),
            SessionizeError::State(_) => Fault::External,
            SessionizeError::Exports(e) => e.fault(),
        }
    }

    fn is_retryable(&self) -> bool {
        false
    }
}

type SourceKey = (String, u32);

const OUTCOMES: [&str; 5] = ["applied", "duplicate", "late", "dead_lettered", "ignored"];

#[derive(Debug)]
struct Worker {
    sessionizer: Sessionizer,
    next_offset: i64,
    outcomes: BTreeMap<(SourceKey, &'static str), u64>,
    dirty: bool,
    generation: u64,
    since_snapshot: u64,
    last_snapshot: Instant,
    /// Offset of the newest snapshot written or restored.
    snapshot_offset: Option<i64>,
    /// Records below this offset are no longer needed: the snapshot before
    /// the newest one starts there (one snapshot of margin).
    deletable_below: Option<i64>,
}

impl Worker {
    fn outcome_counts(&self) -> Vec<OutcomeCount> {
        self.outcomes
            .iter()
            .map(|(((topic, partition), outcome), records)| OutcomeCount {
                source_topic: topic.clone(),
                source_partition: *partition,
                outcome: (*outcome).to_owned(),
                records: *records,
            })
            .collect()
    }
}

/// Counts the dead letters of one dead-letter partition. The counts are
/// cumulative state, read back from ClickHouse (the `record_outcomes` rows
/// this worker wrote, acknowledged before their offsets were committed)
/// when the partition is assigned, never recomputed from the topic, whose
/// retention may have deleted old dead letters. Until then the partition is
/// paused and `restored` is false.
///
/// The counts per reason and day are kept the same way, each with the
/// offset below which it holds every dead letter of its key (its version
/// when restored): a dead letter below it, consumed again after a restart,
/// is already in the count and is not added twice. So are the bodies of
/// each unknown phone number id, with the first and last time seen.
#[derive(Debug, Default)]
struct DeadLetterWorker {
    next_offset: i64,
    counts: BTreeMap<SourceKey, u64>,
    reasons: BTreeMap<ReasonKey, ReasonTally>,
    unknown_numbers: BTreeMap<String, NumberTally>,
    dirty: bool,
    restored: bool,
}

/// The `unknown_phone_number` dead letters of one phone number id.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct NumberTally {
    bodies: u64,
    /// Kafka timestamps, in seconds, of the first and last counted.
    first_seen: u32,
    last_seen: u32,
    /// Every dead letter of the id below this offset is in `bodies`.
    counted_below: i64,
    /// Changed since the last batch.
    changed: bool,
}

/// A dead letter as the worker counts it.
#[derive(Debug)]
struct DeadLetter {
    source: SourceKey,
    reason: ReasonKey,
    /// The phone number id of an `unknown_phone_number` one.
    unknown_number: Option<String>,
    /// Its Kafka timestamp, in seconds.
    seconds: u32,
}

/// A dead letter's reason and the UTC day (days since 1970-01-01) of its
/// Kafka timestamp.
type ReasonKey = (String, u16);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct ReasonTally {
    records: u64,
    /// Every dead letter of the key below this offset is in `records`.
    counted_below: i64,
    /// Changed since the last batch.
    changed: bool,
}

impl DeadLetterWorker {
    /// Counts the dead letter at `offset`.
    fn count(&mut self, letter: DeadLetter, offset: i64) {
        *self.counts.entry(letter.source).or_default() += 1;
        let reason = letter.reason.0.clone();
        let tally = self.reasons.entry(letter.reason).or_default();
        if offset >= tally.counted_below {
            tally.records += 1;
            tally.changed = true;
            metrics().dead_letters(&reason).inc();
        }
        if let Some(number) = letter.unknown_number {
            let tally = self.unknown_numbers.entry(number).or_default();
            if offset >= tally.counted_below {
                tally.first_seen = if tally.bodies == 0 {
                    letter.seconds
                } else {
                    tally.first_seen.min(letter.seconds)
                };
                tally.last_seen = tally.last_seen.max(letter.seconds);
                tally.bodies += 1;
                tally.changed = true;
            }
        }
        self.next_offset = offset + 1;
        self.dirty = true;
    }

    /// A re-drive marker: its dead letter's record is counted again in its
    /// new outcome, so it no longer counts as dead-lettered. The marker
    /// follows its dead letter on the same partition, so the count holds it.
    fn uncount(&mut self, source: SourceKey, offset: i64) {
        let count = self.counts.entry(source).or_default();
        *count = count.saturating_sub(1);
        self.next_offset = offset + 1;
        self.dirty = true;
    }
}

/// How a dead letter is counted: its source, reason and day, and for
/// `unknown_phone_number` the id its detail names ("phone_number_id
/// `<id>` is not configured for any account").
fn dead_letter(message: &BorrowedMessage<'_>) -> DeadLetter {
    let reason = reason_key(message);
    let unknown_number = (reason.0 == "unknown_phone_number")
        .then(|| kafka::header(message, kafka::DETAIL).and_then(named_number))
        .flatten();
    let ms = message.timestamp().to_millis().unwrap_or(0);
    DeadLetter {
        source: source(message),
        reason,
        unknown_number,
        seconds: u32::try_from(ms.div_euclid(1000)).unwrap_or(0),
    }
}

/// The id in "phone_number_id `<id>` ...", if it is one (up to 64
/// characters, without spaces or backticks; `<withheld>` is not).
fn named_number(detail: &str) -> Option<String> {
    let rest = detail.strip_prefix("phone_number_id `")?;
    let (id, _) = rest.split_once('`')?;
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    valid.then(|| id.to_owned())
}

/// The reason and day of a dead letter.
fn reason_key(message: &BorrowedMessage<'_>) -> ReasonKey {
    let reason = kafka::header(message, kafka::REASON).unwrap_or("unknown");
    let ms = message.timestamp().to_millis().unwrap_or(0);
    let day = u16::try_from(ms.div_euclid(DAY_MS)).unwrap_or(0);
    (reason.to_owned(), day)
}

/// The consumer's context: logs, restores state on assignment, and hands
/// partitions over on revocation. It holds the partitions' work because
/// rebalance callbacks run inside `recv`, where the consuming loop cannot
/// act; the loop takes the lock between its awaits, never across one.
struct SessionizeContext {
    internal: String,
    dead: String,
    store: Arc<StateStore>,
    outputs: Outputs,
    windows: Windows,
    accounts: Accounts,
    owned: Mutex<Partitions>,
    shutdown: Shutdown,
    /// Set when a partition cannot be resumed exactly; the loop stops on it.
    fatal: Mutex<Option<String>>,
    /// The batch delivered while the loop collects the next; settled by the
    /// loop, or by a revocation before it gives partitions up. Held across
    /// the wait, so a revocation can never miss a batch being settled.
    in_flight: tokio::sync::Mutex<InFlight<TopicPartitionList, SessionizeError>>,
    /// A batch in flight failed while a revocation settled it; the loop stops on it.
    failed: Mutex<Option<SessionizeError>>,
}

wafunnel_runtime::logs_like_log_context!(SessionizeContext);

impl ConsumerContext for SessionizeContext {
    // Assignment is done here rather than by the default handler so that each
    // partition starts at the offset of the state it was restored to.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let internal: Vec<u32> = partitions
                    .elements()
                    .iter()
                    .filter(|e| e.topic() == self.internal)
                    .map(|e| e.partition() as u32)
                    .collect();
                // Partitions are restored side by side: reading a snapshot
                // waits on the broker as much as it decodes.
                let restored: Vec<(u32, Option<Worker>)> = blocking(|| {
                    std::thread::scope(|scope| {
                        let restoring: Vec<_> = internal
                            .iter()
                            .map(|&p| (p, scope.spawn(move || self.restore(p))))
                            .collect();
                        restoring
                            .into_iter()
                            .map(|(p, restore)| {
                                let worker = restore.join().unwrap_or_else(|_| {
                                    tracing::error!(
                                        partition = p,
                                        "restore failed, replaying the partition from its beginning"
                                    );
                                    Some(self.fresh(p))
                                });
                                (p, worker)
                            })
                            .collect()
                    })
                });
                // A refused partition is not assigned: nothing of it is
                // counted under the new settings before the loop stops.
                let restored: Vec<(u32, Worker)> = restored
                    .into_iter()
                    .filter_map(|(p, worker)| Some((p, worker?)))
                    .collect();
                let mut assignment = TopicPartitionList::new();
                let mut paused = TopicPartitionList::new();
                for (partition, worker) in &restored {
                    self.check_replayable(consumer, *partition, worker);
                }
                let mut owned = self.lock();
                for (partition, worker) in restored {
                    add_offset(
                        &mut assignment,
                        &self.internal,
                        partition,
                        worker.next_offset,
                    );
                    owned.workers.insert(partition, worker);
                }
                for element in partitions.elements() {
                    if element.topic() == self.internal {
                        continue;
                    }
                    let partition = element.partition() as u32;
                    owned.dead.insert(partition, DeadLetterWorker::default());
                    if let Err(e) = paused.add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Beginning,
                    ) {
                        tracing::error!(partition, error = %e, "cannot add partition to pause");
                    }
                    if let Err(e) = assignment.add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Beginning,
                    ) {
                        tracing::error!(partition, error = %e, "cannot add partition to assignment");
                    }
                }
                drop(owned);
                tracing::info!(partitions = assignment.count(), "partitions assigned");
                if let Err(e) = consumer.assign(&assignment) {
                    tracing::error!(error = %e, "failed to assign partitions");
                }
                // Dead-letter partitions wait for their counts (restored by the loop).
                if paused.count() > 0 {
                    if let Err(e) = consumer.pause(&paused) {
                        tracing::error!(error = %e, "failed to pause dead-letter partitions");
                    }
                }
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::error!(error = ?err, "rebalance error, giving up the assignment");
                }
                let leaving = {
                    let mut owned = self.lock();
                    let mut leaving = Partitions::default();
                    for element in partitions.elements() {
                        let partition = element.partition() as u32;
                        if element.topic() == self.internal {
                            if let Some(worker) = owned.workers.remove(&partition) {
                                leaving.workers.insert(partition, worker);
                            }
                        } else if let Some(worker) = owned.dead.remove(&partition) {
                            leaving.dead.insert(partition, worker);
                        }
                    }
                    let (gone, kept) = std::mem::take(&mut owned.late)
                        .into_iter()
                        .partition(|l| leaving.workers.contains_key(&l.partition));
                    owned.late = kept;
                    leaving.late = gone;
                    leaving
                };
                tracing::info!(partitions = partitions.count(), "partitions revoked");
                self.hand_over(consumer, leaving);
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "failed to unassign partitions");
                }
            }
        }
    }
}

/// How long a revoked partition's last batch may take before it is dropped
/// (its next owner then replays it) rather than stall the group's rebalance.
const HAND_OVER_WAIT: Duration = Duration::from_secs(15);

impl SessionizeContext {
    fn lock(&self) -> std::sync::MutexGuard<'_, Partitions> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Settles the batch in flight, then writes the revoked partitions'
    /// work, commits their offsets and snapshots their state, so that the
    /// next owner starts where this one stopped. Best effort: whatever
    /// fails here, the next owner reproduces the same rows from the last
    /// snapshot.
    fn hand_over(&self, consumer: &BaseConsumer<Self>, mut leaving: Partitions) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let deadline = Instant::now() + HAND_OVER_WAIT;
        // The batch in flight may hold rows of the leaving partitions that
        // their snapshots would cover: it is acknowledged first, or nothing
        // of theirs is committed or snapshotted.
        let settled = tokio::task::block_in_place(|| {
            handle.block_on(async {
                let mut in_flight = self.in_flight.lock().await;
                in_flight.settle_before(deadline).await
            })
        });
        match settled {
            Some(Settled::Idle) => {}
            Some(Settled::Acknowledged { completes, elapsed }) => {
                tracing::debug!(elapsed_ms = elapsed.as_millis() as u64, "batch written");
                if let Err(e) = consumer.commit(&completes, CommitMode::Sync) {
                    tracing::warn!(error = %e, "failed to commit offsets before a revocation");
                }
            }
            None => {
                // It goes on in the background; the loop settles it later.
                tracing::warn!(
                    "batch in flight not acknowledged in time, the revoked partitions' next owner replays them"
                );
                return;
            }
            Some(Settled::Failed(e)) => {
                tracing::warn!(error = %e, "batch in flight not delivered, the revoked partitions' next owner replays them");
                self.forget_undelivered();
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return;
            }
        }
        let (batch, offsets) = leaving.take_batch(&self.internal, &self.dead);
        let written = batch.is_empty()
            || tokio::task::block_in_place(|| {
                handle.block_on(tokio::time::timeout_at(
                    deadline.into(),
                    self.outputs.deliver(&batch, &self.shutdown),
                ))
            })
            .is_ok_and(|r| r.is_ok());
        if !written {
            tracing::warn!("revoked partitions not flushed, their next owner replays them");
            return;
        }
        if offsets.count() > 0 {
            if let Err(e) = consumer.commit(&offsets, CommitMode::Sync) {
                tracing::warn!(error = %e, "failed to commit offsets of revoked partitions");
            }
        }
        for (&partition, worker) in leaving.workers.iter_mut() {
            if worker.since_snapshot > 0 {
                snapshot(&self.store, partition, worker);
            }
        }
    }

    /// Drops every partition's work after a batch could not be delivered:
    /// its rows were drained from the sessionizers, so no state that covers
    /// them may be snapshotted or handed over. The partitions' next owners
    /// (this instance after a restart, or another) replay them from their
    /// last snapshots.
    fn forget_undelivered(&self) {
        let mut owned = self.lock();
        tracing::warn!(
            partitions = owned.workers.len(),
            "batch not delivered, its partitions are given up without a snapshot"
        );
        *owned = Partitions::default();
    }

    /// A partition resumes at its snapshot's offset, or replays from its
    /// beginning; either is exact only if no record after that point was
    /// deleted (by the trimming below, or by a retention). If one was, the
    /// service stops: counting on would silently miss records.
    fn check_replayable(&self, consumer: &BaseConsumer<Self>, partition: u32, worker: &Worker) {
        let Ok((low, _)) =
            consumer.fetch_watermarks(&self.internal, partition as i32, Duration::from_secs(10))
        else {
            return;
        };
        if worker.next_offset < low {
            let message = format!(
                "internal partition {partition} would resume at offset {} but its records before {low} were deleted (no usable state snapshot: changed windows, or a lost state topic); rebuild it from the raw topics (README: rebuilding)",
                worker.next_offset
            );
            tracing::error!(
                partition,
                resume = worker.next_offset,
                log_start = low,
                "cannot resume exactly"
            );
            *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
        }
    }

    /// An empty partition state, to be rebuilt by replaying from the beginning.
    fn fresh(&self, partition: u32) -> Worker {
        Worker {
            sessionizer: Sessionizer::new(partition, self.windows, self.accounts.clone()),
            next_offset: 0,
            outcomes: BTreeMap::new(),
            dirty: false,
            generation: 0,
            since_snapshot: 0,
            last_snapshot: Instant::now(),
            snapshot_offset: None,
            deletable_below: None,
        }
    }

    /// The partition's worker, or `None` (and the service stopping) if its
    /// snapshot refuses the configured settings.
    fn restore(&self, partition: u32) -> Option<Worker> {
        let started = Instant::now();
        match self.store.load(partition, self.windows, &self.accounts) {
            Ok(Some(restored)) => {
                let mut outcomes = BTreeMap::new();
                for count in restored.outcomes {
                    match OUTCOMES.iter().find(|o| **o == count.outcome) {
                        Some(outcome) => {
                            outcomes.insert(
                                ((count.source_topic, count.source_partition), *outcome),
                                count.records,
                            );
                        }
                        None => tracing::warn!(
                            partition,
                            outcome = count.outcome,
                            "unknown outcome in snapshot ignored"
                        ),
                    }
                }
                let elapsed = started.elapsed();
                metrics().restores_from_snapshot.inc();
                metrics().restore_seconds.inc_by(elapsed.as_secs_f64());
                tracing::info!(
                    partition,
                    next_offset = restored.next_offset,
                    bytes = restored.bytes,
                    conversations = restored.sessionizer.stats().conversations,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "state restored from snapshot"
                );
                Some(Worker {
                    sessionizer: restored.sessionizer,
                    next_offset: restored.next_offset,
                    outcomes,
                    dirty: false,
                    generation: restored.generation,
                    since_snapshot: 0,
                    last_snapshot: Instant::now(),
                    snapshot_offset: Some(restored.next_offset),
                    deletable_below: None,
                })
            }
            Ok(None) => {
                metrics().restores_from_beginning.inc();
                tracing::info!(
                    partition,
                    "no snapshot, replaying the partition from its beginning"
                );
                Some(self.fresh(partition))
            }
            Err(e @ SnapshotError::AccountSettingsChanged { .. }) => {
                tracing::error!(partition, error = %e, "account settings changed");
                let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
                fatal.get_or_insert(e.to_string());
                None
            }
            Err(e) => {
                metrics().restores_from_beginning.inc();
                tracing::warn!(
                    partition,
                    error = %e,
                    "snapshot unusable, replaying the partition from its beginning"
                );
                Some(self.fresh(partition))
            }
        }
    }
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

/// Adds one record of `source` to its outcome's count. The key is built
/// from a buffer kept between records: a record of a source already
/// counted allocates nothing.
fn count_outcome(
    outcomes: &mut BTreeMap<(SourceKey, &'static str), u64>,
    source: &Source<'_>,
    outcome: &'static str,
) {
    thread_local! {
        static KEY: std::cell::RefCell<(SourceKey, &'static str)> =
            const { std::cell::RefCell::new(((String::new(), 0), "")) };
    }
    KEY.with_borrow_mut(|key| {
        key.0 .0.clear();
        key.0 .0.push_str(source.topic);
        key.0 .1 = source.partition;
        key.1 = outcome;
        match outcomes.get_mut(key) {
            Some(records) => *records += 1,
            None => {
                outcomes.insert(key.clone(), 1);
            }
        }
    });
}

#[derive(Debug, Default)]
struct Partitions {
    workers: HashMap<u32, Worker>,
    dead: HashMap<u32, DeadLetterWorker>,
    late: Vec<LateWrite>,
    canaries: Vec<CanaryWrite>,
}

impl Partitions {
    /// Everything changed since the last batch, and the offsets that batch completes.
    fn take_batch(&mut self, internal: &str, dead: &str) -> (Batch, TopicPartitionList) {
        let mut batch = Batch {
            late: std::mem::take(&mut self.late),
            canaries: std::mem::take(&mut self.canaries),
            ..Batch::default()
        };
        let mut offsets = TopicPartitionList::new();
        for (&partition, worker) in self.workers.iter_mut().filter(|(_, w)| w.dirty) {
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
            add_offset(&mut offsets, internal, partition, worker.next_offset);
        }
        for (&partition, worker) in self.dead.iter_mut().filter(|(_, w)| w.dirty) {
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
            for ((reason, day), tally) in worker.reasons.iter_mut().filter(|(_, t)| t.changed) {
                tally.changed = false;
                batch.reasons.push(ReasonWrite {
                    worker_topic: dead.to_owned(),
                    worker_partition: partition,
                    reason: reason.clone(),
                    day: *day,
                    records: tally.records,
                    version: worker.next_offset as u64,
                });
            }
            for (number, tally) in worker.unknown_numbers.iter_mut().filter(|(_, t)| t.changed) {
                tally.changed = false;
                batch.unknown_numbers.push(UnknownNumberWrite {
                    worker_topic: dead.to_owned(),
                    worker_partition: partition,
                    phone_number_id: number.clone(),
                    first_seen: tally.first_seen,
                    last_seen: tally.last_seen,
                    bodies: tally.bodies,
                    version: worker.next_offset as u64,
                });
            }
            add_offset(&mut offsets, dead, partition, worker.next_offset);
        }
        (batch, offsets)
    }

    /// The offsets in `offsets` of the partitions still owned.
    fn owned_offsets(&self, offsets: &TopicPartitionList, internal: &str) -> TopicPartitionList {
        let mut owned = TopicPartitionList::new();
        for element in offsets.elements() {
            let partition = element.partition() as u32;
            let held = if element.topic() == internal {
                self.workers.contains_key(&partition)
            } else {
                self.dead.contains_key(&partition)
            };
            if !held {
                continue;
            }
            if let Err(e) =
                owned.add_partition_offset(element.topic(), element.partition(), element.offset())
            {
                tracing::error!(partition, error = %e, "cannot add offset to commit");
            }
        }
        owned
    }
}

fn add_offset(offsets: &mut TopicPartitionList, topic: &str, partition: u32, next: i64) {
    if let Err(e) = offsets.add_partition_offset(topic, partition as i32, Offset::Offset(next)) {
        tracing::error!(partition, error = %e, "cannot add offset to commit");
    }
}

/// Runs sessionize until `shutdown` stops it: the batch in hand is
/// written, its offsets committed, the partitions snapshotted, and the
/// group left. Returns the records processed.
pub async fn run(cfg: &Config, shutdown: Shutdown) -> Result<u64, SessionizeError> {
    let windows: Windows = cfg
        .windows()
        .map_err(|e| SessionizeError::Config(e.to_string()))?;
    let accounts: Accounts = cfg
        .accounts()
        .map_err(|e| SessionizeError::Config(e.to_string()))?;
    let partitions = match kafka::connect(&cfg.kafka, &shutdown).await {
        Ok(partitions) => partitions,
        // Stopped before there was anything to do: a clean stop.
        Err(ConnectError::Stopped(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    match crate::sink::wait_until_migrated(&cfg.clickhouse, &shutdown).await {
        Ok(()) => {}
        Err(SinkError::Abandoned) => return Ok(0),
        Err(e) => return Err(e.into()),
    }
    let internal = cfg.topics.internal.clone();
    let dead = cfg.topics.dead_letter.clone();
    for topic in [&internal, &dead, &cfg.topics.state] {
        if !partitions.contains_key(topic.as_str()) {
            return Err(SessionizeError::Config(format!(
                "topic {topic} does not exist (create it, e.g. with `wafunnel check --create-topics`)"
            )));
        }
    }
    let store = Arc::new(StateStore::new(cfg, partitions[cfg.topics.state.as_str()])?);
    let outputs = Outputs {
        sink: Sink::new(&cfg.clickhouse, accounts.clone()),
        exports: Arc::new(ExportProducer::new(cfg)?),
    };
    let context = SessionizeContext {
        internal: internal.clone(),
        dead: dead.clone(),
        store: Arc::clone(&store),
        outputs: outputs.clone(),
        windows,
        accounts,
        owned: Mutex::new(Partitions::default()),
        shutdown: shutdown.clone(),
        fatal: Mutex::new(None),
        in_flight: tokio::sync::Mutex::default(),
        failed: Mutex::new(None),
    };
    let admin: Option<AdminClient<LogContext>> = if cfg.state.delete_snapshotted_records {
        Some(kafka::create(&kafka::client_config(&cfg.kafka))?)
    } else {
        None
    };
    let consumer: StreamConsumer<SessionizeContext> =
        kafka::committing_consumer_config(&cfg.kafka, &cfg.kafka.sessionize_group)
            // The rebalance handler assigns and unassigns whole sets: an eager protocol.
            .set("partition.assignment.strategy", "roundrobin")
            .create_with_context(context)
            .map_err(kafka::redact)?;
    consumer.subscribe(&[&internal, &dead])?;
    metrics().set_ready(true);
    let flush_interval = Duration::from_millis(cfg.batch.flush_interval_ms);
    let snapshot_interval = Duration::from_millis(cfg.state.snapshot_interval_ms);
    let mut processed = 0u64;
    let mut last_gauges = Instant::now();
    tracing::info!(internal, dead_letter = dead, "sessionize started");
    loop {
        let fatal = consumer
            .context()
            .fatal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(message) = fatal {
            return Err(SessionizeError::Config(message));
        }
        restore_dead_letter_counts(&consumer, &outputs.sink, &dead).await?;
        let deadline = Instant::now() + flush_interval;
        let mut in_batch = 0usize;
        while in_batch < cfg.batch.max_records {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let received = tokio::select! {
                received = tokio::time::timeout(left, consumer.recv()) => received,
                () = shutdown.stopping() => break,
            };
            let message = match received {
                Ok(Ok(message)) => message,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consume error");
                    continue;
                }
                Err(_) => break,
            };
            let partition = message.partition() as u32;
            let mut guard = consumer.context().lock();
            let owned = &mut *guard;
            if message.topic() == dead {
                let Some(worker) = owned.dead.get_mut(&partition) else {
                    continue;
                };
                if !worker.restored || message.offset() < worker.next_offset {
                    continue;
                }
                in_batch += 1;
                processed += 1;
                if kafka::header(&message, crate::dead_letter::REDRIVEN).is_some() {
                    worker.uncount(source(&message), message.offset());
                    continue;
                }
                worker.count(dead_letter(&message), message.offset());
                metrics().sessionize_dead_lettered.inc();
                continue;
            }
            let Some(worker) = owned.workers.get_mut(&partition) else {
                continue;
            };
            if message.offset() < worker.next_offset {
                continue;
            }
            in_batch += 1;
            processed += 1;
            worker.next_offset = message.offset() + 1;
            worker.dirty = true;
            worker.since_snapshot += 1;
            let record = internal::decode(message.payload().unwrap_or_default(), |key| {
                kafka::header(&message, key)
            });
            let (source, outcome) = match record {
                Ok(record) => match record.content {
                    Content::Ignored => {
                        // A valid input record that had nothing to count: counted once.
                        metrics().sessionize_ignored.inc();
                        (record.source, "ignored")
                    }
                    // A check's canary only proves the path: it is recorded
                    // where the check reads it, never applied or counted.
                    Content::Event(event) if event.account_id == CANARY_ACCOUNT => {
                        owned.canaries.push(CanaryWrite {
                            canary_id: event.event_id,
                            partition,
                            offset: message.offset(),
                            event_time: event.time,
                        });
                        continue;
                    }
                    Content::Event(event) => match worker.sessionizer.apply(&event) {
                        Outcome::Applied => {
                            metrics().sessionize_applied.inc();
                            (record.source, "applied")
                        }
                        Outcome::Duplicate => {
                            metrics().sessionize_duplicate.inc();
                            (record.source, "duplicate")
                        }
                        Outcome::Late { watermark } => {
                            metrics().sessionize_late.inc();
                            owned.late.push(LateWrite {
                                topic: internal.clone(),
                                partition,
                                offset: message.offset(),
                                event_type: event.event_type().as_str().to_owned(),
                                event_time: event.time,
                                watermark,
                                reason:
                                    "older than the partition watermark minus the allowed lateness"
                                        .into(),
                                // Readable whatever the record's form.
                                raw: serde_json::to_string(&event).unwrap_or_default(),
                                account_id: event.account_id,
                                event_id: event.event_id,
                            });
                            (record.source, "late")
                        }
                    },
                },
                Err(undecodable) => {
                    // Only ingest writes this topic; a record it did not write
                    // is counted, logged and skipped rather than stopping the partition.
                    tracing::error!(partition, offset = message.offset(), error = %undecodable.error, "undecodable internal record");
                    (undecodable.source, "dead_lettered")
                }
            };
            count_outcome(&mut worker.outcomes, &source, outcome);
        }
        let stopping = shutdown.is_stopping();
        settle(&consumer).await?;
        let due = |worker: &Worker| {
            worker.since_snapshot > 0
                && (stopping
                    || worker.since_snapshot >= cfg.state.snapshot_records
                    || worker.last_snapshot.elapsed() >= snapshot_interval)
        };
        let snapshotting = stopping || consumer.context().lock().workers.values().any(due);
        if !snapshotting {
            start_delivery(&outputs, &consumer, &internal, &dead, &shutdown).await;
        } else {
            // A snapshot covers everything applied, so it is taken only once
            // all of it is acknowledged: this batch is delivered before
            // anything more is applied.
            flush(&outputs, &consumer, &internal, &dead, &shutdown).await?;
        }
        let mut deletable = TopicPartitionList::new();
        {
            let mut owned = consumer.context().lock();
            for (&partition, worker) in owned.workers.iter_mut() {
                if snapshotting && due(worker) {
                    snapshot(&store, partition, worker);
                    if let Some(below) = worker.deletable_below.take() {
                        add_offset(&mut deletable, &internal, partition, below);
                    }
                }
            }
            if last_gauges.elapsed() >= GAUGE_EVERY {
                last_gauges = Instant::now();
                update_gauges(&consumer, &internal, &owned.workers);
            }
        }
        if let (Some(admin), true) = (&admin, deletable.count() > 0) {
            delete_records(admin, &deletable).await;
        }
        if stopping {
            break;
        }
    }
    metrics().set_ready(false);
    // Dropping the consumer closes it: its partitions are revoked (handed
    // over, everything already written and snapshotted) and it leaves the
    // group, so the next owner starts now rather than after the session timeout.
    drop(consumer);
    tracing::info!(processed, "sessionize stopped");
    Ok(processed)
}

/// Reads back the counts of the dead-letter partitions assigned since the
/// last batch, then lets them be consumed from where those counts stop.
/// While ClickHouse is unavailable they stay paused (and are tried again
/// at the next batch); the internal partitions go on meanwhile.
async fn restore_dead_letter_counts(
    consumer: &StreamConsumer<SessionizeContext>,
    sink: &Sink,
    dead: &str,
) -> Result<(), SessionizeError> {
    let pending: Vec<u32> = consumer
        .context()
        .lock()
        .dead
        .iter()
        .filter(|(_, w)| !w.restored)
        .map(|(&p, _)| p)
        .collect();
    for partition in pending {
        let read = async {
            let counts = sink.dead_letter_counts(dead, partition).await?;
            let reasons = sink.dead_letter_reasons(dead, partition).await?;
            let numbers = sink.unknown_phone_numbers(dead, partition).await?;
            Ok::<_, SinkError>((counts, reasons, numbers))
        };
        let (counts, reasons, numbers) = match read.await {
            Ok(read) => read,
            Err(e) if e.is_retryable() => {
                tracing::warn!(partition, error = %e, "cannot read dead-letter counts yet, retrying");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let next_offset = counts.iter().map(|c| c.version as i64).max().unwrap_or(0);
        {
            let mut owned = consumer.context().lock();
            // Revoked meanwhile: the new owner restores it.
            let Some(worker) = owned.dead.get_mut(&partition) else {
                continue;
            };
            worker.counts = counts
                .into_iter()
                .map(|c| ((c.source_topic, c.source_partition), c.records))
                .collect();
            worker.reasons = reasons
                .into_iter()
                .map(|r| {
                    let tally = ReasonTally {
                        records: r.records,
                        counted_below: r.version as i64,
                        changed: false,
                    };
                    ((r.reason, r.day), tally)
                })
                .collect();
            worker.unknown_numbers = numbers
                .into_iter()
                .map(|n| {
                    let tally = NumberTally {
                        bodies: n.bodies,
                        first_seen: n.first_seen,
                        last_seen: n.last_seen,
                        counted_below: n.version as i64,
                        changed: false,
                    };
                    (n.phone_number_id, tally)
                })
                .collect();
            worker.next_offset = next_offset;
            worker.restored = true;
        }
        let mut tpl = TopicPartitionList::new();
        add_offset(&mut tpl, dead, partition, next_offset);
        // Below the log start (retention) the consumer resets to the
        // earliest record left, which is past what was counted anyway.
        if let Err(e) = consumer.seek(
            dead,
            partition as i32,
            Offset::Offset(next_offset),
            Duration::from_secs(5),
        ) {
            tracing::debug!(partition, error = %e, "seek of a dead-letter partition");
        }
        if let Err(e) = consumer.resume(&tpl) {
            tracing::warn!(partition, error = %e, "cannot resume a dead-letter partition");
        }
        tracing::info!(partition, next_offset, "dead-letter counts restored");
    }
    Ok(())
}

/// Deletes internal records no snapshot needs any more, so the internal
/// topic stops growing. A failure is logged; the next snapshot tries again.
async fn delete_records(admin: &AdminClient<LogContext>, below: &TopicPartitionList) {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match admin.delete_records(below, &options).await {
        Ok(result) => {
            for element in result.elements() {
                if let Err(e) = element.error() {
                    tracing::warn!(partition = element.partition(), error = %e, "cannot delete applied records");
                } else {
                    tracing::debug!(partition = element.partition(), below = ?element.offset(), "applied records deleted");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot delete applied records"),
    }
}

/// Saves a partition's state. A failure is logged and retried at the next
/// interval: an older snapshot, or none, is still a correct place to resume.
fn snapshot(store: &StateStore, partition: u32, worker: &mut Worker) {
    let started = Instant::now();
    worker.last_snapshot = started;
    let outcomes = worker.outcome_counts();
    match blocking(|| {
        store.save(
            partition,
            worker.generation + 1,
            worker.next_offset,
            outcomes,
            &worker.sessionizer,
        )
    }) {
        Ok(written) => {
            worker.generation = written.generation;
            worker.since_snapshot = 0;
            worker.deletable_below = worker.snapshot_offset.replace(worker.next_offset);
            metrics().snapshots_written.inc();
            metrics().snapshot_bytes.inc_by(written.bytes);
            tracing::debug!(
                partition,
                next_offset = worker.next_offset,
                bytes = written.bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "state snapshot written"
            );
        }
        Err(e) => {
            metrics().snapshots_failed.inc();
            tracing::warn!(partition, error = %e, "failed to write state snapshot");
        }
    }
}

/// How often the gauges that cost a scan or a broker round trip are updated.
const GAUGE_EVERY: Duration = Duration::from_secs(10);

fn update_gauges(
    consumer: &StreamConsumer<SessionizeContext>,
    internal: &str,
    workers: &HashMap<u32, Worker>,
) {
    let open: usize = workers
        .values()
        .map(|w| w.sessionizer.stats().conversations)
        .sum();
    metrics().open_conversations.set(open as i64);
    let mut lag = 0i64;
    for (&partition, worker) in workers {
        if let Ok((_, high)) =
            consumer.fetch_watermarks(internal, partition as i32, Duration::from_secs(1))
        {
            lag += (high - worker.next_offset).max(0);
        }
    }
    metrics().consumer_lag.set(lag);
}

/// Where a batch goes before its offsets are committed: the rows to
/// ClickHouse, the Conversions API exports to their topic.
#[derive(Clone, Debug)]
struct Outputs {
    sink: Sink,
    exports: Arc<ExportProducer>,
}

impl Outputs {
    /// Writes the rows, then produces the exports, each retried until
    /// acknowledged or the stop is abandoned.
    async fn deliver(&self, batch: &Batch, shutdown: &Shutdown) -> Result<(), SessionizeError> {
        self.sink.write_with_retry(batch, shutdown).await?;
        self.exports.deliver(batch, shutdown).await?;
        Ok(())
    }
}

/// Takes everything changed since the last batch and delivers it in the
/// background ([`crate::in_flight`]); its offsets are committed once it is
/// acknowledged ([`settle`]). Nothing may be in flight.
async fn start_delivery(
    outputs: &Outputs,
    consumer: &StreamConsumer<SessionizeContext>,
    internal: &str,
    dead: &str,
    shutdown: &Shutdown,
) {
    let (batch, offsets) = consumer.context().lock().take_batch(internal, dead);
    if batch.is_empty() {
        return;
    }
    let outputs = outputs.clone();
    let shutdown = shutdown.clone();
    consumer.context().in_flight.lock().await.start(
        async move { outputs.deliver(&batch, &shutdown).await },
        offsets,
    );
}

/// Waits for the batch in flight to be acknowledged, then commits the
/// offsets it completes (of the partitions still owned: a revocation that
/// could not wait for it gave the others up). A batch that failed stops
/// the loop, its partitions given up unsaved.
async fn settle(consumer: &StreamConsumer<SessionizeContext>) -> Result<(), SessionizeError> {
    let context = consumer.context();
    let failed = context
        .failed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(e) = failed {
        return Err(e);
    }
    let settled = context.in_flight.lock().await.settle().await;
    match settled {
        Settled::Idle => Ok(()),
        Settled::Acknowledged { completes, elapsed } => {
            tracing::debug!(elapsed_ms = elapsed.as_millis() as u64, "batch written");
            let offsets = context.lock().owned_offsets(&completes, &context.internal);
            if offsets.count() > 0 {
                if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
                    // Offsets only report progress here: the next start replays anyway.
                    tracing::warn!(error = %e, "failed to commit offsets");
                }
            }
            Ok(())
        }
        Settled::Failed(e) => {
            context.forget_undelivered();
            Err(e)
        }
    }
}

/// Writes everything changed since the last batch, then commits the
/// offsets. Nothing may be in flight.
async fn flush(
    outputs: &Outputs,
    consumer: &StreamConsumer<SessionizeContext>,
    internal: &str,
    dead: &str,
    shutdown: &Shutdown,
) -> Result<(), SessionizeError> {
    let (batch, offsets) = consumer.context().lock().take_batch(internal, dead);
    if batch.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    if let Err(e) = outputs.deliver(&batch, shutdown).await {
        consumer.context().forget_undelivered();
        return Err(e);
    }
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

#[cfg(test)]
mod tests {
    use wafunnel_core::event::Rejection;

    use super::*;

    fn worker(next_offset: i64, dirty: bool) -> Worker {
        let mut outcomes = BTreeMap::new();
        outcomes.insert((("raw".to_owned(), 0), "applied"), 3);
        Worker {
            sessionizer: Sessionizer::new(0, Windows::default(), Accounts::default()),
            next_offset,
            outcomes,
            dirty,
            generation: 0,
            since_snapshot: 0,
            last_snapshot: Instant::now(),
            snapshot_offset: None,
            deletable_below: None,
        }
    }

    fn late(partition: u32) -> LateWrite {
        LateWrite {
            topic: "events".into(),
            partition,
            offset: 4,
            account_id: "act".into(),
            event_id: "e".into(),
            event_type: "ad_click".into(),
            event_time: 0,
            watermark: 0,
            reason: "late".into(),
            raw: "{}".into(),
        }
    }

    fn offsets(list: &TopicPartitionList) -> Vec<(String, i32, Offset)> {
        list.elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), e.offset()))
            .collect()
    }

    #[test]
    fn a_batch_holds_what_changed_and_the_offsets_it_completes() {
        let mut owned = Partitions::default();
        owned.workers.insert(0, worker(10, true));
        owned.workers.insert(1, worker(7, false));
        owned.dead.insert(
            0,
            DeadLetterWorker {
                next_offset: 2,
                counts: BTreeMap::from([(("raw".to_owned(), 1), 2)]),
                reasons: BTreeMap::from([(
                    ("malformed".to_owned(), 20514),
                    ReasonTally {
                        records: 2,
                        counted_below: 0,
                        changed: true,
                    },
                )]),
                unknown_numbers: BTreeMap::from([(
                    "406540352242922".to_owned(),
                    NumberTally {
                        bodies: 1,
                        first_seen: 100,
                        last_seen: 100,
                        counted_below: 0,
                        changed: true,
                    },
                )]),
                dirty: true,
                restored: true,
            },
        );
        owned.late.push(late(0));

        let (batch, committed) = owned.take_batch("events", "dead");
        assert_eq!(batch.changes.len(), 1, "only the partition that changed");
        assert_eq!((batch.changes[0].0, batch.changes[0].1), (0, 10));
        let outcomes: Vec<(&str, &str, u64, u64)> = batch
            .outcomes
            .iter()
            .map(|o| (o.stage.as_str(), o.outcome.as_str(), o.records, o.version))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("sessionize", "applied", 3, 10),
                ("dead_letter", "dead_lettered", 2, 2)
            ]
        );
        assert_eq!(batch.late.len(), 1);
        let reasons: Vec<(&str, u16, u64, u64)> = batch
            .reasons
            .iter()
            .map(|r| (r.reason.as_str(), r.day, r.records, r.version))
            .collect();
        assert_eq!(reasons, [("malformed", 20514, 2, 2)]);
        assert_eq!(
            batch.unknown_numbers,
            [UnknownNumberWrite {
                worker_topic: "dead".into(),
                worker_partition: 0,
                phone_number_id: "406540352242922".into(),
                first_seen: 100,
                last_seen: 100,
                bodies: 1,
                version: 2,
            }]
        );
        assert_eq!(
            offsets(&committed),
            [
                ("events".to_owned(), 0, Offset::Offset(10)),
                ("dead".to_owned(), 0, Offset::Offset(2))
            ]
        );

        let (again, committed) = owned.take_batch("events", "dead");
        assert!(again.is_empty(), "nothing changed since");
        assert_eq!(committed.count(), 0);
    }

    #[test]
    fn a_re_drive_marker_takes_its_record_off_the_dead_lettered_count() {
        let mut worker = DeadLetterWorker {
            restored: true,
            ..DeadLetterWorker::default()
        };
        let source = || ("raw".to_owned(), 0);
        let letter = || DeadLetter {
            source: source(),
            reason: ("unknown_phone_number".to_owned(), 20514),
            unknown_number: Some("406540352242922".into()),
            seconds: 0,
        };
        worker.count(letter(), 0);
        worker.count(letter(), 1);
        worker.dirty = false;
        worker.uncount(source(), 2);
        assert_eq!(worker.counts[&source()], 1);
        assert_eq!(worker.next_offset, 3);
        assert!(worker.dirty, "the lower count is written");
        // The dead letters stay in the reasons and unknown numbers they had.
        assert_eq!(worker.reasons.values().map(|t| t.records).sum::<u64>(), 2);
        assert_eq!(worker.unknown_numbers["406540352242922"].bodies, 2);
    }

    #[test]
    fn a_restored_reason_count_takes_no_dead_letter_twice() {
        // Restored: 3 malformed dead letters on day 20514, below offset 10,
        // while the partition's outcomes (written after the reasons) only
        // reached offset 8: offsets 8 and 9 are consumed again.
        let mut worker = DeadLetterWorker {
            next_offset: 8,
            reasons: BTreeMap::from([(
                ("malformed".to_owned(), 20514),
                ReasonTally {
                    records: 3,
                    counted_below: 10,
                    changed: false,
                },
            )]),
            restored: true,
            ..DeadLetterWorker::default()
        };
        let source = || ("raw".to_owned(), 0);
        let letter = |reason: &str, day| DeadLetter {
            source: source(),
            reason: (reason.to_owned(), day),
            unknown_number: None,
            seconds: 0,
        };
        worker.count(letter("malformed", 20514), 8);
        worker.count(letter("malformed", 20514), 9);
        worker.count(letter("malformed", 20514), 10);
        worker.count(letter("unknown_type", 20515), 11);
        let tallies: Vec<(&str, u16, u64)> = worker
            .reasons
            .iter()
            .map(|((reason, day), t)| (reason.as_str(), *day, t.records))
            .collect();
        assert_eq!(
            tallies,
            [("malformed", 20514, 4), ("unknown_type", 20515, 1)]
        );
        assert_eq!(worker.counts[&source()], 4);
        assert_eq!(worker.next_offset, 12);
    }

    #[test]
    fn unknown_numbers_are_tallied_once_with_their_first_and_last_time() {
        // Restored: 2 bodies of the id below offset 5, seen at 100 and 200.
        let number = "406540352242922";
        let mut worker = DeadLetterWorker {
            next_offset: 4,
            unknown_numbers: BTreeMap::from([(
                number.to_owned(),
                NumberTally {
                    bodies: 2,
                    first_seen: 100,
                    last_seen: 200,
                    counted_below: 5,
                    changed: false,
                },
            )]),
            restored: true,
            ..DeadLetterWorker::default()
        };
        let letter = |id: Option<&str>, seconds| DeadLetter {
            source: ("raw-webhook".to_owned(), 0),
            reason: ("unknown_phone_number".to_owned(), 0),
            unknown_number: id.map(str::to_owned),
            seconds,
        };
        worker.count(letter(Some(number), 200), 4);
        worker.count(letter(Some(number), 90), 5);
        worker.count(letter(Some(number), 300), 6);
        worker.count(letter(Some("506540352242922"), 250), 7);
        worker.count(letter(None, 260), 8);
        let tallies: Vec<(&str, u64, u32, u32)> = worker
            .unknown_numbers
            .iter()
            .map(|(id, t)| (id.as_str(), t.bodies, t.first_seen, t.last_seen))
            .collect();
        assert_eq!(
            tallies,
            [(number, 4, 90, 300), ("506540352242922", 1, 250, 250)]
        );
    }

    #[test]
    fn the_detail_names_the_number_and_nothing_else_is_taken_for_one() {
        let detail = |rejection: &Rejection| crate::dead_letter::detail(rejection);
        let unknown = Rejection::UnknownPhoneNumber("406540352242922".into());
        assert_eq!(
            named_number(&detail(&unknown)).as_deref(),
            Some("406540352242922")
        );
        assert_eq!(
            named_number("phone_number_id `<withheld>` is not configured"),
            None
        );
        assert_eq!(named_number("field `user_id` is missing"), None);
        assert_eq!(
            named_number(&format!("phone_number_id `{}`", "9".repeat(65))),
            None
        );
    }
}
