//! The conversation sessionizer: the state of one partition.
//!
//! Contract:
//! - **Input**: validated [`Event`]s in arrival order, one call each. Every
//!   call returns exactly one [`Outcome`]: applied, duplicate, or late.
//! - **Lateness**: the watermark is the highest event time applied. An event
//!   older than `watermark - L` is late: reported, not applied. Any event not
//!   late is applied as if all events had arrived in the total order of
//!   docs/SEMANTICS.md section 1, so every arrival order within `L` gives the same
//!   rows.
//! - **Duplicates**: a repeated `(account_id, event_id)` is a duplicate while
//!   the original is within `L` of the watermark; an older repeat is late.
//!   Either way it is counted once.
//! - **Output**: [`Sessionizer::drain`] returns the full-state rows changed
//!   since the last drain ([`crate::rows`]). Rows are idempotent: a reader
//!   that keeps the last row per key has the right tables after any drain.
//! - **Bounded state**: per contact, the events of the last `L` are kept
//!   beside a checkpoint of the state before them, so that an out-of-order
//!   event can be applied by replaying them. What can no longer change
//!   (conversations inactive for `L + max(G, W)`, days before the lateness
//!   horizon, dedup ids behind it) is evicted as the watermark advances.
//!
//! How an out-of-order event is applied: the contact's kept events are
//! folded again from the checkpoint twice, once retracting (sign -1) the
//! effects they had, once applying (sign +1) them with the new event in its
//! place. Because the fold is deterministic, retraction cancels exactly what
//! was applied, and the result equals the in-order fold.
//!
//! The state can be saved right after a drain and loaded back
//! ([`Sessionizer::save`], [`Sessionizer::load`]), so that a service restores
//! a partition instead of replaying it from the beginning.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::config::{AccountSettings, Accounts, UserKey, Windows};
use crate::event::{Body, Event, EventType};
use crate::export::{export_id, ConversionExport, ConversionName, ExportDecision, CLICK_WINDOW_MS};
use crate::money::{Currency, Money};
use crate::rows::{
    AdRow, Changes, ContactsCounts, ContactsPartialRow, ConversationChange, ConversationKey,
    ConversationRow, FunnelCounts, FunnelPartialRow, ResponseBucket, SpendRow,
};
use crate::time::{Day, DayClock, HOUR_MS};

mod contacts;
mod packed;
mod state;

use contacts::{Contact, Contacts};
use packed::PackedState;

pub use state::StateError;

/// The free follow-up window opened by the first inbound message.
pub const FREE_WINDOW_MS: i64 = 72 * HOUR_MS;
/// More follow-ups than this in the free window is over-messaging.
pub const MAX_FOLLOWUPS: u32 = 2;

const NONE: i64 = i64::MIN;
const NO_DAY: i32 = i32::MIN;
const NO_AD: u32 = u32::MAX;
const UNSCHEDULED: i64 = i64::MAX;

/// What happened to one input event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied to the state.
    Applied,
    /// A repeat of an event already applied.
    Duplicate,
    /// Older than the watermark minus the allowed lateness: kept aside, not applied.
    Late {
        /// The partition watermark when it arrived.
        watermark: i64,
    },
}

/// Cumulative counts of outcomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Applied events.
    pub applied: u64,
    /// Duplicates.
    pub duplicate: u64,
    /// Late events.
    pub late: u64,
}

/// Sizes of the state, for metrics and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Contacts held.
    pub contacts: usize,
    /// Conversations held.
    pub conversations: usize,
    /// Events kept for out-of-order replay.
    pub kept_events: usize,
    /// Event ids kept for deduplication.
    pub dedup_ids: usize,
    /// Funnel totals held.
    pub funnel_keys: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
struct ContactKey {
    account: u32,
    #[serde(with = "state::user_hash")]
    user: [u64; 2],
}

impl ContactKey {
    fn user(&self) -> UserKey {
        UserKey((u128::from(self.user[0]) << 64) | u128::from(self.user[1]))
    }
}

/// One conversation's state. Times use [`NONE`] for "not yet".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Conv {
    started_at: i64,
    last_activity_at: i64,
    #[serde(with = "state::opt_time")]
    first_click_at: i64,
    #[serde(with = "state::opt_time")]
    first_inbound_at: i64,
    #[serde(with = "state::opt_time")]
    first_reply_at: i64,
    #[serde(with = "state::opt_time")]
    qualified_at: i64,
    #[serde(with = "state::opt_time")]
    first_purchase_at: i64,
    revenue: i64,
    ad: u32,
    start_day: i32,
    clicks: u32,
    inbound: u32,
    outbound: u32,
    out_free: u32,
    out_after: u32,
    out_billable: u32,
    followups: u32,
    purchases: u32,
    awaiting_reply: bool,
    /// The `click_id` of its first activity event that carried one.
    click_id: Option<Arc<str>>,
    /// The time of that event.
    #[serde(with = "state::opt_time")]
    click_at: i64,
}

impl Conv {
    fn new(ad: u32, t: i64, start_day: Day) -> Conv {
        Conv {
            started_at: t,
            last_activity_at: t,
            first_click_at: NONE,
            first_inbound_at: NONE,
            first_reply_at: NONE,
            qualified_at: NONE,
            first_purchase_at: NONE,
            revenue: 0,
            ad,
            start_day: start_day.0,
            clicks: 0,
            inbound: 0,
            outbound: 0,
            out_free: 0,
            out_after: 0,
            out_billable: 0,
            followups: 0,
            purchases: 0,
            awaiting_reply: false,
            click_id: None,
            click_at: NONE,
        }
    }

    /// Records the click id of an activity event, if it is the first one.
    fn take_click(&mut self, step: &Step) {
        if self.click_id.is_none() && step.click_id.is_some() {
            self.click_id = step.click_id.clone();
            self.click_at = step.time;
        }
    }

    /// What this conversation adds to the funnel row of its start day.
    fn contribution(&self) -> FunnelCounts {
        let mut c = FunnelCounts {
            conversations_started: 1,
            conversations_messaged: i64::from(self.inbound > 0),
            outbound_in_free_window: i64::from(self.out_free),
            outbound_after_free_window: i64::from(self.out_after),
            outbound_billable: i64::from(self.out_billable),
            over_messaged_conversations: i64::from(self.followups > MAX_FOLLOWUPS),
            qualified_leads: i64::from(self.qualified_at != NONE),
            purchases: i64::from(self.purchases),
            revenue: self.revenue,
            ..FunnelCounts::default()
        };
        if self.first_reply_at != NONE {
            let response = self.first_reply_at - self.first_inbound_at;
            c.replied = 1;
            c.sum_first_response_ms = response;
            match ResponseBucket::of(response) {
                ResponseBucket::Le5m => c.replied_le_5m = 1,
                ResponseBucket::Le1h => c.replied_le_1h = 1,
                ResponseBucket::Le24h => c.replied_le_24h = 1,
                ResponseBucket::Gt24h | ResponseBucket::None => c.replied_gt_24h = 1,
            }
        }
        c
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ContactState {
    /// In creation order, so the last one of an ad is its current conversation.
    #[serde(with = "state::convs")]
    convs: SmallVec<[Conv; 1]>,
    last_start_day: i32,
    last_organic_day: i32,
    /// Start days of messaged conversations already evicted, while a
    /// conversation of the same day could still appear or become messaged,
    /// so that each day counts the contact once among `messaging_contacts`.
    /// Empty for almost every contact: a day is dropped once it is behind the
    /// lateness horizon and no conversation of it is held.
    evicted_messaged_days: Vec<i32>,
}

impl Default for ContactState {
    fn default() -> Self {
        ContactState {
            convs: SmallVec::new(),
            last_start_day: NO_DAY,
            last_organic_day: NO_DAY,
            evicted_messaged_days: Vec::new(),
        }
    }
}

/// A contact event reduced to what the fold needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Step {
    time: i64,
    /// A purchase's value in units; 1 for a billable `message_out`.
    value: i64,
    event_id: Box<str>,
    ad: u32,
    kind: EventType,
    /// The `click_id` of an activity event.
    click_id: Option<Arc<str>>,
}

impl Step {
    fn order(&self) -> (i64, EventType, &str) {
        (self.time, self.kind, &self.event_id)
    }
}

#[derive(Debug)]
struct Tail {
    checkpoint: PackedState,
    steps: Vec<Step>,
}

// The `dirty` flags are not saved: a state is saved only when drained, so
// every one of them is false.

#[derive(Debug, Default, Serialize, Deserialize)]
struct FunnelEntry {
    counts: FunnelCounts,
    live_conversations: i64,
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ContactsEntry {
    counts: ContactsCounts,
    /// Conversations held that started this day: one may still become
    /// messaged (`messaging_contacts`), so the day is not evicted before them.
    live_conversations: i64,
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct AdDim {
    campaign_id: Arc<str>,
    adset_id: Arc<str>,
    named_at: i64,
    named_by: Arc<str>,
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Snapshot {
    event_id: Arc<str>,
    event_time: i64,
    #[serde(with = "state::money_units")]
    spend: Money,
    currency: Currency,
    impressions: i64,
    clicks: i64,
    reported_conversations: i64,
    #[serde(skip)]
    dirty: bool,
}

/// Identifies a Conversions API export in time order: its source event's
/// time, account and `event_id`.
type ExportKey = (i64, u32, Box<str>);

/// A lead or purchase that will be exported once it is `capi_delay_ms`
/// behind the watermark, with the attribution its last fold gave it.
#[derive(Debug, Serialize, Deserialize)]
struct Candidate {
    lead: bool,
    /// A purchase's value in units.
    value: i64,
    /// The attached conversation's click id and the time of the event that
    /// carried it.
    click: Option<(Arc<str>, i64)>,
}

/// The Conversions API exports of docs/SEMANTICS.md section 7.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Exports {
    /// Not emitted yet; folds insert (sign +1) and retract (sign -1) them.
    pending: BTreeMap<ExportKey, Candidate>,
    /// Emitted, while their event could still be folded again: a fold never
    /// makes them pending again, so an export is emitted once.
    emitted: BTreeSet<ExportKey>,
    /// Emitted since the last drain (never saved: a state is saved drained).
    #[serde(skip)]
    out: Vec<ConversionExport>,
}

#[derive(Debug)]
struct AccountState {
    id: Arc<str>,
    clock: DayClock,
}

/// The aggregates a fold writes its effects into, with the sign to apply.
struct Effects<'a> {
    sign: i64,
    account: u32,
    clock: &'a mut DayClock,
    windows: &'a Windows,
    ad_names: &'a [Arc<str>],
    funnel: &'a mut HashMap<(u32, u32, Day), FunnelEntry>,
    funnel_dirty: &'a mut Vec<(u32, u32, Day)>,
    contacts: &'a mut HashMap<(u32, Day), ContactsEntry>,
    contacts_dirty: &'a mut Vec<(u32, Day)>,
    exports: &'a mut Exports,
}

impl Effects<'_> {
    fn funnel_entry(&mut self, ad: u32, day: Day) -> &mut FunnelEntry {
        let key = (self.account, ad, day);
        let entry = self.funnel.entry(key).or_default();
        if !entry.dirty {
            entry.dirty = true;
            self.funnel_dirty.push(key);
        }
        entry
    }

    fn contacts_entry(&mut self, day: Day) -> &mut ContactsCounts {
        let key = (self.account, day);
        let entry = self.contacts.entry(key).or_default();
        if !entry.dirty {
            entry.dirty = true;
            self.contacts_dirty.push(key);
        }
        &mut entry.counts
    }

    fn conv_changed(&mut self, conv: &Conv, before: Option<&FunnelCounts>) {
        if self.sign == 0 {
            return;
        }
        let sign = self.sign;
        let after = conv.contribution();
        let entry = self.funnel_entry(conv.ad, Day(conv.start_day));
        if let Some(before) = before {
            entry.counts.add_signed(before, -sign);
        } else {
            entry.live_conversations += sign;
        }
        entry.counts.add_signed(&after, sign);
        if before.is_none() {
            // Not a change of the row: the entry is not marked dirty.
            let key = (self.account, Day(conv.start_day));
            self.contacts.entry(key).or_default().live_conversations += sign;
        }
    }

    fn raw(&mut self, ad: u32, day: Day, apply: impl FnOnce(&mut FunnelCounts, i64)) {
        if self.sign != 0 {
            let sign = self.sign;
            apply(&mut self.funnel_entry(ad, day).counts, sign);
        }
    }

    /// A lead or purchase to export, attached to a conversation with this
    /// click (id and time), or to none.
    fn export(&mut self, step: &Step, click: Option<(Arc<str>, i64)>) {
        let key = (step.time, self.account, step.event_id.clone());
        match self.sign {
            1 if !self.exports.emitted.contains(&key) => {
                let candidate = Candidate {
                    lead: step.kind == EventType::Lead,
                    value: step.value,
                    click,
                };
                self.exports.pending.insert(key, candidate);
            }
            -1 => {
                self.exports.pending.remove(&key);
            }
            _ => {}
        }
    }

    fn account_level(&mut self, day: Day, apply: impl FnOnce(&mut ContactsCounts, i64)) {
        if self.sign != 0 {
            let sign = self.sign;
            apply(self.contacts_entry(day), sign);
        }
    }

    /// The conversation an unattributed event belongs to: the most recently
    /// active one (of `ad` if given), if its last activity is within `window`.
    fn most_recent(&self, state: &ContactState, t: i64, ad: u32, window: i64) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, c) in state.convs.iter().enumerate() {
            if ad != NO_AD && c.ad != ad {
                continue;
            }
            best = match best {
                None => Some(i),
                Some(b) => {
                    let cur = &state.convs[b];
                    let better = (c.last_activity_at, c.started_at)
                        > (cur.last_activity_at, cur.started_at)
                        || ((c.last_activity_at, c.started_at)
                            == (cur.last_activity_at, cur.started_at)
                            && self.ad_names[c.ad as usize] < self.ad_names[cur.ad as usize]);
                    Some(if better { i } else { b })
                }
            };
        }
        best.filter(|&i| t - state.convs[i].last_activity_at < window)
    }

    /// An activity event of the contact on `ad` at `t`: joins the ad's
    /// current conversation or starts a new one. Returns its index.
    fn activity(&mut self, state: &mut ContactState, ad: u32, t: i64, day: Day) -> usize {
        if let Some(i) = state.convs.iter().rposition(|c| c.ad == ad) {
            if t - state.convs[i].last_activity_at < self.windows.gap_ms {
                state.convs[i].last_activity_at = t;
                return i;
            }
        }
        let conv = Conv::new(ad, t, day);
        self.conv_changed(&conv, None);
        state.convs.push(conv);
        if state.last_start_day != day.0 {
            state.last_start_day = day.0;
            self.account_level(day, |c, s| c.unique_contacts += s);
        }
        state.convs.len() - 1
    }

    /// Folds one step into a contact's state, in total order.
    fn step(&mut self, state: &mut ContactState, step: &Step) {
        let t = step.time;
        let day = self.clock.day_of(t);
        match step.kind {
            EventType::AdClick => {
                let i = self.activity(state, step.ad, t, day);
                let conv = &mut state.convs[i];
                conv.take_click(step);
                conv.clicks += 1;
                if conv.first_click_at == NONE {
                    conv.first_click_at = t;
                }
                self.raw(step.ad, day, |c, s| c.clicks += s);
            }
            EventType::MessageIn => {
                let ad = if step.ad != NO_AD {
                    Some(step.ad)
                } else {
                    self.most_recent(state, t, NO_AD, self.windows.gap_ms)
                        .map(|i| state.convs[i].ad)
                };
                let Some(ad) = ad else {
                    let first_today = state.last_organic_day != day.0;
                    state.last_organic_day = day.0;
                    self.account_level(day, |c, s| {
                        c.organic_inbound_messages += s;
                        if first_today {
                            c.organic_contacts += s;
                        }
                    });
                    return;
                };
                let i = self.activity(state, ad, t, day);
                let conv = &mut state.convs[i];
                let before = conv.contribution();
                conv.take_click(step);
                conv.inbound += 1;
                if conv.first_inbound_at == NONE {
                    conv.first_inbound_at = t;
                }
                conv.awaiting_reply = true;
                let first_inbound = conv.inbound == 1;
                let start_day = conv.start_day;
                let conv = &state.convs[i];
                self.conv_changed(conv, Some(&before));
                self.raw(ad, day, |c, s| c.inbound_messages += s);
                // Only a first message can make a contact messaging: the
                // other conversations are not scanned on every message.
                let counted = || {
                    state.evicted_messaged_days.contains(&start_day)
                        || state
                            .convs
                            .iter()
                            .enumerate()
                            .any(|(j, c)| j != i && c.start_day == start_day && c.inbound > 0)
                };
                if first_inbound && !counted() {
                    self.account_level(Day(start_day), |c, s| c.messaging_contacts += s);
                }
            }
            EventType::MessageOut => {
                let Some(i) = self.most_recent(state, t, NO_AD, self.windows.gap_ms) else {
                    return;
                };
                let conv = &mut state.convs[i];
                let before = conv.contribution();
                conv.outbound += 1;
                if step.value == 1 {
                    conv.out_billable += 1;
                }
                let is_reply = std::mem::replace(&mut conv.awaiting_reply, false);
                if conv.first_inbound_at != NONE {
                    if conv.first_reply_at == NONE {
                        conv.first_reply_at = t;
                    }
                    if t < conv.first_inbound_at + FREE_WINDOW_MS {
                        conv.out_free += 1;
                        if !is_reply {
                            conv.followups += 1;
                        }
                    } else {
                        conv.out_after += 1;
                    }
                }
                let conv = &state.convs[i];
                self.conv_changed(conv, Some(&before));
            }
            EventType::Lead | EventType::Purchase => {
                let window = self.windows.attribution_window_ms;
                let attached = self.most_recent(state, t, step.ad, window);
                let is_lead = step.kind == EventType::Lead;
                let Some(i) = attached else {
                    self.account_level(day, |c, s| {
                        if is_lead {
                            c.unattributed_leads += s;
                        } else {
                            c.unattributed_purchases += s;
                            c.purchases_on_day += s;
                            c.revenue_on_day += step.value * s;
                        }
                    });
                    self.export(step, None);
                    return;
                };
                let conv = &mut state.convs[i];
                let before = conv.contribution();
                if is_lead {
                    if conv.qualified_at != NONE {
                        return;
                    }
                    conv.qualified_at = t;
                } else {
                    conv.purchases += 1;
                    conv.revenue += step.value;
                    if conv.first_purchase_at == NONE {
                        conv.first_purchase_at = t;
                    }
                }
                let conv = &state.convs[i];
                self.conv_changed(conv, Some(&before));
                let click = conv.click_id.clone().map(|id| (id, conv.click_at));
                if !is_lead {
                    self.account_level(day, |c, s| {
                        c.purchases_on_day += s;
                        c.revenue_on_day += step.value * s;
                    });
                }
                self.export(step, click);
            }
            EventType::AdSpend => {}
        }
    }
}

/// The state of one partition. See the module documentation for the contract.
#[derive(Debug)]
pub struct Sessionizer {
    partition: u32,
    windows: Windows,
    settings: Accounts,
    accounts: Vec<AccountState>,
    account_index: HashMap<Arc<str>, u32>,
    ad_names: Vec<Arc<str>>,
    ad_index: HashMap<Arc<str>, u32>,
    contacts: Contacts,
    /// Contacts changed since the last drain, with the slot they had then.
    dirty_contacts: Vec<(u32, ContactKey)>,
    pending_deletes: HashMap<ContactKey, Vec<(u32, i64)>>,
    pending_rows: Vec<ConversationChange>,
    seen: HashSet<u128>,
    seen_by_hour: BTreeMap<i64, Vec<u128>>,
    watermark: i64,
    maintained_hour: i64,
    funnel: HashMap<(u32, u32, Day), FunnelEntry>,
    funnel_dirty: Vec<(u32, u32, Day)>,
    contacts_daily: HashMap<(u32, Day), ContactsEntry>,
    contacts_dirty: Vec<(u32, Day)>,
    ads: HashMap<(u32, u32), AdDim>,
    ads_dirty: Vec<(u32, u32)>,
    spend: HashMap<(u32, u32, Day), Snapshot>,
    spend_dirty: Vec<(u32, u32, Day)>,
    exports: Exports,
    counts: OutcomeCounts,
}

impl Sessionizer {
    /// An empty sessionizer for `partition`.
    pub fn new(partition: u32, windows: Windows, accounts: Accounts) -> Self {
        Sessionizer {
            partition,
            windows,
            settings: accounts,
            accounts: Vec::new(),
            account_index: HashMap::new(),
            ad_names: Vec::new(),
            ad_index: HashMap::new(),
            contacts: Contacts::default(),
            dirty_contacts: Vec::new(),
            pending_deletes: HashMap::new(),
            pending_rows: Vec::new(),
            seen: HashSet::new(),
            seen_by_hour: Default::default(),
            watermark: i64::MIN,
            maintained_hour: i64::MIN,
            funnel: HashMap::new(),
            funnel_dirty: Vec::new(),
            contacts_daily: HashMap::new(),
            contacts_dirty: Vec::new(),
            ads: HashMap::new(),
            ads_dirty: Vec::new(),
            spend: HashMap::new(),
            spend_dirty: Vec::new(),
            exports: Exports::default(),
            counts: OutcomeCounts::default(),
        }
    }

    /// The partition this state belongs to.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The highest event time applied, if any.
    pub fn watermark(&self) -> Option<i64> {
        (self.watermark != i64::MIN).then_some(self.watermark)
    }

    /// Cumulative outcome counts.
    pub fn outcome_counts(&self) -> OutcomeCounts {
        self.counts
    }

    /// The settings of an account.
    pub fn account_settings(&self, account_id: &str) -> AccountSettings {
        self.settings.get(account_id)
    }

    /// The windows it counts with.
    pub fn windows(&self) -> Windows {
        self.windows
    }

    /// The accounts with an event applied so far: the only ones whose
    /// settings the state depends on.
    pub fn account_ids(&self) -> impl Iterator<Item = &str> {
        self.accounts.iter().map(|a| &*a.id)
    }

    /// Sizes of the state.
    pub fn stats(&self) -> StateStats {
        let mut stats = StateStats {
            contacts: self.contacts.len(),
            dedup_ids: self.seen.len(),
            funnel_keys: self.funnel.len(),
            ..StateStats::default()
        };
        for contact in self.contacts.iter() {
            stats.conversations += contact.state.conversations();
            stats.kept_events += contact.tail.as_ref().map_or(0, |t| t.steps.len());
        }
        stats
    }

    fn account(&mut self, id: &str) -> u32 {
        if let Some(&i) = self.account_index.get(id) {
            return i;
        }
        let i = self.accounts.len() as u32;
        let id: Arc<str> = Arc::from(id);
        let tz = self.settings.get(&id).time_zone;
        self.accounts.push(AccountState {
            id: id.clone(),
            clock: DayClock::new(tz),
        });
        self.account_index.insert(id, i);
        i
    }

    fn ad(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.ad_index.get(name) {
            return i;
        }
        let i = self.ad_names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.ad_names.push(name.clone());
        self.ad_index.insert(name, i);
        i
    }

    /// Applies one event. The event must have been validated.
    pub fn apply(&mut self, event: &Event) -> Outcome {
        let horizon = self.watermark.saturating_sub(self.windows.lateness_ms);
        if self.watermark != i64::MIN && event.time < horizon {
            self.counts.late += 1;
            return Outcome::Late {
                watermark: self.watermark,
            };
        }
        let id = xxhash_rust::xxh3::xxh3_128_with_seed(
            event.event_id.as_bytes(),
            account_seed(&event.account_id),
        );
        if !self.seen.insert(id) {
            self.counts.duplicate += 1;
            return Outcome::Duplicate;
        }
        self.seen_by_hour
            .entry(event.time.div_euclid(HOUR_MS))
            .or_default()
            .push(id);
        self.counts.applied += 1;
        if event.time > self.watermark {
            self.watermark = event.time;
            self.maintain();
        }
        let account = self.account(&event.account_id);
        match &event.body {
            Body::AdSpend {
                ad_id,
                adset_id,
                campaign_id,
                date,
                spend,
                currency,
                impressions,
                clicks,
                reported_conversations,
            } => {
                let ad = self.ad(ad_id);
                self.name_ad(
                    account,
                    ad,
                    campaign_id.as_deref(),
                    adset_id.as_deref(),
                    event,
                );
                let snapshot = Snapshot {
                    event_id: Arc::from(event.event_id.as_str()),
                    event_time: event.time,
                    spend: *spend,
                    currency: *currency,
                    impressions: saturating_i64(*impressions),
                    clicks: saturating_i64(*clicks),
                    reported_conversations: saturating_i64(*reported_conversations),
                    dirty: true,
                };
                let key = (account, ad, *date);
                match self.spend.get_mut(&key) {
                    Some(old)
                        if (old.event_time, &*old.event_id)
                            >= (snapshot.event_time, &*snapshot.event_id) => {}
                    Some(old) => {
                        let was_dirty = old.dirty;
                        *old = snapshot;
                        if !was_dirty {
                            self.spend_dirty.push(key);
                        }
                    }
                    None => {
                        self.spend.insert(key, snapshot);
                        self.spend_dirty.push(key);
                    }
                }
            }
            body => {
                let user = event.user().unwrap_or(UserKey(0));
                let mut click = None;
                let (kind, ad, value) = match body {
                    Body::AdClick {
                        ad_id,
                        adset_id,
                        campaign_id,
                        click_id,
                        ..
                    } => {
                        click = click_id.as_deref().map(Arc::from);
                        let ad = self.ad(ad_id);
                        self.name_ad(
                            account,
                            ad,
                            campaign_id.as_deref(),
                            adset_id.as_deref(),
                            event,
                        );
                        (EventType::AdClick, ad, 0)
                    }
                    Body::MessageIn {
                        referral_ad_id,
                        click_id,
                        ..
                    } => {
                        click = click_id.as_deref().map(Arc::from);
                        let ad = referral_ad_id.as_deref().map_or(NO_AD, |a| self.ad(a));
                        (EventType::MessageIn, ad, 0)
                    }
                    Body::MessageOut { billable, .. } => (
                        EventType::MessageOut,
                        NO_AD,
                        i64::from(*billable == Some(true)),
                    ),
                    Body::Lead { ad_id, .. } => (
                        EventType::Lead,
                        ad_id.as_deref().map_or(NO_AD, |a| self.ad(a)),
                        0,
                    ),
                    Body::Purchase { ad_id, value, .. } => (
                        EventType::Purchase,
                        ad_id.as_deref().map_or(NO_AD, |a| self.ad(a)),
                        value.0,
                    ),
                    Body::AdSpend { .. } => unreachable!("handled above"),
                };
                let step = Step {
                    time: event.time,
                    value,
                    event_id: event.event_id.as_str().into(),
                    ad,
                    kind,
                    click_id: click,
                };
                let key = ContactKey {
                    account,
                    user: [(user.0 >> 64) as u64, user.0 as u64],
                };
                self.apply_step(key, step);
            }
        }
        self.emit_exports(self.watermark.saturating_sub(self.windows.capi_delay_ms));
        Outcome::Applied
    }

    /// Emits every pending export whose event is at or before `until`.
    fn emit_exports(&mut self, until: i64) {
        while let Some(entry) = self.exports.pending.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let (key, candidate) = entry.remove_entry();
            let (time, account, event_id) = &key;
            let account = &mut self.accounts[*account as usize];
            let decision = match &candidate.click {
                None => ExportDecision::NoClickId,
                Some((_, at)) if time - at <= CLICK_WINDOW_MS => ExportDecision::Send,
                Some(_) => ExportDecision::OutsideWindow,
            };
            let purchase = !candidate.lead;
            self.exports.out.push(ConversionExport {
                export_id: export_id(&account.id, event_id),
                account_id: account.id.clone(),
                event_name: if purchase {
                    ConversionName::Purchase
                } else {
                    ConversionName::LeadSubmitted
                },
                event_time: *time,
                day: account.clock.day_of(*time),
                click_id: candidate.click.map(|(id, _)| id),
                value: purchase.then_some(Money(candidate.value)),
                currency: purchase.then(|| self.settings.get(&account.id).currency),
                decision,
            });
            self.exports.emitted.insert(key);
        }
    }

    /// The end of a finite input (a file replayed offline): the watermark
    /// moves past every event, so every pending export is emitted.
    pub fn finish(&mut self) {
        self.emit_exports(i64::MAX);
    }

    fn name_ad(
        &mut self,
        account: u32,
        ad: u32,
        campaign: Option<&str>,
        adset: Option<&str>,
        event: &Event,
    ) {
        if campaign.is_none() && adset.is_none() {
            return;
        }
        let key = (account, ad);
        if let Some(old) = self.ads.get(&key) {
            if (old.named_at, &*old.named_by) >= (event.time, event.event_id.as_str()) {
                return;
            }
        }
        let dim = AdDim {
            campaign_id: Arc::from(campaign.unwrap_or("")),
            adset_id: Arc::from(adset.unwrap_or("")),
            named_at: event.time,
            named_by: Arc::from(event.event_id.as_str()),
            dirty: true,
        };
        if let Some(old) = self.ads.insert(key, dim) {
            if old.dirty {
                return;
            }
        }
        self.ads_dirty.push(key);
    }

    fn apply_step(&mut self, key: ContactKey, step: Step) {
        let horizon = self.watermark - self.windows.lateness_ms;
        let Sessionizer {
            contacts,
            accounts,
            windows,
            ad_names,
            funnel,
            funnel_dirty,
            contacts_daily,
            contacts_dirty,
            dirty_contacts,
            pending_deletes,
            exports,
            ..
        } = self;
        let mut fx = Effects {
            sign: 1,
            account: key.account,
            clock: &mut accounts[key.account as usize].clock,
            windows,
            ad_names,
            funnel,
            funnel_dirty,
            contacts: contacts_daily,
            contacts_dirty,
            exports,
        };
        let slot = contacts.get_or_insert(key);
        let contact = contacts.slot(slot);
        if !contact.dirty {
            contact.dirty = true;
            dirty_contacts.push((slot, key));
        }
        let tail = contact.tail.get_or_insert_with(|| {
            Box::new(Tail {
                checkpoint: contact.state.clone(),
                // Most tails never hold a second event.
                steps: Vec::with_capacity(1),
            })
        });
        let in_order = tail
            .steps
            .last()
            .is_none_or(|last| last.order() < step.order());
        if in_order {
            contact.state.with(|state| fx.step(state, &step));
            tail.steps.push(step);
        } else {
            compact(tail, horizon, &mut fx);
            fx.sign = -1;
            let mut replay = tail.checkpoint.unpack();
            for s in &tail.steps {
                fx.step(&mut replay, s);
            }
            let at = tail.steps.partition_point(|s| s.order() < step.order());
            tail.steps.insert(at, step);
            fx.sign = 1;
            let mut replay = tail.checkpoint.unpack();
            for s in &tail.steps {
                fx.step(&mut replay, s);
            }
            let old = contact.state.take();
            let gone: Vec<(u32, i64)> = old
                .convs
                .iter()
                .filter(|o| {
                    !replay
                        .convs
                        .iter()
                        .any(|n| n.ad == o.ad && n.started_at == o.started_at)
                })
                .map(|o| (o.ad, o.started_at))
                .collect();
            contact.state = PackedState::pack(replay);
            if !gone.is_empty() {
                pending_deletes.entry(key).or_default().extend(gone);
            }
        }
        let due = tail
            .steps
            .first()
            .map_or(UNSCHEDULED, |s| s.time + windows.lateness_ms + 1);
        contacts.schedule(slot, due);
    }

    /// Runs the maintenance that the watermark made due: compaction of kept
    /// events, eviction of what can no longer change.
    fn maintain(&mut self) {
        let hour = self.watermark.div_euclid(HOUR_MS);
        if hour <= self.maintained_hour {
            return;
        }
        self.maintained_hour = hour;
        let horizon = self.watermark - self.windows.lateness_ms;
        // Dedup ids: a bucket goes once every time in it is behind the horizon.
        while let Some(entry) = self.seen_by_hour.first_entry() {
            if (entry.key() + 1) * HOUR_MS > horizon {
                break;
            }
            for id in entry.remove() {
                self.seen.remove(&id);
            }
        }
        // An emitted export's event can be folded again only while it is
        // not behind the horizon.
        while self
            .exports
            .emitted
            .first()
            .is_some_and(|(time, _, _)| *time < horizon)
        {
            self.exports.emitted.pop_first();
        }
        while let Some(due) = self.contacts.pop_due(self.watermark) {
            for slot in due {
                self.maintain_contact(slot, horizon);
            }
        }
        self.evict_aggregates(horizon);
    }

    fn maintain_contact(&mut self, slot: u32, horizon: i64) {
        let retention = self.windows.retention_ms();
        let contact = self.contacts.slot(slot);
        let key = contact.key();
        let account = &mut self.accounts[key.account as usize];
        let horizon_day = account.clock.day_of(horizon).0;
        let mut fx = Effects {
            sign: 0,
            account: key.account,
            clock: &mut account.clock,
            windows: &self.windows,
            ad_names: &self.ad_names,
            funnel: &mut self.funnel,
            funnel_dirty: &mut self.funnel_dirty,
            contacts: &mut self.contacts_daily,
            contacts_dirty: &mut self.contacts_dirty,
            exports: &mut self.exports,
        };
        if let Some(tail) = contact.tail.as_mut() {
            compact(tail, horizon, &mut fx);
            if tail.steps.is_empty() {
                contact.tail = None;
            }
        }
        let next;
        if let Some(tail) = &contact.tail {
            next = tail.steps[0].time + self.windows.lateness_ms + 1;
        } else {
            let watermark = self.watermark;
            let evictable = |c: &Conv| c.last_activity_at < watermark - retention;
            let mut state = contact.state.take();
            if state.convs.iter().any(evictable) {
                if contact.dirty {
                    contact.dirty = false;
                    materialize(
                        key,
                        &state,
                        &self.accounts[key.account as usize].id,
                        &self.ad_names,
                        &mut self.pending_deletes,
                        &mut self.pending_rows,
                    );
                }
                for conv in state.convs.iter().filter(|c| evictable(c)) {
                    if let Some(entry) =
                        self.funnel
                            .get_mut(&(key.account, conv.ad, Day(conv.start_day)))
                    {
                        entry.live_conversations -= 1;
                    }
                    if let Some(entry) = self
                        .contacts_daily
                        .get_mut(&(key.account, Day(conv.start_day)))
                    {
                        entry.live_conversations -= 1;
                    }
                }
                for conv in state.convs.iter().filter(|c| evictable(c)) {
                    let day = conv.start_day;
                    if conv.inbound > 0 && !state.evicted_messaged_days.contains(&day) {
                        state.evicted_messaged_days.push(day);
                    }
                }
                state.convs.retain(|c| !evictable(c));
            }
            // A day behind the horizon gets no new conversation, but one of
            // its conversations still held may become messaged.
            let convs = &state.convs;
            state
                .evicted_messaged_days
                .retain(|d| *d >= horizon_day || convs.iter().any(|c| c.start_day == *d));
            let removable = state.convs.is_empty()
                && state.last_organic_day < horizon_day
                && state.last_start_day < horizon_day;
            if removable {
                if contact.dirty {
                    contact.dirty = false;
                    materialize(
                        key,
                        &state,
                        &self.accounts[key.account as usize].id,
                        &self.ad_names,
                        &mut self.pending_deletes,
                        &mut self.pending_rows,
                    );
                }
                self.contacts.remove(slot);
                return;
            }
            next = state
                .convs
                .iter()
                .map(|c| c.last_activity_at + retention + 1)
                .min()
                .unwrap_or(self.watermark + 24 * HOUR_MS);
            contact.state = PackedState::pack(state);
        }
        // Never due again within this maintenance pass.
        self.contacts.schedule(slot, next.max(self.watermark + 1));
    }

    fn evict_aggregates(&mut self, horizon: i64) {
        let accounts = &mut self.accounts;
        let mut horizon_days: Vec<Day> = accounts
            .iter_mut()
            .map(|a| a.clock.day_of(horizon))
            .collect();
        horizon_days.shrink_to_fit();
        self.funnel.retain(|&(account, _, day), e| {
            e.dirty || e.live_conversations != 0 || day >= horizon_days[account as usize]
        });
        self.contacts_daily.retain(|&(account, day), e| {
            e.dirty || e.live_conversations != 0 || day >= horizon_days[account as usize]
        });
        self.ads.retain(|_, d| d.dirty || d.named_at >= horizon);
        self.spend.retain(|_, s| s.dirty || s.event_time >= horizon);
    }

    /// Takes every row changed since the last drain.
    pub fn drain(&mut self) -> Changes {
        let mut changes = Changes {
            conversations: std::mem::take(&mut self.pending_rows),
            exports: std::mem::take(&mut self.exports.out),
            ..Changes::default()
        };
        for (slot, key) in std::mem::take(&mut self.dirty_contacts) {
            if let Some(contact) = self.contacts.get_at(slot, &key) {
                if contact.dirty {
                    contact.dirty = false;
                    materialize(
                        key,
                        &contact.state.unpack(),
                        &self.accounts[key.account as usize].id,
                        &self.ad_names,
                        &mut self.pending_deletes,
                        &mut changes.conversations,
                    );
                }
            }
        }
        // Deletes of contacts evicted before this drain were already resolved.
        self.pending_deletes.clear();
        for key in std::mem::take(&mut self.funnel_dirty) {
            if let Some(entry) = self.funnel.get_mut(&key) {
                entry.dirty = false;
                changes.funnel.push(FunnelPartialRow {
                    account_id: self.accounts[key.0 as usize].id.clone(),
                    ad_id: self.ad_names[key.1 as usize].clone(),
                    day: key.2,
                    partition: self.partition,
                    counts: entry.counts,
                });
            }
        }
        for key in std::mem::take(&mut self.contacts_dirty) {
            if let Some(entry) = self.contacts_daily.get_mut(&key) {
                entry.dirty = false;
                changes.contacts.push(ContactsPartialRow {
                    account_id: self.accounts[key.0 as usize].id.clone(),
                    day: key.1,
                    partition: self.partition,
                    counts: entry.counts,
                });
            }
        }
        for key in std::mem::take(&mut self.ads_dirty) {
            if let Some(dim) = self.ads.get_mut(&key) {
                dim.dirty = false;
                changes.ads.push(AdRow {
                    account_id: self.accounts[key.0 as usize].id.clone(),
                    ad_id: self.ad_names[key.1 as usize].clone(),
                    partition: self.partition,
                    campaign_id: dim.campaign_id.clone(),
                    adset_id: dim.adset_id.clone(),
                    named_at: dim.named_at,
                    named_by: dim.named_by.clone(),
                });
            }
        }
        for key in std::mem::take(&mut self.spend_dirty) {
            if let Some(s) = self.spend.get_mut(&key) {
                s.dirty = false;
                changes.spend.push(SpendRow {
                    account_id: self.accounts[key.0 as usize].id.clone(),
                    ad_id: self.ad_names[key.1 as usize].clone(),
                    date: key.2,
                    partition: self.partition,
                    event_id: s.event_id.clone(),
                    event_time: s.event_time,
                    spend: s.spend,
                    currency: s.currency,
                    impressions: s.impressions,
                    clicks: s.clicks,
                    reported_conversations: s.reported_conversations,
                });
            }
        }
        changes
    }
}

fn saturating_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn account_seed(account_id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(account_id.as_bytes())
}

/// Folds the kept events that fell behind the horizon into the checkpoint:
/// nothing can be inserted before them any more. Their effects were applied
/// when they arrived, so the fold runs with sign 0.
fn compact(tail: &mut Tail, horizon: i64, fx: &mut Effects<'_>) {
    let n = tail.steps.partition_point(|s| s.time < horizon);
    if n == 0 {
        return;
    }
    let sign = std::mem::replace(&mut fx.sign, 0);
    let steps = &tail.steps[..n];
    tail.checkpoint.with(|checkpoint| {
        for s in steps {
            fx.step(checkpoint, s);
        }
    });
    fx.sign = sign;
    tail.steps.drain(..n);
}

fn materialize(
    key: ContactKey,
    state: &ContactState,
    account_id: &Arc<str>,
    ad_names: &[Arc<str>],
    pending_deletes: &mut HashMap<ContactKey, Vec<(u32, i64)>>,
    out: &mut Vec<ConversationChange>,
) {
    let user_hash = key.user();
    if let Some(deletes) = pending_deletes.remove(&key) {
        for (ad, started_at) in deletes {
            if !state
                .convs
                .iter()
                .any(|c| c.ad == ad && c.started_at == started_at)
            {
                out.push(ConversationChange::Delete(ConversationKey {
                    account_id: account_id.clone(),
                    ad_id: ad_names[ad as usize].clone(),
                    user_hash,
                    started_at,
                }));
            }
        }
    }
    for conv in &state.convs {
        out.push(ConversationChange::Upsert(conversation_row(
            conv,
            account_id,
            &ad_names[conv.ad as usize],
            user_hash,
        )));
    }
}

fn opt(t: i64) -> Option<i64> {
    (t != NONE).then_some(t)
}

fn conversation_row(
    conv: &Conv,
    account_id: &Arc<str>,
    ad_id: &Arc<str>,
    user_hash: UserKey,
) -> ConversationRow {
    let first_inbound_at = opt(conv.first_inbound_at);
    let first_reply_at = opt(conv.first_reply_at);
    let first_response_ms = first_reply_at.zip(first_inbound_at).map(|(r, i)| r - i);
    let response_bucket = match (first_inbound_at, first_response_ms) {
        (None, _) => None,
        (Some(_), None) => Some(ResponseBucket::None),
        (Some(_), Some(ms)) => Some(ResponseBucket::of(ms)),
    };
    let first_purchase_at = opt(conv.first_purchase_at);
    ConversationRow {
        account_id: account_id.clone(),
        ad_id: ad_id.clone(),
        user_hash,
        started_at: conv.started_at,
        last_activity_at: conv.last_activity_at,
        clicks: conv.clicks,
        first_click_at: opt(conv.first_click_at),
        inbound_messages: conv.inbound,
        first_inbound_at,
        outbound_messages: conv.outbound,
        first_reply_at,
        first_response_ms,
        response_bucket,
        free_window_ends_at: first_inbound_at.map(|t| t + FREE_WINDOW_MS),
        outbound_in_free_window: conv.out_free,
        outbound_after_free_window: conv.out_after,
        followups_in_free_window: conv.followups,
        over_messaged: conv.followups > MAX_FOLLOWUPS,
        qualified_at: opt(conv.qualified_at),
        click_id: conv.click_id.clone(),
        purchases: conv.purchases,
        revenue: Money(conv.revenue),
        first_purchase_at,
        time_to_close_ms: first_purchase_at.map(|t| t - conv.started_at),
    }
}

#[cfg(test)]
mod tests;
