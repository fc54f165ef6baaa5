//! Event times and calendar days.
//!
//! Times are UTC epoch milliseconds (`i64`). Days are calendar days in an
//! account's time zone, counted from 1970-01-01; converting a time to a day is
//! on the per-event hot path, so [`DayClock`] caches the bounds of the last day
//! it resolved.

use std::fmt;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Milliseconds in one hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in one day.
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Parses an RFC 3339 timestamp into epoch milliseconds (sub-millisecond
/// digits are truncated toward the past).
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let parsed = DateTime::parse_from_rfc3339(text).ok()?;
    Some(parsed.timestamp_millis())
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_rfc3339_ms(ms: i64) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => ms.to_string(),
    }
}

/// A calendar day, as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(pub i32);

const EPOCH_DAYS_FROM_CE: i32 = 719_163;

impl Day {
    /// The day of a calendar date.
    pub fn from_date(date: NaiveDate) -> Self {
        Day(date.num_days_from_ce() - EPOCH_DAYS_FROM_CE)
    }

    /// The calendar date of this day.
    pub fn date(self) -> NaiveDate {
        NaiveDate::from_num_days_from_ce_opt(self.0 + EPOCH_DAYS_FROM_CE).unwrap_or(NaiveDate::MIN)
    }

    /// Parses exactly `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
            return None;
        }
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .map(Day::from_date)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.date().format("%Y-%m-%d"))
    }
}

impl Serialize for Day {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Day {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Day::parse(&text).ok_or_else(|| serde::de::Error::custom("expected a YYYY-MM-DD date"))
    }
}

/// Maps times to days in one time zone, caching the last day's UTC bounds so
/// that a stream of nearby times costs two comparisons each.
#[derive(Clone, Debug)]
pub struct DayClock {
    tz: Tz,
    start: i64,
    end: i64,
    day: Day,
}

impl DayClock {
    /// A clock for `tz`.
    pub fn new(tz: Tz) -> Self {
        DayClock {
            tz,
            start: 0,
            end: 0,
            day: Day(0),
        }
    }

    /// The time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// The calendar day of `ms` in this clock's time zone.
    pub fn day_of(&mut self, ms: i64) -> Day {
        if ms >= self.start && ms < self.end {
            return self.day;
        }
        let Some(utc) = DateTime::from_timestamp_millis(ms) else {
            return Day(i32::MIN);
        };
        let date = utc.with_timezone(&self.tz).date_naive();
        let day = Day::from_date(date);
        let start = self.local_midnight_ms(date);
        let end = date
            .succ_opt()
            .map_or(i64::MAX, |next| self.local_midnight_ms(next));
        // A zone whose midnight is skipped or repeated still gets a valid
        // (if narrower) cache window: the bounds only gate the cache.
        if start <= ms && ms < end {
            self.start = start;
            self.end = end;
            self.day = day;
        }
        day
    }

    /// The first UTC millisecond that falls on `day` in this zone.
    pub fn day_start_ms(&self, day: Day) -> i64 {
        self.local_midnight_ms(day.date())
    }

    fn local_midnight_ms(&self, date: NaiveDate) -> i64 {
        let midnight = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        match self.tz.from_local_datetime(&midnight) {
            chrono::LocalResult::Single(t) => t.timestamp_millis(),
            chrono::LocalResult::Ambiguous(t, _) => t.timestamp_millis(),
            // Midnight skipped by a DST jump: the day starts at the first
            // valid local instant, one hour later in every zone that does this.
            chrono::LocalResult::None => self
                .tz
                .from_local_datetime(&(midnight + chrono::Duration::hours(1)))
                .earliest()
                .map_or(i64::MIN, |t| t.timestamp_millis()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_epoch_agree() {
        assert_eq!(
            parse_rfc3339_ms("2026-03-02T10:01:00Z"),
            Some(1_772_445_660_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2026-03-02T12:01:00.000+02:00"),
            Some(1_772_445_660_000)
        );
        assert_eq!(parse_rfc3339_ms("2026-03-02 10:01"), None);
        assert_eq!(
            format_rfc3339_ms(1_772_445_660_000),
            "2026-03-02T10:01:00.000Z"
        );
    }

    #[test]
    fn day_parse_and_display_round_trip() {
        let day = Day::parse("2026-03-02").expect("valid date");
        assert_eq!(day.to_string(), "2026-03-02");
        assert_eq!(Day::parse("2026-3-2"), None);
        assert_eq!(Day::parse("2026-02-30"), None);
        assert_eq!(Day::parse("1970-01-01"), Some(Day(0)));
    }

    #[test]
    fn days_follow_the_account_time_zone() {
        let mut utc = DayClock::new(chrono_tz::UTC);
        let mut sao_paulo = DayClock::new(chrono_tz::America::Sao_Paulo);
        // 2026-03-02T02:00Z is still March 1st in Sao Paulo (UTC-3).
        let t = parse_rfc3339_ms("2026-03-02T02:00:00Z").expect("valid");
        assert_eq!(utc.day_of(t).to_string(), "2026-03-02");
        assert_eq!(sao_paulo.day_of(t).to_string(), "2026-03-01");
        // Exactly local midnight belongs to the new day; one ms before does not.
        let midnight = parse_rfc3339_ms("2026-03-02T03:00:00Z").expect("valid");
        assert_eq!(sao_paulo.day_of(midnight).to_string(), "2026-03-02");
        assert_eq!(sao_paulo.day_of(midnight - 1).to_string(), "2026-03-01");
        assert_eq!(
            sao_paulo.day_start_ms(Day::parse("2026-03-02").expect("valid")),
            midnight
        );
    }

    #[test]
    fn day_clock_cache_is_invisible() {
        let mut cached = DayClock::new(chrono_tz::Europe::Berlin);
        let start = parse_rfc3339_ms("2026-03-27T00:00:00Z").expect("valid");
        for step in 0..(5 * 24 * 4) {
            let t = start + step * 15 * 60_000;
            let mut fresh = DayClock::new(chrono_tz::Europe::Berlin);
            assert_eq!(cached.day_of(t), fresh.day_of(t), "at {t}");
        }
    }
}
