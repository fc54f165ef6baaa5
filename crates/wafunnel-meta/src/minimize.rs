//! Data minimization of webhook bodies (docs/SEMANTICS.md section 9).
//!
//! A body keeps only what the rules of section 6.1 read, or may read, from
//! it: ids, timestamps, `type`s, the referral's `source_id`, `source_type`,
//! `source_url` and `ctwa_clid`, statuses with their conversation, pricing
//! and error codes, the business's `phone_number_id`, and each element's
//! contact (`from`, `recipient_id`, `to`, `wa_id` and the business-scoped
//! user ids), which ingest needs to key and hash the user. Everything else
//! is dropped: message contents (text, captions, media ids, urls, file
//! names and digests, locations, shared contacts, interactive and button
//! titles and payloads, reactions' emoji, orders' items and text, system
//! notices), profile names, the business's display phone number, the ad's
//! headline, body and media, and every field Meta adds later.
//!
//! Contract:
//! - The minimized body gives the same events and the same rejections as the
//!   original ([`crate::normalize_webhook`]): where a kept path holds a value
//!   of an unexpected shape, it is replaced by an empty value of the same
//!   JSON type (`""`, `{}`, `[]`; numbers, booleans and `null` stay), which
//!   every rule judges as it judges the original.
//! - Contacts (every scalar but `null` at a contact's path) go through
//!   `contact`: unchanged in the receiver, their keyed hash in a dead letter.
//! - A body that is not a JSON object cannot be minimized: [`NotAnObject`].
//! - Keys come out sorted, of a repeated key the last one is kept (as the
//!   rules read it), whitespace is dropped.

use serde_json::{Map, Value};

/// What a kept path holds.
enum Shape {
    /// A scalar kept as it is (an id, a timestamp, a code).
    Scalar,
    /// A user's phone number or business-scoped user id.
    Contact,
    /// An object of which only these fields are kept.
    Object(&'static [(&'static str, &'static Shape)]),
    /// A list of such values.
    List(&'static Shape),
}

use Shape::{Contact, List, Object, Scalar};

static ERROR: Shape = Object(&[
    ("code", &Scalar),
    ("title", &Scalar),
    ("message", &Scalar),
    ("href", &Scalar),
]);
static ERRORS: Shape = List(&ERROR);
static REFERRAL: Shape = Object(&[
    ("source_id", &Scalar),
    ("source_type", &Scalar),
    ("source_url", &Scalar),
    ("ctwa_clid", &Scalar),
]);
static CONTEXT: Shape = Object(&[("id", &Scalar)]);
static REACTION: Shape = Object(&[("message_id", &Scalar)]);
static TYPED: Shape = Object(&[("type", &Scalar)]);
static MESSAGE: Shape = Object(&[
    ("id", &Scalar),
    ("from", &Contact),
    ("from_user_id", &Contact),
    ("timestamp", &Scalar),
    ("type", &Scalar),
    ("context", &CONTEXT),
    ("referral", &REFERRAL),
    ("interactive", &TYPED),
    ("reaction", &REACTION),
    ("errors", &ERRORS),
]);
static ECHO: Shape = Object(&[
    ("id", &Scalar),
    ("to", &Contact),
    ("to_user_id", &Contact),
    ("timestamp", &Scalar),
    ("type", &Scalar),
]);
static CONVERSATION: Shape = Object(&[
    ("id", &Scalar),
    ("expiration_timestamp", &Scalar),
    ("origin", &TYPED),
]);
static PRICING: Shape = Object(&[
    ("billable", &Scalar),
    ("pricing_model", &Scalar),
    ("category", &Scalar),
    ("type", &Scalar),
]);
static STATUS: Shape = Object(&[
    ("id", &Scalar),
    ("status", &Scalar),
    ("timestamp", &Scalar),
    ("recipient_id", &Contact),
    ("recipient_user_id", &Contact),
    ("conversation", &CONVERSATION),
    ("pricing", &PRICING),
    ("errors", &ERRORS),
]);
static CONTACT: Shape = Object(&[("wa_id", &Contact), ("user_id", &Contact)]);
static METADATA: Shape = Object(&[("phone_number_id", &Scalar)]);
static VALUE: Shape = Object(&[
    ("messaging_product", &Scalar),
    ("metadata", &METADATA),
    ("contacts", &List(&CONTACT)),
    ("messages", &List(&MESSAGE)),
    ("statuses", &List(&STATUS)),
    ("message_echoes", &List(&ECHO)),
    ("errors", &ERRORS),
]);
static CHANGE: Shape = Object(&[("field", &Scalar), ("value", &VALUE)]);
static ENTRY: Shape = Object(&[
    ("id", &Scalar),
    ("time", &Scalar),
    ("changes", &List(&CHANGE)),
]);
static BODY: Shape = Object(&[("object", &Scalar), ("entry", &List(&ENTRY))]);

/// A body that is not a JSON object: nothing in it can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a JSON object")]
pub struct NotAnObject;

/// `body` with only what the rules use, contacts mapped by `contact`.
pub fn minimize(body: &[u8], contact: &dyn Fn(&Value) -> Value) -> Result<Vec<u8>, NotAnObject> {
    let root: Value = serde_json::from_slice(body).map_err(|_| NotAnObject)?;
    if !root.is_object() {
        return Err(NotAnObject);
    }
    let kept = keep(&root, &BODY, contact);
    serde_json::to_vec(&kept).map_err(|_| NotAnObject)
}

fn keep(value: &Value, shape: &Shape, contact: &dyn Fn(&Value) -> Value) -> Value {
    match (shape, value) {
        (Scalar, Value::Object(_) | Value::Array(_)) => emptied(value),
        (Scalar, _) => value.clone(),
        (Contact, Value::Null) => Value::Null,
        (Contact, Value::Object(_) | Value::Array(_)) => emptied(value),
        (Contact, scalar) => contact(scalar),
        (Object(fields), Value::Object(map)) => {
            let mut out = Map::new();
            for (name, shape) in *fields {
                if let Some(v) = map.get(*name) {
                    out.insert((*name).to_owned(), keep(v, shape, contact));
                }
            }
            Value::Object(out)
        }
        (List(item), Value::Array(items)) => {
            Value::Array(items.iter().map(|v| keep(v, item, contact)).collect())
        }
        (Object(_) | List(_), other) => emptied(other),
    }
}

/// An empty value of `value`'s JSON type.
fn emptied(value: &Value) -> Value {
    match value {
        Value::String(_) => Value::String(String::new()),
        Value::Object(_) => Value::Object(Map::new()),
        Value::Array(_) => Value::Array(Vec::new()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{normalize_webhook, PhoneNumbers};
    use proptest::prelude::*;

    fn same(v: &Value) -> Value {
        v.clone()
    }

    #[test]
    fn contents_are_dropped_and_ids_kept() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"metadata":{"display_phone_number":"15550001111","phone_number_id":"106540352242922"},"contacts":[{"profile":{"name":"Ana"},"wa_id":"5511987654321"}],"messages":[{"from":"5511987654321","id":"wamid.1","timestamp":"1772445660","type":"text","text":{"body":"my secret"}}]}}]}]}"#;
        let out = minimize(body, &same).expect("object");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            r#"{"entry":[{"changes":[{"field":"messages","value":{"contacts":[{"wa_id":"5511987654321"}],"messages":[{"from":"5511987654321","id":"wamid.1","timestamp":"1772445660","type":"text"}],"metadata":{"phone_number_id":"106540352242922"}}}],"id":"1"}],"object":"whatsapp_business_account"}"#
        );
        let hashed = minimize(body, &|_| Value::from("#")).expect("object");
        assert!(!String::from_utf8_lossy(&hashed).contains("5511987654321"));
        assert_eq!(minimize(b"[1]", &same), Err(NotAnObject));
        assert_eq!(minimize(b"not json", &same), Err(NotAnObject));
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0i64..3_000_000_000).prop_map(Value::from),
            prop_oneof![
                Just("1772445660".to_owned()),
                Just("106540352242922".to_owned()),
                Just("5511987654321".to_owned()),
                Just("ad".to_owned()),
                Just("sent".to_owned()),
                Just("marketing".to_owned()),
                Just("text".to_owned()),
                Just("system".to_owned()),
                Just(String::new()),
                "[a-z.]{1,6}",
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("object"),
                            Just("entry"),
                            Just("changes"),
                            Just("field"),
                            Just("value"),
                            Just("metadata"),
                            Just("phone_number_id"),
                            Just("messages"),
                            Just("statuses"),
                            Just("message_echoes"),
                            Just("id"),
                            Just("from"),
                            Just("to"),
                            Just("recipient_id"),
                            Just("timestamp"),
                            Just("type"),
                            Just("status"),
                            Just("referral"),
                            Just("source_type"),
                            Just("source_id"),
                            Just("ctwa_clid"),
                            Just("pricing"),
                            Just("category"),
                            Just("billable"),
                            Just("text"),
                        ],
                        inner
                    ),
                    0..5
                )
                .prop_map(|fields| Value::Object(
                    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                )),
            ]
        })
    }

    /// A body shaped like Meta's, with random values and extra fields.
    fn body() -> impl Strategy<Value = Value> {
        (json(), json(), json(), any::<bool>()).prop_map(|(message, status, extra, messages)| {
            let field = if messages {
                "messages"
            } else {
                "smb_message_echoes"
            };
            serde_json::json!({
                "object": "whatsapp_business_account",
                "entry": [{"id": "1", "changes": [{"field": field, "value": {
                    "metadata": {"phone_number_id": "106540352242922"},
                    "messages": [message],
                    "message_echoes": [status.clone()],
                    "statuses": [status],
                    "extra": extra,
                }}]}]
            })
        })
    }

    proptest! {
        /// Minimizing never changes what a body gives: events or rejection.
        #[test]
        fn a_minimized_body_gives_what_the_original_gives(
            root in prop_oneof![json(), body()],
        ) {
            let numbers = PhoneNumbers::new([("106540352242922".to_owned(), "act_1".to_owned())]);
            let original = serde_json::to_vec(&root).expect("json");
            let Ok(minimized) = minimize(&original, &same) else {
                prop_assert!(!root.is_object());
                return Ok(());
            };
            let before = format!("{:?}", normalize_webhook(&original, &numbers));
            let after = format!("{:?}", normalize_webhook(&minimized, &numbers));
            prop_assert_eq!(before, after);
            prop_assert_eq!(minimize(&minimized, &same).expect("object"), minimized);
        }
    }
}
