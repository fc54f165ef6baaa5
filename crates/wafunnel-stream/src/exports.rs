//! Conversions API exports from sessionize to the capi topic.
//!
//! Contract:
//! - The exports a batch holds ([`wafunnel_core::export`]) are produced to
//!   `topics.capi` by an idempotent producer with `acks=all`, keyed by
//!   their export id, as the JSON of [`ConversionExport`]. Sessionize waits
//!   until Kafka acknowledged every one of them before it commits the
//!   batch's offsets, and a snapshot is taken only after that: a partition
//!   restored from a snapshot never skips an export it had not delivered.
//! - A crash after the exports were acknowledged but before the snapshot
//!   replays the partition, and the engine emits the same exports again
//!   (same export id, same content): the topic holds duplicates, never two
//!   exports of one event that differ. The capi service ends each export id
//!   once.
//! - While the brokers do not acknowledge, delivery is retried with backoff
//!   until the stop is abandoned; a refusal no retry can fix (the topic does
//!   not exist, no write permission) is fatal.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use wafunnel_core::export::ConversionExport;
use wafunnel_runtime::config::Config;
use wafunnel_runtime::error::{Classify, Fault};
use wafunnel_runtime::kafka::{self, LogContext};
use wafunnel_runtime::metrics::metrics;
use wafunnel_runtime::shutdown::Shutdown;

use crate::sink::Batch;

/// Why exports could not be delivered.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Kafka refused them in a way retrying does not fix.
    #[error("kafka refused the conversions api exports on topic {topic}: {error} (check topics.capi and the producer's rights; `wafunnel check --create-topics` creates it)")]
    Refused {
        /// The capi topic.
        topic: String,
        /// Kafka's error.
        error: KafkaError,
    },
    /// The producer could not be built.
    #[error("kafka producer: {0}")]
    Producer(#[from] KafkaError),
    /// The stop was abandoned while delivery was still being retried.
    #[error("stopped before kafka acknowledged the conversions api exports (the next run emits them again)")]
    Abandoned,
}

impl Classify for ExportError {
    fn fault(&self) -> Fault {
        match self {
            ExportError::Refused { .. } | ExportError::Producer(_) => Fault::User,
            ExportError::Abandoned => Fault::External,
        }
    }

    fn is_retryable(&self) -> bool {
        false
    }
}

/// Produces the exports of sessionize's batches.
pub struct ExportProducer {
    producer: FutureProducer<LogContext>,
    topic: String,
}

impl std::fmt::Debug for ExportProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// How long one attempt waits for the brokers before it is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

impl ExportProducer {
    /// A producer to `topics.capi`.
    pub fn new(cfg: &Config) -> Result<Self, ExportError> {
        let client = kafka::durable_producer_config(&cfg.kafka, ATTEMPT_TIMEOUT);
        Ok(ExportProducer {
            producer: kafka::create(&client)?,
            topic: cfg.topics.capi.clone(),
        })
    }

    /// Produces every export of `batch` and returns once Kafka acknowledged
    /// them all, retrying what failed until the stop is abandoned.
    pub async fn deliver(&self, batch: &Batch, shutdown: &Shutdown) -> Result<(), ExportError> {
        let mut pending: Vec<(&ConversionExport, Vec<u8>)> = batch
            .changes
            .iter()
            .flat_map(|(_, _, changes)| &changes.exports)
            .map(|export| {
                let value = serde_json::to_vec(export).expect("an export serializes");
                (export, value)
            })
            .collect();
        let mut delay = Duration::from_millis(200);
        while !pending.is_empty() {
            let mut deliveries = Vec::with_capacity(pending.len());
            for (export, value) in &pending {
                deliveries.push(self.enqueue(&export.export_id, value).await);
            }
            let mut failed = Vec::new();
            let mut last_error = None;
            for (item, delivery) in pending.into_iter().zip(deliveries) {
                let result = match delivery {
                    Ok(delivery) => match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((error, _))) => Err(error),
                        Err(_canceled) => Err(KafkaError::Canceled),
                    },
                    Err(error) => Err(error),
                };
                match result {
                    Ok(()) => {}
                    Err(error) if is_fatal(&error) => {
                        return Err(ExportError::Refused {
                            topic: self.topic.clone(),
                            error,
                        });
                    }
                    Err(error) => {
                        last_error = Some(error);
                        failed.push(item);
                    }
                }
            }
            pending = failed;
            if let Some(error) = last_error {
                metrics().capi_export_retries.inc();
                metrics().set_ready(false);
                tracing::warn!(
                    error = %error,
                    exports = pending.len(),
                    retry_in_ms = delay.as_millis() as u64,
                    "conversions api exports not acknowledged"
                );
                if !shutdown.sleep(delay).await {
                    return Err(ExportError::Abandoned);
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
        Ok(())
    }
}

impl ExportProducer {
    /// Hands one export to the producer, waiting while its queue is full.
    async fn enqueue(&self, key: &str, value: &[u8]) -> Result<DeliveryFuture, KafkaError> {
        loop {
            let record = FutureRecord::to(&self.topic).key(key).payload(value);
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((error, _)) => return Err(error),
            }
        }
    }
}

fn is_fatal(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
        )
    )
}
