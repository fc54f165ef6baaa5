//! The service subcommands of the `wafunnel` command.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use tokio::sync::watch;

use crate::config::Config;

/// Subcommands that run against Kafka and ClickHouse.
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create the ClickHouse database and apply the schema migrations.
    Migrate,
    /// Consume the raw topics: validate, hash users, re-key to the internal topic, dead-letter bad records.
    Ingest {
        /// Name of this instance (part of its Kafka transactional id; unique per running instance).
        #[arg(long, default_value = "0")]
        instance: String,
    },
    /// Consume the internal topic, sessionize, and write the tables to ClickHouse.
    Sessionize,
    /// Check the broker, the topics and ClickHouse, then send a canary event end to end.
    Check {
        /// Create missing topics.
        #[arg(long)]
        create_topics: bool,
        /// How long to wait for the canary to reach ClickHouse.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("shutting down");
            let _ = tx.send(true);
        }
    });
    rx
}

/// Runs one service subcommand.
pub async fn run(command: ServiceCommand, config_path: &Path) -> anyhow::Result<()> {
    let cfg =
        Config::load(config_path).with_context(|| format!("config {}", config_path.display()))?;
    match command {
        ServiceCommand::Migrate => {
            let applied = crate::sink::migrate(&cfg.clickhouse)
                .await
                .context("migrate")?;
            println!(
                "applied {applied} migration(s) to database {}",
                cfg.clickhouse.database
            );
        }
        ServiceCommand::Ingest { instance } => {
            crate::ingest::run(&cfg, &instance, shutdown_signal())
                .await
                .context("ingest")?;
        }
        ServiceCommand::Sessionize => {
            crate::sessionize::run(&cfg, shutdown_signal())
                .await
                .context("sessionize")?;
        }
        ServiceCommand::Check {
            create_topics,
            timeout_secs,
        } => {
            let ok =
                crate::check::run(&cfg, create_topics, Duration::from_secs(timeout_secs)).await;
            if !ok {
                anyhow::bail!("check failed");
            }
        }
    }
    Ok(())
}
