//! The three BI tables, materialized from partition rows exactly as the
//! ClickHouse views compute them: last row per key, summed over partitions,
//! all-zero rows dropped, the ad hierarchy and spend snapshot that win by
//! `(event_time, event_id)`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;

use crate::export::ConversionExport;
use crate::money::Money;
use crate::rows::{
    AdRow, Changes, ContactsCounts, ConversationChange, ConversationKey, ConversationRow,
    FunnelCounts, SpendRow,
};
use crate::time::Day;

/// A row of `funnel_daily` (docs/SEMANTICS.md section 3).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[allow(missing_docs)]
pub struct FunnelDailyRow {
    pub account_id: Arc<str>,
    pub campaign_id: Arc<str>,
    pub adset_id: Arc<str>,
    pub ad_id: Arc<str>,
    pub day: Day,
    pub clicks: i64,
    pub inbound_messages: i64,
    pub conversations_started: i64,
    pub conversations_messaged: i64,
    pub ghost_conversations: i64,
    pub replied: i64,
    pub replied_le_5m: i64,
    pub replied_le_1h: i64,
    pub replied_le_24h: i64,
    pub replied_gt_24h: i64,
    pub sum_first_response_ms: i64,
    pub outbound_in_free_window: i64,
    pub outbound_after_free_window: i64,
    pub over_messaged_conversations: i64,
    pub outbound_billable: i64,
    pub qualified_leads: i64,
    pub purchases: i64,
    pub revenue: Money,
    pub spend: Money,
    pub impressions: i64,
    pub reported_conversations: i64,
    pub cost_per_conversation: Option<Money>,
    pub cost_per_messaged_conversation: Option<Money>,
    pub click_to_message_rate: Option<f64>,
}

/// A row of `contacts_daily`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[allow(missing_docs)]
pub struct ContactsDailyRow {
    pub account_id: Arc<str>,
    pub day: Day,
    pub unique_contacts: i64,
    pub organic_inbound_messages: i64,
    pub organic_contacts: i64,
    pub unattributed_leads: i64,
    pub unattributed_purchases: i64,
    pub messaging_contacts: i64,
    pub purchases_on_day: i64,
    pub revenue_on_day: Money,
}

type Partitioned<K> = (K, u32);
/// (account, ad, day).
type AdDay = (Arc<str>, Arc<str>, Day);
/// (account, ad).
type AdKey = (Arc<str>, Arc<str>);

/// The tables built from the rows of any number of partitions.
#[derive(Debug, Default, Clone)]
pub struct Tables {
    conversations: BTreeMap<ConversationKey, ConversationRow>,
    funnel: HashMap<Partitioned<AdDay>, FunnelCounts>,
    contacts: HashMap<Partitioned<(Arc<str>, Day)>, ContactsCounts>,
    ads: HashMap<Partitioned<AdKey>, AdRow>,
    spend: HashMap<Partitioned<AdDay>, SpendRow>,
    /// By export id: an export emitted again (a replay) is the same one.
    exports: HashMap<String, ConversionExport>,
}

impl Tables {
    /// Applies one drain of one partition.
    pub fn apply(&mut self, changes: Changes) {
        for change in changes.conversations {
            match change {
                ConversationChange::Upsert(row) => {
                    self.conversations.insert(row.key(), row);
                }
                ConversationChange::Delete(key) => {
                    self.conversations.remove(&key);
                }
            }
        }
        for row in changes.funnel {
            self.funnel.insert(
                ((row.account_id, row.ad_id, row.day), row.partition),
                row.counts,
            );
        }
        for row in changes.contacts {
            self.contacts
                .insert(((row.account_id, row.day), row.partition), row.counts);
        }
        for row in changes.ads {
            self.ads.insert(
                ((row.account_id.clone(), row.ad_id.clone()), row.partition),
                row,
            );
        }
        for row in changes.spend {
            self.spend.insert(
                (
                    (row.account_id.clone(), row.ad_id.clone(), row.date),
                    row.partition,
                ),
                row,
            );
        }
        for export in changes.exports {
            self.exports.insert(export.export_id.clone(), export);
        }
    }

    /// The Conversions API exports, ordered by (account, event time, export id).
    pub fn exports(&self) -> Vec<ConversionExport> {
        let mut exports: Vec<ConversionExport> = self.exports.values().cloned().collect();
        exports.sort_by(|a, b| {
            (&a.account_id, a.event_time, &a.export_id).cmp(&(
                &b.account_id,
                b.event_time,
                &b.export_id,
            ))
        });
        exports
    }

    /// `conversations`, ordered by key.
    pub fn conversations(&self) -> Vec<ConversationRow> {
        self.conversations.values().cloned().collect()
    }

    /// `contacts_daily`, ordered by (account, day).
    pub fn contacts_daily(&self) -> Vec<ContactsDailyRow> {
        let mut sums: BTreeMap<(Arc<str>, Day), ContactsCounts> = BTreeMap::new();
        for ((key, _), counts) in &self.contacts {
            sums.entry(key.clone()).or_default().add_signed(counts, 1);
        }
        sums.into_iter()
            .filter(|(_, c)| !c.is_zero())
            .map(|((account_id, day), c)| ContactsDailyRow {
                account_id,
                day,
                unique_contacts: c.unique_contacts,
                organic_inbound_messages: c.organic_inbound_messages,
                organic_contacts: c.organic_contacts,
                unattributed_leads: c.unattributed_leads,
                unattributed_purchases: c.unattributed_purchases,
                messaging_contacts: c.messaging_contacts,
                purchases_on_day: c.purchases_on_day,
                revenue_on_day: Money(c.revenue_on_day),
            })
            .collect()
    }

    /// `funnel_daily`, ordered by (account, campaign, ad set, ad, day).
    pub fn funnel_daily(&self) -> Vec<FunnelDailyRow> {
        let mut sums: BTreeMap<AdDay, (FunnelCounts, Option<&SpendRow>)> = BTreeMap::new();
        for ((key, _), counts) in &self.funnel {
            sums.entry(key.clone()).or_default().0.add_signed(counts, 1);
        }
        for ((key, _), row) in &self.spend {
            let slot = &mut sums.entry(key.clone()).or_default().1;
            let wins = slot.is_none_or(|old| {
                (old.event_time, &old.event_id) < (row.event_time, &row.event_id)
            });
            if wins {
                *slot = Some(row);
            }
        }
        let mut hierarchy: HashMap<(&Arc<str>, &Arc<str>), &AdRow> = HashMap::new();
        for ((key, _), row) in &self.ads {
            let slot = hierarchy.entry((&key.0, &key.1)).or_insert(row);
            if (slot.named_at, &slot.named_by) < (row.named_at, &row.named_by) {
                *slot = row;
            }
        }
        let empty: Arc<str> = Arc::from("");
        let mut rows: Vec<FunnelDailyRow> = sums
            .into_iter()
            .filter(|(_, (c, s))| {
                !c.is_zero()
                    || s.is_some_and(|s| {
                        s.spend != Money::ZERO
                            || s.impressions != 0
                            || s.reported_conversations != 0
                    })
            })
            .map(|((account_id, ad_id, day), (c, s))| {
                let dim = hierarchy.get(&(&account_id, &ad_id));
                let spend = s.map_or(Money::ZERO, |s| s.spend);
                FunnelDailyRow {
                    campaign_id: dim.map_or_else(|| empty.clone(), |d| d.campaign_id.clone()),
                    adset_id: dim.map_or_else(|| empty.clone(), |d| d.adset_id.clone()),
                    account_id,
                    ad_id,
                    day,
                    clicks: c.clicks,
                    inbound_messages: c.inbound_messages,
                    conversations_started: c.conversations_started,
                    conversations_messaged: c.conversations_messaged,
                    ghost_conversations: c.conversations_started - c.conversations_messaged,
                    replied: c.replied,
                    replied_le_5m: c.replied_le_5m,
                    replied_le_1h: c.replied_le_1h,
                    replied_le_24h: c.replied_le_24h,
                    replied_gt_24h: c.replied_gt_24h,
                    sum_first_response_ms: c.sum_first_response_ms,
                    outbound_in_free_window: c.outbound_in_free_window,
                    outbound_after_free_window: c.outbound_after_free_window,
                    over_messaged_conversations: c.over_messaged_conversations,
                    outbound_billable: c.outbound_billable,
                    qualified_leads: c.qualified_leads,
                    purchases: c.purchases,
                    revenue: Money(c.revenue),
                    spend,
                    impressions: s.map_or(0, |s| s.impressions),
                    reported_conversations: s.map_or(0, |s| s.reported_conversations),
                    cost_per_conversation: spend.per(c.conversations_started),
                    cost_per_messaged_conversation: spend.per(c.conversations_messaged),
                    click_to_message_rate: (c.conversations_started != 0)
                        .then(|| c.conversations_messaged as f64 / c.conversations_started as f64),
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.account_id, &a.campaign_id, &a.adset_id, &a.ad_id, a.day).cmp(&(
                &b.account_id,
                &b.campaign_id,
                &b.adset_id,
                &b.ad_id,
                b.day,
            ))
        });
        rows
    }
}
