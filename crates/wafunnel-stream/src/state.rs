//! Snapshots of a partition's sessionizer state in a compacted Kafka topic,
//! so that a restart or a rebalance resumes from recent state instead of
//! replaying the internal topic from its beginning.
//!
//! Contract:
//! - A snapshot of internal partition `p` is the sessionizer's state after
//!   every record before `next_offset`, plus that partition's cumulative
//!   record outcomes. It is a pure function of that prefix of the partition,
//!   so any snapshot, old or new, is a correct place to resume from: the
//!   records after it are replayed and rewrite rows that are identical or
//!   newer (rows are versioned by offset).
//! - A snapshot is only written after the rows of the state it holds have
//!   been acknowledged by ClickHouse, so resuming from it never skips a row.
//! - Layout: the state is cut into chunks under the keys `p/slot/i`, then a
//!   manifest under `p/manifest` names the slot, generation, writer, chunk
//!   count and checksum. Slots alternate, so a crash while writing one leaves
//!   the slot the manifest names intact; compaction keeps the newest record
//!   per key, so the topic holds about two snapshots per partition.
//! - A manifest whose chunks do not all match (another writer, a torn write,
//!   a different configuration or format) is not used: the partition is
//!   replayed from its beginning instead, which is slower but exact.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use wafunnel_core::config::{Accounts, Windows};
use wafunnel_core::sessionizer::{Sessionizer, StateError};

use wafunnel_runtime::config::Config;
use wafunnel_runtime::kafka::{self, LogContext};

/// Bytes per chunk record: well under the broker's default 1 MB record limit.
const CHUNK_BYTES: usize = 512 * 1024;
/// Layout of the manifest and chunks; a different one is never read.
const FORMAT: u32 = 1;
/// Longest wait for a snapshot's records to be acknowledged, or for a restore to read them.
const KAFKA_WAIT: Duration = Duration::from_secs(120);

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Kafka refused or timed out: retryable, the next snapshot tries again
    /// and a restore falls back to a full replay.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The state could not be encoded or decoded: fatal for this snapshot,
    /// a restore falls back to a full replay.
    #[error("state: {0}")]
    State(#[from] StateError),
    /// The stored snapshot is inconsistent: fatal for this snapshot, a
    /// restore falls back to a full replay.
    #[error("snapshot of partition {partition} unusable: {reason}")]
    Unusable {
        /// Internal partition.
        partition: u32,
        /// What did not match.
        reason: String,
    },
}

/// One cumulative record-outcome count of a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCount {
    /// Raw topic the records came from.
    pub source_topic: String,
    /// Its partition.
    pub source_partition: u32,
    /// applied, duplicate, late or dead_lettered.
    pub outcome: String,
    /// Records so far.
    pub records: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    partition: u32,
    generation: u64,
    writer: u64,
    slot: u32,
    chunks: u32,
    bytes: u64,
    checksum: u64,
    fingerprint: u64,
    next_offset: i64,
    outcomes: Vec<OutcomeCount>,
}

/// A partition's state as read back.
#[derive(Debug)]
pub struct Restored {
    /// The sessionizer after every record before `next_offset`.
    pub sessionizer: Sessionizer,
    /// The next internal offset to consume.
    pub next_offset: i64,
    /// Cumulative outcomes up to `next_offset`.
    pub outcomes: Vec<OutcomeCount>,
    /// Generation of the snapshot read; the next one written is higher.
    pub generation: u64,
    /// Size of the stored state in bytes.
    pub bytes: u64,
}

/// What the last snapshot of a partition cost.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    /// Generation written.
    pub generation: u64,
    /// Bytes of state.
    pub bytes: u64,
}

#[derive(Debug, Default)]
struct DeliveryContext {
    failures: AtomicU64,
    first_failure: Mutex<Option<KafkaError>>,
}

wafunnel_runtime::logs_like_log_context!(DeliveryContext);

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| e.clone());
        }
    }
}

/// Writes and reads the snapshots of the partitions one sessionize instance owns.
pub struct StateStore {
    cfg: wafunnel_runtime::config::KafkaConfig,
    restore_group: String,
    topic: String,
    topic_partitions: i32,
    fingerprint: u64,
    writer: u64,
    producer: ThreadedProducer<DeliveryContext>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("topic", &self.topic)
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// A store on the configured state topic, which must exist.
    pub fn new(cfg: &Config, topic_partitions: i32) -> Result<Self, SnapshotError> {
        let producer = kafka::client_config(&cfg.kafka)
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .create_with_context(DeliveryContext::default())
            .map_err(kafka::redact)?;
        // The settings the state depends on: a snapshot taken under other
        // settings would resume into different numbers, so it is not used.
        let fingerprint =
            xxhash_rust::xxh3::xxh3_64(format!("{:?}|{:?}", cfg.windows, cfg.accounts).as_bytes());
        Ok(StateStore {
            cfg: cfg.kafka.clone(),
            restore_group: format!("{}-restore", cfg.kafka.sessionize_group),
            topic: cfg.topics.state.clone(),
            topic_partitions: topic_partitions.max(1),
            fingerprint,
            writer: writer_id(),
            producer,
        })
    }

    fn topic_partition(&self, partition: u32) -> i32 {
        (partition % self.topic_partitions as u32) as i32
    }

    /// Writes a snapshot of `partition` and waits until Kafka has it. Blocking.
    pub fn save(
        &self,
        partition: u32,
        generation: u64,
        next_offset: i64,
        outcomes: Vec<OutcomeCount>,
        sessionizer: &Sessionizer,
    ) -> Result<Written, SnapshotError> {
        let slot = (generation % 2) as u32;
        let failures_before = self.producer.context().failures.load(Ordering::Relaxed);
        let mut chunks = ChunkWriter::new(
            partition,
            slot,
            generation,
            self.writer,
            |key: &str, record: &[u8]| self.send(key, record, partition),
        );
        sessionizer.save(&mut chunks)?;
        let (chunk_count, bytes, checksum) = chunks.finish()?;
        self.wait_delivered(failures_before)?;
        let manifest = Manifest {
            format: FORMAT,
            partition,
            generation,
            writer: self.writer,
            slot,
            chunks: chunk_count,
            bytes,
            checksum,
            fingerprint: self.fingerprint,
            next_offset,
            outcomes,
        };
        let value = serde_json::to_vec(&manifest).map_err(|e| SnapshotError::Unusable {
            partition,
            reason: e.to_string(),
        })?;
        self.send(&manifest_key(partition), &value, partition)?;
        self.wait_delivered(failures_before)?;
        Ok(Written { generation, bytes })
    }

    fn send(&self, key: &str, value: &[u8], partition: u32) -> Result<(), SnapshotError> {
        let mut record = BaseRecord::to(&self.topic)
            .key(key)
            .payload(value)
            .partition(self.topic_partition(partition));
        let deadline = Instant::now() + KAFKA_WAIT;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if Instant::now() < deadline =>
                {
                    record = back;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    fn wait_delivered(&self, failures_before: u64) -> Result<(), SnapshotError> {
        // `flush` would sleep in steps of 100 ms while the producer's own
        // thread takes the delivery reports; a short poll of the queue
        // length returns as soon as the last report is in.
        let deadline = Instant::now() + KAFKA_WAIT;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                return Err(KafkaError::Flush(RDKafkaErrorCode::MessageTimedOut).into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let context = self.producer.context();
        if context.failures.load(Ordering::Relaxed) != failures_before {
            let first = context
                .first_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            return Err(first
                .unwrap_or(KafkaError::MessageProduction(RDKafkaErrorCode::Fail))
                .into());
        }
        Ok(())
    }

    /// The newest usable snapshot of `partition`, if any, loaded with the
    /// settings it was checked against. Blocking.
    pub fn load(
        &self,
        partition: u32,
        windows: Windows,
        accounts: &Accounts,
    ) -> Result<Option<Restored>, SnapshotError> {
        let consumer: BaseConsumer<LogContext> = kafka::client_config(&self.cfg)
            // Required by assign; the group is never joined and nothing is committed.
            .set("group.id", &self.restore_group)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create_with_context(LogContext)
            .map_err(kafka::redact)?;
        let topic_partition = self.topic_partition(partition);
        let (low, high) = consumer.fetch_watermarks(&self.topic, topic_partition, KAFKA_WAIT)?;
        if high <= low {
            return Ok(None);
        }
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, topic_partition, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let prefix = format!("{partition}/");
        let manifest_key = manifest_key(partition);
        let mut manifest: Option<Vec<u8>> = None;
        let mut chunks: HashMap<String, Vec<u8>> = HashMap::new();
        let deadline = Instant::now() + KAFKA_WAIT;
        let mut next = low;
        while next < high {
            if Instant::now() > deadline {
                return Err(
                    KafkaError::MessageConsumption(RDKafkaErrorCode::RequestTimedOut).into(),
                );
            }
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message?;
            next = message.offset() + 1;
            let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            if !key.starts_with(&prefix) {
                continue;
            }
            let value = message.payload().unwrap_or_default().to_vec();
            if key == manifest_key {
                manifest = Some(value);
            } else {
                chunks.insert(key.to_owned(), value);
            }
        }
        let Some(manifest) = manifest else {
            return Ok(None);
        };
        let manifest: Manifest =
            serde_json::from_slice(&manifest).map_err(|e| SnapshotError::Unusable {
                partition,
                reason: e.to_string(),
            })?;
        let state = assemble(partition, &manifest, chunks, self.fingerprint)?;
        let sessionizer = Sessionizer::load(windows, accounts.clone(), &state)?;
        Ok(Some(Restored {
            sessionizer,
            next_offset: manifest.next_offset,
            outcomes: manifest.outcomes,
            generation: manifest.generation,
            bytes: manifest.bytes,
        }))
    }
}

fn manifest_key(partition: u32) -> String {
    format!("{partition}/manifest")
}

fn chunk_key(partition: u32, slot: u32, index: u32) -> String {
    format!("{partition}/{slot}/{index}")
}

/// A random id per store, so chunks of two writers of one partition (an
/// instance that lost its partition but does not know it yet) are told apart.
fn writer_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    xxhash_rust::xxh3::xxh3_64(format!("{nanos}|{}", std::process::id()).as_bytes())
}

struct ChunkHeader {
    generation: u64,
    writer: u64,
}

impl ChunkHeader {
    const LEN: usize = 16;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[..8].copy_from_slice(&self.generation.to_be_bytes());
        out[8..].copy_from_slice(&self.writer.to_be_bytes());
        out
    }

    fn parse(bytes: &[u8]) -> Option<ChunkHeader> {
        let generation = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
        let writer = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(ChunkHeader { generation, writer })
    }
}

/// Checks a manifest against the chunks read and joins them into the state bytes.
fn assemble(
    partition: u32,
    manifest: &Manifest,
    mut chunks: HashMap<String, Vec<u8>>,
    fingerprint: u64,
) -> Result<Vec<u8>, SnapshotError> {
    let unusable = |reason: String| SnapshotError::Unusable { partition, reason };
    if manifest.format != FORMAT || manifest.partition != partition {
        return Err(unusable(format!(
            "format {} of partition {}",
            manifest.format, manifest.partition
        )));
    }
    if manifest.fingerprint != fingerprint {
        return Err(unusable(
            "written under other windows or account settings".into(),
        ));
    }
    let mut state = Vec::with_capacity(manifest.bytes as usize);
    for i in 0..manifest.chunks {
        let key = chunk_key(partition, manifest.slot, i);
        let chunk = chunks
            .remove(&key)
            .ok_or_else(|| unusable(format!("chunk {key} missing")))?;
        let header =
            ChunkHeader::parse(&chunk).ok_or_else(|| unusable(format!("chunk {key} malformed")))?;
        if header.generation != manifest.generation || header.writer != manifest.writer {
            return Err(unusable(format!("chunk {key} belongs to another snapshot")));
        }
        state.extend_from_slice(&chunk[ChunkHeader::LEN..]);
    }
    if state.len() as u64 != manifest.bytes
        || xxhash_rust::xxh3::xxh3_64(&state) != manifest.checksum
    {
        return Err(unusable("checksum mismatch".into()));
    }
    Ok(state)
}

/// Cuts the encoded state into chunk records as it is written, so a large
/// state is never held twice in memory.
struct ChunkWriter<F> {
    send: F,
    partition: u32,
    slot: u32,
    header: ChunkHeader,
    buffer: Vec<u8>,
    count: u32,
    bytes: u64,
    hasher: xxhash_rust::xxh3::Xxh3,
}

impl<F: FnMut(&str, &[u8]) -> Result<(), SnapshotError>> ChunkWriter<F> {
    fn new(partition: u32, slot: u32, generation: u64, writer: u64, send: F) -> Self {
        ChunkWriter {
            send,
            partition,
            slot,
            header: ChunkHeader { generation, writer },
            buffer: Vec::with_capacity(CHUNK_BYTES),
            count: 0,
            bytes: 0,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
        }
    }

    fn emit(&mut self) -> Result<(), SnapshotError> {
        let mut record = Vec::with_capacity(ChunkHeader::LEN + self.buffer.len());
        record.extend_from_slice(&self.header.encode());
        record.extend_from_slice(&self.buffer);
        self.hasher.update(&self.buffer);
        self.bytes += self.buffer.len() as u64;
        self.buffer.clear();
        let key = chunk_key(self.partition, self.slot, self.count);
        (self.send)(&key, &record)?;
        self.count += 1;
        Ok(())
    }

    /// Sends what is left; returns the chunk count, state bytes and checksum.
    fn finish(mut self) -> Result<(u32, u64, u64), SnapshotError> {
        if !self.buffer.is_empty() || self.count == 0 {
            self.emit()?;
        }
        Ok((self.count, self.bytes, self.hasher.digest()))
    }
}

impl<F: FnMut(&str, &[u8]) -> Result<(), SnapshotError>> Write for ChunkWriter<F> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_BYTES - self.buffer.len();
        let n = data.len().min(room);
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == CHUNK_BYTES {
            self.emit().map_err(std::io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `state` through a ChunkWriter; returns its chunks by key and a matching manifest.
    fn stored(state: &[u8], writer: u64) -> (HashMap<String, Vec<u8>>, Manifest) {
        let mut chunks = HashMap::new();
        let mut out = ChunkWriter::new(3, 1, 7, writer, |key: &str, record: &[u8]| {
            chunks.insert(key.to_owned(), record.to_vec());
            Ok(())
        });
        out.write_all(state).expect("write");
        let (count, bytes, checksum) = out.finish().expect("finish");
        let manifest = Manifest {
            format: FORMAT,
            partition: 3,
            generation: 7,
            writer,
            slot: 1,
            chunks: count,
            bytes,
            checksum,
            fingerprint: 42,
            next_offset: 1000,
            outcomes: Vec::new(),
        };
        (chunks, manifest)
    }

    fn state(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn a_state_is_cut_into_chunks_and_joined_back() {
        let bytes = state(CHUNK_BYTES * 2 + 100);
        let (chunks, manifest) = stored(&bytes, 9);
        assert_eq!(manifest.chunks, 3);
        assert_eq!(chunks.len(), 3);
        assert!(chunks.contains_key("3/1/0") && chunks.contains_key("3/1/2"));
        assert!(chunks
            .values()
            .all(|c| c.len() <= ChunkHeader::LEN + CHUNK_BYTES));
        assert_eq!(assemble(3, &manifest, chunks, 42).expect("usable"), bytes);
    }

    #[test]
    fn an_empty_state_is_one_empty_chunk() {
        let (chunks, manifest) = stored(&[], 9);
        assert_eq!(manifest.chunks, 1);
        assert_eq!(
            assemble(3, &manifest, chunks, 42).expect("usable"),
            Vec::<u8>::new()
        );
    }

    #[test]
    fn a_missing_or_foreign_or_damaged_chunk_makes_the_snapshot_unusable() {
        let bytes = state(CHUNK_BYTES + 10);
        let unusable = |result: Result<Vec<u8>, SnapshotError>| {
            matches!(result, Err(SnapshotError::Unusable { partition: 3, .. }))
        };

        let (mut chunks, manifest) = stored(&bytes, 9);
        chunks.remove("3/1/1");
        assert!(unusable(assemble(3, &manifest, chunks, 42)));

        // Another writer's chunk under the same key (two owners for a moment).
        let (mut chunks, manifest) = stored(&bytes, 9);
        let (other, _) = stored(&bytes, 10);
        chunks.insert("3/1/0".into(), other["3/1/0"].clone());
        assert!(unusable(assemble(3, &manifest, chunks, 42)));

        let (mut chunks, manifest) = stored(&bytes, 9);
        if let Some(chunk) = chunks.get_mut("3/1/1") {
            chunk[ChunkHeader::LEN] ^= 1;
        }
        assert!(unusable(assemble(3, &manifest, chunks, 42)));

        let (chunks, manifest) = stored(&bytes, 9);
        assert!(
            unusable(assemble(3, &manifest, chunks, 43)),
            "other settings"
        );
    }

    #[test]
    fn a_failing_send_fails_the_write() {
        let mut out = ChunkWriter::new(0, 0, 1, 1, |_: &str, _: &[u8]| {
            Err(SnapshotError::Kafka(KafkaError::MessageProduction(
                RDKafkaErrorCode::QueueFull,
            )))
        });
        assert!(out.write_all(&state(CHUNK_BYTES)).is_err());
    }
}
