//! Arbitrary input never panics either normalizer: every input ends as
//! events (or nothing, for a webhook body) or one rejection. Proptest with
//! arbitrary bytes and with mutations of valid bodies, bounded so the suite
//! stays fast (`PROPTEST_CASES` raises it); the nightly-only `cargo fuzz`
//! is not needed for this.

use proptest::prelude::*;
use wafunnel_core::config::{Accounts, UserHasher};
use wafunnel_meta::{insights_row, normalize_webhook, PhoneNumbers};

const BODY: &str = include_str!("golden/webhook/batched.json");
const ROW: &str = r#"{"account_id":"1001","ad_id":"ad1","date_start":"2026-03-02","date_stop":"2026-03-02","spend":"1.5","impressions":"10","clicks":"1","actions":[{"action_type":"onsite_conversion.messaging_conversation_started_7d","value":"3"}],"fetched_at":"2026-03-03T01:00:00Z"}"#;

fn numbers() -> PhoneNumbers {
    PhoneNumbers::new([("106540352242922".to_owned(), "act_1001".to_owned())])
}

/// The body with one byte range replaced.
fn mutate(text: &str, at: usize, len: usize, with: &[u8]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    let at = at % bytes.len();
    let end = (at + len).min(bytes.len());
    bytes.splice(at..end, with.iter().copied());
    bytes
}

fn judged(events: Vec<wafunnel_core::event::RawEvent<'_>>) {
    // Every derived event goes through validation without panicking either.
    for event in events {
        let _ = event.validate(
            &Accounts::default(),
            &UserHasher::new(b"fuzz"),
            1_800_000_000_000,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(events) = normalize_webhook(&bytes, &numbers()) {
            judged(events);
        }
        let _ = insights_row(&bytes, Some(0), &Accounts::default());
    }

    #[test]
    fn mutated_webhook_bodies(at in 0usize..4096, len in 0usize..16, with in proptest::collection::vec(any::<u8>(), 0..16)) {
        if let Ok(events) = normalize_webhook(&mutate(BODY, at, len, &with), &numbers()) {
            judged(events);
        }
    }

    #[test]
    fn mutated_insights_rows(at in 0usize..1024, len in 0usize..8, with in "[0-9a-z\":,.{}\\[\\] -]{0,8}") {
        if let Ok(event) = insights_row(&mutate(ROW, at, len, with.as_bytes()), None, &Accounts::default()) {
            judged(vec![event]);
        }
    }
}
