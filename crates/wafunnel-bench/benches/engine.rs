//! Sessionizer throughput with 10k and 1M open conversations (10M with
//! `WAFUNNEL_BENCH_10M=1`), and JSON decoding throughput.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wafunnel_bench::{opening_clicks, traffic};
use wafunnel_core::config::{Accounts, UserHasher, Windows};
use wafunnel_core::event::parse_json_event;
use wafunnel_core::sessionizer::Sessionizer;

const BATCH: usize = 200_000;

fn sessionizer(c: &mut Criterion) {
    let mut sizes = vec![10_000, 1_000_000];
    if std::env::var_os("WAFUNNEL_BENCH_10M").is_some() {
        sizes.push(10_000_000);
    }
    let mut group = c.benchmark_group("sessionizer_apply");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BATCH as u64));
    for live in sizes {
        let clicks = opening_clicks(live);
        let events = traffic(live, BATCH);
        group.bench_function(format!("{live}_open_conversations"), |b| {
            b.iter_batched_ref(
                || {
                    let mut s = Sessionizer::new(0, Windows::default(), Accounts::default());
                    for e in &clicks {
                        s.apply(e);
                    }
                    s.drain();
                    s
                },
                |s| {
                    for e in &events {
                        s.apply(e);
                    }
                    s.drain()
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

fn json_decode(c: &mut Criterion) {
    let cfg = wafunnel_gen::GenConfig::demo();
    let lines: Vec<Vec<u8>> = wafunnel_gen::stream(&cfg).map(|r| r.line).collect();
    let accounts = cfg.core_accounts();
    let hasher = UserHasher::new(b"bench");
    let now = cfg.valid_now_ms();
    let mut group = c.benchmark_group("json_decode");
    group.throughput(Throughput::Elements(lines.len() as u64));
    group.sample_size(20);
    group.bench_function("decode_validate_hash", |b| {
        b.iter(|| {
            let mut ok = 0usize;
            for line in &lines {
                ok += usize::from(parse_json_event(line, &accounts, &hasher, now).is_ok());
            }
            ok
        });
    });
    group.finish();
}

criterion_group!(benches, sessionizer, json_decode);
criterion_main!(benches);
