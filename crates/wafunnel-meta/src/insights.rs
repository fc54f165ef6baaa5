//! Marketing API insights rows (docs/SEMANTICS.md section 6.2): one row of
//! the insights edge at ad level with `time_increment=1` is one `ad_spend`
//! snapshot.
//!
//! - `account_id` gets the `act_` prefix it lacks in insights rows;
//! - `date` is `date_start`; a row spanning more than one day is rejected;
//! - `spend`, `impressions` and `clicks` come as decimal strings;
//! - `reported_conversations` sums the `value`s of the `actions` of type
//!   `onsite_conversion.messaging_conversation_started_7d` (0 without one);
//! - `currency` is `account_currency` when present (validation rejects one
//!   that differs from the account's), else the account's;
//! - `event_time` is `fetched_at` (RFC 3339) when present, else the time the
//!   caller gives (the Kafka record's timestamp), else the row is rejected;
//! - `event_id` is derived from (`ad_id`, `date`, `event_time`): a later
//!   fetch of the same day is a newer snapshot and wins, a replayed record
//!   is a duplicate.

use std::borrow::Cow;

use serde_json::Value;
use wafunnel_core::config::Accounts;
use wafunnel_core::event::{RawEvent, RawTime, Rejection};
use wafunnel_core::time::parse_rfc3339_ms;

/// The `action_type` of Meta's "messaging conversations started" figure.
pub const CONVERSATIONS_STARTED: &str = "onsite_conversion.messaging_conversation_started_7d";

fn invalid(field: &'static str, detail: impl Into<String>) -> Rejection {
    Rejection::InvalidField {
        field,
        detail: detail.into(),
    }
}

/// A field Meta sends as a string (sometimes as a number).
fn field<'v>(
    row: &'v serde_json::Map<String, Value>,
    name: &'static str,
) -> Result<Option<Cow<'v, str>>, Rejection> {
    match row.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(Cow::Borrowed(s))),
        Some(Value::Number(n)) => Ok(Some(Cow::Owned(n.to_string()))),
        Some(_) => Err(invalid(name, "not a string")),
    }
}

/// A count Meta sends as a decimal string; absent is 0.
fn count(row: &serde_json::Map<String, Value>, name: &'static str) -> Result<u64, Rejection> {
    match field(row, name)? {
        None => Ok(0),
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| invalid(name, format!("`{text}` is not a whole number"))),
    }
}

/// The `ad_spend` raw event of one insights row. `record_time_ms` is the
/// fetch time to use when the row has no `fetched_at` (the Kafka record's
/// timestamp; none offline).
pub fn insights_row(
    row: &[u8],
    record_time_ms: Option<i64>,
    accounts: &Accounts,
) -> Result<RawEvent<'static>, Rejection> {
    let value: Value = serde_json::from_slice(row).map_err(|e| Rejection::Malformed {
        detail: format!("not JSON: {e}"),
    })?;
    let row = value.as_object().ok_or_else(|| Rejection::Malformed {
        detail: "not a JSON object".into(),
    })?;
    let account = field(row, "account_id")?.ok_or(Rejection::MissingField("account_id"))?;
    let account_id = if account.starts_with("act_") {
        account.into_owned()
    } else {
        format!("act_{account}")
    };
    let ad_id = field(row, "ad_id")?.ok_or(Rejection::MissingField("ad_id"))?;
    let date = field(row, "date_start")?.ok_or(Rejection::MissingField("date_start"))?;
    if let Some(stop) = field(row, "date_stop")? {
        if stop != date {
            return Err(invalid(
                "date_stop",
                format!("`{stop}` differs from date_start `{date}`: fetch with time_increment=1"),
            ));
        }
    }
    let spend = field(row, "spend")?.ok_or(Rejection::MissingField("spend"))?;
    let event_time = match field(row, "fetched_at")? {
        Some(text) => {
            parse_rfc3339_ms(&text).ok_or_else(|| invalid("fetched_at", "not RFC 3339"))?
        }
        None => record_time_ms.ok_or(Rejection::MissingFetchedAt)?,
    };
    let mut conversations = 0u64;
    match row.get("actions") {
        None | Some(Value::Null) => {}
        Some(Value::Array(actions)) => {
            for action in actions {
                if action.get("action_type").and_then(Value::as_str) != Some(CONVERSATIONS_STARTED)
                {
                    continue;
                }
                let value = match action.get("value") {
                    Some(Value::String(s)) => s.parse::<u64>().ok(),
                    Some(Value::Number(n)) => n.as_u64(),
                    _ => None,
                }
                .ok_or_else(|| {
                    invalid(
                        "actions",
                        "a conversations-started value is not a whole number",
                    )
                })?;
                conversations = conversations
                    .checked_add(value)
                    .ok_or_else(|| invalid("actions", "conversations started overflow"))?;
            }
        }
        Some(_) => return Err(invalid("actions", "not a list")),
    }
    let impressions = count(row, "impressions")?;
    let clicks = count(row, "clicks")?;
    let event_id = format!("insights:{ad_id}:{date}:{event_time}");
    let currency = match field(row, "account_currency")? {
        Some(c) => c.into_owned(),
        None => accounts.get(&account_id).currency.as_str().to_owned(),
    };
    Ok(RawEvent {
        event_id: Some(Cow::Owned(event_id)),
        event_type: Some(Cow::Borrowed("ad_spend")),
        account_id: Some(Cow::Owned(account_id)),
        event_time: Some(RawTime::Millis(event_time)),
        ad_id: Some(Cow::Owned(ad_id.into_owned())),
        adset_id: field(row, "adset_id")?.map(|s| Cow::Owned(s.into_owned())),
        campaign_id: field(row, "campaign_id")?.map(|s| Cow::Owned(s.into_owned())),
        date: Some(Cow::Owned(date.into_owned())),
        spend: Some(Cow::Owned(spend.into_owned())),
        currency: Some(Cow::Owned(currency)),
        impressions: Some(impressions),
        clicks: Some(clicks),
        reported_conversations: Some(conversations),
        ..RawEvent::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROW: &str = r#"{"account_id":"1001","campaign_id":"c1","adset_id":"as1","ad_id":"ad1","date_start":"2026-03-02","date_stop":"2026-03-02","spend":"120.50","impressions":"10000","clicks":"150","actions":[{"action_type":"link_click","value":"150"},{"action_type":"onsite_conversion.messaging_conversation_started_7d","value":"100"},{"action_type":"onsite_conversion.messaging_conversation_started_7d","value":"27"}],"fetched_at":"2026-03-03T01:00:00Z"}"#;

    #[test]
    fn a_row_is_a_spend_snapshot() {
        let event = insights_row(ROW.as_bytes(), None, &Accounts::default()).expect("valid");
        assert_eq!(event.account_id.as_deref(), Some("act_1001"));
        assert_eq!(event.date.as_deref(), Some("2026-03-02"));
        assert_eq!(event.spend.as_deref(), Some("120.50"));
        assert_eq!((event.impressions, event.clicks), (Some(10_000), Some(150)));
        assert_eq!(
            event.reported_conversations,
            Some(127),
            "breakdowns are summed"
        );
        assert_eq!(event.currency.as_deref(), Some("USD"), "the account's");
        assert_eq!(event.event_time, Some(RawTime::Millis(1_772_499_600_000)));
        assert_eq!(
            event.event_id.as_deref(),
            Some("insights:ad1:2026-03-02:1772499600000")
        );
    }

    #[test]
    fn fetch_time_decides_identity() {
        let without = ROW.replace(r#","fetched_at":"2026-03-03T01:00:00Z""#, "");
        let offline = insights_row(without.as_bytes(), None, &Accounts::default());
        assert_eq!(offline.expect_err("no time").code(), "missing_fetched_at");
        let first = insights_row(without.as_bytes(), Some(1_000), &Accounts::default())
            .expect("kafka time");
        let again =
            insights_row(without.as_bytes(), Some(1_000), &Accounts::default()).expect("replay");
        let later =
            insights_row(without.as_bytes(), Some(2_000), &Accounts::default()).expect("refetch");
        assert_eq!(
            first.event_id, again.event_id,
            "a replayed record is a duplicate"
        );
        assert_ne!(
            first.event_id, later.event_id,
            "a refetch is a newer snapshot"
        );
    }

    #[test]
    fn bad_rows_have_precise_reasons() {
        let cases = [
            (
                ROW.replace(r#""date_stop":"2026-03-02""#, r#""date_stop":"2026-03-08""#),
                "invalid_field",
                "date_stop",
            ),
            (
                ROW.replace(r#""spend":"120.50""#, r#""spend":"lots""#),
                "ok-then-validation",
                "spend",
            ),
            (
                ROW.replace(r#""ad_id":"ad1","#, ""),
                "missing_field",
                "ad_id",
            ),
            (
                ROW.replace(r#""impressions":"10000""#, r#""impressions":"1e4""#),
                "invalid_field",
                "impressions",
            ),
            ("[]".to_owned(), "malformed", ""),
        ];
        for (row, code, field) in cases {
            match insights_row(row.as_bytes(), None, &Accounts::default()) {
                Ok(event) => {
                    assert_eq!(code, "ok-then-validation", "{row}");
                    // Validation names the spend.
                    let err = event
                        .validate(
                            &Accounts::default(),
                            &wafunnel_core::config::UserHasher::new(b"k"),
                            1_800_000_000_000,
                        )
                        .expect_err("invalid spend");
                    assert_eq!(err.field(), Some(field));
                }
                Err(e) => {
                    assert_eq!(e.code(), code, "{row}");
                    if !field.is_empty() {
                        assert_eq!(e.field(), Some(field), "{row}");
                    }
                }
            }
        }
        let other_currency = ROW.replace(
            r#""spend":"120.50""#,
            r#""spend":"120.50","account_currency":"BRL""#,
        );
        let event =
            insights_row(other_currency.as_bytes(), None, &Accounts::default()).expect("decoded");
        let err = event
            .validate(
                &Accounts::default(),
                &wafunnel_core::config::UserHasher::new(b"k"),
                1_800_000_000_000,
            )
            .expect_err("currency");
        assert_eq!(err.code(), "currency_mismatch");
    }
}
