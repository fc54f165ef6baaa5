//! Offline runs: generated traffic or an NDJSON log through one sessionizer,
//! with no Kafka and no ClickHouse. Input order is arrival order; every
//! record ends in exactly one of applied, duplicate, late or rejected.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use wafunnel_core::config::{Accounts, UserHasher, Windows};
use wafunnel_core::event::parse_json_event;
use wafunnel_core::sessionizer::{Outcome, Sessionizer};
use wafunnel_core::tables::Tables;

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

struct Engine {
    sessionizer: Sessionizer,
    tables: Tables,
    accounts: Accounts,
    hasher: UserHasher,
    now_ms: i64,
    accounting: Accounting,
    since_drain: u64,
}

impl Engine {
    fn new(accounts: Accounts, key: &[u8], now_ms: i64) -> Self {
        Engine {
            sessionizer: Sessionizer::new(0, Windows::default(), accounts.clone()),
            tables: Tables::default(),
            accounts,
            hasher: UserHasher::new(key),
            now_ms,
            accounting: Accounting::default(),
            since_drain: 0,
        }
    }

    /// Feeds one record; returns the rejection, if any.
    fn feed(&mut self, line: &[u8]) -> Result<(), wafunnel_core::event::Rejection> {
        self.accounting.records += 1;
        let event = match parse_json_event(line, &self.accounts, &self.hasher, self.now_ms) {
            Ok(event) => event,
            Err(rejection) => {
                *self
                    .accounting
                    .rejected
                    .entry(rejection.code())
                    .or_default() += 1;
                return Err(rejection);
            }
        };
        match self.sessionizer.apply(&event) {
            Outcome::Applied => self.accounting.applied += 1,
            Outcome::Duplicate => self.accounting.duplicate += 1,
            Outcome::Late { .. } => self.accounting.late += 1,
        }
        self.since_drain += 1;
        if self.since_drain >= DRAIN_EVERY {
            self.since_drain = 0;
            self.tables.apply(self.sessionizer.drain());
        }
        Ok(())
    }

    fn finish(mut self, source: String) -> RunResult {
        self.tables.apply(self.sessionizer.drain());
        RunResult {
            tables: self.tables,
            accounting: self.accounting,
            accounts: self.accounts,
            source,
        }
    }
}

/// Runs generated demo traffic.
pub(crate) fn run_demo(cfg: &wafunnel_gen::GenConfig, key: &[u8]) -> RunResult {
    let mut engine = Engine::new(cfg.core_accounts(), key, cfg.valid_now_ms());
    let mut records = 0u64;
    for record in wafunnel_gen::stream(cfg) {
        records += 1;
        // Generated lines are valid unless the configuration asks for invalid ones.
        let _ = engine.feed(&record.line);
    }
    engine.finish(format!(
        "generated traffic (seed {}, {records} records)",
        cfg.seed
    ))
}

/// Runs an NDJSON log; `-` reads standard input.
pub(crate) fn run_replay(
    path: &Path,
    accounts: Accounts,
    key: &[u8],
    now_ms: i64,
) -> anyhow::Result<RunResult> {
    let name = path.display().to_string();
    let input: Box<dyn Read> = if name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(File::open(path).with_context(|| format!("cannot open {name}"))?)
    };
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut engine = Engine::new(accounts, key, now_ms);
    let started = Instant::now();
    let mut line = Vec::with_capacity(1024);
    let mut line_no = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {name}"))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let trimmed = line.trim_ascii();
        if trimmed.is_empty() {
            continue;
        }
        if let Err(rejection) = engine.feed(trimmed) {
            let rejected = engine.accounting.rejected_total();
            if rejected <= MAX_PRINTED_REJECTIONS {
                eprintln!(
                    "{name}:{line_no}: rejected ({}): {rejection}",
                    rejection.code()
                );
            } else if rejected == MAX_PRINTED_REJECTIONS + 1 {
                eprintln!("{name}: more rejected lines follow; only their count is reported");
            }
        }
        if line_no % PROGRESS_EVERY == 0 {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{name}: {line_no} lines in {secs:.1} s ({:.0} lines/s)",
                line_no as f64 / secs
            );
        }
    }
    Ok(engine.finish(name))
}

/// Prints the report and writes the tables if asked.
pub(crate) fn finish(result: &RunResult, out: Option<&Path>) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    crate::report::render(result, &mut stdout).context("cannot write the report")?;
    if let Some(dir) = out {
        write_tables(&result.tables, dir)?;
        writeln!(stdout, "\nTables written to {}", dir.display())?;
    }
    Ok(())
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

/// Writes `funnel_daily.ndjson`, `contacts_daily.ndjson` and `conversations.ndjson`.
pub(crate) fn write_tables(tables: &Tables, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    write_ndjson(&dir.join("funnel_daily.ndjson"), &tables.funnel_daily())?;
    write_ndjson(&dir.join("contacts_daily.ndjson"), &tables.contacts_daily())?;
    write_ndjson(&dir.join("conversations.ndjson"), &tables.conversations())
}
