use proptest::prelude::*;

use super::*;

fn text() -> impl Strategy<Value = String> {
    // Empty, ASCII ids and any Unicode (multi-byte lengths), up to 300
    // bytes so lengths cross one varint byte.
    prop_oneof![
        Just(String::new()),
        "[a-z0-9_]{1,20}",
        any::<String>(),
        "[a-z]{130,300}",
    ]
}

fn opt_text() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text())
}

fn user() -> impl Strategy<Value = UserKey> {
    any::<u128>().prop_map(UserKey)
}

fn currency() -> impl Strategy<Value = Currency> {
    "[A-Z]{3}".prop_map(|c| Currency::parse(&c).expect("three upper-case letters"))
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (user(), text(), opt_text(), opt_text(), opt_text()).prop_map(
            |(user, ad_id, adset_id, campaign_id, click_id)| Body::AdClick {
                user,
                ad_id,
                adset_id,
                campaign_id,
                click_id,
            }
        ),
        (user(), opt_text(), opt_text()).prop_map(|(user, referral_ad_id, click_id)| {
            Body::MessageIn {
                user,
                referral_ad_id,
                click_id,
            }
        }),
        (
            user(),
            any::<bool>(),
            any::<bool>(),
            proptest::option::of(any::<bool>())
        )
            .prop_map(|(user, automated, template, billable)| Body::MessageOut {
                user,
                automated,
                template,
                billable,
            }),
        (user(), opt_text()).prop_map(|(user, ad_id)| Body::Lead { user, ad_id }),
        (user(), any::<i64>(), currency(), opt_text(), opt_text()).prop_map(
            |(user, value, currency, order_id, ad_id)| Body::Purchase {
                user,
                value: Money(value),
                currency,
                order_id,
                ad_id,
            }
        ),
        (
            (text(), opt_text(), opt_text(), any::<i32>()),
            (
                any::<i64>(),
                currency(),
                any::<u64>(),
                any::<u64>(),
                any::<u64>()
            )
        )
            .prop_map(
                |(
                    (ad_id, adset_id, campaign_id, date),
                    (spend, currency, impressions, clicks, reported_conversations),
                )| Body::AdSpend {
                    ad_id,
                    adset_id,
                    campaign_id,
                    date: Day(date),
                    spend: Money(spend),
                    currency,
                    impressions,
                    clicks,
                    reported_conversations,
                }
            ),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    (text(), text(), any::<i64>(), body()).prop_map(|(event_id, account_id, time, body)| Event {
        event_id,
        account_id,
        time,
        body,
    })
}

fn source_parts() -> impl Strategy<Value = (String, u32, i64)> {
    (text(), any::<u32>(), any::<i64>())
}

fn source((topic, partition, offset): &(String, u32, i64)) -> Source<'_> {
    Source {
        topic,
        partition: *partition,
        offset: *offset,
    }
}

fn encoded_event(source: &Source<'_>, event: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    encode_event(source, event, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn every_event_decodes_to_itself(event in event(), parts in source_parts()) {
        let source = source(&parts);
        let bytes = encoded_event(&source, &event);
        prop_assert_eq!(bytes[0], VERSION);
        prop_assert_eq!(
            decode(&bytes),
            Ok(Record { source, content: Content::Event(event) })
        );
    }

    #[test]
    fn every_marker_decodes_to_itself(parts in source_parts()) {
        let source = source(&parts);
        let mut bytes = Vec::new();
        encode_ignored(&source, &mut bytes);
        prop_assert_eq!(decode(&bytes), Ok(Record { source, content: Content::Ignored }));
    }

    #[test]
    fn encoding_appends_so_one_buffer_serves_many_records(
        first in event(),
        second in event(),
        parts in source_parts(),
    ) {
        let source = source(&parts);
        let mut buffer = encoded_event(&source, &first);
        let start = buffer.len();
        encode_event(&source, &second, &mut buffer);
        prop_assert_eq!(&buffer[start..], &encoded_event(&source, &second)[..]);
        buffer.clear();
        encode_event(&source, &second, &mut buffer);
        prop_assert_eq!(buffer, encoded_event(&source, &second));
    }

    #[test]
    fn a_cut_or_extended_record_is_an_error_not_another_record(
        event in event(),
        parts in source_parts(),
        cut in any::<prop::sample::Index>(),
        extra in 1u8..=255,
    ) {
        let bytes = encoded_event(&source(&parts), &event);
        let cut = cut.index(bytes.len());
        prop_assert!(decode(&bytes[..cut]).is_err(), "prefix of {} bytes", cut);
        let mut longer = bytes.clone();
        longer.push(extra);
        prop_assert_eq!(decode(&longer), Err(WireError::Trailing(1)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode(&bytes);
    }
}

fn purchase() -> Event {
    Event {
        event_id: "p1".into(),
        account_id: "act_1".into(),
        time: 1_772_409_600_000,
        body: Body::Purchase {
            user: UserKey(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            value: Money(499_000),
            currency: Currency::USD,
            order_id: Some("o9".into()),
            ad_id: None,
        },
    }
}

#[test]
fn the_version_1_layout_is_fixed() {
    // Records already on the topic are read by later builds: a change of
    // this layout is a new version, never an edit of this one.
    let source = Source {
        topic: "raw",
        partition: 3,
        offset: 70,
    };
    let bytes = encoded_event(&source, &purchase());
    let mut want = vec![1, 0, 3, b'r', b'a', b'w', 3, 140, 1, 4, 2, b'p', b'1'];
    want.extend_from_slice(&[5, b'a', b'c', b't', b'_', b'1']);
    // 1_772_409_600_000 zigzagged, as LEB128.
    want.extend_from_slice(&[128, 224, 193, 189, 149, 103]);
    want.extend_from_slice(&[
        16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, // user, little-endian
        240, 244, 60, // 499_000 zigzagged
        b'U', b'S', b'D', 3, b'o', b'9', 0,
    ]);
    assert_eq!(bytes, want);
    let mut marker = Vec::new();
    encode_ignored(&source, &mut marker);
    assert_eq!(marker, [1, 1, 3, b'r', b'a', b'w', 3, 140, 1]);
}

#[test]
fn another_version_is_refused_by_name() {
    let mut bytes = encoded_event(
        &Source {
            topic: "raw",
            partition: 0,
            offset: 0,
        },
        &purchase(),
    );
    bytes[0] = 2;
    let error = decode(&bytes).expect_err("version 2");
    assert_eq!(error, WireError::UnknownVersion(2));
    assert_eq!(
        error.to_string(),
        "internal record format version 2, this build reads version 1"
    );
    // The JSON of the earlier form is not this format either.
    assert_eq!(
        decode(br#"{"event_id":"e"}"#),
        Err(WireError::UnknownVersion(b'{'))
    );
    assert_eq!(decode(&[]), Err(WireError::Empty));
}

#[test]
fn invalid_fields_are_named() {
    let source = Source {
        topic: "raw",
        partition: 0,
        offset: 0,
    };
    let mut bytes = Vec::new();
    encode_ignored(&source, &mut bytes);
    bytes[1] = 9;
    assert_eq!(decode(&bytes), Err(WireError::Invalid("kind")));
    let mut bytes = encoded_event(&source, &purchase());
    bytes[8] = 6; // the type rank: after version, kind, "raw", partition 0, offset 0
    assert_eq!(decode(&bytes), Err(WireError::Invalid("type")));
    let out = Event {
        body: Body::MessageOut {
            user: UserKey(1),
            automated: false,
            template: false,
            billable: None,
        },
        ..purchase()
    };
    let mut bytes = encoded_event(&source, &out);
    let flags = bytes.len() - 1;
    bytes[flags] = BILLABLE;
    assert_eq!(decode(&bytes), Err(WireError::Invalid("flags")));
    bytes[flags] = 1 << 4;
    assert_eq!(decode(&bytes), Err(WireError::Invalid("flags")));
}
