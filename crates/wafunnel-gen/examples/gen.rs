//! Generates traffic as NDJSON and reports what was generated.
//!
//! `cargo run --release -p wafunnel-gen --example gen -- [EVENTS] [--out FILE]`:
//! without `EVENTS` the demo configuration; with it, the demo scaled to about
//! that many events. Without `--out` the lines are only counted.

use std::fs::File;
use std::io::{self, BufWriter};
use std::time::Instant;

use wafunnel_gen::{write_ndjson_stream, GenConfig};

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut cfg = GenConfig::demo();
    let mut out = None;
    while let Some(arg) = args.next() {
        if arg == "--out" {
            out = args.next();
        } else if let Ok(events) = arg.parse::<u64>() {
            cfg = GenConfig::scaled(events);
        } else {
            eprintln!("usage: gen [EVENTS] [--out FILE]");
            std::process::exit(2);
        }
    }
    let started = Instant::now();
    let stats = match out {
        Some(path) => write_ndjson_stream(&cfg, BufWriter::new(File::create(path)?))?,
        None => write_ndjson_stream(&cfg, io::sink())?,
    };
    let elapsed = started.elapsed();
    eprintln!("{stats:#?}");
    eprintln!(
        "{} records ({} events, {:.2} events/contact) in {:.3} s",
        stats.records,
        stats.events,
        (stats.events - stats.spend_snapshots) as f64 / stats.contacts as f64,
        elapsed.as_secs_f64()
    );
    Ok(())
}
