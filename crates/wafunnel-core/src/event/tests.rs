use super::*;
use crate::config::AccountSettings;

const NOW: i64 = 1_780_000_000_000;

fn accounts() -> Accounts {
    let mut accounts = Accounts::default();
    accounts.listed.insert(
        "act_br".into(),
        AccountSettings {
            currency: Currency::parse("BRL").expect("code"),
            time_zone: chrono_tz::America::Sao_Paulo,
        },
    );
    accounts
}

fn parse(line: &str) -> Result<Event, Rejection> {
    parse_json_event(line.as_bytes(), &accounts(), &UserHasher::new(b"k"), NOW)
}

#[test]
fn decodes_every_example_of_the_contract() {
    let lines = [
        r#"{"event_id":"c-1","type":"ad_click","account_id":"act_1","user_id":"u1","event_time":"2026-03-02T10:00:00.000Z","ad_id":"ad_1","adset_id":"as_1","campaign_id":"cmp_1","click_id":"ARAkx"}"#,
        r#"{"event_id":"wamid.1","type":"message_in","account_id":"act_1","user_id":"u1","event_time":1772445660000,"referral_ad_id":"ad_1","click_id":"ARAkx"}"#,
        r#"{"event_id":"wamid.2","type":"message_out","account_id":"act_1","user_id":"u1","event_time":"2026-03-02T10:03:00Z"}"#,
        r#"{"event_id":"p-9","type":"purchase","account_id":"act_1","user_id":"u1","event_time":"2026-03-03T18:00:00Z","value":"49.90","currency":"USD","order_id":"o-9"}"#,
        r#"{"event_id":"s-1","type":"ad_spend","account_id":"act_1","event_time":"2026-03-03T01:00:00Z","ad_id":"ad_1","adset_id":"as_1","campaign_id":"cmp_1","date":"2026-03-02","spend":"120.50","currency":"USD","impressions":10000,"clicks":150,"reported_conversations":127}"#,
    ];
    let events: Vec<Event> = lines.iter().map(|l| parse(l).expect(l)).collect();
    assert_eq!(events[0].time, 1_772_445_600_000);
    assert_eq!(events[1].time, 1_772_445_660_000);
    let hasher = UserHasher::new(b"k");
    assert_eq!(
        events[2].body,
        Body::MessageOut {
            user: hasher.hash("u1"),
            automated: false,
            template: false,
            billable: None,
        }
    );
    match &events[3].body {
        Body::Purchase {
            value, order_id, ..
        } => {
            assert_eq!(*value, Money(499_000));
            assert_eq!(order_id.as_deref(), Some("o-9"));
        }
        other => panic!("not a purchase: {other:?}"),
    }
    match &events[4].body {
        Body::AdSpend {
            spend,
            date,
            reported_conversations,
            impressions,
            clicks,
            ..
        } => {
            assert_eq!(*spend, Money(1_205_000));
            assert_eq!(date.to_string(), "2026-03-02");
            assert_eq!(
                (*impressions, *clicks, *reported_conversations),
                (10_000, 150, 127)
            );
        }
        other => panic!("not spend: {other:?}"),
    }
    assert!(events
        .iter()
        .all(|e| !serde_json::to_string(e).expect("json").contains("\"u1\"")));
}

#[test]
fn unknown_fields_are_ignored_and_null_means_absent() {
    let event = parse(
        r#"{"event_id":"m","type":"message_in","account_id":"a","user_id":"u","event_time":1772445660000,"referral_ad_id":null,"extra":{"nested":[1,2]}}"#,
    )
    .expect("valid");
    assert!(matches!(
        event.body,
        Body::MessageIn {
            referral_ad_id: None,
            ..
        }
    ));
}

#[test]
fn escaped_strings_decode() {
    let event =
        parse(r#"{"event_id":"m\u0031","type":"lead","account_id":"a","user_id":"u","event_time":1772445660000}"#)
            .expect("valid");
    assert_eq!(event.event_id, "m1");
}

fn reason(line: &str) -> (String, Option<&'static str>) {
    let rejection = parse(line).expect_err(line);
    (rejection.code().to_owned(), rejection.field())
}

#[test]
fn rejections_name_the_reason_and_field() {
    let base = r#""event_id":"e","account_id":"a","user_id":"u","event_time":1772445660000"#;
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        (r#"{"event_id":"e","type":"ad_click""#.into(), "malformed", None),
        ("[1,2]".into(), "malformed", None),
        (format!(r#"{{{base},"type":"ad_click","ad_id":"x"}} trailing"#), "malformed", None),
        (format!(r#"{{{base},"type":"ad_click"}}"#), "missing_field", Some("ad_id")),
        (format!(r#"{{{base},"type":"ad_click","ad_id":7}}"#), "invalid_field", Some("ad_id")),
        (format!(r#"{{{base},"type":"message_out","automated":"yes"}}"#), "invalid_field", Some("automated")),
        (format!(r#"{{{base},"type":"refund"}}"#), "unknown_type", Some("type")),
        (format!(r#"{{{base}}}"#), "missing_field", Some("type")),
        (r#"{"type":"lead","account_id":"a","user_id":"u","event_time":1772445660000}"#.into(), "missing_field", Some("event_id")),
        (r#"{"event_id":"e","type":"lead","account_id":"a","event_time":1772445660000}"#.into(), "missing_field", Some("user_id")),
        (r#"{"event_id":"","type":"lead","account_id":"a","user_id":"u","event_time":1772445660000}"#.into(), "invalid_field", Some("event_id")),
        (r#"{"event_id":"e","type":"lead","account_id":"a","user_id":"u","event_time":"yesterday"}"#.into(), "invalid_field", Some("event_time")),
        (r#"{"event_id":"e","type":"lead","account_id":"a","user_id":"u","event_time":1.5}"#.into(), "invalid_field", Some("event_time")),
        (r#"{"event_id":"e","type":"lead","account_id":"a","user_id":"u","event_time":1262303999999}"#.into(), "timestamp_before_2010", Some("event_time")),
        (format!(r#"{{"event_id":"e","type":"lead","account_id":"a","user_id":"u","event_time":{}}}"#, NOW + 3_600_001), "future_timestamp", Some("event_time")),
        (format!(r#"{{{base},"type":"purchase","value":"10.00001","currency":"USD"}}"#), "invalid_field", Some("value")),
        (format!(r#"{{{base},"type":"purchase","value":"10","currency":"EUR"}}"#), "currency_mismatch", Some("currency")),
        (format!(r#"{{{base},"type":"purchase","value":"10"}}"#), "missing_field", Some("currency")),
        (format!(r#"{{{base},"type":"purchase","currency":"USD"}}"#), "missing_field", Some("value")),
        (r#"{"event_id":"e","type":"ad_spend","account_id":"act_br","event_time":1772445660000,"ad_id":"x","date":"2026-03-02","spend":"1","currency":"USD"}"#.into(), "currency_mismatch", Some("currency")),
        (r#"{"event_id":"e","type":"ad_spend","account_id":"a","event_time":1772445660000,"ad_id":"x","date":"02/03/2026","spend":"1","currency":"USD"}"#.into(), "invalid_field", Some("date")),
        (r#"{"event_id":"e","type":"ad_spend","account_id":"a","event_time":1772445660000,"ad_id":"x","date":"2026-03-02","spend":"1","currency":"USD","impressions":-1}"#.into(), "invalid_field", Some("impressions")),
    ];
    for (line, code, field) in cases {
        assert_eq!(reason(&line), (code.to_owned(), field), "{line}");
    }
}

#[test]
fn the_future_and_2010_limits_are_inclusive() {
    let at = |t: i64| {
        format!(
            r#"{{"event_id":"e","type":"lead","account_id":"a","user_id":"u","event_time":{t}}}"#
        )
    };
    assert!(parse(&at(NOW + 3_600_000)).is_ok());
    assert!(parse(&at(MIN_EVENT_TIME_MS)).is_ok());
}

#[test]
fn spend_in_the_account_currency_is_accepted() {
    let event = parse(r#"{"event_id":"e","type":"ad_spend","account_id":"act_br","event_time":1772445660000,"ad_id":"x","date":"2026-03-02","spend":"1","currency":"BRL"}"#).expect("valid");
    assert!(matches!(
        event.body,
        Body::AdSpend {
            impressions: 0,
            reported_conversations: 0,
            ..
        }
    ));
}

#[test]
fn validated_events_round_trip_through_their_internal_json() {
    let event = parse(r#"{"event_id":"p","type":"purchase","account_id":"a","user_id":"u","event_time":1772445660000,"value":"49.90","currency":"USD","ad_id":"ad_1"}"#).expect("valid");
    let json = serde_json::to_string(&event).expect("encode");
    let back: Event = serde_json::from_str(&json).expect("decode");
    assert_eq!(back, event);
}

#[test]
fn a_repeated_field_is_a_dead_letter_not_its_last_value() {
    let line = r#"{"event_id":"x","type":"ad_click","type":"purchase","account_id":"act_1","user_id":"u1","event_time":1772445660000,"ad_id":"a","value":"1","currency":"USD","order_id":"o"}"#;
    let err = parse(line).expect_err("duplicate");
    assert_eq!(err, Rejection::DuplicateField("type"));
    assert_eq!(err.code(), "duplicate_field");
    let twice_time = r#"{"event_id":"x","type":"ad_click","account_id":"act_1","user_id":"u1","event_time":1772445660000,"event_time":1,"ad_id":"a"}"#;
    assert_eq!(
        parse(twice_time),
        Err(Rejection::DuplicateField("event_time"))
    );
    // Unknown fields may repeat: they are ignored.
    let unknown = r#"{"event_id":"x","type":"ad_click","account_id":"act_1","user_id":"u1","event_time":1772445660000,"ad_id":"a","extra":1,"extra":2}"#;
    assert!(parse(unknown).is_ok());
}

#[test]
fn money_is_bounded_where_sums_stay_exact() {
    let purchase = |value: &str| {
        format!(
            r#"{{"event_id":"p","type":"purchase","account_id":"act_1","user_id":"u1","event_time":1772445660000,"value":"{value}","currency":"USD","order_id":"o"}}"#
        )
    };
    assert!(
        parse(&purchase("1000000000.0000")).is_ok(),
        "the largest value is accepted"
    );
    for too_big in ["1000000000.0001", "99999999999999.9999"] {
        let err = parse(&purchase(too_big)).expect_err(too_big);
        assert_eq!(err.code(), "out_of_range", "{too_big}");
        assert_eq!(err.field(), Some("value"));
    }
    // Ten of the largest in one conversation: no wrap-around.
    let mut total = Money::default();
    for _ in 0..10 {
        total += MAX_MONEY;
    }
    assert_eq!(total.to_string(), "10000000000.0000");
}

#[test]
fn spend_dates_are_within_what_clickhouse_stores() {
    let spend = |date: &str| {
        format!(
            r#"{{"event_id":"s","type":"ad_spend","account_id":"act_1","event_time":1772445660000,"ad_id":"a","date":"{date}","spend":"1","currency":"USD"}}"#
        )
    };
    assert!(parse(&spend("2010-01-01")).is_ok());
    assert!(parse(&spend("2105-12-31")).is_ok());
    for outside in ["2009-12-31", "2106-01-01", "1969-07-20", "9999-12-31"] {
        let err = parse(&spend(outside)).expect_err(outside);
        assert_eq!(
            (err.code(), err.field()),
            ("out_of_range", Some("date")),
            "{outside}"
        );
    }
}

#[test]
fn partition_keys_stay_what_earlier_records_were_keyed_by() {
    // A contact's new events must land on the partition of its old ones.
    let click = parse(
        r#"{"event_id":"c","type":"ad_click","account_id":"act_1","user_id":"u1","event_time":1772445660000,"ad_id":"ad_1"}"#,
    )
    .expect("valid");
    let user = click.user().expect("a contact").0;
    assert_eq!(
        click.partition_key(),
        format!("act_1\u{1f}user\u{1f}{user}")
    );
    let spend = parse(
        r#"{"event_id":"s","type":"ad_spend","account_id":"act_1","event_time":1772445660000,"ad_id":"ad_7","date":"2026-03-02","spend":"1","currency":"USD"}"#,
    )
    .expect("valid");
    assert_eq!(spend.partition_key(), "act_1\u{1f}ad\u{1f}ad_7");
    let mut reused = String::from("left over");
    reused.clear();
    spend.write_partition_key(&mut reused);
    click.write_partition_key(&mut reused);
    assert_eq!(
        reused,
        spend.partition_key() + &click.partition_key(),
        "appends"
    );
}
