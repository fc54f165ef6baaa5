//! The report a marketer reads: per account and campaign, what Meta
//! reports next to what really happened in WhatsApp.
//!
//! One model ([`Report`]) built from an offline run's tables here or from
//! the ClickHouse views (`warehouse`), written as text here and as HTML by
//! `html`, so both sources read alike. Ratios divide sums over the whole
//! run or range, never average daily ratios; contacts and people who
//! messaged are distinct counts over conversations, never sums.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Write};
use std::sync::Arc;

use wafunnel_core::export::{ConversionName, ExportDecision};
use wafunnel_core::money::Money;
use wafunnel_core::tables::FunnelDailyRow;
use wafunnel_core::time::Day;

use crate::offline::RunResult;

/// (account, campaign); `None` for the whole account.
type AccountCampaign = (Arc<str>, Option<Arc<str>>);

/// Sums of `funnel_daily` columns; money in 1/10000 of the currency unit.
/// Every ratio of the report divides two of these sums, never averages ratios.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Totals {
    pub spend: i64,
    pub reported: i64,
    pub clicks: i64,
    pub started: i64,
    pub messaged: i64,
    pub inbound: i64,
    /// Replied within 5 minutes, 1 hour, 24 hours, later.
    pub replied: [i64; 4],
    pub sum_response_ms: i64,
    pub out_free: i64,
    pub out_after: i64,
    pub billable: i64,
    pub over_messaged: i64,
    pub leads: i64,
    pub purchases: i64,
    pub revenue: i64,
}

impl Totals {
    /// Adds another grouping's sums.
    pub(crate) fn add(&mut self, t: &Totals) {
        for (field, v) in [
            (&mut self.spend, t.spend),
            (&mut self.reported, t.reported),
            (&mut self.clicks, t.clicks),
            (&mut self.started, t.started),
            (&mut self.messaged, t.messaged),
            (&mut self.inbound, t.inbound),
            (&mut self.billable, t.billable),
            (&mut self.sum_response_ms, t.sum_response_ms),
            (&mut self.out_free, t.out_free),
            (&mut self.out_after, t.out_after),
            (&mut self.over_messaged, t.over_messaged),
            (&mut self.leads, t.leads),
            (&mut self.purchases, t.purchases),
            (&mut self.revenue, t.revenue),
        ] {
            *field += v;
        }
        for (slot, v) in self.replied.iter_mut().zip(t.replied) {
            *slot += v;
        }
    }

    /// Conversations replied to in any time.
    pub(crate) fn replied_total(&self) -> i64 {
        self.replied.iter().sum()
    }

    /// The mean first response time of the conversations replied to.
    pub(crate) fn mean_response_ms(&self) -> Option<i64> {
        let replied = self.replied_total();
        (replied != 0).then(|| self.sum_response_ms / replied)
    }

    fn add_row(&mut self, r: &FunnelDailyRow) {
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

pub(crate) fn money(units: i64) -> String {
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

pub(crate) fn per(units: i64, count: i64) -> String {
    Money(units)
        .per(count)
        .map_or_else(|| "-".into(), |m| money(m.0))
}

pub(crate) fn pct(part: i64, whole: i64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.0}%", 100.0 * part as f64 / whole as f64)
    }
}

/// The report of one account over the run or the range.
#[derive(Debug, Default)]
pub(crate) struct AccountReport {
    /// The ad account id.
    pub account_id: String,
    /// ISO 4217 code of its money.
    pub currency: String,
    /// IANA time zone of its days.
    pub time_zone: String,
    /// One per campaign, by campaign id (`""` for ads no event named).
    pub campaigns: Vec<CampaignReport>,
    /// The sums over every campaign.
    pub total: Totals,
    /// Distinct users with a conversation started in the range.
    pub contacts: i64,
    /// Distinct users with a conversation started in the range that has an
    /// inbound message.
    pub people_messaged: i64,
    /// Inbound messages outside any ad conversation.
    pub organic_inbound: i64,
    /// Leads and sales of users without an ad conversation.
    pub unattributed: i64,
    /// What the Conversions API export decided.
    pub exports: Exports,
    /// The sums of each day with any row, in day order.
    pub days: Vec<DayReport>,
}

/// One campaign's sums.
#[derive(Debug, Default)]
pub(crate) struct CampaignReport {
    /// The campaign id (`""` for ads no event named).
    pub campaign_id: String,
    /// Its sums.
    pub totals: Totals,
    /// Distinct users with a conversation started on its ads.
    pub contacts: i64,
}

/// One day's sums of an account.
#[derive(Debug, Default)]
pub(crate) struct DayReport {
    /// The day, `YYYY-MM-DD` in the account's time zone.
    pub day: String,
    /// Its sums.
    pub totals: Totals,
}

/// Conversions API exports by decision.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Exports {
    /// Leads to send to Meta.
    pub leads_to_send: i64,
    /// Sales to send to Meta.
    pub sales_to_send: i64,
    /// Conversions outside the 7-day click window.
    pub outside_window: i64,
    /// Conversions of conversations without a click id.
    pub no_click_id: i64,
}

/// A marketer's report: the same model whether its numbers come from an
/// in-process run or from the ClickHouse views, so both read alike.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// What the numbers are of (the input, or the database and range).
    pub title: String,
    /// Lines about the input printed under the title.
    pub notes: Vec<String>,
    /// One per account, by account id.
    pub accounts: Vec<AccountReport>,
}

impl Report {
    /// The report of an offline run: every day of its tables.
    pub(crate) fn from_run(result: &RunResult) -> Report {
        let a = &result.accounting;
        let mut notes = vec![format!(
            "records {}: applied {}, duplicates {}, late {}, rejected {}",
            a.records,
            a.applied,
            a.duplicate,
            a.late,
            a.rejected_total()
        )];
        if a.ignored > 0 {
            notes.push(format!(
                "  ignored (valid, nothing to count): {}",
                a.ignored
            ));
        }
        for (code, n) in &a.rejected {
            notes.push(format!("  rejected as {code}: {n}"));
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
                .cloned()
                .unwrap_or_else(|| Arc::from(""));
            users
                .entry((c.account_id.clone(), Some(campaign)))
                .or_default()
                .insert(c.user_hash.0);
            users
                .entry((c.account_id.clone(), None))
                .or_default()
                .insert(c.user_hash.0);
        }
        let distinct = |key: &AccountCampaign| users.get(key).map_or(0, |s| s.len() as i64);
        let mut accounts: BTreeMap<Arc<str>, AccountReport> = BTreeMap::new();
        let mut campaigns: BTreeMap<Arc<str>, BTreeMap<Arc<str>, Totals>> = BTreeMap::new();
        let mut days: BTreeMap<Arc<str>, BTreeMap<Day, Totals>> = BTreeMap::new();
        for r in &funnel {
            accounts.entry(r.account_id.clone()).or_default();
            campaigns
                .entry(r.account_id.clone())
                .or_default()
                .entry(r.campaign_id.clone())
                .or_default()
                .add_row(r);
            days.entry(r.account_id.clone())
                .or_default()
                .entry(r.day)
                .or_default()
                .add_row(r);
        }
        for (id, report) in &mut accounts {
            let settings = result.accounts.get(id);
            report.account_id = id.to_string();
            report.currency = settings.currency.to_string();
            report.time_zone = settings.time_zone.to_string();
            for (campaign, totals) in campaigns.remove(id).unwrap_or_default() {
                report.total.add(&totals);
                report.campaigns.push(CampaignReport {
                    contacts: distinct(&(id.clone(), Some(campaign.clone()))),
                    campaign_id: campaign.to_string(),
                    totals,
                });
            }
            report.days = days
                .remove(id)
                .unwrap_or_default()
                .into_iter()
                .map(|(day, totals)| DayReport {
                    day: day.to_string(),
                    totals,
                })
                .collect();
            report.contacts = distinct(&(id.clone(), None));
            report.people_messaged = messaging.get(id).map_or(0, |s| s.len() as i64);
            for r in contacts_daily.iter().filter(|r| &r.account_id == id) {
                report.organic_inbound += r.organic_inbound_messages;
                report.unattributed += r.unattributed_leads + r.unattributed_purchases;
            }
            for x in exports.iter().filter(|x| &x.account_id == id) {
                let slot = match (x.decision, x.event_name) {
                    (ExportDecision::Send, ConversionName::LeadSubmitted) => {
                        &mut report.exports.leads_to_send
                    }
                    (ExportDecision::Send, ConversionName::Purchase) => {
                        &mut report.exports.sales_to_send
                    }
                    (ExportDecision::OutsideWindow, _) => &mut report.exports.outside_window,
                    (ExportDecision::NoClickId, _) => &mut report.exports.no_click_id,
                };
                *slot += 1;
            }
        }
        Report {
            title: result.source.clone(),
            notes,
            accounts: accounts.into_values().collect(),
        }
    }
}

/// What the report's words mean, printed with every report.
pub(crate) const LEGEND: [(&str, &str); 7] = [
    ("Meta says", "the conversations Meta's Ads Manager reports for the ads (its reported_conversations)"),
    ("started", "conversations a person opened with a click on the ad or a message from it; one per person and ad, a new one after 7 days without activity"),
    ("messaged", "conversations started with at least one inbound message from the person"),
    ("ghosts", "started minus messaged: clicks that opened WhatsApp but never became a message"),
    ("contacts", "distinct people with a conversation started in the range (a distinct count, not a sum of days)"),
    ("cost/conv", "spend divided by conversations started, from the sums over the range"),
    ("cost/msgd", "spend divided by conversations that messaged, from the sums over the range"),
];

/// Why each step of the reconciliation is smaller than the one before.
pub(crate) const GAPS: [(&str, &str); 3] = [
    ("Meta says -> started", "Meta counts a conversation per person per ad once per 7 days of inactivity, and often counts the click that opened WhatsApp rather than a message; it can exceed both clicks and conversations started"),
    ("started -> messaged", "the difference is the ghosts: clicks that never became a message"),
    ("messaged -> people who messaged", "one person can message in several conversations (several ads, or again after a quiet gap): people who messaged is a distinct count over the conversations of the range, never a sum of days"),
];

/// Writes the report as text.
pub(crate) fn render(report: &Report, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "wafunnel report: {}", report.title)?;
    for note in &report.notes {
        writeln!(out, "{note}")?;
    }
    for account in &report.accounts {
        render_account(account, out)?;
    }
    writeln!(out, "\nlegend:")?;
    for (word, meaning) in LEGEND {
        writeln!(out, "  {word}: {meaning}")?;
    }
    writeln!(out, "the gaps of the reconciliation:")?;
    for (step, why) in GAPS {
        writeln!(out, "  {step}: {why}")?;
    }
    Ok(())
}

/// The label of a campaign id.
pub(crate) fn campaign_label(id: &str) -> &str {
    if id.is_empty() {
        "(no campaign)"
    } else {
        id
    }
}

fn render_account(account: &AccountReport, out: &mut impl Write) -> io::Result<()> {
    writeln!(
        out,
        "\naccount {} ({}, {})",
        account.account_id, account.currency, account.time_zone
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
    for c in &account.campaigns {
        write_funnel_line(out, campaign_label(&c.campaign_id), &c.totals, c.contacts)?;
    }
    let total = &account.total;
    write_funnel_line(out, "all campaigns", total, account.contacts)?;
    // Meta counts a conversation started per person and ad, often at the
    // click: each step below is a smaller, truer number.
    writeln!(
        out,
        "  reconciliation: Meta says {} -> {} conversations started -> {} messaged ({} inbound messages) -> {} people who messaged",
        total.reported, total.started, total.messaged, total.inbound, account.people_messaged,
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
        total
            .mean_response_ms()
            .map_or_else(|| "-".into(), human_ms),
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
    writeln!(
        out,
        "  not from ads: {} organic inbound messages, {} unattributed leads and sales",
        account.organic_inbound, account.unattributed
    )?;
    let x = account.exports;
    writeln!(
        out,
        "  told to Meta (Conversions API): {} leads and {} sales to send, {} outside the 7-day click window, {} without a click id",
        x.leads_to_send, x.sales_to_send, x.outside_window, x.no_click_id,
    )
}

fn write_funnel_line(
    out: &mut impl Write,
    label: &str,
    t: &Totals,
    contacts: i64,
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

pub(crate) fn human_ms(ms: i64) -> String {
    let secs = ms / 1000;
    if secs < 120 {
        format!("{secs}s")
    } else if secs < 7200 {
        format!("{}m", secs / 60)
    } else {
        format!("{:.1}h", secs as f64 / 3600.0)
    }
}
