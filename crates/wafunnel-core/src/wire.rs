//! The binary form of the internal topic's records: a validated [`Event`]
//! (or the marker of a valid input record with nothing to count) with the
//! raw record it came from, in one compact, versioned payload.
//!
//! Contract:
//! - The first byte is the format version ([`VERSION`]). A record of
//!   another version is refused with [`WireError::UnknownVersion`], never
//!   guessed at. JSON records (the form before this one, which begins with
//!   `{`) are told apart by that byte and decoded by the reader that knows
//!   their headers.
//! - `decode(encode(record)) == record` for every event, every source and
//!   the marker; a record is decoded exactly to its last byte (truncated or
//!   trailing bytes are errors).
//! - The source (raw topic, partition, offset) travels inside the payload,
//!   so a reader needs no header to account for a record.
//! - Layout of version 1: version, kind (0 event, 1 ignored marker), source
//!   topic (length-prefixed UTF-8), partition and offset (LEB128 varints,
//!   the offset zigzag), then for an event: its type's rank, `event_id`,
//!   `account_id`, `time` (zigzag varint) and the body's fields in
//!   declaration order. Strings are a varint length and their bytes; an
//!   optional string is its length plus one, 0 meaning absent; a user key
//!   is 16 bytes little-endian; money and days are zigzag varints; a
//!   currency its 3 letters; counts varints; `message_out`'s flags one
//!   byte (bit 0 automated, 1 template, 2 billable known, 3 billable).
//!
//! Pure: encoding appends to a caller's buffer, so a caller that reuses one
//! allocates nothing per record.

use crate::config::UserKey;
use crate::event::{Body, Event, EventType};
use crate::money::{Currency, Money};
use crate::time::Day;

/// The format version this build writes and reads.
pub const VERSION: u8 = 1;

const KIND_EVENT: u8 = 0;
const KIND_IGNORED: u8 = 1;

const AUTOMATED: u8 = 1;
const TEMPLATE: u8 = 1 << 1;
const BILLABLE_KNOWN: u8 = 1 << 2;
const BILLABLE: u8 = 1 << 3;

/// The raw record an internal record was decided from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Source<'a> {
    /// The raw topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: u32,
    /// The record's offset there.
    pub offset: i64,
}

/// What an internal record carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    /// A validated event.
    Event(Event),
    /// A valid input record with nothing to count (a body of read
    /// receipts): it is counted once, as ignored.
    Ignored,
}

/// One decoded internal record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Where it came from.
    pub source: Source<'a>,
    /// What it carries.
    pub content: Content,
}

/// Why bytes are not an internal record of this build's format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// No bytes at all.
    #[error("empty internal record")]
    Empty,
    /// Written by another version of the format.
    #[error("internal record format version {0}, this build reads version {VERSION}")]
    UnknownVersion(u8),
    /// The bytes end inside a field.
    #[error("internal record truncated in `{0}`")]
    Truncated(&'static str),
    /// A field's bytes are not a value of its type.
    #[error("internal record has an invalid `{0}`")]
    Invalid(&'static str),
    /// Bytes left after the last field.
    #[error("internal record has {0} bytes after its last field")]
    Trailing(usize),
}

/// Appends the record of `event`, decided from `source`, to `out`.
pub fn encode_event(source: &Source<'_>, event: &Event, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.push(KIND_EVENT);
    put_source(source, out);
    out.push(event.event_type() as u8);
    put_str(&event.event_id, out);
    put_str(&event.account_id, out);
    put_i64(event.time, out);
    match &event.body {
        Body::AdClick {
            user,
            ad_id,
            adset_id,
            campaign_id,
            click_id,
        } => {
            put_user(*user, out);
            put_str(ad_id, out);
            put_opt(adset_id, out);
            put_opt(campaign_id, out);
            put_opt(click_id, out);
        }
        Body::MessageIn {
            user,
            referral_ad_id,
            click_id,
        } => {
            put_user(*user, out);
            put_opt(referral_ad_id, out);
            put_opt(click_id, out);
        }
        Body::MessageOut {
            user,
            automated,
            template,
            billable,
        } => {
            put_user(*user, out);
            let mut flags = 0;
            if *automated {
                flags |= AUTOMATED;
            }
            if *template {
                flags |= TEMPLATE;
            }
            match billable {
                None => {}
                Some(false) => flags |= BILLABLE_KNOWN,
                Some(true) => flags |= BILLABLE_KNOWN | BILLABLE,
            }
            out.push(flags);
        }
        Body::Lead { user, ad_id } => {
            put_user(*user, out);
            put_opt(ad_id, out);
        }
        Body::Purchase {
            user,
            value,
            currency,
            order_id,
            ad_id,
        } => {
            put_user(*user, out);
            put_i64(value.0, out);
            out.extend_from_slice(currency.as_str().as_bytes());
            put_opt(order_id, out);
            put_opt(ad_id, out);
        }
        Body::AdSpend {
            ad_id,
            adset_id,
            campaign_id,
            date,
            spend,
            currency,
            impressions,
            clicks,
            reported_conversations,
        } => {
            put_str(ad_id, out);
            put_opt(adset_id, out);
            put_opt(campaign_id, out);
            put_i64(i64::from(date.0), out);
            put_i64(spend.0, out);
            out.extend_from_slice(currency.as_str().as_bytes());
            put_u64(*impressions, out);
            put_u64(*clicks, out);
            put_u64(*reported_conversations, out);
        }
    }
}

/// Appends the marker of a valid record from `source` with nothing to count.
pub fn encode_ignored(source: &Source<'_>, out: &mut Vec<u8>) {
    out.push(VERSION);
    out.push(KIND_IGNORED);
    put_source(source, out);
}

/// Decodes one record of this build's format.
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, WireError> {
    let (&version, rest) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let mut r = Reader { bytes: rest };
    let kind = r.byte("kind")?;
    let source = Source {
        topic: r.str("source topic")?,
        partition: u32::try_from(r.u64("source partition")?)
            .map_err(|_| WireError::Invalid("source partition"))?,
        offset: r.i64("source offset")?,
    };
    let content = match kind {
        KIND_EVENT => Content::Event(r.event()?),
        KIND_IGNORED => Content::Ignored,
        _ => return Err(WireError::Invalid("kind")),
    };
    if !r.bytes.is_empty() {
        return Err(WireError::Trailing(r.bytes.len()));
    }
    Ok(Record { source, content })
}

fn put_source(source: &Source<'_>, out: &mut Vec<u8>) {
    put_str(source.topic, out);
    put_u64(u64::from(source.partition), out);
    put_i64(source.offset, out);
}

fn put_u64(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_i64(v: i64, out: &mut Vec<u8>) {
    put_u64(((v << 1) ^ (v >> 63)) as u64, out);
}

fn put_str(s: &str, out: &mut Vec<u8>) {
    put_u64(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn put_opt(s: &Option<String>, out: &mut Vec<u8>) {
    match s {
        None => out.push(0),
        Some(s) => {
            put_u64(s.len() as u64 + 1, out);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn put_user(user: UserKey, out: &mut Vec<u8>) {
    out.extend_from_slice(&user.0.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Truncated(field));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn byte(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.take(1, field)?[0])
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte(field)?;
            let bits = u64::from(b & 0x7f);
            // The tenth byte may only hold the top bit of a u64.
            if shift == 63 && bits > 1 {
                return Err(WireError::Invalid(field));
            }
            value |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Invalid(field))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, WireError> {
        let v = self.u64(field)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    fn len(&mut self, field: &'static str) -> Result<usize, WireError> {
        usize::try_from(self.u64(field)?).map_err(|_| WireError::Invalid(field))
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let n = self.len(field)?;
        std::str::from_utf8(self.take(n, field)?).map_err(|_| WireError::Invalid(field))
    }

    fn string(&mut self, field: &'static str) -> Result<String, WireError> {
        self.str(field).map(str::to_owned)
    }

    fn opt(&mut self, field: &'static str) -> Result<Option<String>, WireError> {
        match self.len(field)? {
            0 => Ok(None),
            n => {
                let bytes = self.take(n - 1, field)?;
                std::str::from_utf8(bytes)
                    .map(|s| Some(s.to_owned()))
                    .map_err(|_| WireError::Invalid(field))
            }
        }
    }

    fn user(&mut self) -> Result<UserKey, WireError> {
        let mut le = [0u8; 16];
        le.copy_from_slice(self.take(16, "user")?);
        Ok(UserKey(u128::from_le_bytes(le)))
    }

    fn currency(&mut self) -> Result<Currency, WireError> {
        let bytes = self.take(3, "currency")?;
        std::str::from_utf8(bytes)
            .ok()
            .and_then(Currency::parse)
            .ok_or(WireError::Invalid("currency"))
    }

    fn day(&mut self) -> Result<Day, WireError> {
        i32::try_from(self.i64("date")?)
            .map(Day)
            .map_err(|_| WireError::Invalid("date"))
    }

    fn event(&mut self) -> Result<Event, WireError> {
        let rank = self.byte("type")?;
        let event_type = *EventType::ALL
            .get(usize::from(rank))
            .ok_or(WireError::Invalid("type"))?;
        let event_id = self.string("event_id")?;
        let account_id = self.string("account_id")?;
        let time = self.i64("time")?;
        let body = match event_type {
            EventType::AdClick => Body::AdClick {
                user: self.user()?,
                ad_id: self.string("ad_id")?,
                adset_id: self.opt("adset_id")?,
                campaign_id: self.opt("campaign_id")?,
                click_id: self.opt("click_id")?,
            },
            EventType::MessageIn => Body::MessageIn {
                user: self.user()?,
                referral_ad_id: self.opt("referral_ad_id")?,
                click_id: self.opt("click_id")?,
            },
            EventType::MessageOut => {
                let user = self.user()?;
                let flags = self.byte("flags")?;
                if flags & !(AUTOMATED | TEMPLATE | BILLABLE_KNOWN | BILLABLE) != 0
                    || flags & (BILLABLE_KNOWN | BILLABLE) == BILLABLE
                {
                    return Err(WireError::Invalid("flags"));
                }
                Body::MessageOut {
                    user,
                    automated: flags & AUTOMATED != 0,
                    template: flags & TEMPLATE != 0,
                    billable: (flags & BILLABLE_KNOWN != 0).then_some(flags & BILLABLE != 0),
                }
            }
            EventType::Lead => Body::Lead {
                user: self.user()?,
                ad_id: self.opt("ad_id")?,
            },
            EventType::Purchase => Body::Purchase {
                user: self.user()?,
                value: Money(self.i64("value")?),
                currency: self.currency()?,
                order_id: self.opt("order_id")?,
                ad_id: self.opt("ad_id")?,
            },
            EventType::AdSpend => Body::AdSpend {
                ad_id: self.string("ad_id")?,
                adset_id: self.opt("adset_id")?,
                campaign_id: self.opt("campaign_id")?,
                date: self.day()?,
                spend: Money(self.i64("spend")?),
                currency: self.currency()?,
                impressions: self.u64("impressions")?,
                clicks: self.u64("clicks")?,
                reported_conversations: self.u64("reported_conversations")?,
            },
        };
        Ok(Event {
            event_id,
            account_id,
            time,
            body,
        })
    }
}

#[cfg(test)]
mod tests;
