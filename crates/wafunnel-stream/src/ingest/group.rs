//! Membership of an ingest instance in the consumer group `kafka.ingest_group`.
//!
//! Contract:
//! - The group uses the eager `roundrobin` protocol: at every rebalance each
//!   instance gives up all its raw partitions, then receives its new share.
//!   With this handler assigning and unassigning whole sets, a partition has
//!   at most one reader at a time; the cooperative protocol would keep
//!   partitions across rebalances, at the price of a second, incremental
//!   handover path to get right.
//! - No transaction is open while the consumer is polled (where rebalances
//!   happen): a batch is collected, then committed. On revocation the
//!   records collected for the revoked partitions and not yet committed,
//!   and those held back for alignment, are dropped: the next owner reads
//!   them again from the committed offsets.
//! - On assignment, each partition starts at the offset its group committed
//!   (the beginning when none is), read here with retries: librdkafka would
//!   give up on a partition whose offset fetch failed (a coordinator still
//!   loading after a broker start), and a transaction a killed instance
//!   left open keeps the offsets unstable until it is aborted.
//! - Offsets are committed inside each batch's transaction with the
//!   consumer's group metadata (KIP-447): a commit by an instance the group
//!   has moved on from (a zombie) fails and its transaction is aborted.

use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use wafunnel_runtime::kafka;

use super::align::Partition;
use super::IngestError;

/// The ingest consumer's context: logs, and takes part in rebalances.
#[derive(Default)]
pub(super) struct GroupContext {
    /// Partitions revoked since the consuming loop last looked.
    revoked: Mutex<Vec<Partition>>,
    /// Set when an assignment cannot be started; the loop stops on it.
    fatal: Mutex<Option<String>>,
}

impl GroupContext {
    /// The partitions revoked since the last call.
    pub(super) fn take_revoked(&self) -> Vec<Partition> {
        std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Why the assignment could not be started, if it could not.
    pub(super) fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

wafunnel_runtime::logs_like_log_context!(GroupContext);

impl ConsumerContext for GroupContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match kafka::blocking(|| resume_offsets(consumer, partitions.clone())) {
                    Ok(resume) => {
                        tracing::info!(partitions = resume.count(), "raw partitions assigned");
                        if let Err(e) = consumer.assign(&resume) {
                            tracing::error!(error = %e, "failed to assign partitions");
                        }
                        // A partition this instance paused before it was
                        // revoked starts unpaused: nothing of it is held now.
                        if let Err(e) = consumer.resume(&resume) {
                            tracing::error!(error = %e, "failed to resume partitions");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the assigned partitions");
                        *self.fatal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    }
                }
            }
            _ => {
                if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS {
                    tracing::error!(error = ?err, "rebalance error, giving up the assignment");
                }
                tracing::info!(partitions = partitions.count(), "raw partitions revoked");
                self.revoked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(
                        partitions
                            .elements()
                            .iter()
                            .map(|e| (e.topic().to_owned(), e.partition())),
                    );
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "failed to unassign partitions");
                }
            }
        }
    }
}

/// The committed offset of every partition of `assignment`, the beginning
/// where none is committed. Asked here, with retries, rather than left to
/// the client: librdkafka gives up on a partition whose offset fetch failed
/// (a coordinator still loading after a broker start), and the partition is
/// never read.
pub(super) fn resume_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    assignment: TopicPartitionList,
) -> Result<TopicPartitionList, IngestError> {
    let committed = kafka::committed_offsets(consumer, &assignment)?;
    let mut resume = TopicPartitionList::new();
    for element in committed.elements() {
        let offset = match element.offset() {
            Offset::Offset(n) if n >= 0 => Offset::Offset(n),
            _ => Offset::Beginning,
        };
        resume.add_partition_offset(element.topic(), element.partition(), offset)?;
    }
    Ok(resume)
}
