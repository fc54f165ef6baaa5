//! Event-time alignment of the raw partitions, across ingest instances.
//!
//! Contract:
//! - A raw partition whose next event is more than `windows.max_partition_skew`
//!   ahead of the slowest raw partition (of every instance of the group) is
//!   held back: its records wait in memory, up to [`HOLD_BEFORE_PAUSE`] per
//!   partition, then the partition is paused. The slowest partition is never
//!   held, so this never deadlocks.
//! - Each instance sees its own partitions directly and the others through
//!   the compacted alignment topic (`topics.alignment`, key
//!   `<raw topic>/<partition>`): after each committed batch, and at least
//!   every [`PUBLISH_EVERY`], it publishes the position of every partition it
//!   owns (the event time of its next held record, else of the last record
//!   committed, or "at its end") and whether it holds records back. Only
//!   committed positions are published, so a position never reflects records
//!   a crash would make the next owner read again.
//! - A partition no entry describes yet holds every other back (it may be
//!   far behind), as does a partition whose owner died, at its last published
//!   position, until its new owner publishes: conservative, and liveness
//!   returns with the reassignment. Until the new owner's first
//!   publication, the previous owner's last entry stands: it describes the
//!   committed offset the new owner resumes from.
//! - A partition that stays at its end for [`END_CONFIRM`] while some
//!   instance holds records back is idle and holds nobody back until it
//!   delivers again. Idleness is confirmed only while a record is held: a
//!   partition that was at its end before a burst (every partition of a
//!   quiet pipeline before a backfill) must not be idle when the burst
//!   starts, or the first partition fetched would run ahead of the others'
//!   records that are on their way.
//! - Lateness bound: an event reaches the internal topic at most the skew
//!   behind the newest event forwarded from any other partition, plus what
//!   other instances forwarded while its partition's entry was stale (one
//!   publication interval, a flush interval of records). An event can still
//!   become late when its partition sat idle at its end and then receives
//!   events older than what the others forwarded meanwhile by more than
//!   `windows.lateness`, or when a partition is reordered by its producer.
//! - A `wafunnel check` canary has no event time here: it never holds a
//!   partition back and moves no position.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use wafunnel_runtime::config::Config;
use wafunnel_runtime::kafka::{self, LogContext};

use super::{Decision, IngestError};

/// A raw topic and partition.
pub(super) type Partition = (String, i32);

/// Records held for a partition that runs ahead before it is paused.
pub(super) const HOLD_BEFORE_PAUSE: usize = 5_000;
/// How long a partition must stay at its end before it stops holding others
/// back: right after a broker restart, its high watermark can be stale.
pub(super) const END_CONFIRM: Duration = Duration::from_secs(2);
/// Asking the broker where a partition ends is a round trip: with a trickle
/// of small batches, every batch reaches the end again, and asking each time
/// made ingest spend its time waiting on those answers.
pub(super) const END_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Longest time between two publications of an instance's positions when it
/// commits nothing (idle, or every partition held back).
pub(super) const PUBLISH_EVERY: Duration = Duration::from_millis(500);
/// How often the alignment topic is read while a batch is collected.
pub(super) const READ_EVERY: Duration = Duration::from_millis(20);

/// Keeps the raw partitions within `skew_ms` of each other in event time.
///
/// Kafka gives no order across partitions: a backfill may deliver one
/// partition's month before another's first day, and downstream everything
/// behind the watermark by more than the allowed lateness would be late. A
/// partition whose next event is further ahead than `skew_ms` of the
/// slowest partition is paused, its record held, until the others catch up.
pub(super) struct Alignment {
    pub(super) skew_ms: i64,
    pub(super) assigned: Vec<Partition>,
    /// Every partition of the raw topics, this instance's or not.
    pub(super) all: Vec<Partition>,
    /// The latest entry of each partition on the alignment topic.
    pub(super) published: HashMap<Partition, Entry>,
    /// The slowest published position among partitions of other instances
    /// (`None`: all at their end), and whether any of them holds records.
    others: (Option<i64>, bool),
    pub(super) forwarded: HashMap<Partition, i64>,
    pub(super) at_end: HashSet<Partition>,
    /// When each partition was first seen at its end, not yet confirmed.
    pub(super) end_seen: HashMap<Partition, Instant>,
    /// When each partition's end was last asked of the broker.
    pub(super) end_checked: HashMap<Partition, Instant>,
    pub(super) held: HashMap<Partition, VecDeque<(OwnedMessage, Decision)>>,
    /// Since when some record has been held by some instance, without a break.
    pub(super) holding_since: Option<Instant>,
    pub(super) paused: HashSet<Partition>,
}

/// The slowest and second slowest positions of all partitions: the
/// slowest of the partitions other than any one is one of the two, so
/// judging a record costs no pass over the partitions.
pub(super) struct Horizon<'a> {
    skew_ms: i64,
    /// The slowest position, and its partition if it is this instance's.
    slowest: Option<(i64, Option<&'a Partition>)>,
    /// The slowest position of the partitions but that one.
    second: Option<i64>,
}

impl<'a> Horizon<'a> {
    fn add(&mut self, position: i64, partition: Option<&'a Partition>) {
        match self.slowest {
            Some((slowest, _)) if position >= slowest => {
                self.second = Some(self.second.map_or(position, |s| s.min(position)));
            }
            slowest => {
                self.second = slowest.map(|(s, _)| s);
                self.slowest = Some((position, partition));
            }
        }
    }

    /// The slowest position among the partitions other than `except`.
    fn floor(&self, except: &Partition) -> Option<i64> {
        match self.slowest {
            Some((_, Some(p))) if p == except => self.second,
            slowest => slowest.map(|(s, _)| s),
        }
    }

    /// Whether a record of `p` at `event_time` runs too far ahead.
    pub(super) fn ahead(&self, p: &Partition, event_time: i64) -> bool {
        self.floor(p)
            .is_some_and(|floor| event_time > floor.saturating_add(self.skew_ms))
    }
}

/// What an instance publishes about one raw partition it owns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Entry {
    /// The transactional id of the publishing instance.
    pub(super) owner: String,
    /// Event time of its next record to forward, else of the last one
    /// committed (`i64::MIN`: none yet); `None` at its end.
    pub(super) position: Option<i64>,
    /// Whether it holds records back (its owner waits for the others).
    pub(super) holding: bool,
}

impl Alignment {
    pub(super) fn new(skew_ms: i64, all: Vec<Partition>) -> Self {
        let mut alignment = Alignment {
            skew_ms,
            assigned: Vec::new(),
            all,
            published: HashMap::new(),
            others: (None, false),
            forwarded: HashMap::new(),
            at_end: HashSet::new(),
            end_seen: HashMap::new(),
            end_checked: HashMap::new(),
            held: HashMap::new(),
            holding_since: None,
            paused: HashSet::new(),
        };
        alignment.refresh_others();
        alignment
    }

    /// Where a partition stands: its next held event, else the last event forwarded.
    pub(super) fn position(&self, p: &Partition) -> Option<i64> {
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

    /// Where every partition stands now, to judge any number of records.
    pub(super) fn horizon(&self) -> Horizon<'_> {
        let mut horizon = Horizon {
            skew_ms: self.skew_ms,
            slowest: None,
            second: None,
        };
        for p in &self.assigned {
            if let Some(position) = self.position(p) {
                horizon.add(position, Some(p));
            }
        }
        if let Some(others) = self.others.0 {
            horizon.add(others, None);
        }
        horizon
    }

    pub(super) fn ahead(&self, p: &Partition, event_time: i64) -> bool {
        self.horizon().ahead(p, event_time)
    }

    /// Whether this instance can forward nothing more until the others
    /// publish: it holds records back, and each of its partitions either
    /// holds records or sits at its end. Its batch is then committed at
    /// once, so that its positions are published and the others move on:
    /// waiting out the flush interval instead would let each exchange of
    /// positions cost a whole interval, and a backfill spread over several
    /// instances advance by only the skew per interval.
    pub(super) fn blocked(&self) -> bool {
        !self.held.is_empty()
            && self
                .assigned
                .iter()
                .all(|p| self.held.contains_key(p) || self.at_end.contains(p))
    }

    /// Whether this instance or another holds records back.
    pub(super) fn someone_holds(&self) -> bool {
        !self.held.is_empty() || self.others.1
    }

    /// Starts or ends the interval during which some record is held.
    pub(super) fn refresh_holding(&mut self) {
        if self.someone_holds() {
            self.holding_since.get_or_insert_with(Instant::now);
        } else {
            self.holding_since = None;
        }
    }

    /// Recomputes what the partitions of other instances say, after an
    /// entry arrived or the assignment changed.
    pub(super) fn refresh_others(&mut self) {
        let mut floor: Option<i64> = None;
        let mut holding = false;
        for p in self.all.iter().filter(|p| !self.assigned.contains(p)) {
            let (position, holds) = match self.published.get(p) {
                Some(entry) => (entry.position, entry.holding),
                // Never described: it may be far behind.
                None => (Some(i64::MIN), false),
            };
            if let Some(position) = position {
                floor = Some(floor.map_or(position, |f| f.min(position)));
            }
            holding |= holds;
        }
        self.others = (floor, holding);
        self.refresh_holding();
    }

    /// The entries to publish for this instance's partitions.
    pub(super) fn entries(&self, owner: &str) -> Vec<(Partition, Entry)> {
        self.assigned
            .iter()
            .map(|p| {
                let entry = Entry {
                    owner: owner.to_owned(),
                    position: self.position(p),
                    holding: self.held.contains_key(p),
                };
                (p.clone(), entry)
            })
            .collect()
    }

    /// Forgets everything about partitions this instance no longer reads
    /// from where it was: revoked, or rewound to their committed offsets.
    /// Returns how many held records were dropped (their partition's next
    /// reader reads them again from the committed offsets).
    pub(super) fn forget(&mut self, partitions: &[Partition]) -> usize {
        let mut dropped = 0;
        for p in partitions {
            dropped += self.held.remove(p).map_or(0, |q| q.len());
            self.paused.remove(p);
            self.forwarded.remove(p);
            self.at_end.remove(p);
            self.end_seen.remove(p);
            self.end_checked.remove(p);
        }
        self.refresh_holding();
        dropped
    }
}

/// The alignment topic: this instance's publications and everyone's entries.
pub(super) struct AlignmentTopic {
    topic: String,
    producer: FutureProducer<LogContext>,
    reader: BaseConsumer<LogContext>,
    last_published: Instant,
    last_read: Instant,
}

impl AlignmentTopic {
    /// Reads the alignment topic from its beginning (creating the topic if
    /// it does not exist yet), and publishes with an idempotent producer.
    pub(super) async fn open(
        cfg: &Config,
        partitions: &HashMap<String, i32>,
    ) -> Result<Self, IngestError> {
        let topic = cfg.topics.alignment.clone();
        let count = match partitions.get(&topic) {
            Some(&count) => count,
            None => {
                kafka::create_alignment_topic(&cfg.kafka, &topic, cfg.topics.replication_factor)
                    .await
                    .map_err(|e| {
                        IngestError::Config(format!(
                            "topic {topic} (topics.alignment) does not exist and cannot be created: {e} (create it, e.g. with `wafunnel check --create-topics`)"
                        ))
                    })?;
                1
            }
        };
        // librdkafka assigns partitions only to a consumer of some group:
        // this one never joins it and never commits.
        let reader: BaseConsumer<LogContext> = kafka::create(
            kafka::client_config(&cfg.kafka)
                .set("group.id", format!("{}-alignment", cfg.kafka.ingest_group))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false"),
        )?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..count {
            assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
        }
        reader.assign(&assignment)?;
        let producer = kafka::create(&kafka::durable_producer_config(
            &cfg.kafka,
            Duration::from_secs(30),
        ))?;
        Ok(AlignmentTopic {
            topic,
            producer,
            reader,
            last_published: Instant::now(),
            last_read: Instant::now(),
        })
    }

    /// Whether the positions are due for publication without a commit.
    pub(super) fn publication_due(&self) -> bool {
        self.last_published.elapsed() >= PUBLISH_EVERY
    }

    /// Publishes the entries. Fire and forget: an entry that is lost only
    /// keeps the previous one, which is older and so holds others back
    /// more, never less; the next publication replaces it.
    pub(super) fn publish(&mut self, entries: &[(Partition, Entry)]) {
        self.last_published = Instant::now();
        for ((topic, partition), entry) in entries {
            let key = format!("{topic}/{partition}");
            let Ok(payload) = serde_json::to_vec(entry) else {
                continue;
            };
            let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
            if let Err((e, _)) = self.producer.send_result(record) {
                tracing::warn!(error = %e, topic, partition, "cannot publish a partition's position");
            }
        }
    }

    /// Whether the topic is due to be read while a batch is collected.
    pub(super) fn read_due(&self) -> bool {
        self.last_read.elapsed() >= READ_EVERY
    }

    /// The entries that arrived since the last call, oldest first.
    pub(super) fn read(&mut self) -> Vec<(Partition, Entry)> {
        self.last_read = Instant::now();
        let mut entries = Vec::new();
        while let Some(received) = self.reader.poll(Duration::ZERO) {
            let message = match received {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the alignment topic");
                    break;
                }
            };
            let parsed = message
                .key()
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(parse_key)
                .zip(
                    message
                        .payload()
                        .and_then(|p| serde_json::from_slice::<Entry>(p).ok()),
                );
            match parsed {
                Some(entry) => entries.push(entry),
                None => tracing::warn!(
                    offset = message.offset(),
                    "ignored an alignment entry that is not one"
                ),
            }
        }
        entries
    }
}

/// `<topic>/<partition>` (topic names cannot hold a `/`).
fn parse_key(key: &str) -> Option<Partition> {
    let (topic, partition) = key.rsplit_once('/')?;
    Some((topic.to_owned(), partition.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    fn p(n: i32) -> Partition {
        ("raw".to_owned(), n)
    }

    fn entry(position: Option<i64>, holding: bool) -> Entry {
        Entry {
            owner: "other".into(),
            position,
            holding,
        }
    }

    /// This instance owns partitions 0 and 1 of four.
    fn two_of_four() -> Alignment {
        let mut a = Alignment::new(6 * HOUR, (0..4).map(p).collect());
        a.assigned = vec![p(0), p(1)];
        a.forwarded.insert(p(0), 10 * HOUR);
        a.forwarded.insert(p(1), 10 * HOUR);
        a.refresh_others();
        a
    }

    #[test]
    fn a_partition_nobody_described_yet_holds_everyone_back() {
        let a = two_of_four();
        assert!(a.ahead(&p(0), 10 * HOUR + 1));
    }

    #[test]
    fn the_slowest_partition_of_another_instance_sets_the_horizon() {
        let mut a = two_of_four();
        a.published.insert(p(2), entry(Some(9 * HOUR), false));
        a.published.insert(p(3), entry(Some(5 * HOUR), false));
        a.refresh_others();
        assert!(!a.ahead(&p(0), 11 * HOUR), "within the skew of 5 h");
        assert!(a.ahead(&p(0), 11 * HOUR + 1), "beyond the skew of 5 h");
        a.published.insert(p(3), entry(None, false));
        a.refresh_others();
        assert!(!a.ahead(&p(0), 15 * HOUR), "at its end, 3 holds nobody");
        assert!(a.ahead(&p(0), 16 * HOUR), "the own partition 1 still does");
    }

    #[test]
    fn entries_of_own_partitions_are_not_read_back() {
        let mut a = two_of_four();
        a.published.insert(p(0), entry(Some(0), true));
        a.published.insert(p(2), entry(None, false));
        a.published.insert(p(3), entry(None, false));
        a.refresh_others();
        assert!(!a.ahead(&p(1), 16 * HOUR), "partition 0 is at 10 h here");
        assert!(!a.someone_holds());
    }

    #[test]
    fn holding_elsewhere_starts_the_idle_clock_and_ends_it() {
        let mut a = two_of_four();
        a.published.insert(p(2), entry(Some(9 * HOUR), true));
        a.published.insert(p(3), entry(Some(9 * HOUR), false));
        a.refresh_others();
        assert!(a.someone_holds() && a.holding_since.is_some());
        a.published.insert(p(2), entry(Some(9 * HOUR), false));
        a.refresh_others();
        assert!(!a.someone_holds() && a.holding_since.is_none());
    }

    #[test]
    fn published_entries_say_where_own_partitions_stand() {
        let mut a = two_of_four();
        a.at_end.insert(p(1));
        let entries = a.entries("me");
        assert_eq!(
            entries,
            vec![
                (
                    p(0),
                    Entry {
                        owner: "me".into(),
                        position: Some(10 * HOUR),
                        holding: false
                    }
                ),
                (
                    p(1),
                    Entry {
                        owner: "me".into(),
                        position: None,
                        holding: false
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_forgotten_partition_starts_over_as_far_behind() {
        let mut a = two_of_four();
        a.at_end.insert(p(1));
        a.forget(&[p(1)]);
        assert_eq!(a.position(&p(1)), Some(i64::MIN));
    }

    #[test]
    fn blocked_when_every_partition_holds_or_is_at_its_end() {
        let mut a = Alignment::new(HOUR, (0..4).map(p).collect());
        a.assigned = (0..2).map(p).collect();
        assert!(!a.blocked(), "nothing held");
        a.at_end.insert(p(0));
        a.at_end.insert(p(1));
        assert!(
            !a.blocked(),
            "at its end and holding nothing: live, not blocked"
        );
        a.at_end.remove(&p(1));
        a.held.insert(p(1), VecDeque::new());
        assert!(a.blocked(), "one holds, the other is at its end");
        a.at_end.remove(&p(0));
        assert!(!a.blocked(), "the other may still forward");
        a.held.insert(p(0), VecDeque::new());
        assert!(a.blocked(), "both hold");
    }

    #[test]
    fn the_horizon_is_the_slowest_of_the_other_partitions() {
        let mut a = Alignment::new(HOUR, (0..4).map(p).collect());
        a.assigned = (0..3).map(p).collect();
        a.published.insert(p(3), entry(Some(7 * HOUR), false));
        a.refresh_others();
        let cases: [[Option<i64>; 3]; 5] = [
            [Some(5), Some(5), Some(9)],
            [Some(9), Some(5), None],
            [None, None, None],
            [Some(8), Some(2), Some(3)],
            [Some(1), Some(1), Some(1)],
        ];
        for case in cases {
            for (i, position) in case.iter().enumerate() {
                let partition = p(i as i32);
                a.at_end.remove(&partition);
                match position {
                    Some(hours) => {
                        a.forwarded.insert(partition, hours * HOUR);
                    }
                    None => {
                        a.at_end.insert(partition);
                    }
                }
            }
            let horizon = a.horizon();
            for i in 0..3 {
                let floor = case
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .filter_map(|(_, hours)| hours.map(|h| h * HOUR))
                    .chain([7 * HOUR])
                    .min();
                assert_eq!(
                    horizon.floor(&p(i as i32)),
                    floor,
                    "{case:?}, partition {i}"
                );
            }
        }
    }

    #[test]
    fn keys_name_topic_and_partition() {
        assert_eq!(parse_key("raw-json/3"), Some(("raw-json".into(), 3)));
        assert_eq!(parse_key("raw-json"), None);
        assert_eq!(parse_key("raw/x"), None);
    }
}
