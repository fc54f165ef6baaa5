//! Inputs shared by the benchmarks: synthetic, validated events that keep a
//! chosen number of conversations open, and generated JSON lines.

use wafunnel_core::config::{Accounts, UserHasher};
use wafunnel_core::event::{parse_json_event, Event};

/// 2026-03-02T00:00:00Z.
pub const START_MS: i64 = 1_772_409_600_000;
const SPREAD_MS: i64 = 20 * 86_400_000;
const NOW_MS: i64 = 1_900_000_000_000;

fn parse(line: &str) -> Event {
    parse_json_event(
        line.as_bytes(),
        &Accounts::default(),
        &UserHasher::new(b"bench"),
        NOW_MS,
    )
    .unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// One click per contact, spread over 20 days (inside the 28-day attribution
/// window, so all stay open): `contacts` open conversations.
pub fn opening_clicks(contacts: usize) -> Vec<Event> {
    let step = (SPREAD_MS / contacts.max(1) as i64).max(1);
    (0..contacts)
        .map(|u| {
            parse(&format!(
                r#"{{"event_id":"c{u}","type":"ad_click","account_id":"act_{}","user_id":"55119{u:08}","event_time":{},"ad_id":"ad_{}","campaign_id":"cmp_1","adset_id":"as_1"}}"#,
                u % 4,
                START_MS + u as i64 * step,
                u % 50
            ))
        })
        .collect()
}

/// `n` follow-up events on the contacts of [`opening_clicks`] (messages in
/// with their referral, replies, leads), in time order after all clicks.
pub fn traffic(contacts: usize, n: usize) -> Vec<Event> {
    let base = START_MS + SPREAD_MS + 3_600_000;
    (0..n)
        .map(|i| {
            // A multiplicative walk spreads events over all contacts.
            let u = (i.wrapping_mul(2_654_435_761)) % contacts.max(1);
            let t = base + i as i64 * 7;
            let (account, ad) = (u % 4, u % 50);
            let user = format!("55119{u:08}");
            match i % 4 {
                0 | 1 => parse(&format!(
                    r#"{{"event_id":"m{i}","type":"message_in","account_id":"act_{account}","user_id":"{user}","event_time":{t},"referral_ad_id":"ad_{ad}"}}"#
                )),
                2 => parse(&format!(
                    r#"{{"event_id":"o{i}","type":"message_out","account_id":"act_{account}","user_id":"{user}","event_time":{t}}}"#
                )),
                _ => parse(&format!(
                    r#"{{"event_id":"l{i}","type":"lead","account_id":"act_{account}","user_id":"{user}","event_time":{t}}}"#
                )),
            }
        })
        .collect()
}

/// Resident memory of this process in bytes, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
