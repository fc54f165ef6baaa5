use super::*;
use crate::config::{AccountSettings, UserHasher};
use crate::event::parse_json_event;
use crate::export::{ConversionExport, ConversionName, ExportDecision};
use crate::rows::ResponseBucket;
use crate::tables::{ContactsDailyRow, FunnelDailyRow, Tables};
use crate::time::{parse_rfc3339_ms, DAY_MS};

const T0: i64 = 1_772_409_600_000; // 2026-03-02T00:00:00Z
const MIN: i64 = 60_000;
const NOW: i64 = 1_900_000_000_000;

fn hasher() -> UserHasher {
    UserHasher::new(b"test")
}

fn accounts() -> Accounts {
    let mut accounts = Accounts::default();
    accounts.listed.insert(
        "act_br".into(),
        AccountSettings {
            currency: Currency::parse("BRL").expect("code"),
            time_zone: chrono_tz::America::Sao_Paulo,
        },
    );
    accounts
}

fn event(json: String) -> Event {
    parse_json_event(json.as_bytes(), &accounts(), &hasher(), NOW)
        .unwrap_or_else(|e| panic!("{e}: {json}"))
}

fn click(id: &str, user: &str, t: i64, ad: &str) -> Event {
    event(format!(
        r#"{{"event_id":"{id}","type":"ad_click","account_id":"act_1","user_id":"{user}","event_time":{t},"ad_id":"{ad}","campaign_id":"cmp_{ad}","adset_id":"as_{ad}"}}"#
    ))
}

fn click_with_id(id: &str, user: &str, t: i64, ad: &str, click_id: &str) -> Event {
    event(format!(
        r#"{{"event_id":"{id}","type":"ad_click","account_id":"act_1","user_id":"{user}","event_time":{t},"ad_id":"{ad}","campaign_id":"cmp_{ad}","adset_id":"as_{ad}","click_id":"{click_id}"}}"#
    ))
}

fn msg_in_with_id(id: &str, user: &str, t: i64, ad: &str, click_id: &str) -> Event {
    event(format!(
        r#"{{"event_id":"{id}","type":"message_in","account_id":"act_1","user_id":"{user}","event_time":{t},"referral_ad_id":"{ad}","click_id":"{click_id}"}}"#
    ))
}

fn msg_in(id: &str, user: &str, t: i64, referral: Option<&str>) -> Event {
    let referral = referral.map_or(String::new(), |r| format!(r#","referral_ad_id":"{r}""#));
    event(format!(
        r#"{{"event_id":"{id}","type":"message_in","account_id":"act_1","user_id":"{user}","event_time":{t}{referral}}}"#
    ))
}

fn msg_out(id: &str, user: &str, t: i64) -> Event {
    event(format!(
        r#"{{"event_id":"{id}","type":"message_out","account_id":"act_1","user_id":"{user}","event_time":{t}}}"#
    ))
}

fn msg_out_billable(id: &str, user: &str, t: i64, billable: bool) -> Event {
    event(format!(
        r#"{{"event_id":"{id}","type":"message_out","account_id":"act_1","user_id":"{user}","event_time":{t},"template":true,"billable":{billable}}}"#
    ))
}

fn lead(id: &str, user: &str, t: i64, ad: Option<&str>) -> Event {
    let ad = ad.map_or(String::new(), |a| format!(r#","ad_id":"{a}""#));
    event(format!(
        r#"{{"event_id":"{id}","type":"lead","account_id":"act_1","user_id":"{user}","event_time":{t}{ad}}}"#
    ))
}

fn purchase(id: &str, user: &str, t: i64, value: &str) -> Event {
    event(format!(
        r#"{{"event_id":"{id}","type":"purchase","account_id":"act_1","user_id":"{user}","event_time":{t},"value":"{value}","currency":"USD"}}"#
    ))
}

fn spend(id: &str, t: i64, ad: &str, date: &str, amount: &str, reported: u64) -> Event {
    event(format!(
        r#"{{"event_id":"{id}","type":"ad_spend","account_id":"act_1","event_time":{t},"ad_id":"{ad}","campaign_id":"cmp_{ad}","adset_id":"as_{ad}","date":"{date}","spend":"{amount}","currency":"USD","impressions":1000,"clicks":20,"reported_conversations":{reported}}}"#
    ))
}

fn run_with(windows: Windows, events: &[Event]) -> (Tables, Vec<Outcome>) {
    let mut s = Sessionizer::new(0, windows, accounts());
    let mut tables = Tables::default();
    let outcomes = events
        .iter()
        .map(|e| {
            let o = s.apply(e);
            tables.apply(s.drain());
            o
        })
        .collect();
    (tables, outcomes)
}

fn run(events: &[Event]) -> Tables {
    run_with(Windows::default(), events).0
}

fn convs(t: &Tables) -> Vec<ConversationRow> {
    t.conversations()
}

fn funnel(t: &Tables, ad: &str) -> Vec<FunnelDailyRow> {
    t.funnel_daily()
        .into_iter()
        .filter(|r| &*r.ad_id == ad)
        .collect()
}

#[test]
fn a_click_then_message_and_reply_is_one_replied_conversation() {
    let t = run(&[
        click("c1", "u1", T0, "ad_1"),
        msg_in("m1", "u1", T0 + MIN, Some("ad_1")),
        msg_out("o1", "u1", T0 + 3 * MIN),
        purchase("p1", "u1", T0 + DAY_MS, "49.90"),
    ]);
    let c = &convs(&t)[0];
    assert_eq!(convs(&t).len(), 1);
    assert_eq!(
        (c.clicks, c.inbound_messages, c.outbound_messages),
        (1, 1, 1)
    );
    assert_eq!(c.first_response_ms, Some(2 * MIN));
    assert_eq!(c.response_bucket, Some(ResponseBucket::Le5m));
    assert_eq!(c.free_window_ends_at, Some(T0 + MIN + 72 * HOUR_MS));
    assert_eq!(c.revenue, Money(499_000));
    assert_eq!(c.time_to_close_ms, Some(DAY_MS));
    assert_ne!(c.user_hash.to_string(), "u1");
    let f = &funnel(&t, "ad_1")[0];
    assert_eq!(
        (
            f.conversations_started,
            f.conversations_messaged,
            f.ghost_conversations
        ),
        (1, 1, 0)
    );
    assert_eq!(
        (f.replied, f.replied_le_5m, f.sum_first_response_ms),
        (1, 1, 2 * MIN)
    );
    assert_eq!(
        (f.clicks, f.inbound_messages, f.purchases, f.revenue),
        (1, 1, 1, Money(499_000))
    );
    assert_eq!((&*f.campaign_id, &*f.adset_id), ("cmp_ad_1", "as_ad_1"));
    assert_eq!(f.click_to_message_rate, Some(1.0));
}

#[test]
fn the_gap_is_exactly_seven_days() {
    let g = 7 * DAY_MS;
    let t = run(&[
        click("a", "u", T0, "ad_1"),
        click("b", "u", T0 + g - 1, "ad_1"),
    ]);
    assert_eq!(convs(&t).len(), 1, "one ms short of 7 days joins");
    let t = run(&[click("a", "u", T0, "ad_1"), click("b", "u", T0 + g, "ad_1")]);
    assert_eq!(
        convs(&t).len(),
        2,
        "exactly 7 days starts a new conversation"
    );
    // The gap counts from the last activity, not the start.
    let t = run(&[
        click("a", "u", T0, "ad_1"),
        click("b", "u", T0 + 6 * DAY_MS, "ad_1"),
        click("c", "u", T0 + 12 * DAY_MS, "ad_1"),
    ]);
    assert_eq!(convs(&t).len(), 1);
}

#[test]
fn business_messages_never_start_or_extend_a_conversation() {
    let t = run(&[
        click("a", "u", T0, "ad_1"),
        msg_out("o1", "u", T0 + 6 * DAY_MS),
        click("b", "u", T0 + 7 * DAY_MS, "ad_1"),
        msg_out("o2", "u", T0 + 20 * DAY_MS),
    ]);
    let rows = convs(&t);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].last_activity_at, T0);
    assert_eq!(rows[0].outbound_messages, 1);
    assert_eq!(
        rows[1].outbound_messages, 0,
        "14 days after the last activity is organic outbound"
    );
}

#[test]
fn same_millisecond_click_message_and_reply_follow_the_type_rank() {
    // Delivered in reverse order within the same millisecond.
    let t = run(&[
        msg_out("o", "u", T0),
        msg_in("m", "u", T0, None),
        click("c", "u", T0, "ad_1"),
    ]);
    let c = &convs(&t)[0];
    assert_eq!(
        (c.clicks, c.inbound_messages, c.outbound_messages),
        (1, 1, 1)
    );
    assert_eq!(c.first_response_ms, Some(0));
    assert_eq!(t.contacts_daily()[0].organic_inbound_messages, 0);
}

#[test]
fn referral_less_messages_go_to_the_most_recently_active_conversation() {
    let t = run(&[
        click("c1", "u", T0, "ad_1"),
        click("c2", "u", T0 + HOUR_MS, "ad_2"),
        msg_in("m1", "u", T0 + 2 * HOUR_MS, None),
        msg_in("m2", "u", T0 + 2 * HOUR_MS + 7 * DAY_MS, None),
    ]);
    assert_eq!(funnel(&t, "ad_2")[0].inbound_messages, 1);
    assert_eq!(funnel(&t, "ad_1")[0].inbound_messages, 0);
    let organic = t.contacts_daily();
    let day9 = organic
        .iter()
        .find(|r| r.organic_inbound_messages > 0)
        .expect("organic row");
    assert_eq!(
        (day9.organic_inbound_messages, day9.organic_contacts),
        (1, 1)
    );
}

#[test]
fn most_recent_ties_go_to_the_later_start_then_the_smaller_ad() {
    let t = run(&[
        click("c1", "u", T0, "ad_b"),
        click("c2", "u", T0, "ad_a"),
        msg_in("m", "u", T0 + 1, None),
    ]);
    assert_eq!(funnel(&t, "ad_a")[0].inbound_messages, 1);
    // ad_x started earlier, both last active at T0 + 10: the later start wins.
    let t = run(&[
        click("c1", "u", T0, "ad_x"),
        click("c2", "u", T0 + 5, "ad_y"),
        click("c3", "u", T0 + 10, "ad_x"),
        click("c4", "u", T0 + 10, "ad_y"),
        msg_in("m", "u", T0 + 11, None),
    ]);
    assert_eq!(funnel(&t, "ad_y")[0].inbound_messages, 1);
}

#[test]
fn response_bucket_edges_end_to_end() {
    for (delay, bucket) in [
        (300_000, ResponseBucket::Le5m),
        (300_001, ResponseBucket::Le1h),
        (HOUR_MS, ResponseBucket::Le1h),
        (HOUR_MS + 1, ResponseBucket::Le24h),
        (24 * HOUR_MS, ResponseBucket::Le24h),
        (24 * HOUR_MS + 1, ResponseBucket::Gt24h),
    ] {
        let t = run(&[
            msg_in("m", "u", T0, Some("ad_1")),
            msg_out("o", "u", T0 + delay),
        ]);
        assert_eq!(convs(&t)[0].response_bucket, Some(bucket), "delay {delay}");
        let f = &funnel(&t, "ad_1")[0];
        let buckets = [
            f.replied_le_5m,
            f.replied_le_1h,
            f.replied_le_24h,
            f.replied_gt_24h,
        ];
        assert_eq!(buckets.iter().sum::<i64>(), 1);
    }
    let t = run(&[msg_in("m", "u", T0, Some("ad_1"))]);
    assert_eq!(convs(&t)[0].response_bucket, Some(ResponseBucket::None));
    let t = run(&[click("c", "u", T0, "ad_1"), msg_out("o", "u", T0 + 1)]);
    assert_eq!(convs(&t)[0].response_bucket, None, "never messaged");
    assert_eq!(
        convs(&t)[0].first_reply_at,
        None,
        "an outbound before any inbound is no reply"
    );
    assert_eq!(funnel(&t, "ad_1")[0].ghost_conversations, 1);
}

#[test]
fn the_free_window_is_72_hours_from_the_first_inbound() {
    let w = 72 * HOUR_MS;
    let t = run(&[
        msg_in("m", "u", T0, Some("ad_1")),
        msg_out("o1", "u", T0 + w - 1),
        msg_in("m2", "u", T0 + w - 1, None),
        msg_out("o2", "u", T0 + w),
    ]);
    let c = &convs(&t)[0];
    assert_eq!(
        (c.outbound_in_free_window, c.outbound_after_free_window),
        (1, 1)
    );
}

fn msg_in_plain(id: &str, user: &str, t: i64) -> Event {
    msg_in(id, user, t, None)
}

#[test]
fn follow_ups_and_over_messaging() {
    // in, reply, 2 follow-ups: not over-messaged.
    let t = run(&[
        msg_in("m1", "u", T0, Some("ad_1")),
        msg_out("o1", "u", T0 + 1),
        msg_out("o2", "u", T0 + 2),
        msg_out("o3", "u", T0 + 3),
    ]);
    assert_eq!(
        (
            convs(&t)[0].followups_in_free_window,
            convs(&t)[0].over_messaged
        ),
        (2, false)
    );
    // A third follow-up is over-messaging; a new inbound earns a new reply.
    let t = run(&[
        msg_in("m1", "u", T0, Some("ad_1")),
        msg_out("o1", "u", T0 + 1),
        msg_out("o2", "u", T0 + 2),
        msg_in_plain("m2", "u", T0 + 3),
        msg_out("o3", "u", T0 + 4),
        msg_out("o4", "u", T0 + 5),
        msg_out("o5", "u", T0 + 6),
    ]);
    let c = &convs(&t)[0];
    assert_eq!((c.followups_in_free_window, c.over_messaged), (3, true));
    assert_eq!(funnel(&t, "ad_1")[0].over_messaged_conversations, 1);
    // Outbound after the window is never a follow-up.
    let t = run(&[
        msg_in("m1", "u", T0, Some("ad_1")),
        click("c", "u", T0 + 5 * DAY_MS, "ad_1"),
        msg_out("o1", "u", T0 + 5 * DAY_MS + 1),
        msg_out("o2", "u", T0 + 5 * DAY_MS + 2),
        msg_out("o3", "u", T0 + 5 * DAY_MS + 3),
        msg_out("o4", "u", T0 + 5 * DAY_MS + 4),
    ]);
    let c = &convs(&t)[0];
    assert_eq!(
        (c.followups_in_free_window, c.outbound_after_free_window),
        (0, 4)
    );
}

#[test]
fn the_attribution_window_is_28_days() {
    let w = 28 * DAY_MS;
    let t = run(&[
        click("c", "u", T0, "ad_1"),
        purchase("p1", "u", T0 + w - 1, "10"),
        purchase("p2", "u", T0 + w, "20"),
        lead("l1", "u", T0 + w, None),
    ]);
    let c = &convs(&t)[0];
    assert_eq!(
        (c.purchases, c.revenue, c.qualified_at),
        (1, Money(100_000), None)
    );
    let unattributed: i64 = t
        .contacts_daily()
        .iter()
        .map(|r| r.unattributed_purchases)
        .sum();
    let leads: i64 = t
        .contacts_daily()
        .iter()
        .map(|r| r.unattributed_leads)
        .sum();
    assert_eq!((unattributed, leads), (1, 1));
}

#[test]
fn leads_naming_an_ad_attach_to_that_ads_conversation_only() {
    let t = run(&[
        click("c1", "u", T0, "ad_1"),
        click("c2", "u", T0 + HOUR_MS, "ad_2"),
        lead("l1", "u", T0 + 2 * HOUR_MS, Some("ad_1")),
        lead("l2", "u", T0 + 3 * HOUR_MS, Some("ad_9")),
        lead("l3", "u", T0 + 4 * HOUR_MS, None),
        lead("l4", "u", T0 + 5 * HOUR_MS, None),
    ]);
    let rows = convs(&t);
    let by_ad = |ad: &str| rows.iter().find(|c| &*c.ad_id == ad).expect("conv").clone();
    assert_eq!(by_ad("ad_1").qualified_at, Some(T0 + 2 * HOUR_MS));
    assert_eq!(
        by_ad("ad_2").qualified_at,
        Some(T0 + 4 * HOUR_MS),
        "first lead wins"
    );
    assert_eq!(funnel(&t, "ad_2")[0].qualified_leads, 1);
    assert_eq!(
        t.contacts_daily()[0].unattributed_leads,
        1,
        "a lead naming an unknown ad"
    );
}

#[test]
fn one_person_on_two_ads_is_two_conversations_and_one_unique_contact() {
    let t = run(&[
        click("c1", "u", T0, "ad_1"),
        click("c2", "u", T0 + HOUR_MS, "ad_2"),
        click("c3", "v", T0, "ad_1"),
    ]);
    assert_eq!(convs(&t).len(), 3);
    assert_eq!(t.contacts_daily()[0].unique_contacts, 2);
}

#[test]
fn spend_snapshots_latest_event_time_wins_ties_to_larger_event_id() {
    let t = run(&[
        click("c1", "u", T0 + DAY_MS - 1, "ad_1"),
        spend("s1", T0 + DAY_MS, "ad_1", "2026-03-02", "100", 127),
        spend("s3", T0 + 2 * DAY_MS, "ad_1", "2026-03-02", "120.50", 130),
        spend("s2", T0 + 2 * DAY_MS, "ad_1", "2026-03-02", "999", 1),
    ]);
    let f = &funnel(&t, "ad_1")[0];
    assert_eq!(
        (f.spend, f.reported_conversations, f.impressions),
        (Money(1_205_000), 130, 1000)
    );
    assert_eq!(f.cost_per_conversation, Some(Money(1_205_000)));
    assert_eq!(f.cost_per_messaged_conversation, None);
    assert_eq!(f.click_to_message_rate, Some(0.0));
    // A spend-only day is a row too.
    let t = run(&[spend("s1", T0 + DAY_MS, "ad_1", "2026-03-02", "10", 3)]);
    assert_eq!(funnel(&t, "ad_1")[0].conversations_started, 0);
}

#[test]
fn the_ad_hierarchy_comes_from_the_latest_naming_event() {
    let renamed = event(format!(
        r#"{{"event_id":"c9","type":"ad_click","account_id":"act_1","user_id":"v","event_time":{},"ad_id":"ad_1","campaign_id":"cmp_new","adset_id":"as_new"}}"#,
        T0 + DAY_MS
    ));
    let t = run(&[
        click("c1", "u", T0, "ad_1"),
        renamed,
        spend("s", T0 + 2, "ad_1", "2026-03-01", "1", 0),
    ]);
    for row in funnel(&t, "ad_1") {
        assert_eq!((&*row.campaign_id, &*row.adset_id), ("cmp_new", "as_new"));
    }
}

#[test]
fn days_are_in_the_account_time_zone() {
    let at = parse_rfc3339_ms("2026-03-02T02:00:00Z").expect("valid");
    let e = event(format!(
        r#"{{"event_id":"c","type":"ad_click","account_id":"act_br","user_id":"u","event_time":{at},"ad_id":"ad_1"}}"#
    ));
    let t = run(&[e]);
    assert_eq!(t.funnel_daily()[0].day.to_string(), "2026-03-01");
    assert_eq!(t.contacts_daily()[0].day.to_string(), "2026-03-01");
}

#[test]
fn duplicates_and_late_events_are_counted_not_applied() {
    let l = Windows::default().lateness_ms;
    let events = [
        click("c1", "u", T0 + l, "ad_1"),
        click("c1", "u", T0 + l, "ad_1"),
        click("c2", "u", T0, "ad_1"),
        click("c3", "u", T0 - 1, "ad_1"),
    ];
    let (t, outcomes) = run_with(Windows::default(), &events);
    assert_eq!(
        outcomes,
        vec![
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::Applied,
            Outcome::Late { watermark: T0 + l }
        ]
    );
    assert_eq!(convs(&t)[0].clicks, 2);
}

fn small_windows() -> Windows {
    Windows {
        gap_ms: HOUR_MS,
        lateness_ms: 24 * HOUR_MS,
        attribution_window_ms: 3 * HOUR_MS,
        capi_delay_ms: HOUR_MS,
    }
}

#[test]
fn a_late_activity_event_merges_two_conversations() {
    let w = small_windows();
    let in_order = [
        click("a", "u", T0, "ad_1"),
        click("m", "u", T0 + 40 * MIN, "ad_1"),
        click("b", "u", T0 + 80 * MIN, "ad_1"),
    ];
    let shuffled = [
        in_order[0].clone(),
        in_order[2].clone(),
        in_order[1].clone(),
    ];
    let mut s = Sessionizer::new(0, w, accounts());
    let mut tables = Tables::default();
    s.apply(&shuffled[0]);
    s.apply(&shuffled[1]);
    tables.apply(s.drain());
    assert_eq!(tables.conversations().len(), 2);
    s.apply(&shuffled[2]);
    let changes = s.drain();
    assert!(
        changes
            .conversations
            .iter()
            .any(|c| matches!(c, ConversationChange::Delete(_))),
        "{changes:?}"
    );
    tables.apply(changes);
    let (expected, _) = run_with(w, &in_order);
    assert_eq!(tables.conversations(), expected.conversations());
    assert_eq!(tables.funnel_daily(), expected.funnel_daily());
    assert_eq!(tables.conversations().len(), 1);
    assert_eq!(tables.funnel_daily()[0].conversations_started, 1);
}

#[test]
fn a_late_click_re_attributes_a_referral_less_message() {
    let w = small_windows();
    let in_order = [
        click("a", "u", T0, "ad_1"),
        click("b", "u", T0 + 10 * MIN, "ad_2"),
        msg_in("m", "u", T0 + 20 * MIN, None),
    ];
    let shuffled = [
        in_order[0].clone(),
        in_order[2].clone(),
        in_order[1].clone(),
    ];
    let (a, _) = run_with(w, &in_order);
    let (b, _) = run_with(w, &shuffled);
    assert_eq!(a.funnel_daily(), b.funnel_daily());
    assert_eq!(a.conversations(), b.conversations());
    assert_eq!(funnel(&b, "ad_2")[0].inbound_messages, 1);
}

#[test]
fn state_is_evicted_once_nothing_can_change() {
    let mut s = Sessionizer::new(0, Windows::default(), accounts());
    for u in 0..50 {
        s.apply(&click(&format!("c{u}"), &format!("u{u}"), T0 + u, "ad_1"));
    }
    s.drain();
    assert_eq!(s.stats().contacts, 50);
    // 40 days later only the new contact's state remains.
    s.apply(&click("late-day", "w", T0 + 40 * DAY_MS, "ad_2"));
    s.drain();
    let stats = s.stats();
    assert_eq!((stats.contacts, stats.conversations), (1, 1));
    assert!(stats.dedup_ids <= 1, "{stats:?}");
    // The evicted day's funnel totals are released too.
    assert_eq!(stats.funnel_keys, 1);
}

#[test]
fn draining_twice_emits_nothing_new() {
    let mut s = Sessionizer::new(0, Windows::default(), accounts());
    s.apply(&click("c", "u", T0, "ad_1"));
    assert!(!s.drain().is_empty());
    assert!(s.drain().is_empty());
}

#[test]
fn organic_contacts_are_distinct_per_day() {
    let t = run(&[
        msg_in_plain("m1", "u", T0),
        msg_in_plain("m2", "u", T0 + 1),
        msg_in_plain("m3", "v", T0 + 2),
    ]);
    let row: &ContactsDailyRow = &t.contacts_daily()[0];
    assert_eq!(
        (
            row.organic_inbound_messages,
            row.organic_contacts,
            row.unique_contacts
        ),
        (3, 2, 0)
    );
}

mod properties;
mod reference;
mod save_load;

#[test]
fn billable_outbound_messages_count_on_the_start_day() {
    let t = run(&[
        click("c", "u", T0, "ad_1"),
        msg_in("m", "u", T0 + MIN, Some("ad_1")),
        msg_out_billable("o1", "u", T0 + 2 * MIN, true),
        msg_out_billable("o2", "u", T0 + DAY_MS, false),
        msg_out("o3", "u", T0 + 2 * DAY_MS),
        msg_out_billable("o4", "u", T0 + 4 * DAY_MS, true),
    ]);
    let rows = funnel(&t, "ad_1");
    assert_eq!(rows.iter().map(|r| r.outbound_billable).sum::<i64>(), 2);
    assert_eq!(
        rows[0].outbound_billable, 2,
        "on the conversation's start day"
    );
    assert_eq!(rows[0].outbound_in_free_window, 3);
    assert_eq!(rows[0].outbound_after_free_window, 1);
}

#[test]
fn a_contact_who_messaged_on_two_ads_is_one_messaging_contact() {
    let t = run(&[
        click("c1", "u", T0, "ad_1"),
        click("c2", "u", T0 + MIN, "ad_2"),
        msg_in("m2", "u", T0 + 2 * MIN, Some("ad_2")),
        msg_in("m1", "u", T0 + 3 * MIN, Some("ad_1")),
        click("c3", "ghost", T0, "ad_1"),
        msg_in("m3", "v", T0 + 5 * MIN, Some("ad_1")),
        msg_in("m4", "v", T0 + 6 * MIN, Some("ad_1")),
    ]);
    let day = &t.contacts_daily()[0];
    assert_eq!(
        day.unique_contacts, 3,
        "u, ghost and v started conversations"
    );
    assert_eq!(
        day.messaging_contacts, 2,
        "u once for two ads, v once for two messages"
    );
    let f: i64 = t
        .funnel_daily()
        .iter()
        .map(|r| r.conversations_messaged)
        .sum();
    assert_eq!(f, 3);
}

#[test]
fn a_conversation_messaged_a_day_later_counts_on_its_start_day() {
    // Clicked on day 0, messaged on day 1; a second conversation of day 1
    // messaged first does not hide it, and neither counts twice.
    let t = run(&[
        click("c1", "u", T0, "ad_1"),
        click("c2", "u", T0 + DAY_MS, "ad_2"),
        msg_in("m2", "u", T0 + DAY_MS + MIN, Some("ad_2")),
        msg_in("m1", "u", T0 + DAY_MS + 2 * MIN, Some("ad_1")),
        click("c3", "u", T0 + DAY_MS + 3 * MIN, "ad_3"),
        msg_in("m3", "u", T0 + DAY_MS + 4 * MIN, Some("ad_3")),
    ]);
    let days = t.contacts_daily();
    assert_eq!(
        days.iter()
            .map(|d| d.messaging_contacts)
            .collect::<Vec<_>>(),
        vec![1, 1]
    );
}

#[test]
fn a_conversation_messaged_after_its_day_left_the_horizon_keeps_that_days_row() {
    // A click just before midnight, kept alive by clicks until long after the
    // lateness horizon passed that day, then the first message: the start
    // day's contacts row gains the person and keeps its other counts.
    let windows = Windows {
        gap_ms: 20 * MIN,
        lateness_ms: 45 * MIN,
        attribution_window_ms: 40 * MIN,
        capi_delay_ms: 0,
    };
    let midnight = T0 + DAY_MS; // 2026-03-03T00:00Z
    let mut events = vec![click("c0", "u", midnight - 10 * MIN, "ad_1")];
    for i in 1..=12 {
        events.push(click(
            &format!("c{i}"),
            "u",
            midnight - 10 * MIN + i * 15 * MIN,
            "ad_1",
        ));
    }
    events.push(msg_in("m", "u", midnight + 3 * HOUR_MS, Some("ad_1")));
    let (tables, _) = run_with(windows, &events);
    let days = tables.contacts_daily();
    assert_eq!(days.len(), 1, "{days:?}");
    assert_eq!(
        (days[0].unique_contacts, days[0].messaging_contacts),
        (1, 1)
    );
    let (_, _, reference, _) = reference::reference(&events, windows, &accounts());
    assert_eq!(days, reference);
}

/// Applies events one by one, drains after each, and returns the exports
/// emitted so far (`finish`: the input ends after them).
fn exports_of(windows: Windows, events: &[Event], finish: bool) -> Vec<ConversionExport> {
    let mut s = Sessionizer::new(0, windows, accounts());
    let mut out = Vec::new();
    for e in events {
        s.apply(e);
        out.extend(s.drain().exports);
    }
    if finish {
        s.finish();
        out.extend(s.drain().exports);
    }
    out
}

fn decisions(exports: &[ConversionExport]) -> Vec<(&str, ConversionName, ExportDecision)> {
    let mut ids: Vec<_> = exports
        .iter()
        .map(|x| (x.account_id.as_ref(), x.event_name, x.decision))
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_purchase_after_a_click_is_exported_with_its_click_id() {
    let exports = exports_of(
        Windows::default(),
        &[
            click_with_id("c1", "u1", T0, "ad_1", "ARAkx"),
            msg_in("m1", "u1", T0 + MIN, Some("ad_1")),
            purchase("p1", "u1", T0 + DAY_MS, "49.90"),
        ],
        true,
    );
    assert_eq!(
        exports,
        vec![ConversionExport {
            export_id: export_id("act_1", "p1"),
            account_id: Arc::from("act_1"),
            event_name: ConversionName::Purchase,
            event_time: T0 + DAY_MS,
            day: Day::parse("2026-03-03").expect("day"),
            click_id: Some(Arc::from("ARAkx")),
            value: Some(Money::parse("49.90").expect("money")),
            currency: Some(Currency::USD),
            decision: ExportDecision::Send,
        }]
    );
}

#[test]
fn the_click_window_ends_seven_days_after_the_click_inclusive() {
    // The conversation stays open through messages; only the click's time counts.
    let events = |purchase_at: i64| {
        vec![
            click_with_id("c1", "u1", T0, "ad_1", "clid"),
            msg_in("m1", "u1", T0 + 6 * DAY_MS, Some("ad_1")),
            purchase("p1", "u1", purchase_at, "10"),
        ]
    };
    let at_edge = exports_of(Windows::default(), &events(T0 + 7 * DAY_MS), true);
    assert_eq!(at_edge[0].decision, ExportDecision::Send);
    let past = exports_of(Windows::default(), &events(T0 + 7 * DAY_MS + 1), true);
    assert_eq!(past[0].decision, ExportDecision::OutsideWindow);
    assert_eq!(past[0].click_id.as_deref(), Some("clid"));
}

#[test]
fn only_the_first_lead_of_a_conversation_is_exported() {
    let exports = exports_of(
        Windows::default(),
        &[
            click_with_id("c1", "u1", T0, "ad_1", "clid"),
            lead("l1", "u1", T0 + MIN, None),
            lead("l2", "u1", T0 + 2 * MIN, None),
            purchase("p1", "u1", T0 + 3 * MIN, "5"),
            purchase("p2", "u1", T0 + 4 * MIN, "6"),
        ],
        true,
    );
    assert_eq!(
        decisions(&exports),
        vec![
            ("act_1", ConversionName::LeadSubmitted, ExportDecision::Send),
            ("act_1", ConversionName::Purchase, ExportDecision::Send),
            ("act_1", ConversionName::Purchase, ExportDecision::Send),
        ]
    );
    assert_eq!(exports[0].export_id, export_id("act_1", "l1"));
    assert_eq!((exports[0].value, exports[0].currency), (None, None));
}

#[test]
fn conversions_without_a_click_id_are_exported_as_no_click_id() {
    let exports = exports_of(
        Windows::default(),
        &[
            // A conversation whose click carried no click id.
            click("c1", "u1", T0, "ad_1"),
            purchase("p1", "u1", T0 + MIN, "5"),
            // A lead and a purchase attached to no conversation.
            lead("l2", "u2", T0 + MIN, None),
            purchase("p2", "u2", T0 + 2 * MIN, "7"),
        ],
        true,
    );
    assert_eq!(
        decisions(&exports),
        vec![
            (
                "act_1",
                ConversionName::LeadSubmitted,
                ExportDecision::NoClickId
            ),
            ("act_1", ConversionName::Purchase, ExportDecision::NoClickId),
            ("act_1", ConversionName::Purchase, ExportDecision::NoClickId),
        ]
    );
}

#[test]
fn a_click_id_arriving_after_the_conversion_does_not_count() {
    // The click id comes with a later message: at the purchase's time the
    // conversation had none.
    let exports = exports_of(
        Windows::default(),
        &[
            click("c1", "u1", T0, "ad_1"),
            purchase("p1", "u1", T0 + MIN, "5"),
            msg_in_with_id("m1", "u1", T0 + 2 * MIN, "ad_1", "late_clid"),
        ],
        true,
    );
    assert_eq!(exports[0].decision, ExportDecision::NoClickId);
}

#[test]
fn an_export_waits_for_the_delay_and_is_never_emitted_again() {
    let windows = Windows {
        capi_delay_ms: HOUR_MS,
        ..Windows::default()
    };
    let mut s = Sessionizer::new(0, windows, accounts());
    s.apply(&click_with_id("c1", "u1", T0, "ad_1", "first"));
    s.apply(&purchase("p1", "u1", T0 + MIN, "5"));
    s.apply(&click("c2", "u9", T0 + HOUR_MS, "ad_1"));
    assert!(s.drain().exports.is_empty(), "not yet an hour behind");
    s.apply(&click("c3", "u9", T0 + MIN + HOUR_MS, "ad_1"));
    let first = s.drain().exports;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].click_id.as_deref(), Some("first"));
    // An earlier click of another ad arrives within the lateness: the
    // purchase now belongs to the other conversation, but its export stays
    // as emitted.
    s.apply(&click_with_id("c0", "u1", T0 + MIN - 1, "ad_2", "other"));
    let convs = s.drain();
    assert!(convs.exports.is_empty());
    s.finish();
    assert!(s.drain().exports.is_empty());
}

#[test]
fn a_zero_delay_exports_with_the_event() {
    let windows = Windows {
        capi_delay_ms: 0,
        ..Windows::default()
    };
    let exports = exports_of(
        windows,
        &[
            click_with_id("c1", "u1", T0, "ad_1", "clid"),
            purchase("p1", "u1", T0 + MIN, "5"),
        ],
        false,
    );
    assert_eq!(exports.len(), 1);
}
