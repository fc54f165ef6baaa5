//! `wafunnel redrive`: dead letters processed again once the configuration
//! that rejected them is fixed (docs/SEMANTICS.md section 4, "Re-drive").
//!
//! Contract:
//! - The dead letters chosen are those of the given reasons (by default
//!   the reasons a configuration fixes, [`FIXABLE`]; malformed records only
//!   when asked), source topics and range of dead-letter times.
//! - A dead letter holds no phone number in clear, so its record is read
//!   back from its raw topic at the position the dead letter names, and is
//!   used only if it is the one dead-lettered (its digest, or its bytes).
//!   It then goes through ingest's own route (decode, validate, forward or
//!   dead-letter again), validated at the re-drive's time, as if it arrived
//!   now. A dead letter of one event of a webhook body re-drives that event
//!   only: the body's other events were forwarded when it arrived.
//! - Each dead letter is re-driven at most once, whatever crashes or
//!   repeated runs happen: its outputs and a marker on its own dead-letter
//!   partition ([`dead_letter::REDRIVEN`]) are written in one Kafka
//!   transaction, under one transactional id per ingest group
//!   (`<ingest_group>-redrive`). A run first initialises that id, which
//!   aborts what a killed run left open, then reads every committed marker
//!   and skips the dead letters they name. Two runs at once fence each
//!   other: the older one stops.
//! - Sessionize counts the re-driven record in its new outcome and takes it
//!   off the dead-lettered count on the marker, so `input_accounting` still
//!   adds up to every raw record.
//! - `--dry-run` writes nothing: it lists each dead letter it would
//!   re-drive and what it would become.
//! - A dead letter whose record the raw topic no longer holds (retention),
//!   or holds another record at its position, is reported and left alone.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer as _};
use rdkafka::{Offset, TopicPartitionList};
use wafunnel_runtime::config::Config;
use wafunnel_runtime::error::{Classify, Fault};
use wafunnel_runtime::kafka::{self, LogContext};

use crate::dead_letter;
use crate::forward;
use crate::ingest::{wall_clock_ms, Decision, IngestError, Route};

/// The reasons a configuration fixes: re-driven unless others are asked.
pub const FIXABLE: &[&str] = &["unknown_phone_number"];

const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long reading a topic to its end may take before it is an error.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a re-drive stopped.
#[derive(Debug, thiserror::Error)]
pub enum RedriveError {
    /// Deciding or writing failed as it does for ingest.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// Kafka failed; nothing of the open batch is committed, and running
    /// again re-drives what is left.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A topic could not be read to its end in time.
    #[error("cannot read topic {0} to its end (is the broker up?)")]
    Unread(String),
}

impl Classify for RedriveError {
    fn fault(&self) -> Fault {
        match self {
            RedriveError::Ingest(e) => e.fault(),
            RedriveError::Kafka(_) | RedriveError::Unread(_) => Fault::External,
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            RedriveError::Ingest(e) => e.is_retryable(),
            RedriveError::Kafka(_) | RedriveError::Unread(_) => true,
        }
    }
}

/// Which dead letters to re-drive.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Reasons (default: [`FIXABLE`]).
    pub reasons: Vec<String>,
    /// Source topics (default: every raw topic).
    pub topics: Vec<String>,
    /// Dead-lettered at or after this time, epoch ms.
    pub from_ms: Option<i64>,
    /// Dead-lettered before this time, epoch ms.
    pub to_ms: Option<i64>,
}

impl Selection {
    fn wants(&self, letter: &Letter) -> bool {
        let reason_ok = if self.reasons.is_empty() {
            FIXABLE.contains(&letter.reason.as_str())
        } else {
            self.reasons.contains(&letter.reason)
        };
        reason_ok
            && (self.topics.is_empty() || self.topics.contains(&letter.source.0))
            && self.from_ms.is_none_or(|from| letter.time >= from)
            && self.to_ms.is_none_or(|to| letter.time < to)
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RedriveCounts {
    /// Dead letters re-driven (or, in a dry run, that would be).
    pub redriven: u64,
    /// Of the chosen, those an earlier run re-drove.
    pub already: u64,
    /// Of the chosen, those whose record the raw topic no longer holds.
    pub gone: u64,
    /// Events forwarded to the internal topic.
    pub forwarded: u64,
    /// Records or events dead-lettered again.
    pub dead_lettered: u64,
}

/// A dead letter as read from its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Letter {
    partition: i32,
    offset: i64,
    reason: String,
    detail: String,
    /// Source topic, partition and offset.
    source: (String, i32, i64),
    /// Kafka timestamp, epoch ms.
    time: i64,
    payload: Vec<u8>,
    digest: Option<String>,
}

impl Letter {
    fn read(message: &OwnedMessage) -> Option<Letter> {
        let header = |key| kafka::header(message, key);
        Some(Letter {
            partition: message.partition(),
            offset: message.offset(),
            reason: header(kafka::REASON)?.to_owned(),
            detail: header(kafka::DETAIL).unwrap_or_default().to_owned(),
            source: (
                header(kafka::SOURCE_TOPIC)?.to_owned(),
                header(kafka::SOURCE_PARTITION)?.parse().ok()?,
                header(kafka::SOURCE_OFFSET)?.parse().ok()?,
            ),
            time: message.timestamp().to_millis().unwrap_or(0),
            payload: message.payload().unwrap_or_default().to_vec(),
            digest: header(dead_letter::ORIGINAL_DIGEST).map(str::to_owned),
        })
    }

    /// The event of its body this dead letter is for, if it is for one
    /// event only ("event N of the body: ...").
    fn body_event(&self) -> Option<usize> {
        self.detail
            .strip_prefix("event ")?
            .split_once(" of the body")?
            .0
            .parse()
            .ok()
    }
}

/// Re-drives the chosen dead letters, `batch` to a transaction; with
/// `dry_run`, writes to `out` what each would become instead.
pub async fn run(
    cfg: &Config,
    selection: &Selection,
    dry_run: bool,
    batch: usize,
    out: &mut dyn std::io::Write,
) -> Result<RedriveCounts, RedriveError> {
    let route = Route::new(cfg)?;
    let producer = if dry_run {
        None
    } else {
        let mut config = kafka::client_config(&cfg.kafka);
        config
            .set(
                "transactional.id",
                format!("{}-redrive", cfg.kafka.ingest_group),
            )
            .set("enable.idempotence", "true");
        let producer = forward::create(&config)?;
        // Aborts what a killed run left open: its markers never count.
        kafka::blocking(|| producer.init_transactions(TXN_TIMEOUT))?;
        Some(producer)
    };
    let letters = read_dead_letters(cfg)?;
    let redriven: HashSet<(i32, i64)> = letters
        .iter()
        .filter_map(|(message, _)| {
            let of = kafka::header(message, dead_letter::REDRIVEN)?
                .parse()
                .ok()?;
            Some((message.partition(), of))
        })
        .collect();
    let mut counts = RedriveCounts::default();
    let mut reader = RawReader::new(cfg)?;
    let mut pending: Vec<(Letter, OwnedMessage, Decision)> = Vec::new();
    let now = wall_clock_ms();
    for letter in letters.iter().filter_map(|(_, letter)| letter.as_ref()) {
        if !selection.wants(letter) {
            continue;
        }
        if redriven.contains(&(letter.partition, letter.offset)) {
            counts.already += 1;
            continue;
        }
        let Some(raw) = reader.read(&letter.source)? else {
            counts.gone += 1;
            tracing::warn!(partition = letter.partition, offset = letter.offset, source_topic = %letter.source.0, source_partition = letter.source.1, source_offset = letter.source.2, "dead letter not re-driven: its raw topic no longer holds its record");
            continue;
        };
        if !dead_letter::is_original(
            raw.payload().unwrap_or_default(),
            &letter.payload,
            letter.digest.as_deref(),
            route.hasher(),
        ) {
            counts.gone += 1;
            tracing::warn!(
                partition = letter.partition,
                offset = letter.offset,
                "dead letter not re-driven: the record at its source is another one"
            );
            continue;
        }
        let decision = match letter.body_event() {
            Some(index) => route.decide_body_event(&raw, index, now),
            None => route.decide(&raw, Some(now)).await?,
        };
        counts.redriven += 1;
        if dry_run {
            let (forwarded, dead_lettered) = outputs(&decision);
            counts.forwarded += forwarded;
            counts.dead_lettered += dead_lettered;
            writeln!(
                out,
                "{}:{} {} from {}/{}/{} -> {}",
                letter.partition,
                letter.offset,
                letter.reason,
                letter.source.0,
                letter.source.1,
                letter.source.2,
                describe(&decision)
            )
            .map_err(|e| IngestError::Config(format!("cannot write the dry run: {e}")))?;
            continue;
        }
        pending.push((letter.clone(), raw, decision));
        if pending.len() >= batch.max(1) {
            commit(cfg, &route, producer.as_ref(), &mut pending, &mut counts)?;
        }
    }
    commit(cfg, &route, producer.as_ref(), &mut pending, &mut counts)?;
    Ok(counts)
}

/// The events a decision forwards and the dead letters it writes.
fn outputs(decision: &Decision) -> (u64, u64) {
    match decision {
        Decision::Forward { .. } | Decision::Canary { .. } => (1, 0),
        Decision::Many {
            events, rejected, ..
        } => (events.len() as u64, rejected.len() as u64),
        Decision::Ignored => (0, 0),
        Decision::DeadLetter { .. } => (0, 1),
    }
}

/// What a decision would make of its record.
fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Forward { .. } | Decision::Canary { .. } => "forwarded: 1 event".into(),
        Decision::Many {
            events, rejected, ..
        } => {
            let mut text = format!("forwarded: {} event(s)", events.len());
            for (reason, detail) in rejected {
                text.push_str(&format!("; dead-lettered again: {reason} ({detail})"));
            }
            text
        }
        Decision::Ignored => "ignored: nothing to count".into(),
        Decision::DeadLetter { reason, detail } => {
            format!("dead-lettered again: {reason} ({detail})")
        }
    }
}

/// Writes the outputs of `pending` and their markers in one transaction.
fn commit(
    cfg: &Config,
    route: &Route,
    producer: Option<&forward::Producer>,
    pending: &mut Vec<(Letter, OwnedMessage, Decision)>,
    counts: &mut RedriveCounts,
) -> Result<(), RedriveError> {
    let Some(producer) = producer else {
        return Ok(());
    };
    if pending.is_empty() {
        return Ok(());
    }
    kafka::blocking(|| producer.begin_transaction())?;
    let batch: Vec<(OwnedMessage, Decision)> = pending
        .iter_mut()
        .map(|(_, raw, decision)| (raw.clone(), std::mem::replace(decision, Decision::Ignored)))
        .collect();
    let written = route.produce_batch(producer, &batch)?;
    for (letter, _, _) in pending.iter() {
        let of = letter.offset.to_string();
        let partition = letter.source.1.to_string();
        let offset = letter.source.2.to_string();
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: dead_letter::REDRIVEN,
                value: Some(&of),
            })
            .insert(Header {
                key: kafka::SOURCE_TOPIC,
                value: Some(&letter.source.0),
            })
            .insert(Header {
                key: kafka::SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: kafka::SOURCE_OFFSET,
                value: Some(&offset),
            });
        forward::send(
            producer,
            BaseRecord::<(), [u8]>::to(&cfg.topics.dead_letter)
                .partition(letter.partition)
                .payload(&[])
                .headers(headers),
        )?;
    }
    kafka::blocking(|| producer.commit_transaction(TXN_TIMEOUT))?;
    counts.forwarded += written.forwarded;
    counts.dead_lettered += written.dead_lettered;
    tracing::info!(
        dead_letters = pending.len(),
        forwarded = written.forwarded,
        dead_lettered = written.dead_lettered,
        "re-drive batch committed"
    );
    pending.clear();
    Ok(())
}

/// Every committed record of the dead-letter topic, with its dead letter
/// when it is one (a marker is not).
fn read_dead_letters(cfg: &Config) -> Result<Vec<(OwnedMessage, Option<Letter>)>, RedriveError> {
    let topic = &cfg.topics.dead_letter;
    let consumer: BaseConsumer<LogContext> = kafka::create(
        kafka::client_config(&cfg.kafka)
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            // A group only librdkafka wants: positions are assigned, never committed.
            .set("group.id", reader_group(cfg))
            .set("enable.auto.commit", "false"),
    )?;
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    let partitions =
        kafka::blocking(|| consumer.fetch_metadata(Some(topic), Duration::from_secs(10)))?
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len() as i32);
    for partition in 0..partitions {
        let (low, high) = kafka::blocking(|| {
            consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))
        })?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    let mut records = Vec::new();
    let started = Instant::now();
    // Read to the high watermark: a marker or dead letter of a transaction
    // aborted is skipped, so the position passes it without a record.
    while !ends.is_empty() {
        if started.elapsed() > READ_TIMEOUT {
            return Err(RedriveError::Unread(topic.clone()));
        }
        match kafka::blocking(|| consumer.poll(Duration::from_millis(200))) {
            None => {}
            // At the end of what is committed (transactions still open wait).
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ends.remove(&partition);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(message)) => {
                let message = message.detach();
                let letter = match kafka::header(&message, dead_letter::REDRIVEN) {
                    Some(_) => None,
                    None => Letter::read(&message),
                };
                records.push((message, letter));
            }
        }
        let positions = consumer.position()?;
        ends.retain(|&partition, &mut high| {
            let at = positions
                .find_partition(topic, partition)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(0);
            at < high
        });
    }
    Ok(records)
}

/// The consumer group named for the re-drive's readers; nothing is
/// committed under it.
fn reader_group(cfg: &Config) -> String {
    format!("{}-redrive-reader", cfg.kafka.ingest_group)
}

/// Reads raw records back by their position.
struct RawReader {
    consumer: BaseConsumer<LogContext>,
}

impl RawReader {
    fn new(cfg: &Config) -> Result<RawReader, RedriveError> {
        Ok(RawReader {
            consumer: kafka::create(
                kafka::client_config(&cfg.kafka)
                    .set("group.id", reader_group(cfg))
                    .set("enable.auto.commit", "false")
                    .set("enable.partition.eof", "true")
                    .set("auto.offset.reset", "earliest"),
            )?,
        })
    }

    /// The record at `(topic, partition, offset)`, or `None` when the topic
    /// no longer holds it.
    fn read(
        &mut self,
        (topic, partition, offset): &(String, i32, i64),
    ) -> Result<Option<OwnedMessage>, RedriveError> {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        self.consumer.assign(&assignment)?;
        let started = Instant::now();
        while started.elapsed() < READ_TIMEOUT {
            match kafka::blocking(|| self.consumer.poll(Duration::from_millis(200))) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(message)) => {
                    if message.topic() != topic || message.partition() != *partition {
                        continue;
                    }
                    return Ok((message.offset() == *offset).then(|| message.detach()));
                }
            }
        }
        Err(RedriveError::Unread(topic.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(reason: &str, topic: &str, time: i64, detail: &str) -> Letter {
        Letter {
            partition: 0,
            offset: 7,
            reason: reason.into(),
            detail: detail.into(),
            source: (topic.into(), 0, 3),
            time,
            payload: Vec::new(),
            digest: None,
        }
    }

    #[test]
    fn by_default_only_what_a_configuration_fixes_is_chosen() {
        let all = Selection::default();
        assert!(all.wants(&letter("unknown_phone_number", "raw", 5, "")));
        assert!(!all.wants(&letter("malformed", "raw", 5, "")));
        let asked = Selection {
            reasons: vec!["malformed".into()],
            topics: vec!["raw".into()],
            from_ms: Some(5),
            to_ms: Some(10),
        };
        assert!(asked.wants(&letter("malformed", "raw", 5, "")));
        assert!(!asked.wants(&letter("unknown_phone_number", "raw", 5, "")));
        assert!(!asked.wants(&letter("malformed", "other", 5, "")));
        assert!(!asked.wants(&letter("malformed", "raw", 4, "")));
        assert!(!asked.wants(&letter("malformed", "raw", 10, "")));
    }

    #[test]
    fn a_dead_letter_of_one_event_of_a_body_names_it() {
        let one = letter("invalid_field", "raw", 0, "event 2 of the body: `from` ...");
        assert_eq!(one.body_event(), Some(2));
        let whole = letter(
            "unknown_phone_number",
            "raw",
            0,
            "phone_number_id `1065` is not configured for any account",
        );
        assert_eq!(whole.body_event(), None);
    }
}
