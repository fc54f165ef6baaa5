//! Service configuration: one TOML file, then `WAFUNNEL_*` environment
//! overrides. A wrong or missing setting is one error line naming it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use wafunnel_avro::Format;
use wafunnel_core::config::{AccountSettings, Accounts, Windows};
use wafunnel_core::money::Currency;

/// Why the configuration cannot be used. Always fatal: fix and restart.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is invalid or has an unknown or mistyped setting.
    #[error("invalid config: {0}")]
    Parse(String),
    /// A setting has an invalid value.
    #[error("invalid setting `{setting}`: {detail}")]
    Invalid {
        /// The setting, as a dotted path.
        setting: String,
        /// What is wrong.
        detail: String,
    },
    /// A required setting is missing.
    #[error("missing setting `{0}` (set it in the config file or its environment variable)")]
    Missing(&'static str),
}

/// The whole configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Secret key of the user-id hash (env `WAFUNNEL_USER_HASH_KEY`). Required: user ids are never stored raw.
    #[serde(default)]
    pub user_hash_key: Option<Secret>,
    /// Kafka connection.
    pub kafka: KafkaConfig,
    /// Topic names and formats.
    pub topics: TopicsConfig,
    /// ClickHouse connection.
    pub clickhouse: ClickHouseConfig,
    /// Confluent-compatible schema registry, for `avro-confluent` topics.
    #[serde(default)]
    pub schema_registry: Option<RegistryConfig>,
    /// Counting windows.
    #[serde(default)]
    pub windows: WindowsConfig,
    /// Ad accounts whose currency or time zone is not USD/UTC.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// Batching of the sessionizer's writes.
    #[serde(default)]
    pub batch: BatchConfig,
    /// Where the services serve `/metrics`, `/healthz` and `/readyz`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// When sessionize snapshots its state.
    #[serde(default)]
    pub state: StateConfig,
}

/// Snapshots of the sessionizer state: how much a restart or a rebalance replays.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// A partition is snapshotted at most this often, in milliseconds.
    #[serde(default = "default_snapshot_interval_ms")]
    pub snapshot_interval_ms: u64,
    /// A partition is snapshotted once this many records were applied since its last snapshot,
    /// even before the interval has passed (bounds the replay after a crash).
    #[serde(default = "default_snapshot_records")]
    pub snapshot_records: u64,
}

fn default_snapshot_interval_ms() -> u64 {
    60_000
}
fn default_snapshot_records() -> u64 {
    2_000_000
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            snapshot_interval_ms: default_snapshot_interval_ms(),
            snapshot_records: default_snapshot_records(),
        }
    }
}

/// The operator endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` to listen on (env `WAFUNNEL_METRICS_LISTEN`); none by default.
    #[serde(default)]
    pub listen: Option<String>,
}

/// A value that is never printed.
#[derive(Clone, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Kafka connection settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]` (env `WAFUNNEL_KAFKA_BOOTSTRAP`).
    pub bootstrap: String,
    /// Extra librdkafka properties passed through to every client (e.g. `security.protocol`).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Consumer group of `wafunnel ingest`.
    #[serde(default = "default_ingest_group")]
    pub ingest_group: String,
    /// Consumer group of `wafunnel sessionize` (offsets are committed for lag monitoring).
    #[serde(default = "default_sessionize_group")]
    pub sessionize_group: String,
}

fn default_ingest_group() -> String {
    "wafunnel-ingest".into()
}
fn default_sessionize_group() -> String {
    "wafunnel-sessionize".into()
}

/// One raw input topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopic {
    /// Topic name.
    pub name: String,
    /// How its records are encoded: `json`, `avro-confluent` or `avro-single-object`.
    #[serde(default = "default_format")]
    pub format: Format,
}

fn default_format() -> Format {
    Format::Json
}

/// Topic names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    /// Raw input topics.
    pub raw: Vec<RawTopic>,
    /// Internal topic of validated events, keyed by contact (spend by ad). Keep it with unlimited retention.
    #[serde(default = "default_internal")]
    pub internal: String,
    /// Dead-letter topic: raw bytes of rejected records, with reason and source in headers.
    #[serde(default = "default_dead_letter")]
    pub dead_letter: String,
    /// Partitions of the internal topic when `check --create-topics` creates it.
    #[serde(default = "default_partitions")]
    pub internal_partitions: i32,
    /// Compacted topic of sessionizer state snapshots, one chunked snapshot per internal partition.
    #[serde(default = "default_state")]
    pub state: String,
}

fn default_internal() -> String {
    "wafunnel-events".into()
}
fn default_dead_letter() -> String {
    "wafunnel-dead-letter".into()
}
fn default_state() -> String {
    "wafunnel-state".into()
}
fn default_partitions() -> i32 {
    4
}

/// ClickHouse connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP URL, e.g. `http://127.0.0.1:8123` (env `WAFUNNEL_CLICKHOUSE_URL`).
    pub url: String,
    /// Database (env `WAFUNNEL_CLICKHOUSE_DATABASE`).
    #[serde(default = "default_database")]
    pub database: String,
    /// User (env `WAFUNNEL_CLICKHOUSE_USER`).
    #[serde(default = "default_user")]
    pub user: String,
    /// Password (env `WAFUNNEL_CLICKHOUSE_PASSWORD`); never logged.
    #[serde(default)]
    pub password: Secret,
}

fn default_database() -> String {
    "wafunnel".into()
}
fn default_user() -> String {
    "default".into()
}

/// Schema registry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible REST API.
    pub url: String,
}

/// Counting windows, as durations like `7d`, `24h`, `90m`, `30s`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowsConfig {
    /// `G`: inactivity that ends a conversation.
    #[serde(default = "default_gap")]
    pub gap: String,
    /// `L`: allowed lateness behind the partition watermark.
    #[serde(default = "default_lateness")]
    pub lateness: String,
    /// `W`: attribution window of leads and purchases.
    #[serde(default = "default_attribution")]
    pub attribution: String,
    /// Ingest pauses a raw partition whose event time runs further ahead of
    /// the slowest one than this, so that a backfill cannot make events
    /// late downstream. Keep it well below `lateness`.
    #[serde(default = "default_skew")]
    pub max_partition_skew: String,
}

fn default_skew() -> String {
    "6h".into()
}

fn default_gap() -> String {
    "7d".into()
}
fn default_lateness() -> String {
    "24h".into()
}
fn default_attribution() -> String {
    "28d".into()
}

impl Default for WindowsConfig {
    fn default() -> Self {
        WindowsConfig {
            gap: default_gap(),
            lateness: default_lateness(),
            attribution: default_attribution(),
            max_partition_skew: default_skew(),
        }
    }
}

/// One ad account.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The ad account id, as in events.
    pub id: String,
    /// ISO 4217 currency of its purchases and spend.
    #[serde(default = "default_currency")]
    pub currency: String,
    /// IANA time zone of its calendar days.
    #[serde(default = "default_zone")]
    pub time_zone: String,
}

fn default_currency() -> String {
    "USD".into()
}
fn default_zone() -> String {
    "UTC".into()
}

/// Batching of writes to ClickHouse.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most input records per batch.
    #[serde(default = "default_max_records")]
    pub max_records: usize,
    /// Longest time a batch stays open, in milliseconds.
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u64,
}

fn default_max_records() -> usize {
    50_000
}
fn default_flush_ms() -> u64 {
    1_000
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: default_max_records(),
            flush_interval_ms: default_flush_ms(),
        }
    }
}

/// Parses `7d`, `24h`, `90m`, `30s` or `500ms` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: i64 = digits.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(scale).filter(|ms| *ms > 0)
}

impl Config {
    /// Reads the file, then applies environment overrides and checks every value.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, |name| std::env::var(name).ok())
    }

    /// Parses TOML text with `env` as the environment.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.message().to_owned()))?;
        if let Some(v) = env("WAFUNNEL_USER_HASH_KEY") {
            cfg.user_hash_key = Some(Secret(v));
        }
        if let Some(v) = env("WAFUNNEL_KAFKA_BOOTSTRAP") {
            cfg.kafka.bootstrap = v;
        }
        if let Some(v) = env("WAFUNNEL_CLICKHOUSE_URL") {
            cfg.clickhouse.url = v;
        }
        if let Some(v) = env("WAFUNNEL_CLICKHOUSE_DATABASE") {
            cfg.clickhouse.database = v;
        }
        if let Some(v) = env("WAFUNNEL_CLICKHOUSE_USER") {
            cfg.clickhouse.user = v;
        }
        if let Some(v) = env("WAFUNNEL_CLICKHOUSE_PASSWORD") {
            cfg.clickhouse.password = Secret(v);
        }
        if let Some(v) = env("WAFUNNEL_METRICS_LISTEN") {
            cfg.metrics.listen = Some(v);
        }
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |setting: &str, detail: &str| ConfigError::Invalid {
            setting: setting.into(),
            detail: detail.into(),
        };
        match &self.user_hash_key {
            None => return Err(ConfigError::Missing("user_hash_key")),
            Some(k) if k.0.len() < 16 => {
                return Err(invalid("user_hash_key", "must be at least 16 characters"))
            }
            Some(_) => {}
        }
        if self.kafka.bootstrap.trim().is_empty() {
            return Err(ConfigError::Missing("kafka.bootstrap"));
        }
        if self.topics.raw.is_empty() {
            return Err(invalid("topics.raw", "list at least one raw topic"));
        }
        if self.topics.internal_partitions < 1 {
            return Err(invalid("topics.internal_partitions", "must be at least 1"));
        }
        if self
            .topics
            .raw
            .iter()
            .any(|t| t.format == Format::AvroConfluent)
            && self.schema_registry.is_none()
        {
            return Err(ConfigError::Missing("schema_registry.url"));
        }
        if !self.clickhouse.url.starts_with("http://")
            && !self.clickhouse.url.starts_with("https://")
        {
            return Err(invalid(
                "clickhouse.url",
                "must start with http:// or https://",
            ));
        }
        let windows = self.windows()?;
        if self.max_partition_skew_ms()? >= windows.lateness_ms {
            return Err(invalid(
                "windows.max_partition_skew",
                "must be below windows.lateness",
            ));
        }
        self.accounts()?;
        self.metrics_addr()?;
        if self.batch.max_records == 0 {
            return Err(invalid("batch.max_records", "must be at least 1"));
        }
        if self.state.snapshot_records == 0 {
            return Err(invalid("state.snapshot_records", "must be at least 1"));
        }
        if self.state.snapshot_interval_ms == 0 {
            return Err(invalid("state.snapshot_interval_ms", "must be at least 1"));
        }
        Ok(())
    }

    /// The user-hash key.
    pub fn user_hash_key(&self) -> &[u8] {
        self.user_hash_key.as_ref().map_or(&[], |k| k.0.as_bytes())
    }

    /// The counting windows.
    pub fn windows(&self) -> Result<Windows, ConfigError> {
        let parse = |setting: &str, text: &str| {
            parse_duration_ms(text).ok_or_else(|| ConfigError::Invalid {
                setting: setting.into(),
                detail: format!("`{text}` is not a duration like 7d, 24h, 90m, 30s"),
            })
        };
        Ok(Windows {
            gap_ms: parse("windows.gap", &self.windows.gap)?,
            lateness_ms: parse("windows.lateness", &self.windows.lateness)?,
            attribution_window_ms: parse("windows.attribution", &self.windows.attribution)?,
        })
    }

    /// The address of the operator endpoints, if any.
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        self.metrics
            .listen
            .as_deref()
            .map(|text| {
                text.parse().map_err(|_| ConfigError::Invalid {
                    setting: "metrics.listen".into(),
                    detail: format!("`{text}` is not host:port"),
                })
            })
            .transpose()
    }

    /// How far ahead in event time a raw partition may run.
    pub fn max_partition_skew_ms(&self) -> Result<i64, ConfigError> {
        parse_duration_ms(&self.windows.max_partition_skew).ok_or_else(|| ConfigError::Invalid {
            setting: "windows.max_partition_skew".into(),
            detail: format!(
                "`{}` is not a duration like 6h",
                self.windows.max_partition_skew
            ),
        })
    }

    /// The account settings.
    pub fn accounts(&self) -> Result<Accounts, ConfigError> {
        let mut accounts = Accounts::default();
        for (i, a) in self.accounts.iter().enumerate() {
            let currency = Currency::parse(&a.currency).ok_or_else(|| ConfigError::Invalid {
                setting: format!("accounts[{i}].currency"),
                detail: format!("`{}` is not an ISO 4217 code", a.currency),
            })?;
            let time_zone: chrono_tz::Tz =
                a.time_zone.parse().map_err(|_| ConfigError::Invalid {
                    setting: format!("accounts[{i}].time_zone"),
                    detail: format!("`{}` is not an IANA time zone", a.time_zone),
                })?;
            accounts.listed.insert(
                a.id.clone(),
                AccountSettings {
                    currency,
                    time_zone,
                },
            );
        }
        Ok(accounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
user_hash_key = "0123456789abcdef-test"
[kafka]
bootstrap = "127.0.0.1:9092"
[topics]
raw = [{ name = "raw-json" }, { name = "raw-avro", format = "avro-single-object" }]
[clickhouse]
url = "http://127.0.0.1:8123"
password = "hunter2-secret"
[[accounts]]
id = "act_2"
currency = "BRL"
time_zone = "America/Sao_Paulo"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn parses_with_defaults_and_hides_secrets() {
        let cfg = Config::parse(MINIMAL, no_env).expect("valid");
        assert_eq!(cfg.windows().expect("windows"), Windows::default());
        assert_eq!(cfg.topics.internal, "wafunnel-events");
        assert_eq!(cfg.topics.state, "wafunnel-state");
        assert_eq!(cfg.state.snapshot_interval_ms, 60_000);
        assert_eq!(
            cfg.accounts()
                .expect("accounts")
                .get("act_2")
                .currency
                .as_str(),
            "BRL"
        );
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("0123456789abcdef"),
            "{shown}"
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let cfg = Config::parse(MINIMAL, |k| {
            (k == "WAFUNNEL_CLICKHOUSE_DATABASE").then(|| "other".into())
        })
        .expect("valid");
        assert_eq!(cfg.clickhouse.database, "other");
    }

    #[test]
    fn errors_name_the_setting() {
        let cases = [
            (
                MINIMAL.replace("user_hash_key = \"0123456789abcdef-test\"", ""),
                "user_hash_key",
            ),
            (MINIMAL.replace("BRL", "REAL"), "accounts[0].currency"),
            (
                MINIMAL.replace("America/Sao_Paulo", "Mars/Base"),
                "accounts[0].time_zone",
            ),
            (
                format!("{MINIMAL}\n[windows]\ngap = \"seven days\"\n"),
                "windows.gap",
            ),
            (
                MINIMAL.replace("[kafka]", "[kafka]\nbootstrapp = \"x\""),
                "bootstrapp",
            ),
            (
                MINIMAL.replace("avro-single-object", "avro-confluent"),
                "schema_registry.url",
            ),
            (
                MINIMAL.replace("http://127.0.0.1:8123", "127.0.0.1:8123"),
                "clickhouse.url",
            ),
            (
                format!("{MINIMAL}\n[state]\nsnapshot_records = 0\n"),
                "state.snapshot_records",
            ),
            (
                format!("{MINIMAL}\n[state]\nsnapshot_every = 5\n"),
                "snapshot_every",
            ),
        ];
        for (text, setting) in cases {
            let err = Config::parse(&text, no_env).expect_err(setting).to_string();
            assert!(err.contains(setting), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("7d"), Some(604_800_000));
        assert_eq!(parse_duration_ms("90m"), Some(5_400_000));
        assert_eq!(parse_duration_ms("0h"), None);
        assert_eq!(parse_duration_ms("h"), None);
        assert_eq!(parse_duration_ms("5w"), None);
    }
}
