//! WhatsApp Cloud API webhook bodies (docs/SEMANTICS.md section 6.1).
//!
//! A body is judged whole first: it is rejected, with the reason of its
//! first problem, when it is not JSON, `object` is not
//! `whatsapp_business_account`, `entry` or `changes` is not a list, a
//! `messages` or `smb_message_echoes` change lacks
//! `metadata.phone_number_id` or names a number no account is configured
//! for, or an element that would become an event lacks its id, its contact
//! or a valid timestamp. Otherwise each element becomes at most one event:
//! - `messages[]` → `message_in`, whatever its type, except `system` and
//!   `request_welcome`; a referral of `source_type` `ad` gives
//!   `referral_ad_id` and `click_id` (the `ctwa_clid`);
//! - `statuses[]` with `status` `sent` → `message_out` (`template` from
//!   `pricing.category`); other statuses give nothing;
//! - `message_echoes[]` of an `smb_message_echoes` change → `message_out`;
//! - everything else gives nothing.

use std::borrow::Cow;
use std::collections::HashMap;

use serde_json::{Map, Value};
use wafunnel_core::event::{RawEvent, RawTime, Rejection};

/// The business phone numbers of the configured accounts:
/// `phone_number_id` → `account_id`.
#[derive(Clone, Debug, Default)]
pub struct PhoneNumbers {
    accounts: HashMap<String, String>,
}

impl PhoneNumbers {
    /// Numbers from `(phone_number_id, account_id)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        PhoneNumbers {
            accounts: pairs.into_iter().collect(),
        }
    }

    /// The account of a number.
    pub fn account(&self, phone_number_id: &str) -> Option<&str> {
        self.accounts.get(phone_number_id).map(String::as_str)
    }

    /// Whether no number is configured.
    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

/// `pricing.category` values of template messages.
const TEMPLATE_CATEGORIES: &[&str] = &[
    "marketing",
    "marketing_lite",
    "utility",
    "authentication",
    "authentication_international",
];

fn invalid(field: &'static str, detail: &str) -> Rejection {
    Rejection::InvalidField {
        field,
        detail: detail.to_owned(),
    }
}

fn text(v: &Value) -> Option<&str> {
    v.as_str().filter(|s| !s.is_empty())
}

/// Unix seconds as a string (Meta's form) or a number, in milliseconds.
fn timestamp_ms(v: Option<&Value>) -> Result<i64, Rejection> {
    let seconds = match v {
        None => return Err(Rejection::MissingField("timestamp")),
        Some(Value::String(s)) => s.parse::<i64>().ok(),
        Some(Value::Number(n)) => n.as_i64(),
        Some(_) => None,
    };
    seconds
        .and_then(|s| s.checked_mul(1000))
        .ok_or_else(|| invalid("timestamp", "not Unix seconds"))
}

fn owned(s: &str) -> Option<Cow<'static, str>> {
    Some(Cow::Owned(s.to_owned()))
}

/// An element that becomes an event: its id, contact, time (ms) and fields.
struct Element<'v> {
    id: String,
    contact: String,
    time: i64,
    fields: &'v Map<String, Value>,
}

/// One element that becomes an event, with what it needs checked.
fn element<'v>(item: &'v Value, contact_field: &'static str) -> Result<Element<'v>, Rejection> {
    let item = item
        .as_object()
        .ok_or_else(|| invalid("messages", "an element is not an object"))?;
    let id = item
        .get("id")
        .and_then(text)
        .ok_or(Rejection::MissingField("id"))?;
    let contact = item
        .get(contact_field)
        .and_then(text)
        .ok_or(Rejection::MissingField(contact_field))?;
    let time = timestamp_ms(item.get("timestamp"))?;
    Ok(Element {
        id: id.to_owned(),
        contact: contact.to_owned(),
        time,
        fields: item,
    })
}

fn list<'v>(value: &'v Map<String, Value>, key: &str) -> Result<&'v [Value], Rejection> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(invalid(
            match key {
                "messages" => "messages",
                "statuses" => "statuses",
                _ => "message_echoes",
            },
            "not a list",
        )),
    }
}

/// The events of one webhook body, in body order; empty when the body is
/// valid but has nothing to count. The events are raw: the caller validates
/// each (and hashes its user id) as it does any other input.
pub fn normalize_webhook(
    body: &[u8],
    numbers: &PhoneNumbers,
) -> Result<Vec<RawEvent<'static>>, Rejection> {
    let root: Value = serde_json::from_slice(body).map_err(|e| Rejection::Malformed {
        detail: format!("not JSON: {e}"),
    })?;
    let root = root.as_object().ok_or_else(|| Rejection::Malformed {
        detail: "not a JSON object".into(),
    })?;
    if root.get("object").and_then(Value::as_str) != Some("whatsapp_business_account") {
        return Err(invalid("object", "not whatsapp_business_account"));
    }
    let entries = root
        .get("entry")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("entry", "not a list"))?;
    let mut events = Vec::new();
    for entry in entries {
        let changes = entry
            .get("changes")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("changes", "not a list"))?;
        for change in changes {
            let field = change
                .get("field")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if field != "messages" && field != "smb_message_echoes" {
                continue;
            }
            let value = change
                .get("value")
                .and_then(Value::as_object)
                .ok_or_else(|| invalid("value", "not an object"))?;
            let number = value
                .get("metadata")
                .and_then(|m| m.get("phone_number_id"))
                .and_then(|n| match n {
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .ok_or(Rejection::MissingField("phone_number_id"))?;
            let account = numbers
                .account(&number)
                .ok_or(Rejection::UnknownPhoneNumber(number.clone()))?
                .to_owned();
            let base = |event_type: &'static str, id: String, user: String, time: i64| RawEvent {
                event_id: Some(Cow::Owned(id)),
                event_type: Some(Cow::Borrowed(event_type)),
                account_id: Some(Cow::Owned(account.clone())),
                event_time: Some(RawTime::Millis(time)),
                user_id: Some(Cow::Owned(user)),
                ..RawEvent::default()
            };
            if field == "smb_message_echoes" {
                for item in list(value, "message_echoes")? {
                    let e = element(item, "to")?;
                    events.push(base("message_out", e.id, e.contact, e.time));
                }
                continue;
            }
            for item in list(value, "messages")? {
                let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
                if kind == "system" || kind == "request_welcome" {
                    continue;
                }
                let e = element(item, "from")?;
                let mut event = base("message_in", e.id, e.contact, e.time);
                if let Some(referral) = e.fields.get("referral").and_then(Value::as_object) {
                    if referral.get("source_type").and_then(Value::as_str) == Some("ad") {
                        event.referral_ad_id =
                            referral.get("source_id").and_then(text).and_then(owned);
                        event.click_id = referral.get("ctwa_clid").and_then(text).and_then(owned);
                    }
                }
                events.push(event);
            }
            for item in list(value, "statuses")? {
                if item.get("status").and_then(Value::as_str) != Some("sent") {
                    continue;
                }
                let e = element(item, "recipient_id")?;
                let mut event = base("message_out", e.id, e.contact, e.time);
                let pricing = e.fields.get("pricing").and_then(Value::as_object);
                let category = pricing
                    .and_then(|p| p.get("category"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                event.template = Some(TEMPLATE_CATEGORIES.contains(&category));
                event.billable = pricing
                    .and_then(|p| p.get("billable"))
                    .and_then(Value::as_bool);
                events.push(event);
            }
        }
    }
    Ok(events)
}
