//! Offline runs: generated traffic or an NDJSON log through one sessionizer,
//! with no Kafka and no ClickHouse. Input order is arrival order; every
//! record ends in exactly one of applied, duplicate, late or rejected.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use wafunnel_capi::payload::{Destinations, Request};
use wafunnel_core::config::{Accounts, UserHasher, Windows};
use wafunnel_core::event::{decode_json, Event, Rejection};
use wafunnel_core::export::ExportDecision;
use wafunnel_core::sessionizer::{Outcome, Sessionizer};
use wafunnel_core::tables::Tables;
use wafunnel_meta::PhoneNumbers;

use crate::OutputArgs;

/// How many events between two drains into the tables.
const DRAIN_EVERY: u64 = 50_000;
/// How many lines between two progress lines.
const PROGRESS_EVERY: u64 = 1_000_000;
/// Rejections printed one by one before only counting them.
const MAX_PRINTED_REJECTIONS: u64 = 50;

/// Where every input record ended.
#[derive(Debug, Default, Clone)]
pub(crate) struct Accounting {
    /// Input records (non-blank lines).
    pub records: u64,
    /// Applied to the state.
    pub applied: u64,
    /// Repeats of an applied event.
    pub duplicate: u64,
    /// Older than the watermark minus the allowed lateness.
    pub late: u64,
    /// Rejected by validation, by reason code.
    pub rejected: BTreeMap<&'static str, u64>,
    /// Valid records with nothing to count (webhook bodies of receipts).
    pub ignored: u64,
}

impl Accounting {
    /// Rejected records of every reason.
    pub(crate) fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// The result of a run.
#[derive(Debug)]
pub(crate) struct RunResult {
    /// The three tables.
    pub tables: Tables,
    /// Where every record ended.
    pub accounting: Accounting,
    /// The account settings used.
    pub accounts: Accounts,
    /// What the input was.
    pub source: String,
}

/// How the records of an input file are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum InputFormat {
    /// One canonical JSON event per line.
    Json,
    /// One WhatsApp Cloud API webhook body per line.
    WhatsappWebhook,
    /// One Marketing API insights row per line (with `fetched_at`).
    MetaInsights,
}

impl std::str::FromStr for InputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <InputFormat as clap::ValueEnum>::from_str(s, false)
            .map_err(|_| format!("unknown format `{s}` (json, whatsapp-webhook, meta-insights)"))
    }
}

struct Engine {
    sessionizer: Sessionizer,
    tables: Tables,
    accounts: Accounts,
    numbers: PhoneNumbers,
    hasher: UserHasher,
    now_ms: i64,
    accounting: Accounting,
    since_drain: u64,
}

impl Engine {
    fn new(accounts: Accounts, numbers: PhoneNumbers, key: &[u8], now_ms: i64) -> Self {
        Engine {
            sessionizer: Sessionizer::new(0, Windows::default(), accounts.clone()),
            tables: Tables::default(),
            accounts,
            numbers,
            hasher: UserHasher::new(key),
            now_ms,
            accounting: Accounting::default(),
            since_drain: 0,
        }
    }

    /// Feeds one canonical JSON record; returns the rejection, if any.
    fn feed(&mut self, line: &[u8]) -> Result<(), Rejection> {
        self.feed_as(InputFormat::Json, line)
    }

    /// Feeds one record of `format`; returns the first rejection, if any.
    /// A webhook body's events are each counted in their own outcome; a
    /// valid body without any is counted once as ignored.
    fn feed_as(&mut self, format: InputFormat, line: &[u8]) -> Result<(), Rejection> {
        let mut events = Vec::new();
        let checked = self.parse_as(format, line, &mut events);
        for event in &events {
            self.apply(event);
        }
        checked
    }

    /// Validates one record of `format` into `events` (a webhook body may
    /// give several), counting it; returns the first rejection, if any.
    fn parse_as(
        &mut self,
        format: InputFormat,
        line: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), Rejection> {
        self.accounting.records += 1;
        let raws = match format {
            InputFormat::Json => vec![decode_json(line)],
            InputFormat::MetaInsights => {
                vec![wafunnel_meta::insights_row(line, None, &self.accounts)]
            }
            InputFormat::WhatsappWebhook => {
                match wafunnel_meta::normalize_webhook(line, &self.numbers) {
                    Ok(raws) if raws.is_empty() => {
                        self.accounting.ignored += 1;
                        return Ok(());
                    }
                    Ok(raws) => raws.into_iter().map(Ok).collect(),
                    Err(rejection) => vec![Err(rejection)],
                }
            }
        };
        let mut first = Ok(());
        for raw in raws {
            let checked =
                raw.and_then(|raw| raw.validate(&self.accounts, &self.hasher, self.now_ms));
            match checked {
                Ok(event) => events.push(event),
                Err(rejection) => {
                    *self
                        .accounting
                        .rejected
                        .entry(rejection.code())
                        .or_default() += 1;
                    if first.is_ok() {
                        first = Err(rejection);
                    }
                }
            }
        }
        first
    }

    fn apply(&mut self, event: &Event) {
        match self.sessionizer.apply(event) {
            Outcome::Applied => self.accounting.applied += 1,
            Outcome::Duplicate => self.accounting.duplicate += 1,
            Outcome::Late { .. } => self.accounting.late += 1,
        }
        self.since_drain += 1;
        if self.since_drain >= DRAIN_EVERY {
            self.since_drain = 0;
            self.tables.apply(self.sessionizer.drain());
        }
    }

    fn finish(mut self, source: String) -> RunResult {
        // The end of the input moves the watermark past every event.
        self.sessionizer.finish();
        self.tables.apply(self.sessionizer.drain());
        RunResult {
            tables: self.tables,
            accounting: self.accounting,
            accounts: self.accounts,
            source,
        }
    }
}

/// Runs generated demo traffic. With `as_meta` (which needs a
/// [`wafunnel_gen::GenConfig::meta`] configuration) the traffic comes as
/// Meta sends it: webhook bodies, insights rows and canonical JSON, through
/// the same normalizers as `replay --input FORMAT=FILE`.
pub(crate) fn run_demo(cfg: &wafunnel_gen::GenConfig, key: &[u8], as_meta: bool) -> RunResult {
    let mut engine = Engine::new(
        cfg.core_accounts(),
        PhoneNumbers::new(cfg.phone_numbers()),
        key,
        cfg.valid_now_ms(),
    );
    // Generated records are valid unless the configuration asks for invalid
    // ones: rejections are counted, not printed.
    let source = if as_meta {
        let mut by_format: BTreeMap<&'static str, u64> = BTreeMap::new();
        for record in wafunnel_gen::meta_stream(cfg) {
            let format = match record.format {
                wafunnel_gen::PayloadFormat::Json => InputFormat::Json,
                wafunnel_gen::PayloadFormat::WhatsappWebhook => InputFormat::WhatsappWebhook,
                wafunnel_gen::PayloadFormat::MetaInsights => InputFormat::MetaInsights,
            };
            *by_format.entry(record.format.name()).or_default() += 1;
            let _ = engine.feed_as(format, &record.payload);
        }
        let counts: Vec<String> = by_format
            .iter()
            .map(|(format, n)| format!("{n} {format}"))
            .collect();
        format!(
            "generated traffic as Meta sends it (seed {}, {})",
            cfg.seed,
            counts.join(", ")
        )
    } else {
        let mut records = 0u64;
        for record in wafunnel_gen::stream(cfg) {
            records += 1;
            let _ = engine.feed(&record.line);
        }
        format!("generated traffic (seed {}, {records} records)", cfg.seed)
    };
    engine.finish(source)
}

/// One input of a replay: a file (`-` is standard input) in a format.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    /// How its lines are encoded.
    pub format: InputFormat,
    /// The file.
    pub path: std::path::PathBuf,
}

/// Runs line-per-record logs through one sessionizer. Several inputs are
/// sources of their own, like topics (docs/SEMANTICS.md section 7): they
/// are merged by event time, each in its own order, so no input makes
/// another's events late.
pub(crate) fn run_replay(
    inputs: &[Input],
    accounts: Accounts,
    numbers: PhoneNumbers,
    key: &[u8],
    now_ms: i64,
) -> anyhow::Result<RunResult> {
    struct Open {
        name: String,
        format: InputFormat,
        reader: Box<dyn BufRead>,
        line_no: u64,
        done: bool,
        /// Events of the lines read and not applied yet, in file order.
        queue: VecDeque<Event>,
    }
    let mut open = Vec::with_capacity(inputs.len());
    for input in inputs {
        let name = input.path.display().to_string();
        let file: Box<dyn Read> = if name == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(File::open(&input.path).with_context(|| format!("cannot open {name}"))?)
        };
        open.push(Open {
            name,
            format: input.format,
            reader: Box::new(BufReader::with_capacity(1 << 20, file)),
            line_no: 0,
            done: false,
            queue: VecDeque::new(),
        });
    }
    let mut engine = Engine::new(accounts, numbers, key, now_ms);
    let started = Instant::now();
    let mut line = Vec::with_capacity(1024);
    let mut events = Vec::new();
    let mut total = 0u64;
    loop {
        // Every input with nothing queued reads lines until it has an event
        // or ends.
        for input in open.iter_mut() {
            while input.queue.is_empty() && !input.done {
                line.clear();
                let n = input
                    .reader
                    .read_until(b'\n', &mut line)
                    .with_context(|| format!("cannot read {}", input.name))?;
                if n == 0 {
                    input.done = true;
                    break;
                }
                input.line_no += 1;
                total += 1;
                let trimmed = line.trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                events.clear();
                if let Err(rejection) = engine.parse_as(input.format, trimmed, &mut events) {
                    let rejected = engine.accounting.rejected_total();
                    if rejected <= MAX_PRINTED_REJECTIONS {
                        eprintln!(
                            "{}:{}: rejected ({}): {rejection}",
                            input.name,
                            input.line_no,
                            rejection.code()
                        );
                    } else if rejected == MAX_PRINTED_REJECTIONS + 1 {
                        eprintln!(
                            "{}: more rejected lines follow; only their count is reported",
                            input.name
                        );
                    }
                }
                input.queue.extend(events.drain(..));
                if total % PROGRESS_EVERY == 0 {
                    let secs = started.elapsed().as_secs_f64();
                    eprintln!(
                        "{total} lines in {secs:.1} s ({:.0} lines/s)",
                        total as f64 / secs
                    );
                }
            }
        }
        // Each input is a source of its own, like a topic: the one whose
        // next event is earliest goes first, so no input makes another's
        // events late (each keeps its own order).
        let next = open
            .iter_mut()
            .filter(|o| !o.queue.is_empty())
            .min_by_key(|o| o.queue.front().map(|e| e.time));
        let Some(input) = next else {
            break;
        };
        let event = input.queue.pop_front().expect("not empty");
        engine.apply(&event);
    }
    let names: Vec<&str> = open.iter().map(|o| o.name.as_str()).collect();
    Ok(engine.finish(names.join(", ")))
}

/// Prints the report and writes the tables if asked.
pub(crate) fn finish(
    result: &RunResult,
    output: &OutputArgs,
    destinations: &Destinations,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let report = crate::report::Report::from_run(result);
    crate::report::render(&report, &mut stdout).context("cannot write the report")?;
    if let Some(path) = &output.html {
        crate::html::write(&report, path)?;
    }
    let exports = result.tables.exports();
    let requests = wafunnel_capi::payload::requests(&exports, destinations);
    if let Some(dir) = &output.out {
        write_tables(&result.tables, dir)?;
        write_requests(&dir.join("capi_requests.ndjson"), &requests)?;
        writeln!(stdout, "\nTables written to {}", dir.display())?;
    }
    if let Some(path) = &output.capi_out {
        write_requests(path, &requests)?;
        let sent: usize = requests.iter().map(|r| r.export_ids.len()).sum();
        writeln!(
            stdout,
            "\n{} Conversions API requests ({sent} events) written to {}",
            requests.len(),
            path.display()
        )?;
    }
    let unrouted = exports
        .iter()
        .filter(|x| {
            x.decision == ExportDecision::Send
                && !destinations.accounts.contains_key(&*x.account_id)
        })
        .count();
    if unrouted > 0 && (output.out.is_some() || output.capi_out.is_some()) {
        writeln!(
            stdout,
            "{unrouted} Conversions API exports to send belong to accounts without --capi-dataset: no request written for them"
        )?;
    }
    Ok(())
}

/// Writes the Conversions API requests, one dry-run line each.
fn write_requests(path: &Path, requests: &[Request]) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for request in requests {
        out.write_all(request.dry_run_line().as_bytes())?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

fn write_ndjson<T: Serialize>(path: &Path, rows: &[T]) -> anyhow::Result<()> {
    let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut out = BufWriter::new(file);
    for row in rows {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `funnel_daily.ndjson`, `contacts_daily.ndjson`,
/// `conversations.ndjson` and the Conversions API exports the engine
/// decided, `capi_exports.ndjson`.
pub(crate) fn write_tables(tables: &Tables, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_ndjson(&dir.join("funnel_daily.ndjson"), &tables.funnel_daily())?;
    write_ndjson(&dir.join("contacts_daily.ndjson"), &tables.contacts_daily())?;
    write_ndjson(&dir.join("conversations.ndjson"), &tables.conversations())?;
    write_ndjson(&dir.join("capi_exports.ndjson"), &tables.exports())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_input_makes_another_inputs_events_late() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Spend rows fetched ten days on, and the clicks of those days: read
        // line by line in turn, the first row would make every click late.
        let spend = dir.path().join("spend.ndjson");
        let clicks = dir.path().join("clicks.ndjson");
        let mut spend_lines = String::new();
        let mut click_lines = String::new();
        for day in 1..=3 {
            spend_lines.push_str(&format!(
                r#"{{"event_id":"s{day}","type":"ad_spend","account_id":"act_1","event_time":"2026-03-{:02}T06:00:00Z","ad_id":"ad_1","date":"2026-03-{day:02}","spend":"10","currency":"USD","impressions":1,"clicks":1,"reported_conversations":1}}"#,
                day + 10
            ));
            spend_lines.push('\n');
            for user in 0..3 {
                click_lines.push_str(&format!(
                    r#"{{"event_id":"c{day}-{user}","type":"ad_click","account_id":"act_1","user_id":"u{user}","event_time":"2026-03-{day:02}T12:00:00Z","ad_id":"ad_1"}}"#
                ));
                click_lines.push('\n');
            }
        }
        std::fs::write(&spend, spend_lines).expect("write");
        std::fs::write(&clicks, click_lines).expect("write");
        let inputs = [
            Input {
                format: InputFormat::Json,
                path: spend,
            },
            Input {
                format: InputFormat::Json,
                path: clicks,
            },
        ];
        let now = 1_900_000_000_000;
        let result = run_replay(
            &inputs,
            Accounts::default(),
            PhoneNumbers::default(),
            b"k",
            now,
        )
        .expect("replay");
        assert_eq!((result.accounting.applied, result.accounting.late), (12, 0));
    }

    #[test]
    fn the_demo_as_meta_sends_it_gives_the_tables_of_its_canonical_events() {
        let cfg = wafunnel_gen::GenConfig {
            meta: true,
            ..wafunnel_gen::GenConfig::scaled(6_000)
        };
        let canonical = run_demo(&cfg, b"k", false);
        let meta = run_demo(&cfg, b"k", true);
        assert!(meta.source.contains("whatsapp-webhook"), "{}", meta.source);
        assert!(
            meta.accounting.records < canonical.accounting.records,
            "some bodies carry two events"
        );
        let outcomes = |r: &RunResult| {
            (
                r.accounting.applied,
                r.accounting.duplicate,
                r.accounting.late,
                r.accounting.rejected_total(),
                r.accounting.ignored,
            )
        };
        assert_eq!(outcomes(&meta), outcomes(&canonical));
        assert!(canonical.accounting.applied > 5_000);
        assert_eq!(meta.tables.funnel_daily(), canonical.tables.funnel_daily());
        assert_eq!(
            meta.tables.contacts_daily(),
            canonical.tables.contacts_daily()
        );
        assert_eq!(
            meta.tables.conversations(),
            canonical.tables.conversations()
        );
        assert!(
            meta.tables
                .funnel_daily()
                .iter()
                .any(|row| row.outbound_billable > 0),
            "billable templates are counted"
        );
    }
}
