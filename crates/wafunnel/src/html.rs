//! The report as one self-contained HTML page: inline CSS and inline SVG
//! charts drawn here, no script and nothing fetched, so it opens offline and
//! prints as it shows.
//!
//! Every number on the page is also in the attributes of the element that
//! shows it, in this order: `data-account`, then `data-campaign` or
//! `data-day` when the number is of one campaign or day, then `data-metric`
//! and `data-value`. Counts are integers; money is a decimal with 4 digits
//! (the tables' precision); shares are whole percents as shown. A value
//! that does not exist (a cost with nothing to divide by) shows `-` and has
//! no `data-value`.

use std::fmt::Write;

use chrono::Datelike;

use wafunnel_core::money::Money;

use crate::report::{
    campaign_label, human_ms, money, per, AccountReport, Report, Totals, GAPS, LEGEND,
};

const STYLE: &str =
    "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fff}\
h1{font-size:22px}h2{font-size:18px;margin-top:36px;border-bottom:2px solid #1d2330}\
h3{font-size:15px;margin:20px 0 6px}table{border-collapse:collapse}\
td,th{padding:3px 8px;text-align:right;border-bottom:1px solid #dde}\
td:first-child,th:first-child{text-align:left}tr.total td{font-weight:600}\
.charts{display:flex;flex-wrap:wrap;gap:24px}.chart{flex:0 0 auto}\
svg text{font:12px system-ui,sans-serif;fill:#1d2330}dt{font-weight:600}dd{margin:0 0 6px 16px}\
.note{color:#555}";

/// Colours of the bars and lines: Meta's figure, ours, what was lost.
const META: &str = "#8a94a6";
const OURS: &str = "#2f6fdb";
const LOST: &str = "#e0624f";
const SERIES: [&str; 3] = ["#2f6fdb", "#2a9d6b", "#c27c0e"];

/// Writes the page to `path`.
pub(crate) fn write(report: &Report, path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    std::fs::write(path, render(report)).with_context(|| format!("cannot write {}", path.display()))
}

/// The whole page.
pub(crate) fn render(report: &Report) -> String {
    let mut page = String::new();
    page.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = write!(
        page,
        "<title>wafunnel report: {}</title><style>{STYLE}</style></head><body>",
        esc(&report.title)
    );
    let _ = write!(page, "<h1>wafunnel report: {}</h1>", esc(&report.title));
    for note in &report.notes {
        let _ = write!(page, "<p class=\"note\">{}</p>", esc(note.trim()));
    }
    for account in &report.accounts {
        account_section(&mut page, account);
    }
    page.push_str("<h2>Legend</h2><dl>");
    for (word, meaning) in LEGEND {
        let _ = write!(page, "<dt>{}</dt><dd>{}</dd>", esc(word), esc(meaning));
    }
    page.push_str("</dl><h3>The gaps of the reconciliation</h3><dl>");
    for (step, why) in GAPS {
        let _ = write!(page, "<dt>{}</dt><dd>{}</dd>", esc(step), esc(why));
    }
    page.push_str("</dl></body></html>\n");
    page
}

/// Where a number belongs: its account, and its campaign or day if any.
#[derive(Clone, Copy)]
struct Scope<'a> {
    account: &'a str,
    campaign: Option<&'a str>,
    day: Option<&'a str>,
}

impl<'a> Scope<'a> {
    fn account(account: &'a str) -> Self {
        Scope {
            account,
            campaign: None,
            day: None,
        }
    }

    /// The attributes of one number: `value` is `None` for a `-`.
    fn attrs(&self, metric: &str, value: Option<&str>) -> String {
        let mut a = format!("data-account=\"{}\"", esc(self.account));
        if let Some(c) = self.campaign {
            let _ = write!(a, " data-campaign=\"{}\"", esc(c));
        }
        if let Some(d) = self.day {
            let _ = write!(a, " data-day=\"{}\"", esc(d));
        }
        let _ = write!(a, " data-metric=\"{}\"", esc(metric));
        if let Some(v) = value {
            let _ = write!(a, " data-value=\"{}\"", esc(v));
        }
        a
    }
}

/// A money amount in 1/10000 as its exact decimal.
fn decimal4(units: i64) -> String {
    Money(units).to_string()
}

/// A cost: spend over a count, as shown and as its exact value.
fn cost(spend: i64, count: i64) -> (String, Option<String>) {
    (
        per(spend, count),
        Money(spend).per(count).map(|m| decimal4(m.0)),
    )
}

/// A whole percent, as shown; `None` when there is no whole.
fn percent(part: i64, whole: i64) -> Option<i64> {
    (whole != 0).then(|| (100.0 * part as f64 / whole as f64).round() as i64)
}

fn account_section(page: &mut String, a: &AccountReport) {
    let scope = Scope::account(&a.account_id);
    let _ = write!(
        page,
        "<section data-account=\"{}\"><h2>Account {} ({}, {})</h2>",
        esc(&a.account_id),
        esc(&a.account_id),
        esc(&a.currency),
        esc(&a.time_zone)
    );
    page.push_str(
        "<table><tr><th>campaign</th><th>spend</th><th>Meta says</th><th>clicks</th>\
         <th>started</th><th>messaged</th><th>contacts</th><th>ghosts</th>\
         <th>cost/conv</th><th>cost/msgd</th></tr>",
    );
    for c in &a.campaigns {
        let s = Scope {
            campaign: Some(&c.campaign_id),
            ..scope
        };
        funnel_row(
            page,
            s,
            campaign_label(&c.campaign_id),
            &c.totals,
            c.contacts,
            "",
        );
    }
    funnel_row(
        page,
        scope,
        "all campaigns",
        &a.total,
        a.contacts,
        " class=\"total\"",
    );
    page.push_str("</table>");

    let t = &a.total;
    page.push_str("<div class=\"charts\">");
    chart(
        page,
        "Reconciliation: from Meta's figure to people",
        &waterfall(scope, a),
    );
    let replied = t.replied_total();
    let buckets = [
        ("replied within 5 min", "replied_le_5m", t.replied[0]),
        ("within 1 hour", "replied_le_1h", t.replied[1]),
        ("within 24 hours", "replied_le_24h", t.replied[2]),
        ("after 24 hours", "replied_gt_24h", t.replied[3]),
        ("never replied", "never_replied", t.messaged - replied),
    ];
    let bars: Vec<Bar<'_>> = buckets
        .iter()
        .map(|&(label, metric, value)| Bar {
            label,
            metric,
            value,
            colour: if metric == "never_replied" {
                LOST
            } else {
                OURS
            },
            share_of: Some(t.messaged),
        })
        .collect();
    let mean = t.mean_response_ms();
    let mut response = hbars(scope, &bars);
    let _ = write!(
        response,
        "<p>Of {} conversations that messaged; mean first response <span {}>{}</span>.</p>",
        number(scope, "messaged", t.messaged),
        scope.attrs("mean_response_ms", mean.map(|m| m.to_string()).as_deref()),
        mean.map_or_else(|| "-".into(), human_ms)
    );
    chart(
        page,
        "First reply to conversations that messaged",
        &response,
    );
    let window = [
        Bar::count(
            "outbound inside the free 72h window",
            "outbound_in_free_window",
            t.out_free,
            OURS,
        ),
        Bar::count(
            "outbound after it",
            "outbound_after_free_window",
            t.out_after,
            LOST,
        ),
        Bar::count(
            "outbound billed by Meta",
            "outbound_billable",
            t.billable,
            META,
        ),
        Bar {
            label: "conversations over-messaged (>2 follow-ups)",
            metric: "over_messaged_conversations",
            value: t.over_messaged,
            colour: LOST,
            share_of: Some(t.messaged),
        },
    ];
    chart(
        page,
        "Free window use and over-messaging",
        &hbars(scope, &window),
    );
    let funnel = [
        Bar::count("clicks", "clicks", t.clicks, META),
        Bar::count("conversations started", "started", t.started, OURS),
        Bar::count("conversations that messaged", "messaged", t.messaged, OURS),
        Bar::count("qualified leads", "qualified_leads", t.leads, SERIES[1]),
        Bar::count("sales", "purchases", t.purchases, SERIES[2]),
    ];
    let mut to_sales = hbars(scope, &funnel);
    let (lead_cost, lead_value) = cost(t.spend, t.leads);
    let (sale_cost, sale_value) = cost(t.spend, t.purchases);
    let _ = write!(
        to_sales,
        "<p>Spend <span {}>{}</span>, revenue <span {}>{}</span>; cost per lead <span {}>{}</span>, per sale <span {}>{}</span>.</p>",
        scope.attrs("spend", Some(&decimal4(t.spend))),
        money(t.spend),
        scope.attrs("revenue", Some(&decimal4(t.revenue))),
        money(t.revenue),
        scope.attrs("cost_per_lead", lead_value.as_deref()),
        lead_cost,
        scope.attrs("cost_per_sale", sale_value.as_deref()),
        sale_cost,
    );
    chart(page, "The funnel to sales", &to_sales);
    page.push_str("</div>");
    costs_over_time(page, scope, a);
    let x = a.exports;
    let _ = write!(
        page,
        "<p>Not from ads: {} organic inbound messages, {} unattributed leads and sales.</p>\
         <p>Told to Meta (Conversions API): {} leads and {} sales to send, {} outside the 7-day click window, {} without a click id.</p></section>",
        number(scope, "organic_inbound_messages", a.organic_inbound),
        number(scope, "unattributed_outcomes", a.unattributed),
        number(scope, "capi_leads_to_send", x.leads_to_send),
        number(scope, "capi_sales_to_send", x.sales_to_send),
        number(scope, "capi_outside_window", x.outside_window),
        number(scope, "capi_no_click_id", x.no_click_id),
    );
}

/// A count in a `<span>` with its attributes.
fn number(scope: Scope<'_>, metric: &str, value: i64) -> String {
    format!(
        "<span {}>{value}</span>",
        scope.attrs(metric, Some(&value.to_string()))
    )
}

fn chart(page: &mut String, title: &str, body: &str) {
    let _ = write!(
        page,
        "<div class=\"chart\"><h3>{}</h3>{body}</div>",
        esc(title)
    );
}

fn funnel_row(
    page: &mut String,
    s: Scope<'_>,
    label: &str,
    t: &Totals,
    contacts: i64,
    class: &str,
) {
    let _ = write!(page, "<tr{class}><td>{}</td>", esc(label));
    let _ = write!(
        page,
        "<td {}>{}</td>",
        s.attrs("spend", Some(&decimal4(t.spend))),
        money(t.spend)
    );
    for (metric, v) in [
        ("reported_conversations", t.reported),
        ("clicks", t.clicks),
        ("started", t.started),
        ("messaged", t.messaged),
        ("contacts", contacts),
        ("ghosts", t.started - t.messaged),
    ] {
        let _ = write!(
            page,
            "<td {}>{v}</td>",
            s.attrs(metric, Some(&v.to_string()))
        );
    }
    for (metric, n) in [
        ("cost_per_conversation", t.started),
        ("cost_per_messaged_conversation", t.messaged),
    ] {
        let (shown, value) = cost(t.spend, n);
        let _ = write!(
            page,
            "<td {}>{shown}</td>",
            s.attrs(metric, value.as_deref())
        );
    }
    page.push_str("</tr>");
}

/// One horizontal bar.
struct Bar<'a> {
    label: &'a str,
    metric: &'a str,
    value: i64,
    colour: &'a str,
    /// Also show the value as a share of this.
    share_of: Option<i64>,
}

impl<'a> Bar<'a> {
    fn count(label: &'a str, metric: &'a str, value: i64, colour: &'a str) -> Self {
        Bar {
            label,
            metric,
            value,
            colour,
            share_of: None,
        }
    }
}

/// Horizontal bars scaled to the largest.
fn hbars(scope: Scope<'_>, bars: &[Bar<'_>]) -> String {
    const LABEL: i64 = 290;
    const WIDTH: i64 = 260;
    const ROW: i64 = 26;
    let max = bars.iter().map(|b| b.value).max().unwrap_or(0).max(1);
    let height = ROW * bars.len() as i64 + 8;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\">",
        LABEL + WIDTH + 110
    );
    for (i, b) in bars.iter().enumerate() {
        let y = 4 + ROW * i as i64;
        let w = (WIDTH * b.value.max(0) / max).max(1);
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\">{}</text><rect x=\"{LABEL}\" y=\"{y}\" width=\"{w}\" height=\"{}\" fill=\"{}\"/>",
            y + 15,
            esc(b.label),
            ROW - 8,
            b.colour
        );
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" {}>{}</text>",
            LABEL + w + 6,
            y + 15,
            scope.attrs(b.metric, Some(&b.value.to_string())),
            b.value
        );
        if let Some(p) = b.share_of.and_then(|whole| percent(b.value, whole)) {
            let _ = write!(
                svg,
                "<text x=\"{}\" y=\"{}\" {}>{p}%</text>",
                LABEL + w + 56,
                y + 15,
                scope.attrs(&format!("{}_percent", b.metric), Some(&p.to_string())),
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// Meta's figure, then each smaller step, with what each step loses as a
/// floating bar between them.
fn waterfall(scope: Scope<'_>, a: &AccountReport) -> String {
    const BAR: i64 = 62;
    const PLOT: i64 = 200;
    const TOP: i64 = 20;
    let t = &a.total;
    let steps = [
        ("Meta says", "reported_conversations", t.reported, META),
        ("started", "started", t.started, OURS),
        ("messaged", "messaged", t.messaged, OURS),
        (
            "people who messaged",
            "people_messaged",
            a.people_messaged,
            OURS,
        ),
    ];
    let gaps = ["gap_meta_to_started", "ghosts", "gap_messaged_to_people"];
    let max = steps.iter().map(|s| s.2).max().unwrap_or(0).max(1);
    let y_of = |v: i64| TOP + PLOT - PLOT * v.max(0) / max;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" role=\"img\">",
        BAR * 7 + 20,
        TOP + PLOT + 44
    );
    for (i, &(label, metric, value, colour)) in steps.iter().enumerate() {
        let x = 10 + BAR * 2 * i as i64;
        let y = y_of(value);
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{}\" height=\"{}\" fill=\"{colour}\"/>\
             <text x=\"{x}\" y=\"{}\" {}>{value}</text>\
             <text x=\"{x}\" y=\"{}\">{}</text>",
            BAR - 8,
            (TOP + PLOT - y).max(1),
            y - 4,
            scope.attrs(metric, Some(&value.to_string())),
            TOP + PLOT + 16,
            wrap(label, x)
        );
        if let (Some(&(_, _, next, _)), Some(gap)) = (steps.get(i + 1), gaps.get(i)) {
            // A step can also grow (Meta may report fewer than started):
            // the bar spans the two values either way, its label is signed.
            let lost = value - next;
            let (hi, lo) = (value.max(next), value.min(next));
            let gx = x + BAR;
            let _ = write!(
                svg,
                "<rect x=\"{gx}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{LOST}\" opacity=\"0.7\"/>\
                 <text x=\"{gx}\" y=\"{}\" {}>{}{}</text>",
                y_of(hi),
                BAR - 8,
                (y_of(lo) - y_of(hi)).max(1),
                TOP + PLOT + 32,
                scope.attrs(gap, Some(&lost.to_string())),
                if lost >= 0 { "\u{2212}" } else { "+" },
                lost.abs()
            );
        }
    }
    svg.push_str("</svg>");
    let _ = write!(
        svg,
        "<p>{} inbound messages in the {} conversations that messaged.</p>",
        number(scope, "inbound_messages", t.inbound),
        number(scope, "messaged", t.messaged)
    );
    svg
}

/// A cost line: its label, its metric and the count spend is divided by.
type Series = (&'static str, &'static str, fn(&Totals) -> i64);

/// Cost per conversation, lead and sale of each day, from that day's sums.
fn costs_over_time(page: &mut String, scope: Scope<'_>, a: &AccountReport) {
    const LEFT: i64 = 70;
    const WIDTH: i64 = 720;
    const PLOT: i64 = 200;
    const TOP: i64 = 10;
    let series: [Series; 3] = [
        ("cost per conversation", "cost_per_conversation", |t| {
            t.started
        }),
        ("cost per lead", "cost_per_lead", |t| t.leads),
        ("cost per sale", "cost_per_sale", |t| t.purchases),
    ];
    let values: Vec<Vec<Option<i64>>> = series
        .iter()
        .map(|(_, _, count)| {
            a.days
                .iter()
                .map(|d| Money(d.totals.spend).per(count(&d.totals)).map(|m| m.0))
                .collect()
        })
        .collect();
    let max = values
        .iter()
        .flatten()
        .flatten()
        .copied()
        .max()
        .unwrap_or(0)
        .max(1);
    // Days sit at their date: a day without rows is a gap, not skipped.
    let ordinal: Vec<i64> = a
        .days
        .iter()
        .map(|d| {
            chrono::NaiveDate::parse_from_str(&d.day, "%Y-%m-%d")
                .map_or(0, |date| i64::from(date.num_days_from_ce()))
        })
        .collect();
    let first = ordinal.first().copied().unwrap_or(0);
    let span = ordinal.last().copied().unwrap_or(0) - first;
    let x_of = |i: usize| {
        LEFT + if span == 0 {
            WIDTH / 2
        } else {
            WIDTH * (ordinal[i] - first) / span
        }
    };
    let y_of = |v: i64| TOP + PLOT - PLOT * v / max;
    let _ = write!(
        page,
        "<h3>Cost per conversation, lead and sale, per day ({})</h3>\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" role=\"img\">\
         <line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/>\
         <text x=\"0\" y=\"{}\" {}>{}</text><text x=\"0\" y=\"{}\">0</text>",
        esc(&a.currency),
        LEFT + WIDTH + 40,
        TOP + PLOT + 60,
        TOP + PLOT,
        LEFT + WIDTH,
        TOP + PLOT,
        TOP + 10,
        scope.attrs("cost_axis_max", Some(&decimal4(max))),
        money(max),
        TOP + PLOT,
    );
    for (k, ((label, metric, _), points)) in series.iter().zip(&values).enumerate() {
        let colour = SERIES[k];
        // A day without a denominator, or without rows, breaks the line
        // instead of dropping to 0.
        let mut run: Vec<String> = Vec::new();
        let mut lines = String::new();
        for (i, v) in points.iter().enumerate() {
            if i > 0 && ordinal[i] != ordinal[i - 1] + 1 {
                flush(&mut lines, &mut run, colour);
            }
            match v {
                Some(v) => run.push(format!("{},{}", x_of(i), y_of(*v))),
                None => flush(&mut lines, &mut run, colour),
            }
        }
        flush(&mut lines, &mut run, colour);
        page.push_str(&lines);
        for (i, v) in points.iter().enumerate() {
            if let Some(v) = v {
                let day = Scope {
                    day: Some(&a.days[i].day),
                    ..scope
                };
                let _ = write!(
                    page,
                    "<circle cx=\"{}\" cy=\"{}\" r=\"3\" fill=\"{colour}\" {}><title>{} {}: {}</title></circle>",
                    x_of(i),
                    y_of(*v),
                    day.attrs(metric, Some(&decimal4(*v))),
                    esc(&a.days[i].day),
                    label,
                    money(*v)
                );
            }
        }
        let _ = write!(
            page,
            "<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{colour}\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            LEFT + 200 * k as i64,
            TOP + PLOT + 40,
            LEFT + 200 * k as i64 + 16,
            TOP + PLOT + 50
        );
    }
    if let (Some(first), Some(last)) = (a.days.first(), a.days.last()) {
        let _ = write!(
            page,
            "<text x=\"{LEFT}\" y=\"{}\">{}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            TOP + PLOT + 16,
            esc(&first.day),
            LEFT + WIDTH,
            TOP + PLOT + 16,
            esc(&last.day)
        );
    }
    page.push_str("</svg>");
}

/// A label of up to two words a line, as SVG text lines under `x`.
fn wrap(label: &str, x: i64) -> String {
    let words: Vec<&str> = label.split(' ').collect();
    words
        .chunks(2)
        .enumerate()
        .map(|(i, line)| {
            let dy = if i == 0 { 0 } else { 14 };
            format!(
                "<tspan x=\"{x}\" dy=\"{dy}\">{}</tspan>",
                esc(&line.join(" "))
            )
        })
        .collect()
}

/// Draws the points collected so far as one line.
fn flush(lines: &mut String, run: &mut Vec<String>, colour: &str) {
    if run.len() > 1 {
        let _ = write!(
            lines,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"/>",
            run.join(" ")
        );
    }
    run.clear();
}

/// Escapes text for HTML content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}
