//! Conversions API exports (docs/SEMANTICS.md section 7): what the engine
//! decided to tell Meta about a lead or a purchase.
//!
//! Contract:
//! - One [`ConversionExport`] per applied purchase, and per conversation's
//!   first lead, of a contact; and one per lead or purchase attached to no
//!   conversation (it has no click id). A later lead of the same
//!   conversation is no export at all.
//! - Its [`ExportDecision`] is final when it is emitted: the sessionizer
//!   emits an export once its event is `capi.delay` behind the partition's
//!   watermark and never emits it again, whatever arrives later.
//! - [`ConversionExport::export_id`] is derived from the account and the
//!   source `event_id` alone, so a re-emitted export (a replay after a crash)
//!   and Meta's deduplication agree on it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::money::{Currency, Money};
use crate::time::Day;

/// The Conversions API event name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConversionName {
    /// A conversation's first qualified lead.
    LeadSubmitted,
    /// A purchase.
    Purchase,
}

impl ConversionName {
    /// The name Meta expects, also the column value.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversionName::LeadSubmitted => "LeadSubmitted",
            ConversionName::Purchase => "Purchase",
        }
    }
}

/// What the engine decided for an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportDecision {
    /// To be sent: the conversation had a click id at most 7 days before.
    Send,
    /// Its conversation's click was more than 7 days before the event.
    OutsideWindow,
    /// No click id: its conversation never carried one, or the event is
    /// attached to no conversation.
    NoClickId,
}

impl ExportDecision {
    /// The status column value of a decision that ends the export without
    /// sending it (`None` for [`ExportDecision::Send`]).
    pub fn final_status(self) -> Option<&'static str> {
        match self {
            ExportDecision::Send => None,
            ExportDecision::OutsideWindow => Some("outside_window"),
            ExportDecision::NoClickId => Some("no_click_id"),
        }
    }
}

/// The longest time from the click to a conversion Meta accepts, ms.
pub const CLICK_WINDOW_MS: i64 = 7 * 24 * 3_600_000;

/// One conversion to report, as the engine emits it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversionExport {
    /// The stable event id sent to Meta (see [`export_id`]).
    pub export_id: String,
    /// The ad account.
    pub account_id: Arc<str>,
    /// `LeadSubmitted` or `Purchase`.
    pub event_name: ConversionName,
    /// The source event's time, epoch ms.
    pub event_time: i64,
    /// The source event's day in the account's time zone.
    pub day: Day,
    /// The conversation's `ctwa_clid`, when it had one.
    pub click_id: Option<Arc<str>>,
    /// A purchase's value and currency.
    pub value: Option<Money>,
    /// The purchase's currency (the account's).
    pub currency: Option<Currency>,
    /// Send, or why not.
    pub decision: ExportDecision,
}

/// The stable export id of the source event `event_id` of `account_id`:
/// 32 hex digits of a BLAKE3 hash, the same on every replay.
pub fn export_id(account_id: &str, event_id: &str) -> String {
    let mut hasher = blake3::Hasher::new_derive_key("wafunnel capi export id v1");
    hasher.update(&(account_id.len() as u64).to_le_bytes());
    hasher.update(account_id.as_bytes());
    hasher.update(event_id.as_bytes());
    hex16(&hasher.finalize().as_bytes()[..16])
}

fn hex16(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_ids_are_stable_and_separate_accounts() {
        let id = export_id("act_1", "p-9");
        assert_eq!(id.len(), 32);
        assert_eq!(id, export_id("act_1", "p-9"));
        assert_ne!(id, export_id("act_2", "p-9"));
        // The account's length is hashed: no two splits give one id.
        assert_ne!(export_id("act_1", "1p"), export_id("act_11", "p"));
    }

    #[test]
    fn exports_round_trip_as_json() {
        let export = ConversionExport {
            export_id: export_id("act_1", "p-9"),
            account_id: Arc::from("act_1"),
            event_name: ConversionName::Purchase,
            event_time: 1_772_560_800_000,
            day: Day(20_515),
            click_id: Some(Arc::from("ARAkx")),
            value: Some(Money(499_000)),
            currency: Currency::parse("USD"),
            decision: ExportDecision::Send,
        };
        let json = serde_json::to_string(&export).expect("json");
        let back: ConversionExport = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, export);
    }
}
