//! # wafunnel-gen
//!
//! A seeded, deterministic generator of realistic click-to-WhatsApp traffic
//! in the canonical JSON of docs/SEMANTICS.md section 1. It feeds `wafunnel demo`,
//! the end-to-end tests and the benchmarks.
//!
//! Guarantees:
//! - **Determinism.** The output is a pure function of [`GenConfig`]: the same
//!   configuration gives byte-identical records in the same order, on every
//!   platform (ChaCha8 streams, no hash-map iteration, no clock, no threads),
//!   for a given version of this crate and of `rand`/`rand_chacha`.
//! - **Validity.** Every [`RecordKind::Original`], [`RecordKind::Duplicate`]
//!   and [`RecordKind::Late`] line passes
//!   `wafunnel_core::event::parse_json_event` with
//!   [`GenConfig::core_accounts`] and [`GenConfig::valid_now_ms`]; every
//!   [`RecordKind::Invalid`] line is rejected with exactly its
//!   `expected_code` ([`wafunnel_core::event::Rejection::code`]). Event ids
//!   are unique per account among valid events.
//! - **Arrival order.** Events are produced in event-time order and delivered
//!   in arrival order: record `r` arrives at [`GenRecord::arrival_ms`], with
//!   `0 <= arrival_ms - event_time <= disorder_ms` for every record but the
//!   late ones, whose delay exceeds `lateness + disorder_ms + 2 h` (so they
//!   are late for any partition carrying steady traffic). Records are sorted
//!   by `(arrival_ms, production order)`. Duplicates are byte-identical
//!   copies of an earlier record and arrive after it.
//! - **The mix.** Clicks on ads named with their campaign and ad set, 25 % of
//!   which never send a message (ghosts); first messages with
//!   `referral_ad_id` (most) or without it (attributed by the engine);
//!   organic contacts and organic returns; business replies in every response
//!   bucket (`le_5m`, `le_1h`, `le_24h`, `gt_24h`, `none`, including the exact
//!   bucket boundaries); follow-up storms (over-messaged conversations);
//!   outbound after the 72 h free window; repeat clicks inside and after the
//!   7-day gap; contacts on two ads; leads (some naming their ad), purchases in
//!   the account currency with an `order_id`; conversions more than 28 days
//!   after the last activity or without any conversation (unattributed);
//!   daily `ad_spend` snapshots per ad and local date, with a
//!   `reported_conversations` above the real count and some revised (later,
//!   or at the same `event_time` with a larger `event_id`);
//!   one ad per account moved to another campaign and ad set mid-period;
//!   `event_time` as RFC 3339 text (UTC or the account's offset) or epoch
//!   millis; clicks and their message in the same millisecond.
//!   [`GenStats`] counts what was generated.
//! - **Meta mode.** With [`GenConfig::meta`], [`meta_stream`] renders the
//!   same records as Meta sends them (docs/SEMANTICS.md section 6):
//!   `message_in` and `message_out` as WhatsApp webhook bodies of the
//!   account's [`GenAccount::phone_number_id`] (a referral of `source_type`
//!   `ad` with the click id as `ctwa_clid`; statuses `sent` with a
//!   `pricing` block when the message is a billable template; two adjacent
//!   originals of one account in one body), `ad_spend` as insights rows
//!   with `fetched_at` and the conversations-started action, while clicks,
//!   leads, purchases and every invalid line stay canonical JSON (they come
//!   from the click tracking and the CRM). Normalizing a payload gives
//!   exactly the events of its canonical lines. For that, Meta mode
//!   generates only what the payloads express: every event time is a whole
//!   second (webhook timestamps are Unix seconds), no `automated` flag (a
//!   status does not say who sent the message), `billable` on template
//!   messages, spend ids `insights:<ad_id>:<date>:<event_time>` (an insights
//!   row's id follows from its fetch time, so a revision is always a later
//!   fetch, never one at the same time) and account ids beginning with
//!   `act_`. A duplicate is a redelivery of the same event: the same body
//!   (Meta's retry), or a body of its own when its first delivery was
//!   batched. The canonical records of a Meta-mode configuration are
//!   another campaign than those of the same configuration without it.
//! - **Memory.** [`stream`] keeps only the events still to come of the
//!   contacts already started and the records inside the disorder window,
//!   roughly 100 bytes per pending event: a few hundred MB at 10 M events.
//!   [`generate`] keeps every record (about 350 bytes each, ~3.5 GB at
//!   10 M): use [`stream`] or [`write_ndjson_stream`] beyond a few million.
//!
//! ```
//! use wafunnel_core::config::UserHasher;
//! use wafunnel_core::event::parse_json_event;
//! use wafunnel_gen::{generate, GenConfig, RecordKind};
//!
//! let cfg = GenConfig { contacts_per_account: 50, invalid_rate: 0.05, ..GenConfig::demo() };
//! let log = generate(&cfg);
//! let (accounts, hasher) = (cfg.core_accounts(), UserHasher::new(b"key"));
//! for record in &log.records {
//!     let parsed = parse_json_event(&record.line, &accounts, &hasher, cfg.valid_now_ms());
//!     match record.kind {
//!         RecordKind::Invalid { expected_code } => assert_eq!(parsed.unwrap_err().code(), expected_code),
//!         _ => assert!(parsed.is_ok()),
//!     }
//! }
//! ```

use std::collections::BTreeMap;
use std::io::{self, Write};

use wafunnel_core::config::{AccountSettings, Accounts};
use wafunnel_core::money::Currency;
use wafunnel_core::time::{DAY_MS, HOUR_MS};

mod meta;
mod model;
mod render;
mod stream;

pub use meta::{meta_stream, MetaRecord, MetaStream, PayloadFormat};
pub use stream::GenStream;

/// 2026-03-02T00:00:00Z, the start of the demo traffic.
pub const DEMO_START_MS: i64 = 1_772_409_600_000;

/// Every event time is before [`GenConfig::end_ms`] plus this tail (the
/// follow-ups of the last contacts, conversions 28+ days later).
pub const TAIL_MS: i64 = 40 * DAY_MS;

/// Average number of valid events per contact with the built-in traffic
/// model (measured; used by [`GenConfig::with_target_events`]).
pub const EVENTS_PER_CONTACT: f64 = 5.25;

/// The response buckets of docs/SEMANTICS.md, in the order of
/// [`GenStats::response_buckets`].
pub const RESPONSE_BUCKETS: [&str; 5] = ["le_5m", "le_1h", "le_24h", "gt_24h", "none"];

/// One ad account of the generated traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenAccount {
    /// The account id, e.g. `act_1001`.
    pub account_id: String,
    /// Its ISO 4217 currency code, e.g. `BRL`.
    pub currency: String,
    /// Its IANA time zone name, e.g. `America/Sao_Paulo`.
    pub time_zone: String,
    /// Campaigns in the account.
    pub campaigns: u32,
    /// Ad sets per campaign.
    pub adsets_per_campaign: u32,
    /// Ads in the even-numbered ad sets; the odd-numbered ones have one fewer
    /// (at least one).
    pub ads_per_adset: u32,
    /// The WhatsApp `phone_number_id` of its business number, named in the
    /// `metadata` of its webhook bodies (see [`GenConfig::phone_numbers`]).
    pub phone_number_id: String,
}

impl GenAccount {
    /// An account with 2 campaigns × 2 ad sets × 3 or 2 ads (10 ads).
    pub fn new(account_id: &str, currency: &str, time_zone: &str) -> Self {
        GenAccount {
            account_id: account_id.to_owned(),
            currency: currency.to_owned(),
            time_zone: time_zone.to_owned(),
            campaigns: 2,
            adsets_per_campaign: 2,
            ads_per_adset: 3,
            phone_number_id: meta::derived_phone_number_id(account_id),
        }
    }

    /// The engine settings of this account.
    ///
    /// # Panics
    /// If the currency or the time zone is invalid (see [`GenConfig::validate`]).
    pub fn settings(&self) -> AccountSettings {
        AccountSettings {
            currency: Currency::parse(&self.currency).expect("invalid currency code"),
            time_zone: self.time_zone.parse().expect("invalid IANA time zone"),
        }
    }
}

/// One ad of the generated catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenAd {
    /// The ad id.
    pub ad_id: String,
    /// Its campaign at the start.
    pub campaign_id: String,
    /// Its ad set at the start.
    pub adset_id: String,
    /// Where it moves to mid-period, if it does.
    pub moved: Option<AdMove>,
}

/// An ad moved to another campaign and ad set: events from `at_ms` on name
/// the new ones, so the latest naming (docs/SEMANTICS.md section 3) is the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdMove {
    /// The first event time naming the new ad set.
    pub at_ms: i64,
    /// The new campaign.
    pub campaign_id: String,
    /// The new ad set.
    pub adset_id: String,
}

/// What to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    /// The seed of every random choice.
    pub seed: u64,
    /// The ad accounts.
    pub accounts: Vec<GenAccount>,
    /// Contacts per account (each makes about [`EVENTS_PER_CONTACT`] events).
    pub contacts_per_account: usize,
    /// Start of the period in which contacts first appear (epoch ms).
    pub start_ms: i64,
    /// Length of that period in days; spend snapshots cover its local dates.
    pub days: u32,
    /// Fraction of records redelivered once more, byte-identical.
    pub duplicate_rate: f64,
    /// Maximum arrival delay of a record behind its event time; must stay
    /// below the 24 h allowed lateness.
    pub disorder_ms: i64,
    /// Fraction of the events of the dense middle of the period (from 2 days
    /// after the start to 3 days before the end) delivered more than 24 h
    /// behind; such an event is delivered only late. Default 0.
    pub late_rate: f64,
    /// Fraction of events followed by an extra malformed or invalid line
    /// derived from them. Default 0.
    pub invalid_rate: f64,
    /// Meta mode: only events that Meta's payloads can express (see the
    /// crate docs), so that [`meta_stream`] can render them as webhook
    /// bodies and insights rows. Default false.
    pub meta: bool,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig::demo()
    }
}

impl GenConfig {
    /// The demo: `act_1001` (USD, UTC), `act_2002` (BRL, America/Sao_Paulo)
    /// and `act_3003` (EUR, Europe/Madrid), 10 ads each, 14 days from
    /// 2026-03-02T00:00:00Z, about 80k valid events, 2 % duplicates and up to
    /// 2 h of disorder; no late or invalid records.
    pub fn demo() -> Self {
        GenConfig {
            seed: 2026,
            accounts: vec![
                GenAccount::new("act_1001", "USD", "UTC"),
                GenAccount::new("act_2002", "BRL", "America/Sao_Paulo"),
                GenAccount::new("act_3003", "EUR", "Europe/Madrid"),
            ],
            contacts_per_account: 5_000,
            start_ms: DEMO_START_MS,
            days: 14,
            duplicate_rate: 0.02,
            disorder_ms: 2 * HOUR_MS,
            late_rate: 0.0,
            invalid_rate: 0.0,
            meta: false,
        }
    }

    /// The demo resized to about `target_events` valid events.
    pub fn scaled(target_events: u64) -> Self {
        GenConfig::demo().with_target_events(target_events)
    }

    /// This configuration with `contacts_per_account` set for about
    /// `target_events` valid events (spend snapshots not counted).
    pub fn with_target_events(mut self, target_events: u64) -> Self {
        let accounts = self.accounts.len().max(1) as f64;
        self.contacts_per_account =
            ((target_events as f64) / (accounts * EVENTS_PER_CONTACT)).ceil() as usize;
        self
    }

    /// End of the period in which contacts first appear (exclusive).
    pub fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.days) * DAY_MS
    }

    /// Every generated event time is before this.
    pub fn horizon_ms(&self) -> i64 {
        self.end_ms() + TAIL_MS
    }

    /// The validation clock under which every valid line is in the past:
    /// one day after [`GenConfig::horizon_ms`].
    pub fn valid_now_ms(&self) -> i64 {
        self.horizon_ms() + DAY_MS
    }

    /// The engine's account settings for the generated accounts.
    ///
    /// # Panics
    /// If an account has an invalid currency or time zone.
    pub fn core_accounts(&self) -> Accounts {
        let mut accounts = Accounts::default();
        for account in &self.accounts {
            accounts
                .listed
                .insert(account.account_id.clone(), account.settings());
        }
        accounts
    }

    /// `(phone_number_id, account_id)` of every account: the configuration
    /// that maps the webhook bodies of [`meta_stream`] back to their account.
    pub fn phone_numbers(&self) -> Vec<(String, String)> {
        self.accounts
            .iter()
            .map(|a| (a.phone_number_id.clone(), a.account_id.clone()))
            .collect()
    }

    /// The ad catalog of account number `account` (index in `accounts`).
    ///
    /// # Panics
    /// If `account` is out of range.
    pub fn ads(&self, account: usize) -> Vec<GenAd> {
        model::catalog(self, account)
    }

    /// Checks the configuration; [`generate`] and [`stream`] panic with this
    /// message otherwise.
    pub fn validate(&self) -> Result<(), String> {
        if self.accounts.is_empty() || self.accounts.len() > 1000 {
            return Err("between 1 and 1000 accounts are needed".into());
        }
        for a in &self.accounts {
            if a.account_id.is_empty() || a.account_id.len() > 64 {
                return Err(format!("account id `{}` must be 1..64 bytes", a.account_id));
            }
            if Currency::parse(&a.currency).is_none() {
                return Err(format!(
                    "account {}: `{}` is not an ISO 4217 code",
                    a.account_id, a.currency
                ));
            }
            if a.time_zone.parse::<chrono_tz::Tz>().is_err() {
                return Err(format!(
                    "account {}: `{}` is not an IANA zone",
                    a.account_id, a.time_zone
                ));
            }
            if a.campaigns == 0 || a.adsets_per_campaign == 0 || a.ads_per_adset == 0 {
                return Err(format!(
                    "account {}: needs at least one campaign, ad set and ad",
                    a.account_id
                ));
            }
            if u64::from(a.campaigns)
                * u64::from(a.adsets_per_campaign)
                * u64::from(a.ads_per_adset)
                > 10_000
            {
                return Err(format!("account {}: at most 10000 ads", a.account_id));
            }
        }
        if self.meta {
            meta::validate(self)?;
        }
        if self.contacts_per_account >= 100_000_000 {
            return Err("at most 99,999,999 contacts per account".into());
        }
        if self.days == 0 || self.days > 3650 {
            return Err("days must be 1..=3650".into());
        }
        if self.start_ms < wafunnel_core::event::MIN_EVENT_TIME_MS + 30 * DAY_MS {
            return Err("start_ms must be at least 30 days after 2010-01-01".into());
        }
        let lateness = wafunnel_core::config::Windows::default().lateness_ms;
        if !(0..lateness).contains(&self.disorder_ms) {
            return Err(format!(
                "disorder_ms must be in 0..{lateness} (the allowed lateness)"
            ));
        }
        for (name, rate) in [
            ("duplicate_rate", self.duplicate_rate),
            ("late_rate", self.late_rate),
            ("invalid_rate", self.invalid_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be in 0..=1"));
            }
        }
        Ok(())
    }
}

/// What a record is, for the test that checks where it ends up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// The first delivery of a valid event (to be applied).
    Original,
    /// A byte-identical redelivery of an earlier record (to be deduplicated).
    Duplicate,
    /// The only delivery of a valid event, more than 24 h behind (to be kept
    /// as late, not applied).
    Late,
    /// A malformed or invalid line (to be dead-lettered, each time it
    /// arrives: redeliveries of invalid lines are `Invalid` too).
    Invalid {
        /// [`wafunnel_core::event::Rejection::code`] of its rejection.
        expected_code: &'static str,
    },
}

/// One input record, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenRecord {
    /// The bytes: canonical JSON of one event, without a newline.
    pub line: Vec<u8>,
    /// What it is.
    pub kind: RecordKind,
    /// The event time (epoch ms); for an invalid line, the time of the valid
    /// event it was derived from (its own may be absent or in the future).
    pub event_time: i64,
    /// When it arrives (epoch ms); records come sorted by it.
    pub arrival_ms: i64,
    /// The account id, as in the event.
    pub account_id: String,
}

/// Counts of what was generated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Records delivered (all kinds).
    pub records: u64,
    /// Records of kind [`RecordKind::Original`].
    pub originals: u64,
    /// Records of kind [`RecordKind::Duplicate`].
    pub duplicates: u64,
    /// Records of kind [`RecordKind::Late`].
    pub late: u64,
    /// Records of kind [`RecordKind::Invalid`], redeliveries included.
    pub invalid: u64,
    /// Invalid records per expected rejection code.
    pub invalid_by_code: BTreeMap<&'static str, u64>,
    /// Distinct valid events (originals plus late ones).
    pub events: u64,
    /// Distinct valid events per type, in the order of
    /// `wafunnel_core::event::EventType::ALL`.
    pub events_by_type: [u64; 6],
    /// Contacts generated.
    pub contacts: u64,
    /// Contacts who never touched an ad (organic messages only).
    pub organic_contacts: u64,
    /// Contacts whose only events are a lead or purchase (no conversation).
    pub offline_contacts: u64,
    /// First clicks never followed by a message (ghost conversations).
    pub ghost_clicks: u64,
    /// Inbound messages carrying `referral_ad_id`.
    pub messages_with_referral: u64,
    /// Inbound messages without `referral_ad_id`.
    pub messages_without_referral: u64,
    /// Inbound messages with no ad and no conversation active in the last
    /// 7 days: organic for the engine.
    pub organic_messages: u64,
    /// Conversations started (by the generator's own count, the basis of
    /// `reported_conversations`).
    pub conversations_started: u64,
    /// Designed first response of each first ad conversation, per bucket of
    /// [`RESPONSE_BUCKETS`].
    pub response_buckets: [u64; 5],
    /// First responses exactly on a bucket boundary (300 s, 1 h, 24 h).
    pub boundary_responses: u64,
    /// Conversations given more than 2 follow-ups in the free window.
    pub over_messaged: u64,
    /// Outbound messages sent after the 72 h free window.
    pub outbound_after_free_window: u64,
    /// Repeat clicks on the same ad less than 7 days after its last activity.
    pub repeat_clicks_same_conversation: u64,
    /// Repeat clicks on the same ad 7 days or more after the last activity.
    pub repeat_clicks_new_conversation: u64,
    /// Contacts who clicked a second ad.
    pub second_ad_contacts: u64,
    /// Leads.
    pub leads: u64,
    /// Leads naming their ad.
    pub leads_with_ad_id: u64,
    /// Purchases.
    pub purchases: u64,
    /// Leads and purchases more than 28 days after the contact's last activity.
    pub conversions_after_window: u64,
    /// Leads and purchases of contacts without any conversation.
    pub conversions_without_conversation: u64,
    /// Clicks followed by their message in the same millisecond.
    pub same_ms_click_message: u64,
    /// Events whose `event_time` is RFC 3339 text.
    pub text_times: u64,
    /// Events whose `event_time` is epoch milliseconds.
    pub millis_times: u64,
    /// `ad_spend` snapshots (revisions included).
    pub spend_snapshots: u64,
    /// Revised snapshots: another spend for the same ad and date, a day
    /// later or (one in five) at the same `event_time`, where the larger
    /// event id (the revision's) wins.
    pub revised_spend_snapshots: u64,
    /// Ads moved to another campaign and ad set.
    pub moved_ads: u64,
}

/// A whole generated log, in arrival order.
#[derive(Clone, Debug)]
pub struct Generated {
    /// Every record, in arrival order.
    pub records: Vec<GenRecord>,
    /// The accounts (currency code and IANA zone as text).
    pub accounts: Vec<GenAccount>,
    /// The validation clock under which every valid line is in the past.
    pub valid_now_ms: i64,
    /// What was generated.
    pub stats: GenStats,
}

impl Generated {
    /// The engine's account settings for the generated accounts.
    pub fn core_accounts(&self) -> Accounts {
        let mut accounts = Accounts::default();
        for account in &self.accounts {
            accounts
                .listed
                .insert(account.account_id.clone(), account.settings());
        }
        accounts
    }
}

/// Generates the whole log in memory (see the crate docs for its size).
///
/// # Panics
/// If the configuration is invalid ([`GenConfig::validate`]).
pub fn generate(cfg: &GenConfig) -> Generated {
    let mut stream = stream(cfg);
    let records: Vec<GenRecord> = stream.by_ref().collect();
    Generated {
        records,
        accounts: cfg.accounts.clone(),
        valid_now_ms: cfg.valid_now_ms(),
        stats: stream.stats().clone(),
    }
}

/// The same records as [`generate`], one at a time, in bounded memory.
///
/// # Panics
/// If the configuration is invalid ([`GenConfig::validate`]).
pub fn stream(cfg: &GenConfig) -> GenStream {
    GenStream::new(cfg)
}

/// Writes the records as newline-delimited JSON, one record a line.
pub fn write_ndjson(generated: &Generated, mut out: impl Write) -> io::Result<()> {
    for record in &generated.records {
        out.write_all(&record.line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Streams the records of `cfg` as newline-delimited JSON without holding
/// them in memory; returns what was generated.
///
/// # Panics
/// If the configuration is invalid ([`GenConfig::validate`]).
pub fn write_ndjson_stream(cfg: &GenConfig, mut out: impl Write) -> io::Result<GenStats> {
    let mut stream = stream(cfg);
    for record in stream.by_ref() {
        out.write_all(&record.line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(stream.stats().clone())
}

#[cfg(test)]
mod tests;
