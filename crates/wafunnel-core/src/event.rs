//! The event model: the canonical JSON of docs/SEMANTICS.md section 1, its
//! validation, and the validated [`Event`] the sessionizer consumes.
//!
//! Decoding is two steps. [`RawEvent`] is what a codec (JSON here, Avro in
//! `wafunnel-avro`) produced, fields present or not, borrowed where possible.
//! [`RawEvent::validate`] checks every rule and returns an [`Event`] whose
//! user id is already replaced by its keyed hash, or a [`Rejection`] whose
//! [`Rejection::code`] is the machine-readable dead-letter reason.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{Accounts, UserHasher, UserKey};
use crate::money::{Currency, Money};
use crate::time::{parse_rfc3339_ms, Day, HOUR_MS};

/// 2010-01-01T00:00:00Z: events before it are rejected.
pub const MIN_EVENT_TIME_MS: i64 = 1_262_304_000_000;
/// How far past the validation clock an event time may be.
pub const MAX_FUTURE_MS: i64 = HOUR_MS;
/// The largest purchase value or spend one event may carry: one billion
/// currency units. Sums are 64-bit in 1/10000 units, so even one table cell
/// would need over 900,000 such events in a day to overflow.
pub const MAX_MONEY: Money = Money(1_000_000_000 * crate::money::MONEY_SCALE);
/// The `date` range of spend snapshots: what every supported ClickHouse
/// `Date` holds (18.16 stops in 2105), from the same 2010 floor as event times.
pub const DATE_RANGE: (&str, &str) = ("2010-01-01", "2105-12-31");

/// The six event types, in the rank order that breaks same-millisecond ties.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A click on a click-to-WhatsApp ad that opened WhatsApp.
    AdClick,
    /// A message from the contact to the business.
    MessageIn,
    /// A message from the business to the contact.
    MessageOut,
    /// The contact became a qualified lead.
    Lead,
    /// The contact bought.
    Purchase,
    /// A spend snapshot for one ad and date.
    AdSpend,
}

impl EventType {
    /// Every type.
    pub const ALL: [EventType; 6] = [
        EventType::AdClick,
        EventType::MessageIn,
        EventType::MessageOut,
        EventType::Lead,
        EventType::Purchase,
        EventType::AdSpend,
    ];

    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::AdClick => "ad_click",
            EventType::MessageIn => "message_in",
            EventType::MessageOut => "message_out",
            EventType::Lead => "lead",
            EventType::Purchase => "purchase",
            EventType::AdSpend => "ad_spend",
        }
    }

    /// Parses a canonical name.
    pub fn parse(name: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == name)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event time as it arrived: epoch milliseconds or RFC 3339 text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawTime<'a> {
    /// Epoch milliseconds.
    Millis(i64),
    /// RFC 3339 text.
    Text(Cow<'a, str>),
}

/// An event as decoded, before validation. Every field is optional here so
/// that validation can name exactly what is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct RawEvent<'a> {
    pub event_id: Option<Cow<'a, str>>,
    pub event_type: Option<Cow<'a, str>>,
    pub account_id: Option<Cow<'a, str>>,
    pub event_time: Option<RawTime<'a>>,
    pub user_id: Option<Cow<'a, str>>,
    pub ad_id: Option<Cow<'a, str>>,
    pub adset_id: Option<Cow<'a, str>>,
    pub campaign_id: Option<Cow<'a, str>>,
    pub click_id: Option<Cow<'a, str>>,
    pub referral_ad_id: Option<Cow<'a, str>>,
    pub automated: Option<bool>,
    pub template: Option<bool>,
    pub billable: Option<bool>,
    pub value: Option<Cow<'a, str>>,
    pub currency: Option<Cow<'a, str>>,
    pub order_id: Option<Cow<'a, str>>,
    pub date: Option<Cow<'a, str>>,
    pub spend: Option<Cow<'a, str>>,
    pub impressions: Option<u64>,
    pub clicks: Option<u64>,
    pub reported_conversations: Option<u64>,
}

/// Why an input record is not a valid event. Every variant is final for that
/// record: it goes to the dead-letter topic, never back to the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not decodable at all (truncated JSON, not an object, bad Avro bytes).
    #[error("malformed record: {detail}")]
    Malformed {
        /// What the decoder said.
        detail: String,
    },
    /// A required field is absent.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong type or an invalid value.
    #[error("invalid field `{field}`: {detail}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// `type` is not one of the six event types.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// `event_time` is more than an hour past the validation clock.
    #[error("event_time {event_time} is more than 1 hour after {now}")]
    FutureTimestamp {
        /// The event's time.
        event_time: i64,
        /// The validation clock.
        now: i64,
    },
    /// `event_time` is before 2010.
    #[error("event_time {0} is before 2010-01-01")]
    TooOld(i64),
    /// A field appears twice in one record: which value is meant is unknowable.
    #[error("field `{0}` appears more than once")]
    DuplicateField(&'static str),
    /// A webhook names a business phone number no account is configured for.
    #[error("phone_number_id `{0}` is not configured for any account")]
    UnknownPhoneNumber(String),
    /// An insights row read without a Kafka timestamp has no `fetched_at`.
    #[error("insights row has no fetched_at (and no record timestamp to use instead)")]
    MissingFetchedAt,
    /// A value is well-formed but outside what can be stored or summed.
    #[error("field `{field}` out of range: {detail}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// The range.
        detail: String,
    },
    /// A purchase or spend snapshot in another currency than its account's.
    #[error("currency {got} differs from the account currency {expected}")]
    CurrencyMismatch {
        /// The account's currency.
        expected: Currency,
        /// The event's currency.
        got: Currency,
    },
}

impl Rejection {
    /// The machine-readable reason, stable across releases.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Malformed { .. } => "malformed",
            Rejection::MissingField(_) => "missing_field",
            Rejection::InvalidField { .. } => "invalid_field",
            Rejection::UnknownType(_) => "unknown_type",
            Rejection::FutureTimestamp { .. } => "future_timestamp",
            Rejection::TooOld(_) => "timestamp_before_2010",
            Rejection::CurrencyMismatch { .. } => "currency_mismatch",
            Rejection::DuplicateField(_) => "duplicate_field",
            Rejection::UnknownPhoneNumber(_) => "unknown_phone_number",
            Rejection::MissingFetchedAt => "missing_fetched_at",
            Rejection::OutOfRange { .. } => "out_of_range",
        }
    }

    /// The field at fault, where there is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Rejection::MissingField(f)
            | Rejection::InvalidField { field: f, .. }
            | Rejection::DuplicateField(f)
            | Rejection::OutOfRange { field: f, .. } => Some(f),
            Rejection::UnknownType(_) => Some("type"),
            Rejection::FutureTimestamp { .. } | Rejection::TooOld(_) => Some("event_time"),
            Rejection::CurrencyMismatch { .. } => Some("currency"),
            Rejection::UnknownPhoneNumber(_) => Some("phone_number_id"),
            Rejection::MissingFetchedAt => Some("fetched_at"),
            Rejection::Malformed { .. } => None,
        }
    }
}

/// A validated event. The raw user id is gone: only its keyed hash remains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event within an account.
    pub event_id: String,
    /// The ad account.
    pub account_id: String,
    /// When it happened, epoch milliseconds.
    pub time: i64,
    /// What happened.
    pub body: Body,
}

/// The type-specific part of an [`Event`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Body {
    AdClick {
        user: UserKey,
        ad_id: String,
        adset_id: Option<String>,
        campaign_id: Option<String>,
        click_id: Option<String>,
    },
    MessageIn {
        user: UserKey,
        referral_ad_id: Option<String>,
        click_id: Option<String>,
    },
    MessageOut {
        user: UserKey,
        automated: bool,
        template: bool,
        /// Meta charged for it (`pricing.billable`); absent when not known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        billable: Option<bool>,
    },
    Lead {
        user: UserKey,
        ad_id: Option<String>,
    },
    Purchase {
        user: UserKey,
        value: Money,
        currency: Currency,
        order_id: Option<String>,
        ad_id: Option<String>,
    },
    AdSpend {
        ad_id: String,
        adset_id: Option<String>,
        campaign_id: Option<String>,
        date: Day,
        spend: Money,
        currency: Currency,
        impressions: u64,
        clicks: u64,
        reported_conversations: u64,
    },
}

impl Event {
    /// The event's type.
    pub fn event_type(&self) -> EventType {
        match self.body {
            Body::AdClick { .. } => EventType::AdClick,
            Body::MessageIn { .. } => EventType::MessageIn,
            Body::MessageOut { .. } => EventType::MessageOut,
            Body::Lead { .. } => EventType::Lead,
            Body::Purchase { .. } => EventType::Purchase,
            Body::AdSpend { .. } => EventType::AdSpend,
        }
    }

    /// The contact's keyed hash; `None` for spend snapshots.
    pub fn user(&self) -> Option<UserKey> {
        match self.body {
            Body::AdClick { user, .. }
            | Body::MessageIn { user, .. }
            | Body::MessageOut { user, .. }
            | Body::Lead { user, .. }
            | Body::Purchase { user, .. } => Some(user),
            Body::AdSpend { .. } => None,
        }
    }

    /// The Kafka key that keeps what must be processed together on one
    /// partition: the contact for contact events, the ad for spend.
    pub fn partition_key(&self) -> String {
        let mut key = String::new();
        self.write_partition_key(&mut key);
        key
    }

    /// Appends [`Event::partition_key`] to `out`, so a caller can reuse one
    /// buffer for every record.
    pub fn write_partition_key(&self, out: &mut String) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail.
        let _ = match &self.body {
            Body::AdSpend { ad_id, .. } => {
                write!(out, "{}\u{1f}ad\u{1f}{}", self.account_id, ad_id)
            }
            _ => write!(
                out,
                "{}\u{1f}user\u{1f}{}",
                self.account_id,
                self.user().map_or(0, |u| u.0)
            ),
        };
    }
}

/// Limits on identifier lengths, in bytes.
const MAX_EVENT_ID: usize = 256;
const MAX_ACCOUNT_ID: usize = 64;
const MAX_USER_ID: usize = 128;
const MAX_OTHER_ID: usize = 256;

fn required<'a>(
    value: &'a Option<Cow<'_, str>>,
    field: &'static str,
    max: usize,
) -> Result<&'a str, Rejection> {
    match value.as_deref() {
        None => Err(Rejection::MissingField(field)),
        Some("") => Err(Rejection::InvalidField {
            field,
            detail: "must not be empty".into(),
        }),
        Some(s) if s.len() > max => Err(Rejection::InvalidField {
            field,
            detail: format!("longer than {max} bytes"),
        }),
        Some(s) => Ok(s),
    }
}

/// An optional identifier: absent, null and empty all mean "not given".
fn optional(
    value: &Option<Cow<'_, str>>,
    field: &'static str,
) -> Result<Option<String>, Rejection> {
    match value.as_deref() {
        None | Some("") => Ok(None),
        Some(s) if s.len() > MAX_OTHER_ID => Err(Rejection::InvalidField {
            field,
            detail: format!("longer than {MAX_OTHER_ID} bytes"),
        }),
        Some(s) => Ok(Some(s.to_owned())),
    }
}

fn money(value: &Option<Cow<'_, str>>, field: &'static str) -> Result<Money, Rejection> {
    let text = value.as_deref().ok_or(Rejection::MissingField(field))?;
    let money = Money::parse(text).map_err(|e| Rejection::InvalidField {
        field,
        detail: e.to_string(),
    })?;
    if money > MAX_MONEY {
        return Err(Rejection::OutOfRange {
            field,
            detail: format!("more than {MAX_MONEY}"),
        });
    }
    Ok(money)
}

impl RawEvent<'_> {
    /// Validates every rule of docs/SEMANTICS.md section 4 that needs no state.
    /// `now_ms` is the validation clock (the arrival time of the record).
    pub fn validate(
        &self,
        accounts: &Accounts,
        hasher: &UserHasher,
        now_ms: i64,
    ) -> Result<Event, Rejection> {
        let event_type = match self.event_type.as_deref() {
            None => return Err(Rejection::MissingField("type")),
            Some(name) => {
                EventType::parse(name).ok_or_else(|| Rejection::UnknownType(name.to_owned()))?
            }
        };
        let event_id = required(&self.event_id, "event_id", MAX_EVENT_ID)?;
        let account_id = required(&self.account_id, "account_id", MAX_ACCOUNT_ID)?;
        let time = match &self.event_time {
            None => return Err(Rejection::MissingField("event_time")),
            Some(RawTime::Millis(ms)) => *ms,
            Some(RawTime::Text(text)) => {
                parse_rfc3339_ms(text).ok_or_else(|| Rejection::InvalidField {
                    field: "event_time",
                    detail: "not RFC 3339 or epoch milliseconds".into(),
                })?
            }
        };
        if time < MIN_EVENT_TIME_MS {
            return Err(Rejection::TooOld(time));
        }
        if time > now_ms.saturating_add(MAX_FUTURE_MS) {
            return Err(Rejection::FutureTimestamp {
                event_time: time,
                now: now_ms,
            });
        }
        let settings = accounts.get(account_id);
        let check_currency = |value: &Option<Cow<'_, str>>| -> Result<Currency, Rejection> {
            let text = value
                .as_deref()
                .ok_or(Rejection::MissingField("currency"))?;
            let got = Currency::parse(text).ok_or_else(|| Rejection::InvalidField {
                field: "currency",
                detail: "not an ISO 4217 code".into(),
            })?;
            if got != settings.currency {
                return Err(Rejection::CurrencyMismatch {
                    expected: settings.currency,
                    got,
                });
            }
            Ok(got)
        };
        let user = || -> Result<UserKey, Rejection> {
            Ok(hasher.hash(required(&self.user_id, "user_id", MAX_USER_ID)?))
        };
        let body = match event_type {
            EventType::AdClick => Body::AdClick {
                user: user()?,
                ad_id: required(&self.ad_id, "ad_id", MAX_OTHER_ID)?.to_owned(),
                adset_id: optional(&self.adset_id, "adset_id")?,
                campaign_id: optional(&self.campaign_id, "campaign_id")?,
                click_id: optional(&self.click_id, "click_id")?,
            },
            EventType::MessageIn => Body::MessageIn {
                user: user()?,
                referral_ad_id: optional(&self.referral_ad_id, "referral_ad_id")?,
                click_id: optional(&self.click_id, "click_id")?,
            },
            EventType::MessageOut => Body::MessageOut {
                user: user()?,
                automated: self.automated.unwrap_or(false),
                template: self.template.unwrap_or(false),
                billable: self.billable,
            },
            EventType::Lead => Body::Lead {
                user: user()?,
                ad_id: optional(&self.ad_id, "ad_id")?,
            },
            EventType::Purchase => {
                let user = user()?;
                let value = money(&self.value, "value")?;
                Body::Purchase {
                    user,
                    value,
                    currency: check_currency(&self.currency)?,
                    order_id: optional(&self.order_id, "order_id")?,
                    ad_id: optional(&self.ad_id, "ad_id")?,
                }
            }
            EventType::AdSpend => {
                let ad_id = required(&self.ad_id, "ad_id", MAX_OTHER_ID)?.to_owned();
                let date_text = self
                    .date
                    .as_deref()
                    .ok_or(Rejection::MissingField("date"))?;
                let date = Day::parse(date_text).ok_or_else(|| Rejection::InvalidField {
                    field: "date",
                    detail: "not a YYYY-MM-DD date".into(),
                })?;
                let (first, last) = DATE_RANGE;
                if date < Day::parse(first).unwrap_or(date)
                    || date > Day::parse(last).unwrap_or(date)
                {
                    return Err(Rejection::OutOfRange {
                        field: "date",
                        detail: format!("not between {first} and {last}"),
                    });
                }
                let spend = money(&self.spend, "spend")?;
                Body::AdSpend {
                    ad_id,
                    adset_id: optional(&self.adset_id, "adset_id")?,
                    campaign_id: optional(&self.campaign_id, "campaign_id")?,
                    date,
                    spend,
                    currency: check_currency(&self.currency)?,
                    impressions: self.impressions.unwrap_or(0),
                    clicks: self.clicks.unwrap_or(0),
                    reported_conversations: self.reported_conversations.unwrap_or(0),
                }
            }
        };
        Ok(Event {
            event_id: event_id.to_owned(),
            account_id: account_id.to_owned(),
            time,
            body,
        })
    }
}

/// Decodes one canonical JSON event (one line or one Kafka message).
pub fn decode_json(bytes: &[u8]) -> Result<RawEvent<'_>, Rejection> {
    let field = Cell::new(None);
    let duplicate = Cell::new(None);
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = de
        .deserialize_map(RawVisitor {
            field: &field,
            duplicate: &duplicate,
        })
        .and_then(|raw| de.end().map(|()| raw));
    parsed.map_err(|e| match (duplicate.get(), field.get()) {
        (Some(field), _) => Rejection::DuplicateField(field),
        (None, Some(field)) => Rejection::InvalidField {
            field,
            detail: strip_position(&e),
        },
        (None, None) => Rejection::Malformed {
            detail: e.to_string(),
        },
    })
}

/// Decodes and validates one canonical JSON event.
pub fn parse_json_event(
    bytes: &[u8],
    accounts: &Accounts,
    hasher: &UserHasher,
    now_ms: i64,
) -> Result<Event, Rejection> {
    decode_json(bytes)?.validate(accounts, hasher, now_ms)
}

fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// Walks the JSON object once; on a type error it leaves the offending field
/// name in `field` so the rejection can name it, and a field that appears
/// twice in `duplicate` (serde would silently keep the last value).
struct RawVisitor<'c> {
    field: &'c Cell<Option<&'static str>>,
    duplicate: &'c Cell<Option<&'static str>>,
}

impl<'de> Visitor<'de> for RawVisitor<'_> {
    type Value = RawEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = RawEvent::default();
        let mut seen = 0u32;
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            macro_rules! take {
                ($slot:expr, $name:literal, $ty:ty) => {{
                    const BIT: u32 = 1u32 << field_bit($name);
                    if seen & BIT != 0 {
                        self.duplicate.set(Some($name));
                        return Err(de::Error::custom("duplicate field"));
                    }
                    seen |= BIT;
                    self.field.set(Some($name));
                    $slot = map.next_value::<Option<$ty>>()?.map(Into::into);
                    self.field.set(None);
                }};
            }
            match key.as_ref() {
                "event_id" => take!(raw.event_id, "event_id", Str<'de>),
                "type" => take!(raw.event_type, "type", Str<'de>),
                "account_id" => take!(raw.account_id, "account_id", Str<'de>),
                "user_id" => take!(raw.user_id, "user_id", Str<'de>),
                "event_time" => {
                    const BIT: u32 = 1u32 << field_bit("event_time");
                    if seen & BIT != 0 {
                        self.duplicate.set(Some("event_time"));
                        return Err(de::Error::custom("duplicate field"));
                    }
                    seen |= BIT;
                    self.field.set(Some("event_time"));
                    raw.event_time = map.next_value::<Option<TimeField<'de>>>()?.map(|t| t.0);
                    self.field.set(None);
                }
                "ad_id" => take!(raw.ad_id, "ad_id", Str<'de>),
                "adset_id" => take!(raw.adset_id, "adset_id", Str<'de>),
                "campaign_id" => take!(raw.campaign_id, "campaign_id", Str<'de>),
                "click_id" => take!(raw.click_id, "click_id", Str<'de>),
                "referral_ad_id" => take!(raw.referral_ad_id, "referral_ad_id", Str<'de>),
                "automated" => take!(raw.automated, "automated", bool),
                "template" => take!(raw.template, "template", bool),
                "billable" => take!(raw.billable, "billable", bool),
                "value" => take!(raw.value, "value", Str<'de>),
                "currency" => take!(raw.currency, "currency", Str<'de>),
                "order_id" => take!(raw.order_id, "order_id", Str<'de>),
                "date" => take!(raw.date, "date", Str<'de>),
                "spend" => take!(raw.spend, "spend", Str<'de>),
                "impressions" => take!(raw.impressions, "impressions", u64),
                "clicks" => take!(raw.clicks, "clicks", u64),
                "reported_conversations" => {
                    take!(raw.reported_conversations, "reported_conversations", u64)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(raw)
    }
}

/// The fields of the canonical JSON (docs/SEMANTICS.md section 1), each with
/// its bit in the visitor's seen set.
pub const FIELDS: [&str; 21] = [
    "event_id",
    "type",
    "account_id",
    "user_id",
    "event_time",
    "ad_id",
    "adset_id",
    "campaign_id",
    "click_id",
    "referral_ad_id",
    "automated",
    "template",
    "billable",
    "value",
    "currency",
    "order_id",
    "date",
    "spend",
    "impressions",
    "clicks",
    "reported_conversations",
];

/// The bit of a known field; evaluated at compile time for the literals above.
const fn field_bit(name: &str) -> u32 {
    let mut i = 0;
    while i < FIELDS.len() {
        if const_eq(FIELDS[i], name) {
            return i as u32;
        }
        i += 1;
    }
    panic!("not a canonical field")
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A string field, borrowed from the input unless it had escapes.
type Str<'a> = CowStr<'a>;

/// `Cow<str>` that borrows when it can (serde's blanket impl always copies).
#[derive(Debug)]
struct CowStr<'a>(Cow<'a, str>);

impl<'a> From<CowStr<'a>> for Cow<'a, str> {
    fn from(s: CowStr<'a>) -> Self {
        s.0
    }
}

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// `event_time`: an integer (epoch ms) or a string (RFC 3339).
struct TimeField<'a>(RawTime<'a>);

impl<'de> Deserialize<'de> for TimeField<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TimeField<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 string or integer epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(TimeField(RawTime::Millis(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(|v| TimeField(RawTime::Millis(v)))
                    .map_err(|_| E::custom("out of range"))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(TimeField(RawTime::Text(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TimeField(RawTime::Text(Cow::Owned(v.to_owned()))))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests;
