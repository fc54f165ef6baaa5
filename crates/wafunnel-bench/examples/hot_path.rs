//! The per-record work of ingest and sessionize outside Kafka, on the demo
//! log, for counting instructions per record with callgrind:
//!
//! ```text
//! cargo build --release -p wafunnel-bench --example hot_path
//! valgrind --tool=callgrind --callgrind-out-file=cg.out \
//!     --toggle-collect='hot_path::measured_*' \
//!     target/release/examples/hot_path MODE
//! callgrind_annotate cg.out | head    # instructions collected / records printed
//! ```
//!
//! MODE is one of
//! - `ingest-json`: decode and validate each line, then the internal record
//!   as JSON and its key, each in a new buffer (the form before `wire`);
//! - `ingest-wire`: the same with the binary record and the key written into
//!   buffers reused from record to record;
//! - `sessionize-json` / `sessionize-wire`: decode each internal record of
//!   that form back into an event;
//! - `apply`: apply the decoded events to one sessionizer (what follows
//!   the decode in sessionize).
//!
//! Only the function of the mode is measured: generating the log and the
//! inputs of a decode happen outside it. Prints the records processed.

use std::hint::black_box;

use wafunnel_core::config::{Accounts, UserHasher, Windows};
use wafunnel_core::event::{parse_json_event, Event};
use wafunnel_core::sessionizer::Sessionizer;
use wafunnel_core::wire::{self, Content, Source};

const TOPIC: &str = "wafunnel-raw-events";

fn source(i: usize) -> Source<'static> {
    Source {
        topic: TOPIC,
        partition: (i % 4) as u32,
        offset: (i / 4) as i64,
    }
}

#[inline(never)]
fn measured_ingest_json(
    lines: &[Vec<u8>],
    accounts: &Accounts,
    hasher: &UserHasher,
    now: i64,
) -> usize {
    let mut bytes = 0;
    for line in lines {
        if let Ok(event) = parse_json_event(line, accounts, hasher, now) {
            let key = event.partition_key();
            let payload = serde_json::to_vec(&event).expect("an event encodes");
            bytes += black_box(key).len() + black_box(payload).len();
        }
    }
    bytes
}

#[inline(never)]
fn measured_ingest_wire(
    lines: &[Vec<u8>],
    accounts: &Accounts,
    hasher: &UserHasher,
    now: i64,
) -> usize {
    let mut bytes = 0;
    let mut key = String::new();
    let mut payload = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Ok(event) = parse_json_event(line, accounts, hasher, now) {
            key.clear();
            event.write_partition_key(&mut key);
            payload.clear();
            wire::encode_event(&source(i), &event, &mut payload);
            bytes += black_box(&key).len() + black_box(&payload).len();
        }
    }
    bytes
}

#[inline(never)]
fn measured_sessionize_json(records: &[Vec<u8>]) -> usize {
    let mut decoded = 0;
    for record in records {
        let event: Event = serde_json::from_slice(record).expect("a JSON event");
        decoded += usize::from(black_box(event).time > 0);
    }
    decoded
}

#[inline(never)]
fn measured_sessionize_wire(records: &[Vec<u8>]) -> usize {
    let mut decoded = 0;
    for record in records {
        let record = wire::decode(record).expect("a wire record");
        decoded += usize::from(matches!(black_box(record).content, Content::Event(_)));
    }
    decoded
}

#[inline(never)]
fn measured_apply(events: &[Event], sessionizer: &mut Sessionizer) -> usize {
    let mut applied = 0;
    for event in events {
        applied += usize::from(matches!(
            sessionizer.apply(event),
            wafunnel_core::sessionizer::Outcome::Applied
        ));
    }
    applied
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let cfg = wafunnel_gen::GenConfig::demo();
    let generated = wafunnel_gen::generate(&cfg);
    let accounts = cfg.core_accounts();
    let hasher = UserHasher::new(b"hot-path-user-hash-key");
    let now = cfg.valid_now_ms();
    let lines: Vec<Vec<u8>> = generated.records.into_iter().map(|r| r.line).collect();
    let events: Vec<Event> = lines
        .iter()
        .filter_map(|line| parse_json_event(line, &accounts, &hasher, now).ok())
        .collect();
    let records = match mode.as_str() {
        "ingest-json" => {
            black_box(measured_ingest_json(&lines, &accounts, &hasher, now));
            lines.len()
        }
        "ingest-wire" => {
            black_box(measured_ingest_wire(&lines, &accounts, &hasher, now));
            lines.len()
        }
        "sessionize-json" => {
            let records: Vec<Vec<u8>> = events
                .iter()
                .map(|e| serde_json::to_vec(e).expect("an event encodes"))
                .collect();
            black_box(measured_sessionize_json(&records))
        }
        "sessionize-wire" => {
            let records: Vec<Vec<u8>> = events
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    let mut out = Vec::new();
                    wire::encode_event(&source(i), e, &mut out);
                    out
                })
                .collect();
            black_box(measured_sessionize_wire(&records))
        }
        "apply" => {
            let mut sessionizer = Sessionizer::new(0, Windows::default(), accounts.clone());
            black_box(measured_apply(&events, &mut sessionizer));
            events.len()
        }
        _ => {
            eprintln!(
                "usage: hot_path ingest-json|ingest-wire|sessionize-json|sessionize-wire|apply"
            );
            std::process::exit(2)
        }
    };
    println!("records={records}");
}
