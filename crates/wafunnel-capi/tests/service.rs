//! `wafunnel capi` on a real Kafka broker and ClickHouse server (started by
//! `deploy/local/up.sh`; `scripts/test.sh` does it), with a local HTTP
//! server standing in for the Graph API. Each test has its own topic,
//! consumer group and database; they run one at a time because readiness
//! is one process-wide gauge.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use wafunnel_core::export::{export_id, ConversionExport, ConversionName, ExportDecision};
use wafunnel_core::money::{Currency, Money};
use wafunnel_core::time::Day;
use wafunnel_runtime::config::Config;
use wafunnel_runtime::kafka::{self, LogContext};
use wafunnel_runtime::metrics::metrics;
use wafunnel_runtime::shutdown::Shutdown;
use wafunnel_stream::sink;

mod graph;

use graph::{
    free_addr, malformed_token, ok, redirect_echo, refused, server_error_echo, transient_echo,
    url_encoded, Graph, Seen,
};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DAY: Day = Day(20_515);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the services with deploy/local/up.sh (scripts/test.sh does)"
        )
    })
}

struct Env {
    cfg: Config,
    text: String,
}

impl Env {
    async fn new(name: &str, partitions: i32, graph: SocketAddr, linger: &str) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let suffix = format!("{name}-{}", std::process::id());
        let text = format!(
            r#"
user_hash_key = "capi-test-user-hash-key"
[kafka]
bootstrap = "{bootstrap}"
capi_group = "capi-{suffix}"
[topics]
raw = [{{ name = "raw-{suffix}" }}]
capi = "capi-{suffix}"
[clickhouse]
url = "{url}"
database = "wafunnel_capi_{db}"
[capi]
base_url = "http://{graph}"
linger = "{linger}"
backoff_min = "50ms"
backoff_max = "400ms"
request_timeout = "2s"
[capi.accounts.act_1001]
dataset_id = "111"
waba_id = "1001001"
access_token = "token-1001-secret"
[capi.accounts.act_2002]
dataset_id = "222"
waba_id = "2002002"
access_token = "token-2002-secret"
"#,
            bootstrap = env("KAFKA_BOOTSTRAP"),
            url = env("CLICKHOUSE_URL").trim_end_matches('/'),
            db = suffix.replace('-', "_"),
        );
        let cfg = Config::from_toml(&text).expect("test config");
        kafka::create_topics(&cfg.kafka, &[(&cfg.topics.capi, partitions)])
            .await
            .expect("create topic");
        sink::migrate(&cfg.clickhouse).await.expect("migrate");
        Env { cfg, text }
    }

    fn config(&self) -> Config {
        Config::from_toml(&self.text).expect("config")
    }

    /// Produces exports as the sessionizer does: JSON, keyed by export id.
    async fn produce(&self, exports: &[ConversionExport]) {
        let producer: FutureProducer<LogContext> = kafka::client_config(&self.cfg.kafka)
            .set("enable.idempotence", "true")
            .create_with_context(LogContext)
            .expect("producer");
        for export in exports {
            let payload = serde_json::to_vec(export).expect("json");
            producer
                .send(
                    FutureRecord::to(&self.cfg.topics.capi)
                        .key(&export.export_id)
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .expect("produced");
        }
    }

    fn start(&self) -> (Shutdown, tokio::task::JoinHandle<u64>) {
        let shutdown = Shutdown::new();
        let cfg = self.config();
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { wafunnel_capi::run(&cfg, stop).await.expect("capi") });
        (shutdown, task)
    }

    async fn stored(&self) -> u64 {
        sink::client(&self.cfg.clickhouse)
            .query("SELECT count() FROM capi_exports FINAL")
            .fetch_one::<u64>()
            .await
            .unwrap_or(0)
    }

    async fn wait_for(&self, exports: u64) {
        let started = Instant::now();
        while self.stored().await < exports {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "only {} of {exports} statuses stored",
                self.stored().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn daily(&self) -> Vec<Daily> {
        sink::client(&self.cfg.clickhouse)
            .query(
                "SELECT account_id, toString(day) AS d, event_name, status, exports \
                 FROM capi_daily ORDER BY account_id, d, event_name, status",
            )
            .fetch_all::<Daily>()
            .await
            .expect("capi_daily")
    }

    /// Every row of every table and view of the test database, as text.
    async fn every_table_text(&self) -> String {
        let url = env("CLICKHOUSE_URL");
        let http = reqwest::Client::new();
        let query = |sql: String| {
            let http = http.clone();
            let url = url.clone();
            let database = self.cfg.clickhouse.database.clone();
            async move {
                let response = http
                    .post(&url)
                    .query(&[("database", database.as_str())])
                    .body(sql)
                    .send()
                    .await
                    .expect("clickhouse");
                assert!(response.status().is_success(), "{response:?}");
                response.text().await.expect("text")
            }
        };
        let tables = query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() FORMAT TSV".into(),
        )
        .await;
        let mut text = String::new();
        for table in tables.lines() {
            text.push_str(&query(format!("SELECT * FROM {table} FORMAT TSV")).await);
        }
        text
    }

    /// How many exports wait for a credential.
    async fn waiting(&self) -> usize {
        self.rows()
            .await
            .into_iter()
            .filter(|r| r.status == "waiting_credential")
            .count()
    }

    async fn rows(&self) -> Vec<Row> {
        sink::client(&self.cfg.clickhouse)
            .query(
                "SELECT export_id, status, error_code, error_message, attempts \
                 FROM capi_exports FINAL ORDER BY export_id",
            )
            .fetch_all::<Row>()
            .await
            .expect("capi_exports")
    }
}

#[derive(Debug, PartialEq, Eq, Deserialize, clickhouse::Row)]
struct Daily {
    account_id: String,
    d: String,
    event_name: String,
    status: String,
    exports: i64,
}

fn daily(account: &str, name: &str, status: &str, exports: i64) -> Daily {
    Daily {
        account_id: account.into(),
        d: "2026-03-03".into(),
        event_name: name.into(),
        status: status.into(),
        exports,
    }
}

#[derive(Debug, PartialEq, Eq, Deserialize, clickhouse::Row)]
struct Row {
    export_id: String,
    status: String,
    error_code: Option<String>,
    error_message: Option<String>,
    attempts: u32,
}

fn export(
    account: &str,
    source: &str,
    name: ConversionName,
    decision: ExportDecision,
) -> ConversionExport {
    let purchase = name == ConversionName::Purchase;
    ConversionExport {
        export_id: export_id(account, source),
        account_id: Arc::from(account),
        event_name: name,
        event_time: 1_772_560_800_000,
        day: DAY,
        click_id: (decision != ExportDecision::NoClickId)
            .then(|| Arc::from(format!("clid-{source}"))),
        value: purchase.then_some(Money(499_000)),
        currency: purchase.then_some(Currency::USD),
        decision,
    }
}

fn send(account: &str, source: &str, name: ConversionName) -> ConversionExport {
    export(account, source, name, ExportDecision::Send)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn batches_decisions_duplicates_and_restarts() {
    let _serial = SERIAL.lock().await;
    let addr = free_addr();
    let graph = Graph::new(|_, _| ok());
    graph.serve_on(addr).await;
    // A long linger: every export below is in the first round.
    let env = Env::new("batches", 2, addr, "3s").await;
    let mut exports: Vec<ConversionExport> = (0..1500)
        .map(|i| {
            let name = if i % 3 == 0 {
                ConversionName::LeadSubmitted
            } else {
                ConversionName::Purchase
            };
            send("act_1001", &format!("e{i}"), name)
        })
        .collect();
    // The sessionizer replayed some after a crash: same ids, same content.
    exports.extend(exports[..50].to_vec());
    exports.push(send("act_2002", "b1", ConversionName::Purchase));
    exports.push(export(
        "act_1001",
        "old",
        ConversionName::Purchase,
        ExportDecision::OutsideWindow,
    ));
    exports.push(export(
        "act_1001",
        "organic",
        ConversionName::LeadSubmitted,
        ExportDecision::NoClickId,
    ));
    exports.push(send("act_9999", "nowhere", ConversionName::Purchase));
    env.produce(&exports).await;

    let (shutdown, task) = env.start();
    env.wait_for(1504).await;
    // Duplicates after their statuses are stored: skipped, not sent again.
    env.produce(&exports[1400..1500]).await;
    env.produce(&[send("act_2002", "b2", ConversionName::LeadSubmitted)])
        .await;
    env.wait_for(1505).await;
    shutdown.stop();
    assert_eq!(task.await.expect("join"), 1505);

    let seen = graph.seen();
    let first: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path == "/v21.0/111/events")
        .collect();
    assert_eq!(
        first.iter().map(|s| s.event_ids.len()).collect::<Vec<_>>(),
        [1000, 500],
        "1500 exports of one account: two requests of at most 1000"
    );
    let mut sent: Vec<&String> = seen.iter().flat_map(|s| &s.event_ids).collect();
    assert_eq!(sent.len(), 1502, "every export sent once");
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), 1502, "an export sent twice");
    for s in &seen {
        let token = if s.path.contains("/111/") {
            "token-1001-secret"
        } else {
            "token-2002-secret"
        };
        assert_eq!(s.authorization, format!("Bearer {token}"));
        assert!(!s.path.contains("token"), "{}", s.path);
    }
    assert_eq!(
        env.daily().await,
        [
            daily("act_1001", "LeadSubmitted", "no_click_id", 1),
            daily("act_1001", "LeadSubmitted", "sent", 500),
            daily("act_1001", "Purchase", "outside_window", 1),
            daily("act_1001", "Purchase", "sent", 1000),
            daily("act_2002", "LeadSubmitted", "sent", 1),
            daily("act_2002", "Purchase", "sent", 1),
            daily("act_9999", "Purchase", "rejected", 1),
        ]
    );
    let nowhere = export_id("act_9999", "nowhere");
    let rows = env.rows().await;
    let unconfigured = rows.iter().find(|r| r.export_id == nowhere).expect("row");
    assert_eq!(unconfigured.error_code.as_deref(), Some("not_configured"));
    assert_eq!(unconfigured.attempts, 0);

    // A new instance resumes after the committed offsets: nothing is sent again.
    let requests_before = graph.seen().len();
    let (shutdown, task) = env.start();
    env.produce(&[send("act_2002", "b3", ConversionName::Purchase)])
        .await;
    env.wait_for(1506).await;
    shutdown.stop();
    assert_eq!(task.await.expect("join"), 1);
    let seen = graph.seen();
    assert_eq!(seen.len(), requests_before + 1);
    assert_eq!(
        seen[requests_before].event_ids,
        [export_id("act_2002", "b3")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn meta_errors_are_retried_and_bad_events_isolated() {
    let _serial = SERIAL.lock().await;
    let addr = free_addr();
    let graph = Graph::new(|seen, before| {
        if seen.path == "/v21.0/222/events" {
            return refused(190, "Error validating access token");
        }
        match before {
            0 => (StatusCode::INTERNAL_SERVER_ERROR, "oops").into_response(),
            1 => (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
                .into_response(),
            _ if seen.click_ids.iter().any(|c| c == "clid-bad") => {
                refused(100, "Invalid parameter")
            }
            _ => ok(),
        }
    });
    graph.serve_on(addr).await;
    // One partition: the batch keeps the order the exports were produced in.
    let env = Env::new("errors", 1, addr, "1s").await;
    let mut exports: Vec<ConversionExport> = (0..10)
        .map(|i| send("act_1001", &format!("g{i}"), ConversionName::Purchase))
        .collect();
    exports[7] = send("act_1001", "bad", ConversionName::Purchase);
    exports.push(send("act_2002", "t1", ConversionName::Purchase));
    exports.push(send("act_2002", "t2", ConversionName::LeadSubmitted));
    env.produce(&exports).await;

    let (shutdown, task) = env.start();
    env.wait_for(12).await;
    shutdown.stop();
    assert_eq!(task.await.expect("join"), 12);

    let seen = graph.seen();
    let ours: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.path == "/v21.0/111/events")
        .collect();
    assert_eq!(
        ours.iter().map(|s| s.event_ids.len()).collect::<Vec<_>>(),
        // 500, 429, refused; halves: 5 sent, 5 refused; 2 sent, 3 refused; the bad one, 2 sent.
        [10, 10, 10, 5, 5, 2, 3, 1, 2]
    );
    assert!(
        ours[2].at - ours[1].at >= Duration::from_secs(1),
        "Retry-After not honoured: {:?}",
        ours[2].at - ours[1].at
    );
    assert_eq!(
        seen.iter()
            .filter(|s| s.path == "/v21.0/222/events")
            .count(),
        1,
        "a token refusal holds the whole batch at once"
    );
    let rows = env.rows().await;
    let row = |id: &str| rows.iter().find(|r| r.export_id == id).expect("row");
    let bad = row(&export_id("act_1001", "bad"));
    assert_eq!(
        (
            bad.status.as_str(),
            bad.error_code.as_deref(),
            bad.error_message.as_deref(),
            bad.attempts
        ),
        ("rejected", Some("100"), Some("Invalid parameter"), 6)
    );
    let good = row(&export_id("act_1001", "g0"));
    assert_eq!(
        (
            good.status.as_str(),
            good.error_code.as_deref(),
            good.attempts
        ),
        ("sent", None, 4)
    );
    let token = row(&export_id("act_2002", "t1"));
    assert_eq!(
        (token.status.as_str(), token.error_code.as_deref()),
        ("waiting_credential", Some("190"))
    );
    assert_eq!(
        env.daily().await,
        [
            daily("act_1001", "Purchase", "rejected", 1),
            daily("act_1001", "Purchase", "sent", 9),
            daily("act_2002", "LeadSubmitted", "waiting_credential", 1),
            daily("act_2002", "Purchase", "waiting_credential", 1),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn meta_unreachable_for_a_while_then_back() {
    let _serial = SERIAL.lock().await;
    // Nothing listens here yet.
    let addr = free_addr();
    let env = Env::new("outage", 2, addr, "200ms").await;
    let exports: Vec<ConversionExport> = (0..5)
        .map(|i| send("act_1001", &format!("o{i}"), ConversionName::LeadSubmitted))
        .collect();
    env.produce(&exports).await;
    let (shutdown, task) = env.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!metrics().is_ready(), "ready while meta is unreachable");
    assert_eq!(
        env.stored().await,
        0,
        "a status stored before meta answered"
    );
    assert!(!task.is_finished(), "the service gave up");

    let graph = Graph::new(|_, _| ok());
    graph.serve_on(addr).await;
    env.wait_for(5).await;
    assert!(metrics().is_ready(), "not ready once meta is back");
    shutdown.stop();
    assert_eq!(task.await.expect("join"), 5);
    assert_eq!(graph.seen().len(), 1);
    let rows = env.rows().await;
    assert!(
        rows.iter().all(|r| r.status == "sent" && r.attempts > 1),
        "{rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn a_dry_run_writes_the_requests_and_commits_nothing() {
    let _serial = SERIAL.lock().await;
    let addr = free_addr();
    let env = Env::new("dryrun", 1, addr, "200ms").await;
    let exports = vec![
        send("act_1001", "d1", ConversionName::Purchase),
        send("act_1001", "d2", ConversionName::LeadSubmitted),
        export(
            "act_1001",
            "d3",
            ConversionName::Purchase,
            ExportDecision::NoClickId,
        ),
        send("act_2002", "d4", ConversionName::Purchase),
    ];
    env.produce(&exports).await;
    // No token is needed.
    let cfg = Config::from_toml(
        &env.text
            .replace("access_token = \"token-1001-secret\"\n", "")
            .replace("access_token = \"token-2002-secret\"\n", ""),
    )
    .expect("config");
    for _ in 0..2 {
        let mut out = Vec::new();
        let found = wafunnel_capi::dry_run(&cfg, &mut out, &Shutdown::new())
            .await
            .expect("dry run");
        assert_eq!((found.exports, found.requests), (4, 2));
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        let settings = cfg.capi_settings().expect("settings");
        let expected: Vec<serde_json::Value> =
            wafunnel_capi::requests(&exports, &wafunnel_capi::destinations(&settings))
                .iter()
                .map(|r| serde_json::from_str(&r.dry_run_line()).expect("json"))
                .collect();
        assert_eq!(lines, expected);
        assert_eq!(lines[0]["path"], "/v21.0/111/events");
        assert_eq!(lines[0]["body"]["data"].as_array().map(Vec::len), Some(2));
    }
    assert_eq!(env.stored().await, 0, "a dry run stores nothing");
}

/// `wafunnel capi` as its own process.
struct Process {
    child: std::process::Child,
    log: std::path::PathBuf,
    metrics: SocketAddr,
}

impl Process {
    fn spawn(env_: &Env, dir: &std::path::Path, name: &str) -> Process {
        Process::spawn_with(env_, dir, name, "info", &[])
    }

    /// Logging at `level` for every crate, libraries included, with
    /// `vars` in its environment.
    fn spawn_with(
        env_: &Env,
        dir: &std::path::Path,
        name: &str,
        level: &str,
        vars: &[(&str, &str)],
    ) -> Process {
        let config = dir.join("wafunnel.toml");
        std::fs::write(&config, &env_.text).expect("config");
        let log = dir.join(format!("{name}.log"));
        let metrics = free_addr();
        let child = std::process::Command::new(env("WAFUNNEL_BIN"))
            .arg("--config")
            .arg(&config)
            .arg("capi")
            .env("RUST_LOG", level)
            .envs(vars.iter().copied())
            .env("WAFUNNEL__METRICS__LISTEN", metrics.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start the wafunnel binary");
        Process {
            child,
            log,
            metrics,
        }
    }

    fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.metrics).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, text.split_once("\r\n\r\n")?.1.to_owned()))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and a clean exit.
    fn terminate(&mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let exit = self.wait_exit(Duration::from_secs(30));
        assert!(exit.success(), "exit {exit:?}:\n{}", self.log_text());
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "still running:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse and WAFUNNEL_BIN: run scripts/test.sh"]
async fn a_kill_9_resends_and_the_table_ends_the_same() {
    let _serial = SERIAL.lock().await;
    let addr = free_addr();
    // Slow enough that the kill lands between requests of one round.
    let graph = Graph::new(|_, _| ok()).slow(Duration::from_millis(30));
    graph.serve_on(addr).await;
    let mut env_ = Env::new("kill9", 2, addr, "300ms").await;
    env_.text = env_.text.replace("[capi]\n", "[capi]\nmax_batch = 50\n");
    let mut exports: Vec<ConversionExport> = (0..3000)
        .map(|i| {
            let account = if i % 2 == 0 { "act_1001" } else { "act_2002" };
            send(account, &format!("k{i}"), ConversionName::Purchase)
        })
        .collect();
    for i in 0..100 {
        exports.push(export(
            "act_1001",
            &format!("w{i}"),
            ConversionName::LeadSubmitted,
            ExportDecision::OutsideWindow,
        ));
    }
    env_.produce(&exports).await;
    let dir = std::env::temp_dir().join(format!("wafunnel-capi-kill9-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");

    let first = Process::spawn(&env_, &dir, "first");
    let started = Instant::now();
    // The first round (500 records, 5 requests per account of 30 ms each)
    // is killed before its statuses are stored.
    while graph.seen().len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no requests:\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(first); // SIGKILL
    let mut second = Process::spawn(&env_, &dir, "second");
    env_.wait_for(3100).await;
    let (code, text) = second.get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        text.contains("wafunnel_capi_exports_total{status=\"sent\"}"),
        "{text}"
    );
    assert_eq!(second.get("/readyz").map(|(c, _)| c), Some(200));
    let status = std::process::Command::new("kill")
        .args(["-TERM", &second.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = second.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "exit {exit:?}:\n{}", second.log_text());
    assert!(
        !second.log_text().contains("token-1001-secret"),
        "the token is logged"
    );

    // Every sendable export reached Meta at least once, with its event id.
    let mut sent: Vec<String> = graph.seen().into_iter().flat_map(|s| s.event_ids).collect();
    assert!(graph.seen().iter().all(|s| s.event_ids.len() <= 50));
    assert!(sent.len() > 3000, "nothing was sent again after the kill");
    sent.sort();
    sent.dedup();
    assert_eq!(sent.len(), 3000);
    assert_eq!(
        env_.daily().await,
        [
            daily("act_1001", "LeadSubmitted", "outside_window", 100),
            daily("act_1001", "Purchase", "sent", 1500),
            daily("act_2002", "Purchase", "sent", 1500),
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What Meta saw accepted, per event id: how many accepted requests carried it.
fn accepted_per_event(seen: &[Seen], accepted: impl Fn(&Seen) -> bool) -> BTreeMap<String, usize> {
    let mut count = BTreeMap::new();
    for s in seen.iter().filter(|s| accepted(s)) {
        for id in &s.event_ids {
            *count.entry(id.clone()).or_default() += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn exports_wait_while_a_permission_is_missing_and_are_sent_once_it_is_granted() {
    let _serial = SERIAL.lock().await;
    let addr = free_addr();
    let granted = Arc::new(AtomicBool::new(false));
    let graph = Graph::new({
        let granted = Arc::clone(&granted);
        move |seen, _| {
            if seen.path == "/v21.0/111/events" && !granted.load(Ordering::SeqCst) {
                refused(200, "(#200) Permissions error")
            } else {
                ok()
            }
        }
    });
    graph.serve_on(addr).await;
    let mut env = Env::new("granted", 1, addr, "200ms").await;
    env.text = env.text.replace(
        "[capi]\n",
        "[capi]\ncredential_retry = \"500ms\"\nmax_batch = 3\n",
    );
    let first: Vec<ConversionExport> = (0..7)
        .map(|i| send("act_1001", &format!("p{i}"), ConversionName::Purchase))
        .collect();
    env.produce(&first).await;
    env.produce(&[send("act_2002", "free", ConversionName::Purchase)])
        .await;
    let running = Instant::now();
    let (shutdown, task) = env.start();
    env.wait_for(8).await;
    assert_eq!(env.waiting().await, 7, "{:?}", env.rows().await);
    // Tried again while refused: one request per try, not one per batch.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tries = graph
        .seen()
        .iter()
        .filter(|s| s.path == "/v21.0/111/events")
        .count();
    let most = running.elapsed().as_millis() as usize / 500 + 1;
    assert!(
        (2..=most).contains(&tries),
        "{tries} requests while refused, at most {most} expected"
    );
    assert!(graph
        .seen()
        .iter()
        .filter(|s| s.path == "/v21.0/111/events")
        .all(|s| s.event_ids.len() == 3));
    // New exports of the account wait with the others.
    let later: Vec<ConversionExport> = (0..2)
        .map(|i| send("act_1001", &format!("q{i}"), ConversionName::LeadSubmitted))
        .collect();
    env.produce(&later).await;
    env.wait_for(10).await;
    assert_eq!(env.waiting().await, 9);

    granted.store(true, Ordering::SeqCst);
    let started = Instant::now();
    while env.waiting().await > 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "still waiting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.stop();
    task.await.expect("join");

    let sent = accepted_per_event(&graph.seen(), |s| {
        s.path == "/v21.0/111/events" && s.at >= started
    });
    let ids: Vec<String> = first
        .iter()
        .chain(&later)
        .map(|e| e.export_id.clone())
        .collect();
    assert_eq!(sent.len(), 9, "{sent:?}");
    for id in &ids {
        assert_eq!(
            sent.get(id),
            Some(&1),
            "{id} accepted {:?} times",
            sent.get(id)
        );
    }
    assert_eq!(
        env.daily().await,
        [
            daily("act_1001", "LeadSubmitted", "sent", 2),
            daily("act_1001", "Purchase", "sent", 7),
            daily("act_2002", "Purchase", "sent", 1),
        ]
    );
    let rows = env.rows().await;
    let ours: Vec<&Row> = rows.iter().filter(|r| ids.contains(&r.export_id)).collect();
    assert!(
        ours.iter()
            .all(|r| r.status == "sent" && r.error_code.is_none() && r.attempts >= 1),
        "{rows:?}"
    );
    // `attempts` counts every request that carried the export, refused or not.
    let carried: usize = graph
        .seen()
        .iter()
        .filter(|s| s.path == "/v21.0/111/events")
        .map(|s| s.event_ids.len())
        .sum();
    assert_eq!(
        ours.iter().map(|r| r.attempts as usize).sum::<usize>(),
        carried
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse and WAFUNNEL_BIN: run scripts/test.sh"]
async fn an_echoed_token_leaks_nowhere_and_refused_exports_are_sent_with_the_fixed_one() {
    let _serial = SERIAL.lock().await;
    // A token with characters that percent-encoding and JSON change.
    const BAD: &str = "wf-bad/token+9f3c2a7e51d84b60";
    const FIXED: &str = "wf-fixed-token-0b7d44c19a2e";
    let addr = free_addr();
    let graph = Graph::new(|seen, before| {
        if seen.path != "/v21.0/111/events" {
            return ok();
        }
        if seen.authorization == format!("Bearer {FIXED}") {
            return ok();
        }
        match before {
            0 => server_error_echo(BAD),
            1 => transient_echo(BAD),
            2 => redirect_echo(BAD),
            _ => malformed_token(BAD),
        }
    });
    graph.serve_on(addr).await;
    let mut env_ = Env::new("echo", 1, addr, "200ms").await;
    let ch_password = "ch-url-password-5a1f93";
    let scram_password = env("KAFKA_SCRAM_PASSWORD");
    let url = env("CLICKHOUSE_URL");
    let url_with_password = url.replacen("://", &format!("://default:{ch_password}@"), 1);
    let plain = format!("bootstrap = \"{}\"", env("KAFKA_BOOTSTRAP"));
    env_.text = env_
        .text
        .replace("token-1001-secret", BAD)
        .replace(&format!("url = \"{}\"", url.trim_end_matches('/')), &format!("url = \"{}\"", url_with_password.trim_end_matches('/')))
        .replace("[capi]\n", "[capi]\ncredential_retry = \"1s\"\n")
        .replace(
            &plain,
            &format!(
                "bootstrap = \"{}\"\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"{}\"\nssl_ca_location = \"{}\"\nssl_certificate_location = \"{}\"\nssl_key_location = \"{}\"\nproperties = {{ debug = \"security,broker,conf\" }}",
                env("KAFKA_SASL_BOOTSTRAP"),
                env("KAFKA_SCRAM_USER"),
                env("KAFKA_TLS_CA"),
                env("KAFKA_TLS_CERT"),
                env("KAFKA_TLS_KEY"),
            ),
        );
    assert!(env_.text.contains(ch_password) && env_.text.contains("sasl_ssl"));
    let exports: Vec<ConversionExport> = (0..6)
        .map(|i| send("act_1001", &format!("x{i}"), ConversionName::Purchase))
        .chain([send("act_2002", "y", ConversionName::Purchase)])
        .collect();
    env_.produce(&exports).await;
    let dir = std::env::temp_dir().join(format!("wafunnel-capi-echo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secrets = [
        BAD.to_owned(),
        url_encoded(BAD),
        BAD.replace('/', "\\/"),
        BAD[3..20].to_owned(),
        ch_password.to_owned(),
        scram_password.clone(),
    ];
    let leaks = |what: &str, text: &str| {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{secret} leaks in {what}:\n{text}"
            );
        }
    };

    let mut first = Process::spawn_with(
        &env_,
        &dir,
        "first",
        "trace",
        &[("WAFUNNEL__KAFKA__SASL_PASSWORD", &scram_password)],
    );
    let started = Instant::now();
    while env_.waiting().await < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the refused exports are not waiting:\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more tries, each refused again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (code, metrics_text) = first.get("/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics_text.contains("wafunnel_capi_waiting_credential_exports 6"),
        "{metrics_text}"
    );
    leaks("/metrics", &metrics_text);
    let refused_tries = graph
        .seen()
        .iter()
        .filter(|s| s.path == "/v21.0/111/events")
        .count();
    assert!(refused_tries >= 5, "{refused_tries} requests");
    first.terminate();
    let log = first.log_text();
    assert!(
        log.contains("TRACE") && log.contains("librdkafka"),
        "not a trace-level log"
    );
    assert!(log.lines().count() > 100, "{log}");
    leaks("the log", &log);
    assert_eq!(
        log.matches("refuses the credential of this account")
            .count(),
        1,
        "said once, whatever the tries:\n{log}"
    );
    let rows = env_.rows().await;
    let refused_row = rows
        .iter()
        .find(|r| r.export_id == export_id("act_1001", "x0"))
        .expect("row");
    assert_eq!(refused_row.error_code.as_deref(), Some("190"));
    assert!(
        refused_row
            .error_message
            .as_deref()
            .is_some_and(|m| m.starts_with("Malformed access token <redacted>")),
        "{refused_row:?}"
    );
    leaks("clickhouse", &env_.every_table_text().await);

    // The token is fixed: a restart sends every waiting export, once.
    env_.text = env_.text.replace(BAD, FIXED);
    let fixed_from = Instant::now();
    let mut second = Process::spawn_with(
        &env_,
        &dir,
        "second",
        "debug",
        &[("WAFUNNEL__KAFKA__SASL_PASSWORD", &scram_password)],
    );
    while env_.waiting().await > 0 {
        assert!(
            fixed_from.elapsed() < Duration::from_secs(60),
            "still waiting:\n{}",
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.terminate();
    let log = second.log_text();
    assert!(log.contains("works again"), "{log}");
    let sent = accepted_per_event(&graph.seen(), |s| {
        s.path == "/v21.0/111/events" && s.authorization == format!("Bearer {FIXED}")
    });
    assert_eq!(sent.len(), 6, "{sent:?}");
    assert!(sent.values().all(|&n| n == 1), "{sent:?}");
    assert_eq!(
        env_.daily().await,
        [
            daily("act_1001", "Purchase", "sent", 6),
            daily("act_2002", "Purchase", "sent", 1),
        ]
    );
    let all = env_.every_table_text().await;
    leaks("clickhouse", &all);
    assert!(!all.contains(FIXED));
    let _ = std::fs::remove_dir_all(&dir);
}
