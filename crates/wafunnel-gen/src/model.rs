//! The traffic model: the ad catalog of each account and the timeline of
//! events of one contact.

use chrono::{Offset, TimeZone};
use chrono_tz::Tz;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wafunnel_core::time::{DAY_MS, HOUR_MS};

use crate::{AdMove, GenAd, GenConfig, GenStats};

const MINUTE_MS: i64 = 60_000;
const SECOND_MS: i64 = 1_000;
/// `G`, the conversation gap.
pub(crate) const GAP_MS: i64 = 7 * DAY_MS;
/// `W`, the attribution window.
const ATTRIBUTION_MS: i64 = 28 * DAY_MS;
/// The free follow-up window opened by an inbound message.
const FREE_WINDOW_MS: i64 = 72 * HOUR_MS;

/// Relative weight of each local hour of the day for a contact's first click.
const HOUR_WEIGHTS: [u32; 24] = [
    3, 2, 1, 1, 1, 1, 2, 4, 6, 8, 9, 9, 10, 10, 9, 9, 9, 9, 10, 11, 12, 11, 8, 5,
];

/// SplitMix64's finalizer: a bijection of `u64`, so distinct inputs give
/// distinct ids.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A random stream for one purpose, independent of every other.
pub(crate) fn rng_for(seed: u64, purpose: u64, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&purpose.to_le_bytes());
    key[16..24].copy_from_slice(&a.to_le_bytes());
    key[24..].copy_from_slice(&b.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

/// Purposes of [`rng_for`].
pub(crate) const RNG_CONTACT: u64 = 1;
pub(crate) const RNG_DELIVERY: u64 = 2;
pub(crate) const RNG_SPEND: u64 = 3;

/// How an event's time is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeFmt {
    /// Integer epoch milliseconds.
    Millis,
    /// RFC 3339 UTC (`...Z`, milliseconds unless they are zero).
    Utc,
    /// RFC 3339 in the account's offset (`...-03:00`).
    Local,
}

/// One valid event, compact until it is rendered.
#[derive(Clone, Debug)]
pub(crate) struct Ev {
    pub time: i64,
    pub acct: u16,
    pub contact: u32,
    /// Ordinal of the event within its contact: with `contact`, its id.
    pub n: u16,
    pub fmt: TimeFmt,
    pub body: Body,
}

#[derive(Clone, Debug)]
pub(crate) enum Body {
    Click {
        ad: u16,
        click_id: Option<u64>,
    },
    MsgIn {
        referral: Option<u16>,
        click_id: Option<u64>,
    },
    MsgOut {
        automated: bool,
        template: bool,
        /// Written only in Meta mode (a template message is billable).
        billable: bool,
    },
    Lead {
        ad: Option<u16>,
    },
    Purchase {
        ad: Option<u16>,
        value: &'static str,
    },
    Spend {
        ad: u16,
        day: i32,
        rev: u8,
        spend_cents: u64,
        impressions: u64,
        clicks: u64,
        reported: u64,
    },
}

impl Body {
    /// Index in `EventType::ALL`, also the tie-break rank.
    pub(crate) fn type_index(&self) -> usize {
        match self {
            Body::Click { .. } => 0,
            Body::MsgIn { .. } => 1,
            Body::MsgOut { .. } => 2,
            Body::Lead { .. } => 3,
            Body::Purchase { .. } => 4,
            Body::Spend { .. } => 5,
        }
    }
}

/// One ad, with its names.
#[derive(Clone, Debug)]
pub(crate) struct AdPlan {
    pub ad_id: String,
    pub campaign_id: String,
    pub adset_id: String,
    pub moved: Option<(i64, String, String)>,
}

impl AdPlan {
    /// `(campaign_id, adset_id)` named by an event at `time`.
    pub(crate) fn names_at(&self, time: i64) -> (&str, &str) {
        match &self.moved {
            Some((at, campaign, adset)) if time >= *at => (campaign, adset),
            _ => (&self.campaign_id, &self.adset_id),
        }
    }
}

/// An account, ready to generate.
#[derive(Clone, Debug)]
pub(crate) struct AcctPlan {
    pub idx: u16,
    pub id: String,
    /// The account id as a JSON string literal, quotes included.
    pub id_json: String,
    pub currency: String,
    pub tz: Tz,
    /// UTC offset at the start of the period, in ms (local = UTC + offset).
    pub offset_ms: i64,
    /// Brazilian-style area code for the contacts' phone numbers.
    pub area: u32,
    pub ads: Vec<AdPlan>,
    /// Cumulative popularity of the ads, ending at 1.
    pub ad_cdf: Vec<f64>,
    pub values: &'static [&'static str],
    /// Cost of one conversation started, in cents of the currency.
    pub cost_cents: u64,
    /// Meta mode ([`GenConfig::meta`]): spend ids are those of insights rows.
    pub meta: bool,
}

impl AcctPlan {
    pub(crate) fn new(cfg: &GenConfig, idx: usize) -> Self {
        let account = &cfg.accounts[idx];
        let tz: Tz = account.time_zone.parse().expect("validated time zone");
        let offset_ms = tz.offset_from_utc_datetime(
            &chrono::DateTime::from_timestamp_millis(cfg.start_ms)
                .expect("validated start")
                .naive_utc(),
        );
        let offset_ms = i64::from(offset_ms.fix().local_minus_utc()) * SECOND_MS;
        let ads: Vec<AdPlan> = catalog(cfg, idx)
            .into_iter()
            .map(|ad| AdPlan {
                ad_id: ad.ad_id,
                campaign_id: ad.campaign_id,
                adset_id: ad.adset_id,
                moved: ad.moved.map(|m| (m.at_ms, m.campaign_id, m.adset_id)),
            })
            .collect();
        // Popularity falls with the ad's rank, shuffled per account by the seed.
        let mut order: Vec<usize> = (0..ads.len()).collect();
        let mut rng = rng_for(cfg.seed, RNG_SPEND, idx as u64, u64::MAX);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i as u64) as usize);
        }
        let mut weights = vec![0.0; ads.len()];
        for (rank, &ad) in order.iter().enumerate() {
            // Plain arithmetic (no `powf`): the same bits on every platform.
            weights[ad] = 1.0 / (1.0 + 0.6 * rank as f64);
        }
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let mut ad_cdf: Vec<f64> = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        if let Some(last) = ad_cdf.last_mut() {
            *last = 1.0;
        }
        let (values, cost_cents): (&'static [&'static str], u64) = match account.currency.as_str() {
            "BRL" => (
                &[
                    "49.90", "89.90", "129.00", "197", "249.90", "39.9", "499.00",
                ],
                1_400,
            ),
            "EUR" => (&["19.95", "39.00", "49.90", "89.00", "129.50", "9.99"], 300),
            "USD" => (
                &[
                    "19.90", "29.00", "49.90", "79.00", "99.99", "149.00", "12.3456",
                ],
                350,
            ),
            _ => (&["10.00", "25.00", "49.90", "100"], 500),
        };
        const AREAS: [u32; 10] = [11, 21, 31, 41, 51, 61, 71, 81, 85, 91];
        AcctPlan {
            idx: idx as u16,
            id: account.account_id.clone(),
            id_json: serde_json::to_string(&account.account_id).expect("strings serialize"),
            currency: account.currency.clone(),
            tz,
            offset_ms,
            area: AREAS[idx % AREAS.len()],
            ads,
            ad_cdf,
            values,
            cost_cents,
            meta: cfg.meta,
        }
    }

    fn pick_ad(&self, rng: &mut ChaCha8Rng) -> u16 {
        let r: f64 = rng.random();
        self.ad_cdf
            .iter()
            .position(|&c| r < c)
            .unwrap_or(self.ads.len() - 1) as u16
    }

    fn pick_other_ad(&self, rng: &mut ChaCha8Rng, not: u16) -> Option<u16> {
        if self.ads.len() < 2 {
            return None;
        }
        (0..8)
            .map(|_| self.pick_ad(rng))
            .find(|&ad| ad != not)
            .or(Some((not + 1) % self.ads.len() as u16))
    }
}

/// The ads of account `idx`: ids derived from the account id, the last ad of
/// the first ad set moved mid-period to the last ad set of the last campaign.
pub(crate) fn catalog(cfg: &GenConfig, idx: usize) -> Vec<GenAd> {
    let account = &cfg.accounts[idx];
    let stem = account
        .account_id
        .strip_prefix("act_")
        .unwrap_or(&account.account_id);
    let mut ads = Vec::new();
    let mut adset_no = 0;
    for c in 1..=account.campaigns {
        for s in 1..=account.adsets_per_campaign {
            let n_ads = if adset_no % 2 == 0 {
                account.ads_per_adset
            } else {
                account.ads_per_adset.saturating_sub(1).max(1)
            };
            adset_no += 1;
            for a in 1..=n_ads {
                ads.push(GenAd {
                    ad_id: format!("ad_{stem}_{c}_{s}_{a}"),
                    campaign_id: format!("cmp_{stem}_{c}"),
                    adset_id: format!("as_{stem}_{c}_{s}"),
                    moved: None,
                });
            }
        }
    }
    let first_adset_len = account.ads_per_adset as usize;
    let last = ads
        .last()
        .map(|ad| (ad.campaign_id.clone(), ad.adset_id.clone()));
    if let Some((campaign_id, adset_id)) = last {
        let mover = &mut ads[first_adset_len - 1];
        if mover.adset_id != adset_id {
            mover.moved = Some(AdMove {
                at_ms: cfg.start_ms + i64::from(cfg.days) * DAY_MS / 2,
                campaign_id,
                adset_id,
            });
        }
    }
    ads
}

/// The time of a contact's first event: a uniform day of the period, an hour
/// weighted toward the local daytime.
pub(crate) fn contact_start(rng: &mut ChaCha8Rng, plan: &AcctPlan, cfg: &GenConfig) -> i64 {
    let day = rng.random_range(0..i64::from(cfg.days));
    let total: u32 = HOUR_WEIGHTS.iter().sum();
    let mut pick = rng.random_range(0..total);
    let mut hour = 0;
    for (h, &w) in HOUR_WEIGHTS.iter().enumerate() {
        if pick < w {
            hour = h as i64;
            break;
        }
        pick -= w;
    }
    let within = rng.random_range(0..HOUR_MS);
    let mut t = cfg.start_ms + day * DAY_MS + hour * HOUR_MS + within - plan.offset_ms;
    let end = cfg.end_ms();
    if t < cfg.start_ms && t + DAY_MS < end {
        t += DAY_MS;
    } else if t >= end && t - DAY_MS >= cfg.start_ms {
        t -= DAY_MS;
    }
    let t = t.clamp(cfg.start_ms, end - 1);
    if cfg.meta {
        // Webhook timestamps are whole seconds (`start_ms` is one).
        t - t.rem_euclid(SECOND_MS)
    } else {
        t
    }
}

/// Builds the events of one contact.
struct Builder<'a> {
    rng: ChaCha8Rng,
    plan: &'a AcctPlan,
    contact: u32,
    horizon: i64,
    evs: Vec<Ev>,
    n: u16,
}

impl Builder<'_> {
    fn push(&mut self, time: i64, mut body: Body) {
        if time >= self.horizon {
            return;
        }
        if let (
            true,
            Body::MsgOut {
                automated,
                template,
                billable,
            },
        ) = (self.plan.meta, &mut body)
        {
            // A status says nothing of who sent the message; its pricing
            // says whether Meta charged for it.
            *automated = false;
            *billable = *template;
        }
        let r: f64 = self.rng.random();
        let fmt = if r < 0.45 {
            TimeFmt::Millis
        } else if r < 0.9 {
            TimeFmt::Utc
        } else {
            TimeFmt::Local
        };
        self.evs.push(Ev {
            time,
            acct: self.plan.idx,
            contact: self.contact,
            n: self.n,
            fmt,
            body,
        });
        self.n += 1;
    }

    /// A time in `lo..hi`; in Meta mode a whole number of seconds in that
    /// range (at least one more than `lo` rounded up), so that whole-second times stay whole
    /// and every designed bucket keeps its bounds.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if self.plan.meta {
            let ceil_s = |ms: i64| (ms + SECOND_MS - 1).div_euclid(SECOND_MS);
            let (lo_s, hi_s) = (ceil_s(lo), ceil_s(hi));
            self.rng.random_range(lo_s..hi_s.max(lo_s + 1)) * SECOND_MS
        } else {
            self.rng.random_range(lo..hi)
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn click_id(&mut self) -> Option<u64> {
        let id = mix64((u64::from(self.contact) << 16 | u64::from(self.n)) ^ 0xc11c);
        self.chance(0.9).then_some(id)
    }

    fn value(&mut self) -> &'static str {
        let values = self.plan.values;
        values[self.rng.random_range(0..values.len() as u64) as usize]
    }

    /// A lead and maybe purchases after `after`.
    fn conversions(&mut self, after: i64, ad: Option<u16>, stats: &mut GenStats) {
        if !self.chance(0.22) {
            return;
        }
        let tl = after + self.range(10 * MINUTE_MS, 3 * DAY_MS);
        let lead_ad = ad.filter(|_| self.chance(0.3));
        stats.leads += 1;
        stats.leads_with_ad_id += u64::from(lead_ad.is_some());
        self.push(tl, Body::Lead { ad: lead_ad });
        if !self.chance(0.45) {
            return;
        }
        let mut tp = tl + self.range(HOUR_MS, 5 * DAY_MS);
        let purchases = if self.chance(0.1) { 2 } else { 1 };
        for _ in 0..purchases {
            let value = self.value();
            let purchase_ad = ad.filter(|_| self.chance(0.2));
            stats.purchases += 1;
            self.push(
                tp,
                Body::Purchase {
                    ad: purchase_ad,
                    value,
                },
            );
            tp += self.range(DAY_MS, 10 * DAY_MS);
        }
    }

    /// Business replies to a conversation whose first inbound message is
    /// `m0` and inbound messages are `inbound`; `main` records the designed
    /// bucket. Returns the time of the last outbound message.
    fn replies(&mut self, m0: i64, inbound: &[i64], main: bool, stats: &mut GenStats) -> i64 {
        let r: f64 = self.rng.random();
        let (bucket, latency) = if self.chance(0.03) {
            // Exactly on a boundary: still in the lower bucket.
            let b = self.rng.random_range(0..3u64) as usize;
            stats.boundary_responses += u64::from(main);
            (b, [300 * SECOND_MS, HOUR_MS, DAY_MS][b])
        } else if r < 0.38 {
            (0, self.range(SECOND_MS, 300 * SECOND_MS + 1))
        } else if r < 0.58 {
            (1, self.range(300 * SECOND_MS + 1, HOUR_MS + 1))
        } else if r < 0.73 {
            (2, self.range(HOUR_MS + 1, DAY_MS + 1))
        } else if r < 0.84 {
            (3, self.range(DAY_MS + 1, 4 * DAY_MS))
        } else {
            (4, 0)
        };
        if main {
            stats.response_buckets[bucket] += 1;
        }
        if bucket == 4 {
            return m0;
        }
        let r0 = m0 + latency;
        self.push(
            r0,
            Body::MsgOut {
                automated: latency < 10 * SECOND_MS,
                template: latency > DAY_MS,
                billable: false,
            },
        );
        let mut last_out = r0;
        let mut busy_until = r0;
        for &ti in inbound.iter().skip(1).filter(|&&ti| ti > r0) {
            busy_until = busy_until.max(ti);
            if self.chance(0.6) {
                let t = ti + self.range(20 * SECOND_MS, 30 * MINUTE_MS);
                self.push(
                    t,
                    Body::MsgOut {
                        automated: false,
                        template: false,
                        billable: false,
                    },
                );
                busy_until = busy_until.max(t);
                last_out = last_out.max(t);
            }
        }
        // A follow-up storm after the conversation went quiet, in the free window.
        let window_end = m0 + FREE_WINDOW_MS;
        if self.chance(0.35) && busy_until + HOUR_MS < window_end {
            let k = [1, 1, 2, 2, 3, 3, 4, 6][self.rng.random_range(0..8u64) as usize];
            let mut times: Vec<i64> = (0..k)
                .map(|_| self.range(busy_until + MINUTE_MS, window_end))
                .collect();
            times.sort_unstable();
            for t in times {
                let automated = self.chance(0.5);
                self.push(
                    t,
                    Body::MsgOut {
                        automated,
                        template: t - inbound[inbound.len() - 1] > DAY_MS,
                        billable: false,
                    },
                );
                last_out = last_out.max(t);
            }
            stats.over_messaged += u64::from(k > 2);
        }
        if self.chance(0.12) {
            let t = window_end + self.range(HOUR_MS, 3 * DAY_MS);
            self.push(
                t,
                Body::MsgOut {
                    automated: true,
                    template: true,
                    billable: false,
                },
            );
            stats.outbound_after_free_window += 1;
            last_out = last_out.max(t);
        }
        last_out
    }

    /// Inbound messages after `m0` (the first), without referral; returns all.
    fn more_inbound(&mut self, m0: i64) -> Vec<i64> {
        let extra = [0, 0, 0, 1, 1, 1, 2, 2, 3, 4][self.rng.random_range(0..10u64) as usize];
        let mut inbound = vec![m0];
        let mut t = m0;
        for _ in 0..extra {
            t += if self.chance(0.8) {
                self.range(5 * SECOND_MS, 20 * MINUTE_MS)
            } else {
                self.range(HOUR_MS, 2 * DAY_MS)
            };
            self.push(
                t,
                Body::MsgIn {
                    referral: None,
                    click_id: None,
                },
            );
            inbound.push(t);
        }
        inbound
    }

    /// A contact who came through ads.
    fn ad_contact(&mut self, start: i64, stats: &mut GenStats) {
        let ad = self.plan.pick_ad(&mut self.rng);
        let no_click = self.chance(0.05);
        let cid = self.click_id();
        if !no_click {
            self.push(start, Body::Click { ad, click_id: cid });
        }
        let mut last_main = start;
        let mut last_event = start;
        if !no_click && self.chance(0.25) {
            stats.ghost_clicks += 1;
        } else {
            let same_ms = no_click || self.chance(0.12);
            let m0 = if same_ms {
                start
            } else {
                start + self.range(800, 90 * SECOND_MS)
            };
            stats.same_ms_click_message += u64::from(same_ms && !no_click);
            let referral = no_click || self.chance(0.85);
            self.push(
                m0,
                Body::MsgIn {
                    referral: referral.then_some(ad),
                    click_id: cid.filter(|_| referral),
                },
            );
            let inbound = self.more_inbound(m0);
            last_main = inbound[inbound.len() - 1];
            let last_out = self.replies(m0, &inbound, true, stats);
            last_event = last_main.max(last_out);
            self.conversions(last_main, Some(ad), stats);
        }
        let mut last_any = last_main;
        if self.chance(0.07) {
            if let Some(ad2) = self.plan.pick_other_ad(&mut self.rng, ad) {
                stats.second_ad_contacts += 1;
                let t = last_event + self.range(10 * MINUTE_MS, 2 * DAY_MS);
                let cid2 = self.click_id();
                self.push(
                    t,
                    Body::Click {
                        ad: ad2,
                        click_id: cid2,
                    },
                );
                last_any = last_any.max(t);
                if self.chance(0.7) {
                    let m = t + self.range(500, 60 * SECOND_MS);
                    self.push(
                        m,
                        Body::MsgIn {
                            referral: Some(ad2),
                            click_id: cid2,
                        },
                    );
                    let inbound = self.more_inbound(m);
                    last_any = last_any.max(inbound[inbound.len() - 1]);
                    self.replies(m, &inbound, false, stats);
                    self.conversions(last_any, Some(ad2), stats);
                }
            }
        }
        if self.chance(0.08) {
            stats.repeat_clicks_same_conversation += 1;
            let t = last_main + self.range(2 * HOUR_MS, 5 * DAY_MS);
            let cid = self.click_id();
            self.push(t, Body::Click { ad, click_id: cid });
            last_any = last_any.max(t);
            if self.chance(0.5) {
                let m = t + self.range(SECOND_MS, 5 * MINUTE_MS);
                self.push(
                    m,
                    Body::MsgIn {
                        referral: None,
                        click_id: None,
                    },
                );
                last_any = last_any.max(m);
                if self.chance(0.7) {
                    let r = m + self.range(10 * SECOND_MS, 2 * HOUR_MS);
                    self.push(
                        r,
                        Body::MsgOut {
                            automated: false,
                            template: false,
                            billable: false,
                        },
                    );
                }
            }
        }
        if self.chance(0.08) {
            stats.repeat_clicks_new_conversation += 1;
            let t = last_any + GAP_MS + self.range(HOUR_MS, 3 * DAY_MS);
            let cid = self.click_id();
            self.push(t, Body::Click { ad, click_id: cid });
            last_any = t;
            if self.chance(0.6) {
                let m = t + self.range(SECOND_MS, 2 * MINUTE_MS);
                self.push(
                    m,
                    Body::MsgIn {
                        referral: Some(ad),
                        click_id: cid,
                    },
                );
                last_any = m;
                let r = m + self.range(5 * SECOND_MS, 300 * SECOND_MS);
                self.push(
                    r,
                    Body::MsgOut {
                        automated: false,
                        template: false,
                        billable: false,
                    },
                );
                self.conversions(m, Some(ad), stats);
            }
        }
        if self.chance(0.04) {
            // Back after more than the gap, not through an ad: organic.
            let t = last_any + GAP_MS + self.range(HOUR_MS, 5 * DAY_MS);
            self.push(
                t,
                Body::MsgIn {
                    referral: None,
                    click_id: None,
                },
            );
            if self.chance(0.5) {
                let r = t + self.range(10 * SECOND_MS, 3 * HOUR_MS);
                self.push(
                    r,
                    Body::MsgOut {
                        automated: false,
                        template: false,
                        billable: false,
                    },
                );
            }
        }
        if self.chance(0.03) {
            // Converts after the attribution window of every conversation.
            stats.conversions_after_window += 1;
            let t = last_any + ATTRIBUTION_MS + self.range(HOUR_MS, 2 * DAY_MS);
            if self.chance(0.5) {
                stats.leads += 1;
                self.push(t, Body::Lead { ad: None });
            } else {
                stats.purchases += 1;
                let value = self.value();
                self.push(t, Body::Purchase { ad: None, value });
            }
        }
    }

    /// A contact who writes without any ad.
    fn organic_contact(&mut self, start: i64, stats: &mut GenStats) {
        stats.organic_contacts += 1;
        self.push(
            start,
            Body::MsgIn {
                referral: None,
                click_id: None,
            },
        );
        let inbound = self.more_inbound(start);
        if self.chance(0.7) {
            let r = start + self.range(5 * SECOND_MS, 2 * HOUR_MS);
            self.push(
                r,
                Body::MsgOut {
                    automated: false,
                    template: false,
                    billable: false,
                },
            );
        }
        let last = inbound[inbound.len() - 1];
        if self.chance(0.1) {
            stats.leads += 1;
            stats.conversions_without_conversation += 1;
            let t = last + self.range(HOUR_MS, 2 * DAY_MS);
            self.push(t, Body::Lead { ad: None });
        }
        if self.chance(0.05) {
            stats.purchases += 1;
            stats.conversions_without_conversation += 1;
            let value = self.value();
            let t = last + self.range(2 * HOUR_MS, 3 * DAY_MS);
            self.push(t, Body::Purchase { ad: None, value });
        }
    }

    /// A contact known only from a lead or purchase (an offline sale).
    fn offline_contact(&mut self, start: i64, stats: &mut GenStats) {
        stats.offline_contacts += 1;
        stats.conversions_without_conversation += 1;
        if self.chance(0.5) {
            stats.leads += 1;
            self.push(start, Body::Lead { ad: None });
        } else {
            stats.purchases += 1;
            let value = self.value();
            self.push(start, Body::Purchase { ad: None, value });
        }
    }
}

/// The events of contact `contact` of `plan`, sorted by `(time, type rank)`,
/// and the conversation starts among them as `(ad, time)`.
pub(crate) fn build_contact(
    cfg: &GenConfig,
    plan: &AcctPlan,
    contact: u32,
    stats: &mut GenStats,
) -> (Vec<Ev>, Vec<(u16, i64)>) {
    let mut rng = rng_for(
        cfg.seed,
        RNG_CONTACT,
        u64::from(plan.idx),
        u64::from(contact),
    );
    let start = contact_start(&mut rng, plan, cfg);
    let mut b = Builder {
        rng,
        plan,
        contact,
        horizon: cfg.horizon_ms(),
        evs: Vec::with_capacity(12),
        n: 0,
    };
    stats.contacts += 1;
    let r: f64 = b.rng.random();
    if r < 0.05 {
        b.organic_contact(start, stats);
    } else if r < 0.06 {
        b.offline_contact(start, stats);
    } else {
        b.ad_contact(start, stats);
    }
    let mut evs = b.evs;
    evs.sort_by_key(|e| (e.time, e.body.type_index(), e.n));
    let starts = sessionize(&evs, stats);
    (evs, starts)
}

/// A minimal sessionizer over one contact's sorted events: the conversation
/// starts (for spend figures) and the inbound messages that are organic.
fn sessionize(evs: &[Ev], stats: &mut GenStats) -> Vec<(u16, i64)> {
    let mut last: Vec<(u16, i64)> = Vec::new();
    let mut starts = Vec::new();
    let mut touch =
        |ad: u16, t: i64, last: &mut Vec<(u16, i64)>| match last.iter_mut().find(|(a, _)| *a == ad)
        {
            Some((_, l)) => {
                if t - *l >= GAP_MS {
                    starts.push((ad, t));
                }
                *l = t;
            }
            None => {
                starts.push((ad, t));
                last.push((ad, t));
            }
        };
    for ev in evs {
        match ev.body {
            Body::Click { ad, .. } => touch(ad, ev.time, &mut last),
            Body::MsgIn {
                referral: Some(ad), ..
            } => {
                stats.messages_with_referral += 1;
                touch(ad, ev.time, &mut last);
            }
            Body::MsgIn { referral: None, .. } => {
                stats.messages_without_referral += 1;
                let recent = last
                    .iter()
                    .copied()
                    .max_by_key(|&(ad, l)| (l, std::cmp::Reverse(ad)));
                match recent {
                    Some((ad, l)) if ev.time - l < GAP_MS => touch(ad, ev.time, &mut last),
                    _ => stats.organic_messages += 1,
                }
            }
            _ => {}
        }
    }
    stats.conversations_started += starts.len() as u64;
    starts
}
