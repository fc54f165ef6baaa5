//! A second, deliberately naive implementation of docs/SEMANTICS.md sections 2-3:
//! all events at once, sorted, one pass per contact, tables built from the
//! final conversations. No checkpoints, retractions, eviction or partition
//! rows. The property tests require the sessionizer to agree with it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Datelike};

use super::*;

#[derive(Clone, Debug, Default)]
struct RConv {
    ad: String,
    started: i64,
    last: i64,
    clicks: u32,
    first_click: Option<i64>,
    inbound: u32,
    first_in: Option<i64>,
    outbound: u32,
    first_reply: Option<i64>,
    out_free: u32,
    out_after: u32,
    out_billable: u32,
    followups: u32,
    inbound_since_outbound: bool,
    qualified: Option<i64>,
    purchases: u32,
    revenue: i64,
    first_purchase: Option<i64>,
    click: Option<(Arc<str>, i64)>,
}

fn day_of(accounts: &Accounts, account: &str, t: i64) -> Day {
    let tz = accounts.get(account).time_zone;
    let local = DateTime::from_timestamp_millis(t)
        .expect("valid time")
        .with_timezone(&tz)
        .date_naive();
    Day(local.num_days_from_ce() - 719_163)
}

fn pick(convs: &[RConv], t: i64, ad: Option<&str>, window: i64) -> Option<usize> {
    let candidates = convs
        .iter()
        .enumerate()
        .filter(|(_, c)| ad.is_none_or(|a| c.ad == a));
    let best = candidates.max_by(|(_, a), (_, b)| {
        (a.last, a.started)
            .cmp(&(b.last, b.started))
            .then_with(|| b.ad.cmp(&a.ad))
    });
    best.filter(|(_, c)| t - c.last < window).map(|(i, _)| i)
}

type Out = (
    Vec<ConversationRow>,
    Vec<FunnelDailyRow>,
    Vec<ContactsDailyRow>,
    Vec<ConversionExport>,
);

fn take_click(conv: &mut RConv, click_id: &Option<String>, t: i64) {
    if conv.click.is_none() {
        conv.click = click_id.as_deref().map(|c| (Arc::from(c), t));
    }
}

/// The export of section 7 for a lead or purchase at `t`.
fn export(
    accounts: &Accounts,
    account: &str,
    e: &Event,
    click: Option<(Arc<str>, i64)>,
    value: Option<Money>,
) -> ConversionExport {
    let decision = match &click {
        None => ExportDecision::NoClickId,
        Some((_, at)) if e.time - at <= 7 * 24 * HOUR_MS => ExportDecision::Send,
        Some(_) => ExportDecision::OutsideWindow,
    };
    ConversionExport {
        export_id: export_id(account, &e.event_id),
        account_id: Arc::from(account),
        event_name: if value.is_some() {
            ConversionName::Purchase
        } else {
            ConversionName::LeadSubmitted
        },
        event_time: e.time,
        day: day_of(accounts, account, e.time),
        click_id: click.map(|(id, _)| id),
        value,
        currency: value.map(|_| accounts.get(account).currency),
        decision,
    }
}

pub(super) fn reference(events: &[Event], windows: Windows, accounts: &Accounts) -> Out {
    let mut seen = HashSet::new();
    let events: Vec<&Event> = events
        .iter()
        .filter(|e| seen.insert((e.account_id.clone(), e.event_id.clone())))
        .collect();

    let mut funnel: BTreeMap<(String, String, Day), FunnelCounts> = BTreeMap::new();
    let mut contacts: BTreeMap<(String, Day), ContactsCounts> = BTreeMap::new();
    let mut spend: BTreeMap<(String, String, Day), &Event> = BTreeMap::new();
    let mut hierarchy: BTreeMap<(String, String), (i64, String, String, String)> = BTreeMap::new();
    let mut by_contact: BTreeMap<(String, UserKey), Vec<&Event>> = BTreeMap::new();
    for e in &events {
        let named = match &e.body {
            Body::AdClick {
                ad_id,
                campaign_id,
                adset_id,
                ..
            }
            | Body::AdSpend {
                ad_id,
                campaign_id,
                adset_id,
                ..
            } if campaign_id.is_some() || adset_id.is_some() => Some((
                ad_id,
                campaign_id.clone().unwrap_or_default(),
                adset_id.clone().unwrap_or_default(),
            )),
            _ => None,
        };
        if let Some((ad, campaign, adset)) = named {
            let slot = hierarchy
                .entry((e.account_id.clone(), ad.clone()))
                .or_insert((i64::MIN, String::new(), String::new(), String::new()));
            if (e.time, e.event_id.as_str()) > (slot.0, slot.1.as_str()) {
                *slot = (e.time, e.event_id.clone(), campaign, adset);
            }
        }
        match (&e.body, e.user()) {
            (Body::AdSpend { ad_id, date, .. }, _) => {
                let slot = spend
                    .entry((e.account_id.clone(), ad_id.clone(), *date))
                    .or_insert(e);
                if (e.time, &e.event_id) > (slot.time, &slot.event_id) {
                    *slot = e;
                }
            }
            (_, Some(user)) => by_contact
                .entry((e.account_id.clone(), user))
                .or_default()
                .push(e),
            _ => {}
        }
    }

    let mut rows = Vec::new();
    let mut exports = Vec::new();
    for ((account, user), mut evs) in by_contact {
        evs.sort_by(|a, b| {
            (a.time, a.event_type(), &a.event_id).cmp(&(b.time, b.event_type(), &b.event_id))
        });
        let mut convs: Vec<RConv> = Vec::new();
        let mut organic_days = BTreeSet::new();
        for e in evs {
            let t = e.time;
            let day = day_of(accounts, &account, t);
            let activity = |convs: &mut Vec<RConv>, ad: &str| -> usize {
                match convs.iter().rposition(|c| c.ad == ad) {
                    Some(i) if t - convs[i].last < windows.gap_ms => {
                        convs[i].last = t;
                        i
                    }
                    _ => {
                        convs.push(RConv {
                            ad: ad.to_owned(),
                            started: t,
                            last: t,
                            ..RConv::default()
                        });
                        convs.len() - 1
                    }
                }
            };
            match &e.body {
                Body::AdClick {
                    ad_id, click_id, ..
                } => {
                    let i = activity(&mut convs, ad_id);
                    take_click(&mut convs[i], click_id, t);
                    convs[i].clicks += 1;
                    convs[i].first_click.get_or_insert(t);
                    funnel
                        .entry((account.clone(), ad_id.clone(), day))
                        .or_default()
                        .clicks += 1;
                }
                Body::MessageIn {
                    referral_ad_id,
                    click_id,
                    ..
                } => {
                    let ad = referral_ad_id.clone().or_else(|| {
                        pick(&convs, t, None, windows.gap_ms).map(|i| convs[i].ad.clone())
                    });
                    match ad {
                        Some(ad) => {
                            let i = activity(&mut convs, &ad);
                            take_click(&mut convs[i], click_id, t);
                            convs[i].inbound += 1;
                            convs[i].first_in.get_or_insert(t);
                            convs[i].inbound_since_outbound = true;
                            funnel
                                .entry((account.clone(), ad, day))
                                .or_default()
                                .inbound_messages += 1;
                        }
                        None => {
                            let c = contacts.entry((account.clone(), day)).or_default();
                            c.organic_inbound_messages += 1;
                            if organic_days.insert(day) {
                                c.organic_contacts += 1;
                            }
                        }
                    }
                }
                Body::MessageOut { billable, .. } => {
                    if let Some(i) = pick(&convs, t, None, windows.gap_ms) {
                        let c = &mut convs[i];
                        c.outbound += 1;
                        c.out_billable += u32::from(*billable == Some(true));
                        let reply = std::mem::take(&mut c.inbound_since_outbound);
                        if let Some(first_in) = c.first_in {
                            c.first_reply.get_or_insert(t);
                            if t < first_in + 72 * HOUR_MS {
                                c.out_free += 1;
                                c.followups += u32::from(!reply);
                            } else {
                                c.out_after += 1;
                            }
                        }
                    }
                }
                Body::Lead { ad_id, .. } => {
                    match pick(&convs, t, ad_id.as_deref(), windows.attribution_window_ms) {
                        Some(i) => {
                            if convs[i].qualified.is_none() {
                                convs[i].qualified = Some(t);
                                let click = convs[i].click.clone();
                                exports.push(export(accounts, &account, e, click, None));
                            }
                        }
                        None => {
                            contacts
                                .entry((account.clone(), day))
                                .or_default()
                                .unattributed_leads += 1;
                            exports.push(export(accounts, &account, e, None, None));
                        }
                    }
                }
                Body::Purchase { ad_id, value, .. } => {
                    match pick(&convs, t, ad_id.as_deref(), windows.attribution_window_ms) {
                        Some(i) => {
                            convs[i].purchases += 1;
                            convs[i].revenue += value.0;
                            convs[i].first_purchase.get_or_insert(t);
                            let click = convs[i].click.clone();
                            exports.push(export(accounts, &account, e, click, Some(*value)));
                            let c = contacts.entry((account.clone(), day)).or_default();
                            c.purchases_on_day += 1;
                            c.revenue_on_day += value.0;
                        }
                        None => {
                            contacts
                                .entry((account.clone(), day))
                                .or_default()
                                .unattributed_purchases += 1;
                            exports.push(export(accounts, &account, e, None, Some(*value)));
                            let c = contacts.entry((account.clone(), day)).or_default();
                            c.purchases_on_day += 1;
                            c.revenue_on_day += value.0;
                        }
                    }
                }
                Body::AdSpend { .. } => unreachable!(),
            }
        }
        let mut start_days = BTreeSet::new();
        let mut messaged_days = BTreeSet::new();
        for c in convs {
            let day = day_of(accounts, &account, c.started);
            if start_days.insert(day) {
                contacts
                    .entry((account.clone(), day))
                    .or_default()
                    .unique_contacts += 1;
            }
            if c.inbound > 0 && messaged_days.insert(day) {
                contacts
                    .entry((account.clone(), day))
                    .or_default()
                    .messaging_contacts += 1;
            }
            let f = funnel
                .entry((account.clone(), c.ad.clone(), day))
                .or_default();
            f.conversations_started += 1;
            f.conversations_messaged += i64::from(c.inbound > 0);
            let response = c.first_reply.zip(c.first_in).map(|(r, i)| r - i);
            if let Some(ms) = response {
                f.replied += 1;
                f.sum_first_response_ms += ms;
                if ms <= 300_000 {
                    f.replied_le_5m += 1;
                } else if ms <= 3_600_000 {
                    f.replied_le_1h += 1;
                } else if ms <= 86_400_000 {
                    f.replied_le_24h += 1;
                } else {
                    f.replied_gt_24h += 1;
                }
            }
            f.outbound_in_free_window += i64::from(c.out_free);
            f.outbound_after_free_window += i64::from(c.out_after);
            f.over_messaged_conversations += i64::from(c.followups > 2);
            f.outbound_billable += i64::from(c.out_billable);
            f.qualified_leads += i64::from(c.qualified.is_some());
            f.purchases += i64::from(c.purchases);
            f.revenue += c.revenue;
            rows.push(ConversationRow {
                account_id: Arc::from(account.as_str()),
                ad_id: Arc::from(c.ad.as_str()),
                user_hash: user,
                started_at: c.started,
                last_activity_at: c.last,
                clicks: c.clicks,
                first_click_at: c.first_click,
                inbound_messages: c.inbound,
                first_inbound_at: c.first_in,
                outbound_messages: c.outbound,
                first_reply_at: c.first_reply,
                first_response_ms: response,
                response_bucket: match (c.first_in, response) {
                    (None, _) => None,
                    (Some(_), None) => Some(ResponseBucket::None),
                    (Some(_), Some(ms)) => Some(ResponseBucket::of(ms)),
                },
                free_window_ends_at: c.first_in.map(|t| t + 72 * HOUR_MS),
                outbound_in_free_window: c.out_free,
                outbound_after_free_window: c.out_after,
                followups_in_free_window: c.followups,
                over_messaged: c.followups > 2,
                qualified_at: c.qualified,
                click_id: c.click.map(|(id, _)| id),
                purchases: c.purchases,
                revenue: Money(c.revenue),
                first_purchase_at: c.first_purchase,
                time_to_close_ms: c.first_purchase.map(|p| p - c.started),
            });
        }
    }
    rows.sort_by_key(ConversationRow::key);

    for key in spend.keys() {
        funnel.entry(key.clone()).or_default();
    }
    let mut funnel_rows: Vec<FunnelDailyRow> = funnel
        .into_iter()
        .filter_map(|((account, ad, day), c)| {
            let s = spend
                .get(&(account.clone(), ad.clone(), day))
                .map(|e| match &e.body {
                    Body::AdSpend {
                        spend,
                        impressions,
                        reported_conversations,
                        ..
                    } => (*spend, *impressions as i64, *reported_conversations as i64),
                    _ => unreachable!(),
                });
            let (spend, impressions, reported) = s.unwrap_or((Money::ZERO, 0, 0));
            if c.is_zero() && spend == Money::ZERO && impressions == 0 && reported == 0 {
                return None;
            }
            let (campaign, adset) = hierarchy
                .get(&(account.clone(), ad.clone()))
                .map_or((String::new(), String::new()), |h| {
                    (h.2.clone(), h.3.clone())
                });
            Some(FunnelDailyRow {
                account_id: Arc::from(account.as_str()),
                campaign_id: Arc::from(campaign.as_str()),
                adset_id: Arc::from(adset.as_str()),
                ad_id: Arc::from(ad.as_str()),
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
                impressions,
                reported_conversations: reported,
                cost_per_conversation: (c.conversations_started > 0)
                    .then(|| Money(spend.0 / c.conversations_started)),
                cost_per_messaged_conversation: (c.conversations_messaged > 0)
                    .then(|| Money(spend.0 / c.conversations_messaged)),
                click_to_message_rate: (c.conversations_started > 0)
                    .then(|| c.conversations_messaged as f64 / c.conversations_started as f64),
            })
        })
        .collect();
    funnel_rows.sort_by(|a, b| {
        (&a.account_id, &a.campaign_id, &a.adset_id, &a.ad_id, a.day).cmp(&(
            &b.account_id,
            &b.campaign_id,
            &b.adset_id,
            &b.ad_id,
            b.day,
        ))
    });
    let contact_rows = contacts
        .into_iter()
        .filter(|(_, c)| !c.is_zero())
        .map(|((account, day), c)| ContactsDailyRow {
            account_id: Arc::from(account.as_str()),
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
        .collect();
    exports.sort_by(|a, b| {
        (&a.account_id, a.event_time, &a.export_id).cmp(&(
            &b.account_id,
            b.event_time,
            &b.export_id,
        ))
    });
    (rows, funnel_rows, contact_rows, exports)
}
