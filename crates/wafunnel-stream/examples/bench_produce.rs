//! Produces a seeded generated event log to a raw topic, for
//! `scripts/bench-e2e.sh`.
//!
//! ```text
//! cargo run --release -p wafunnel-stream --example bench_produce -- \
//!     BOOTSTRAP TOPIC PARTITIONS FORMAT EVENTS
//! ```
//!
//! FORMAT is `json`, `avro-single-object` or `meta`; EVENTS is the target
//! number of valid events (`GenConfig::scaled`, with its duplicates and
//! disorder). `meta` renders the campaign as Meta sends it
//! (`wafunnel_gen::meta_stream`): webhook bodies go to `TOPIC-webhook`
//! (format `whatsapp-webhook`), insights rows to `TOPIC-insights` (format
//! `meta-insights`), clicks, leads and purchases to `TOPIC` (`json`).
//! Records go round-robin over the partitions of their topic in arrival
//! order. Prints one line `records=N outcomes=M seconds=S` when every record
//! is acknowledged (M counts the events a webhook body carries one by one,
//! as `input_accounting` does); with `meta` it ends with
//! `phone_numbers=ID=ACCOUNT,...`, the numbers to configure.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use wafunnel_gen::{GenConfig, PayloadFormat};

fn usage() -> ! {
    eprintln!(
        "usage: bench_produce BOOTSTRAP TOPIC PARTITIONS json|avro-single-object|meta EVENTS"
    );
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
    let cfg = GenConfig::scaled(events);
    let codec = wafunnel_avro::AvroCodec::new();
    // `(topic, payload)` in arrival order, and the outcomes they make.
    let (payloads, outcomes): (Vec<(String, Vec<u8>)>, usize) = match format.as_str() {
        "json" | "avro-single-object" => {
            let records = wafunnel_gen::generate(&cfg).records;
            let payloads: Vec<(String, Vec<u8>)> = records
                .iter()
                .map(|r| {
                    let payload = if format == "json" {
                        r.line.clone()
                    } else {
                        let raw = wafunnel_core::event::decode_json(&r.line)
                            .expect("generated lines decode");
                        codec
                            .encode_single_object(&raw)
                            .expect("generated events encode")
                    };
                    (topic.clone(), payload)
                })
                .collect();
            let n = payloads.len();
            (payloads, n)
        }
        "meta" => {
            let cfg = GenConfig {
                meta: true,
                ..cfg.clone()
            };
            let mut outcomes = 0;
            let payloads = wafunnel_gen::meta_stream(&cfg)
                .map(|r| {
                    outcomes += r.canonical.len();
                    let topic = match r.format {
                        PayloadFormat::Json => topic.clone(),
                        PayloadFormat::WhatsappWebhook => format!("{topic}-webhook"),
                        PayloadFormat::MetaInsights => format!("{topic}-insights"),
                    };
                    (topic, r.payload)
                })
                .collect();
            (payloads, outcomes)
        }
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
    let mut sent_to: std::collections::HashMap<&str, i32> = std::collections::HashMap::new();
    for (topic, payload) in &payloads {
        let sent = sent_to.entry(topic).or_default();
        let mut record = FutureRecord::<(), _>::to(topic)
            .payload(payload)
            .partition(*sent % partitions);
        *sent += 1;
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
    let seconds = started.elapsed().as_secs_f64();
    let mut line = format!(
        "records={} outcomes={outcomes} seconds={seconds:.3}",
        payloads.len()
    );
    if format == "meta" {
        let numbers: Vec<String> = cfg
            .phone_numbers()
            .iter()
            .map(|(number, account)| format!("{number}={account}"))
            .collect();
        line.push_str(&format!(" phone_numbers={}", numbers.join(",")));
    }
    println!("{line}");
}
