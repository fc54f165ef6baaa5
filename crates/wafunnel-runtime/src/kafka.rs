//! Kafka plumbing shared by the services: client configuration (TLS and
//! SASL from typed settings, librdkafka properties passed through) with a
//! logging context (librdkafka's own warnings go to `tracing`), reaching
//! the brokers at startup, topic administration, and the header names of
//! the internal and dead-letter records.
//!
//! Failure classes: an unreachable broker is retried (the service stays
//! alive and not ready); rejected credentials or a failed TLS handshake
//! are fatal at startup, reported once with the address and the settings
//! to check. Property values are never printed: an invalid one is named
//! by its key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Classify, Fault};
use crate::shutdown::Shutdown;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::TopicPartitionList;

use crate::config::KafkaConfig;
use crate::metrics::metrics;

/// Header: the raw topic a record came from.
pub const SOURCE_TOPIC: &str = "wafunnel.source.topic";
/// Header: its partition.
pub const SOURCE_PARTITION: &str = "wafunnel.source.partition";
/// Header: its offset.
pub const SOURCE_OFFSET: &str = "wafunnel.source.offset";
/// Internal-topic header: what a record is when it is not an event.
pub const KIND: &str = "wafunnel.kind";
/// [`KIND`] of the marker of a valid input record with nothing to count.
pub const KIND_IGNORED: &str = "ignored";
/// Dead-letter header: the machine-readable reason.
pub const REASON: &str = "wafunnel.reason";
/// Dead-letter header: the human-readable detail.
pub const DETAIL: &str = "wafunnel.detail";

/// Forwards librdkafka's log lines to `tracing` (by default they would be lost).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogContext;

/// Implements `ClientContext` for a context of its own (a consumer's
/// rebalance handling, a producer's delivery reports) by logging as
/// [`LogContext`] does, so that no client's warnings are lost.
#[macro_export]
macro_rules! logs_like_log_context {
    ($context:ty) => {
        impl ::rdkafka::client::ClientContext for $context {
            fn log(&self, level: ::rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
                ::rdkafka::client::ClientContext::log(
                    &$crate::kafka::LogContext,
                    level,
                    fac,
                    message,
                );
            }

            fn error(&self, error: ::rdkafka::error::KafkaError, reason: &str) {
                ::rdkafka::client::ClientContext::error(&$crate::kafka::LogContext, error, reason);
            }
        }
    };
}

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // Authentication and handshake failures also arrive as errors
        // (above), which report them once; librdkafka repeats them here on
        // every reconnect.
        if is_security_failure(message) {
            tracing::debug!(facility = fac, "librdkafka: {message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(facility = fac, "librdkafka: {message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            // Reaching the end of a partition is news, not an error.
            Some(RDKafkaErrorCode::PartitionEOF) => {}
            // Kept for the startup check, which reports it once and stops.
            Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL) => {
                tracing::debug!(error = %error, reason, "kafka security failure");
                let mut slot = SECURITY_FAILURE.lock().unwrap_or_else(|p| p.into_inner());
                *slot = Some(crate::scrub::scrubbed(reason.to_owned()));
            }
            _ => tracing::warn!(error = %error, reason, "kafka client error"),
        }
    }
}

impl ConsumerContext for LogContext {}

/// How long a group's committed offsets are asked for before giving up.
pub const COMMITTED_WAIT: Duration = Duration::from_secs(120);

/// The committed offsets of `partitions` in the consumer's group, asked
/// again every second until [`COMMITTED_WAIT`] has passed while the group
/// coordinator cannot answer (one still loading after a broker start
/// answers `NotCoordinator` or `CoordinatorLoadInProgress` for a while). A
/// partition whose own offset could not be read is an error too: taking it
/// as uncommitted would read it from the beginning. Blocks: call it inside
/// [`blocking`].
pub fn committed_offsets<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    partitions: &TopicPartitionList,
) -> Result<TopicPartitionList, KafkaError> {
    let deadline = Instant::now() + COMMITTED_WAIT;
    loop {
        let answer = consumer
            .committed_offsets(partitions.clone(), Duration::from_secs(5))
            .and_then(|committed| {
                for element in committed.elements() {
                    element.error()?;
                }
                Ok(committed)
            });
        match answer {
            Ok(committed) => return Ok(committed),
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "cannot read committed offsets yet, retrying");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Runs a blocking Kafka call (transactions, snapshot reads and writes)
/// without stalling the other tasks of a multi-threaded runtime; on a
/// current-thread runtime there are no others, and it just runs.
pub fn blocking<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// The last authentication or TLS failure any client of this process saw.
static SECURITY_FAILURE: Mutex<Option<String>> = Mutex::new(None);

fn is_security_failure(message: &str) -> bool {
    message.contains("SASL authentication error")
        || message.contains("SSL handshake failed")
        || message.contains("Authentication failed")
}

/// A client configuration with the bootstrap servers, the security
/// settings and the passthrough properties (which win).
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &cfg.bootstrap);
    for (key, value) in cfg.security_properties() {
        config.set(key, value);
    }
    // OpenSSL is built in, so its default CA directory is not the
    // system's: without a CA file, librdkafka looks where distributions
    // keep their CA bundles.
    if cfg.protocol().ends_with("ssl") && cfg.ssl_ca_location.is_none() {
        config.set("ssl.ca.location", "probe");
    }
    for (key, value) in &cfg.properties {
        config.set(key, value);
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// The settings of a consumer in `group` that commits its offsets itself,
/// after its outputs are acknowledged: no auto-commit, only committed
/// transactions (`read_committed`), from the earliest record where the group
/// has no offset or its offset is below the log start (records deleted must
/// not make it jump to the end and skip what is left). A killed member's
/// partitions wait `session.timeout.ms` for a new owner: 10 s unless set
/// (librdkafka's default is 45 s); heartbeats come from a background thread,
/// so a long batch does not expire the session.
pub fn committing_consumer_config(cfg: &KafkaConfig, group: &str) -> ClientConfig {
    let mut client = client_config(cfg);
    if !cfg.properties.contains_key("session.timeout.ms") {
        client.set("session.timeout.ms", "10000");
    }
    client
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    client
}

/// The settings of a producer whose records count only once Kafka has
/// them: idempotent, acknowledged by every in-sync replica (`acks=all`),
/// and given up after `timeout`, so a caller that stopped waiting for a
/// record never sees it stored later.
pub fn durable_producer_config(cfg: &KafkaConfig, timeout: Duration) -> ClientConfig {
    let mut client = client_config(cfg);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", timeout.as_millis().to_string());
    client
}

/// Creates a client; an invalid property is named by its key, its value
/// (which may be a secret) replaced.
pub fn create<C>(config: &ClientConfig) -> Result<C, KafkaError>
where
    C: rdkafka::config::FromClientConfigAndContext<LogContext>,
{
    config.create_with_context(LogContext).map_err(redact)
}

/// `error` without the property value it may carry.
pub fn redact(error: KafkaError) -> KafkaError {
    match error {
        KafkaError::ClientConfig(code, description, key, value) => {
            let description = if value.is_empty() {
                description
            } else {
                description.replace(&value, "<redacted>")
            };
            KafkaError::ClientConfig(code, description, key, "<redacted>".into())
        }
        other => other,
    }
}

/// Why the brokers cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The brokers refused this client's credentials or certificate.
    #[error("kafka at {bootstrap} refused the connection: {detail} (check kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username, kafka.sasl_password and the ssl_* settings)")]
    Security {
        /// `kafka.bootstrap`.
        bootstrap: String,
        /// What librdkafka said.
        detail: String,
    },
    /// The client could not be built from the settings.
    #[error("kafka client settings: {0}")]
    Settings(KafkaError),
    /// The stop was abandoned while the brokers were unreachable.
    #[error("stopped while kafka at {0} was unreachable")]
    Stopped(String),
}

impl Classify for ConnectError {
    fn fault(&self) -> Fault {
        match self {
            ConnectError::Security { .. } | ConnectError::Settings(_) => Fault::User,
            ConnectError::Stopped(_) => Fault::External,
        }
    }

    fn is_retryable(&self) -> bool {
        false
    }
}

/// Waits until the brokers answer, retrying with backoff while they are
/// unreachable (the service stays alive and not ready), and returns the
/// partition counts of the topics they know. Credentials or certificates
/// the brokers refuse end it at once.
pub async fn connect(
    cfg: &KafkaConfig,
    shutdown: &Shutdown,
) -> Result<HashMap<String, i32>, ConnectError> {
    let consumer: BaseConsumer<LogContext> =
        create(&client_config(cfg)).map_err(ConnectError::Settings)?;
    let mut delay = Duration::from_millis(500);
    loop {
        let metadata = blocking(|| {
            let metadata = consumer.fetch_metadata(None, Duration::from_secs(5));
            // Client errors (a refused login among them) are events that
            // only a poll delivers to the context.
            if metadata.is_err() {
                let _ = consumer.poll(Duration::from_millis(100));
            }
            metadata
        });
        if let Some(detail) = SECURITY_FAILURE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            return Err(ConnectError::Security {
                bootstrap: cfg.bootstrap.clone(),
                detail,
            });
        }
        match metadata {
            Ok(metadata) => {
                return Ok(metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
                    .collect())
            }
            Err(e) => {
                metrics().kafka_connect_retries.inc();
                tracing::warn!(
                    bootstrap = cfg.bootstrap,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "kafka unreachable, retrying"
                );
                if !shutdown.sleep(delay).await || shutdown.is_stopping() {
                    return Err(ConnectError::Stopped(cfg.bootstrap.clone()));
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Partitions and replication factor of the topics `check --create-topics` makes.
#[derive(Debug, Clone, Copy)]
pub struct TopicLayout {
    /// Partitions (`None`: the broker's default).
    pub partitions: Option<i32>,
    /// Replication factor (`None`: the broker's default).
    pub replication: Option<i32>,
}

/// Creates topics that do not exist yet (`name`, partitions) with the
/// broker's default replication; existing ones are left alone.
pub async fn create_topics(cfg: &KafkaConfig, topics: &[(&str, i32)]) -> Result<(), KafkaError> {
    let topics: Vec<(&str, TopicLayout)> = topics
        .iter()
        .map(|&(name, partitions)| {
            (
                name,
                TopicLayout {
                    partitions: Some(partitions),
                    replication: None,
                },
            )
        })
        .collect();
    create_with(cfg, &topics, &[]).await
}

/// Creates a topic that does not exist yet with `layout`.
pub async fn create_topic(
    cfg: &KafkaConfig,
    name: &str,
    layout: TopicLayout,
) -> Result<(), KafkaError> {
    create_with(cfg, &[(name, layout)], &[]).await
}

/// Settings of the state topic: compacted, so it keeps the newest record of
/// each snapshot key; small segments, so compaction reaches them soon.
const STATE_TOPIC_SETTINGS: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.bytes", "67108864"),
    ("segment.ms", "3600000"),
    ("min.cleanable.dirty.ratio", "0.2"),
    ("max.message.bytes", "2097152"),
];

/// Settings of the ingest alignment topic: compacted, so it keeps each raw
/// partition's latest position; small segments, so it stays small.
const ALIGNMENT_TOPIC_SETTINGS: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.bytes", "1048576"),
    ("segment.ms", "600000"),
    ("min.cleanable.dirty.ratio", "0.1"),
];

/// Creates the compacted ingest alignment topic, of one partition, if it
/// does not exist yet.
pub async fn create_alignment_topic(
    cfg: &KafkaConfig,
    name: &str,
    replication: Option<i32>,
) -> Result<(), KafkaError> {
    let layout = TopicLayout {
        partitions: Some(1),
        replication,
    };
    create_with(cfg, &[(name, layout)], ALIGNMENT_TOPIC_SETTINGS).await
}

/// Settings of the internal topic: it is the source of truth a partition is
/// replayed from when no snapshot can be used, so it keeps everything.
const INTERNAL_TOPIC_SETTINGS: &[(&str, &str)] = &[("retention.ms", "-1")];

/// Creates the internal topic, with unlimited retention, if it does not exist yet.
pub async fn create_internal_topic(
    cfg: &KafkaConfig,
    name: &str,
    layout: TopicLayout,
) -> Result<(), KafkaError> {
    create_with(cfg, &[(name, layout)], INTERNAL_TOPIC_SETTINGS).await
}

/// Creates the dead-letter topic, keeping records `retention_ms`, if it does not exist yet.
pub async fn create_dead_letter_topic(
    cfg: &KafkaConfig,
    name: &str,
    layout: TopicLayout,
    retention_ms: i64,
) -> Result<(), KafkaError> {
    let retention = retention_ms.to_string();
    create_with(
        cfg,
        &[(name, layout)],
        &[("retention.ms", retention.as_str())],
    )
    .await
}

/// Creates the compacted state topic if it does not exist yet.
pub async fn create_state_topic(
    cfg: &KafkaConfig,
    name: &str,
    layout: TopicLayout,
) -> Result<(), KafkaError> {
    create_with(cfg, &[(name, layout)], STATE_TOPIC_SETTINGS).await
}

async fn create_with(
    cfg: &KafkaConfig,
    topics: &[(&str, TopicLayout)],
    settings: &[(&str, &str)],
) -> Result<(), KafkaError> {
    let admin: AdminClient<LogContext> = create(&client_config(cfg))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, layout)| {
            // -1 asks the broker for its default (KIP-464).
            settings.iter().fold(
                NewTopic::new(
                    name,
                    layout.partitions.unwrap_or(-1),
                    TopicReplication::Fixed(layout.replication.unwrap_or(-1)),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let results = admin
        .create_topics(
            new.iter(),
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(topic, error = %code, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// Topic settings that would make the state topic or the internal topic
/// lose what a restore needs, as one line per problem (empty when sound).
pub async fn topic_setting_problems(
    cfg: &KafkaConfig,
    internal: &str,
    state: &str,
) -> Result<Vec<String>, KafkaError> {
    let admin: AdminClient<LogContext> = create(&client_config(cfg))?;
    let topics = [
        ResourceSpecifier::Topic(internal),
        ResourceSpecifier::Topic(state),
    ];
    let results = admin
        .describe_configs(
            topics.iter(),
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    let mut problems = Vec::new();
    for (topic, result) in [internal, state].into_iter().zip(results) {
        let resource = result.map_err(KafkaError::AdminOp)?;
        let value = |name: &str| {
            resource
                .get(name)
                .and_then(|e| e.value.clone())
                .unwrap_or_default()
        };
        if topic == state && !value("cleanup.policy").contains("compact") {
            problems.push(format!(
                "{topic}: cleanup.policy is `{}`, not compact: old snapshots would be deleted by time, not replaced",
                value("cleanup.policy")
            ));
        }
        if topic == internal && value("retention.ms") != "-1" {
            problems.push(format!(
                "{topic}: retention.ms is {}, not -1: a partition replayed from its beginning would miss deleted records",
                value("retention.ms")
            ));
        }
    }
    Ok(problems)
}

/// Bytes a record batch of one record adds to its value, with room for
/// compression framing: a value of `max.message.bytes - RECORD_OVERHEAD`
/// always fits a topic.
pub const RECORD_OVERHEAD: usize = 1024;

/// The largest record batch `topic` accepts (`max.message.bytes`, the
/// topic's own or the broker's default).
pub async fn topic_max_message_bytes(cfg: &KafkaConfig, topic: &str) -> Result<usize, KafkaError> {
    let admin: AdminClient<LogContext> = create(&client_config(cfg))?;
    let results = admin
        .describe_configs(
            [ResourceSpecifier::Topic(topic)].iter(),
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    let resource = results
        .into_iter()
        .next()
        .ok_or(KafkaError::AdminOp(RDKafkaErrorCode::UnknownTopic))?
        .map_err(KafkaError::AdminOp)?;
    resource
        .get("max.message.bytes")
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.parse().ok())
        .ok_or(KafkaError::AdminOp(RDKafkaErrorCode::InvalidConfig))
}

/// Creates a raw topic of webhook bodies that accepts a body of
/// `max_body_bytes`, if it does not exist yet.
pub async fn create_webhook_topic(
    cfg: &KafkaConfig,
    name: &str,
    layout: TopicLayout,
    max_body_bytes: usize,
) -> Result<(), KafkaError> {
    let max = (max_body_bytes + RECORD_OVERHEAD).to_string();
    create_with(
        cfg,
        &[(name, layout)],
        &[("max.message.bytes", max.as_str())],
    )
    .await
}

/// Partition counts of the topics the broker knows.
pub fn topic_partitions(
    cfg: &KafkaConfig,
    timeout: Duration,
) -> Result<HashMap<String, i32>, KafkaError> {
    let consumer: BaseConsumer<LogContext> = create(&client_config(cfg))?;
    let metadata = consumer.fetch_metadata(None, timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_owned(), t.partitions().len() as i32))
        .collect())
}

/// A header's value as text.
pub fn header<'a>(message: &'a impl Message, key: &str) -> Option<&'a str> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// The features this build of librdkafka has (`ssl`, `sasl_scram`, ...).
pub fn builtin_features() -> String {
    ClientConfig::new()
        .create_native_config()
        .and_then(|native| native.get("builtin.features"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_can_reach_secured_clusters() {
        let features = builtin_features();
        for needed in ["ssl", "sasl_plain", "sasl_scram", "zstd", "lz4"] {
            assert!(
                features.split(',').any(|f| f == needed),
                "librdkafka built without {needed}: {features}"
            );
        }
    }

    #[test]
    fn an_invalid_property_is_named_without_its_value() {
        let mut config = ClientConfig::new();
        config.set("security.protocol", "hunter2-not-a-protocol");
        let err = create::<BaseConsumer<LogContext>>(&config)
            .err()
            .expect("invalid")
            .to_string();
        assert!(err.contains("security.protocol"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let mut config = ClientConfig::new();
        config.set("sasl.pasword", "hunter2");
        let err = create::<BaseConsumer<LogContext>>(&config)
            .err()
            .expect("unknown")
            .to_string();
        assert!(
            err.contains("sasl.pasword") && !err.contains("hunter2"),
            "{err}"
        );
    }
}
