//! Stopping a service: SIGTERM (what Docker and Kubernetes send) and SIGINT
//! (Ctrl-C) take the same graceful path.
//!
//! Contract:
//! - The first signal *stops* the service: it finishes the batch in hand,
//!   writes it, commits its offsets, snapshots its state and leaves its
//!   consumer group. Retry loops keep retrying while stopping, so a short
//!   outage does not turn a clean stop into a replay.
//! - When the grace period ends, or at a second signal, the stop is
//!   *abandoned*: every retry loop gives up at once and the service exits
//!   non-zero. What it had not acknowledged is redone by the next run, as
//!   after a crash, so no number changes either way.
//! - If the process is still alive a few seconds after that (a blocking
//!   client call that does not return), it exits regardless: the stop is
//!   bounded by the grace period plus [`HARD_EXIT_AFTER`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How long after abandoning the process exits even if a call still blocks.
pub const HARD_EXIT_AFTER: Duration = Duration::from_secs(5);

/// The two phases of a stop, shared by every task of a service.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    stop: CancellationToken,
    abandon: CancellationToken,
}

impl Shutdown {
    /// A shutdown that only [`Shutdown::stop`] and [`Shutdown::abandon`] trigger (tests, embedding).
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// A shutdown triggered by SIGTERM or SIGINT, abandoned `grace` after
    /// the first signal or at the second one. Needs a Tokio runtime.
    pub fn on_signals(grace: Duration) -> Self {
        let shutdown = Shutdown::new();
        let handle = shutdown.clone();
        tokio::spawn(async move {
            let signal = next_signal().await;
            tracing::info!(signal, grace_ms = grace.as_millis() as u64, "stopping");
            handle.stop();
            tokio::select! {
                () = tokio::time::sleep(grace) => {
                    tracing::warn!("grace period over, abandoning the stop");
                }
                signal = next_signal() => {
                    tracing::warn!(signal, "second signal, abandoning the stop");
                }
            }
            handle.abandon();
            // Outside the runtime: a blocked worker must not delay the exit.
            std::thread::spawn(|| {
                std::thread::sleep(HARD_EXIT_AFTER);
                tracing::error!("still running after the grace period, exiting");
                std::process::exit(1);
            });
        });
        shutdown
    }

    /// Starts the graceful stop.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Gives up on the graceful stop (implies [`Shutdown::stop`]).
    pub fn abandon(&self) {
        self.stop.cancel();
        self.abandon.cancel();
    }

    /// Whether the service should stop taking new work.
    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Whether the service must give up what it is doing.
    pub fn is_abandoned(&self) -> bool {
        self.abandon.is_cancelled()
    }

    /// Resolves when the stop begins.
    pub async fn stopping(&self) {
        self.stop.cancelled().await;
    }

    /// Resolves when the stop is abandoned.
    pub async fn abandoned(&self) {
        self.abandon.cancelled().await;
    }

    /// Sleeps for `duration`, or less if the stop is abandoned; returns
    /// whether the full time passed (retry loops use it between attempts).
    pub async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.abandoned() => false,
        }
    }
}

#[cfg(unix)]
async fn next_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default disposition (exit) applies: wait forever.
        let never: std::convert::Infallible = std::future::pending().await;
        match never {}
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(not(unix))]
async fn next_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_then_abandon() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.is_stopping());
        shutdown.stop();
        assert!(shutdown.is_stopping() && !shutdown.is_abandoned());
        tokio::time::timeout(Duration::from_secs(1), shutdown.stopping())
            .await
            .expect("stopping resolves");
        let sleeper = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { shutdown.sleep(Duration::from_secs(3600)).await })
        };
        shutdown.abandon();
        let slept = tokio::time::timeout(Duration::from_secs(1), sleeper)
            .await
            .expect("an abandoned sleep ends at once")
            .expect("join");
        assert!(!slept);
    }
}
