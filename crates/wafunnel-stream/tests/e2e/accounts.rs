//! Accounts and phone numbers added to a running pipeline whose internal
//! records were deleted after its snapshots: ingest and sessionize restart
//! under the new configuration, every partition resumes from its snapshot,
//! the accounts that got no new traffic keep their rows, and the new
//! account's traffic counts in its currency and time zone. Changing an
//! existing account's currency is then refused by name. A body from the
//! number before it was configured is listed by `unknown_phone_numbers`.

use std::time::Duration;

use wafunnel_core::time::{Day, DAY_MS, HOUR_MS};

use super::{generated, Env, FunnelDailyCh, HASH_KEY};
use wafunnel_core::config::UserHasher;
use wafunnel_core::event::parse_json_event;
use wafunnel_core::sessionizer::Sessionizer;
use wafunnel_core::tables::Tables;
use wafunnel_runtime::config::Config;
use wafunnel_runtime::kafka::{self, LogContext};
use wafunnel_runtime::shutdown::Shutdown;

const INTERNAL_PARTITIONS: i32 = 4;

/// The new client: its account and number, and a second number of act_1001.
const ADDED: &str = r#"
[[accounts]]
id = "act_4004"
currency = "GBP"
time_zone = "Europe/London"
phone_number_ids = ["406540352242922"]
"#;

fn webhook_body(
    number: &str,
    from: &str,
    id: &str,
    seconds: i64,
    referral: Option<&str>,
) -> Vec<u8> {
    let referral = referral.map_or(String::new(), |ad| {
        format!(r#""referral":{{"source_url":"https://fb.me/x","source_id":"{ad}","source_type":"ad","ctwa_clid":"clid-{id}"}},"#)
    });
    format!(
        r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"15550001111","phone_number_id":"{number}"}},"messages":[{{{referral}"from":"{from}","id":"{id}","timestamp":"{seconds}","type":"text","text":{{"body":"hello"}}}}]}}}}]}}]}}"#
    )
    .into_bytes()
}

/// Lowest offset of every internal partition.
fn log_starts(env: &Env) -> Vec<i64> {
    let consumer: rdkafka::consumer::BaseConsumer<LogContext> =
        kafka::create(&kafka::client_config(&env.cfg.kafka)).expect("consumer");
    (0..INTERNAL_PARTITIONS)
        .map(|p| {
            rdkafka::consumer::Consumer::fetch_watermarks(
                &consumer,
                &env.cfg.topics.internal,
                p,
                Duration::from_secs(10),
            )
            .expect("watermarks")
            .0
        })
        .collect()
}

async fn funnel_of(env: &Env, accounts: &[&str]) -> Vec<FunnelDailyCh> {
    let db = wafunnel_stream::sink::client(&env.cfg.clickhouse);
    db.query("SELECT * FROM funnel_daily WHERE has(?, account_id) ORDER BY account_id, campaign_id, adset_id, ad_id, day")
        .bind(accounts)
        .fetch_all()
        .await
        .expect("funnel_daily")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn an_account_and_numbers_added_to_a_trimmed_pipeline_resume_every_partition() {
    let mut env = Env::new("addaccount", 1, INTERNAL_PARTITIONS).await;
    let events = 24_000;
    let lines = generated(events);
    let horizon = wafunnel_gen::GenConfig::scaled(events).horizon_ms();

    // Three runs, each ending with a snapshot of every partition: the
    // records before the previous one are then deleted. In the last, a body
    // from the new client's number, not configured yet.
    let waves: Vec<&[Vec<u8>]> = lines.chunks(lines.len().div_ceil(3)).collect();
    let mut sent = 0u64;
    let last = waves.len() - 1;
    for (i, wave) in waves.into_iter().enumerate() {
        env.produce(&env.raw, 1, wave).await;
        sent += wave.len() as u64;
        if i == last {
            let early = webhook_body(
                "406540352242922",
                "447700900999",
                "wamid.EARLY",
                (horizon - 2 * HOUR_MS) / 1000,
                None,
            );
            env.produce(&env.webhook, 1, &[early]).await;
            sent += 1;
        }
        env.run_pipeline(sent).await;
    }
    let starts = log_starts(&env);
    assert!(
        starts.iter().all(|&low| low > 0),
        "every internal partition trimmed: {starts:?}"
    );
    let db = wafunnel_stream::sink::client(&env.cfg.clickhouse);
    let unknown: Vec<(String, u32, u32, i64)> = db
        .query("SELECT phone_number_id, toUInt32(first_seen), toUInt32(last_seen), bodies FROM unknown_phone_numbers")
        .fetch_all()
        .await
        .expect("unknown_phone_numbers");
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as u32;
    assert!(
        matches!(unknown.as_slice(), [(id, first, last, 1)]
            if id == "406540352242922" && first == last && now_s.abs_diff(*first) < 600),
        "the number, seen once when it was dead-lettered: {unknown:?}"
    );
    let scraped = wafunnel_runtime::metrics::metrics().render();
    assert!(
        scraped.contains("wafunnel_dead_letters_total{reason=\"unknown_phone_number\"} "),
        "{scraped}"
    );
    let untouched = ["act_2002", "act_3003"];
    let before = funnel_of(&env, &untouched).await;
    assert!(!before.is_empty());

    // The new client, and a second number for act_1001.
    let toml = format!("{}{ADDED}", env.toml).replacen(
        r#"phone_number_ids = ["106540352242922"]"#,
        r#"phone_number_ids = ["106540352242922", "506540352242922"]"#,
        1,
    );
    env.cfg = Config::from_toml(&toml).expect("config with the new account");
    env.toml = toml;

    // Its traffic the next day at noon (the same day in London and UTC),
    // after everything before: nothing of it is late.
    let noon = (horizon.div_euclid(DAY_MS) + 1) * DAY_MS + 12 * HOUR_MS;
    let day = Day(noon.div_euclid(DAY_MS) as i32).to_string();
    let ad = "120210000004004";
    let user = "447700900123";
    let bodies = vec![
        webhook_body("406540352242922", user, "wamid.NEW1", noon / 1000, Some(ad)),
        webhook_body(
            "506540352242922",
            "5511900000555",
            "wamid.NEW2",
            noon / 1000 + 60,
            None,
        ),
    ];
    let rows = vec![format!(
        r#"{{"account_id":"4004","campaign_id":"c4","adset_id":"as4","ad_id":"{ad}","date_start":"{day}","date_stop":"{day}","spend":"42.50","impressions":"2000","clicks":"50","actions":[{{"action_type":"onsite_conversion.messaging_conversation_started_7d","value":"3"}}],"fetched_at":"{day}T13:00:00Z"}}"#
    )
    .into_bytes()];
    let purchase = format!(
        r#"{{"event_id":"p-4004-1","type":"purchase","account_id":"act_4004","user_id":"+{user}","event_time":{},"value":"120.50","currency":"GBP","order_id":"o-4004-1"}}"#,
        noon + 30 * 60 * 1000
    )
    .into_bytes();

    // The reference: every event, under the new configuration, in one engine.
    let accounts = env.cfg.accounts().expect("accounts");
    let numbers = wafunnel_meta::PhoneNumbers::new(env.cfg.phone_numbers());
    let hasher = UserHasher::new(HASH_KEY.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let mut reference = Sessionizer::new(0, env.cfg.windows().expect("windows"), accounts.clone());
    let mut added = 0u64;
    for line in lines.iter().chain(std::iter::once(&purchase)) {
        let event = parse_json_event(line, &accounts, &hasher, now).expect("valid line");
        reference.apply(&event);
    }
    added += 1;
    for body in &bodies {
        for raw in wafunnel_meta::normalize_webhook(body, &numbers).expect("valid body") {
            reference.apply(
                &raw.validate(&accounts, &hasher, now)
                    .expect("valid message"),
            );
            added += 1;
        }
    }
    for row in &rows {
        let raw = wafunnel_meta::insights_row(row, None, &accounts).expect("valid row");
        reference.apply(&raw.validate(&accounts, &hasher, now).expect("valid spend"));
        added += 1;
    }
    reference.finish();
    let mut tables = Tables::default();
    tables.apply(reference.drain());

    env.produce(&env.webhook, 1, &bodies).await;
    env.produce(&env.insights, 1, &rows).await;
    env.produce(&env.raw, 1, &[purchase]).await;
    // Both services restart under the new configuration; a partition that
    // could not resume from its snapshot would stop sessionize (its log
    // start is past 0), which fails the run.
    let accounting = env.run_pipeline(sent + added).await;
    assert_eq!(accounting.total(), sent + added, "{accounting:?}");
    assert_eq!(
        (accounting.late, accounting.dead_lettered),
        (0, 1),
        "the early body stays dead-lettered (no re-drive here)"
    );
    super::assert_views_equal(&env, &tables).await;
    assert_eq!(
        funnel_of(&env, &untouched).await,
        before,
        "the accounts without new traffic keep their rows"
    );
    let new = funnel_of(&env, &["act_4004"]).await;
    assert_eq!(new.len(), 1, "{new:?}");
    let row = &new[0];
    assert_eq!(
        (
            row.currency.as_str(),
            row.conversations_started,
            row.purchases,
            row.revenue,
            row.spend
        ),
        ("GBP", 1, 1, 1_205_000, 425_000),
        "{row:?}"
    );

    // Another currency for an account of the state is refused by name, and
    // nothing is counted under it.
    let changed = env
        .toml
        .replacen(r#"currency = "BRL""#, r#"currency = "USD""#, 1);
    let cfg = Config::from_toml(&changed).expect("changed config");
    let shutdown = Shutdown::new();
    let run = tokio::spawn(async move { wafunnel_stream::sessionize::run(&cfg, shutdown).await });
    let refused = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("sessionize stops")
        .expect("join")
        .expect_err("refused");
    let message = refused.to_string();
    assert!(
        message.contains("account act_2002 was counted as BRL America/Sao_Paulo and is now configured as USD America/Sao_Paulo")
            && message.contains("Rebuilding after a settings change"),
        "{message}"
    );
    assert_eq!(funnel_of(&env, &untouched).await, before);
}
