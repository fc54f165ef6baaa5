//! Service configuration, in layers: built-in defaults, then one TOML
//! file, then the environment. Every setting has an environment override
//! named after its path, `WAFUNNEL__` then the sections and the key joined
//! by `__`: `WAFUNNEL__KAFKA__BOOTSTRAP`, `WAFUNNEL__KAFKA__SASL_PASSWORD`,
//! `WAFUNNEL__CLICKHOUSE__PASSWORD`, `WAFUNNEL__TOPICS__RAW_PARTITIONS`; a
//! librdkafka property is `WAFUNNEL__KAFKA__PROPERTIES__` then its name
//! with `_` for `.` (`..._SOCKET_KEEPALIVE_ENABLE`); lists take TOML
//! syntax (`WAFUNNEL__TOPICS__RAW='[{name="raw",format="json"}]'`). The
//! short names of earlier versions (`WAFUNNEL_USER_HASH_KEY`,
//! `WAFUNNEL_KAFKA_BOOTSTRAP`, `WAFUNNEL_CLICKHOUSE_URL`,
//! `WAFUNNEL_CLICKHOUSE_DATABASE`, `WAFUNNEL_CLICKHOUSE_USER`,
//! `WAFUNNEL_CLICKHOUSE_PASSWORD`, `WAFUNNEL_METRICS_LISTEN`) still work.
//!
//! A wrong or missing setting is one error line naming the setting and
//! where its value came from. Secrets ([`Secret`]) never appear in `Debug`
//! output, and [`redact_url`] removes credentials from URLs before they are
//! printed.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format as _, Toml};
use figment::Figment;
use serde::Deserialize;
use wafunnel_avro::Format;
use wafunnel_core::config::{AccountSettings, Accounts, Windows};
use wafunnel_core::money::Currency;

mod client_limits;
pub use client_limits::{ClientLimits, ClientLimitsConfig};

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
    /// A setting is unknown, mistyped or malformed where it was read.
    #[error("invalid setting `{setting}` ({origin}): {detail}")]
    Setting {
        /// The setting, as a dotted path.
        setting: String,
        /// Where its value came from: the file or an environment variable.
        origin: String,
        /// What is wrong.
        detail: String,
    },
    /// The TOML text itself is malformed.
    #[error("invalid config file: {0}")]
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
    /// How a service stops.
    #[serde(default)]
    pub service: ServiceConfig,
    /// What dead letters carry and how long they are kept.
    #[serde(default)]
    pub dead_letter: DeadLetterConfig,
    /// The WhatsApp webhook receiver (`wafunnel webhook`).
    #[serde(default)]
    pub webhook: WebhookConfig,
    /// Conversions API exports (`wafunnel capi`).
    #[serde(default)]
    pub capi: CapiConfig,
    /// The agency's clients, by name (`[clients.acme]`): `wafunnel grants`
    /// gives each a read-only ClickHouse user that sees its accounts only.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientConfig>,
    /// What every client's user may use (see [`ClientLimitsConfig`]).
    #[serde(default)]
    pub client_limits: ClientLimitsConfig,
}

/// One client of the agency: the ad accounts its BI tool may read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Its ad account ids, as in events.
    pub accounts: Vec<String>,
    /// Its ClickHouse password, best from `WAFUNNEL__CLIENTS__<NAME>__PASSWORD`.
    /// Without one, `wafunnel grants` generates one when it creates the
    /// user, prints it once, and keeps it on later runs.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Where its BI tool may connect from, as IP networks (`203.0.113.0/24`).
    #[serde(default = "default_client_networks")]
    pub networks: Vec<String>,
    /// Its own limits, over `[client_limits]`.
    #[serde(default)]
    pub limits: ClientLimitsConfig,
}

fn default_client_networks() -> Vec<String> {
    vec!["::/0".into()]
}

/// Conversions API exports: when the engine emits them and how
/// `wafunnel capi` delivers them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapiConfig {
    /// How far behind its partition's watermark a lead or purchase must be
    /// before it is exported (`1h`; `0s` exports at once, with the
    /// attribution known at that moment).
    #[serde(default = "default_capi_delay")]
    pub delay: String,
    /// The Graph API's address (a stand-in's in tests).
    #[serde(default = "default_capi_base_url")]
    pub base_url: String,
    /// The Graph API version in the request path.
    #[serde(default = "default_capi_api_version")]
    pub api_version: String,
    /// Most events in one request (Meta accepts at most 1000).
    #[serde(default = "default_capi_max_batch")]
    pub max_batch: usize,
    /// How long exports are gathered into batches before they are sent.
    #[serde(default = "default_capi_linger")]
    pub linger: String,
    /// First wait before a request is retried (429, 5xx, network); it
    /// doubles, with jitter, up to `backoff_max`. A `Retry-After` wins.
    #[serde(default = "default_capi_backoff_min")]
    pub backoff_min: String,
    /// Longest wait between retries.
    #[serde(default = "default_capi_backoff_max")]
    pub backoff_max: String,
    /// How long one request may take before it is retried.
    #[serde(default = "default_capi_request_timeout")]
    pub request_timeout: String,
    /// While Meta refuses an account's credential (an invalid or expired
    /// token, a missing permission), how often its waiting exports are
    /// offered again to find out whether it works now.
    #[serde(default = "default_capi_credential_retry")]
    pub credential_retry: String,
    /// Per ad account id (as in events, lowercase): where its events go.
    /// An account without an entry has its exports rejected with
    /// `not_configured`, without a request.
    #[serde(default)]
    pub accounts: BTreeMap<String, CapiAccountConfig>,
}

/// One ad account's Conversions API dataset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapiAccountConfig {
    /// The dataset id events are posted to.
    #[serde(deserialize_with = "lenient_string")]
    pub dataset_id: String,
    /// The WhatsApp Business Account id sent with every event.
    #[serde(deserialize_with = "lenient_string")]
    pub waba_id: String,
    /// A system-user access token with the dataset's permission: a secret,
    /// best from `WAFUNNEL__CAPI__ACCOUNTS__<ACCOUNT>__ACCESS_TOKEN`.
    #[serde(default)]
    pub access_token: Option<Secret>,
}

fn default_capi_delay() -> String {
    "1h".into()
}
fn default_capi_base_url() -> String {
    "https://graph.facebook.com".into()
}
fn default_capi_api_version() -> String {
    "v21.0".into()
}
fn default_capi_max_batch() -> usize {
    1000
}
fn default_capi_linger() -> String {
    "2s".into()
}
fn default_capi_backoff_min() -> String {
    "1s".into()
}
fn default_capi_backoff_max() -> String {
    "5m".into()
}
fn default_capi_request_timeout() -> String {
    "30s".into()
}
fn default_capi_credential_retry() -> String {
    "1m".into()
}

impl Default for CapiConfig {
    fn default() -> Self {
        CapiConfig {
            delay: default_capi_delay(),
            base_url: default_capi_base_url(),
            api_version: default_capi_api_version(),
            max_batch: default_capi_max_batch(),
            linger: default_capi_linger(),
            backoff_min: default_capi_backoff_min(),
            backoff_max: default_capi_backoff_max(),
            request_timeout: default_capi_request_timeout(),
            credential_retry: default_capi_credential_retry(),
            accounts: BTreeMap::new(),
        }
    }
}

/// `wafunnel capi`'s settings, checked.
#[derive(Debug, Clone)]
pub struct CapiSettings {
    /// The Graph API's address, without a trailing `/`.
    pub base_url: String,
    /// `v21.0`.
    pub api_version: String,
    /// Most events per request.
    pub max_batch: usize,
    /// How long a batch gathers.
    pub linger: Duration,
    /// First retry wait.
    pub backoff_min: Duration,
    /// Longest retry wait.
    pub backoff_max: Duration,
    /// Longest request.
    pub request_timeout: Duration,
    /// How often a refused credential is tried again.
    pub credential_retry: Duration,
    /// Per ad account.
    pub accounts: BTreeMap<String, CapiAccountConfig>,
}

/// `wafunnel webhook`: where Meta's webhook subscription delivers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `ip:port` the receiver listens on.
    #[serde(default = "default_webhook_listen")]
    pub listen: String,
    /// Path prefix in front of `/webhook` (behind a reverse proxy that
    /// forwards `/wa/...` unchanged, `/wa`). The callback URL Meta calls is
    /// `https://<host><path_prefix>/webhook`.
    #[serde(default)]
    pub path_prefix: String,
    /// Raw topic the verified bodies are stored in (default: the first raw
    /// topic of format `whatsapp-webhook`).
    #[serde(default)]
    pub topic: Option<String>,
    /// Largest body accepted; a larger one is answered 413. The receiver
    /// lowers it to what the topic accepts (`max.message.bytes`) if that is
    /// less, so that an accepted body can always be stored.
    #[serde(default = "default_webhook_body")]
    pub max_body_bytes: usize,
    /// Store bodies as Meta sent them, message contents and profile names
    /// included. By default only what the rules use is stored
    /// (docs/SEMANTICS.md section 9).
    #[serde(default)]
    pub keep_message_contents: bool,
    /// How long storing a body in Kafka may take before the answer is 503
    /// (Meta then retries), in milliseconds.
    #[serde(default = "default_store_timeout")]
    pub store_timeout_ms: u64,
    /// The verify token of the subscription's handshake: a secret, best
    /// from `WAFUNNEL__WEBHOOK__VERIFY_TOKEN`.
    #[serde(default)]
    pub verify_token: Option<Secret>,
    /// The Meta app secret that signs every POST (`X-Hub-Signature-256`): a
    /// secret, best from `WAFUNNEL__WEBHOOK__APP_SECRET`.
    #[serde(default)]
    pub app_secret: Option<Secret>,
}

fn default_webhook_listen() -> String {
    "0.0.0.0:8080".into()
}
fn default_webhook_body() -> usize {
    1024 * 1024
}
fn default_store_timeout() -> u64 {
    10_000
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            listen: default_webhook_listen(),
            path_prefix: String::new(),
            topic: None,
            max_body_bytes: default_webhook_body(),
            keep_message_contents: false,
            store_timeout_ms: default_store_timeout(),
            verify_token: None,
            app_secret: None,
        }
    }
}

/// The webhook receiver's settings, checked.
#[derive(Debug)]
pub struct WebhookSettings {
    /// Where it listens.
    pub listen: std::net::SocketAddr,
    /// The path Meta posts to, prefix included.
    pub path: String,
    /// The raw topic.
    pub topic: String,
    /// Largest body.
    pub max_body_bytes: usize,
    /// Whether bodies are stored whole.
    pub keep_message_contents: bool,
    /// Longest store.
    pub store_timeout: Duration,
    /// The handshake's token.
    pub verify_token: Secret,
    /// The signing secret.
    pub app_secret: Secret,
}

impl CapiSettings {
    /// The first account whose access token is missing, as the error
    /// naming the setting and its environment variable.
    pub fn missing_token(&self) -> Option<ConfigError> {
        self.accounts
            .iter()
            .find(|(_, a)| a.access_token.as_ref().is_none_or(|t| t.0.is_empty()))
            .map(|(account, _)| ConfigError::Invalid {
                setting: format!("capi.accounts.{account}.access_token"),
                detail: format!(
                    "missing (set it in the config file or WAFUNNEL__CAPI__ACCOUNTS__{}__ACCESS_TOKEN)",
                    account.to_ascii_uppercase()
                ),
            })
    }
}

/// Dead letters: privacy, size and retention.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// Keep dead-letter payloads and keys as they arrived. By default a
    /// payload keeps only its format's fields with user ids replaced by
    /// their keyed hash (webhook bodies minimized, Avro and unreadable bytes
    /// withheld), and the key is hashed.
    #[serde(default)]
    pub keep_raw_user_ids: bool,
    /// Longest dead-letter payload; a longer record is cut, with its full
    /// size and a keyed digest in headers. Keep it well below the producer's
    /// `message.max.bytes` (1,000,000 by default).
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// `retention.ms` of the dead-letter topic when `check --create-topics`
    /// creates it, as a duration (`30d`). The counts do not depend on it:
    /// they are kept in the sessionizer's state.
    #[serde(default = "default_dead_letter_retention")]
    pub retention: String,
}

fn default_max_payload_bytes() -> usize {
    256 * 1024
}
fn default_dead_letter_retention() -> String {
    "30d".into()
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig {
            keep_raw_user_ids: false,
            max_payload_bytes: default_max_payload_bytes(),
            retention: default_dead_letter_retention(),
        }
    }
}

/// Process settings shared by every service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// After SIGTERM or SIGINT, how long a service may take to finish its
    /// batch, write, commit and snapshot before it gives up (and exits
    /// non-zero; the next run redoes the rest). Keep it a few seconds below
    /// the orchestrator's grace period (Kubernetes: `terminationGracePeriodSeconds`).
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: String,
}

fn default_shutdown_grace() -> String {
    "20s".into()
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            shutdown_grace: default_shutdown_grace(),
        }
    }
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
    /// Delete internal records no snapshot needs any more (those before the
    /// second newest snapshot of their partition), so the internal topic
    /// stops growing. Off: it keeps everything (a rebuild after a settings
    /// change can then replay it instead of the raw topics).
    #[serde(default = "default_true")]
    pub delete_snapshotted_records: bool,
}

fn default_true() -> bool {
    true
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
            delete_snapshotted_records: true,
        }
    }
}

/// The operator endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` every service serves `/metrics`, `/healthz` and `/readyz` on.
    #[serde(default = "default_metrics_listen")]
    pub listen: String,
}

fn default_metrics_listen() -> String {
    "0.0.0.0:9464".into()
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

/// A value that is never printed. It reads a number or a boolean as text,
/// so that a numeric password from the environment is still a password.
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Secret {
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient_string(d).map(Secret)
    }
}

/// Reads a string, or a number or boolean as its text.
fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_i64<E>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_u64<E>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_f64<E>(self, v: f64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_bool<E>(self, v: bool) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    d.deserialize_any(Text)
}

fn lenient_string_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    struct Value(#[serde(deserialize_with = "lenient_string")] String);
    let map = BTreeMap::<String, Value>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

/// Kafka connection settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]` (env `WAFUNNEL_KAFKA_BOOTSTRAP`).
    pub bootstrap: String,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with a `sasl_*` protocol).
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[serde(default, deserialize_with = "lenient_option")]
    pub sasl_username: Option<String>,
    /// SASL password: a secret, best from `WAFUNNEL__KAFKA__SASL_PASSWORD`.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// PEM file of the CA that signed the brokers' certificates (default: the system's).
    #[serde(default)]
    pub ssl_ca_location: Option<String>,
    /// PEM file of this client's certificate, for brokers that require one.
    #[serde(default)]
    pub ssl_certificate_location: Option<String>,
    /// PEM file of this client's private key.
    #[serde(default)]
    pub ssl_key_location: Option<String>,
    /// Password of that key, if it is encrypted: a secret.
    #[serde(default)]
    pub ssl_key_password: Option<Secret>,
    /// Extra librdkafka properties passed through to every client. Values
    /// are never printed (they may hold secrets).
    #[serde(default, deserialize_with = "lenient_string_map")]
    pub properties: BTreeMap<String, String>,
    /// Consumer group of `wafunnel ingest`: its instances share the raw
    /// partitions in it.
    #[serde(default = "default_ingest_group")]
    pub ingest_group: String,
    /// This ingest instance's name in its group: its transactional id is
    /// `<ingest_group>-<ingest_instance>`, so no two running instances may
    /// share it. Kept across restarts of one instance (a pod's name), a
    /// restart aborts at once a transaction its killed predecessor left
    /// open. Default: random, new for every process.
    #[serde(default, deserialize_with = "lenient_option")]
    pub ingest_instance: Option<String>,
    /// Consumer group of `wafunnel sessionize` (offsets are committed for lag monitoring).
    #[serde(default = "default_sessionize_group")]
    pub sessionize_group: String,
    /// Consumer group of `wafunnel capi` on the capi topic.
    #[serde(default = "default_capi_group")]
    pub capi_group: String,
}

fn lenient_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient_string(d).map(Some)
}

fn default_ingest_group() -> String {
    "wafunnel-ingest".into()
}
fn default_sessionize_group() -> String {
    "wafunnel-sessionize".into()
}
fn default_capi_group() -> String {
    "wafunnel-capi".into()
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
    /// Partitions of the internal topic (and of the state topic) when
    /// `check --create-topics` creates it.
    #[serde(default = "default_partitions")]
    pub internal_partitions: i32,
    /// Partitions of each raw topic `check --create-topics` creates (default: the broker's `num.partitions`).
    #[serde(default)]
    pub raw_partitions: Option<i32>,
    /// Replication factor of the topics `check --create-topics` creates
    /// (default: the broker's `default.replication.factor`; 3 on most clusters).
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// Compacted topic of sessionizer state snapshots, one chunked snapshot per internal partition.
    #[serde(default = "default_state")]
    pub state: String,
    /// Conversions API exports of the sessionizer (JSON, keyed by export id),
    /// read by `wafunnel capi`. Created with `internal_partitions` partitions.
    #[serde(default = "default_capi_topic")]
    pub capi: String,
    /// Compacted topic where ingest instances publish how far in event time
    /// each raw partition they own has come, so that together they keep
    /// every raw partition within `windows.max_partition_skew`.
    #[serde(default = "default_alignment_topic")]
    pub alignment: String,
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
fn default_capi_topic() -> String {
    "wafunnel-capi".into()
}
fn default_alignment_topic() -> String {
    "wafunnel-ingest-alignment".into()
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
    #[serde(default = "default_user", deserialize_with = "lenient_string")]
    pub user: String,
    /// Password (env `WAFUNNEL_CLICKHOUSE_PASSWORD`); never logged.
    #[serde(default)]
    pub password: Secret,
    /// On ClickHouse before 24.2, this server's HTTP interface as the
    /// server itself reaches it (a loopback address): the client databases
    /// of `wafunnel grants` read their filtered views through it.
    #[serde(default = "default_self_url")]
    pub self_url: String,
}

fn default_self_url() -> String {
    "http://127.0.0.1:8123".into()
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
    /// WhatsApp Business phone number ids (`metadata.phone_number_id` of
    /// webhooks) whose messages count for this account.
    #[serde(default)]
    pub phone_number_ids: Vec<String>,
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

const PROTOCOLS: &[&str] = &["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];
const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

impl KafkaConfig {
    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |setting: &str, detail: String| ConfigError::Invalid {
            setting: setting.into(),
            detail,
        };
        let protocol = self.protocol();
        if !PROTOCOLS.contains(&protocol.as_str()) {
            return Err(invalid(
                "kafka.security_protocol",
                format!("`{protocol}` is not one of {}", PROTOCOLS.join(", ")),
            ));
        }
        let sasl = protocol.starts_with("sasl_");
        if sasl {
            let mechanism = self.sasl_mechanism.as_deref().unwrap_or("PLAIN");
            if !MECHANISMS.contains(&mechanism) {
                return Err(invalid(
                    "kafka.sasl_mechanism",
                    format!("`{mechanism}` is not one of {}", MECHANISMS.join(", ")),
                ));
            }
            if self.sasl_username.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::Missing("kafka.sasl_username"));
            }
            if self.sasl_password.as_ref().is_none_or(|p| p.0.is_empty()) {
                return Err(ConfigError::Missing("kafka.sasl_password"));
            }
        } else {
            for (setting, set) in [
                ("kafka.sasl_mechanism", self.sasl_mechanism.is_some()),
                ("kafka.sasl_username", self.sasl_username.is_some()),
                ("kafka.sasl_password", self.sasl_password.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        setting,
                        format!(
                            "needs security_protocol sasl_ssl or sasl_plaintext, not {protocol}"
                        ),
                    ));
                }
            }
        }
        for (setting, path) in [
            ("kafka.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", &self.ssl_key_location),
        ] {
            let Some(path) = path else { continue };
            if !protocol.ends_with("ssl") {
                return Err(invalid(
                    setting,
                    format!("needs security_protocol ssl or sasl_ssl, not {protocol}"),
                ));
            }
            if let Err(e) = std::fs::File::open(path) {
                return Err(invalid(setting, format!("cannot read {path}: {e}")));
            }
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            return Err(invalid(
                "kafka.ssl_key_location",
                "a client certificate needs its key, and a key its certificate".into(),
            ));
        }
        Ok(())
    }

    /// The security protocol, lowercase.
    pub fn protocol(&self) -> String {
        self.security_protocol
            .as_deref()
            .unwrap_or("plaintext")
            .to_ascii_lowercase()
    }

    /// The librdkafka properties of the typed settings, secrets included:
    /// for building clients only, never for printing.
    pub fn security_properties(&self) -> Vec<(&'static str, String)> {
        let mut props = vec![("security.protocol", self.protocol())];
        let mut add = |key, value: &Option<String>| {
            if let Some(v) = value {
                props.push((key, v.clone()));
            }
        };
        add("ssl.ca.location", &self.ssl_ca_location);
        add("ssl.certificate.location", &self.ssl_certificate_location);
        add("ssl.key.location", &self.ssl_key_location);
        add(
            "ssl.key.password",
            &self.ssl_key_password.as_ref().map(|s| s.0.clone()),
        );
        if self.protocol().starts_with("sasl_") {
            add(
                "sasl.mechanism",
                &Some(
                    self.sasl_mechanism
                        .clone()
                        .unwrap_or_else(|| "PLAIN".into()),
                ),
            );
            add("sasl.username", &self.sasl_username);
            add(
                "sasl.password",
                &self.sasl_password.as_ref().map(|s| s.0.clone()),
            );
        }
        props
    }
}

/// `url` without the credentials it may carry (`user:password@`, and the
/// values of `password`, `token`, `secret` and `key` query parameters), for printing.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:<redacted>@{host}{path}")
                }
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    let Some(query) = query else { return base };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_name(k) => format!("{k}=<redacted>"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Whether a setting or parameter of this name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["password", "secret", "token", "key", "jaas", "credential"]
        .iter()
        .any(|s| name.contains(s))
}

/// The milliseconds of a duration setting, or the error naming it.
fn duration_setting(setting: &str, text: &str) -> Result<i64, ConfigError> {
    parse_duration_ms(text).ok_or_else(|| ConfigError::Invalid {
        setting: setting.into(),
        detail: format!("`{text}` is not a duration like 7d, 24h, 90m, 30s"),
    })
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

/// An IP address, or one with a prefix length (`10.0.0.0/8`, `::/0`).
fn is_network(text: &str) -> bool {
    let (ip, prefix) = match text.split_once('/') {
        Some((ip, prefix)) => (ip, Some(prefix)),
        None => (text, None),
    };
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else {
        return false;
    };
    let bits = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= bits))
}

/// Environment variables of earlier versions, and the settings they set.
const SHORT_NAMES: &[(&str, &str)] = &[
    ("WAFUNNEL_USER_HASH_KEY", "user_hash_key"),
    ("WAFUNNEL_KAFKA_BOOTSTRAP", "kafka.bootstrap"),
    ("WAFUNNEL_CLICKHOUSE_URL", "clickhouse.url"),
    ("WAFUNNEL_CLICKHOUSE_DATABASE", "clickhouse.database"),
    ("WAFUNNEL_CLICKHOUSE_USER", "clickhouse.user"),
    ("WAFUNNEL_CLICKHOUSE_PASSWORD", "clickhouse.password"),
    ("WAFUNNEL_METRICS_LISTEN", "metrics.listen"),
];

fn environment() -> Figment {
    Figment::new()
        .merge(Env::raw().filter_map(|key| {
            SHORT_NAMES
                .iter()
                .find(|(name, _)| key == *name)
                .map(|(_, path)| (*path).into())
        }))
        .merge(Env::prefixed("WAFUNNEL__").split("__"))
}

/// One line from a figment error: the setting, where it came from, what is wrong.
fn setting_error(e: figment::Error) -> ConfigError {
    let mut path = e.path.clone();
    match &e.kind {
        figment::error::Kind::MissingField(field) => path.push(field.to_string()),
        figment::error::Kind::UnknownField(field, _) => path.push(field.clone()),
        _ => {}
    }
    let origin = match &e.metadata {
        Some(m) if m.name.contains("environment") => {
            let dotted = e.path.join(".");
            let name = SHORT_NAMES
                .iter()
                .find(|(_, setting)| *setting == dotted)
                .filter(|_| !m.name.contains("WAFUNNEL__"))
                .map_or_else(
                    || format!("WAFUNNEL__{}", e.path.join("__").to_ascii_uppercase()),
                    |(name, _)| (*name).to_owned(),
                );
            format!("environment variable {name}")
        }
        _ => "config file".to_owned(),
    };
    if path.is_empty() {
        return ConfigError::Parse(one_line(&e.kind.to_string()));
    }
    ConfigError::Setting {
        setting: path.join("."),
        origin,
        detail: one_line(&e.kind.to_string()),
    }
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    /// Reads the file, then applies the environment overrides and checks every value.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::extract(
            Figment::new()
                .merge(Toml::string(&text))
                .merge(environment()),
        )
    }

    /// Parses TOML text alone, without the environment (tests, embedding).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        Config::extract(Figment::new().merge(Toml::string(text)))
    }

    fn extract(figment: Figment) -> Result<Config, ConfigError> {
        let mut cfg: Config = figment.extract().map_err(setting_error)?;
        // From the environment a property arrives with `_` for `.`; no
        // librdkafka property has an underscore in its name.
        cfg.kafka.properties = std::mem::take(&mut cfg.kafka.properties)
            .into_iter()
            .map(|(k, v)| (k.replace('_', "."), v))
            .collect();
        crate::scrub::register(cfg.secrets().iter().map(String::as_str));
        cfg.check()?;
        Ok(cfg)
    }

    /// Every secret value the configuration holds: the [`Secret`]
    /// settings, the librdkafka properties named like a secret, and the
    /// credentials written into its URLs.
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets: Vec<String> = [
            self.user_hash_key.as_ref(),
            Some(&self.clickhouse.password),
            self.kafka.sasl_password.as_ref(),
            self.kafka.ssl_key_password.as_ref(),
            self.webhook.verify_token.as_ref(),
            self.webhook.app_secret.as_ref(),
        ]
        .into_iter()
        .flatten()
        .chain(
            self.capi
                .accounts
                .values()
                .filter_map(|a| a.access_token.as_ref()),
        )
        .chain(self.clients.values().filter_map(|c| c.password.as_ref()))
        .map(|s| s.0.clone())
        .collect();
        secrets.extend(
            self.kafka
                .properties
                .iter()
                .filter(|(k, _)| is_secret_name(k))
                .map(|(_, v)| v.clone()),
        );
        for url in [
            Some(&self.clickhouse.url),
            self.schema_registry.as_ref().map(|r| &r.url),
            Some(&self.capi.base_url),
        ]
        .into_iter()
        .flatten()
        {
            secrets.extend(crate::scrub::url_credentials(url));
        }
        secrets.retain(|s| !s.is_empty());
        secrets
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
        self.kafka.check()?;
        for (setting, value) in [
            ("topics.raw_partitions", self.topics.raw_partitions),
            ("topics.replication_factor", self.topics.replication_factor),
        ] {
            if value.is_some_and(|v| v < 1) {
                return Err(invalid(setting, "must be at least 1"));
            }
        }
        self.shutdown_grace()?;
        self.dead_letter_retention_ms()?;
        self.capi_delay_ms()?;
        self.capi_settings()?;
        if !(1024..=900_000).contains(&self.dead_letter.max_payload_bytes) {
            return Err(invalid(
                "dead_letter.max_payload_bytes",
                "must be between 1024 and 900000",
            ));
        }
        if self.topics.raw.is_empty() {
            return Err(invalid("topics.raw", "list at least one raw topic"));
        }
        if self.kafka.ingest_instance.as_deref() == Some("") {
            return Err(invalid("kafka.ingest_instance", "must not be empty"));
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
        self.check_clients()?;
        let mut numbers = std::collections::HashSet::new();
        for (number, account) in self.phone_numbers() {
            if !numbers.insert(number.clone()) {
                return Err(invalid(
                    "accounts.phone_number_ids",
                    &format!("{number} is listed twice (last under {account})"),
                ));
            }
        }
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

    fn check_clients(&self) -> Result<(), ConfigError> {
        for (name, client) in &self.clients {
            let invalid = |key: &str, detail: String| ConfigError::Invalid {
                setting: format!("clients.{name}{key}"),
                detail,
            };
            // Names become database and user names, and arrive lowercased
            // from the environment.
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(invalid(
                    "",
                    "a client name is lowercase letters, digits and `_`".into(),
                ));
            }
            if client.accounts.is_empty() {
                return Err(invalid(".accounts", "list at least one account".into()));
            }
            if let Some(a) = client.accounts.iter().find(|a| a.trim().is_empty()) {
                return Err(invalid(".accounts", format!("`{a}` is not an account id")));
            }
            if client.networks.is_empty() {
                return Err(invalid(".networks", "list at least one network".into()));
            }
            if let Some(n) = client.networks.iter().find(|n| !is_network(n)) {
                return Err(invalid(
                    ".networks",
                    format!("`{n}` is not an IP address or network"),
                ));
            }
            if client.password.as_ref().is_some_and(|p| p.0.is_empty()) {
                return Err(invalid(".password", "is empty".into()));
            }
            self.limits_of(name)?;
        }
        Ok(())
    }

    /// The limits of client `name` (its override over `[client_limits]`
    /// over the defaults); a client not configured gets `[client_limits]`.
    pub fn limits_of(&self, name: &str) -> Result<ClientLimits, ConfigError> {
        let own = self.clients.get(name).map(|c| &c.limits);
        self.client_limits.resolve(
            own.unwrap_or(&ClientLimitsConfig::default()),
            &format!("clients.{name}.limits"),
        )
    }

    /// The user-hash key.
    pub fn user_hash_key(&self) -> &[u8] {
        self.user_hash_key.as_ref().map_or(&[], |k| k.0.as_bytes())
    }

    /// The counting windows.
    pub fn windows(&self) -> Result<Windows, ConfigError> {
        Ok(Windows {
            gap_ms: duration_setting("windows.gap", &self.windows.gap)?,
            lateness_ms: duration_setting("windows.lateness", &self.windows.lateness)?,
            attribution_window_ms: duration_setting(
                "windows.attribution",
                &self.windows.attribution,
            )?,
            capi_delay_ms: self.capi_delay_ms()?,
        })
    }

    /// The address of the operator endpoints.
    pub fn metrics_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        let text = &self.metrics.listen;
        text.parse().map_err(|_| ConfigError::Invalid {
            setting: "metrics.listen".into(),
            detail: format!("`{text}` is not ip:port"),
        })
    }

    /// The webhook receiver's settings; an error names what is missing.
    pub fn webhook_settings(&self) -> Result<WebhookSettings, ConfigError> {
        let w = &self.webhook;
        let listen = w.listen.parse().map_err(|_| ConfigError::Invalid {
            setting: "webhook.listen".into(),
            detail: format!("`{}` is not ip:port", w.listen),
        })?;
        let prefix = w.path_prefix.trim_end_matches('/');
        if !prefix.is_empty() && !prefix.starts_with('/') {
            return Err(ConfigError::Invalid {
                setting: "webhook.path_prefix".into(),
                detail: "must start with /".into(),
            });
        }
        let topic = match &w.topic {
            Some(t) => t.clone(),
            None => self
                .topics
                .raw
                .iter()
                .find(|t| t.format == Format::WhatsappWebhook)
                .map(|t| t.name.clone())
                .ok_or(ConfigError::Missing("webhook.topic"))?,
        };
        let secret = |value: &Option<Secret>, setting: &'static str| match value {
            Some(s) if !s.0.is_empty() => Ok(s.clone()),
            _ => Err(ConfigError::Missing(setting)),
        };
        Ok(WebhookSettings {
            listen,
            path: format!("{prefix}/webhook"),
            topic,
            max_body_bytes: w.max_body_bytes,
            keep_message_contents: w.keep_message_contents,
            store_timeout: Duration::from_millis(w.store_timeout_ms.max(1)),
            verify_token: secret(&w.verify_token, "webhook.verify_token")?,
            app_secret: secret(&w.app_secret, "webhook.app_secret")?,
        })
    }

    /// `(phone_number_id, account_id)` of every configured number.
    pub fn phone_numbers(&self) -> Vec<(String, String)> {
        self.accounts
            .iter()
            .flat_map(|a| a.phone_number_ids.iter().map(|n| (n.clone(), a.id.clone())))
            .collect()
    }

    /// How long the dead-letter topic keeps records, in milliseconds.
    pub fn dead_letter_retention_ms(&self) -> Result<i64, ConfigError> {
        duration_setting("dead_letter.retention", &self.dead_letter.retention)
    }

    /// How far behind the watermark an export waits, in milliseconds (may be 0).
    pub fn capi_delay_ms(&self) -> Result<i64, ConfigError> {
        let text = self.capi.delay.trim();
        // `0s` (or `0m`...) is a valid delay here, unlike for other durations.
        if let Some(unit) = text.strip_prefix('0').map(|u| u.trim_start_matches('0')) {
            if ["ms", "s", "m", "h", "d"].contains(&unit) {
                return Ok(0);
            }
        }
        duration_setting("capi.delay", text)
    }

    /// `wafunnel capi`'s settings. Access tokens are not required here (a
    /// dry run needs none): see [`CapiSettings::missing_token`].
    pub fn capi_settings(&self) -> Result<CapiSettings, ConfigError> {
        let c = &self.capi;
        let invalid = |setting: &str, detail: String| ConfigError::Invalid {
            setting: setting.into(),
            detail,
        };
        let base_url = c.base_url.trim_end_matches('/').to_owned();
        if !base_url.starts_with("http://") && !base_url.starts_with("https://") {
            return Err(invalid(
                "capi.base_url",
                "must start with http:// or https://".into(),
            ));
        }
        if c.api_version.is_empty() || c.api_version.contains('/') {
            return Err(invalid(
                "capi.api_version",
                format!("`{}` is not a version like v21.0", c.api_version),
            ));
        }
        if !(1..=1000).contains(&c.max_batch) {
            return Err(invalid(
                "capi.max_batch",
                "must be between 1 and 1000".into(),
            ));
        }
        let duration = |setting: &str, text: &str| {
            duration_setting(setting, text).map(|ms| Duration::from_millis(ms as u64))
        };
        let backoff_min = duration("capi.backoff_min", &c.backoff_min)?;
        let backoff_max = duration("capi.backoff_max", &c.backoff_max)?;
        if backoff_max < backoff_min {
            return Err(invalid(
                "capi.backoff_max",
                "must be at least capi.backoff_min".into(),
            ));
        }
        for (account, a) in &c.accounts {
            for (key, value) in [("dataset_id", &a.dataset_id), ("waba_id", &a.waba_id)] {
                if value.trim().is_empty() || value.contains('/') {
                    return Err(invalid(
                        &format!("capi.accounts.{account}.{key}"),
                        format!("`{value}` is not an id"),
                    ));
                }
            }
        }
        Ok(CapiSettings {
            base_url,
            api_version: c.api_version.clone(),
            max_batch: c.max_batch,
            linger: duration("capi.linger", &c.linger)?,
            backoff_min,
            backoff_max,
            request_timeout: duration("capi.request_timeout", &c.request_timeout)?,
            credential_retry: duration("capi.credential_retry", &c.credential_retry)?,
            accounts: c.accounts.clone(),
        })
    }

    /// How long a stop may take.
    pub fn shutdown_grace(&self) -> Result<Duration, ConfigError> {
        duration_setting("service.shutdown_grace", &self.service.shutdown_grace)
            .map(|ms| Duration::from_millis(ms as u64))
    }

    /// How far ahead in event time a raw partition may run.
    pub fn max_partition_skew_ms(&self) -> Result<i64, ConfigError> {
        duration_setting(
            "windows.max_partition_skew",
            &self.windows.max_partition_skew,
        )
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

    #[test]
    fn parses_with_defaults_and_hides_secrets() {
        let cfg = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(cfg.windows().expect("windows"), Windows::default());
        assert_eq!(cfg.topics.internal, "wafunnel-events");
        assert_eq!(cfg.topics.state, "wafunnel-state");
        assert_eq!(cfg.state.snapshot_interval_ms, 60_000);
        assert_eq!(cfg.topics.capi, "wafunnel-capi");
        assert_eq!(cfg.kafka.capi_group, "wafunnel-capi");
        assert_eq!(cfg.capi_delay_ms().expect("delay"), 3_600_000);
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

    fn load_with_env(vars: &[(&str, &str)]) -> Result<Config, String> {
        load_text_with_env(MINIMAL, vars)
    }

    #[allow(clippy::result_large_err)] // figment's Jail decides the closure's type
    fn load_text_with_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
        let mut result = Err(String::new());
        figment::Jail::expect_with(|jail| {
            jail.create_file("wafunnel.toml", text)?;
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            result = Config::load(Path::new("wafunnel.toml")).map_err(|e| e.to_string());
            Ok(())
        });
        result
    }

    #[test]
    fn every_setting_has_an_environment_override() {
        let cfg = load_with_env(&[
            ("WAFUNNEL__CLICKHOUSE__DATABASE", "other"),
            ("WAFUNNEL__KAFKA__BOOTSTRAP", "broker-1:9093,broker-2:9093"),
            ("WAFUNNEL__KAFKA__SECURITY_PROTOCOL", "sasl_plaintext"),
            ("WAFUNNEL__KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
            ("WAFUNNEL__KAFKA__SASL_USERNAME", "svc"),
            ("WAFUNNEL__KAFKA__SASL_PASSWORD", "12345678"),
            (
                "WAFUNNEL__KAFKA__PROPERTIES__SOCKET_KEEPALIVE_ENABLE",
                "true",
            ),
            ("WAFUNNEL__TOPICS__REPLICATION_FACTOR", "3"),
            (
                "WAFUNNEL__TOPICS__RAW",
                "[{name=\"env-raw\",format=\"json\"}]",
            ),
            ("WAFUNNEL__BATCH__MAX_RECORDS", "123"),
            ("WAFUNNEL__KAFKA__INGEST_INSTANCE", "ingest-0"),
            ("WAFUNNEL__TOPICS__ALIGNMENT", "env-alignment"),
            ("WAFUNNEL__SERVICE__SHUTDOWN_GRACE", "7s"),
            ("WAFUNNEL_CLICKHOUSE_PASSWORD", "short-name-still-works"),
            ("WAFUNNEL_BIN", "/not/a/setting"),
        ])
        .expect("valid");
        assert_eq!(cfg.clickhouse.database, "other");
        assert_eq!(cfg.clickhouse.password.expose(), "short-name-still-works");
        assert_eq!(cfg.kafka.bootstrap, "broker-1:9093,broker-2:9093");
        assert_eq!(
            cfg.kafka.sasl_password.as_ref().map(Secret::expose),
            Some("12345678"),
            "a numeric password is still text"
        );
        assert_eq!(
            cfg.kafka
                .properties
                .get("socket.keepalive.enable")
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(cfg.topics.replication_factor, Some(3));
        assert_eq!(cfg.topics.raw.len(), 1);
        assert_eq!(cfg.topics.raw[0].name, "env-raw");
        assert_eq!(cfg.batch.max_records, 123);
        assert_eq!(cfg.kafka.ingest_instance.as_deref(), Some("ingest-0"));
        assert_eq!(cfg.topics.alignment, "env-alignment");
        assert_eq!(cfg.shutdown_grace().expect("grace"), Duration::from_secs(7));
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("12345678") && !shown.contains("short-name"),
            "{shown}"
        );
    }

    #[test]
    fn a_wrong_environment_value_names_its_variable() {
        let err = load_with_env(&[("WAFUNNEL__BATCH__MAX_RECORDS", "many")]).expect_err("invalid");
        assert!(err.contains("batch.max_records"), "{err}");
        assert!(err.contains("WAFUNNEL__BATCH__MAX_RECORDS"), "{err}");
        let err = load_with_env(&[("WAFUNNEL__KAFKA__BOOTSTRAPP", "x")]).expect_err("unknown");
        assert!(err.contains("kafka.bootstrapp"), "{err}");
    }

    #[test]
    fn sasl_settings_are_checked() {
        let sasl = MINIMAL.replace(
            "[kafka]",
            "[kafka]\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"u\"",
        );
        let err = Config::from_toml(&sasl)
            .expect_err("no password")
            .to_string();
        assert!(err.contains("kafka.sasl_password"), "{err}");
        let cfg = Config::from_toml(&sasl.replace(
            "sasl_username = \"u\"",
            "sasl_username = \"u\"\nsasl_password = \"p-secret\"",
        ))
        .expect("valid");
        let props = cfg.kafka.security_properties();
        assert!(props.contains(&("sasl.mechanism", "SCRAM-SHA-256".into())));
        assert!(props.contains(&("security.protocol", "sasl_ssl".into())));
        for (text, setting) in [
            (sasl.replace("SCRAM-SHA-256", "SCRAM"), "kafka.sasl_mechanism"),
            (sasl.replace("sasl_ssl", "tls"), "kafka.security_protocol"),
            (
                MINIMAL.replace("[kafka]", "[kafka]\nsasl_username = \"u\""),
                "kafka.sasl_username",
            ),
            (
                MINIMAL.replace(
                    "[kafka]",
                    "[kafka]\nsecurity_protocol = \"ssl\"\nssl_ca_location = \"/nonexistent/ca.pem\"",
                ),
                "kafka.ssl_ca_location",
            ),
        ] {
            let err = Config::from_toml(&text).expect_err(setting).to_string();
            assert!(err.contains(setting), "{err}");
        }
    }

    #[test]
    fn credentials_are_redacted_from_urls() {
        assert_eq!(
            redact_url("https://bi:hunter2@ch.example.com:8443/?database=x&password=hunter2"),
            "https://bi:<redacted>@ch.example.com:8443/?database=x&password=<redacted>"
        );
        assert_eq!(redact_url("http://127.0.0.1:8123"), "http://127.0.0.1:8123");
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
                "kafka.bootstrapp",
            ),
            (MINIMAL.replace("[kafka]", "[kafka\n"), "config file"),
            (
                format!("{MINIMAL}\n[service]\nshutdown_grace = \"soon\"\n"),
                "service.shutdown_grace",
            ),
            (
                format!("{MINIMAL}\n[metrics]\nlisten = \"everywhere\"\n"),
                "metrics.listen",
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
                "state.snapshot_every",
            ),
        ];
        for (text, setting) in cases {
            let err = Config::from_toml(&text).expect_err(setting).to_string();
            assert!(err.contains(setting), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn capi_delay_may_be_zero() {
        for (text, ms) in [("0s", 0), ("00m", 0), ("0ms", 0), ("90m", 5_400_000)] {
            let cfg =
                Config::from_toml(&format!("{MINIMAL}\n[capi]\ndelay = \"{text}\"\n")).expect(text);
            assert_eq!(cfg.capi_delay_ms().expect(text), ms, "{text}");
        }
        for text in ["0", "0x", "-1h", "soon"] {
            let err = Config::from_toml(&format!("{MINIMAL}\n[capi]\ndelay = \"{text}\"\n"))
                .expect_err(text)
                .to_string();
            assert!(err.contains("capi.delay"), "{err}");
        }
        let cfg = load_with_env(&[
            ("WAFUNNEL__CAPI__DELAY", "0s"),
            ("WAFUNNEL__TOPICS__CAPI", "capi-env"),
            ("WAFUNNEL__KAFKA__CAPI_GROUP", "capi-group-env"),
        ])
        .expect("valid");
        assert_eq!(cfg.capi_delay_ms().expect("delay"), 0);
        assert_eq!(cfg.topics.capi, "capi-env");
        assert_eq!(cfg.kafka.capi_group, "capi-group-env");
    }

    #[test]
    fn capi_accounts_and_their_tokens_come_from_the_file_or_the_environment() {
        let with_accounts = format!(
            "{MINIMAL}\n[capi]\nmax_batch = 500\nlinger = \"250ms\"\n[capi.accounts.act_1001]\ndataset_id = \"123456\"\nwaba_id = \"1049\"\n"
        );
        let cfg = Config::from_toml(&with_accounts).expect("valid");
        let settings = cfg.capi_settings().expect("settings");
        assert_eq!(settings.base_url, "https://graph.facebook.com");
        assert_eq!(settings.api_version, "v21.0");
        assert_eq!(settings.max_batch, 500);
        assert_eq!(settings.linger, Duration::from_millis(250));
        let err = settings.missing_token().expect("no token").to_string();
        assert!(
            err.contains("capi.accounts.act_1001.access_token")
                && err.contains("WAFUNNEL__CAPI__ACCOUNTS__ACT_1001__ACCESS_TOKEN"),
            "{err}"
        );

        let cfg = load_text_with_env(
            &with_accounts,
            &[
                (
                    "WAFUNNEL__CAPI__ACCOUNTS__ACT_1001__ACCESS_TOKEN",
                    "EAAB-token-1",
                ),
                // An account set up from the environment alone; numeric ids stay text.
                ("WAFUNNEL__CAPI__ACCOUNTS__ACT_2002__DATASET_ID", "98765"),
                ("WAFUNNEL__CAPI__ACCOUNTS__ACT_2002__WABA_ID", "2020"),
                ("WAFUNNEL__CAPI__ACCOUNTS__ACT_2002__ACCESS_TOKEN", "12345"),
                ("WAFUNNEL__CAPI__BASE_URL", "http://127.0.0.1:9/"),
            ],
        )
        .expect("valid");
        let settings = cfg.capi_settings().expect("settings");
        assert!(settings.missing_token().is_none());
        assert_eq!(settings.base_url, "http://127.0.0.1:9");
        let first = &settings.accounts["act_1001"];
        assert_eq!(first.dataset_id, "123456");
        assert_eq!(
            first.access_token.as_ref().map(Secret::expose),
            Some("EAAB-token-1")
        );
        let second = &settings.accounts["act_2002"];
        assert_eq!(
            (second.dataset_id.as_str(), second.waba_id.as_str()),
            ("98765", "2020")
        );
        assert_eq!(
            second.access_token.as_ref().map(Secret::expose),
            Some("12345")
        );
        let shown = format!("{cfg:?} {settings:?}");
        assert!(
            !shown.contains("EAAB-token") && !shown.contains("12345\""),
            "{shown}"
        );
    }

    #[test]
    fn wrong_capi_settings_are_named() {
        for (section, setting) in [
            ("max_batch = 1001", "capi.max_batch"),
            ("max_batch = 0", "capi.max_batch"),
            ("linger = \"soon\"", "capi.linger"),
            ("base_url = \"graph.facebook.com\"", "capi.base_url"),
            ("api_version = \"v21.0/x\"", "capi.api_version"),
            (
                "backoff_min = \"1m\"\nbackoff_max = \"1s\"",
                "capi.backoff_max",
            ),
            ("request_timeout = \"0s\"", "capi.request_timeout"),
            (
                "[capi.accounts.act_1]\nwaba_id = \"1\"",
                "capi.accounts.act_1.dataset_id",
            ),
            (
                "[capi.accounts.act_1]\ndataset_id = \"\"\nwaba_id = \"1\"",
                "capi.accounts.act_1.dataset_id",
            ),
            (
                "[capi.accounts.act_1]\ndataset_id = \"1\"\nwaba_id = \"1\"\ntoken = \"x\"",
                "capi.accounts.act_1.token",
            ),
        ] {
            let err = Config::from_toml(&format!("{MINIMAL}\n[capi]\n{section}\n"))
                .expect_err(setting)
                .to_string();
            assert!(err.contains(setting), "{setting}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn clients_take_their_password_from_the_environment() {
        let text = format!(
            "{MINIMAL}\n[clients.acme]\naccounts = [\"act_1001\", \"act_2002\"]\n[clients.b2]\naccounts = [\"act_3\"]\nnetworks = [\"10.0.0.0/8\"]\n"
        );
        let cfg = load_text_with_env(&text, &[("WAFUNNEL__CLIENTS__ACME__PASSWORD", "4242")])
            .expect("valid");
        let acme = &cfg.clients["acme"];
        assert_eq!(acme.accounts, ["act_1001", "act_2002"]);
        assert_eq!(acme.password.as_ref().map(Secret::expose), Some("4242"));
        assert_eq!(acme.networks, ["::/0"]);
        assert!(cfg.clients["b2"].password.is_none());
        assert_eq!(cfg.clickhouse.self_url, "http://127.0.0.1:8123");
        assert!(!format!("{cfg:?}").contains("4242"));
    }

    #[test]
    fn a_wrong_client_names_its_setting() {
        for (section, setting) in [
            ("[clients.Acme]\naccounts = [\"a\"]", "clients.Acme"),
            ("[clients.acme]\naccounts = []", "clients.acme.accounts"),
            (
                "[clients.acme]\naccounts = [\" \"]",
                "clients.acme.accounts",
            ),
            (
                "[clients.acme]\naccounts = [\"a\"]\nnetworks = [\"10.0.0.0/33\"]",
                "clients.acme.networks",
            ),
            (
                "[clients.acme]\naccounts = [\"a\"]\npassword = \"\"",
                "clients.acme.password",
            ),
            ("[clients.acme]\naccount = [\"a\"]", "clients.acme.account"),
        ] {
            let err = Config::from_toml(&format!("{MINIMAL}\n{section}\n"))
                .expect_err(setting)
                .to_string();
            assert!(err.contains(setting), "{setting}: {err}");
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
