//! The HTML report rendered by headless Chromium: the screenshot is a PNG
//! and every number of the rendered page equals the source's. The report
//! of `wafunnel report` is checked against the ClickHouse views queried
//! here for the same range; the offline demo's against its own tables.
//!
//! They need `chromium` and, for the ClickHouse one, a server at
//! `CLICKHOUSE_URL` (`scripts/test.sh` provides both), hence `#[ignore]`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use wafunnel_core::config::{UserHasher, Windows};
use wafunnel_core::event::parse_json_event;
use wafunnel_core::sessionizer::Sessionizer;
use wafunnel_stream::sink::{Batch, Sink};

/// (account, campaign or day, metric).
type Key = (String, Option<String>, String);

/// Renders `html` in headless Chromium: checks the screenshot and returns
/// the numbers of the rendered DOM by (account, campaign or day, metric).
fn rendered_numbers(html: &Path) -> BTreeMap<Key, BTreeSet<String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let chromium = |extra: &[&str]| {
        let profile = tempfile::tempdir().expect("profile dir");
        let output = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,4000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(html)
            .output()
            .expect("run chromium (apt-get install chromium)");
        assert!(
            output.status.success(),
            "chromium failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    };
    let png = dir.path().join("report.png");
    chromium(&[&format!("--screenshot={}", png.display())]);
    let image = std::fs::read(&png).expect("screenshot written");
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    // A blank page compresses to a few kilobytes; charts and tables do not.
    assert!(image.len() > 20_000, "screenshot of {} bytes", image.len());
    let dom = String::from_utf8(chromium(&["--dump-dom"])).expect("utf-8 DOM");
    assert!(dom.contains("<svg"), "no chart in the rendered page");
    numbers(&dom)
}

/// The values of every element with `data-metric`, whose attributes come in
/// the order the page writes them.
fn numbers(dom: &str) -> BTreeMap<Key, BTreeSet<String>> {
    let attr = |tag: &str, name: &str| -> Option<String> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        let len = tag[start..].find('"')?;
        Some(tag[start..start + len].to_owned())
    };
    let mut found: BTreeMap<Key, BTreeSet<String>> = BTreeMap::new();
    for piece in dom.split('<').skip(1) {
        let tag = &piece[..piece.find('>').unwrap_or(piece.len())];
        let Some(metric) = attr(tag, "data-metric") else {
            continue;
        };
        let account = attr(tag, "data-account").expect("a number without its account");
        let within = attr(tag, "data-campaign").or_else(|| attr(tag, "data-day"));
        let value = attr(tag, "data-value").unwrap_or_else(|| "-".into());
        found
            .entry((account, within, metric))
            .or_default()
            .insert(value);
    }
    found
}

/// Checks that the page shows `value` for `key`, and only it.
fn assert_shows(page: &BTreeMap<Key, BTreeSet<String>>, key: &Key, value: &str) {
    let shown = page
        .get(key)
        .unwrap_or_else(|| panic!("{key:?} is not on the page"));
    assert_eq!(
        shown,
        &BTreeSet::from([value.to_owned()]),
        "{key:?}: the page shows {shown:?}, the source {value}"
    );
}

fn money(units: i64) -> String {
    wafunnel_core::money::Money(units).to_string()
}

fn run(args: &[&str], config: Option<&Path>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wafunnel"));
    if let Some(path) = config {
        command.arg("--config").arg(path);
    }
    let output = command.args(args).output().expect("run wafunnel");
    assert!(
        output.status.success(),
        "wafunnel {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 report")
}

#[test]
#[ignore = "needs chromium"]
fn the_demo_page_shows_the_numbers_of_its_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let html = dir.path().join("demo.html");
    let tables = dir.path().join("tables");
    run(
        &[
            "demo",
            "--events",
            "5000",
            "--html",
            html.to_str().expect("path"),
            "--out",
            tables.to_str().expect("path"),
        ],
        None,
    );
    let page = rendered_numbers(&html);
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(tables.join("funnel_daily.ndjson"))
        .expect("funnel_daily.ndjson")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let mut sums: BTreeMap<(String, &str), i64> = BTreeMap::new();
    for row in &rows {
        let account = row["account_id"].as_str().expect("account").to_owned();
        for (metric, column) in [
            ("reported_conversations", "reported_conversations"),
            ("clicks", "clicks"),
            ("started", "conversations_started"),
            ("messaged", "conversations_messaged"),
            ("inbound_messages", "inbound_messages"),
            ("qualified_leads", "qualified_leads"),
            ("purchases", "purchases"),
        ] {
            *sums.entry((account.clone(), metric)).or_default() +=
                row[column].as_i64().expect("count");
        }
    }
    assert!(!sums.is_empty());
    for ((account, metric), value) in sums {
        assert_shows(
            &page,
            &(account, None, metric.to_owned()),
            &value.to_string(),
        );
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the services with deploy/local/up.sh (scripts/test.sh does)"
        )
    })
}

/// The accounts of the generated traffic, as the configuration lists them.
const ACCOUNTS: [(&str, &str, &str); 3] = [
    ("act_1001", "USD", "UTC"),
    ("act_2002", "BRL", "America/Sao_Paulo"),
    ("act_3003", "EUR", "Europe/Madrid"),
];

/// A test's database, dropped when the test ends, passed or failed.
struct Database {
    name: String,
    client: clickhouse::Client,
}

impl Drop for Database {
    fn drop(&mut self) {
        // Drop runs outside async code: a thread of its own waits for it.
        let (client, name) = (self.client.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Runtime::new().expect("runtime").block_on(
                client
                    .query(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(),
            )
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}

/// A database of its own, filled with the tables of generated traffic
/// sessionized in process, and the configuration that reads it.
async fn populated_database(dir: &Path) -> (PathBuf, Database) {
    let url = env("CLICKHOUSE_URL");
    let database = format!("wafunnel_report_{}", std::process::id());
    let mut toml = format!(
        "user_hash_key = \"report-test-user-hash-key\"\n\
         [kafka]\nbootstrap = \"127.0.0.1:9\"\n\
         [topics]\nraw = [{{ name = \"raw\", format = \"json\" }}]\n\
         internal = \"events\"\ndead_letter = \"dead\"\nstate = \"state\"\ncapi = \"capi\"\n\
         [clickhouse]\nurl = \"{}\"\ndatabase = \"{database}\"\n",
        url.trim_end_matches('/')
    );
    for (id, currency, zone) in ACCOUNTS {
        toml.push_str(&format!(
            "[[accounts]]\nid = \"{id}\"\ncurrency = \"{currency}\"\ntime_zone = \"{zone}\"\n"
        ));
    }
    let config = dir.join("wafunnel.toml");
    std::fs::write(&config, &toml).expect("write config");
    let cfg = wafunnel_runtime::config::Config::from_toml(&toml).expect("test config");
    let sink = Sink::new(&cfg.clickhouse, cfg.accounts().expect("accounts"));
    let database = Database {
        name: database,
        client: sink.client().clone(),
    };
    run(&["migrate"], Some(&config));

    let gen = wafunnel_gen::GenConfig::scaled(6000);
    let accounts = cfg.accounts().expect("accounts");
    let hasher = UserHasher::new(b"report-test-user-hash-key");
    let now = gen.valid_now_ms();
    let mut sessionizer = Sessionizer::new(0, Windows::default(), accounts.clone());
    for record in wafunnel_gen::generate(&gen).records {
        let event = parse_json_event(&record.line, &accounts, &hasher, now)
            .expect("generated lines are valid");
        sessionizer.apply(&event);
    }
    sessionizer.finish();
    let batch = Batch {
        changes: vec![(0, 1, sessionizer.drain())],
        ..Batch::default()
    };
    sink.write(&batch).await.expect("write the tables");
    (config, database)
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Sums {
    account_id: String,
    campaign: String,
    spend_units: i64,
    reported: i64,
    clicks_sum: i64,
    started: i64,
    messaged: i64,
    inbound: i64,
    le_5m: i64,
    gt_24h: i64,
    out_free: i64,
    over: i64,
    leads: i64,
    sales: i64,
    revenue_units: i64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct People {
    account_id: String,
    people: i64,
    messaging: i64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct DayRange {
    first: u16,
    last: u16,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and ClickHouse (CLICKHOUSE_URL)"]
async fn the_clickhouse_page_shows_the_numbers_of_the_views() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, database) = populated_database(dir.path()).await;
    let db = &database.client;
    // Six busy days inside the data (traffic thins out at its end), so
    // that the busy days around them must be left out.
    let days = db
        .query("SELECT toUInt16(min(day) + 3) AS first, toUInt16(min(day) + 8) AS last FROM funnel_daily")
        .fetch_one::<DayRange>()
        .await
        .expect("day range");
    let date = |d: u16| {
        (chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")
            + chrono::Days::new(u64::from(d)))
        .to_string()
    };
    let (from, to) = (date(days.first), date(days.last));

    // A Conversions API export in the range, as `wafunnel capi` writes them.
    db.query(&format!(
        "INSERT INTO capi_exports (export_id, account_id, day, event_name, event_time, status, \
         error_code, error_message, attempts, updated_at, version) VALUES \
         ('x1', 'act_1001', toDate('{from}'), 'Purchase', 0, 'sent', NULL, NULL, 1, 0, 1), \
         ('x2', 'act_1001', toDate('{from}'), 'LeadSubmitted', 0, 'no_click_id', NULL, NULL, 0, 0, 1)"
    ))
    .execute()
    .await
    .expect("insert exports");

    let html = dir.path().join("report.html");
    let text = run(
        &[
            "report",
            "--from",
            &from,
            "--to",
            &to,
            "--account",
            "act_1001",
            "--account",
            "act_2002",
            "--account",
            "act_3003",
            "--html",
            html.to_str().expect("path"),
        ],
        Some(&config),
    );
    assert!(text.contains("reconciliation: Meta says"), "{text}");
    let page = rendered_numbers(&html);

    // The views' numbers for the same range, grouped here independently.
    let sums = db
        .query(&format!(
            "SELECT account_id, campaign_id AS campaign, \
             toInt64(sum(spend) * 10000) AS spend_units, sum(reported_conversations) AS reported, \
             sum(clicks) AS clicks_sum, sum(conversations_started) AS started, \
             sum(conversations_messaged) AS messaged, sum(inbound_messages) AS inbound, \
             sum(replied_le_5m) AS le_5m, sum(replied_gt_24h) AS gt_24h, \
             sum(outbound_in_free_window) AS out_free, sum(over_messaged_conversations) AS over, \
             sum(qualified_leads) AS leads, sum(purchases) AS sales, \
             toInt64(sum(revenue) * 10000) AS revenue_units \
             FROM funnel_daily WHERE day BETWEEN toDate('{from}') AND toDate('{to}') \
             GROUP BY account_id, campaign_id ORDER BY account_id, campaign"
        ))
        .fetch_all::<Sums>()
        .await
        .expect("funnel_daily sums");
    let mut per_account: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for s in &sums {
        let values = [
            ("spend", money(s.spend_units)),
            ("reported_conversations", s.reported.to_string()),
            ("clicks", s.clicks_sum.to_string()),
            ("started", s.started.to_string()),
            ("messaged", s.messaged.to_string()),
            ("ghosts", (s.started - s.messaged).to_string()),
        ];
        for (metric, value) in &values {
            assert_shows(
                &page,
                &(
                    s.account_id.clone(),
                    Some(s.campaign.clone()),
                    metric.to_string(),
                ),
                value,
            );
        }
        let account = per_account.entry(s.account_id.clone()).or_default();
        for (metric, v) in [
            ("spend", s.spend_units),
            ("reported_conversations", s.reported),
            ("clicks", s.clicks_sum),
            ("started", s.started),
            ("messaged", s.messaged),
            ("inbound_messages", s.inbound),
            ("replied_le_5m", s.le_5m),
            ("replied_gt_24h", s.gt_24h),
            ("outbound_in_free_window", s.out_free),
            ("over_messaged_conversations", s.over),
            ("qualified_leads", s.leads),
            ("purchases", s.sales),
            ("revenue", s.revenue_units),
        ] {
            match account.iter_mut().find(|(m, _)| m == metric) {
                Some((_, total)) => *total += v,
                None => account.push((metric.to_owned(), v)),
            }
        }
    }
    assert_eq!(per_account.len(), 3, "every account has rows in the range");
    // Each day's cost per conversation, from that day's sums.
    let daily = db
        .query(&format!(
            "SELECT account_id, toString(day) AS campaign, \
             toInt64(sum(spend) * 10000) AS spend_units, sum(reported_conversations) AS reported, \
             sum(clicks) AS clicks_sum, sum(conversations_started) AS started, \
             sum(conversations_messaged) AS messaged, sum(inbound_messages) AS inbound, \
             sum(replied_le_5m) AS le_5m, sum(replied_gt_24h) AS gt_24h, \
             sum(outbound_in_free_window) AS out_free, sum(over_messaged_conversations) AS over, \
             sum(qualified_leads) AS leads, sum(purchases) AS sales, \
             toInt64(sum(revenue) * 10000) AS revenue_units \
             FROM funnel_daily WHERE day BETWEEN toDate('{from}') AND toDate('{to}') \
             GROUP BY account_id, day ORDER BY account_id, campaign"
        ))
        .fetch_all::<Sums>()
        .await
        .expect("funnel_daily by day");
    assert_eq!(daily.len(), 3 * 6, "six days of three accounts");
    for d in &daily {
        assert!(d.started > 0);
        assert_shows(
            &page,
            &(
                d.account_id.clone(),
                Some(d.campaign.clone()),
                "cost_per_conversation".into(),
            ),
            &money(d.spend_units / d.started),
        );
    }
    for (account, metrics) in &per_account {
        for (metric, v) in metrics {
            let shown = if metric == "spend" || metric == "revenue" {
                money(*v)
            } else {
                v.to_string()
            };
            assert_shows(&page, &(account.clone(), None, metric.clone()), &shown);
        }
    }
    // Distinct people over the conversations that started in the range,
    // each on its day in its account's time zone.
    for (account, _, zone) in ACCOUNTS {
        let people = db
            .query(&format!(
                "SELECT account_id, toInt64(uniqExact(user_hash)) AS people, \
                 toInt64(uniqExactIf(user_hash, inbound_messages > 0)) AS messaging \
                 FROM conversations WHERE account_id = ? \
                 AND toDate(toDateTime(intDiv(started_at, 1000)), '{zone}') \
                     BETWEEN toDate('{from}') AND toDate('{to}') \
                 GROUP BY account_id"
            ))
            .bind(account)
            .fetch_one::<People>()
            .await
            .expect("distinct people");
        assert!(people.messaging > 0 && people.people >= people.messaging);
        let key = |metric: &str| (people.account_id.clone(), None, metric.to_owned());
        assert_shows(&page, &key("contacts"), &people.people.to_string());
        assert_shows(
            &page,
            &key("people_messaged"),
            &people.messaging.to_string(),
        );
    }
    assert_shows(
        &page,
        &("act_1001".into(), None, "capi_sales_to_send".into()),
        "1",
    );
    assert_shows(
        &page,
        &("act_1001".into(), None, "capi_no_click_id".into()),
        "1",
    );
}
