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
//!   other windows, an unknown format) is not used: the partition is
//!   replayed from its beginning instead, which is slower but exact.
//! - Settings: the manifest names the windows that change numbers (gap,
//!   lateness, attribution) and the currency and time zone of each account
//!   in the state. Accounts, phone numbers, clients or Conversions API
//!   destinations added since do not matter: an account absent from the
//!   state counts from its first event on. An account of the state whose
//!   currency or time zone changed is refused
//!   ([`SnapshotError::AccountSettingsChanged`]): its numbers so far were
//!   counted under the old ones, and neither resuming nor replaying from a
//!   truncated log would be exact.

use std::collections::{BTreeMap, HashMap};
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
use wafunnel_core::config::{AccountSettings, Accounts, Windows};
use wafunnel_core::sessionizer::{Sessionizer, StateError};

use wafunnel_runtime::config::Config;
use wafunnel_runtime::kafka::{self, LogContext};

/// Bytes per chunk record: well under the broker's default 1 MB record limit.
const CHUNK_BYTES: usize = 512 * 1024;
/// Layout of the manifest and chunks written.
///
/// 1: one fingerprint of the windows and of every configured account
/// (phone numbers included), so any account added made it unusable.
/// 2: the windows and each account of the state, compared one by one.
const FORMAT: u32 = 2;
/// The oldest layout still read: the chunks are the same, and a format 1
/// manifest is used when the settings are still those it was written under.
const OLDEST_FORMAT: u32 = 1;
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
    /// An account of the state now has another currency or time zone. Fatal
    /// for the service, and the operator's to fix: the partition is neither
    /// resumed nor replayed, since its rows so far were counted under the
    /// old settings.
    #[error(
        "account {account} was counted as {saved} and is now configured as {configured} (internal partition {partition}): configure {saved} again, or rebuild as the README's \"Rebuilding after a settings change\" says"
    )]
    AccountSettingsChanged {
        /// Internal partition.
        partition: u32,
        /// The account id.
        account: String,
        /// Its currency and time zone in the snapshot.
        saved: SavedAccount,
        /// Its currency and time zone now.
        configured: SavedAccount,
    },
}

/// The windows a state depends on, in milliseconds. The Conversions API
/// delay is not one: it only decides when exports are emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SavedWindows {
    gap_ms: i64,
    lateness_ms: i64,
    attribution_window_ms: i64,
}

impl From<Windows> for SavedWindows {
    fn from(w: Windows) -> Self {
        SavedWindows {
            gap_ms: w.gap_ms,
            lateness_ms: w.lateness_ms,
            attribution_window_ms: w.attribution_window_ms,
        }
    }
}

/// An account's settings as a snapshot records them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedAccount {
    /// ISO 4217 code.
    pub currency: String,
    /// IANA zone name.
    pub time_zone: String,
}

impl From<AccountSettings> for SavedAccount {
    fn from(a: AccountSettings) -> Self {
        SavedAccount {
            currency: a.currency.as_str().to_owned(),
            time_zone: a.time_zone.name().to_owned(),
        }
    }
}

impl std::fmt::Display for SavedAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.currency, self.time_zone)
    }
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
    /// Format 1: the hash of the settings it was written under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<u64>,
    /// Format 2: the windows it was written under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    windows: Option<SavedWindows>,
    /// Format 2: the settings of every account in the state.
    #[serde(default)]
    accounts: BTreeMap<String, SavedAccount>,
    next_offset: i64,
    outcomes: Vec<OutcomeCount>,
}

/// The settings a manifest is checked against.
struct Current<'a> {
    windows: SavedWindows,
    accounts: &'a Accounts,
    /// What format 1 would have written under these settings.
    legacy_fingerprint: u64,
}

impl Manifest {
    /// Whether its state may be resumed under `current`.
    fn check(&self, partition: u32, current: &Current<'_>) -> Result<(), SnapshotError> {
        let unusable = |reason: String| SnapshotError::Unusable { partition, reason };
        if !(OLDEST_FORMAT..=FORMAT).contains(&self.format) || self.partition != partition {
            return Err(unusable(format!(
                "format {} of partition {}",
                self.format, self.partition
            )));
        }
        if self.format == 1 {
            return if self.fingerprint == Some(current.legacy_fingerprint) {
                Ok(())
            } else {
                Err(unusable(
                    "written by an earlier release under other windows or accounts".into(),
                ))
            };
        }
        if self.windows != Some(current.windows) {
            return Err(unusable(format!(
                "written under other windows ({:?}, now {:?})",
                self.windows, current.windows
            )));
        }
        for (account, saved) in &self.accounts {
            let configured = SavedAccount::from(current.accounts.get(account));
            if *saved != configured {
                return Err(SnapshotError::AccountSettingsChanged {
                    partition,
                    account: account.clone(),
                    saved: saved.clone(),
                    configured,
                });
            }
        }
        Ok(())
    }
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
    legacy_fingerprint: u64,
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
        Ok(StateStore {
            cfg: cfg.kafka.clone(),
            restore_group: format!("{}-restore", cfg.kafka.sessionize_group),
            topic: cfg.topics.state.clone(),
            topic_partitions: topic_partitions.max(1),
            legacy_fingerprint: legacy::fingerprint(cfg),
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
            fingerprint: None,
            windows: Some(sessionizer.windows().into()),
            accounts: sessionizer
                .account_ids()
                .map(|id| (id.to_owned(), sessionizer.account_settings(id).into()))
                .collect(),
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
        manifest.check(
            partition,
            &Current {
                windows: windows.into(),
                accounts,
                legacy_fingerprint: self.legacy_fingerprint,
            },
        )?;
        let state = assemble(partition, &manifest, chunks)?;
        let sessionizer = Sessionizer::load(windows, accounts.clone(), &state)?;
        // Written from the same sessionizer, so never seen; checked because
        // an account missing from the manifest would escape the check above.
        if let Some(id) = sessionizer
            .account_ids()
            .find(|id| manifest.format > 1 && !manifest.accounts.contains_key(*id))
        {
            return Err(SnapshotError::Unusable {
                partition,
                reason: format!("account {id} of the state missing from the manifest"),
            });
        }
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
) -> Result<Vec<u8>, SnapshotError> {
    let unusable = |reason: String| SnapshotError::Unusable { partition, reason };
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

/// The settings hash of format 1 manifests: the `Debug` text the
/// `[windows]` and `[[accounts]]` sections had then, written out here so
/// that settings added to those sections later leave it as it was.
mod legacy {
    use wafunnel_runtime::config::Config;

    pub(super) fn fingerprint(cfg: &Config) -> u64 {
        let w = &cfg.windows;
        let accounts: Vec<String> = cfg
            .accounts
            .iter()
            .map(|a| {
                format!(
                    "AccountConfig {{ id: {:?}, currency: {:?}, time_zone: {:?}, phone_number_ids: {:?} }}",
                    a.id, a.currency, a.time_zone, a.phone_number_ids
                )
            })
            .collect();
        let text = format!(
            "WindowsConfig {{ gap: {:?}, lateness: {:?}, attribution: {:?}, max_partition_skew: {:?} }}|[{}]",
            w.gap,
            w.lateness,
            w.attribution,
            w.max_partition_skew,
            accounts.join(", ")
        );
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }
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
    use proptest::prelude::*;

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
            fingerprint: None,
            windows: Some(Windows::default().into()),
            accounts: BTreeMap::new(),
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
        assert_eq!(assemble(3, &manifest, chunks).expect("usable"), bytes);
    }

    #[test]
    fn an_empty_state_is_one_empty_chunk() {
        let (chunks, manifest) = stored(&[], 9);
        assert_eq!(manifest.chunks, 1);
        assert_eq!(
            assemble(3, &manifest, chunks).expect("usable"),
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
        assert!(unusable(assemble(3, &manifest, chunks)));

        // Another writer's chunk under the same key (two owners for a moment).
        let (mut chunks, manifest) = stored(&bytes, 9);
        let (other, _) = stored(&bytes, 10);
        chunks.insert("3/1/0".into(), other["3/1/0"].clone());
        assert!(unusable(assemble(3, &manifest, chunks)));

        let (mut chunks, manifest) = stored(&bytes, 9);
        if let Some(chunk) = chunks.get_mut("3/1/1") {
            chunk[ChunkHeader::LEN] ^= 1;
        }
        assert!(unusable(assemble(3, &manifest, chunks)));
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

    const CONFIG: &str = r#"
user_hash_key = "0123456789abcdef-test"
[kafka]
bootstrap = "127.0.0.1:9092"
[topics]
raw = [{ name = "raw-json" }]
[clickhouse]
url = "http://127.0.0.1:8123"
[windows]
gap = "3d"
[[accounts]]
id = "act_2"
currency = "BRL"
time_zone = "America/Sao_Paulo"
phone_number_ids = ["206540352242922", "206540352242923"]
[[accounts]]
id = "act_3"
currency = "EUR"
time_zone = "Europe/Madrid"
"#;

    #[test]
    fn the_legacy_fingerprint_is_the_one_format_1_wrote() {
        // Computed by the release writing format 1, from the `Debug` text of
        // the two sections, for `CONFIG`.
        let cfg = Config::from_toml(CONFIG).expect("config");
        assert_eq!(legacy::fingerprint(&cfg), LEGACY_FINGERPRINT);
    }

    const LEGACY_FINGERPRINT: u64 = 4_633_917_714_653_881_147;

    #[test]
    fn a_format_1_manifest_is_read_and_used_under_its_own_settings_only() {
        let cfg = Config::from_toml(CONFIG).expect("config");
        let accounts = cfg.accounts().expect("accounts");
        let windows = cfg.windows().expect("windows");
        // As the release writing format 1 stored it.
        let json = format!(
            r#"{{"format":1,"partition":3,"generation":7,"writer":9,"slot":1,"chunks":1,"bytes":0,"checksum":1,"fingerprint":{LEGACY_FINGERPRINT},"next_offset":1000,"outcomes":[{{"source_topic":"raw-json","source_partition":0,"outcome":"applied","records":12}}]}}"#
        );
        let manifest: Manifest = serde_json::from_str(&json).expect("format 1 manifest");
        assert_eq!(manifest.outcomes[0].records, 12);
        let current = |legacy_fingerprint| Current {
            windows: windows.into(),
            accounts: &accounts,
            legacy_fingerprint,
        };
        manifest
            .check(3, &current(LEGACY_FINGERPRINT))
            .expect("same settings");
        assert!(matches!(
            manifest.check(3, &current(LEGACY_FINGERPRINT ^ 1)),
            Err(SnapshotError::Unusable { partition: 3, .. })
        ));
    }

    fn settings(currency: &str, zone: &str) -> AccountSettings {
        AccountSettings {
            currency: wafunnel_core::money::Currency::parse(currency).expect("currency"),
            time_zone: zone.parse().expect("zone"),
        }
    }

    const CURRENCIES: [&str; 3] = ["USD", "EUR", "BRL"];
    const ZONES: [&str; 3] = ["UTC", "Europe/Madrid", "America/Sao_Paulo"];

    /// A format 2 manifest written for `state` (account ids with settings).
    fn manifest_of(state: &BTreeMap<String, AccountSettings>, windows: Windows) -> Manifest {
        Manifest {
            format: FORMAT,
            partition: 1,
            generation: 1,
            writer: 1,
            slot: 1,
            chunks: 1,
            bytes: 0,
            checksum: 0,
            fingerprint: None,
            windows: Some(windows.into()),
            accounts: state
                .iter()
                .map(|(id, s)| (id.clone(), SavedAccount::from(*s)))
                .collect(),
            next_offset: 0,
            outcomes: Vec::new(),
        }
    }

    fn account_settings() -> impl Strategy<Value = AccountSettings> {
        (0..CURRENCIES.len(), 0..ZONES.len()).prop_map(|(c, z)| settings(CURRENCIES[c], ZONES[z]))
    }

    proptest! {
        /// Accounts added to the configuration (listed or not, any
        /// settings) never make a snapshot unusable; the listed ones of the
        /// state keep theirs.
        #[test]
        fn added_accounts_never_invalidate_a_snapshot(
            state in proptest::collection::btree_map("act_[0-9]{1,3}", account_settings(), 0..6),
            added in proptest::collection::btree_map("new_[0-9]{1,3}", account_settings(), 0..6),
            default in account_settings(),
        ) {
            let windows = Windows::default();
            let manifest = manifest_of(&state, windows);
            let mut accounts = Accounts { listed: state.clone().into_iter().collect(), default };
            accounts.listed.extend(added);
            let current = Current { windows: windows.into(), accounts: &accounts, legacy_fingerprint: 0 };
            prop_assert!(manifest.check(1, &current).is_ok());
        }

        /// Another currency or time zone for one account of the state is
        /// refused, naming that account; windows changed make it unusable.
        #[test]
        fn a_changed_account_is_refused_by_name(
            state in proptest::collection::btree_map("act_[0-9]{1,3}", account_settings(), 1..6),
            pick in any::<proptest::sample::Index>(),
            changed in account_settings(),
        ) {
            let windows = Windows::default();
            let manifest = manifest_of(&state, windows);
            let account = pick.get(&state.keys().cloned().collect::<Vec<_>>()).clone();
            let mut listed: HashMap<String, AccountSettings> = state.clone().into_iter().collect();
            listed.insert(account.clone(), changed);
            let accounts = Accounts { listed, default: AccountSettings::default() };
            let current = Current { windows: windows.into(), accounts: &accounts, legacy_fingerprint: 0 };
            match manifest.check(1, &current) {
                Ok(()) => prop_assert_eq!(state[&account], changed),
                Err(SnapshotError::AccountSettingsChanged { account: named, saved, configured, .. }) => {
                    prop_assert_eq!(&named, &account);
                    prop_assert_eq!(saved, SavedAccount::from(state[&account]));
                    prop_assert_eq!(configured, SavedAccount::from(changed));
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
            let wider = Windows { gap_ms: windows.gap_ms + 1, ..windows };
            let current = Current { windows: wider.into(), accounts: &accounts, legacy_fingerprint: 0 };
            let unusable = matches!(manifest.check(1, &current), Err(SnapshotError::Unusable { .. }));
            prop_assert!(unusable);
        }
    }

    #[test]
    fn an_unlisted_account_of_the_state_counts_under_the_default_and_keeps_it() {
        let mut state = BTreeMap::new();
        state.insert("act_9".to_owned(), AccountSettings::default());
        let manifest = manifest_of(&state, Windows::default());
        let mut accounts = Accounts::default();
        let check = |accounts: &Accounts| {
            manifest.check(
                1,
                &Current {
                    windows: Windows::default().into(),
                    accounts,
                    legacy_fingerprint: 0,
                },
            )
        };
        check(&accounts).expect("unchanged");
        accounts
            .listed
            .insert("act_9".into(), AccountSettings::default());
        check(&accounts).expect("listed with the settings it was counted under");
        accounts
            .listed
            .insert("act_9".into(), settings("EUR", "UTC"));
        let e = check(&accounts).expect_err("changed");
        assert_eq!(
            e.to_string(),
            "account act_9 was counted as USD UTC and is now configured as EUR UTC (internal partition 1): configure USD UTC again, or rebuild as the README's \"Rebuilding after a settings change\" says"
        );
    }

    #[test]
    fn the_old_settings_hash_is_kept_beside_format_1_only() {
        let json = serde_json::to_string(&manifest_of(&BTreeMap::new(), Windows::default()))
            .expect("json");
        assert!(!json.contains("fingerprint"), "{json}");
        assert!(json.contains(r#""windows":{"gap_ms":604800000"#), "{json}");
    }
}
