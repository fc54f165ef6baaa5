//! The limits of a client's user, as `wafunnel grants` gives them: what one
//! client may use of the server, so that it cannot refuse the pipeline's
//! writes or slow the other clients down.
//!
//! Contract: each client has its own settings profile and its own quota,
//! both named like its user, holding its [`ClientLimits`]:
//! - **Before 24.2** (users file): a profile that inherits the clients'
//!   common profile (`readonly`, ...) and adds `max_execution_time`,
//!   `max_concurrent_queries_for_user`, `max_memory_usage`,
//!   `max_memory_usage_for_user` and `max_rows_to_read` (with the `throw`
//!   overflow modes), and a quota of one interval. 18.16 has no settings
//!   constraints: the limits hold because the common profile is
//!   `readonly = 1`, which forbids every `SET`. Neither HTTP nor the
//!   native protocol cancels a query whose client went away: it stops at
//!   `max_execution_time` at the latest.
//! - **24.2 and later** (SQL): `CREATE SETTINGS PROFILE OR REPLACE` with
//!   the same settings, each `CONST` (so no setting form can change them,
//!   whatever `readonly`), plus `max_concurrent_queries_for_all_users`
//!   (headroom on the server for the pipeline) and
//!   `cancel_http_readonly_queries_on_client_close = 1` (a query stops when
//!   its client goes away), and `CREATE QUOTA OR REPLACE`, both `TO` the
//!   user. `tests/chdb/test_limits_sql.py` runs them on current ClickHouse.
//!
//! `0` is "no limit" everywhere, as in ClickHouse.

use wafunnel_runtime::config::ClientLimits;

use super::ident;

/// The settings of a client's profile, as (name, value) in ClickHouse's
/// text form; [`sql_statements`] adds those only 24.2 and later know.
fn settings(limits: &ClientLimits) -> Vec<(&'static str, String)> {
    vec![
        (
            "max_execution_time",
            limits.max_execution_time_s.to_string(),
        ),
        ("timeout_overflow_mode", "throw".into()),
        (
            "max_concurrent_queries_for_user",
            limits.max_concurrent_queries.to_string(),
        ),
        ("max_memory_usage", limits.max_memory_usage.to_string()),
        (
            "max_memory_usage_for_user",
            limits.max_memory_usage_for_user.to_string(),
        ),
        ("max_rows_to_read", limits.max_rows_to_read.to_string()),
        ("read_overflow_mode", "throw".into()),
    ]
}

/// The quota's limits per interval, as (name, value).
fn quota(limits: &ClientLimits) -> [(&'static str, u64); 5] {
    [
        ("queries", limits.quota_queries),
        ("errors", limits.quota_errors),
        ("result_rows", limits.quota_result_rows),
        ("read_rows", limits.quota_read_rows),
        ("execution_time", limits.quota_execution_time_s),
    ]
}

/// Before 24.2: the `<profiles>` entry `name`, inheriting `parent`.
pub(super) fn users_file_profile(name: &str, parent: &str, limits: &ClientLimits) -> String {
    let mut out = format!("    <{name}>\n      <profile>{parent}</profile>\n");
    for (setting, value) in settings(limits) {
        out.push_str(&format!("      <{setting}>{value}</{setting}>\n"));
    }
    out.push_str(&format!("    </{name}>\n"));
    out
}

/// Before 24.2: the `<quotas>` entry `name`.
pub(super) fn users_file_quota(name: &str, limits: &ClientLimits) -> String {
    let mut out = format!(
        "    <{name}>\n      <interval>\n        <duration>{}</duration>\n",
        limits.quota_interval_s
    );
    for (resource, max) in quota(limits) {
        out.push_str(&format!("        <{resource}>{max}</{resource}>\n"));
    }
    out.push_str(&format!("      </interval>\n    </{name}>\n"));
    out
}

/// 24.2 and later: the profile and the quota of the existing user `user`.
pub(super) fn sql_statements(user: &str, limits: &ClientLimits) -> Vec<String> {
    let name = ident(user);
    let mut all = settings(limits);
    all.push((
        "max_concurrent_queries_for_all_users",
        limits.max_server_queries.to_string(),
    ));
    all.push(("cancel_http_readonly_queries_on_client_close", "1".into()));
    let settings: Vec<String> = all
        .iter()
        .map(|(setting, value)| match value.parse::<u64>() {
            Ok(_) => format!("{setting} = {value} CONST"),
            Err(_) => format!("{setting} = '{value}' CONST"),
        })
        .collect();
    // In SQL a limit of 0 would allow nothing: a resource without a
    // limit is left out, and a quota without any only tracks.
    let maxima: Vec<String> = quota(limits)
        .iter()
        .filter(|(_, max)| *max > 0)
        .map(|(resource, max)| format!("{resource} = {max}"))
        .collect();
    let limits_clause = if maxima.is_empty() {
        "TRACKING ONLY".to_owned()
    } else {
        format!("MAX {}", maxima.join(", "))
    };
    vec![
        format!(
            "CREATE SETTINGS PROFILE OR REPLACE {name} SETTINGS {} TO {name}",
            settings.join(", ")
        ),
        format!(
            "CREATE QUOTA OR REPLACE {name} FOR INTERVAL {} second {limits_clause} TO {name}",
            limits.quota_interval_s
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ClientLimits {
        ClientLimits {
            max_execution_time_s: 5,
            max_concurrent_queries: 2,
            max_memory_usage: 100_000_000,
            max_memory_usage_for_user: 200_000_000,
            max_rows_to_read: 1_000_000,
            max_server_queries: 50,
            quota_interval_s: 60,
            quota_queries: 30,
            quota_errors: 0,
            quota_result_rows: 1000,
            quota_read_rows: 10_000_000,
            quota_execution_time_s: 120,
        }
    }

    #[test]
    fn the_users_file_entries_golden() {
        assert_eq!(
            users_file_profile("wafunnel_client_acme", "wafunnel_client", &small()),
            "    <wafunnel_client_acme>
      <profile>wafunnel_client</profile>
      <max_execution_time>5</max_execution_time>
      <timeout_overflow_mode>throw</timeout_overflow_mode>
      <max_concurrent_queries_for_user>2</max_concurrent_queries_for_user>
      <max_memory_usage>100000000</max_memory_usage>
      <max_memory_usage_for_user>200000000</max_memory_usage_for_user>
      <max_rows_to_read>1000000</max_rows_to_read>
      <read_overflow_mode>throw</read_overflow_mode>
    </wafunnel_client_acme>
"
        );
        assert_eq!(
            users_file_quota("wafunnel_client_acme", &small()),
            "    <wafunnel_client_acme>
      <interval>
        <duration>60</duration>
        <queries>30</queries>
        <errors>0</errors>
        <result_rows>1000</result_rows>
        <read_rows>10000000</read_rows>
        <execution_time>120</execution_time>
      </interval>
    </wafunnel_client_acme>
"
        );
    }

    /// `tests/chdb/test_limits_sql.py` runs the same file on current ClickHouse.
    #[test]
    fn sql_statements_golden() {
        let mut all = sql_statements("wafunnel_client_acme", &ClientLimits::default());
        all.extend(sql_statements("wafunnel_client_acme", &small()));
        let unlimited = ClientLimits {
            quota_queries: 0,
            quota_errors: 0,
            quota_result_rows: 0,
            quota_read_rows: 0,
            quota_execution_time_s: 0,
            ..small()
        };
        all.extend(sql_statements("wafunnel_client_acme", &unlimited));
        let golden = include_str!("../../../../tests/chdb/limits_statements.sql");
        assert_eq!(all, golden.lines().collect::<Vec<_>>());
    }
}
