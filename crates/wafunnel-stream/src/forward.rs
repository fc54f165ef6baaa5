//! The transactional producer ingest writes its records with.
//!
//! Contract:
//! - Records are handed to librdkafka with no future or channel per record:
//!   inside a transaction, `commit_transaction` first waits for every
//!   delivery (serving the delivery reports) and fails if any failed, so
//!   the commit is the one place a failure is seen, and the batch is then
//!   aborted and retried as a whole by its caller.
//! - A full local queue is backpressure, not an error: the producer is
//!   polled (which serves delivery reports and frees room) and the record
//!   is handed over again.
//! - librdkafka's logs and client errors go to `tracing` as for every
//!   client ([`LogContext`]).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, ToBytes};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use wafunnel_runtime::kafka;

/// How long a full queue is polled before the record is offered again.
const QUEUE_FULL_POLL: Duration = Duration::from_millis(10);

/// The context of ingest's producer: logs as [`LogContext`] does; a failed
/// delivery is left to the commit, which fails on it.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardContext;

wafunnel_runtime::logs_like_log_context!(ForwardContext);

impl ProducerContext for ForwardContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        // Every record of an aborted transaction is reported here as purged:
        // the commit (or abort) already says what happened to the batch.
        if let Err((error, _)) = result {
            tracing::debug!(error = %error, "delivery failed, the transaction cannot commit");
        }
    }
}

/// Ingest's transactional producer.
pub type Producer = BaseProducer<ForwardContext>;

/// Creates the producer; an invalid property is named by its key, its value
/// (which may be a secret) replaced.
pub fn create(config: &ClientConfig) -> Result<Producer, KafkaError> {
    config
        .create_with_context(ForwardContext)
        .map_err(kafka::redact)
}

/// Hands one record to the producer, waiting while its queue is full.
pub fn send<K, P>(producer: &Producer, record: BaseRecord<'_, K, P>) -> Result<(), KafkaError>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    let mut record = record;
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                kafka::blocking(|| producer.poll(QUEUE_FULL_POLL));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
