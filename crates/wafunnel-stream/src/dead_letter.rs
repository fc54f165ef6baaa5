//! What a dead letter carries, so that it helps the operator without
//! leaking a contact's phone number and always fits the topic.
//!
//! Contract:
//! - By default a dead letter's user ids are replaced by their keyed hash
//!   (`#` and 32 hex digits, the `user_hash` of the tables): in a JSON
//!   payload the `user_id` field, whatever its type; in any other payload
//!   (Avro, text) every phone-number-like run (7 to 15 digits, with the
//!   separators the contract allows). `dead_letter.keep_raw_user_ids`
//!   keeps the payload as it arrived.
//! - The reason detail never repeats a value that could be a phone number,
//!   nor a secret ([`wafunnel_runtime::scrub`]).
//! - A payload longer than `dead_letter.max_payload_bytes` is cut to that
//!   length; headers then give its full size and a keyed digest of the
//!   original bytes, so it can still be matched with the raw record (whose
//!   topic, partition and offset the dead letter names anyway).

use wafunnel_core::config::{normalize_user_id, UserHasher};
use wafunnel_core::event::Rejection;

/// Header: the original payload's size in bytes, when it was truncated.
pub const ORIGINAL_SIZE: &str = "wafunnel.original.size";
/// Header: a keyed BLAKE3 digest of the original payload, when it was truncated.
pub const ORIGINAL_DIGEST: &str = "wafunnel.original.digest";

/// How dead letters are written.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Keep payloads as they arrived (user ids included).
    pub keep_raw_user_ids: bool,
    /// Longest payload written; longer ones are truncated.
    pub max_payload_bytes: usize,
}

/// A dead letter's payload, and the original size and digest if it was cut.
#[derive(Debug, PartialEq, Eq)]
pub struct Payload {
    /// The bytes to write.
    pub bytes: Vec<u8>,
    /// `(size, digest)` of the original, when truncated.
    pub truncated: Option<(usize, String)>,
}

/// The payload of the dead letter of `raw`.
pub fn payload(raw: &[u8], policy: Policy, hasher: &UserHasher) -> Payload {
    let mut bytes = if policy.keep_raw_user_ids {
        raw.to_vec()
    } else {
        redact(raw, hasher)
    };
    let truncated = (bytes.len() > policy.max_payload_bytes).then(|| {
        bytes.truncate(policy.max_payload_bytes);
        (raw.len(), hasher.digest(raw))
    });
    Payload { bytes, truncated }
}

/// The reason detail of `rejection`, without a user id's value.
pub fn detail(rejection: &Rejection) -> String {
    detail_text(&rejection.to_string())
}

/// A decoder's or validator's message without the values it quotes that
/// could be a phone number: serde and the validators quote offending values
/// in backticks, and any quoted value with 7 or more digits is withheld.
pub fn detail_text(text: &str) -> String {
    let text = wafunnel_runtime::scrub::scrub(text);
    let mut out = String::with_capacity(text.len());
    for (i, part) in text.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        let quoted = i % 2 == 1;
        if quoted && part.bytes().filter(u8::is_ascii_digit).count() >= 7 {
            out.push_str("<withheld>");
        } else {
            out.push_str(part);
        }
    }
    out
}

fn redact(raw: &[u8], hasher: &UserHasher) -> Vec<u8> {
    match json_entries(raw) {
        Some(entries) => {
            if !entries.iter().any(|(k, _)| k == "user_id") {
                return raw.to_vec();
            }
            // Rebuilt entry by entry: order, repeated keys and the other
            // values' text stay as they arrived.
            let mut out = Vec::with_capacity(raw.len());
            out.push(b'{');
            for (i, (key, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::to_string(key).unwrap_or_default().as_bytes());
                out.push(b':');
                if key == "user_id" && value.get() != "null" {
                    let text = serde_json::from_str::<String>(value.get())
                        .unwrap_or_else(|_| value.get().to_owned());
                    out.extend_from_slice(format!("\"#{:?}\"", hasher.hash(&text)).as_bytes());
                } else {
                    out.extend_from_slice(value.get().as_bytes());
                }
            }
            out.push(b'}');
            out
        }
        None => redact_phone_numbers(raw, hasher),
    }
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

/// Replaces every phone-number-like run: an optional `+`, then digits and
/// the separators ` -.()`, with 7 to 15 digits, starting and ending on a digit.
fn redact_phone_numbers(raw: &[u8], hasher: &UserHasher) -> Vec<u8> {
    let is_sep = |b: u8| matches!(b, b' ' | b'-' | b'.' | b'(' | b')');
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let start = i;
        let plus = raw[i] == b'+';
        let mut j = if plus { i + 1 } else { i };
        if j >= raw.len()
            || !raw[j].is_ascii_digit()
            || (start > 0 && raw[start - 1].is_ascii_digit())
        {
            out.push(raw[i]);
            i += 1;
            continue;
        }
        let (mut digits, mut end) = (0usize, j);
        while j < raw.len() && (raw[j].is_ascii_digit() || is_sep(raw[j])) {
            if raw[j].is_ascii_digit() {
                digits += 1;
                end = j + 1;
            }
            j += 1;
        }
        if (7..=15).contains(&digits) && !raw.get(end).is_some_and(u8::is_ascii_digit) {
            let text = String::from_utf8_lossy(&raw[start..end]);
            out.extend_from_slice(
                format!("#{:?}", hasher.hash(&normalize_user_id(&text))).as_bytes(),
            );
            i = end;
        } else {
            out.extend_from_slice(&raw[start..end.max(start + 1)]);
            i = end.max(start + 1);
        }
    }
    out
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

    #[test]
    fn json_user_ids_become_their_hash() {
        let raw =
            br#"{"type":"ad_click","user_id":"+55 11 99999-9999","event_time":1772445660000}"#;
        let out = payload(raw, POLICY, &hasher());
        let text = String::from_utf8(out.bytes).expect("utf-8");
        let hash = format!("#{:?}", hasher().hash("5511999999999"));
        assert!(text.contains(&hash), "{text}");
        assert!(!text.contains("99999"), "{text}");
        assert!(
            text.contains("1772445660000"),
            "other fields are kept: {text}"
        );
        let numeric = payload(br#"{"user_id":5511999999999}"#, POLICY, &hasher());
        assert!(!String::from_utf8_lossy(&numeric.bytes).contains("5511999999999"));
        let repeated = payload(
            br#"{"type":"ad_click","type":"purchase","user_id":"u1"}"#,
            POLICY,
            &hasher(),
        );
        assert_eq!(
            String::from_utf8(repeated.bytes).expect("utf-8"),
            format!(
                r##"{{"type":"ad_click","type":"purchase","user_id":"#{:?}"}}"##,
                hasher().hash("u1")
            ),
            "a repeated key stays visible"
        );
    }

    #[test]
    fn phone_numbers_in_other_payloads_become_their_hash() {
        let raw = b"\x02\x1a+55 (11) 99999-9999\x08wamid.1 order 42 at 2026";
        let out = payload(raw, POLICY, &hasher());
        let hash = format!("#{:?}", hasher().hash("5511999999999"));
        assert!(out.bytes.windows(hash.len()).any(|w| w == hash.as_bytes()));
        assert!(!out.bytes.windows(5).any(|w| w == b"99999"));
        assert!(
            out.bytes.ends_with(b"wamid.1 order 42 at 2026"),
            "short numbers stay"
        );
        let kept = payload(
            raw,
            Policy {
                keep_raw_user_ids: true,
                ..POLICY
            },
            &hasher(),
        );
        assert_eq!(kept.bytes, raw.to_vec());
    }

    #[test]
    fn a_payload_too_large_is_cut_with_its_size_and_digest() {
        let raw = vec![b'x'; 5000];
        let out = payload(&raw, POLICY, &hasher());
        assert_eq!(out.bytes.len(), 1024);
        let (size, digest) = out.truncated.expect("truncated");
        assert_eq!(size, 5000);
        assert_eq!(digest, hasher().digest(&raw));
        assert_eq!(payload(b"{}", POLICY, &hasher()).truncated, None);
    }

    #[test]
    fn details_never_repeat_a_user_id() {
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
    }
}
