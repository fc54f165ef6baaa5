//! The text report a marketer reads: per account and campaign, what Meta
//! reports next to what really happened in WhatsApp.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::sync::Arc;

use wafunnel_core::export::{ConversionName, ExportDecision};
use wafunnel_core::money::Money;
use wafunnel_core::tables::FunnelDailyRow;

use crate::offline::RunResult;

/// (account, campaign); `None` for the whole account.
type AccountCampaign = (Arc<str>, Option<Arc<str>>);

#[derive(Default)]
struct Totals {
    spend: i64,
    reported: i64,
    clicks: i64,
    started: i64,
    messaged: i64,
    inbound: i64,
    contacts: usize,
    replied: [i64; 4],
    sum_response_ms: i64,
    out_free: i64,
    out_after: i64,
    billable: i64,
    over_messaged: i64,
    leads: i64,
    purchases: i64,
    revenue: i64,
}

impl Totals {
    fn add(&mut self, r: &FunnelDailyRow) {
        self.spend += r.spend.0;
        self.reported += r.reported_conversations;
        self.clicks += r.clicks;
        self.started += r.conversations_started;
        self.messaged += r.conversations_messaged;
        self.inbound += r.inbound_messages;
        for (slot, v) in self.replied.iter_mut().zip([
            r.replied_le_5m,
            r.replied_le_1h,
            r.replied_le_24h,
            r.replied_gt_24h,
        ]) {
            *slot += v;
        }
        self.sum_response_ms += r.sum_first_response_ms;
        self.out_free += r.outbound_in_free_window;
        self.out_after += r.outbound_after_free_window;
        self.billable += r.outbound_billable;
        self.over_messaged += r.over_messaged_conversations;
        self.leads += r.qualified_leads;
        self.purchases += r.purchases;
        self.revenue += r.revenue.0;
    }
}

fn money(units: i64) -> String {
    // Whole cents for reading; the tables keep 1/10000.
    let cents = (units + 50).div_euclid(100);
    let whole = cents / 100;
    let mut digits = whole.to_string();
    let mut grouped = String::new();
    while digits.len() > 3 {
        let tail = digits.split_off(digits.len() - 3);
        grouped = format!(",{tail}{grouped}");
    }
    format!("{digits}{grouped}.{:02}", cents % 100)
}

fn per(units: i64, count: i64) -> String {
    Money(units)
        .per(count)
        .map_or_else(|| "-".into(), |m| money(m.0))
}

fn pct(part: i64, whole: i64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.0}%", 100.0 * part as f64 / whole as f64)
    }
}

/// Writes the report.
pub(crate) fn render(result: &RunResult, out: &mut impl Write) -> io::Result<()> {
    let a = &result.accounting;
    writeln!(out, "wafunnel report: {}", result.source)?;
    writeln!(
        out,
        "records {}: applied {}, duplicates {}, late {}, rejected {}",
        a.records,
        a.applied,
        a.duplicate,
        a.late,
        a.rejected_total()
    )?;
    if a.ignored > 0 {
        writeln!(out, "  ignored (valid, nothing to count): {}", a.ignored)?;
    }
    for (code, n) in &a.rejected {
        writeln!(out, "  rejected as {code}: {n}")?;
    }
    let funnel = result.tables.funnel_daily();
    let conversations = result.tables.conversations();
    let contacts_daily = result.tables.contacts_daily();
    let exports = result.tables.exports();

    // Unique contacts are not additive: count distinct users per grouping.
    let mut campaign_of: HashMap<(Arc<str>, Arc<str>), Arc<str>> = HashMap::new();
    for r in &funnel {
        campaign_of.insert(
            (r.account_id.clone(), r.ad_id.clone()),
            r.campaign_id.clone(),
        );
    }
    let mut users: BTreeMap<AccountCampaign, BTreeSet<u128>> = BTreeMap::new();
    let mut messaging: BTreeMap<Arc<str>, BTreeSet<u128>> = BTreeMap::new();
    for c in &conversations {
        if c.inbound_messages > 0 {
            messaging
                .entry(c.account_id.clone())
                .or_default()
                .insert(c.user_hash.0);
        }
        let campaign = campaign_of
            .get(&(c.account_id.clone(), c.ad_id.clone()))
            .cloned();
        users
            .entry((c.account_id.clone(), campaign))
            .or_default()
            .insert(c.user_hash.0);
        users
            .entry((c.account_id.clone(), None))
            .or_default()
            .insert(c.user_hash.0);
    }
    let mut accounts: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Totals>> = BTreeMap::new();
    for r in &funnel {
        accounts
            .entry(r.account_id.clone())
            .or_default()
            .entry(r.campaign_id.clone())
            .or_default()
            .add(r);
    }
    for (account, campaigns) in &accounts {
        let settings = result.accounts.get(account);
        writeln!(
            out,
            "\naccount {account} ({}, {})",
            settings.currency, settings.time_zone
        )?;
        writeln!(
            out,
            "  {:<14} {:>12} {:>10} {:>8} {:>8} {:>9} {:>9} {:>7} {:>10} {:>10}",
            "campaign",
            "spend",
            "Meta says",
            "clicks",
            "started",
            "messaged",
            "contacts",
            "ghosts",
            "cost/conv",
            "cost/msgd"
        )?;
        let mut total = Totals::default();
        let rows: Vec<(String, &Totals, usize)> = campaigns
            .iter()
            .map(|(campaign, t)| {
                let key = (account.clone(), Some(campaign.clone()));
                let label = if campaign.is_empty() {
                    "(no campaign)".to_owned()
                } else {
                    campaign.to_string()
                };
                (label, t, users.get(&key).map_or(0, BTreeSet::len))
            })
            .collect();
        for (label, t, contacts) in &rows {
            write_funnel_line(out, label, t, *contacts)?;
            for (field, v) in [
                (&mut total.spend, t.spend),
                (&mut total.reported, t.reported),
                (&mut total.clicks, t.clicks),
                (&mut total.started, t.started),
                (&mut total.messaged, t.messaged),
                (&mut total.inbound, t.inbound),
                (&mut total.billable, t.billable),
                (&mut total.sum_response_ms, t.sum_response_ms),
                (&mut total.out_free, t.out_free),
                (&mut total.out_after, t.out_after),
                (&mut total.over_messaged, t.over_messaged),
                (&mut total.leads, t.leads),
                (&mut total.purchases, t.purchases),
                (&mut total.revenue, t.revenue),
            ] {
                *field += v;
            }
            for (slot, v) in total.replied.iter_mut().zip(t.replied) {
                *slot += v;
            }
        }
        total.contacts = users.get(&(account.clone(), None)).map_or(0, BTreeSet::len);
        write_funnel_line(out, "all campaigns", &total, total.contacts)?;
        // Meta counts a conversation started per person and ad, often at the
        // click: each step below is a smaller, truer number.
        writeln!(
            out,
            "  reconciliation: Meta says {} -> {} conversations started -> {} messaged ({} inbound messages) -> {} people who messaged",
            total.reported,
            total.started,
            total.messaged,
            total.inbound,
            messaging.get(account).map_or(0, BTreeSet::len),
        )?;

        writeln!(
            out,
            "  first reply to conversations that messaged ({}):",
            total.messaged
        )?;
        let replied: i64 = total.replied.iter().sum();
        writeln!(
            out,
            "    <=5m {} | <=1h {} | <=24h {} | >24h {} | never {} | mean {}",
            pct(total.replied[0], total.messaged),
            pct(total.replied[1], total.messaged),
            pct(total.replied[2], total.messaged),
            pct(total.replied[3], total.messaged),
            pct(total.messaged - replied, total.messaged),
            if replied == 0 {
                "-".into()
            } else {
                human_ms(total.sum_response_ms / replied)
            },
        )?;
        writeln!(
            out,
            "  free 72h window: {} outbound inside, {} after it; {} conversations over-messaged (>2 follow-ups); {} outbound billed by Meta",
            total.out_free, total.out_after, total.over_messaged, total.billable
        )?;
        writeln!(
            out,
            "  outcomes: {} qualified leads, {} sales, revenue {}; cost per lead {}, per sale {}; return on spend {}",
            total.leads,
            total.purchases,
            money(total.revenue),
            per(total.spend, total.leads),
            per(total.spend, total.purchases),
            if total.spend == 0 { "-".into() } else { format!("{:.2}x", total.revenue as f64 / total.spend as f64) },
        )?;
        let organic: i64 = contacts_daily
            .iter()
            .filter(|r| &r.account_id == account)
            .map(|r| r.organic_inbound_messages)
            .sum();
        let unattributed: i64 = contacts_daily
            .iter()
            .filter(|r| &r.account_id == account)
            .map(|r| r.unattributed_leads + r.unattributed_purchases)
            .sum();
        writeln!(out, "  not from ads: {organic} organic inbound messages, {unattributed} unattributed leads and sales")?;
        let exports: Vec<_> = exports
            .iter()
            .filter(|x| &x.account_id == account)
            .collect();
        let count = |name: Option<ConversionName>, decision: ExportDecision| {
            exports
                .iter()
                .filter(|x| x.decision == decision && name.is_none_or(|n| x.event_name == n))
                .count()
        };
        writeln!(
            out,
            "  told to Meta (Conversions API): {} leads and {} sales to send, {} outside the 7-day click window, {} without a click id",
            count(Some(ConversionName::LeadSubmitted), ExportDecision::Send),
            count(Some(ConversionName::Purchase), ExportDecision::Send),
            count(None, ExportDecision::OutsideWindow),
            count(None, ExportDecision::NoClickId),
        )?;
    }
    Ok(())
}

fn write_funnel_line(
    out: &mut impl Write,
    label: &str,
    t: &Totals,
    contacts: usize,
) -> io::Result<()> {
    writeln!(
        out,
        "  {:<14} {:>12} {:>10} {:>8} {:>8} {:>9} {:>9} {:>7} {:>10} {:>10}",
        label,
        money(t.spend),
        t.reported,
        t.clicks,
        t.started,
        t.messaged,
        contacts,
        t.started - t.messaged,
        per(t.spend, t.started),
        per(t.spend, t.messaged),
    )
}

fn human_ms(ms: i64) -> String {
    let secs = ms / 1000;
    if secs < 120 {
        format!("{secs}s")
    } else if secs < 7200 {
        format!("{}m", secs / 60)
    } else {
        format!("{:.1}h", secs as f64 / 3600.0)
    }
}
