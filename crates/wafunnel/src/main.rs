//! The `wafunnel` command.
//!
//! - `demo` generates seeded click-to-WhatsApp traffic, runs it through the
//!   real sessionizer and prints the funnel report. It needs no services.
//!   With `--meta` the traffic comes as Meta sends it (webhook bodies,
//!   insights rows) through the normalizers `replay` uses.
//! - `replay FILE` does the same for an NDJSON event log (`-` for stdin).
//!
//! Both can write the three BI tables as NDJSON with `--out DIR`, and the
//!   report as an HTML page with `--html FILE`.
//! - `report` prints the same report from the ClickHouse views for a range
//!   of days (and writes it as HTML with `--html FILE`).
//! - `migrate`, `ingest`, `sessionize` and `check` run the streaming
//!   pipeline on Kafka and ClickHouse (see `wafunnel-stream`); `webhook`
//!   receives Meta's webhooks and `capi` sends the Conversions API exports
//!   (see `wafunnel-webhook` and `wafunnel-capi`); `grants` gives each
//!   client of the agency a read-only ClickHouse user that sees its own
//!   accounts only (see `wafunnel_stream::grants`); `redrive` re-processes
//!   dead letters once the configuration is fixed (see
//!   `wafunnel_stream::redrive`).

mod html;
mod offline;
mod report;
mod services;
mod warehouse;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use wafunnel_capi::payload::{Destination, Destinations};
use wafunnel_core::config::{AccountSettings, Accounts};
use wafunnel_core::money::Currency;
use wafunnel_runtime::logging::LogFormat;

/// Click-to-WhatsApp funnel numbers a marketer can trust.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file of the streaming services (TOML; `WAFUNNEL_*` environment variables override it).
    #[arg(
        long,
        global = true,
        env = "WAFUNNEL_CONFIG",
        default_value = "wafunnel.toml"
    )]
    config: PathBuf,
    /// How log lines are written on standard error: `text` (colours only on a terminal) or `json`.
    #[arg(
        long,
        global = true,
        env = "WAFUNNEL_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Generate realistic traffic for several ad accounts and print the funnel report.
    Demo {
        /// Seed of the generated traffic: the same seed gives the same report.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Roughly how many events to generate (default: the demo size, about 80k).
        #[arg(long)]
        events: Option<u64>,
        /// Send the traffic as Meta does: messages and statuses as WhatsApp
        /// webhook bodies, spend as insights rows, clicks, leads and
        /// purchases as canonical JSON (a campaign with whole-second times).
        #[arg(long)]
        meta: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run an NDJSON event log (one canonical JSON event per line) through the sessionizer.
    Replay {
        /// A log file in `--format`, or `-` for standard input.
        file: Option<PathBuf>,
        /// The format of FILE: `json` (canonical events), `whatsapp-webhook`
        /// (one webhook body per line) or `meta-insights` (one insights row per line).
        #[arg(long, default_value = "json")]
        format: offline::InputFormat,
        /// More inputs, as `FORMAT=FILE` (repeatable): each a source of its
        /// own, merged by event time, so none makes another's events late.
        #[arg(long = "input", value_name = "FORMAT=FILE")]
        inputs: Vec<String>,
        /// A WhatsApp phone number id and the account its webhooks count for,
        /// as `PHONE_NUMBER_ID=ACCOUNT` (repeatable).
        #[arg(long = "phone-number", value_name = "PHONE_NUMBER_ID=ACCOUNT")]
        phone_numbers: Vec<String>,
        /// An account's currency and time zone, as `ACCOUNT=CURRENCY/ZONE`
        /// (e.g. `act_2=BRL/America/Sao_Paulo`). Other accounts use USD and UTC.
        #[arg(long = "account", value_name = "ACCOUNT=CURRENCY/ZONE")]
        accounts: Vec<String>,
        /// The clock that rejects future timestamps, as epoch ms or RFC 3339 (default: now).
        #[arg(long)]
        now: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    #[command(flatten)]
    Service(services::ServiceCommand),
}

#[derive(Debug, Args)]
struct OutputArgs {
    /// Write funnel_daily.ndjson, contacts_daily.ndjson, conversations.ndjson,
    /// the Conversions API exports (capi_exports.ndjson) and the requests
    /// that would send them (capi_requests.ndjson) here.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Write the Conversions API requests that would send the exports to
    /// FILE, one `{"path":...,"body":...}` per line (what `wafunnel capi
    /// --dry-run` writes).
    #[arg(long, value_name = "FILE")]
    capi_out: Option<PathBuf>,
    /// Also write the report as one self-contained HTML page with charts.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// An account's Conversions API destination, as
    /// `ACCOUNT=DATASET_ID/WABA_ID` (repeatable). The demo's accounts have
    /// placeholders; a replay's exports of an account without one are not
    /// written as requests.
    #[arg(long = "capi-dataset", value_name = "ACCOUNT=DATASET_ID/WABA_ID")]
    capi_datasets: Vec<String>,
    /// Key of the user-id hash (the same key gives the same user_hash values).
    #[arg(
        long,
        env = "WAFUNNEL_USER_HASH_KEY",
        default_value = "wafunnel-offline",
        hide_env_values = true
    )]
    user_hash_key: String,
}

fn parse_account(spec: &str) -> anyhow::Result<(String, AccountSettings)> {
    let (id, rest) = spec
        .split_once('=')
        .context("expected ACCOUNT=CURRENCY/ZONE")?;
    let (currency, zone) = rest
        .split_once('/')
        .context("expected ACCOUNT=CURRENCY/ZONE")?;
    let currency = Currency::parse(currency)
        .with_context(|| format!("`{currency}` is not an ISO 4217 code"))?;
    let time_zone: chrono_tz::Tz = zone
        .parse()
        .map_err(|_| anyhow::anyhow!("`{zone}` is not an IANA time zone"))?;
    Ok((
        id.to_owned(),
        AccountSettings {
            currency,
            time_zone,
        },
    ))
}

impl OutputArgs {
    /// The Conversions API destinations of `--capi-dataset`, over `defaults`.
    fn destinations(
        &self,
        defaults: impl IntoIterator<Item = (String, Destination)>,
    ) -> anyhow::Result<Destinations> {
        let mut accounts: BTreeMap<String, Destination> = defaults.into_iter().collect();
        for spec in &self.capi_datasets {
            let (account, rest) = spec.split_once('=').with_context(|| {
                format!("--capi-dataset {spec}: expected ACCOUNT=DATASET_ID/WABA_ID")
            })?;
            let (dataset_id, waba_id) = rest.split_once('/').with_context(|| {
                format!("--capi-dataset {spec}: expected ACCOUNT=DATASET_ID/WABA_ID")
            })?;
            accounts.insert(
                account.to_owned(),
                Destination {
                    dataset_id: dataset_id.to_owned(),
                    waba_id: waba_id.to_owned(),
                },
            );
        }
        let defaults = wafunnel_runtime::config::CapiConfig::default();
        Ok(Destinations {
            api_version: defaults.api_version,
            max_batch: defaults.max_batch,
            accounts,
        })
    }
}

fn parse_now(text: Option<&str>) -> anyhow::Result<i64> {
    match text {
        None => Ok(chrono::Utc::now().timestamp_millis()),
        Some(t) => t
            .parse::<i64>()
            .ok()
            .or_else(|| wafunnel_core::time::parse_rfc3339_ms(t))
            .with_context(|| format!("--now `{t}` is neither epoch ms nor RFC 3339")),
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo {
            seed,
            events,
            meta,
            output,
        } => {
            let mut cfg = wafunnel_gen::GenConfig {
                seed,
                meta,
                ..wafunnel_gen::GenConfig::demo()
            };
            if let Some(n) = events {
                cfg = cfg.with_target_events(n);
            }
            let result = offline::run_demo(&cfg, output.user_hash_key.as_bytes(), meta);
            // The demo's accounts are made up: their destinations are
            // placeholders that show where a user's ids go.
            let placeholders = cfg.accounts.iter().map(|a| {
                let id = &a.account_id;
                let destination = Destination {
                    dataset_id: format!("DATASET_ID_OF_{id}"),
                    waba_id: format!("WABA_ID_OF_{id}"),
                };
                (id.clone(), destination)
            });
            let destinations = output.destinations(placeholders)?;
            offline::finish(&result, &output, &destinations)
        }
        Command::Replay {
            file,
            format,
            inputs,
            phone_numbers,
            accounts,
            now,
            output,
        } => {
            let mut files: Vec<offline::Input> = file
                .map(|path| offline::Input { format, path })
                .into_iter()
                .collect();
            for spec in &inputs {
                let (format, path) = spec
                    .split_once('=')
                    .with_context(|| format!("--input {spec}: expected FORMAT=FILE"))?;
                let format = format
                    .parse()
                    .map_err(|e: String| anyhow::anyhow!("--input {spec}: {e}"))?;
                files.push(offline::Input {
                    format,
                    path: path.into(),
                });
            }
            anyhow::ensure!(
                !files.is_empty(),
                "give a FILE or at least one --input FORMAT=FILE"
            );
            let mut numbers = Vec::new();
            for spec in &phone_numbers {
                let (number, account) = spec.split_once('=').with_context(|| {
                    format!("--phone-number {spec}: expected PHONE_NUMBER_ID=ACCOUNT")
                })?;
                numbers.push((number.to_owned(), account.to_owned()));
            }
            let mut settings = Accounts::default();
            for spec in &accounts {
                let (id, s) = parse_account(spec).with_context(|| format!("--account {spec}"))?;
                settings.listed.insert(id, s);
            }
            let now = parse_now(now.as_deref())?;
            let result = offline::run_replay(
                &files,
                settings,
                wafunnel_meta::PhoneNumbers::new(numbers),
                output.user_hash_key.as_bytes(),
                now,
            )?;
            let destinations = output.destinations([])?;
            offline::finish(&result, &output, &destinations)
        }
        Command::Service(command) => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(services::run(command, &cli.config))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    wafunnel_runtime::logging::init(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain may quote an upstream answer that echoes a secret.
            let message = format!("{e:#}");
            eprintln!("error: {}", wafunnel_runtime::scrub::scrub(&message));
            ExitCode::FAILURE
        }
    }
}
