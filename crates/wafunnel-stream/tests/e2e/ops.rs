//! Operating the services as a cluster would: over TLS and SASL, probed
//! and scraped over HTTP, stopped with SIGTERM, misconfigured.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use wafunnel_runtime::config::Config;
use wafunnel_runtime::metrics::FAMILIES;

use super::{env, free_port, generated, reference, Env};

/// The `[kafka]` section for the broker's SASL_SSL listener, with the local
/// CA and the client certificate it requires; the password comes from the
/// environment of the process, or is `password` when given.
fn secure_kafka(test: &Env, mechanism: &str, user: &str, password: Option<&str>) -> String {
    let text = test.toml_again();
    let plain = format!("bootstrap = \"{}\"", env("KAFKA_BOOTSTRAP"));
    assert!(text.contains(&plain), "test config has no bootstrap line");
    let password = password.map_or(String::new(), |p| format!("sasl_password = \"{p}\"\n"));
    text.replace(
        &plain,
        &format!(
            "bootstrap = \"{}\"\nsecurity_protocol = \"sasl_ssl\"\nsasl_mechanism = \"{mechanism}\"\nsasl_username = \"{user}\"\n{password}ssl_ca_location = \"{}\"\nssl_certificate_location = \"{}\"\nssl_key_location = \"{}\"",
            env("KAFKA_SASL_BOOTSTRAP"),
            env("KAFKA_TLS_CA"),
            env("KAFKA_TLS_CERT"),
            env("KAFKA_TLS_KEY"),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn ingest_sessionize_and_check_work_over_tls_and_sasl() {
    let env_ = Env::new("secure", 2, 2).await;
    let lines = generated(3_000);
    let (tables, _) = reference(&env_, &lines);
    env_.produce(&env_.raw, 2, &lines).await;
    let scram = env("KAFKA_SCRAM_USER");
    let scram_password = env("KAFKA_SCRAM_PASSWORD");
    let ingest = Config::from_toml(&secure_kafka(
        &env_,
        "SCRAM-SHA-512",
        &scram,
        Some(&scram_password),
    ))
    .expect("ingest config");
    let sessionize = Config::from_toml(&secure_kafka(
        &env_,
        "SCRAM-SHA-256",
        &scram,
        Some(&scram_password),
    ))
    .expect("sessionize config");
    let accounting = env_
        .run_pipeline_with(ingest, sessionize, lines.len() as u64)
        .await;
    assert_eq!(accounting.total(), lines.len() as u64, "{accounting:?}");
    super::assert_views_equal(&env_, &tables).await;

    // `check` with PLAIN, its canary through a pipeline that is itself on SASL_SSL.
    let plain = Config::from_toml(&secure_kafka(
        &env_,
        "PLAIN",
        &env("KAFKA_PLAIN_USER"),
        Some(&env("KAFKA_PLAIN_PASSWORD")),
    ))
    .expect("check config");
    let shutdown = wafunnel_runtime::shutdown::Shutdown::new();
    let (ingest_cfg, sessionize_cfg) = (
        Config::from_toml(&secure_kafka(
            &env_,
            "SCRAM-SHA-512",
            &scram,
            Some(&scram_password),
        ))
        .expect("config"),
        Config::from_toml(&secure_kafka(
            &env_,
            "SCRAM-SHA-512",
            &scram,
            Some(&scram_password),
        ))
        .expect("config"),
    );
    let (s1, s2) = (shutdown.clone(), shutdown.clone());
    let ingest = tokio::spawn(async move { wafunnel_stream::ingest::run(&ingest_cfg, s1).await });
    let sessionize =
        tokio::spawn(async move { wafunnel_stream::sessionize::run(&sessionize_cfg, s2).await });
    let passed = wafunnel_stream::check::run(&plain, false, Duration::from_secs(120)).await;
    shutdown.stop();
    ingest.await.expect("join").expect("ingest");
    sessionize.await.expect("join").expect("sessionize");
    assert!(passed, "check over SASL_SSL failed: see its output above");
}

/// A service of the real binary, as its own process.
struct Process {
    child: Child,
    log: PathBuf,
    metrics: u16,
}

fn spawn(config: &Path, args: &[&str], envs: &[(&str, String)], log: PathBuf) -> Process {
    let metrics = free_port();
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env("WAFUNNEL_BIN"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env(
            "RUST_LOG",
            "warn,wafunnel_stream=info,wafunnel_runtime=info",
        )
        .env("WAFUNNEL__METRICS__LISTEN", format!("127.0.0.1:{metrics}"))
        .env("WAFUNNEL__SERVICE__SHUTDOWN_GRACE", "20s")
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start the wafunnel binary");
    Process {
        child,
        log,
        metrics,
    }
}

impl Process {
    /// `(status code, body)` of a GET on the operator port, or None if it does not answer.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Some((code, body))
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Process) -> bool) {
        let started = Instant::now();
        while !ok(self) {
            assert!(
                started.elapsed() < timeout,
                "{what} not within {timeout:?}; log {}:\n{}",
                self.log.display(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "still running after {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The sum of a counter's samples whose labels contain `labels`.
    fn counter(&self, name: &str, labels: &str) -> u64 {
        let (_, text) = self.get("/metrics").expect("metrics answer");
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wafunnel-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("wafunnel.toml");
    std::fs::write(&path, text).expect("config");
    path
}

/// The log's lines at warning level or above, and the final error line.
fn problem_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR ") || l.starts_with("error:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse and WAFUNNEL_BIN: run scripts/test.sh"]
async fn a_refused_kafka_login_is_one_clear_line() {
    let env_ = Env::new("badlogin", 1, 1).await;
    let dir = temp_dir("badlogin");
    let config = write_config(
        &dir,
        &secure_kafka(&env_, "SCRAM-SHA-256", &env("KAFKA_SCRAM_USER"), None),
    );
    let wrong = "not-the-password-4711".to_owned();
    for command in ["ingest", "sessionize"] {
        let mut p = spawn(
            &config,
            &[command],
            &[("WAFUNNEL__KAFKA__SASL_PASSWORD", wrong.clone())],
            dir.join(format!("{command}.log")),
        );
        let status = p.wait_exit(Duration::from_secs(60));
        assert!(!status.success(), "{command} accepted a wrong password");
        let log = p.log_text();
        let problems = problem_lines(&log);
        assert_eq!(problems.len(), 1, "{command}: one line, not:\n{log}");
        assert!(problems[0].starts_with("error:"), "{log}");
        assert!(
            problems[0].contains("127.0.0.1"),
            "names the address: {log}"
        );
        assert!(
            problems[0].contains("kafka.sasl_password"),
            "names the setting: {log}"
        );
        assert!(!log.contains(&wrong), "the password is printed: {log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse and WAFUNNEL_BIN: run scripts/test.sh"]
async fn clickhouse_refusals_end_the_service_with_the_setting_named() {
    let env_ = Env::new("badclickhouse", 1, 1).await;
    let dir = temp_dir("badclickhouse");
    let config = write_config(&dir, &env_.toml_again());
    let cases = [
        (
            "WAFUNNEL__CLICKHOUSE__DATABASE",
            "no_such_database".to_owned(),
            "clickhouse.database",
        ),
        (
            "WAFUNNEL__CLICKHOUSE__PASSWORD",
            "wrong-password-4711".to_owned(),
            "clickhouse.password",
        ),
    ];
    for (variable, value, setting) in cases {
        let mut p = spawn(
            &config,
            &["sessionize"],
            &[(variable, value.clone())],
            dir.join("sessionize.log"),
        );
        let status = p.wait_exit(Duration::from_secs(60));
        assert!(!status.success(), "{variable}: sessionize kept running");
        let log = p.log_text();
        let last = log.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error:") && last.contains(setting),
            "{variable}: {log}"
        );
        assert!(
            last.contains(
                &env("CLICKHOUSE_URL")
                    .trim_end_matches('/')
                    .replace("http://", "")
            ),
            "names the address: {log}"
        );
        if setting == "clickhouse.password" {
            assert!(!log.contains(&value), "the password is printed: {log}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse and WAFUNNEL_BIN: run scripts/test.sh"]
async fn an_unreachable_broker_leaves_the_service_alive_and_not_ready() {
    let env_ = Env::new("nobroker", 1, 1).await;
    let dir = temp_dir("nobroker");
    let config = write_config(&dir, &env_.toml_again());
    let closed = format!("127.0.0.1:{}", free_port());
    for command in ["ingest", "sessionize"] {
        // Logs on request as JSON (sessionize), else plain text (ingest).
        let format = if command == "sessionize" {
            "json"
        } else {
            "text"
        };
        let mut p = spawn(
            &config,
            &[command],
            &[
                ("WAFUNNEL__KAFKA__BOOTSTRAP", closed.clone()),
                ("WAFUNNEL_LOG_FORMAT", format.into()),
            ],
            dir.join(format!("{command}.log")),
        );
        p.wait_for("the health endpoint", Duration::from_secs(20), |p| {
            p.get("/healthz").is_some_and(|(code, _)| code == 200)
        });
        p.wait_for("a retry", Duration::from_secs(30), |p| {
            p.log_text().contains("kafka unreachable, retrying")
        });
        assert_eq!(p.get("/readyz").map(|(code, _)| code), Some(503));
        assert!(
            p.child.try_wait().expect("wait").is_none(),
            "{command} exited"
        );
        assert!(
            p.log_text().contains(&closed),
            "the retry names the address"
        );
        let log = p.log_text();
        assert!(
            !log.contains('\u{1b}'),
            "colour codes in a log file:\n{log}"
        );
        if format == "json" {
            for line in log.lines() {
                let value: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
                assert!(
                    value.get("level").is_some() && value.get("fields").is_some(),
                    "{line}"
                );
            }
        }
        p.sigterm();
        let status = p.wait_exit(Duration::from_secs(30));
        assert!(
            status.success(),
            "{command}: a stop while waiting is clean: {status:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse and WAFUNNEL_BIN: run scripts/test.sh"]
async fn sigterm_stops_cleanly_and_the_next_run_replays_nothing() {
    let env_ = Env::new("sigterm", 4, 4).await;
    let lines = generated(30_000);
    let expected = lines.len() as u64;
    let (tables, _) = reference(&env_, &lines);
    env_.produce(&env_.raw, 4, &lines).await;
    let dir = temp_dir("sigterm");
    let config = write_config(&dir, &env_.toml_again());

    let mut ingest = spawn(&config, &["ingest"], &[], dir.join("ingest-1.log"));
    let mut sessionize = spawn(&config, &["sessionize"], &[], dir.join("sessionize-1.log"));
    for p in [&ingest, &sessionize] {
        p.wait_for("readiness", Duration::from_secs(60), |p| {
            p.get("/readyz").is_some_and(|(code, _)| code == 200)
        });
    }
    // Every family the README lists, on a running service.
    let (_, text) = sessionize.get("/metrics").expect("metrics");
    for family in FAMILIES {
        let base = family.trim_end_matches("_total");
        assert!(
            text.contains(&format!("# TYPE {base} ")),
            "{family} not served:\n{text}"
        );
    }
    let started = Instant::now();
    while env_.accounting().await.total() < expected / 5 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ingest.counter("wafunnel_records_total", "stage=\"ingest\"") > 0);
    // Mid-run: both stop at once, as a rolling update would stop them.
    ingest.sigterm();
    sessionize.sigterm();
    for p in [&mut ingest, &mut sessionize] {
        let status = p.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "exit {status:?}; log:\n{}", p.log_text());
    }
    let done = env_.accounting().await.total();
    assert!(
        done < expected,
        "stopped too late to test anything ({done} of {expected})"
    );
    let forwarded = stopped_count(&ingest.log_text(), "ingest stopped", "forwarded=");
    let processed = stopped_count(&sessionize.log_text(), "sessionize stopped", "processed=");
    assert_eq!(
        processed, done,
        "what sessionize processed is all in ClickHouse"
    );

    let ingest = spawn(&config, &["ingest"], &[], dir.join("ingest-2.log"));
    let sessionize = spawn(&config, &["sessionize"], &[], dir.join("sessionize-2.log"));
    let started = Instant::now();
    while env_.accounting().await.total() < expected {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {:?} of {expected}; logs in {}",
            env_.accounting().await,
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Nothing done twice: the second runs did exactly what the first left.
    assert_eq!(
        ingest.counter("wafunnel_records_total", "stage=\"ingest\""),
        expected - forwarded,
        "ingest read records again"
    );
    assert_eq!(
        sessionize.counter("wafunnel_records_total", "stage=\"sessionize\""),
        expected - done,
        "sessionize replayed records"
    );
    assert!(sessionize
        .log_text()
        .contains("state restored from snapshot"));
    for log in [ingest.log_text(), sessionize.log_text()] {
        assert!(!log.contains('\u{1b}'), "colour codes in a log file");
    }
    let accounting = env_.accounting().await;
    assert_eq!(accounting.total(), expected, "{accounting:?}");
    super::assert_views_equal(&env_, &tables).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The number after `field` on the log line that contains `marker`.
fn stopped_count(log: &str, marker: &str, field: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(marker))
        .filter_map(|l| {
            let rest = &l[l.find(field)? + field.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .next_back()
        .unwrap_or_else(|| panic!("no `{marker}` line in:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka and ClickHouse: run scripts/test.sh"]
async fn check_creates_topics_with_the_configured_partitions_and_replication() {
    let env_ = Env::new("layout", 1, 1).await;
    let fresh = format!("{}-created", env_.raw);
    let fresh_capi = format!("{}-created", env_.cfg.topics.capi);
    let text = env_
        .toml_again()
        .replace(
            &format!("name = \"{}\"", env_.raw),
            &format!("name = \"{fresh}\""),
        )
        .replace(
            &format!("capi = \"{}\"", env_.cfg.topics.capi),
            &format!("capi = \"{fresh_capi}\""),
        )
        .replace(
            "[topics]",
            "[topics]\nraw_partitions = 3\nreplication_factor = 1",
        );
    let cfg = Config::from_toml(&text).expect("config");
    // The canary finds no pipeline running: only the topic steps matter here.
    let _ = wafunnel_stream::check::run(&cfg, true, Duration::from_secs(1)).await;
    let partitions = wafunnel_runtime::kafka::topic_partitions(&cfg.kafka, Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(
        partitions.get(&fresh),
        Some(&3),
        "raw topic takes topics.raw_partitions"
    );
    assert_eq!(
        partitions.get(&fresh_capi),
        Some(&1),
        "the capi topic takes topics.internal_partitions"
    );

    // One broker cannot hold two replicas: the setting reaches the broker.
    let other = format!("{}-replicated", env_.raw);
    let text = text
        .replace(&fresh, &other)
        .replace("replication_factor = 1", "replication_factor = 2");
    let cfg = Config::from_toml(&text).expect("config");
    let passed = wafunnel_stream::check::run(&cfg, true, Duration::from_secs(1)).await;
    assert!(!passed);
    let partitions = wafunnel_runtime::kafka::topic_partitions(&cfg.kafka, Duration::from_secs(10))
        .expect("metadata");
    assert!(
        !partitions.contains_key(&other),
        "created with 2 replicas on one broker?"
    );
}
