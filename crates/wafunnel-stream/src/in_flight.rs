//! The one batch sessionize delivers in the background while it collects
//! and applies the next.
//!
//! Contract:
//! - At most one delivery is in flight: a delivery starts only once the
//!   previous one has settled, so deliveries are acknowledged in the order
//!   they started and memory holds at most the batch being delivered and
//!   the one being collected.
//! - A delivery retries on its own until it is acknowledged, refused, or
//!   the stop is abandoned (the sink's and the exports' retry loops), so a
//!   batch that failed is retried, with its rows, before any later one is
//!   even started.
//! - What a delivery completes (the offsets it lets sessionize commit) is
//!   handed back only once the delivery was acknowledged, and never for a
//!   failed one: nothing the rows of a later, or failed, batch cover is
//!   committed or snapshotted early.
//! - Settling with a deadline that passes leaves the delivery in flight,
//!   to be settled later; so does a settling that is cancelled.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};

/// What settling the delivery in flight found.
#[derive(Debug)]
pub(crate) enum Settled<T, E> {
    /// Nothing was in flight.
    Idle,
    /// Acknowledged: what it completes may be committed now.
    Acknowledged {
        /// What the delivery completes.
        completes: T,
        /// From its start to its acknowledgement.
        elapsed: Duration,
    },
    /// Refused, or the stop was abandoned: what it completes must not be committed.
    Failed(E),
}

/// The delivery in flight, if any, and what it completes.
#[derive(Debug)]
pub(crate) struct InFlight<T, E> {
    delivery: Option<Delivery<T, E>>,
}

#[derive(Debug)]
struct Delivery<T, E> {
    task: JoinHandle<Result<(), E>>,
    completes: T,
    started: Instant,
}

impl<T, E> Default for InFlight<T, E> {
    fn default() -> Self {
        InFlight { delivery: None }
    }
}

impl<T, E: Send + 'static> InFlight<T, E> {
    /// Starts `deliver` in the background; `completes` is handed back once
    /// it is acknowledged.
    ///
    /// # Panics
    /// If a delivery is still in flight: settle it first.
    pub(crate) fn start<F>(&mut self, deliver: F, completes: T)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        assert!(
            self.delivery.is_none(),
            "a delivery started while another was in flight"
        );
        self.delivery = Some(Delivery {
            task: tokio::spawn(deliver),
            completes,
            started: Instant::now(),
        });
    }

    /// Waits for the delivery in flight to be acknowledged or to fail.
    /// Cancel-safe: dropped before it returns, the delivery stays in flight.
    pub(crate) async fn settle(&mut self) -> Settled<T, E> {
        let Some(delivery) = self.delivery.as_mut() else {
            return Settled::Idle;
        };
        let joined = (&mut delivery.task).await;
        self.settled(joined)
    }

    /// Like [`InFlight::settle`], but gives up at `deadline`: `None` if
    /// the delivery is still in flight then (it stays in flight).
    pub(crate) async fn settle_before(&mut self, deadline: Instant) -> Option<Settled<T, E>> {
        let Some(delivery) = self.delivery.as_mut() else {
            return Some(Settled::Idle);
        };
        let joined = tokio::time::timeout_at(deadline.into(), &mut delivery.task)
            .await
            .ok()?;
        Some(self.settled(joined))
    }

    fn settled(&mut self, joined: Result<Result<(), E>, JoinError>) -> Settled<T, E> {
        let Delivery {
            completes, started, ..
        } = self
            .delivery
            .take()
            .expect("the delivery that settled is still in its slot");
        match joined {
            Ok(Ok(())) => Settled::Acknowledged {
                completes,
                elapsed: started.elapsed(),
            },
            Ok(Err(e)) => Settled::Failed(e),
            // The task is never aborted, and the runtime cannot shut down
            // while it is awaited from inside it: only a panic ends it so.
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use wafunnel_runtime::shutdown::Shutdown;

    use super::*;
    use crate::sink::{retry_write, SinkError};

    type Log = Arc<Mutex<Vec<String>>>;

    fn note(log: &Log, line: String) {
        log.lock().unwrap().push(line);
    }

    fn position(log: &[String], line: &str) -> usize {
        log.iter()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("{line:?} missing from {log:?}"))
    }

    /// Delivers batch `n` as the sink does: ClickHouse is unavailable for
    /// the first `failures` attempts, and the write is retried until it is
    /// acknowledged.
    fn deliver(
        log: &Log,
        n: u32,
        failures: u32,
    ) -> impl Future<Output = Result<(), SinkError>> + Send + 'static {
        let log = Arc::clone(log);
        async move {
            let shutdown = Shutdown::new();
            let mut attempts = 0;
            retry_write("batch", &shutdown, || {
                attempts += 1;
                note(&log, format!("attempt {n}"));
                let failed = attempts <= failures;
                let log = Arc::clone(&log);
                async move {
                    tokio::task::yield_now().await;
                    if failed {
                        return Err(SinkError::Unavailable(clickhouse::error::Error::Network(
                            "connection refused".into(),
                        )));
                    }
                    note(&log, format!("acknowledged {n}"));
                    Ok(())
                }
            })
            .await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offsets_are_committed_after_their_own_batch_and_batches_go_in_order() {
        let log: Log = Arc::default();
        let mut in_flight = InFlight::default();
        // Batch 0 fails twice before ClickHouse acknowledges it.
        let failures = [2, 0, 1];
        for (n, failures) in (0u32..).zip(failures) {
            note(&log, format!("applied {n}"));
            match in_flight.settle().await {
                Settled::Acknowledged { completes, .. } => {
                    note(&log, format!("committed {completes}"))
                }
                Settled::Idle => assert_eq!(n, 0, "only the first batch finds nothing in flight"),
                other => panic!("batch before {n}: {other:?}"),
            }
            in_flight.start(deliver(&log, n, failures), n);
        }
        match in_flight.settle().await {
            Settled::Acknowledged { completes, .. } => note(&log, format!("committed {completes}")),
            other => panic!("last batch: {other:?}"),
        }
        assert!(matches!(in_flight.settle().await, Settled::Idle));

        let log = log.lock().unwrap().clone();
        // Batch 1 was applied while batch 0 was still being retried.
        assert!(position(&log, "applied 1") < position(&log, "acknowledged 0"));
        for n in 0..3 {
            let acknowledged = position(&log, &format!("acknowledged {n}"));
            assert!(acknowledged < position(&log, &format!("committed {n}")));
            if n > 0 {
                let previous = position(&log, &format!("acknowledged {}", n - 1));
                let first_attempt = position(&log, &format!("attempt {n}"));
                assert!(
                    previous < first_attempt,
                    "batch {n} started before batch {} was acknowledged: {log:?}",
                    n - 1
                );
                assert!(
                    position(&log, &format!("committed {}", n - 1))
                        < position(&log, &format!("committed {n}")),
                    "offsets committed out of order: {log:?}"
                );
            }
        }
        assert_eq!(
            log.iter().filter(|l| l.starts_with("committed ")).count(),
            3,
            "each batch's offsets once: {log:?}"
        );
        assert_eq!(
            log.iter().filter(|l| *l == "attempt 0").count(),
            3,
            "batch 0 retried until acknowledged: {log:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_past_the_deadline_stays_in_flight() {
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut in_flight: InFlight<&str, SinkError> = InFlight::default();
        in_flight.start(
            async move {
                released.await.expect("released");
                Ok(())
            },
            "offsets",
        );
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(in_flight.settle_before(soon).await.is_none());
        release.send(()).expect("the delivery waits");
        match in_flight.settle().await {
            Settled::Acknowledged { completes, .. } => assert_eq!(completes, "offsets"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_delivery_completes_nothing() {
        let shutdown = Shutdown::new();
        shutdown.abandon();
        let mut in_flight = InFlight::default();
        in_flight.start(
            async move {
                retry_write("batch", &shutdown, || async {
                    Err(SinkError::Unavailable(clickhouse::error::Error::Network(
                        "connection refused".into(),
                    )))
                })
                .await
            },
            "offsets",
        );
        assert!(matches!(
            in_flight.settle().await,
            Settled::Failed(SinkError::Abandoned)
        ));
        assert!(matches!(in_flight.settle().await, Settled::Idle));
    }
}
