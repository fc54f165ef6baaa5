//! The scheduler: contacts and spend snapshots merged into event-time order,
//! then delivered in arrival order with duplicates, late and invalid records.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use wafunnel_core::config::Windows;
use wafunnel_core::time::{Day, DayClock, DAY_MS, HOUR_MS};

use crate::model::{
    build_contact, contact_start, rng_for, AcctPlan, Body, Ev, TimeFmt, RNG_CONTACT, RNG_DELIVERY,
    RNG_SPEND,
};
use crate::render::{invalid, render};
use crate::{GenConfig, GenRecord, GenStats, RecordKind};

/// An event waiting for its time, ordered by `(time, seq)`.
struct Pending {
    time: i64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

/// Events waiting for their time: hour buckets, the current one a heap, so
/// that the heap stays small however long the tail of pending events is.
#[derive(Debug)]
struct Calendar {
    /// The bucket of the heap; `i64::MIN` before the first.
    current: i64,
    heap: BinaryHeap<Reverse<Pending>>,
    later: BTreeMap<i64, Vec<Pending>>,
}

const BUCKET_MS: i64 = HOUR_MS;

impl Calendar {
    fn new() -> Self {
        Calendar {
            current: i64::MIN,
            heap: BinaryHeap::new(),
            later: BTreeMap::new(),
        }
    }

    fn push(&mut self, pending: Pending) {
        let bucket = pending.time.div_euclid(BUCKET_MS);
        if bucket <= self.current {
            self.heap.push(Reverse(pending));
        } else {
            self.later.entry(bucket).or_default().push(pending);
        }
    }

    /// Makes the heap hold the earliest events, if there are any.
    fn refill(&mut self) {
        if self.heap.is_empty() {
            if let Some((bucket, events)) = self.later.pop_first() {
                self.current = bucket;
                self.heap = events.into_iter().map(Reverse).collect();
            }
        }
    }

    /// The earliest time, after a [`Calendar::refill`].
    fn peek_time(&self) -> Option<i64> {
        self.heap.peek().map(|p| p.0.time)
    }

    /// No pending event is earlier than this.
    fn lower_bound(&self) -> Option<i64> {
        self.peek_time()
            .or_else(|| self.later.keys().next().map(|b| b * BUCKET_MS))
    }

    fn pop(&mut self) -> Option<Pending> {
        self.refill();
        self.heap.pop().map(|p| p.0)
    }
}

/// A record waiting for its arrival, ordered by `(arrival, seq)`.
struct Arrival {
    seq: u64,
    record: GenRecord,
}

impl PartialEq for Arrival {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Arrival {}
impl PartialOrd for Arrival {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Arrival {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}
impl Arrival {
    fn key(&self) -> (i64, u64) {
        (self.record.arrival_ms, self.seq)
    }
}

/// The generated records in arrival order; see [`crate::stream`].
#[derive(Debug)]
pub struct GenStream {
    cfg: GenConfig,
    plans: Vec<AcctPlan>,
    /// `(start, account, contact)`, sorted.
    starts: Vec<(i64, u16, u32)>,
    next_start: usize,
    /// `(time, account, local day)` of each day's spend snapshots, sorted.
    triggers: Vec<(i64, u16, i32)>,
    next_trigger: usize,
    pending: Calendar,
    pending_seq: u64,
    /// Conversations started per `(account, ad, local day)`, until reported.
    started: HashMap<(u16, u16, i32), u64>,
    clocks: Vec<DayClock>,
    arrivals: BinaryHeap<Reverse<Arrival>>,
    arrival_seq: u64,
    delivery: ChaCha8Rng,
    spend_rng: ChaCha8Rng,
    lateness_ms: i64,
    stats: GenStats,
    line: Vec<u8>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pending({}, {})", self.time, self.seq)
    }
}

impl std::fmt::Debug for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Arrival({}, {})", self.record.arrival_ms, self.seq)
    }
}

impl GenStream {
    pub(crate) fn new(cfg: &GenConfig) -> Self {
        if let Err(e) = cfg.validate() {
            panic!("invalid GenConfig: {e}");
        }
        let plans: Vec<AcctPlan> = (0..cfg.accounts.len())
            .map(|i| AcctPlan::new(cfg, i))
            .collect();
        let mut starts = Vec::with_capacity(plans.len() * cfg.contacts_per_account);
        for plan in &plans {
            for contact in 0..cfg.contacts_per_account as u32 {
                let mut rng = rng_for(
                    cfg.seed,
                    RNG_CONTACT,
                    u64::from(plan.idx),
                    u64::from(contact),
                );
                starts.push((contact_start(&mut rng, plan, cfg), plan.idx, contact));
            }
        }
        starts.sort_unstable();
        let clocks: Vec<DayClock> = plans.iter().map(|p| DayClock::new(p.tz)).collect();
        let mut triggers = Vec::new();
        let mut stats = GenStats::default();
        for (plan, clock) in plans.iter().zip(&clocks) {
            let mut clock = clock.clone();
            let first = clock.day_of(cfg.start_ms).0;
            let last = clock.day_of(cfg.end_ms() - 1).0;
            for day in first..=last {
                triggers.push((clock.day_start_ms(Day(day + 1)) + HOUR_MS, plan.idx, day));
            }
            stats.moved_ads += plan.ads.iter().filter(|ad| ad.moved.is_some()).count() as u64;
        }
        triggers.sort_unstable();
        GenStream {
            cfg: cfg.clone(),
            plans,
            starts,
            next_start: 0,
            triggers,
            next_trigger: 0,
            pending: Calendar::new(),
            pending_seq: 0,
            started: HashMap::new(),
            clocks,
            arrivals: BinaryHeap::new(),
            arrival_seq: 0,
            delivery: rng_for(cfg.seed, RNG_DELIVERY, 0, 0),
            spend_rng: rng_for(cfg.seed, RNG_SPEND, 0, 0),
            lateness_ms: Windows::default().lateness_ms,
            stats,
            line: Vec::with_capacity(512),
        }
    }

    /// What was generated so far; complete once the iterator is exhausted.
    pub fn stats(&self) -> &GenStats {
        &self.stats
    }

    /// The validation clock of [`GenConfig::valid_now_ms`].
    pub fn valid_now_ms(&self) -> i64 {
        self.cfg.valid_now_ms()
    }

    fn push_pending(&mut self, ev: Ev) {
        self.pending_seq += 1;
        self.pending.push(Pending {
            time: ev.time,
            seq: self.pending_seq,
            ev,
        });
    }

    /// No event still to come from the source is earlier than this.
    fn source_bound(&self) -> Option<i64> {
        let top = self.pending.lower_bound();
        let start = self.starts.get(self.next_start).map(|s| s.0);
        let trigger = self.triggers.get(self.next_trigger).map(|t| t.0);
        [top, start, trigger].into_iter().flatten().min()
    }

    /// The next valid event in event-time order.
    fn next_event(&mut self) -> Option<Ev> {
        loop {
            self.pending.refill();
            let top = self.pending.peek_time().unwrap_or(i64::MAX);
            let start = self.starts.get(self.next_start).map_or(i64::MAX, |s| s.0);
            let trigger = self
                .triggers
                .get(self.next_trigger)
                .map_or(i64::MAX, |t| t.0);
            if start != i64::MAX && start <= trigger && start <= top {
                let (_, acct, contact) = self.starts[self.next_start];
                self.next_start += 1;
                self.start_contact(acct, contact);
            } else if trigger != i64::MAX && trigger <= top {
                let (time, acct, day) = self.triggers[self.next_trigger];
                self.next_trigger += 1;
                self.report_spend(time, acct, day);
            } else {
                return self.pending.pop().map(|p| p.ev);
            }
        }
    }

    fn start_contact(&mut self, acct: u16, contact: u32) {
        let plan = &self.plans[usize::from(acct)];
        let (evs, starts) = build_contact(&self.cfg, plan, contact, &mut self.stats);
        let clock = &mut self.clocks[usize::from(acct)];
        for (ad, time) in starts {
            *self
                .started
                .entry((acct, ad, clock.day_of(time).0))
                .or_default() += 1;
        }
        for ev in evs {
            self.push_pending(ev);
        }
    }

    /// The spend snapshots of every ad of `acct` for local day `day`, and
    /// some revisions a day later.
    fn report_spend(&mut self, at: i64, acct: u16, day: i32) {
        let plan = &self.plans[usize::from(acct)];
        let cost = plan.cost_cents as f64;
        let rng = &mut self.spend_rng;
        let mut snapshots = Vec::new();
        for ad in 0..plan.ads.len() as u16 {
            let conversations = self.started.remove(&(acct, ad, day)).unwrap_or(0);
            let c = conversations as f64;
            let spend_cents =
                (c * cost * rng.random_range(0.7..1.3)) as u64 + rng.random_range(50..800);
            let clicks = (c * rng.random_range(1.0..1.4)).round() as u64 + rng.random_range(0..5);
            let impressions = clicks * rng.random_range(40..150) + rng.random_range(200..2000);
            // Meta counts more "conversations started" than there really are.
            let reported =
                (c * rng.random_range(1.0..1.25)).round() as u64 + rng.random_range(0..=2);
            let time = at + rng.random_range(0..180) * 60_000;
            let body = Body::Spend {
                ad,
                day,
                rev: 0,
                spend_cents,
                impressions,
                clicks,
                reported,
            };
            snapshots.push(Ev {
                time,
                acct,
                contact: 0,
                n: 0,
                fmt: TimeFmt::Utc,
                body,
            });
            if rng.random_bool(0.1) {
                let mut revised = (spend_cents as f64 * rng.random_range(0.85..1.15)) as u64;
                if revised == spend_cents {
                    revised += 1;
                }
                // Mostly a day later; sometimes at the very same time, where the
                // larger event id (`...r1`) wins. An insights row's id follows
                // from its fetch time, so in Meta mode a revision is always a
                // later fetch (a second later), in whole seconds.
                let meta = self.cfg.meta;
                let time = if rng.random_bool(0.2) {
                    time + if meta { 1000 } else { 0 }
                } else {
                    let later = at + DAY_MS + rng.random_range(0..360) * 60_000;
                    let ms = rng.random_range(0..1000);
                    later + if meta { 0 } else { ms }
                };
                let reported = reported + rng.random_range(0..=1);
                let body = Body::Spend {
                    ad,
                    day,
                    rev: 1,
                    spend_cents: revised,
                    impressions,
                    clicks,
                    reported,
                };
                snapshots.push(Ev {
                    time,
                    acct,
                    contact: 0,
                    n: 1,
                    fmt: TimeFmt::Millis,
                    body,
                });
                self.stats.revised_spend_snapshots += 1;
            }
        }
        self.stats.spend_snapshots += snapshots.len() as u64;
        for ev in snapshots {
            self.push_pending(ev);
        }
    }

    fn delay(&mut self) -> i64 {
        let disorder = self.cfg.disorder_ms;
        if self.delivery.random_bool(0.8) {
            self.delivery.random_range(0..=disorder.min(2_000))
        } else {
            self.delivery.random_range(0..=disorder)
        }
    }

    fn push_arrival(&mut self, record: GenRecord) {
        self.arrival_seq += 1;
        self.arrivals.push(Reverse(Arrival {
            seq: self.arrival_seq,
            record,
        }));
    }

    /// Turns one valid event into its records.
    fn deliver(&mut self, ev: &Ev) {
        self.line.clear();
        render(ev, &self.plans, &mut self.line);
        let plan = &self.plans[usize::from(ev.acct)];
        let account_id = plan.id.clone();
        let t = ev.time;
        self.stats.events += 1;
        self.stats.events_by_type[ev.body.type_index()] += 1;
        match ev.fmt {
            TimeFmt::Millis => self.stats.millis_times += 1,
            TimeFmt::Utc | TimeFmt::Local => self.stats.text_times += 1,
        }
        let disorder = self.cfg.disorder_ms;
        let dense = self.cfg.start_ms + 2 * DAY_MS..self.cfg.end_ms() - 3 * DAY_MS;
        if self.cfg.late_rate > 0.0
            && dense.contains(&t)
            && self.delivery.random_bool(self.cfg.late_rate)
        {
            let delay = self.lateness_ms
                + disorder
                + 2 * HOUR_MS
                + self.delivery.random_range(0..6 * HOUR_MS);
            let record = GenRecord {
                line: self.line.clone(),
                kind: RecordKind::Late,
                event_time: t,
                arrival_ms: t + delay,
                account_id,
            };
            self.push_arrival(record);
            return;
        }
        let arrival = t + self.delay();
        let record = GenRecord {
            line: self.line.clone(),
            kind: RecordKind::Original,
            event_time: t,
            arrival_ms: arrival,
            account_id,
        };
        if self.cfg.duplicate_rate > 0.0 && self.delivery.random_bool(self.cfg.duplicate_rate) {
            let again = self.delivery.random_range(arrival..=t + disorder);
            let copy = GenRecord {
                kind: RecordKind::Duplicate,
                arrival_ms: again,
                ..record.clone()
            };
            self.push_arrival(record);
            self.push_arrival(copy);
        } else {
            self.push_arrival(record);
        }
        if self.cfg.invalid_rate > 0.0 && self.delivery.random_bool(self.cfg.invalid_rate) {
            let plan = &self.plans[usize::from(ev.acct)];
            let (line, expected_code) = invalid(
                ev,
                plan,
                &self.line,
                &mut self.delivery,
                self.cfg.valid_now_ms(),
            );
            let account_id = plan.id.clone();
            let arrival = t + self.delay();
            let record = GenRecord {
                line,
                kind: RecordKind::Invalid { expected_code },
                event_time: t,
                arrival_ms: arrival,
                account_id,
            };
            if self.cfg.duplicate_rate > 0.0 && self.delivery.random_bool(self.cfg.duplicate_rate) {
                let again = self.delivery.random_range(arrival..=t + disorder);
                let copy = GenRecord {
                    arrival_ms: again,
                    ..record.clone()
                };
                self.push_arrival(record);
                self.push_arrival(copy);
            } else {
                self.push_arrival(record);
            }
        }
    }
}

impl Iterator for GenStream {
    type Item = GenRecord;

    fn next(&mut self) -> Option<GenRecord> {
        loop {
            if let Some(top) = self.arrivals.peek() {
                let due = self
                    .source_bound()
                    .is_none_or(|bound| top.0.record.arrival_ms <= bound);
                if due {
                    let record = self.arrivals.pop().map(|a| a.0.record)?;
                    let stats = &mut self.stats;
                    stats.records += 1;
                    match record.kind {
                        RecordKind::Original => stats.originals += 1,
                        RecordKind::Duplicate => stats.duplicates += 1,
                        RecordKind::Late => stats.late += 1,
                        RecordKind::Invalid { expected_code } => {
                            stats.invalid += 1;
                            *stats.invalid_by_code.entry(expected_code).or_default() += 1;
                        }
                    }
                    return Some(record);
                }
            }
            let ev = self.next_event()?;
            self.deliver(&ev);
        }
    }
}
