//! A driver for instruction counts: builds the state of `N` open
//! conversations (first argument, default 1M), then applies the engine
//! bench's 200k follow-up events to it in `apply_batch`, so that
//! `valgrind --tool=callgrind --toggle-collect=*apply_batch` counts only
//! those.

use wafunnel_bench::{opening_clicks, traffic};
use wafunnel_core::config::{Accounts, Windows};
use wafunnel_core::event::Event;
use wafunnel_core::sessionizer::Sessionizer;

const BATCH: usize = 200_000;

#[inline(never)]
fn apply_batch(s: &mut Sessionizer, events: &[Event]) -> usize {
    for e in events {
        s.apply(e);
    }
    s.drain().conversations.len()
}

fn main() {
    let live = std::env::args()
        .nth(1)
        .map_or(1_000_000, |n| n.parse().expect("a number of conversations"));
    let clicks = opening_clicks(live);
    let events = traffic(live, BATCH);
    let mut s = Sessionizer::new(0, Windows::default(), Accounts::default());
    for e in &clicks {
        s.apply(e);
    }
    s.drain();
    let rows = apply_batch(&mut s, &events);
    println!("{live} open conversations, {BATCH} events applied, {rows} conversation rows");
}
