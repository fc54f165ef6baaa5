//! Produces a seeded generated event log to a raw topic, for
//! `scripts/bench-e2e.sh`.
//!
//! ```text
//! cargo run --release -p wafunnel-stream --example bench_produce -- \
//!     BOOTSTRAP TOPIC PARTITIONS FORMAT EVENTS
//! ```
//!
//! FORMAT is `json` or `avro-single-object`; EVENTS is the target number of
//! valid events (`GenConfig::scaled`, with its duplicates and disorder).
//! Records go round-robin over the partitions in arrival order. Prints one
//! line `records=N seconds=S` when every record is acknowledged.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn usage() -> ! {
    eprintln!("usage: bench_produce BOOTSTRAP TOPIC PARTITIONS json|avro-single-object EVENTS");
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bootstrap, topic, partitions, format, events] = args.as_slice() else {
        usage()
    };
    let partitions: i32 = partitions.parse().unwrap_or_else(|_| usage());
    let events: u64 = events.parse().unwrap_or_else(|_| usage());
    let generated = wafunnel_gen::generate(&wafunnel_gen::GenConfig::scaled(events));
    let codec = wafunnel_avro::AvroCodec::new();
    let payloads: Vec<Vec<u8>> = match format.as_str() {
        "json" => generated.records.iter().map(|r| r.line.clone()).collect(),
        "avro-single-object" => generated
            .records
            .iter()
            .map(|r| {
                let raw =
                    wafunnel_core::event::decode_json(&r.line).expect("generated lines decode");
                codec
                    .encode_single_object(&raw)
                    .expect("generated events encode")
            })
            .collect(),
        _ => usage(),
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Idempotence keeps each partition in order through retries: a
        // reordered input would turn good events late downstream.
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    let started = Instant::now();
    let mut pending = Vec::with_capacity(payloads.len());
    for (i, payload) in payloads.iter().enumerate() {
        let mut record = FutureRecord::<(), _>::to(topic)
            .payload(payload)
            .partition(i as i32 % partitions);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((_, back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }
    for delivery in pending {
        delivery.await.expect("delivered").expect("acknowledged");
    }
    println!(
        "records={} seconds={:.3}",
        payloads.len(),
        started.elapsed().as_secs_f64()
    );
}
