use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use wafunnel_core::config::{UserHasher, Windows};
use wafunnel_core::event::{parse_json_event, Body, EventType};
use wafunnel_core::time::{format_rfc3339_ms, DayClock, DAY_MS};

use super::*;

/// The demo with every kind of record switched on.
fn noisy() -> GenConfig {
    GenConfig {
        invalid_rate: 0.02,
        late_rate: 0.01,
        duplicate_rate: 0.03,
        ..GenConfig::demo()
    }
}

fn noisy_generated() -> &'static Generated {
    static GENERATED: OnceLock<Generated> = OnceLock::new();
    GENERATED.get_or_init(|| generate(&noisy()))
}

fn small() -> GenConfig {
    GenConfig {
        contacts_per_account: 300,
        invalid_rate: 0.05,
        late_rate: 0.02,
        ..GenConfig::demo()
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = generate(&small());
    let b = generate(&small());
    assert_eq!(a.records, b.records);
    assert_eq!(a.stats, b.stats);
    let c = generate(&GenConfig { seed: 7, ..small() });
    assert_ne!(a.records, c.records);
}

#[test]
fn stream_and_ndjson_match_generate() {
    let cfg = small();
    let generated = generate(&cfg);
    let streamed: Vec<GenRecord> = stream(&cfg).collect();
    assert_eq!(streamed, generated.records);
    let mut whole = Vec::new();
    write_ndjson(&generated, &mut whole).expect("write");
    let mut piped = Vec::new();
    let stats = write_ndjson_stream(&cfg, &mut piped).expect("write");
    assert_eq!(whole, piped);
    assert_eq!(stats, generated.stats);
    assert_eq!(
        whole.iter().filter(|&&b| b == b'\n').count(),
        generated.records.len()
    );
}

#[test]
fn valid_lines_parse_and_invalid_lines_fail_with_their_code() {
    let generated = noisy_generated();
    let accounts = generated.core_accounts();
    let hasher = UserHasher::new(b"test");
    let now = generated.valid_now_ms;
    assert_eq!(now, noisy().valid_now_ms());
    for record in &generated.records {
        let text = String::from_utf8_lossy(&record.line);
        assert!(!record.line.contains(&b'\n'), "{text}");
        let parsed = parse_json_event(&record.line, &accounts, &hasher, now);
        match record.kind {
            RecordKind::Original | RecordKind::Duplicate | RecordKind::Late => {
                let event = parsed.unwrap_or_else(|e| panic!("{text}: {e}"));
                assert_eq!(event.time, record.event_time, "{text}");
                assert_eq!(event.account_id, record.account_id, "{text}");
                assert!(event.time < noisy().horizon_ms(), "{text}");
            }
            RecordKind::Invalid { expected_code } => match parsed {
                Ok(_) => panic!("accepted invalid line {text}"),
                Err(e) => assert_eq!(e.code(), expected_code, "{text}: {e}"),
            },
        }
    }
}

#[test]
fn duplicates_repeat_an_earlier_record_and_event_ids_are_unique() {
    let generated = noisy_generated();
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut ids: HashSet<(String, String)> = HashSet::new();
    let accounts = generated.core_accounts();
    let hasher = UserHasher::new(b"test");
    for record in &generated.records {
        match record.kind {
            RecordKind::Duplicate => {
                assert!(seen.contains(record.line.as_slice()), "no earlier copy")
            }
            RecordKind::Original | RecordKind::Late => {
                let event =
                    parse_json_event(&record.line, &accounts, &hasher, generated.valid_now_ms)
                        .expect("valid");
                assert!(
                    ids.insert((event.account_id, event.event_id)),
                    "repeated event id"
                );
            }
            RecordKind::Invalid { .. } => {}
        }
        seen.insert(&record.line);
    }
    assert!(generated.stats.duplicates > 0);
}

#[test]
fn arrival_is_sorted_and_bounded_by_the_disorder() {
    let cfg = noisy();
    let generated = noisy_generated();
    let lateness = Windows::default().lateness_ms;
    let mut previous = i64::MIN;
    let mut max_delay = 0;
    for record in &generated.records {
        assert!(record.arrival_ms >= previous, "arrival order");
        previous = record.arrival_ms;
        let delay = record.arrival_ms - record.event_time;
        if record.kind == RecordKind::Late {
            assert!(delay > lateness + cfg.disorder_ms, "late by only {delay}");
        } else {
            assert!((0..=cfg.disorder_ms).contains(&delay), "delay {delay}");
            max_delay = max_delay.max(delay);
        }
    }
    assert!(max_delay > cfg.disorder_ms / 2, "the disorder is used");
    // Event order is actually shuffled.
    let inversions = generated
        .records
        .windows(2)
        .filter(|w| w[1].event_time < w[0].event_time)
        .count();
    assert!(inversions > 100, "{inversions} inversions");
}

#[test]
fn demo_size_and_the_mix() {
    let generated = noisy_generated();
    let s = &generated.stats;
    let valid = s.originals + s.late;
    assert!((50_000..=100_000).contains(&valid), "{valid} events");
    assert_eq!(s.events, valid);
    assert_eq!(s.records, generated.records.len() as u64);
    assert_eq!(s.records, s.originals + s.duplicates + s.late + s.invalid);
    for (i, count) in s.events_by_type.iter().enumerate() {
        assert!(*count > 0, "no {}", EventType::ALL[i]);
    }
    for (i, count) in s.response_buckets.iter().enumerate() {
        assert!(*count > 10, "bucket {} has {count}", RESPONSE_BUCKETS[i]);
    }
    let ghost_share =
        s.ghost_clicks as f64 / (s.contacts - s.organic_contacts - s.offline_contacts) as f64;
    assert!((0.18..0.3).contains(&ghost_share), "ghosts {ghost_share}");
    for (name, count) in [
        ("boundary responses", s.boundary_responses),
        ("organic messages", s.organic_messages),
        ("organic contacts", s.organic_contacts),
        ("messages without referral", s.messages_without_referral),
        ("over-messaged", s.over_messaged),
        ("outbound after window", s.outbound_after_free_window),
        (
            "repeat, same conversation",
            s.repeat_clicks_same_conversation,
        ),
        ("repeat, new conversation", s.repeat_clicks_new_conversation),
        ("second ad", s.second_ad_contacts),
        ("leads with ad id", s.leads_with_ad_id),
        ("conversions after window", s.conversions_after_window),
        (
            "conversions without conversation",
            s.conversions_without_conversation,
        ),
        ("same ms", s.same_ms_click_message),
        ("text times", s.text_times),
        ("millis times", s.millis_times),
        ("revised spend", s.revised_spend_snapshots),
        ("moved ads", s.moved_ads),
        ("late", s.late),
    ] {
        assert!(count > 0, "no {name}");
    }
    for code in [
        "malformed",
        "missing_field",
        "invalid_field",
        "unknown_type",
        "future_timestamp",
        "timestamp_before_2010",
        "currency_mismatch",
    ] {
        assert!(
            s.invalid_by_code.get(code).copied().unwrap_or(0) > 0,
            "no {code}"
        );
    }
}

#[test]
fn spend_snapshots_follow_the_account_calendar() {
    let cfg = noisy();
    let generated = noisy_generated();
    let accounts = generated.core_accounts();
    let hasher = UserHasher::new(b"test");
    type AdDay = (String, String, i32);
    let mut snapshots: HashMap<AdDay, Vec<(i64, String, u64)>> = HashMap::new();
    let mut clicks: HashMap<AdDay, u64> = HashMap::new();
    for record in generated
        .records
        .iter()
        .filter(|r| r.kind == RecordKind::Original)
    {
        let event = parse_json_event(&record.line, &accounts, &hasher, generated.valid_now_ms)
            .expect("valid");
        let mut clock = DayClock::new(accounts.get(&event.account_id).time_zone);
        match event.body {
            Body::AdSpend {
                ad_id,
                date,
                spend,
                reported_conversations,
                ..
            } => {
                // Reported the next local day, revised the day after.
                let lag = clock.day_of(event.time).0 - date.0;
                let allowed = if event.event_id.ends_with(".r0") {
                    1..=1
                } else {
                    1..=2
                };
                assert!(
                    allowed.contains(&lag),
                    "{}",
                    String::from_utf8_lossy(&record.line)
                );
                snapshots
                    .entry((event.account_id, ad_id, date.0))
                    .or_default()
                    .push((event.time, spend.to_string(), reported_conversations));
            }
            Body::AdClick { ad_id, .. } => {
                *clicks
                    .entry((event.account_id, ad_id, clock.day_of(event.time).0))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    let ads: usize = (0..cfg.accounts.len()).map(|a| cfg.ads(a).len()).sum();
    let dates = cfg.days as usize;
    assert!(
        snapshots.len() >= ads * dates,
        "{} (ad, date) pairs",
        snapshots.len()
    );
    let (mut revised, mut tied) = (0, 0);
    for list in snapshots.values_mut() {
        list.sort();
        if list.len() > 1 {
            revised += 1;
            tied += usize::from(list[0].0 == list[1].0);
            assert_ne!(list[0].1, list[1].1, "a revision changes the spend");
        }
    }
    assert!(
        revised > tied && tied > 0,
        "{revised} revised, {tied} at the same time"
    );
    // Meta's figure is typically above the real count of conversations.
    let (mut above, mut total) = (0, 0);
    for (key, list) in &snapshots {
        let real = clicks.get(key).copied().unwrap_or(0);
        if real > 0 {
            total += 1;
            above += usize::from(list.last().map_or(0, |s| s.2) >= real * 9 / 10);
        }
    }
    assert!(above * 10 >= total * 8, "{above} of {total}");
}

#[test]
fn a_moved_ad_is_named_with_its_new_ad_set_after_the_move() {
    let cfg = noisy();
    let generated = noisy_generated();
    let accounts = generated.core_accounts();
    let hasher = UserHasher::new(b"test");
    let moved: Vec<GenAd> = (0..cfg.accounts.len())
        .flat_map(|a| cfg.ads(a))
        .filter(|ad| ad.moved.is_some())
        .collect();
    assert_eq!(moved.len(), cfg.accounts.len());
    let (mut before, mut after) = (0, 0);
    for record in generated
        .records
        .iter()
        .filter(|r| r.kind == RecordKind::Original)
    {
        let event = parse_json_event(&record.line, &accounts, &hasher, generated.valid_now_ms)
            .expect("valid");
        let (Body::AdClick {
            ad_id,
            adset_id,
            campaign_id,
            ..
        }
        | Body::AdSpend {
            ad_id,
            adset_id,
            campaign_id,
            ..
        }) = event.body
        else {
            continue;
        };
        let Some(ad) = moved.iter().find(|ad| ad.ad_id == ad_id) else {
            continue;
        };
        let to = ad.moved.as_ref().expect("moved");
        if event.time >= to.at_ms {
            after += 1;
            assert_eq!(
                (adset_id, campaign_id),
                (Some(to.adset_id.clone()), Some(to.campaign_id.clone()))
            );
        } else {
            before += 1;
            assert_eq!(
                (adset_id, campaign_id),
                (Some(ad.adset_id.clone()), Some(ad.campaign_id.clone()))
            );
        }
    }
    assert!(before > 0 && after > 0, "{before} before, {after} after");
}

#[test]
fn catalog_and_accounts_are_exposed() {
    let cfg = GenConfig::default();
    assert_eq!(cfg.accounts.len(), 3);
    assert_eq!(cfg.ads(0).len(), 10);
    assert_eq!(cfg.ads(1)[0].ad_id, "ad_2002_1_1_1");
    let accounts = cfg.core_accounts();
    assert_eq!(accounts.get("act_2002").currency.as_str(), "BRL");
    assert_eq!(
        accounts.get("act_3003").time_zone,
        chrono_tz::Europe::Madrid
    );
    assert_eq!(cfg.valid_now_ms(), DEMO_START_MS + (14 + 40 + 1) * DAY_MS);
    assert!(GenConfig {
        disorder_ms: DAY_MS,
        ..cfg.clone()
    }
    .validate()
    .is_err());
    assert!(GenConfig {
        duplicate_rate: 1.5,
        ..cfg.clone()
    }
    .validate()
    .is_err());
    let big = GenConfig::scaled(1_000_000);
    assert!(big.contacts_per_account > 50_000);
}

#[test]
fn fast_utc_times_match_the_core_formatter() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    for _ in 0..20_000 {
        let t: i64 = rng.random_range(wafunnel_core::event::MIN_EVENT_TIME_MS..4_102_444_800_000);
        let mut out = Vec::new();
        render::write_utc(&mut out, t);
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            format!("\"{}\"", format_rfc3339_ms(t))
        );
    }
}

/// Every payload of the Meta rendering, normalized and validated as ingest
/// does: the events (or the rejection code) of each record, in order.
fn normalized(
    record: &MetaRecord,
    accounts: &Accounts,
    numbers: &wafunnel_meta::PhoneNumbers,
    hasher: &UserHasher,
    now: i64,
) -> Vec<Result<wafunnel_core::event::Event, &'static str>> {
    let raws = match record.format {
        PayloadFormat::Json => vec![wafunnel_core::event::decode_json(&record.payload)],
        PayloadFormat::MetaInsights => {
            vec![wafunnel_meta::insights_row(&record.payload, None, accounts)]
        }
        PayloadFormat::WhatsappWebhook => {
            match wafunnel_meta::normalize_webhook(&record.payload, numbers) {
                Ok(raws) => raws.into_iter().map(Ok).collect(),
                Err(rejection) => vec![Err(rejection)],
            }
        }
    };
    raws.into_iter()
        .map(|raw| {
            raw.and_then(|raw| raw.validate(accounts, hasher, now))
                .map_err(|e| e.code())
        })
        .collect()
}

#[test]
fn meta_payloads_normalize_to_exactly_the_canonical_events() {
    let mut counts: HashMap<&str, u64> = HashMap::new();
    for seed in [1, 2026, 99] {
        let cfg = GenConfig {
            seed,
            meta: true,
            duplicate_rate: 0.05,
            ..small()
        };
        let canonical: Vec<GenRecord> = stream(&cfg).collect();
        let rendered: Vec<MetaRecord> = meta_stream(&cfg).collect();
        let flattened: Vec<GenRecord> = rendered
            .iter()
            .flat_map(|r| r.canonical.iter().cloned())
            .collect();
        assert_eq!(flattened, canonical, "the same records, in the same order");
        let accounts = cfg.core_accounts();
        let numbers = wafunnel_meta::PhoneNumbers::new(cfg.phone_numbers());
        let hasher = UserHasher::new(b"test");
        let now = cfg.valid_now_ms();
        let mut previous = i64::MIN;
        for record in &rendered {
            let text = String::from_utf8_lossy(&record.payload);
            assert!(record.arrival_ms >= previous, "arrival order: {text}");
            previous = record.arrival_ms;
            let got = normalized(record, &accounts, &numbers, &hasher, now);
            let want: Vec<_> = record
                .canonical
                .iter()
                .map(|c| parse_json_event(&c.line, &accounts, &hasher, now).map_err(|e| e.code()))
                .collect();
            assert_eq!(got, want, "{text}");
            for (c, event) in record.canonical.iter().zip(&want) {
                match (c.kind, event) {
                    (RecordKind::Invalid { expected_code }, Err(code)) => {
                        assert_eq!(*code, expected_code);
                        assert_eq!(record.format, PayloadFormat::Json, "{text}");
                    }
                    (_, Ok(event)) => {
                        assert_eq!(event.time % 1000, 0, "whole seconds: {text}");
                        if let Body::MessageOut { automated, .. } = event.body {
                            assert!(!automated, "{text}");
                        }
                    }
                    (kind, Err(code)) => panic!("{kind:?} rejected ({code}): {text}"),
                }
            }
            let format = record.format.name();
            *counts.entry(format).or_default() += 1;
            if record.canonical.len() == 2 {
                *counts.entry("batched").or_default() += 1;
            }
            if record.kind == RecordKind::Duplicate && record.format != PayloadFormat::Json {
                *counts.entry("meta duplicate").or_default() += 1;
            }
            if record.kind == RecordKind::Late && record.format != PayloadFormat::Json {
                *counts.entry("meta late").or_default() += 1;
            }
            for needle in [
                "\"ctwa_clid\"",
                "\"billable\":true",
                "messaging_conversation",
            ] {
                if text.contains(needle) {
                    *counts.entry(needle).or_default() += 1;
                }
            }
            if text.contains("\"messages\"") && text.contains("\"statuses\"") {
                *counts.entry("messages and statuses").or_default() += 1;
            }
        }
    }
    for what in [
        "json",
        "whatsapp-webhook",
        "meta-insights",
        "batched",
        "meta duplicate",
        "meta late",
        "\"ctwa_clid\"",
        "\"billable\":true",
        "messaging_conversation",
        "messages and statuses",
    ] {
        assert!(
            counts.get(what).copied().unwrap_or(0) > 0,
            "no {what}: {counts:?}"
        );
    }
}

#[test]
fn meta_mode_checks_what_the_payloads_need() {
    let cfg = GenConfig {
        meta: true,
        ..GenConfig::default()
    };
    assert_eq!(cfg.validate(), Ok(()));
    let numbers = cfg.phone_numbers();
    assert_eq!(numbers.len(), 3);
    assert!(numbers
        .iter()
        .all(|(n, _)| n.len() == 15 && n.bytes().all(|b| b.is_ascii_digit())));
    assert_eq!(
        numbers[0].0,
        GenAccount::new("act_1001", "USD", "UTC").phone_number_id,
        "derived from the account id"
    );
    let mut shared = cfg.clone();
    shared.accounts[1].phone_number_id = shared.accounts[0].phone_number_id.clone();
    assert!(shared.validate().is_err());
    let mut unprefixed = cfg.clone();
    unprefixed.accounts[0].account_id = "acme".into();
    assert!(unprefixed.validate().is_err());
    assert!(GenConfig {
        start_ms: DEMO_START_MS + 1,
        ..cfg.clone()
    }
    .validate()
    .is_err());
    assert!(GenConfig {
        start_ms: DEMO_START_MS + 1,
        ..GenConfig::default()
    }
    .validate()
    .is_ok());
}
