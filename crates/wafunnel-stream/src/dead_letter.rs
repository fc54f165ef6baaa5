//! What a dead letter carries, so that it helps the operator and can be
//! re-driven without holding a phone number, a name or anything a person
//! wrote (docs/SEMANTICS.md section 9), and always fits the topic.
//!
//! Contract:
//! - The payload keeps only fields the rules read, the user's ids replaced
//!   by their keyed hash (`#` and 32 hex digits, the `user_hash` of the
//!   tables), whatever the reason:
//!   - a webhook body: its minimized form (`wafunnel_meta::minimize`: ids,
//!     timestamps, referral, statuses, pricing, the business's phone number
//!     id), every contact hashed, even when the receiver was configured to
//!     store message contents;
//!   - a canonical JSON event or an insights row: the entries whose key is
//!     a field of that format, in their order and text, repeated keys
//!     included (so the reason stays visible), `user_id` hashed; any other
//!     key (a CRM's customer name, a note) is dropped;
//!   - anything else (Avro, bytes that are not a JSON object): nothing, as
//!     no field of it can be told apart from what a person wrote.
//!
//!   `dead_letter.keep_raw_user_ids` keeps the payload as it arrived.
//! - The record key, which may be the contact's phone number, is replaced
//!   by its keyed hash.
//! - The reason detail never repeats a value that could be a phone number,
//!   except the business's own `phone_number_id` of `unknown_phone_number`,
//!   which is what the operator must configure, nor a secret
//!   ([`wafunnel_runtime::scrub`]).
//! - Whenever the payload is not the record as it arrived (reduced, emptied
//!   or cut to `dead_letter.max_payload_bytes`), headers give the original's
//!   size and a keyed BLAKE3 digest of its bytes.
//! - Re-drive reads the source record back: every dead letter names its
//!   topic, partition and offset, and the digest proves the record read
//!   there is the one dead-lettered. So a dead letter can be re-driven for
//!   as long as its raw topic keeps the record (its `retention.ms`); the
//!   raw topic of webhooks holds bodies as the receiver stored them.
//! - A re-driven dead letter is marked by a record on its own dead-letter
//!   partition with the [`REDRIVEN`] header (its offset) and its source
//!   headers, written in the re-drive's transaction: the marker tells a
//!   later re-drive to skip it, and sessionize to count its record in its
//!   new outcome instead of as dead-lettered.

use wafunnel_avro::Format;
use wafunnel_core::config::UserHasher;
use wafunnel_core::event::Rejection;

/// Header: the original payload's size in bytes, when the payload is not it.
pub const ORIGINAL_SIZE: &str = "wafunnel.original.size";
/// Header: a keyed BLAKE3 digest of the original payload, when the payload is not it.
pub const ORIGINAL_DIGEST: &str = "wafunnel.original.digest";

/// Header of a re-drive marker: the offset of the dead letter re-driven,
/// on the marker's own partition.
pub const REDRIVEN: &str = "wafunnel.redriven";

/// Whether `raw`, read back at a dead letter's source, is the record it
/// was made from: by the digest when its payload is not the original,
/// else by the payload itself.
pub fn is_original(raw: &[u8], payload: &[u8], digest: Option<&str>, hasher: &UserHasher) -> bool {
    match digest {
        Some(digest) => hasher.digest(raw) == digest,
        None => raw == payload,
    }
}

/// Fields of an insights row (section 6.2), breakdowns included: a
/// breakdown row is dead-lettered for its breakdown field.
const INSIGHTS_FIELDS: &[&str] = &[
    "account_id",
    "account_currency",
    "campaign_id",
    "campaign_name",
    "adset_id",
    "adset_name",
    "ad_id",
    "ad_name",
    "date_start",
    "date_stop",
    "spend",
    "impressions",
    "clicks",
    "actions",
    "fetched_at",
    "publisher_platform",
    "platform_position",
    "impression_device",
    "device_platform",
    "age",
    "gender",
    "country",
    "region",
    "dma",
];

/// How dead letters are written.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Keep payloads as they arrived (user ids and contents included).
    pub keep_raw_user_ids: bool,
    /// Longest payload written; longer ones are truncated.
    pub max_payload_bytes: usize,
}

/// A dead letter's payload, and the original's size and digest when the
/// payload is not the original.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload {
    /// The bytes to write.
    pub bytes: Vec<u8>,
    /// `(size, digest)` of the original, when the payload differs from it.
    pub original: Option<(usize, String)>,
}

/// The payload of the dead letter of `raw`, a record of `format`.
pub fn payload(raw: &[u8], format: Format, policy: Policy, hasher: &UserHasher) -> Payload {
    let mut bytes = if policy.keep_raw_user_ids {
        raw.to_vec()
    } else {
        reduce(raw, format, hasher)
    };
    bytes.truncate(policy.max_payload_bytes);
    let original = (bytes != raw).then(|| (raw.len(), hasher.digest(raw)));
    Payload { bytes, original }
}

/// The key of the dead letter of a record keyed `key`.
pub fn key(key: &[u8], policy: Policy, hasher: &UserHasher) -> Vec<u8> {
    if policy.keep_raw_user_ids {
        return key.to_vec();
    }
    hashed(&String::from_utf8_lossy(key), hasher).into_bytes()
}

/// `#` and the keyed hash of a user id, as the tables' `user_hash`.
fn hashed(user_id: &str, hasher: &UserHasher) -> String {
    format!("#{:?}", hasher.hash(user_id))
}

fn reduce(raw: &[u8], format: Format, hasher: &UserHasher) -> Vec<u8> {
    match format {
        Format::WhatsappWebhook => {
            let contact = |v: &serde_json::Value| {
                let text = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                serde_json::Value::String(hashed(&text, hasher))
            };
            wafunnel_meta::minimize(raw, &contact).unwrap_or_default()
        }
        Format::Json => fields(raw, &wafunnel_core::event::FIELDS, hasher),
        Format::MetaInsights => fields(raw, INSIGHTS_FIELDS, hasher),
        Format::AvroConfluent | Format::AvroSingleObject => Vec::new(),
    }
}

/// The reason detail of `rejection`, without a user id's value.
pub fn detail(rejection: &Rejection) -> String {
    match rejection {
        // The business's own number id, not a contact's: the operator adds it.
        Rejection::UnknownPhoneNumber(_) => rejection.to_string(),
        _ => detail_text(&rejection.to_string()),
    }
}

/// A decoder's or validator's message without the values it quotes that
/// could be a phone number or what a person wrote: the validators quote
/// field names and values in backticks, of which a value with 7 or more
/// digits is withheld; serde quotes an offending string value in double
/// quotes (`invalid type: string "..."`), which is always withheld.
pub fn detail_text(text: &str) -> String {
    let text = wafunnel_runtime::scrub::scrub(text);
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('"').enumerate() {
        if i > 0 {
            out.push('"');
        }
        if i % 2 == 1 {
            out.push_str("<withheld>");
            continue;
        }
        for (j, part) in part.split('`').enumerate() {
            if j > 0 {
                out.push('`');
            }
            let quoted = j % 2 == 1;
            if quoted && part.bytes().filter(u8::is_ascii_digit).count() >= 7 {
                out.push_str("<withheld>");
            } else {
                out.push_str(part);
            }
        }
    }
    out
}

/// The entries of JSON object `raw` whose key is one of `known`, `user_id`
/// hashed; empty if `raw` is not a JSON object.
fn fields(raw: &[u8], known: &[&str], hasher: &UserHasher) -> Vec<u8> {
    let Some(entries) = json_entries(raw) else {
        return Vec::new();
    };
    // Rebuilt entry by entry: order, repeated keys and the other values'
    // text stay as they arrived.
    let mut out = Vec::with_capacity(raw.len());
    out.push(b'{');
    for (key, value) in entries.iter().filter(|(k, _)| known.contains(&k.as_str())) {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(serde_json::to_string(key).unwrap_or_default().as_bytes());
        out.push(b':');
        if key == "user_id" && value.get() != "null" {
            let text = serde_json::from_str::<String>(value.get())
                .unwrap_or_else(|_| value.get().to_owned());
            out.extend_from_slice(format!("\"{}\"", hashed(&text, hasher)).as_bytes());
        } else {
            out.extend_from_slice(value.get().as_bytes());
        }
    }
    out.push(b'}');
    out
}

/// The entries of a JSON object, in order, repeated keys included; `None`
/// if `raw` is not one.
fn json_entries(raw: &[u8]) -> Option<Vec<(String, &serde_json::value::RawValue)>> {
    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = Vec<(String, &'de serde_json::value::RawValue)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(key) = map.next_key::<String>()? {
                entries.push((key, map.next_value()?));
            }
            Ok(entries)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    let entries = serde::Deserializer::deserialize_map(&mut de, Entries).ok()?;
    de.end().ok()?;
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy {
        keep_raw_user_ids: false,
        max_payload_bytes: 1024,
    };

    fn hasher() -> UserHasher {
        UserHasher::new(b"dead-letter-test-key")
    }

    fn text(raw: &[u8], format: Format) -> String {
        String::from_utf8(payload(raw, format, POLICY, &hasher()).bytes).expect("utf-8")
    }

    #[test]
    fn json_user_ids_become_their_hash_and_other_fields_go() {
        let raw = br#"{"type":"ad_click","user_id":"+55 11 99999-9999","customer":"Ana Souza","note":"call me","event_time":1772445660000}"#;
        let hash = format!("#{:?}", hasher().hash("5511999999999"));
        assert_eq!(
            text(raw, Format::Json),
            format!(r#"{{"type":"ad_click","user_id":"{hash}","event_time":1772445660000}}"#)
        );
        let numeric = text(br#"{"user_id":5511999999999}"#, Format::Json);
        assert!(!numeric.contains("5511999999999"), "{numeric}");
        assert_eq!(
            text(
                br#"{"type":"ad_click","type":"purchase","user_id":"u1"}"#,
                Format::Json
            ),
            format!(
                r##"{{"type":"ad_click","type":"purchase","user_id":"#{:?}"}}"##,
                hasher().hash("u1")
            ),
            "a repeated key stays visible"
        );
        let row = br#"{"account_id":"1001","ad_id":"a1","ad_name":"Summer","spend":"x","contact":"+55 11 99999-9999"}"#;
        assert_eq!(
            text(row, Format::MetaInsights),
            r#"{"account_id":"1001","ad_id":"a1","ad_name":"Summer","spend":"x"}"#
        );
    }

    #[test]
    fn payloads_that_cannot_be_told_apart_are_withheld() {
        let raw = b"\x02\x1a+55 (11) 99999-9999\x08Ana Souza wrote this";
        for format in [
            Format::AvroConfluent,
            Format::AvroSingleObject,
            Format::Json,
        ] {
            let out = payload(raw, format, POLICY, &hasher());
            assert!(out.bytes.is_empty(), "{format:?}");
            assert_eq!(out.original, Some((raw.len(), hasher().digest(raw))));
        }
        assert!(text(br#"{"entry":"#, Format::WhatsappWebhook).is_empty());
        let kept = payload(
            raw,
            Format::AvroConfluent,
            Policy {
                keep_raw_user_ids: true,
                ..POLICY
            },
            &hasher(),
        );
        assert_eq!((kept.bytes, kept.original), (raw.to_vec(), None));
        assert_eq!(
            key(b"+55 11 99999-9999", POLICY, &hasher()),
            format!("#{:?}", hasher().hash("5511999999999")).into_bytes()
        );
    }

    /// Every golden webhook body, whatever its reason (unknown number,
    /// wrong object, missing id, bad timestamp, not JSON) or its events:
    /// the dead letter holds no phone number, name or content.
    #[test]
    fn dead_lettered_webhook_bodies_hold_no_phone_number_name_or_content() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../wafunnel-meta/tests/golden/webhook");
        let mut bodies: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("golden bodies")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| std::fs::read(p).expect("body"))
            .collect();
        assert!(bodies.len() >= 19, "{}", bodies.len());
        bodies.push(br#"{"object":"page","entry":[{"messaging":[{"sender":"5511987654321","message":{"text":"Ana: my secret"}}]}]}"#.to_vec());
        bodies.push(br#"{"object":"whatsapp_business_account","entry":[{"changes":[{"field":"messages","value":{"contacts":[{"profile":{"name":"Ana"},"wa_id":"5511987654321"}],"messages":[{"from":5511987654321,"text":{"body":"my secret"}}]}}]}]}"#.to_vec());
        let policy = Policy {
            max_payload_bytes: 1 << 20,
            ..POLICY
        };
        let contact = format!("#{:?}", hasher().hash("5511987654321"));
        for body in bodies {
            let out = payload(&body, Format::WhatsappWebhook, policy, &hasher());
            let text = String::from_utf8(out.bytes).expect("utf-8");
            for gone in [
                "5511",
                "15550001111",
                "Ana",
                "Bruno",
                "my ",
                "caption",
                "Rua",
                "secret",
                "\"text\":{",
            ] {
                assert!(!text.contains(gone), "{gone} in {text}");
            }
            if body.windows(13).any(|w| w == b"5511987654321") && text.contains("from") {
                assert!(text.contains(&contact), "the contact is keyed: {text}");
            }
            assert_eq!(out.original.map(|(size, _)| size), Some(body.len()));
        }
    }

    #[test]
    fn a_record_read_back_is_recognised_by_its_digest_or_its_bytes() {
        let raw = br#"{"type":"ad_click","user_id":"+55 11 99999-9999"}"#;
        let written = payload(raw, Format::Json, POLICY, &hasher());
        let (_, digest) = written.original.expect("reduced");
        assert!(is_original(raw, &written.bytes, Some(&digest), &hasher()));
        let other = br#"{"type":"ad_click","user_id":"+55 11 99999-9998"}"#;
        assert!(!is_original(
            other,
            &written.bytes,
            Some(&digest),
            &hasher()
        ));
        let kept = br#"{"type":"x"}"#;
        assert!(is_original(kept, kept, None, &hasher()));
        assert!(!is_original(other, kept, None, &hasher()));
    }

    #[test]
    fn a_payload_too_large_is_cut_with_its_size_and_digest() {
        let raw = [
            b"{\"user_id\":\"u\",\"value\":\"".as_slice(),
            &[b'1'; 5000],
            b"\"}",
        ]
        .concat();
        let out = payload(&raw, Format::Json, POLICY, &hasher());
        assert_eq!(out.bytes.len(), 1024);
        let (size, digest) = out.original.expect("cut");
        assert_eq!(size, raw.len());
        assert_eq!(digest, hasher().digest(&raw));
        assert_eq!(
            payload(br#"{"type":"x"}"#, Format::Json, POLICY, &hasher()).original,
            None
        );
    }

    #[test]
    fn details_never_repeat_a_user_id_but_name_the_business_s_number() {
        let rejection = Rejection::InvalidField {
            field: "user_id",
            detail: "invalid type: integer `5511999999999`, expected a string".into(),
        };
        let text = detail(&rejection);
        assert!(
            text.contains("`user_id`") && !text.contains("5511"),
            "{text}"
        );
        assert!(text.contains("`<withheld>`"), "{text}");
        let other = Rejection::InvalidField {
            field: "value",
            detail: "invalid type: integer `5`, expected a string".into(),
        };
        assert_eq!(detail(&other), other.to_string());
        let text = detail_text(
            "invalid type: string \"Ana: call me at noon\", expected u64 at `impressions`",
        );
        assert_eq!(
            text,
            "invalid type: string \"<withheld>\", expected u64 at `impressions`"
        );
        let unknown = Rejection::UnknownPhoneNumber("106540352242922".into());
        assert!(detail(&unknown).contains("`106540352242922`"));
    }
}
