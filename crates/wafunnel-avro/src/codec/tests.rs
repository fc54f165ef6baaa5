use apache_avro::schema_compatibility::SchemaCompatibility;
use wafunnel_core::config::{Accounts, UserHasher};
use wafunnel_core::event::{Event, EventType};

use super::*;
use crate::registry::MemoryRegistry;

const NOW: i64 = 1_780_000_000_000;

/// One line per event type: the contract's examples plus a lead, with the
/// optional fields of each type set somewhere.
const LINES: [&str; 6] = [
    r#"{"event_id":"c-1","type":"ad_click","account_id":"act_1","user_id":"u1","event_time":"2026-03-02T10:00:00.000Z","ad_id":"ad_1","adset_id":"as_1","campaign_id":"cmp_1","click_id":"ARAkx"}"#,
    r#"{"event_id":"wamid.1","type":"message_in","account_id":"act_1","user_id":"u1","event_time":1772445660000,"referral_ad_id":"ad_1","click_id":"ARAkx"}"#,
    r#"{"event_id":"wamid.2","type":"message_out","account_id":"act_1","user_id":"u1","event_time":"2026-03-02T10:03:00Z","automated":true,"template":false}"#,
    r#"{"event_id":"l-1","type":"lead","account_id":"act_1","user_id":"u1","event_time":"2026-03-02T11:00:00+01:00","ad_id":"ad_1"}"#,
    r#"{"event_id":"p-9","type":"purchase","account_id":"act_1","user_id":"u1","event_time":"2026-03-03T18:00:00Z","value":"49.90","currency":"USD","order_id":"o-9"}"#,
    r#"{"event_id":"s-1","type":"ad_spend","account_id":"act_1","event_time":"2026-03-03T01:00:00Z","ad_id":"ad_1","adset_id":"as_1","campaign_id":"cmp_1","date":"2026-03-02","spend":"120.50","currency":"USD","impressions":10000,"clicks":150,"reported_conversations":127}"#,
];

fn validate(raw: &RawEvent<'_>) -> Result<Event, Rejection> {
    raw.validate(&Accounts::default(), &UserHasher::new(b"k"), NOW)
}

/// What Avro keeps of a JSON event: the time as epoch milliseconds.
fn as_avro_sees_it(raw: &RawEvent<'_>) -> RawEvent<'static> {
    let time = match &raw.event_time {
        Some(RawTime::Text(text)) => {
            Some(RawTime::Millis(parse_rfc3339_ms(text).expect("valid time")))
        }
        Some(RawTime::Millis(ms)) => Some(RawTime::Millis(*ms)),
        None => None,
    };
    let own = |s: &Option<Cow<'_, str>>| s.as_deref().map(|s| Cow::Owned(s.to_owned()));
    RawEvent {
        event_id: own(&raw.event_id),
        event_type: own(&raw.event_type),
        account_id: own(&raw.account_id),
        event_time: time,
        user_id: own(&raw.user_id),
        ad_id: own(&raw.ad_id),
        adset_id: own(&raw.adset_id),
        campaign_id: own(&raw.campaign_id),
        click_id: own(&raw.click_id),
        referral_ad_id: own(&raw.referral_ad_id),
        automated: raw.automated,
        template: raw.template,
        billable: raw.billable,
        value: own(&raw.value),
        currency: own(&raw.currency),
        order_id: own(&raw.order_id),
        date: own(&raw.date),
        spend: own(&raw.spend),
        impressions: raw.impressions,
        clicks: raw.clicks,
        reported_conversations: raw.reported_conversations,
    }
}

fn raw(line: &str) -> RawEvent<'_> {
    decode_json(line.as_bytes()).expect(line)
}

#[test]
fn builtin_schemas_parse_and_v1_is_the_reader() {
    let codec = AvroCodec::new();
    assert_eq!(codec.reader_schema(), event_v1());
    assert_eq!(
        codec
            .writer_schema(codec.reader_fingerprint())
            .map(|s| &**s),
        Some(event_v1())
    );
    assert_eq!(
        codec
            .writer_schema(fingerprint(event_v2()).unwrap())
            .map(|s| &**s),
        Some(event_v2())
    );
    assert_ne!(
        fingerprint(event_v1()).unwrap(),
        fingerprint(event_v2()).unwrap()
    );
}

#[test]
fn every_event_type_round_trips_as_a_datum() {
    let codec = AvroCodec::new();
    let types: Vec<EventType> = LINES
        .iter()
        .map(|l| validate(&raw(l)).expect(l).event_type())
        .collect();
    assert_eq!(types, EventType::ALL);
    for line in LINES {
        let json = raw(line);
        let datum = codec.encode_datum(&json).expect(line);
        let back = codec.decode_datum(event_v1(), &datum).expect(line);
        assert_eq!(back, as_avro_sees_it(&json), "{line}");
        assert_eq!(validate(&back), validate(&json), "{line}");
        assert!(validate(&back).is_ok(), "{line}");
        assert_eq!(codec.encode_json(line.as_bytes()).unwrap(), datum);
    }
}

#[tokio::test]
async fn every_event_type_round_trips_in_both_framings() {
    let codec = AvroCodec::new();
    let registry = MemoryRegistry::default();
    registry.insert(41, event_v1().clone());
    let registry = CachingRegistry::new(registry);
    for line in LINES {
        let json = raw(line);
        let expected = as_avro_sees_it(&json);

        let single = codec.encode_single_object(&json).unwrap();
        assert_eq!(single[..2], [0xC3, 0x01]);
        assert_eq!(single[2..10], codec.reader_fingerprint().to_le_bytes());
        assert_eq!(
            codec.decode_single_object(&single).unwrap(),
            expected,
            "{line}"
        );

        let confluent = codec.encode_confluent(41, &json).unwrap();
        assert_eq!(confluent[..5], [0, 0, 0, 0, 41]);
        assert_eq!(
            codec.decode_confluent(&registry, &confluent).await.unwrap(),
            expected,
            "{line}"
        );
        assert_eq!(
            validate(&codec.decode_confluent(&registry, &confluent).await.unwrap()),
            validate(&json)
        );
    }
    assert_eq!(registry.inner().fetches(), 1);
}

#[test]
fn every_field_survives_and_absent_stays_absent() {
    let codec = AvroCodec::new();
    let full = RawEvent {
        event_id: Some("e".into()),
        event_type: Some("purchase".into()),
        account_id: Some("a".into()),
        event_time: Some(RawTime::Millis(-5)),
        user_id: Some("ü😀".into()),
        ad_id: Some("ad".into()),
        adset_id: Some("as".into()),
        campaign_id: Some("c".into()),
        click_id: Some("k".into()),
        referral_ad_id: Some("r".into()),
        automated: Some(false),
        template: Some(true),
        // Not in wafunnel's schemas.
        billable: None,
        value: Some("1.0001".into()),
        currency: Some("EUR".into()),
        order_id: Some("o".into()),
        date: Some("2026-01-01".into()),
        spend: Some("0".into()),
        impressions: Some(0),
        clicks: Some(i64::MAX as u64),
        reported_conversations: Some(3),
    };
    let back = codec
        .decode_datum(event_v1(), &codec.encode_datum(&full).unwrap())
        .unwrap();
    assert_eq!(back, full);
    let bare = RawEvent {
        event_id: Some(String::new().into()),
        event_type: Some("lead".into()),
        account_id: Some("a".into()),
        event_time: Some(RawTime::Millis(0)),
        ..RawEvent::default()
    };
    assert_eq!(
        codec
            .decode_datum(event_v1(), &codec.encode_datum(&bare).unwrap())
            .unwrap(),
        bare
    );
}

#[test]
fn unknown_type_decodes_and_is_rejected_by_validation() {
    let codec = AvroCodec::new();
    let line = r#"{"event_id":"x","type":"refund","account_id":"act_1","user_id":"u1","event_time":1772445660000}"#;
    let back = codec
        .decode_single_object(&codec.encode_single_object(&raw(line)).unwrap())
        .unwrap();
    assert_eq!(back.event_type.as_deref(), Some("refund"));
    let err = Error::from(validate(&back).unwrap_err());
    assert_eq!(err.code(), "unknown_type");
    assert_eq!(err.field(), Some("type"));
    assert!(!err.is_retryable());
}

#[test]
fn encoding_needs_what_the_schema_requires() {
    let codec = AvroCodec::new();
    let no_time = raw(r#"{"event_id":"x","type":"lead","account_id":"a","user_id":"u"}"#);
    assert_eq!(
        codec.encode_datum(&no_time).unwrap_err(),
        Error::Invalid(Rejection::MissingField("event_time"))
    );
    let no_account = raw(r#"{"event_id":"x","type":"lead","event_time":1,"user_id":"u"}"#);
    assert_eq!(
        codec.encode_datum(&no_account).unwrap_err().code(),
        "missing_field"
    );
    let bad_time =
        raw(r#"{"event_id":"x","type":"lead","account_id":"a","event_time":"yesterday"}"#);
    let err = codec.encode_datum(&bad_time).unwrap_err();
    assert_eq!(
        (err.code(), err.field()),
        ("invalid_field", Some("event_time"))
    );
    let huge = RawEvent {
        impressions: Some(u64::MAX),
        ..raw(LINES[5])
    };
    assert_eq!(
        codec.encode_datum(&huge).unwrap_err().field(),
        Some("impressions")
    );
    assert_eq!(
        codec.encode_json(b"not json").unwrap_err().code(),
        "malformed"
    );
}

/// A v2 record: `source` set, no `click_id`.
fn v2_value(raw: &RawEvent<'_>, source: &str) -> Value {
    let Value::Record(fields) = to_value(raw).unwrap() else {
        unreachable!()
    };
    let mut fields: Vec<(String, Value)> = fields
        .into_iter()
        .filter(|(name, _)| name != "click_id")
        .collect();
    fields.push(("source".into(), Value::String(source.into())));
    Value::Record(fields)
}

#[test]
fn v1_and_v2_can_read_each_other() {
    SchemaCompatibility::mutual_read(event_v1(), event_v2())
        .expect("v1 and v2 are mutually readable");
}

#[test]
fn data_written_with_v2_reads_with_the_v1_reader() {
    let codec = AvroCodec::new();
    for line in LINES {
        let json = raw(line);
        let datum =
            apache_avro::to_avro_datum(event_v2(), v2_value(&json, "ctwa-connector")).unwrap();
        let back = codec.decode_datum(event_v2(), &datum).unwrap();
        // The removed field reads as its v1 default, null; the added one is ignored.
        let expected = RawEvent {
            click_id: None,
            ..as_avro_sees_it(&json)
        };
        assert_eq!(back, expected, "{line}");
        assert_eq!(validate(&back).is_ok(), validate(&json).is_ok());

        // The same through single-object encoding, v2 being a known writer.
        let single = frame_single_object(fingerprint(event_v2()).unwrap(), &datum);
        assert_eq!(codec.decode_single_object(&single).unwrap(), expected);
        // And through the codec's own writer-side resolution (source defaults to "").
        let resolved = codec.encode_single_object_with(event_v2(), &json).unwrap();
        assert_eq!(codec.decode_single_object(&resolved).unwrap(), expected);
    }
}

#[test]
fn data_written_with_v1_reads_with_a_v2_reader() {
    let codec = AvroCodec::new();
    for line in LINES {
        let json = raw(line);
        let datum = codec.encode_datum(&json).unwrap();
        let value =
            apache_avro::from_avro_datum(event_v1(), &mut &datum[..], Some(event_v2())).unwrap();
        let Value::Record(fields) = value else {
            panic!("not a record")
        };
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert!(!names.contains(&"click_id"));
        let source = fields
            .iter()
            .find(|(n, _)| n == "source")
            .map(|(_, v)| v.clone());
        assert_eq!(
            source,
            Some(Value::String(String::new())),
            "the added field takes its default"
        );
        // Everything v2 kept is what v1 wrote.
        let expected = RawEvent {
            click_id: None,
            ..as_avro_sees_it(&json)
        };
        assert_eq!(from_value(Value::Record(fields)).unwrap(), expected);
    }
}

#[test]
fn a_third_party_writer_with_other_order_plain_long_and_extras_reads_the_same() {
    let mut codec = AvroCodec::new();
    let writer = Schema::parse_str(
        r#"{"type":"record","name":"Event","namespace":"wafunnel","fields":[
            {"name":"partner","type":"string"},
            {"name":"event_time","type":"long"},
            {"name":"account_id","type":"string"},
            {"name":"type","type":"string"},
            {"name":"event_id","type":"string"},
            {"name":"user_id","type":"string"},
            {"name":"referral_ad_id","type":["null","string"],"default":null}]}"#,
    )
    .unwrap();
    let record = Value::Record(vec![
        ("partner".into(), Value::String("p".into())),
        ("event_time".into(), Value::Long(1_772_445_660_000)),
        ("account_id".into(), Value::String("act_1".into())),
        ("type".into(), Value::String("message_in".into())),
        ("event_id".into(), Value::String("wamid.1".into())),
        ("user_id".into(), Value::String("u1".into())),
        (
            "referral_ad_id".into(),
            Value::Union(1, Box::new(Value::String("ad_1".into()))),
        ),
    ]);
    let datum = apache_avro::to_avro_datum(&writer, record).unwrap();
    let back = codec.decode_datum(&writer, &datum).unwrap();
    let line = r#"{"event_id":"wamid.1","type":"message_in","account_id":"act_1","user_id":"u1","event_time":1772445660000,"referral_ad_id":"ad_1"}"#;
    assert_eq!(back, as_avro_sees_it(&raw(line)));
    assert_eq!(validate(&back), validate(&raw(line)));
    let fp = codec.add_writer_schema(writer).unwrap();
    assert_eq!(
        codec
            .decode_single_object(&frame_single_object(fp, &datum))
            .unwrap(),
        back
    );
}

#[test]
fn an_incompatible_writer_schema_is_refused() {
    let mut codec = AvroCodec::new();
    let other = Schema::parse_str(
        r#"{"type":"record","name":"Event","namespace":"wafunnel","fields":[{"name":"event_id","type":"long"}]}"#,
    )
    .unwrap();
    assert_eq!(
        codec.add_writer_schema(other.clone()).unwrap_err().code(),
        "incompatible_schema"
    );
    let datum = apache_avro::to_avro_datum(
        &other,
        Value::Record(vec![("event_id".into(), Value::Long(7))]),
    )
    .unwrap();
    assert_eq!(
        codec.decode_datum(&other, &datum).unwrap_err().code(),
        "incompatible_schema"
    );

    // A compatible third-party schema can be added and is then known.
    let fp = codec
        .add_writer_schema(Schema::parse_str(EVENT_V2_SCHEMA).unwrap())
        .unwrap();
    assert_eq!(fp, fingerprint(event_v2()).unwrap());
}

#[test]
fn truncated_datums_are_bad_avro() {
    let codec = AvroCodec::new();
    for line in LINES {
        let datum = codec.encode_json(line.as_bytes()).unwrap();
        for cut in 0..datum.len() {
            let err = codec.decode_datum(event_v1(), &datum[..cut]).unwrap_err();
            assert_eq!(err.code(), "bad_avro", "{line} cut at {cut}: {err}");
            assert!(!err.is_retryable());
        }
        let single = codec.encode_single_object(&raw(line)).unwrap();
        for cut in 0..single.len() {
            assert_eq!(
                codec
                    .decode_single_object(&single[..cut])
                    .unwrap_err()
                    .code(),
                "bad_avro"
            );
        }
    }
}

#[test]
fn trailing_bytes_are_bad_avro() {
    let codec = AvroCodec::new();
    let mut datum = codec.encode_json(LINES[0].as_bytes()).unwrap();
    datum.push(0);
    let err = codec.decode_datum(event_v1(), &datum).unwrap_err();
    assert_eq!(
        err,
        Error::BadAvro {
            detail: "1 trailing bytes after the datum".into()
        }
    );
}

#[test]
fn garbage_never_panics() {
    let codec = AvroCodec::new();
    let valid = codec.encode_json(LINES[5].as_bytes()).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            let len = (next() % 64) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            // A valid datum with a few bytes flipped.
            let mut bytes = valid.clone();
            for _ in 0..1 + next() % 3 {
                let at = (next() as usize) % bytes.len();
                bytes[at] = next() as u8;
            }
            bytes
        };
        if let Err(err) = codec.decode_datum(event_v1(), &bytes) {
            assert!(["bad_avro", "invalid_field"].contains(&err.code()), "{err}");
        }
    }
}

#[test]
fn negative_counts_are_invalid_fields() {
    let codec = AvroCodec::new();
    let Value::Record(mut fields) = to_value(&raw(LINES[5])).unwrap() else {
        unreachable!()
    };
    for (name, value) in &mut fields {
        if name == "clicks" {
            *value = Value::Union(1, Box::new(Value::Long(-1)));
        }
    }
    let datum = apache_avro::to_avro_datum(event_v1(), Value::Record(fields)).unwrap();
    let err = codec.decode_datum(event_v1(), &datum).unwrap_err();
    assert_eq!((err.code(), err.field()), ("invalid_field", Some("clicks")));
}

#[test]
fn wrong_magic_and_short_headers_are_bad_avro() {
    let codec = AvroCodec::new();
    let single = codec.encode_single_object(&raw(LINES[0])).unwrap();
    let mut wrong = single.clone();
    wrong[1] = 0x02;
    assert!(matches!(
        codec.decode_single_object(&wrong).unwrap_err(),
        Error::BadFraming {
            format: Format::AvroSingleObject,
            ..
        }
    ));
    assert_eq!(
        codec
            .decode_single_object(LINES[0].as_bytes())
            .unwrap_err()
            .code(),
        "bad_avro"
    );
    assert_eq!(
        codec
            .decode_single_object(&[0xC3, 0x01, 1, 2])
            .unwrap_err()
            .code(),
        "bad_avro"
    );
    assert_eq!(
        codec.decode_single_object(&[]).unwrap_err().code(),
        "bad_avro"
    );

    assert_eq!(
        split_confluent(&[1, 0, 0, 0, 1, 2]).unwrap_err().code(),
        "bad_avro"
    );
    assert_eq!(split_confluent(&[0, 0, 0]).unwrap_err().code(), "bad_avro");
    assert_eq!(
        split_confluent(&[0, 0, 0, 1, 0, 9]).unwrap(),
        (256, &[9u8][..])
    );
}

#[tokio::test]
async fn unknown_fingerprints_and_ids_are_unknown_schema_id() {
    let codec = AvroCodec::new();
    let mut single = codec.encode_single_object(&raw(LINES[0])).unwrap();
    single[2] ^= 0xFF;
    let fp = u64::from_le_bytes(single[2..10].try_into().unwrap());
    let err = codec.decode_single_object(&single).unwrap_err();
    assert_eq!(err, Error::UnknownSchemaId(SchemaId::Fingerprint(fp)));
    assert_eq!(err.code(), "unknown_schema_id");
    assert!(!err.is_retryable());

    let registry = CachingRegistry::new(MemoryRegistry::default());
    let confluent = codec.encode_confluent(99, &raw(LINES[0])).unwrap();
    let err = codec
        .decode_confluent(&registry, &confluent)
        .await
        .unwrap_err();
    assert_eq!(err, Error::UnknownSchemaId(SchemaId::Registry(99)));
    assert_eq!(err.code(), "unknown_schema_id");
    let err = codec
        .decode_confluent(&registry, &[0, 0, 0])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "bad_avro");
}
