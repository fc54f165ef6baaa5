//! The report from the ClickHouse views (`wafunnel report`): the same model
//! as an offline run's, read from `funnel_daily`, `contacts_daily`,
//! `conversations` and `capi_daily` for a range of days.
//!
//! A day is a calendar day in each account's time zone, as the `day`
//! columns are. Sums come from the views; contacts and people who messaged
//! are distinct counts over the conversations that started in the range
//! (docs/SEMANTICS.md sections 3 and 8), never sums of days. The queries
//! are in `schemas/clickhouse/queries/report.sql`, where the schema tests
//! run them on ClickHouse 18.16 and on current ClickHouse.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use chrono::NaiveDate;
use clickhouse::Client;
use serde::Deserialize;
use wafunnel_core::config::Accounts;
use wafunnel_core::time::{Day, DayClock};

use crate::report::{AccountReport, CampaignReport, DayReport, Report, Totals};

/// What to report on.
#[derive(Debug)]
pub(crate) struct Range {
    /// The accounts; empty for every account with rows in the range.
    pub accounts: Vec<String>,
    /// The first day, inclusive.
    pub from: NaiveDate,
    /// The last day, inclusive.
    pub to: NaiveDate,
}

/// The `funnel_daily` sums of one account and one key (a campaign or a day).
#[derive(Debug, Deserialize, clickhouse::Row)]
struct FunnelSums {
    account_id: String,
    key: String,
    spend: i64,
    reported: i64,
    clicks: i64,
    started: i64,
    messaged: i64,
    inbound: i64,
    replied_le_5m: i64,
    replied_le_1h: i64,
    replied_le_24h: i64,
    replied_gt_24h: i64,
    sum_response_ms: i64,
    out_free: i64,
    out_after: i64,
    billable: i64,
    over_messaged: i64,
    leads: i64,
    purchases: i64,
    revenue: i64,
}

impl FunnelSums {
    fn totals(&self) -> Totals {
        Totals {
            spend: self.spend,
            reported: self.reported,
            clicks: self.clicks,
            started: self.started,
            messaged: self.messaged,
            inbound: self.inbound,
            replied: [
                self.replied_le_5m,
                self.replied_le_1h,
                self.replied_le_24h,
                self.replied_gt_24h,
            ],
            sum_response_ms: self.sum_response_ms,
            out_free: self.out_free,
            out_after: self.out_after,
            billable: self.billable,
            over_messaged: self.over_messaged,
            leads: self.leads,
            purchases: self.purchases,
            revenue: self.revenue,
        }
    }
}

/// The queries, one file shared with the schema tests.
const QUERIES: &str = include_str!("../../../schemas/clickhouse/queries/report.sql");

/// The query named `name` of [`QUERIES`], without its semicolon.
fn sql(name: &str) -> &'static str {
    let start = QUERIES
        .find(&format!("-- name: {name}\n"))
        .unwrap_or_else(|| panic!("no query {name} in queries/report.sql"));
    let text = &QUERIES[start..];
    let text = &text[text.find('\n').map_or(0, |i| i + 1)..];
    let end = text.find("\n-- name: ").unwrap_or(text.len());
    text[..end].trim().trim_end_matches(';')
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Distinct {
    key: String,
    people: i64,
    messaging: i64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct NotFromAds {
    account_id: String,
    organic: i64,
    unattributed: i64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct ExportCount {
    account_id: String,
    event_name: String,
    status: String,
    exports: i64,
}

/// `query` with its `{accounts}` condition for `range`: every account,
/// or those asked for (bound after the days).
fn with_accounts(query: &str, range: &Range) -> String {
    let accounts = if range.accounts.is_empty() {
        "1"
    } else {
        "has(?, account_id)"
    };
    query.replace("{accounts}", accounts)
}

fn bind_range(mut query: clickhouse::query::Query, range: &Range) -> clickhouse::query::Query {
    query = query
        .bind(range.from.to_string())
        .bind(range.to.to_string());
    if !range.accounts.is_empty() {
        query = query.bind(range.accounts.clone());
    }
    query
}

async fn funnel_sums(db: &Client, range: &Range, key: &str) -> anyhow::Result<Vec<FunnelSums>> {
    let sql = with_accounts(sql("funnel_sums"), range).replace("{key}", key);
    bind_range(db.query(&sql), range)
        .fetch_all::<FunnelSums>()
        .await
        .with_context(|| format!("cannot read funnel_daily by {key}"))
}

/// Distinct users of the conversations of one account that started in
/// `[start_ms, end_ms)`, per campaign (the campaign `funnel_daily` names
/// for the ad) and, with the key `None`, for the whole account.
async fn distinct_users(
    db: &Client,
    account: &str,
    start_ms: i64,
    end_ms: i64,
) -> anyhow::Result<(Vec<Distinct>, Distinct)> {
    // The ad's campaign is the one `funnel_daily` joins: the latest named.
    let per_campaign = db
        .query(sql("people_by_campaign"))
        .bind(account)
        .bind(start_ms)
        .bind(end_ms)
        .bind(account)
        .fetch_all::<Distinct>()
        .await
        .context("cannot count the contacts of conversations by campaign")?;
    let whole = db
        .query(sql("people"))
        .bind(account)
        .bind(start_ms)
        .bind(end_ms)
        .fetch_one::<Distinct>()
        .await
        .context("cannot count the contacts of conversations")?;
    Ok((per_campaign, whole))
}

/// Reads the report of `range` from the views.
pub(crate) async fn load(
    db: &Client,
    settings: &Accounts,
    database: &str,
    range: &Range,
) -> anyhow::Result<Report> {
    let by_campaign = funnel_sums(db, range, "campaign_id").await?;
    let by_day = funnel_sums(db, range, "toString(day)").await?;
    let not_from_ads = bind_range(db.query(&with_accounts(sql("not_from_ads"), range)), range)
        .fetch_all::<NotFromAds>()
        .await
        .context("cannot read contacts_daily")?;
    let exports = bind_range(db.query(&with_accounts(sql("exports"), range)), range)
        .fetch_all::<ExportCount>()
        .await
        .context("cannot read capi_daily")?;

    // Asked-for accounts are reported even without rows: a zero is an answer.
    let mut ids: BTreeSet<String> = range.accounts.iter().cloned().collect();
    ids.extend(by_campaign.iter().map(|r| r.account_id.clone()));
    let mut accounts: BTreeMap<String, AccountReport> = BTreeMap::new();
    for id in ids {
        let s = settings.get(&id);
        let clock = DayClock::new(s.time_zone);
        let start_ms = clock.day_start_ms(Day::from_date(range.from));
        let after = range
            .to
            .succ_opt()
            .context("--to is the last date there is")?;
        let end_ms = clock.day_start_ms(Day::from_date(after));
        let (per_campaign, whole) = distinct_users(db, &id, start_ms, end_ms).await?;
        let contacts: BTreeMap<String, i64> = per_campaign
            .into_iter()
            .map(|d| (d.key, d.people))
            .collect();
        let mut report = AccountReport {
            account_id: id.clone(),
            currency: s.currency.to_string(),
            time_zone: s.time_zone.to_string(),
            contacts: whole.people,
            people_messaged: whole.messaging,
            ..AccountReport::default()
        };
        for r in by_campaign.iter().filter(|r| r.account_id == id) {
            let totals = r.totals();
            report.total.add(&totals);
            report.campaigns.push(CampaignReport {
                campaign_id: r.key.clone(),
                contacts: contacts.get(&r.key).copied().unwrap_or(0),
                totals,
            });
        }
        report.days = by_day
            .iter()
            .filter(|r| r.account_id == id)
            .map(|r| DayReport {
                day: r.key.clone(),
                totals: r.totals(),
            })
            .collect();
        accounts.insert(id, report);
    }
    for r in not_from_ads {
        if let Some(a) = accounts.get_mut(&r.account_id) {
            a.organic_inbound = r.organic;
            a.unattributed = r.unattributed;
        }
    }
    for r in exports {
        let Some(a) = accounts.get_mut(&r.account_id) else {
            continue;
        };
        // Every export ends sent or rejected unless it was never to be
        // sent: both of those were to send.
        let slot = match (r.status.as_str(), r.event_name.as_str()) {
            ("outside_window", _) => &mut a.exports.outside_window,
            ("no_click_id", _) => &mut a.exports.no_click_id,
            (_, "LeadSubmitted") => &mut a.exports.leads_to_send,
            (_, "Purchase") => &mut a.exports.sales_to_send,
            _ => continue,
        };
        *slot += r.exports;
    }
    let accounts: Vec<AccountReport> = accounts.into_values().collect();
    Ok(Report {
        title: format!(
            "ClickHouse database {database}, {} to {}",
            range.from, range.to
        ),
        notes: vec![format!(
            "days in each account's time zone; {} account(s)",
            accounts.len()
        )],
        accounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_is_one_select_of_the_file() {
        for name in [
            "funnel_sums",
            "people_by_campaign",
            "people",
            "not_from_ads",
            "exports",
        ] {
            let q = sql(name);
            assert!(q.starts_with("SELECT "), "{name}: {q}");
            assert!(!q.contains(';') && !q.contains("-- name:"), "{name}: {q}");
        }
    }
}
