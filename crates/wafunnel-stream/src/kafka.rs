//! Kafka plumbing shared by the services: client configuration with a
//! logging context (librdkafka's own warnings go to `tracing`), topic
//! administration, and the header names of the internal and dead-letter
//! records.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};

use crate::config::KafkaConfig;

/// Header: the raw topic a record came from.
pub const SOURCE_TOPIC: &str = "wafunnel.source.topic";
/// Header: its partition.
pub const SOURCE_PARTITION: &str = "wafunnel.source.partition";
/// Header: its offset.
pub const SOURCE_OFFSET: &str = "wafunnel.source.offset";
/// Dead-letter header: the machine-readable reason.
pub const REASON: &str = "wafunnel.reason";
/// Dead-letter header: the human-readable detail.
pub const DETAIL: &str = "wafunnel.detail";

/// Forwards librdkafka's log lines to `tracing` (by default they would be lost).
#[derive(Clone, Copy, Debug, Default)]
pub struct LogContext;

impl ClientContext for LogContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
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
        // Reaching the end of a partition is news, not an error.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        tracing::warn!(error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for LogContext {}

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

/// A client configuration with the bootstrap servers and the passthrough properties.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &cfg.bootstrap);
    for (key, value) in &cfg.properties {
        config.set(key, value);
    }
    config.set_log_level(RDKafkaLogLevel::Warning);
    config
}

/// Creates topics that do not exist yet (`name`, partitions); existing ones are left alone.
pub async fn create_topics(cfg: &KafkaConfig, topics: &[(&str, i32)]) -> Result<(), KafkaError> {
    create(cfg, topics, &[]).await
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

/// Settings of the internal topic: it is the source of truth a partition is
/// replayed from when no snapshot can be used, so it keeps everything.
const INTERNAL_TOPIC_SETTINGS: &[(&str, &str)] = &[("retention.ms", "-1")];

/// Creates the internal topic, with unlimited retention, if it does not exist yet.
pub async fn create_internal_topic(
    cfg: &KafkaConfig,
    name: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    create(cfg, &[(name, partitions)], INTERNAL_TOPIC_SETTINGS).await
}

/// Creates the compacted state topic if it does not exist yet.
pub async fn create_state_topic(
    cfg: &KafkaConfig,
    name: &str,
    partitions: i32,
) -> Result<(), KafkaError> {
    create(cfg, &[(name, partitions)], STATE_TOPIC_SETTINGS).await
}

async fn create(
    cfg: &KafkaConfig,
    topics: &[(&str, i32)],
    settings: &[(&str, &str)],
) -> Result<(), KafkaError> {
    let admin: AdminClient<LogContext> = client_config(cfg).create_with_context(LogContext)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            settings.iter().fold(
                NewTopic::new(name, *partitions, TopicReplication::Fixed(1)),
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
    let admin: AdminClient<LogContext> = client_config(cfg).create_with_context(LogContext)?;
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

/// Partition counts of the topics the broker knows.
pub fn topic_partitions(
    cfg: &KafkaConfig,
    timeout: Duration,
) -> Result<HashMap<String, i32>, KafkaError> {
    let consumer: BaseConsumer<LogContext> = client_config(cfg).create_with_context(LogContext)?;
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
