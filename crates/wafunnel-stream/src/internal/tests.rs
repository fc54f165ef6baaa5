use std::path::{Path, PathBuf};

use wafunnel_core::config::UserKey;
use wafunnel_core::event::Body;

use super::*;

/// Records of the JSON form, as ingest wrote them before the binary form
/// (`NAME.payload`, byte for byte, and `NAME.headers`, one `key: value` a
/// line), with what they must decode to (`NAME.expected`).
/// `WAFUNNEL_UPDATE_GOLDEN=1` rewrites the expected files: review the diff.
fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/internal")
}

fn read_headers(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|line| {
            let (key, value) = line.split_once(": ").expect("key: value");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

fn render(record: &Result<Record<'_>, Undecodable<'_>>) -> String {
    let source = |s: &Source<'_>| format!("{}/{}/{}", s.topic, s.partition, s.offset);
    match record {
        Ok(Record {
            source: s,
            content: Content::Ignored,
        }) => format!("source={} ignored\n", source(s)),
        Ok(Record {
            source: s,
            content: Content::Event(event),
        }) => format!("source={} {event:?}\n", source(s)),
        Err(e) => format!("source={} undecodable: {}\n", source(&e.source), e.error),
    }
}

#[test]
fn records_of_the_earlier_json_form_still_decode() {
    let update = std::env::var_os("WAFUNNEL_UPDATE_GOLDEN").is_some();
    let mut names: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "headers"))
        .collect();
    names.sort();
    let mut kinds = std::collections::BTreeSet::new();
    for path in names {
        let payload = std::fs::read(path.with_extension("payload")).expect("payload");
        let headers = read_headers(&path);
        let record = decode(&payload, |key| {
            headers
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        });
        match &record {
            Ok(Record {
                content: Content::Event(event),
                ..
            }) => kinds.insert(event.event_type().as_str()),
            Ok(_) => kinds.insert("ignored"),
            Err(e) => panic!("{}: {}", path.display(), e.error),
        };
        let got = render(&record);
        let expected = path.with_extension("expected");
        if update {
            std::fs::write(&expected, &got).expect("write");
            continue;
        }
        let want = std::fs::read_to_string(&expected)
            .unwrap_or_else(|_| panic!("{} missing", expected.display()));
        assert_eq!(got, want, "{}", path.display());
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "ad_click",
            "ad_spend",
            "ignored",
            "lead",
            "message_in",
            "message_out",
            "purchase"
        ],
        "every kind of record has a golden example"
    );
}

fn click() -> Event {
    Event {
        event_id: "c1".into(),
        account_id: "act_1".into(),
        time: 1_772_409_600_000,
        body: Body::AdClick {
            user: UserKey(42),
            ad_id: "ad_1".into(),
            adset_id: None,
            campaign_id: Some("cmp".into()),
            click_id: None,
        },
    }
}

#[test]
fn binary_records_need_no_header() {
    let source = Source {
        topic: "raw",
        partition: 2,
        offset: 9,
    };
    let mut encoder = Encoder::default();
    let (key, payload) = encoder.event(&source, &click());
    assert_eq!(key, click().partition_key().as_bytes());
    let payload = payload.to_vec();
    let record = decode(&payload, |_| panic!("no header is read")).expect("decodes");
    assert_eq!(
        record,
        Record {
            source,
            content: Content::Event(click())
        }
    );
    let (key, payload) = encoder.ignored(&source);
    assert_eq!(key, b"raw/2");
    let payload = payload.to_vec();
    let record = decode(&payload, |_| panic!("no header is read")).expect("decodes");
    assert_eq!(
        record,
        Record {
            source,
            content: Content::Ignored
        }
    );
}

#[test]
fn a_record_of_neither_form_is_undecodable_with_what_it_names() {
    let headers = |key: &str| match key {
        kafka::SOURCE_TOPIC => Some("raw"),
        kafka::SOURCE_PARTITION => Some("3"),
        kafka::SOURCE_OFFSET => Some("17"),
        _ => None,
    };
    let named = Source {
        topic: "raw",
        partition: 3,
        offset: 17,
    };
    let error = decode(b"{\"event_id\":", headers).expect_err("truncated json");
    assert_eq!(error.source, named);
    assert!(matches!(error.error, DecodeError::Json(_)), "{error:?}");
    let error = decode(b"", headers).expect_err("no marker header");
    assert_eq!(error.source, named);
    assert!(matches!(error.error, DecodeError::Empty), "{error:?}");
    let error = decode(&[7, 0, 0], headers).expect_err("a later version");
    assert_eq!(error.source, UNKNOWN_SOURCE);
    assert_eq!(
        error.error.to_string(),
        "internal record format version 7, this build reads version 1"
    );
}
