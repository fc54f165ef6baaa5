//! Canonical JSON of a generated event, and the invalid lines derived from it.

use std::io::Write as _;

use chrono::DateTime;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value};
use wafunnel_core::time::{format_rfc3339_ms, Day, DAY_MS, HOUR_MS};

use crate::model::{mix64, AcctPlan, Body, Ev, TimeFmt};

/// The contact's phone number: `55`, an area code, `9`, eight digits.
fn user_id(plan: &AcctPlan, contact: u32) -> String {
    format!("55{}9{:08}", plan.area, contact)
}

fn write_time(out: &mut Vec<u8>, plan: &AcctPlan, time: i64, fmt: TimeFmt) {
    match fmt {
        TimeFmt::Millis => {
            let _ = write!(out, "{time}");
        }
        TimeFmt::Utc if time % 1000 == 0 => {
            write_utc(out, time);
            // `...:SS.000Z"` -> `...:SSZ"`
            out.truncate(out.len() - 6);
            out.extend_from_slice(b"Z\"");
        }
        TimeFmt::Utc => write_utc(out, time),
        TimeFmt::Local => {
            let text = DateTime::from_timestamp_millis(time).map(|t| {
                t.with_timezone(&plan.tz)
                    .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
                    .to_string()
            });
            let _ = write!(out, "\"{}\"", text.unwrap_or_default());
        }
    }
}

/// Writes `"YYYY-MM-DDTHH:MM:SS.mmmZ"` (quoted) for epoch ms `time`, as
/// `format_rfc3339_ms` does, without chrono's format machinery.
pub(crate) fn write_utc(out: &mut Vec<u8>, time: i64) {
    let secs = time.div_euclid(1000);
    let millis = time.rem_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "\"{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z\"",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
}

/// Writes the canonical JSON of `ev` (no newline).
pub(crate) fn render(ev: &Ev, plans: &[AcctPlan], out: &mut Vec<u8>) {
    let plan = &plans[usize::from(ev.acct)];
    let key = mix64(u64::from(ev.contact) << 16 | u64::from(ev.n));
    let (id_prefix, type_name) = match ev.body {
        Body::Click { .. } => ("clk.", "ad_click"),
        Body::MsgIn { .. } => ("wamid.HBgM", "message_in"),
        Body::MsgOut { .. } => ("wamid.HBgN", "message_out"),
        Body::Lead { .. } => ("lead.", "lead"),
        Body::Purchase { .. } => ("pur.", "purchase"),
        Body::Spend { .. } => ("", "ad_spend"),
    };
    out.extend_from_slice(b"{\"event_id\":\"");
    match &ev.body {
        // Meta mode: the id an insights row of this fetch is given
        // (docs/SEMANTICS.md section 6.2).
        Body::Spend { ad, day, .. } if plan.meta => {
            let _ = write!(
                out,
                "insights:{}:{}:{}",
                plan.ads[usize::from(*ad)].ad_id,
                Day(*day),
                ev.time
            );
        }
        Body::Spend { ad, day, rev, .. } => {
            let _ = write!(
                out,
                "spend.{}.{}.r{rev}",
                plan.ads[usize::from(*ad)].ad_id,
                Day(*day)
            );
        }
        _ => {
            let _ = write!(out, "{id_prefix}{key:016X}");
        }
    }
    let _ = write!(
        out,
        "\",\"type\":\"{type_name}\",\"account_id\":{}",
        plan.id_json
    );
    if !matches!(ev.body, Body::Spend { .. }) {
        let _ = write!(out, ",\"user_id\":\"{}\"", user_id(plan, ev.contact));
    }
    out.extend_from_slice(b",\"event_time\":");
    write_time(out, plan, ev.time, ev.fmt);
    match &ev.body {
        Body::Click { ad, click_id } => {
            let ad = &plan.ads[usize::from(*ad)];
            let (campaign, adset) = ad.names_at(ev.time);
            let _ = write!(
                out,
                ",\"ad_id\":\"{}\",\"adset_id\":\"{adset}\",\"campaign_id\":\"{campaign}\"",
                ad.ad_id
            );
            if let Some(c) = click_id {
                let _ = write!(out, ",\"click_id\":\"ARA{c:016x}\"");
            }
        }
        Body::MsgIn { referral, click_id } => {
            if let Some(ad) = referral {
                let _ = write!(
                    out,
                    ",\"referral_ad_id\":\"{}\"",
                    plan.ads[usize::from(*ad)].ad_id
                );
            }
            if let Some(c) = click_id {
                let _ = write!(out, ",\"click_id\":\"ARA{c:016x}\"");
            }
        }
        Body::MsgOut {
            automated,
            template,
            billable,
        } => {
            if *automated {
                out.extend_from_slice(b",\"automated\":true");
            }
            if *template {
                out.extend_from_slice(b",\"template\":true");
            }
            if *billable {
                out.extend_from_slice(b",\"billable\":true");
            }
        }
        Body::Lead { ad } => {
            if let Some(ad) = ad {
                let _ = write!(out, ",\"ad_id\":\"{}\"", plan.ads[usize::from(*ad)].ad_id);
            }
        }
        Body::Purchase { ad, value } => {
            let _ = write!(
                out,
                ",\"value\":\"{value}\",\"currency\":\"{}\",\"order_id\":\"o-{}-{}-{}\"",
                plan.currency, plan.area, ev.contact, ev.n
            );
            if let Some(ad) = ad {
                let _ = write!(out, ",\"ad_id\":\"{}\"", plan.ads[usize::from(*ad)].ad_id);
            }
        }
        Body::Spend {
            ad,
            day,
            spend_cents,
            impressions,
            clicks,
            reported,
            ..
        } => {
            let ad = &plan.ads[usize::from(*ad)];
            let (campaign, adset) = ad.names_at(ev.time);
            let _ = write!(
                out,
                ",\"ad_id\":\"{}\",\"adset_id\":\"{adset}\",\"campaign_id\":\"{campaign}\",\"date\":\"{}\",\
                 \"spend\":\"{}.{:02}\",\"currency\":\"{}\",\"impressions\":{impressions},\"clicks\":{clicks},\
                 \"reported_conversations\":{reported}",
                ad.ad_id,
                Day(*day),
                spend_cents / 100,
                spend_cents % 100,
                plan.currency
            );
        }
    }
    out.push(b'}');
}

/// The ways a line can be invalid.
#[derive(Clone, Copy, Debug)]
enum Flaw {
    Truncated,
    NotAnObject,
    WrongType,
    UnknownType,
    Future,
    Before2010,
    MissingField,
    EmptyField,
    BadTimeText,
    CurrencyMismatch,
    BadMoney,
    BadDate,
}

const FLAWS: [Flaw; 12] = [
    Flaw::Truncated,
    Flaw::NotAnObject,
    Flaw::WrongType,
    Flaw::UnknownType,
    Flaw::Future,
    Flaw::Before2010,
    Flaw::MissingField,
    Flaw::EmptyField,
    Flaw::BadTimeText,
    Flaw::CurrencyMismatch,
    Flaw::BadMoney,
    Flaw::BadDate,
];

/// An invalid line derived from the valid line `valid` of `ev` (same
/// `event_id` where it has one, so that a dead-lettered copy arriving first
/// must not shadow the valid event), and its expected rejection code.
pub(crate) fn invalid(
    ev: &Ev,
    plan: &AcctPlan,
    valid: &[u8],
    rng: &mut ChaCha8Rng,
    valid_now_ms: i64,
) -> (Vec<u8>, &'static str) {
    let mut map: Map<String, Value> =
        serde_json::from_slice(valid).expect("generated lines are JSON objects");
    let is_spend = matches!(ev.body, Body::Spend { .. });
    let has_money = matches!(ev.body, Body::Purchase { .. } | Body::Spend { .. });
    let flaw = loop {
        let flaw = FLAWS[rng.random_range(0..FLAWS.len() as u64) as usize];
        match flaw {
            Flaw::CurrencyMismatch | Flaw::BadMoney if !has_money => continue,
            Flaw::BadDate if !is_spend => continue,
            _ => break flaw,
        }
    };
    let to_bytes = |map: &Map<String, Value>| serde_json::to_vec(map).expect("maps serialize");
    let code = match flaw {
        Flaw::Truncated => {
            let mut bytes = valid.to_vec();
            let commas: Vec<usize> = bytes
                .windows(2)
                .enumerate()
                .filter(|(_, w)| w == b",\"")
                .map(|(i, _)| i + 1)
                .collect();
            let cut = commas[rng.random_range(0..commas.len() as u64) as usize];
            bytes.truncate(cut);
            return (bytes, "malformed");
        }
        Flaw::NotAnObject => {
            let text: &[u8] = match rng.random_range(0..3u32) {
                0 => b"[\"ad_click\",1772445660000]",
                1 => b"\"message_in\"",
                _ => b"event_id=x type=ad_click",
            };
            return (text.to_vec(), "malformed");
        }
        Flaw::WrongType => {
            let (field, value) = match (&ev.body, rng.random_range(0..3u32)) {
                (_, 0) => ("event_time", Value::Bool(true)),
                (Body::Spend { .. }, _) => ("impressions", Value::String("many".into())),
                (Body::MsgOut { .. }, 1) => ("automated", Value::String("yes".into())),
                _ => ("user_id", Value::from(5_511_987_654_321_u64)),
            };
            map.insert(field.into(), value);
            "invalid_field"
        }
        Flaw::UnknownType => {
            let name = ["ad_impression", "message_read", "reaction", "AD_CLICK"]
                [rng.random_range(0..4u64) as usize];
            map.insert("type".into(), name.into());
            "unknown_type"
        }
        Flaw::Future => {
            let t = valid_now_ms + rng.random_range(2 * HOUR_MS..30 * DAY_MS);
            let value = if rng.random_bool(0.5) {
                Value::from(t)
            } else {
                Value::from(format_rfc3339_ms(t))
            };
            map.insert("event_time".into(), value);
            "future_timestamp"
        }
        Flaw::Before2010 => {
            let value = if rng.random_bool(0.5) {
                Value::from(1_000_000_000_000_i64)
            } else {
                Value::from("2009-12-31T23:59:59.999Z")
            };
            map.insert("event_time".into(), value);
            "timestamp_before_2010"
        }
        Flaw::MissingField => {
            let field = match rng.random_range(0..3u32) {
                0 => "event_time",
                1 => "event_id",
                _ if is_spend => "ad_id",
                _ => "user_id",
            };
            map.remove(field);
            "missing_field"
        }
        Flaw::EmptyField => {
            let field = if is_spend {
                "ad_id"
            } else {
                ["user_id", "event_id"][rng.random_range(0..2u64) as usize]
            };
            map.insert(field.into(), "".into());
            "invalid_field"
        }
        Flaw::BadTimeText => {
            let text = DateTime::from_timestamp_millis(ev.time)
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default();
            map.insert("event_time".into(), text.into());
            "invalid_field"
        }
        Flaw::CurrencyMismatch => {
            let other = ["USD", "BRL", "EUR", "GBP", "JPY"]
                .into_iter()
                .find(|&c| c != plan.currency)
                .unwrap_or("GBP");
            map.insert("currency".into(), other.into());
            "currency_mismatch"
        }
        Flaw::BadMoney => {
            let field = if is_spend { "spend" } else { "value" };
            let text = ["49.90123", "1,50", "-10.00", "R$ 49,90", "1e3"]
                [rng.random_range(0..5u64) as usize];
            map.insert(field.into(), text.into());
            "invalid_field"
        }
        Flaw::BadDate => {
            map.insert("date".into(), "2026-3-2".into());
            "invalid_field"
        }
    };
    (to_bytes(&map), code)
}
