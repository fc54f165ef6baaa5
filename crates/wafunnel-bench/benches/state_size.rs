//! Bytes of resident memory per open conversation: builds the state of
//! 1M open conversations started over 20 days (10M with `WAFUNNEL_BENCH_10M=1`) and divides the
//! growth of resident memory by the conversations held. Then the snapshot of
//! that state: its bytes per conversation and the time to save and load it.

use std::time::Instant;

use wafunnel_bench::{opening_clicks, resident_bytes};
use wafunnel_core::config::{Accounts, Windows};
use wafunnel_core::sessionizer::Sessionizer;

fn main() {
    let live = if std::env::var_os("WAFUNNEL_BENCH_10M").is_some() {
        10_000_000
    } else {
        1_000_000
    };
    // Events are built first so that only the state counts.
    let clicks = opening_clicks(live);
    let before = resident_bytes().unwrap_or(0);
    let mut s = Sessionizer::new(0, Windows::default(), Accounts::default());
    for e in &clicks {
        s.apply(e);
    }
    s.drain();
    let after = resident_bytes().unwrap_or(0);
    let stats = s.stats();
    println!(
        "open conversations {}: {} bytes of resident memory each (contacts {}, dedup ids {}, events kept for reordering {})",
        stats.conversations,
        after.saturating_sub(before) / stats.conversations.max(1) as u64,
        stats.contacts,
        stats.dedup_ids,
        stats.kept_events
    );
    let mut snapshot = Vec::new();
    let started = Instant::now();
    s.save(&mut snapshot).expect("drained");
    let saved = started.elapsed();
    let started = Instant::now();
    let loaded = Sessionizer::load(Windows::default(), Accounts::default(), &snapshot)
        .expect("a snapshot just written");
    let load = started.elapsed();
    assert_eq!(loaded.stats(), stats);
    println!(
        "snapshot: {} bytes per open conversation, saved in {saved:.2?}, loaded in {load:.2?}",
        snapshot.len() / stats.conversations.max(1)
    );
}
