//! The rows a sessionizer emits, scoped to its partition.
//!
//! Every row is full state, not a delta: re-applying a row, or the rows of a
//! replayed batch, leaves a table as it was. A reader keeps the last row per
//! key (in ClickHouse, `ReplacingMergeTree` with the batch version) and sums
//! partial rows over partitions.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::UserKey;
use crate::export::ConversionExport;
use crate::money::{Currency, Money};
use crate::time::{Day, HOUR_MS};

/// First-response buckets, disjoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseBucket {
    /// At most 300 s.
    #[serde(rename = "le_5m")]
    Le5m,
    /// Over 5 min, at most 1 h.
    #[serde(rename = "le_1h")]
    Le1h,
    /// Over 1 h, at most 24 h.
    #[serde(rename = "le_24h")]
    Le24h,
    /// Over 24 h.
    #[serde(rename = "gt_24h")]
    Gt24h,
    /// Messaged, never answered.
    #[serde(rename = "none")]
    None,
}

impl ResponseBucket {
    /// The bucket of a first response time.
    pub fn of(response_ms: i64) -> ResponseBucket {
        if response_ms <= 300_000 {
            ResponseBucket::Le5m
        } else if response_ms <= HOUR_MS {
            ResponseBucket::Le1h
        } else if response_ms <= 24 * HOUR_MS {
            ResponseBucket::Le24h
        } else {
            ResponseBucket::Gt24h
        }
    }

    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseBucket::Le5m => "le_5m",
            ResponseBucket::Le1h => "le_1h",
            ResponseBucket::Le24h => "le_24h",
            ResponseBucket::Gt24h => "gt_24h",
            ResponseBucket::None => "none",
        }
    }
}

/// Identifies a conversation: its key and start.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConversationKey {
    /// The ad account.
    pub account_id: Arc<str>,
    /// The ad.
    pub ad_id: Arc<str>,
    /// The contact's keyed hash.
    pub user_hash: UserKey,
    /// Time of its first activity event.
    pub started_at: i64,
}

/// One conversation: the fields of docs/SEMANTICS.md section 2.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ConversationRow {
    pub account_id: Arc<str>,
    pub ad_id: Arc<str>,
    pub user_hash: UserKey,
    pub started_at: i64,
    pub last_activity_at: i64,
    pub clicks: u32,
    pub first_click_at: Option<i64>,
    pub inbound_messages: u32,
    pub first_inbound_at: Option<i64>,
    pub outbound_messages: u32,
    pub first_reply_at: Option<i64>,
    pub first_response_ms: Option<i64>,
    pub response_bucket: Option<ResponseBucket>,
    pub free_window_ends_at: Option<i64>,
    pub outbound_in_free_window: u32,
    pub outbound_after_free_window: u32,
    pub followups_in_free_window: u32,
    pub over_messaged: bool,
    pub qualified_at: Option<i64>,
    /// Meta's `ctwa_clid` of its first activity event that carried one.
    pub click_id: Option<Arc<str>>,
    pub purchases: u32,
    pub revenue: Money,
    pub first_purchase_at: Option<i64>,
    pub time_to_close_ms: Option<i64>,
}

impl ConversationRow {
    /// This row's key.
    pub fn key(&self) -> ConversationKey {
        ConversationKey {
            account_id: self.account_id.clone(),
            ad_id: self.ad_id.clone(),
            user_hash: self.user_hash,
            started_at: self.started_at,
        }
    }
}

/// A change to the conversations table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConversationChange {
    /// Insert or replace the row with this key.
    Upsert(ConversationRow),
    /// The conversation no longer exists (a late event merged or moved it).
    Delete(ConversationKey),
}

macro_rules! counters {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// Adds `other` times `sign` (+1 to add, -1 to retract).
            pub fn add_signed(&mut self, other: &$name, sign: i64) {
                $(self.$field += other.$field * sign;)*
            }

            /// Whether every counter is zero (a row that only holds retractions).
            pub fn is_zero(&self) -> bool {
                *self == $name::default()
            }
        }
    };
}

counters! {
    /// One partition's totals for an (account, ad, day): raw event counts on
    /// the day of each event, conversation metrics on the day it started.
    FunnelCounts {
        /// `ad_click` events on this day.
        clicks: i64,
        /// Attributed `message_in` events on this day.
        inbound_messages: i64,
        /// Conversations started this day.
        conversations_started: i64,
        /// Of those, with at least one inbound message.
        conversations_messaged: i64,
        /// Of those, with a reply.
        replied: i64,
        /// Replied within 5 minutes.
        replied_le_5m: i64,
        /// Replied within (5 min, 1 h].
        replied_le_1h: i64,
        /// Replied within (1 h, 24 h].
        replied_le_24h: i64,
        /// Replied after 24 h.
        replied_gt_24h: i64,
        /// Sum of first response times, ms.
        sum_first_response_ms: i64,
        /// Outbound messages inside the 72 h free window.
        outbound_in_free_window: i64,
        /// Outbound messages after it.
        outbound_after_free_window: i64,
        /// Outbound messages Meta charged for (`billable`).
        outbound_billable: i64,
        /// Conversations with more than 2 follow-ups in the free window.
        over_messaged_conversations: i64,
        /// Conversations that became a qualified lead.
        qualified_leads: i64,
        /// Attributed purchases.
        purchases: i64,
        /// Their value, in 1/10000 of the account currency.
        revenue: i64,
    }
}

counters! {
    /// One partition's totals for an (account, day).
    ContactsCounts {
        /// Distinct contacts with a conversation started this day.
        unique_contacts: i64,
        /// `message_in` attributed to no ad.
        organic_inbound_messages: i64,
        /// Distinct contacts who sent such a message this day.
        organic_contacts: i64,
        /// Leads attributed to no conversation.
        unattributed_leads: i64,
        /// Purchases attributed to no conversation.
        unattributed_purchases: i64,
        /// Distinct contacts with a conversation started this day that has
        /// an inbound message.
        messaging_contacts: i64,
        /// Purchases made this day, attributed or not (by purchase day,
        /// where the funnel counts them on the conversation's start day).
        purchases_on_day: i64,
        /// Their value, in 1/10000 of the account currency.
        revenue_on_day: i64,
    }
}

/// One partition's funnel totals for (account, ad, day).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct FunnelPartialRow {
    pub account_id: Arc<str>,
    pub ad_id: Arc<str>,
    pub day: Day,
    pub partition: u32,
    pub counts: FunnelCounts,
}

/// One partition's contact totals for (account, day).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ContactsPartialRow {
    pub account_id: Arc<str>,
    pub day: Day,
    pub partition: u32,
    pub counts: ContactsCounts,
}

/// The campaign and ad set an ad belongs to, as last named on one partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct AdRow {
    pub account_id: Arc<str>,
    pub ad_id: Arc<str>,
    pub partition: u32,
    pub campaign_id: Arc<str>,
    pub adset_id: Arc<str>,
    /// `event_time` of the naming event.
    pub named_at: i64,
    /// `event_id` of the naming event (breaks ties).
    pub named_by: Arc<str>,
}

/// The winning spend snapshot for (account, ad, date).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct SpendRow {
    pub account_id: Arc<str>,
    pub ad_id: Arc<str>,
    pub date: Day,
    pub partition: u32,
    pub event_id: Arc<str>,
    pub event_time: i64,
    pub spend: Money,
    pub currency: Currency,
    pub impressions: i64,
    pub clicks: i64,
    pub reported_conversations: i64,
}

/// Everything that changed since the last drain, as full-state rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Conversation upserts and deletes, in the order to apply them.
    pub conversations: Vec<ConversationChange>,
    /// Funnel totals that changed.
    pub funnel: Vec<FunnelPartialRow>,
    /// Contact totals that changed.
    pub contacts: Vec<ContactsPartialRow>,
    /// Ad hierarchy entries that changed.
    pub ads: Vec<AdRow>,
    /// Spend snapshots that won.
    pub spend: Vec<SpendRow>,
    /// Conversions API exports emitted ([`crate::export`]).
    pub exports: Vec<ConversionExport>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.conversations.is_empty()
            && self.funnel.is_empty()
            && self.contacts.is_empty()
            && self.ads.is_empty()
            && self.spend.is_empty()
            && self.exports.is_empty()
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.conversations.len()
            + self.funnel.len()
            + self.contacts.len()
            + self.ads.len()
            + self.spend.len()
            + self.exports.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_bucket_edges() {
        assert_eq!(ResponseBucket::of(0), ResponseBucket::Le5m);
        assert_eq!(ResponseBucket::of(300_000), ResponseBucket::Le5m);
        assert_eq!(ResponseBucket::of(300_001), ResponseBucket::Le1h);
        assert_eq!(ResponseBucket::of(HOUR_MS), ResponseBucket::Le1h);
        assert_eq!(ResponseBucket::of(HOUR_MS + 1), ResponseBucket::Le24h);
        assert_eq!(ResponseBucket::of(24 * HOUR_MS), ResponseBucket::Le24h);
        assert_eq!(ResponseBucket::of(24 * HOUR_MS + 1), ResponseBucket::Gt24h);
    }

    #[test]
    fn bucket_names_are_the_column_values() {
        for b in [
            ResponseBucket::Le5m,
            ResponseBucket::Le1h,
            ResponseBucket::Le24h,
            ResponseBucket::Gt24h,
            ResponseBucket::None,
        ] {
            assert_eq!(
                serde_json::to_string(&b).expect("json"),
                format!("\"{}\"", b.as_str())
            );
        }
    }

    #[test]
    fn counters_add_and_retract() {
        let mut total = FunnelCounts::default();
        let one = FunnelCounts {
            clicks: 2,
            revenue: 499_000,
            ..Default::default()
        };
        total.add_signed(&one, 1);
        total.add_signed(&one, 1);
        assert_eq!(total.clicks, 4);
        total.add_signed(&one, -1);
        total.add_signed(&one, -1);
        assert!(total.is_zero());
    }
}
