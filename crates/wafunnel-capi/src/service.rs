//! `wafunnel capi`: the capi topic to Meta and to `capi_exports`.
//!
//! Contract:
//! - Records are read in rounds: a round gathers exports for `capi.linger`
//!   after its first one (at most ten batches' worth), gives each its
//!   outcome, writes the outcomes to ClickHouse, and only once ClickHouse
//!   acknowledged them commits the round's offsets. Rounds run one after
//!   the other, so a committed offset never passes an export whose status
//!   is not stored.
//! - An export decided `outside_window` or `no_click_id` gets that status
//!   without a request. One decided `send` of an account without
//!   `capi.accounts.<account>` is `rejected` with code `not_configured`,
//!   without a request. The others are sent (see [`crate::deliver`]), each
//!   account's batches in order, the accounts at the same time.
//! - An export id seen again (the engine replays exports after a crash) is
//!   sent and stored once: within a round, and across rounds while it is
//!   among the last [`DONE_REMEMBERED`] exports whose status is stored.
//! - After a crash, or a kill anywhere, the next run starts from the last
//!   committed offsets: exports after them are sent again (Meta
//!   deduplicates them by `event_id`) and their rows written again with a
//!   later version, so the table ends the same.
//! - A stop finishes the round in hand (retrying Meta and ClickHouse until
//!   the stop is abandoned), commits, and leaves the group.
//! - A record that is not an export is logged and skipped: only the
//!   sessionizer writes the topic.
//! - Exports Meta refused because of their account's credential are stored
//!   `waiting_credential` (with the export itself), which lets the offsets
//!   move on. While an account waits, its new exports wait too, without a
//!   request; every `capi.credential_retry` (and at once when a run starts
//!   with exports waiting: a restart with a fixed token) its waiting exports
//!   are sent again, oldest first, with their new ones. Once Meta accepts
//!   them their rows become `sent`, replacing the waiting ones: each export
//!   is sent with the same `event_id` every time and stored once. The log
//!   says once that an account's credential is refused, and once that it
//!   works again, whatever the number of exports and tries.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinSet;
use wafunnel_core::export::{ConversionExport, ExportDecision};
use wafunnel_runtime::config::{CapiSettings, Config, ConfigError};
use wafunnel_runtime::error::{Classify, Fault};
use wafunnel_runtime::kafka::{self, blocking, ConnectError, LogContext};
use wafunnel_runtime::metrics::metrics;
use wafunnel_runtime::shutdown::Shutdown;
use wafunnel_stream::sink::{self, SinkError};

use crate::deliver::{Abandoned, Graph, Outcome, Status};
use crate::payload::{self, Destination, Destinations};
use crate::status::Waiting;
use crate::status::{self, StatusRow};

/// How many stored export ids are remembered to skip replayed duplicates.
pub const DONE_REMEMBERED: usize = 100_000;

/// Why `wafunnel capi` stopped.
#[derive(Debug, thiserror::Error)]
pub enum CapiError {
    /// A setting is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The brokers cannot be used with these settings.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The consumer could not be built or subscribed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The capi topic does not exist.
    #[error("topic {0} does not exist (create it, e.g. with `wafunnel check --create-topics`)")]
    MissingTopic(String),
    /// ClickHouse refused the statuses, or the stop was abandoned while it was unavailable.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The stop was abandoned while Meta did not answer.
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(reqwest::Error),
    /// The dry run's output cannot be written.
    #[error("cannot write the dry run: {0}")]
    Output(std::io::Error),
}

impl Classify for CapiError {
    fn fault(&self) -> Fault {
        match self {
            CapiError::Config(_)
            | CapiError::Kafka(_)
            | CapiError::MissingTopic(_)
            | CapiError::Output(_) => Fault::User,
            CapiError::Connect(e) => e.fault(),
            CapiError::Sink(e) => e.fault(),
            CapiError::Abandoned(_) => Fault::External,
            CapiError::Http(_) => Fault::Internal,
        }
    }

    fn is_retryable(&self) -> bool {
        false
    }
}

/// The destinations of the configured accounts (no credentials).
pub fn destinations(settings: &CapiSettings) -> Destinations {
    Destinations {
        api_version: settings.api_version.clone(),
        max_batch: settings.max_batch,
        accounts: settings
            .accounts
            .iter()
            .map(|(account, a)| {
                (
                    account.clone(),
                    Destination {
                        dataset_id: a.dataset_id.clone(),
                        waba_id: a.waba_id.clone(),
                    },
                )
            })
            .collect(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Export ids whose status is stored, the oldest forgotten first.
#[derive(Debug, Default)]
struct Done {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl Done {
    fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: &str) {
        if self.ids.insert(id.to_owned()) {
            self.order.push_back(id.to_owned());
            if self.order.len() > DONE_REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }
}

/// What a round needs to reach Meta.
#[derive(Debug, Clone)]
struct Sender {
    graph: Graph,
    settings: Arc<CapiSettings>,
    destinations: Arc<Destinations>,
}

impl Sender {
    /// The outcome of every new export of a round, as rows written at `now`.
    /// `retry` are waiting exports sent again, before the new ones of
    /// their account; the new exports of an account of `held` wait
    /// without a request.
    async fn outcomes(
        &self,
        exports: Vec<ConversionExport>,
        retry: Vec<Waiting>,
        held: &Held,
        done: &Done,
        shutdown: &Shutdown,
    ) -> Result<Vec<StatusRow>, Abandoned> {
        let now = now_ms();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        // Per account: the exports to send and the requests that carried each before.
        let mut to_send: BTreeMap<String, Vec<(ConversionExport, u32)>> = BTreeMap::new();
        for waiting in retry {
            if seen.insert(waiting.export.export_id.clone()) {
                to_send
                    .entry(waiting.export.account_id.to_string())
                    .or_default()
                    .push((waiting.export, waiting.attempts));
            }
        }
        for export in exports {
            if done.contains(&export.export_id) || !seen.insert(export.export_id.clone()) {
                metrics().capi.duplicates.inc();
                continue;
            }
            let status = match export.decision {
                ExportDecision::OutsideWindow => Status::OutsideWindow,
                ExportDecision::NoClickId => Status::NoClickId,
                ExportDecision::Send => {
                    if let Some(refusal) = held.get(&*export.account_id) {
                        rows.push(StatusRow::new(&export, refusal, now));
                    } else if self.settings.accounts.contains_key(&*export.account_id) {
                        to_send
                            .entry(export.account_id.to_string())
                            .or_default()
                            .push((export, 0));
                    } else {
                        let outcome = Outcome {
                            error_code: Some("not_configured".into()),
                            error_message: Some(format!(
                                "no capi.accounts.{} settings: nothing was sent",
                                export.account_id
                            )),
                            ..Outcome::without_request(Status::Rejected)
                        };
                        rows.push(StatusRow::new(&export, &outcome, now));
                    }
                    continue;
                }
            };
            rows.push(StatusRow::new(
                &export,
                &Outcome::without_request(status),
                now,
            ));
        }
        let mut tasks = JoinSet::new();
        for (account, exports) in to_send {
            let sender = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                let (Some(settings), Some(destination)) = (
                    sender.settings.accounts.get(&account),
                    sender.destinations.accounts.get(&account),
                ) else {
                    // A waiting export of an account no longer configured.
                    let now = now_ms();
                    return Ok(exports
                        .iter()
                        .map(|(export, attempts)| {
                            let outcome = Outcome {
                                error_code: Some("not_configured".into()),
                                error_message: Some(format!(
                                    "no capi.accounts.{} settings: nothing more was sent",
                                    export.account_id
                                )),
                                attempts: *attempts,
                                ..Outcome::without_request(Status::Rejected)
                            };
                            StatusRow::new(export, &outcome, now)
                        })
                        .collect());
                };
                let token = settings.access_token.clone().unwrap_or_default();
                let refs: Vec<&ConversionExport> = exports.iter().map(|(e, _)| e).collect();
                let outcomes = sender
                    .graph
                    .deliver(
                        &sender.destinations.path(&destination.dataset_id),
                        &token,
                        &destination.waba_id,
                        &refs,
                        sender.destinations.max_batch,
                        &shutdown,
                    )
                    .await?;
                let now = now_ms();
                Ok::<_, Abandoned>(
                    exports
                        .iter()
                        .zip(outcomes)
                        .map(|((export, before), mut outcome)| {
                            outcome.attempts += before;
                            StatusRow::new(export, &outcome, now)
                        })
                        .collect::<Vec<_>>(),
                )
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(delivered) => rows.extend(delivered?),
                // Tasks are never cancelled: this is a panic, passed on.
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        Ok(rows)
    }
}

/// One round's exports and the offsets that follow them.
#[derive(Debug, Default)]
struct Round {
    exports: Vec<ConversionExport>,
    next_offsets: BTreeMap<(String, i32), i64>,
}

impl Round {
    fn add(&mut self, message: &impl Message) {
        let next = self
            .next_offsets
            .entry((message.topic().to_owned(), message.partition()))
            .or_default();
        *next = (*next).max(message.offset() + 1);
        let payload = message.payload().unwrap_or_default();
        if payload.is_empty() {
            return;
        }
        match serde_json::from_slice::<ConversionExport>(payload) {
            Ok(export) => self.exports.push(export),
            Err(e) => {
                metrics().capi.undecodable.inc();
                tracing::error!(
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    error = %e,
                    "record of the capi topic is not an export, skipped"
                );
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }
}

/// Gathers a round: waits for a first record (or the stop, or `wake`),
/// then takes records for `linger`, at most `cap` of them.
async fn gather(
    consumer: &StreamConsumer<LogContext>,
    linger: Duration,
    cap: usize,
    wake: Option<Instant>,
    shutdown: &Shutdown,
) -> Round {
    let mut round = Round::default();
    let mut deadline: Option<Instant> = None;
    let mut records = 0usize;
    while records < cap {
        let received = match deadline {
            None => tokio::select! {
                received = consumer.recv() => received,
                () = shutdown.stopping() => break,
                () = sleep_until(wake) => break,
            },
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::select! {
                    received = tokio::time::timeout(left, consumer.recv()) => match received {
                        Ok(received) => received,
                        Err(_) => break,
                    },
                    () = shutdown.stopping() => break,
                }
            }
        };
        match received {
            Ok(message) => {
                round.add(&message);
                records += 1;
                deadline.get_or_insert_with(|| Instant::now() + linger);
            }
            Err(e) => tracing::warn!(error = %e, "kafka consume error"),
        }
    }
    round
}

/// Sleeps until `wake`, or forever.
async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(wake) => tokio::time::sleep_until(wake.into()).await,
        None => std::future::pending().await,
    }
}

/// The accounts whose exports wait without a request, with the outcome
/// they wait with.
type Held = BTreeMap<String, Outcome>;

/// One account whose credential Meta refuses.
#[derive(Debug)]
struct Refused {
    /// Its waiting exports, oldest first.
    exports: BTreeMap<(i64, String), Waiting>,
    /// What its new exports are stored with meanwhile.
    outcome: Outcome,
    /// When its exports are sent again.
    next_try: Instant,
}

/// The exports waiting for their account's credential.
#[derive(Debug, Default)]
struct Credentials {
    accounts: BTreeMap<String, Refused>,
}

impl Credentials {
    /// The exports stored as waiting by an earlier run: tried at once.
    fn restore(&mut self, stored: Vec<Waiting>) {
        let now = Instant::now();
        for waiting in stored {
            let refused = self
                .accounts
                .entry(waiting.export.account_id.to_string())
                .or_insert_with(|| Refused {
                    exports: BTreeMap::new(),
                    outcome: Outcome::without_request(Status::WaitingCredential),
                    next_try: now,
                });
            refused.exports.insert(
                (waiting.export.event_time, waiting.export.export_id.clone()),
                waiting,
            );
        }
        self.publish();
    }

    /// When the next account is due.
    fn next_try(&self) -> Option<Instant> {
        self.accounts.values().map(|r| r.next_try).min()
    }

    /// The waiting exports of the accounts due at `now`, and the accounts
    /// whose new exports wait without a request.
    fn due(&self, now: Instant) -> (Vec<Waiting>, Held) {
        let mut retry = Vec::new();
        let mut held = Held::new();
        for (account, refused) in &self.accounts {
            if refused.next_try <= now {
                retry.extend(refused.exports.values().cloned());
            } else {
                held.insert(account.clone(), refused.outcome.clone());
            }
        }
        (retry, held)
    }

    /// Takes the stored `rows` in: a waiting export joins its account's,
    /// any other status ends its wait.
    fn stored(&mut self, rows: &[StatusRow], retry_in: Duration) {
        let now = Instant::now();
        let next_try = now + retry_in;
        for row in rows {
            if row.status != Status::WaitingCredential.as_str() {
                let Some(refused) = self.accounts.get_mut(&row.account_id) else {
                    continue;
                };
                refused
                    .exports
                    .remove(&(row.event_time, row.export_id.clone()));
                if refused.exports.is_empty() {
                    self.accounts.remove(&row.account_id);
                    tracing::info!(
                        account = row.account_id,
                        "the credential of this account works again: its waiting exports are stored"
                    );
                }
                continue;
            }
            let Ok(export) = serde_json::from_str::<ConversionExport>(&row.export) else {
                continue;
            };
            let outcome = Outcome {
                status: Status::WaitingCredential,
                error_code: row.error_code.clone(),
                error_message: row.error_message.clone(),
                attempts: 0,
            };
            let announce = || {
                tracing::error!(
                    account = row.account_id,
                    code = row.error_code.as_deref().unwrap_or_default(),
                    message = row.error_message.as_deref().unwrap_or_default(),
                    retry_in_s = retry_in.as_secs(),
                    "conversions api refuses the credential of this account: its exports wait, and are sent once it works"
                );
            };
            let refused = match self.accounts.entry(row.account_id.clone()) {
                Entry::Vacant(vacant) => {
                    announce();
                    vacant.insert(Refused {
                        exports: BTreeMap::new(),
                        outcome: outcome.clone(),
                        next_try,
                    })
                }
                Entry::Occupied(occupied) => occupied.into_mut(),
            };
            // Tried in this round (it was due): refused again.
            if refused.next_try <= now {
                // Restored from an earlier run: this run has not said it yet.
                if refused.outcome.error_code.is_none() {
                    announce();
                }
                refused.outcome = outcome;
                refused.next_try = next_try;
            }
            refused.exports.insert(
                (export.event_time, export.export_id.clone()),
                Waiting {
                    attempts: row.attempts,
                    export,
                },
            );
        }
        self.publish();
    }

    fn publish(&self) {
        let capi = &metrics().capi;
        capi.refused_credentials.set(self.accounts.len() as i64);
        capi.waiting_credential
            .set(self.accounts.values().map(|r| r.exports.len() as i64).sum());
    }
}

fn offsets_list(next_offsets: &BTreeMap<(String, i32), i64>) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in next_offsets {
        // Adding a partition to a fresh list cannot fail.
        let _ = list.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    list
}

/// The settings `wafunnel capi` runs with: tokens required.
fn checked_settings(cfg: &Config) -> Result<CapiSettings, CapiError> {
    let settings = cfg.capi_settings()?;
    if let Some(missing) = settings.missing_token() {
        return Err(missing.into());
    }
    Ok(settings)
}

/// Runs `wafunnel capi` until `shutdown` stops it. Returns how many
/// exports got their status.
pub async fn run(cfg: &Config, shutdown: Shutdown) -> Result<u64, CapiError> {
    let settings = checked_settings(cfg)?;
    let partitions = match kafka::connect(&cfg.kafka, &shutdown).await {
        Ok(partitions) => partitions,
        // Stopped before there was anything to do: a clean stop.
        Err(ConnectError::Stopped(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    match sink::wait_until_migrated(&cfg.clickhouse, &shutdown).await {
        Ok(()) => {}
        Err(SinkError::Abandoned) => return Ok(0),
        Err(e) => return Err(e.into()),
    }
    let topic = cfg.topics.capi.clone();
    if !partitions.contains_key(&topic) {
        return Err(CapiError::MissingTopic(topic));
    }
    let sender = Sender {
        graph: Graph::new(&settings).map_err(CapiError::Http)?,
        destinations: Arc::new(destinations(&settings)),
        settings: Arc::new(settings),
    };
    let db = sink::client(&cfg.clickhouse);
    let consumer: StreamConsumer<LogContext> =
        kafka::committing_consumer_config(&cfg.kafka, &cfg.kafka.capi_group)
            .create_with_context(LogContext)
            .map_err(kafka::redact)?;
    consumer.subscribe(&[&topic])?;
    metrics().set_ready(true);
    tracing::info!(
        topic,
        accounts = sender.settings.accounts.len(),
        "capi started"
    );
    let cap = sender.settings.max_batch * 10;
    let mut done = Done::default();
    let mut credentials = Credentials::default();
    let stored_waiting = status::waiting(&db).await?;
    if !stored_waiting.is_empty() {
        tracing::info!(
            exports = stored_waiting.len(),
            "exports wait for their account's credential: sending them again"
        );
    }
    for waiting in &stored_waiting {
        done.insert(&waiting.export.export_id);
    }
    credentials.restore(stored_waiting);
    let mut uncommitted: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut stored = 0u64;
    loop {
        let round = gather(
            &consumer,
            sender.settings.linger,
            cap,
            credentials.next_try(),
            &shutdown,
        )
        .await;
        let (retry, held) = credentials.due(Instant::now());
        if !round.is_empty() || !retry.is_empty() {
            let rows = sender
                .outcomes(round.exports, retry, &held, &done, &shutdown)
                .await?;
            status::write(&db, &rows, &shutdown).await?;
            for row in &rows {
                done.insert(&row.export_id);
                metrics().capi.stored(&row.status);
            }
            credentials.stored(&rows, sender.settings.credential_retry);
            stored += rows.len() as u64;
            tracing::debug!(exports = rows.len(), "export statuses stored");
            uncommitted.extend(round.next_offsets);
        }
        if !uncommitted.is_empty() {
            // Offsets only move after the statuses are stored; a failed
            // commit is tried again with the next round's (a restart
            // before then sends that round again).
            match blocking(|| consumer.commit(&offsets_list(&uncommitted), CommitMode::Sync)) {
                Ok(()) => uncommitted.clear(),
                Err(e) => tracing::warn!(error = %e, "failed to commit offsets"),
            }
        }
        if shutdown.is_stopping() {
            break;
        }
    }
    metrics().set_ready(false);
    // Dropping the consumer leaves the group: the next owner starts now.
    drop(consumer);
    tracing::info!(stored, "capi stopped");
    Ok(stored)
}

/// What a dry run found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// Exports read.
    pub exports: u64,
    /// Requests written.
    pub requests: u64,
}

/// `wafunnel capi --dry-run`: reads the capi topic from the group's
/// committed offsets to its current end, without joining the group or
/// committing, and writes the requests it would make (one JSON line each:
/// path and body; no token needed) to `out`. While the brokers are
/// unreachable it waits, until `shutdown` is abandoned.
pub async fn dry_run(
    cfg: &Config,
    out: &mut dyn Write,
    shutdown: &Shutdown,
) -> Result<DryRun, CapiError> {
    let settings = cfg.capi_settings()?;
    let partitions = kafka::connect(&cfg.kafka, shutdown).await?;
    let topic = cfg.topics.capi.clone();
    let Some(&count) = partitions.get(&topic) else {
        return Err(CapiError::MissingTopic(topic));
    };
    let consumer: BaseConsumer<LogContext> =
        kafka::committing_consumer_config(&cfg.kafka, &cfg.kafka.capi_group)
            .create_with_context(LogContext)
            .map_err(kafka::redact)?;
    let exports = blocking(|| -> Result<Vec<ConversionExport>, CapiError> {
        let mut wanted = TopicPartitionList::new();
        for partition in 0..count {
            wanted.add_partition(&topic, partition);
        }
        let committed = kafka::committed_offsets(&consumer, &wanted)?;
        let mut start = TopicPartitionList::new();
        let mut ends = BTreeMap::new();
        for element in committed.elements() {
            let (_, high) =
                consumer.fetch_watermarks(&topic, element.partition(), Duration::from_secs(10))?;
            let from = match element.offset() {
                Offset::Offset(offset) => Offset::Offset(offset),
                _ => Offset::Beginning,
            };
            let begin = match from {
                Offset::Offset(offset) => offset,
                _ => 0,
            };
            if begin < high {
                ends.insert(element.partition(), high);
                start.add_partition_offset(&topic, element.partition(), from)?;
            }
        }
        consumer.assign(&start)?;
        let mut round = Round::default();
        while !ends.is_empty() {
            let Some(received) = consumer.poll(Duration::from_secs(10)) else {
                // Nothing for 10 s below a known end: the records are gone
                // (retention) or not committed (an aborted transaction).
                break;
            };
            let message = received?;
            round.add(&message);
            if ends
                .get(&message.partition())
                .is_some_and(|&end| message.offset() + 1 >= end)
            {
                ends.remove(&message.partition());
            }
        }
        Ok(round.exports)
    })?;
    let requests = payload::requests(&exports, &destinations(&settings));
    for request in &requests {
        writeln!(out, "{}", request.dry_run_line()).map_err(CapiError::Output)?;
    }
    out.flush().map_err(CapiError::Output)?;
    Ok(DryRun {
        exports: exports.len() as u64,
        requests: requests.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn export(id: &str) -> ConversionExport {
        ConversionExport {
            export_id: id.into(),
            account_id: Arc::from("act_1"),
            event_name: wafunnel_core::export::ConversionName::Purchase,
            event_time: 1,
            day: wafunnel_core::time::Day(20_000),
            click_id: Some(Arc::from("clid")),
            value: None,
            currency: None,
            decision: ExportDecision::Send,
        }
    }

    fn row(id: &str, status: Status, attempts: u32) -> StatusRow {
        let outcome = Outcome {
            status,
            error_code: (status == Status::WaitingCredential).then(|| "190".into()),
            error_message: None,
            attempts,
        };
        StatusRow::new(&export(id), &outcome, 1)
    }

    #[test]
    fn waiting_exports_are_held_until_due_then_released_once_sent() {
        let mut credentials = Credentials::default();
        let retry_in = Duration::from_secs(60);
        credentials.stored(
            &[
                row("a", Status::WaitingCredential, 1),
                row("b", Status::WaitingCredential, 0),
            ],
            retry_in,
        );
        let (retry, held) = credentials.due(Instant::now());
        assert!(retry.is_empty(), "tried again before capi.credential_retry");
        assert_eq!(
            held.get("act_1").map(|o| o.status),
            Some(Status::WaitingCredential)
        );
        let (retry, held) = credentials.due(Instant::now() + retry_in);
        assert_eq!(retry.len(), 2);
        assert!(held.is_empty());
        credentials.stored(&[row("a", Status::Sent, 2)], retry_in);
        assert_eq!(credentials.accounts["act_1"].exports.len(), 1);
        credentials.stored(&[row("b", Status::Sent, 1)], retry_in);
        assert!(credentials.accounts.is_empty());
        assert_eq!(credentials.next_try(), None);
    }

    #[test]
    fn exports_restored_from_an_earlier_run_are_due_at_once() {
        let mut credentials = Credentials::default();
        credentials.restore(vec![Waiting {
            export: export("a"),
            attempts: 3,
        }]);
        let (retry, _) = credentials.due(Instant::now());
        assert_eq!(retry.len(), 1);
        assert_eq!(retry[0].attempts, 3);
        // Refused again: not due before the interval.
        credentials.stored(
            &[row("a", Status::WaitingCredential, 4)],
            Duration::from_secs(60),
        );
        assert!(credentials.due(Instant::now()).0.is_empty());
    }

    #[test]
    fn done_forgets_the_oldest_first() {
        let mut done = Done::default();
        for i in 0..=DONE_REMEMBERED {
            done.insert(&i.to_string());
        }
        done.insert("1");
        assert!(!done.contains("0"));
        assert!(done.contains("1") && done.contains(&DONE_REMEMBERED.to_string()));
        assert_eq!(done.order.len(), DONE_REMEMBERED);
    }
}
