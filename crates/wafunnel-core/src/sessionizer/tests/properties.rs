//! Property tests of the sessionizer's guarantees.

use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::*;

/// A compact description of one event, on a small space of users, ads and
/// times so that boundaries and ties are hit often.
#[derive(Clone, Debug)]
struct Gen {
    kind: u8,
    user: u8,
    ad: u8,
    minute: i64,
    flag: bool,
}

fn gen_event() -> impl Strategy<Value = Gen> {
    (0u8..7, 0u8..4, 0u8..3, 0i64..600, any::<bool>()).prop_map(|(kind, user, ad, minute, flag)| {
        Gen {
            kind,
            user,
            ad,
            minute,
            flag,
        }
    })
}

fn to_events(gens: &[Gen]) -> Vec<Event> {
    gens.iter()
        .enumerate()
        .map(|(i, g)| {
            let id = format!("e{i:04}");
            let user = format!("u{}", g.user);
            let ad = format!("ad_{}", g.ad);
            // Whole minutes plus a little jitter make same-millisecond ties common.
            let t = T0 + g.minute * MIN / 4;
            // Clicks and ad messages carry a click id when `flag` is set.
            let clid = format!("clid_{i}");
            match g.kind {
                0 if g.flag => click_with_id(&id, &user, t, &ad, &clid),
                0 => click(&id, &user, t, &ad),
                1 if g.flag && g.ad == 0 => msg_in_with_id(&id, &user, t, &ad, &clid),
                1 => msg_in(&id, &user, t, g.flag.then_some(ad.as_str())),
                2 => msg_out(&id, &user, t),
                3 => msg_out_billable(&id, &user, t, g.flag),
                4 => lead(&id, &user, t, g.flag.then_some(ad.as_str())),
                5 => purchase(&id, &user, t, if g.flag { "10.5" } else { "0.0001" }),
                _ => spend(
                    &id,
                    t,
                    &ad,
                    if g.flag { "2026-03-02" } else { "2026-03-03" },
                    &format!("{}.25", g.minute),
                    g.minute as u64,
                ),
            }
        })
        .collect()
}

/// `act_1` in the Azores (UTC-1 in March): local midnight falls inside the
/// 150 minutes of generated traffic, so day boundaries are exercised.
fn zoned() -> Accounts {
    let mut accounts = accounts();
    accounts.listed.insert(
        "act_1".into(),
        AccountSettings {
            currency: Currency::USD,
            time_zone: chrono_tz::Atlantic::Azores,
        },
    );
    accounts
}

fn windows() -> Windows {
    // Small gap and window so that 150 minutes of events cross them often.
    Windows {
        gap_ms: 20 * MIN,
        lateness_ms: 45 * MIN,
        attribution_window_ms: 40 * MIN,
        capi_delay_ms: 45 * MIN,
    }
}

fn total_order(events: &[Event]) -> Vec<Event> {
    let mut sorted = events.to_vec();
    sorted.sort_by(|a, b| {
        (a.time, a.event_type(), &a.event_id).cmp(&(b.time, b.event_type(), &b.event_id))
    });
    sorted
}

/// An arrival order in which every event arrives less than `L` after its
/// time would allow, so none is late.
fn within_lateness(events: &[Event], seed: u64, lateness: i64) -> Vec<Event> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut keyed: Vec<(i64, Event)> = events
        .iter()
        .map(|e| {
            (
                e.time + rand::Rng::random_range(&mut rng, 0..lateness),
                e.clone(),
            )
        })
        .collect();
    keyed.shuffle(&mut rng);
    keyed.sort_by_key(|(arrival, _)| *arrival);
    keyed.into_iter().map(|(_, e)| e).collect()
}

fn snapshot(
    t: &Tables,
) -> (
    Vec<ConversationRow>,
    Vec<FunnelDailyRow>,
    Vec<ContactsDailyRow>,
    Vec<ConversionExport>,
) {
    (
        t.conversations(),
        t.funnel_daily(),
        t.contacts_daily(),
        t.exports(),
    )
}

fn run_drained_every(events: &[Event], every: usize) -> Tables {
    let mut s = Sessionizer::new(0, windows(), zoned());
    let mut tables = Tables::default();
    for (i, e) in events.iter().enumerate() {
        assert_ne!(
            s.apply(e),
            Outcome::Late {
                watermark: s.watermark().unwrap_or(0)
            },
            "{e:?}"
        );
        if i % every == 0 {
            tables.apply(s.drain());
        }
    }
    s.finish();
    tables.apply(s.drain());
    tables
}

fn saved(s: &Sessionizer) -> Vec<u8> {
    let mut bytes = Vec::new();
    s.save(&mut bytes).expect("a drained state saves");
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_arrival_order_within_lateness_gives_the_same_tables(
        gens in prop::collection::vec(gen_event(), 1..60),
        seed in any::<u64>(),
        every in 1usize..7,
    ) {
        let events = to_events(&gens);
        let expected = snapshot(&run_drained_every(&total_order(&events), 1));
        let shuffled = within_lateness(&events, seed, windows().lateness_ms);
        prop_assert_eq!(snapshot(&run_drained_every(&shuffled, every)), expected);
    }

    #[test]
    fn the_sessionizer_agrees_with_the_naive_reference(
        gens in prop::collection::vec(gen_event(), 1..80),
        seed in any::<u64>(),
        every in 1usize..7,
    ) {
        let events = within_lateness(&to_events(&gens), seed, windows().lateness_ms);
        let expected = reference::reference(&events, windows(), &zoned());
        prop_assert_eq!(snapshot(&run_drained_every(&events, every)), expected);
    }

    #[test]
    fn splitting_users_over_partitions_gives_the_same_tables(
        gens in prop::collection::vec(gen_event(), 1..60),
        partitions in 1u32..5,
        seed in any::<u64>(),
    ) {
        let events = within_lateness(&to_events(&gens), seed, windows().lateness_ms);
        let expected = snapshot(&run_drained_every(&events, 1));
        let mut parts: Vec<Sessionizer> = (0..partitions).map(|p| Sessionizer::new(p, windows(), zoned())).collect();
        for e in &events {
            let key = xxhash_rust::xxh3::xxh3_64(e.partition_key().as_bytes());
            parts[(key % u64::from(partitions)) as usize].apply(e);
        }
        let mut tables = Tables::default();
        for p in &mut parts {
            p.finish();
            tables.apply(p.drain());
        }
        prop_assert_eq!(snapshot(&tables), expected);
    }

    #[test]
    fn replaying_applied_events_changes_nothing(
        gens in prop::collection::vec(gen_event(), 1..60),
        seed in any::<u64>(),
    ) {
        let events = within_lateness(&to_events(&gens), seed, windows().lateness_ms);
        let mut s = Sessionizer::new(0, windows(), zoned());
        let mut tables = Tables::default();
        for e in &events {
            s.apply(e);
        }
        tables.apply(s.drain());
        let before = snapshot(&tables);
        let mut replayed = events.clone();
        replayed.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        for e in &replayed {
            let dup_or_late = matches!(s.apply(e), Outcome::Duplicate | Outcome::Late { .. });
            prop_assert!(dup_or_late);
        }
        prop_assert!(s.drain().is_empty());
        prop_assert_eq!(snapshot(&tables), before);
    }

    #[test]
    fn a_loaded_state_drains_exactly_like_the_saved_one(
        gens in prop::collection::vec(gen_event(), 1..80),
        seed in any::<u64>(),
        split in any::<prop::sample::Index>(),
    ) {
        let events = within_lateness(&to_events(&gens), seed, windows().lateness_ms);
        let k = split.index(events.len() + 1);
        let mut a = Sessionizer::new(0, windows(), zoned());
        let mut b = Sessionizer::new(0, windows(), zoned());
        for e in &events[..k] {
            a.apply(e);
            b.apply(e);
        }
        let first = a.drain();
        prop_assert_eq!(&b.drain(), &first);
        let mut b = Sessionizer::load(windows(), zoned(), &saved(&b)).expect("valid");
        // The prefix again after the rest: duplicates or late for both, so
        // the restored dedup ids and watermark are exercised too.
        for e in events[k..].iter().chain(&events[..k]) {
            prop_assert_eq!(b.apply(e), a.apply(e), "{:?}", e);
        }
        let (rest_a, rest_b) = (a.drain(), b.drain());
        prop_assert_eq!(&rest_b, &rest_a);
        let (mut tables_a, mut tables_b) = (Tables::default(), Tables::default());
        tables_a.apply(first.clone());
        tables_a.apply(rest_a);
        tables_b.apply(first);
        tables_b.apply(rest_b);
        prop_assert_eq!(snapshot(&tables_b), snapshot(&tables_a));
        prop_assert_eq!(b.outcome_counts(), a.outcome_counts());
        prop_assert_eq!(saved(&b), saved(&a), "the bytes depend on the state only");
    }

    #[test]
    fn damaged_state_bytes_are_refused(
        gens in prop::collection::vec(gen_event(), 1..40),
        at in any::<prop::sample::Index>(),
        flip in 1u8..,
    ) {
        let mut s = Sessionizer::new(0, windows(), zoned());
        for e in &to_events(&gens) {
            s.apply(e);
        }
        s.drain();
        let mut bytes = saved(&s);
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        let result = Sessionizer::load(windows(), zoned(), &bytes);
        let refused = matches!(result, Err(StateError::Decode(_) | StateError::Version { .. }));
        prop_assert!(refused, "{:?}", result.map(|_| ()));
    }
}
