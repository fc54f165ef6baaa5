//! The service subcommands of the `wafunnel` command.
//!
//! Every long-running service starts the same way: the configuration is
//! loaded and checked in full, the operator endpoints are served (alive,
//! not ready), SIGTERM and SIGINT are wired to a graceful stop bounded by
//! `service.shutdown_grace`, and only then does the service reach for
//! Kafka and ClickHouse. A fatal error ends it non-zero with one line that
//! names the setting or the address.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use wafunnel_runtime::config::{redact_url, Config};
use wafunnel_runtime::error::Classify;
use wafunnel_runtime::shutdown::Shutdown;

/// Subcommands that run against Kafka and ClickHouse.
#[derive(Debug, Subcommand)]
pub(crate) enum ServiceCommand {
    /// Create the ClickHouse database and apply the schema migrations.
    Migrate,
    /// Give each configured client (`[clients.NAME]`) a read-only ClickHouse user that sees its accounts only, in every BI view.
    Grants {
        /// On ClickHouse before 24.2: the server's `users.d` directory, where the users file
        /// is written (the server reloads it); without it the file is printed for the operator.
        #[arg(long, value_name = "DIR")]
        users_dir: Option<std::path::PathBuf>,
    },
    /// Consume the raw topics: validate, hash users, re-key to the internal topic, dead-letter bad records.
    Ingest,
    /// Consume the internal topic, sessionize, and write the tables to ClickHouse.
    Sessionize,
    /// Receive WhatsApp Cloud API webhooks: verify their signature, store them in a raw topic.
    Webhook,
    /// Send the Conversions API exports of the capi topic to Meta and store their statuses in ClickHouse.
    Capi {
        /// Write the requests it would send (one JSON line each: path and body) instead of sending;
        /// reads the topic from the group's committed offsets to its end, commits nothing, needs no token.
        #[arg(long)]
        dry_run: bool,
        /// Where the dry run writes (default: standard output).
        #[arg(long, value_name = "FILE", requires = "dry_run")]
        out: Option<std::path::PathBuf>,
    },
    /// Print the marketer report of a range of days from the ClickHouse views.
    Report {
        /// An ad account to report on (repeatable; default: every account with rows in the range).
        #[arg(long = "account", value_name = "ID")]
        accounts: Vec<String>,
        /// The first day, YYYY-MM-DD, in each account's time zone.
        #[arg(long)]
        from: chrono::NaiveDate,
        /// The last day, YYYY-MM-DD, inclusive.
        #[arg(long)]
        to: chrono::NaiveDate,
        /// Also write the report as one self-contained HTML page with charts.
        #[arg(long, value_name = "FILE")]
        html: Option<std::path::PathBuf>,
    },
    /// Re-process dead letters once the configuration that rejected them is fixed
    /// (each at most once): read back from their raw topic, decided again as if they arrived now.
    Redrive {
        /// A reason to re-drive (repeatable; default: the reasons a configuration fixes,
        /// `unknown_phone_number`). Malformed records only when named here.
        #[arg(long = "reason", value_name = "REASON")]
        reasons: Vec<String>,
        /// A source raw topic to re-drive from (repeatable; default: every one).
        #[arg(long = "topic", value_name = "TOPIC")]
        topics: Vec<String>,
        /// Only dead letters written at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<chrono::DateTime<chrono::Utc>>,
        /// Only dead letters written before this time (RFC 3339).
        #[arg(long)]
        to: Option<chrono::DateTime<chrono::Utc>>,
        /// List what would be re-driven and what each would become; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Dead letters re-driven per Kafka transaction.
        #[arg(long, default_value_t = 100)]
        batch_size: usize,
    },
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

/// Serves the operator endpoints and wires the signals for a long-running service.
async fn start_service(cfg: &Config) -> anyhow::Result<Shutdown> {
    let addr = cfg.metrics_addr()?;
    wafunnel_runtime::http::start_operator(addr, "metrics.listen").await?;
    Ok(Shutdown::on_signals(cfg.shutdown_grace()?))
}

/// The line a fatal error ends with: the error, and what it concerned.
fn fatal(
    service: &str,
    fault: wafunnel_runtime::error::Fault,
    e: &dyn std::fmt::Display,
) -> anyhow::Error {
    anyhow::anyhow!("{service} stopped ({} error): {e}", fault.as_str())
}

/// Runs one service subcommand.
pub(crate) async fn run(command: ServiceCommand, config_path: &Path) -> anyhow::Result<()> {
    let cfg =
        Config::load(config_path).with_context(|| format!("config {}", config_path.display()))?;
    let clickhouse = format!(
        "clickhouse at {} (database {})",
        redact_url(&cfg.clickhouse.url),
        cfg.clickhouse.database
    );
    match command {
        ServiceCommand::Migrate => {
            let applied = wafunnel_stream::sink::migrate(&cfg.clickhouse)
                .await
                .with_context(|| format!("migrate: {clickhouse}"))?;
            println!(
                "applied {applied} migration(s) to database {}",
                cfg.clickhouse.database
            );
        }
        ServiceCommand::Report {
            accounts,
            from,
            to,
            html,
        } => {
            anyhow::ensure!(from <= to, "--from {from} is after --to {to}");
            let settings = cfg.accounts()?;
            let db = wafunnel_stream::sink::client(&cfg.clickhouse);
            let range = crate::warehouse::Range { accounts, from, to };
            let report = crate::warehouse::load(&db, &settings, &cfg.clickhouse.database, &range)
                .await
                .with_context(|| format!("report: {clickhouse}"))?;
            crate::report::render(&report, &mut std::io::stdout().lock())
                .context("cannot write the report")?;
            if let Some(path) = &html {
                crate::html::write(&report, path)?;
            }
        }
        ServiceCommand::Grants { users_dir } => {
            let outcome = wafunnel_stream::grants::run(&cfg, users_dir.as_deref())
                .await
                .map_err(|e| fatal("grants", e.fault(), &format!("{clickhouse}: {e}")))?;
            for client in &outcome.clients {
                println!(
                    "client {}: user and database {}, {} view(s): {}",
                    client.client,
                    client.user,
                    client.views.len(),
                    client.views.join(", ")
                );
                // Printed this once: only its hash is stored.
                if let Some(password) = &client.generated_password {
                    println!(
                        "client {}: generated password {} (shown once: give it to the client now)",
                        client.client,
                        password.expose()
                    );
                }
            }
            match &outcome.users_file {
                Some(Ok(path)) => println!("wrote {}", path.display()),
                Some(Err(text)) => {
                    println!("install this users file in the server's users.d directory:");
                    print!("{text}");
                }
                None => {}
            }
            // Before 24.2 nothing keeps the server's query slots for the
            // pipeline: say how many the clients can take (README, Client limits).
            if outcome.access == wafunnel_stream::grants::Access::UsersFile {
                let mut held = Some(0u64);
                for name in cfg.clients.keys() {
                    let at_once = cfg.limits_of(name)?.max_concurrent_queries;
                    // A client and its reader share the per-user limit: two each.
                    held = held
                        .zip((at_once > 0).then_some(2 * at_once))
                        .map(|(a, b)| a + b);
                }
                match held {
                    Some(n) => println!(
                        "clients can hold {n} of the server's max_concurrent_queries at once: keep it above {n} plus the pipeline's (about 10)"
                    ),
                    None => println!(
                        "warning: a client has no max_concurrent_queries limit and can take every query slot of the server"
                    ),
                }
            }
        }
        ServiceCommand::Ingest => {
            let shutdown = start_service(&cfg).await?;
            wafunnel_stream::ingest::run(&cfg, shutdown)
                .await
                .map_err(|e| fatal("ingest", e.fault(), &e))?;
        }
        ServiceCommand::Sessionize => {
            let shutdown = start_service(&cfg).await?;
            wafunnel_stream::sessionize::run(&cfg, shutdown)
                .await
                .map_err(|e| match &e {
                    wafunnel_stream::sessionize::SessionizeError::Sink(_) => {
                        fatal("sessionize", e.fault(), &format!("{clickhouse}: {e}"))
                    }
                    _ => fatal("sessionize", e.fault(), &e),
                })?;
        }
        ServiceCommand::Webhook => {
            let shutdown = start_service(&cfg).await?;
            wafunnel_webhook::run(&cfg, shutdown)
                .await
                .map_err(|e| fatal("webhook", e.fault(), &e))?;
        }
        ServiceCommand::Capi { dry_run: true, out } => {
            let mut writer: Box<dyn std::io::Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            let shutdown = Shutdown::on_signals(cfg.shutdown_grace()?);
            let found = wafunnel_capi::dry_run(&cfg, &mut writer, &shutdown)
                .await
                .map_err(|e| fatal("capi dry run", e.fault(), &e))?;
            tracing::info!(
                exports = found.exports,
                requests = found.requests,
                "dry run written"
            );
        }
        ServiceCommand::Capi { dry_run: false, .. } => {
            let shutdown = start_service(&cfg).await?;
            wafunnel_capi::run(&cfg, shutdown)
                .await
                .map_err(|e| match &e {
                    wafunnel_capi::CapiError::Sink(_) => {
                        fatal("capi", e.fault(), &format!("{clickhouse}: {e}"))
                    }
                    _ => fatal("capi", e.fault(), &e),
                })?;
        }
        ServiceCommand::Redrive {
            reasons,
            topics,
            from,
            to,
            dry_run,
            batch_size,
        } => {
            let selection = wafunnel_stream::redrive::Selection {
                reasons,
                topics,
                from_ms: from.map(|t| t.timestamp_millis()),
                to_ms: to.map(|t| t.timestamp_millis()),
            };
            let counts = wafunnel_stream::redrive::run(
                &cfg,
                &selection,
                dry_run,
                batch_size,
                &mut std::io::stdout().lock(),
            )
            .await
            .map_err(|e| fatal("redrive", e.fault(), &e))?;
            println!(
                "{} {} dead letter(s): {} event(s) forwarded, {} dead-lettered again; {} re-driven before, {} no longer in their raw topic",
                if dry_run { "would re-drive" } else { "re-drove" },
                counts.redriven,
                counts.forwarded,
                counts.dead_lettered,
                counts.already,
                counts.gone
            );
        }
        ServiceCommand::Check {
            create_topics,
            timeout_secs,
        } => {
            let ok =
                wafunnel_stream::check::run(&cfg, create_topics, Duration::from_secs(timeout_secs))
                    .await;
            if !ok {
                anyhow::bail!("check failed");
            }
        }
    }
    Ok(())
}
