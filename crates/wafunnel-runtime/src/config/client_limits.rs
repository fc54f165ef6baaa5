//! What one client's ClickHouse user may use, so that no client can slow
//! the pipeline or another client down.
//!
//! Contract: `[client_limits]` sets every client's limits, and
//! `[clients.<name>.limits]` (same keys) overrides some for one client;
//! a key set in neither takes the built-in default below. Each is also
//! an environment variable (`WAFUNNEL__CLIENT_LIMITS__MAX_EXECUTION_TIME`,
//! `WAFUNNEL__CLIENTS__ACME__LIMITS__QUOTA_QUERIES`). `0` means no limit,
//! as in ClickHouse. `wafunnel grants` applies them (see the stream crate's
//! `grants::limits`).

use serde::Deserialize;

use super::{lenient_option, parse_duration_ms, ConfigError};

/// The limits as configured: every key optional, for `[client_limits]`
/// and for one client's override.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientLimitsConfig {
    /// Longest a query may run before it is stopped with an error
    /// (`60s`; whole seconds).
    #[serde(default, deserialize_with = "lenient_option")]
    pub max_execution_time: Option<String>,
    /// Queries of the client that may run at once; one more is refused.
    pub max_concurrent_queries: Option<u64>,
    /// Memory one query may use, in bytes.
    pub max_memory_usage: Option<u64>,
    /// Memory all the client's queries together may use, in bytes.
    pub max_memory_usage_for_user: Option<u64>,
    /// Rows one query may read from the tables.
    pub max_rows_to_read: Option<u64>,
    /// ClickHouse 24.2 and later: a query of the client is refused while
    /// the server runs this many queries or more (of anyone), which keeps
    /// the rest of the server's `max_concurrent_queries` for the pipeline.
    pub max_server_queries: Option<u64>,
    /// The quota's interval (`1h`; whole seconds): the `quota_*` limits
    /// are per interval.
    #[serde(default, deserialize_with = "lenient_option")]
    pub quota_interval: Option<String>,
    /// Queries per interval.
    pub quota_queries: Option<u64>,
    /// Failed queries per interval.
    pub quota_errors: Option<u64>,
    /// Rows returned per interval.
    pub quota_result_rows: Option<u64>,
    /// Rows read from the tables per interval.
    pub quota_read_rows: Option<u64>,
    /// Time spent running the client's queries per interval (`1h`).
    #[serde(default, deserialize_with = "lenient_option")]
    pub quota_execution_time: Option<String>,
}

/// One client's limits, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// See [`ClientLimitsConfig::max_execution_time`].
    pub max_execution_time_s: u64,
    /// See [`ClientLimitsConfig::max_concurrent_queries`].
    pub max_concurrent_queries: u64,
    /// See [`ClientLimitsConfig::max_memory_usage`].
    pub max_memory_usage: u64,
    /// See [`ClientLimitsConfig::max_memory_usage_for_user`].
    pub max_memory_usage_for_user: u64,
    /// See [`ClientLimitsConfig::max_rows_to_read`].
    pub max_rows_to_read: u64,
    /// See [`ClientLimitsConfig::max_server_queries`].
    pub max_server_queries: u64,
    /// See [`ClientLimitsConfig::quota_interval`].
    pub quota_interval_s: u64,
    /// See [`ClientLimitsConfig::quota_queries`].
    pub quota_queries: u64,
    /// See [`ClientLimitsConfig::quota_errors`].
    pub quota_errors: u64,
    /// See [`ClientLimitsConfig::quota_result_rows`].
    pub quota_result_rows: u64,
    /// See [`ClientLimitsConfig::quota_read_rows`].
    pub quota_read_rows: u64,
    /// See [`ClientLimitsConfig::quota_execution_time`].
    pub quota_execution_time_s: u64,
}

impl Default for ClientLimits {
    /// Generous for a BI tool (a dashboard of a few dozen panels refreshed
    /// every minute uses a tenth of the quota), small beside a server.
    fn default() -> Self {
        ClientLimits {
            max_execution_time_s: 60,
            max_concurrent_queries: 4,
            max_memory_usage: 2_000_000_000,
            max_memory_usage_for_user: 4_000_000_000,
            max_rows_to_read: 1_000_000_000,
            max_server_queries: 80,
            quota_interval_s: 3600,
            quota_queries: 3600,
            quota_errors: 600,
            quota_result_rows: 100_000_000,
            quota_read_rows: 100_000_000_000,
            quota_execution_time_s: 3600,
        }
    }
}

/// Whole seconds of a duration setting; `0` (no limit) is accepted.
fn seconds(setting: &str, text: &str) -> Result<u64, ConfigError> {
    if text.trim() == "0" {
        return Ok(0);
    }
    match parse_duration_ms(text) {
        Some(ms) if ms % 1000 == 0 => Ok((ms / 1000) as u64),
        _ => Err(ConfigError::Invalid {
            setting: setting.into(),
            detail: format!("`{text}` is not a duration in whole seconds like 30s, 5m, 1h (or 0)"),
        }),
    }
}

impl ClientLimitsConfig {
    /// The limits of a client whose own override is `own` (named by
    /// `prefix`, for errors), over these, over the defaults.
    pub(super) fn resolve(
        &self,
        own: &ClientLimitsConfig,
        prefix: &str,
    ) -> Result<ClientLimits, ConfigError> {
        let d = ClientLimits::default();
        let pick =
            |own: Option<u64>, all: Option<u64>, default: u64| own.or(all).unwrap_or(default);
        let duration = |key: &str,
                        own: &Option<String>,
                        all: &Option<String>,
                        default: u64|
         -> Result<u64, ConfigError> {
            match (own, all) {
                (Some(text), _) => seconds(&format!("{prefix}.{key}"), text),
                (None, Some(text)) => seconds(&format!("client_limits.{key}"), text),
                (None, None) => Ok(default),
            }
        };
        let limits = ClientLimits {
            max_execution_time_s: duration(
                "max_execution_time",
                &own.max_execution_time,
                &self.max_execution_time,
                d.max_execution_time_s,
            )?,
            max_concurrent_queries: pick(
                own.max_concurrent_queries,
                self.max_concurrent_queries,
                d.max_concurrent_queries,
            ),
            max_memory_usage: pick(
                own.max_memory_usage,
                self.max_memory_usage,
                d.max_memory_usage,
            ),
            max_memory_usage_for_user: pick(
                own.max_memory_usage_for_user,
                self.max_memory_usage_for_user,
                d.max_memory_usage_for_user,
            ),
            max_rows_to_read: pick(
                own.max_rows_to_read,
                self.max_rows_to_read,
                d.max_rows_to_read,
            ),
            max_server_queries: pick(
                own.max_server_queries,
                self.max_server_queries,
                d.max_server_queries,
            ),
            quota_interval_s: duration(
                "quota_interval",
                &own.quota_interval,
                &self.quota_interval,
                d.quota_interval_s,
            )?,
            quota_queries: pick(own.quota_queries, self.quota_queries, d.quota_queries),
            quota_errors: pick(own.quota_errors, self.quota_errors, d.quota_errors),
            quota_result_rows: pick(
                own.quota_result_rows,
                self.quota_result_rows,
                d.quota_result_rows,
            ),
            quota_read_rows: pick(own.quota_read_rows, self.quota_read_rows, d.quota_read_rows),
            quota_execution_time_s: duration(
                "quota_execution_time",
                &own.quota_execution_time,
                &self.quota_execution_time,
                d.quota_execution_time_s,
            )?,
        };
        if limits.quota_interval_s == 0 {
            let setting = if own.quota_interval.is_some() {
                format!("{prefix}.quota_interval")
            } else {
                "client_limits.quota_interval".into()
            };
            return Err(ConfigError::Invalid {
                setting,
                detail: "a quota needs an interval of at least 1s".into(),
            });
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
user_hash_key = "0123456789abcdef-test"
[kafka]
bootstrap = "127.0.0.1:9092"
[topics]
raw = [{ name = "raw-json" }]
[clickhouse]
url = "http://127.0.0.1:8123"
[clients.acme]
accounts = ["act_1"]
[clients.beta]
accounts = ["act_2"]
"#;

    #[allow(clippy::result_large_err)] // figment's Jail decides the closure's type
    fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, String> {
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
    fn every_client_has_the_defaults_without_a_setting() {
        let cfg = load(BASE, &[]).expect("valid");
        for name in ["acme", "beta", "not_configured"] {
            assert_eq!(cfg.limits_of(name).unwrap(), ClientLimits::default());
        }
        let d = ClientLimits::default();
        assert!(d.max_execution_time_s > 0 && d.max_concurrent_queries > 0);
        assert!(d.max_memory_usage > 0 && d.max_rows_to_read > 0);
        assert!(d.quota_queries > 0 && d.quota_errors > 0 && d.quota_read_rows > 0);
    }

    #[test]
    fn a_clients_own_limit_wins_over_the_sections_from_file_or_environment() {
        let text = format!(
            "{BASE}[client_limits]\nmax_execution_time = \"30s\"\nquota_queries = 100\n[clients.acme.limits]\nquota_queries = 5\nquota_interval = \"1m\"\n"
        );
        let cfg = load(
            &text,
            &[
                ("WAFUNNEL__CLIENT_LIMITS__MAX_CONCURRENT_QUERIES", "2"),
                ("WAFUNNEL__CLIENTS__BETA__LIMITS__MAX_EXECUTION_TIME", "2m"),
                ("WAFUNNEL__CLIENTS__BETA__LIMITS__QUOTA_EXECUTION_TIME", "0"),
            ],
        )
        .expect("valid");
        let acme = cfg.limits_of("acme").unwrap();
        assert_eq!(
            (
                acme.max_execution_time_s,
                acme.quota_queries,
                acme.quota_interval_s
            ),
            (30, 5, 60)
        );
        assert_eq!(acme.max_concurrent_queries, 2);
        let beta = cfg.limits_of("beta").unwrap();
        assert_eq!(
            (
                beta.max_execution_time_s,
                beta.quota_queries,
                beta.quota_execution_time_s
            ),
            (120, 100, 0)
        );
        assert_eq!(
            beta.max_rows_to_read,
            ClientLimits::default().max_rows_to_read
        );
    }

    #[test]
    fn a_wrong_limit_names_its_setting() {
        for (extra, setting) in [
            (
                "[client_limits]\nmax_execution_time = \"500ms\"",
                "client_limits.max_execution_time",
            ),
            (
                "[clients.acme.limits]\nquota_interval = \"0\"",
                "clients.acme.limits.quota_interval",
            ),
            (
                "[clients.acme.limits]\nquota_execution_time = \"soon\"",
                "clients.acme.limits.quota_execution_time",
            ),
            (
                "[client_limits]\nmax_concurrent_queries = -1",
                "client_limits.max_concurrent_queries",
            ),
            (
                "[client_limits]\nmax_queries = 1",
                "client_limits.max_queries",
            ),
        ] {
            let err = load(&format!("{BASE}{extra}\n"), &[]).expect_err(setting);
            assert!(err.contains(setting), "{setting}: {err}");
        }
    }
}
