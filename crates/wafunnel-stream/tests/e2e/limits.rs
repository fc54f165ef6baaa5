//! Client limits on the real server: a client at its limits (a flood of
//! expensive queries, queries it walks away from, a quota used up, a query
//! reading or holding too much) is refused or stopped with the limit's
//! error, while sessionize's writes go on and another client gets answers.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{env, free_port, generated, Env};

/// What the issue measured: cheap per row, unbounded in time.
const EXPENSIVE: &str = "SELECT sum(sleepEachRow(0.00004)) FROM system.numbers";

/// A query over HTTP as `user`, as a running curl that gives up after `max_time`.
fn start_query(user: (&str, &str), query: &str, query_id: &str, max_time: Duration) -> Child {
    Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time"])
        .arg(format!("{:.1}", max_time.as_secs_f64()))
        .arg("-u")
        .arg(format!("{}:{}", user.0, user.1))
        .arg("--data-binary")
        .arg(query)
        .arg(format!(
            "{}/?query_id={query_id}",
            env("CLICKHOUSE_URL").trim_end_matches('/')
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl")
}

/// The HTTP status (0 when curl gave up) and body of a finished query.
fn answer(out: Output) -> (u16, String) {
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn query(user: (&str, &str), query: &str) -> (u16, String) {
    let child = start_query(user, query, "", Duration::from_secs(30));
    answer(child.wait_with_output().expect("curl"))
}

/// The ClickHouse error code an answer starts with.
fn code(body: &str) -> Option<u32> {
    body.strip_prefix("Code: ")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// A service of the real binary, with its operator port.
struct Service {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Service {
    fn spawn(config: &Path, command: &str, log: PathBuf) -> Service {
        let port = free_port();
        let child = Command::new(env("WAFUNNEL_BIN"))
            .arg("--config")
            .arg(config)
            .arg(command)
            .env("RUST_LOG", "warn,wafunnel_stream=info")
            .env("WAFUNNEL__METRICS__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the wafunnel binary");
        Service { child, port, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `/readyz` on `port`, or None if it does not answer.
fn ready(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `/readyz` until stopped; counts the answers that were not 200.
struct Watch {
    stop: Arc<AtomicBool>,
    polls: Arc<AtomicU64>,
    not_ready: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Watch {
    fn start(port: u16) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let polls = Arc::new(AtomicU64::new(0));
        let not_ready = Arc::new(AtomicU64::new(0));
        let (s, p, n) = (stop.clone(), polls.clone(), not_ready.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if ready(port) != Some(200) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                p.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watch {
            stop,
            polls,
            not_ready,
            thread,
        }
    }

    /// (polls, answers that were not 200).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("watch");
        (
            self.polls.load(Ordering::Relaxed),
            self.not_ready.load(Ordering::Relaxed),
        )
    }
}

struct UsersFile(PathBuf);

impl Drop for UsersFile {
    // The test's users must not outlive it on a shared server.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The query ids of `ids` that the server is still running.
fn running(ids: &[String]) -> Vec<String> {
    let list: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    let (status, body) = query(
        ("default", ""),
        &format!(
            "SELECT query_id FROM system.processes WHERE query_id IN ({}) FORMAT TSV",
            list.join(", ")
        ),
    );
    assert_eq!(status, 200, "{body}");
    body.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse, CLICKHOUSE_USERS_DIR and WAFUNNEL_BIN: run scripts/test.sh"]
async fn a_client_at_its_limits_stops_neither_the_pipeline_nor_another_client() {
    let env_ = Env::new("limits", 2, 2).await;
    let main = env_.cfg.clickhouse.database.clone();
    let dir = std::env::temp_dir().join(format!("wafunnel-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("wafunnel.toml");
    // `flood` and `spent` at small limits, `other` at the defaults.
    let max_execution_time = 4;
    std::fs::write(
        &config,
        format!(
            "{}
[clients.flood]
accounts = [\"act_1001\"]
networks = [\"127.0.0.1\", \"::1\"]
[clients.flood.limits]
max_execution_time = \"{max_execution_time}s\"
max_concurrent_queries = 2
max_rows_to_read = 5000000
max_memory_usage = 20000000
[clients.spent]
accounts = [\"act_2002\"]
[clients.spent.limits]
quota_queries = 10
[clients.other]
accounts = [\"act_2002\", \"act_3003\"]
",
            env_.toml_again()
        ),
    )
    .expect("write config");
    let users_dir = PathBuf::from(env("CLICKHOUSE_USERS_DIR"));
    let _cleanup = UsersFile(users_dir.join(format!("{main}_clients.xml")));
    let passwords = [
        ("WAFUNNEL__CLIENTS__FLOOD__PASSWORD", "flood-pw"),
        ("WAFUNNEL__CLIENTS__SPENT__PASSWORD", "spent-pw"),
        ("WAFUNNEL__CLIENTS__OTHER__PASSWORD", "other-pw"),
    ];
    let out = Command::new(env("WAFUNNEL_BIN"))
        .arg("--config")
        .arg(&config)
        .args(["grants", "--users-dir"])
        .arg(&users_dir)
        .envs(passwords)
        .output()
        .expect("run wafunnel grants");
    assert!(
        out.status.success(),
        "grants: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 2 x (2 + 4 + 4): each query through the Distributed tables holds two.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("clients can hold 20 of the server's max_concurrent_queries at once"),
        "{stdout}"
    );
    let (flood_user, spent_user, other_user) = (
        format!("{main}_client_flood"),
        format!("{main}_client_spent"),
        format!("{main}_client_other"),
    );
    let flood = (flood_user.as_str(), "flood-pw");
    let spent = (spent_user.as_str(), "spent-pw");
    let other = (other_user.as_str(), "other-pw");
    let other_query = format!("SELECT count() FROM {other_user}.funnel_daily");
    // The server reloads the users file within seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while [flood, other]
        .iter()
        .any(|u| query(*u, "SELECT 1").0 != 200)
    {
        assert!(Instant::now() < deadline, "no login 30 s after grants");
        std::thread::sleep(Duration::from_millis(300));
    }

    // The pipeline, and records for it all along.
    let lines = generated(12_000);
    let chunks: Vec<&[Vec<u8>]> = lines.chunks(lines.len() / 4 + 1).collect();
    env_.produce(&env_.raw, 2, chunks[0]).await;
    let ingest = Service::spawn(&config, "ingest", dir.join("ingest.log"));
    let sessionize = Service::spawn(&config, "sessionize", dir.join("sessionize.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready(sessionize.port) != Some(200) || ready(ingest.port) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "not ready in 60 s:\n{}",
            sessionize.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let watch = Watch::start(sessionize.port);

    // 1. A hundred expensive queries at once: two run, until the time
    //    limit stops them (159); the others are refused at once (202).
    let flood_started = Instant::now();
    let children: Vec<Child> = (0..100)
        .map(|i| {
            start_query(
                flood,
                EXPENSIVE,
                &format!("flood-{i}-{}", std::process::id()),
                Duration::from_secs(60),
            )
        })
        .collect();
    env_.produce(&env_.raw, 2, chunks[1]).await;
    let (status, body) = query(other, &other_query);
    assert_eq!(status, 200, "the other client during the flood: {body}");
    let mut codes = std::collections::BTreeMap::<Option<u32>, u32>::new();
    for child in children {
        let (status, body) = answer(child.wait_with_output().expect("curl"));
        assert_ne!(status, 200, "a flood query succeeded: {body}");
        *codes.entry(code(&body)).or_default() += 1;
    }
    let flood_secs = flood_started.elapsed().as_secs_f64();
    eprintln!("flood of 100: answers by code {codes:?} in {flood_secs:.1} s");
    // 202: TOO_MANY_SIMULTANEOUS_QUERIES, 159: TIMEOUT_EXCEEDED.
    assert_eq!(
        codes.keys().copied().collect::<Vec<_>>(),
        [Some(159), Some(202)],
        "{codes:?}"
    );
    assert!(codes[&Some(202)] >= 90, "{codes:?}");
    assert!(
        flood_secs < (max_execution_time + 10) as f64,
        "{flood_secs} s"
    );

    // 2. Queries whose client goes away after a second: the server stops
    //    them (18.16: at the time limit; 24.2 and later: at once).
    let ids: Vec<String> = (0..2)
        .map(|i| format!("walked-away-{i}-{}", std::process::id()))
        .collect();
    let gone_at = Instant::now();
    let children: Vec<Child> = ids
        .iter()
        .map(|id| start_query(flood, EXPENSIVE, id, Duration::from_secs(1)))
        .collect();
    for child in children {
        let (status, _) = answer(child.wait_with_output().expect("curl"));
        assert_eq!(status, 0, "curl gave up");
    }
    let after_disconnect = running(&ids);
    env_.produce(&env_.raw, 2, chunks[2]).await;
    while !running(&ids).is_empty() {
        assert!(
            gone_at.elapsed() < Duration::from_secs(max_execution_time + 6),
            "still running {:?} after the client left",
            gone_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "walked-away queries: {} of 2 running right after the disconnect, none {:.1} s after it",
        after_disconnect.len(),
        gone_at.elapsed().as_secs_f64()
    );
    // Their slots are free again.
    let (status, body) = query(flood, "SELECT 1");
    assert_eq!(status, 200, "{body}");

    // 3. A query reading or holding too much is stopped by its limit
    //    (158: TOO_MANY_ROWS, 241: MEMORY_LIMIT_EXCEEDED).
    let (_, body) = query(flood, "SELECT sum(number) FROM system.numbers");
    assert_eq!(code(&body), Some(158), "{body}");
    let (_, body) = query(
        flood,
        "SELECT uniqExact(number) FROM (SELECT number FROM system.numbers LIMIT 2000000)",
    );
    assert_eq!(code(&body), Some(241), "{body}");

    // 4. A quota used up: refused (201: QUOTA_EXPIRED) until its interval
    //    ends; the other client is not counted in it.
    env_.produce(&env_.raw, 2, chunks[3]).await;
    let mut answered = 0;
    let refusal = loop {
        let (status, body) = query(spent, "SELECT 1");
        if status != 200 {
            break body;
        }
        answered += 1;
        assert!(answered <= 40, "the quota of 10 queries let 40 through");
    };
    assert_eq!(code(&refusal), Some(201), "{refusal}");
    let (status, body) = query(other, &other_query);
    assert_eq!(status, 200, "the other client after the quota: {body}");

    // The writes went on: every record counted, readiness never lost.
    let expected = lines.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while env_.accounting().await.total() < expected {
        assert!(
            Instant::now() < deadline,
            "only {:?} of {expected}; log:\n{}",
            env_.accounting().await,
            sessionize.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (polls, not_ready) = watch.finish();
    assert!(polls > 50, "readiness polled {polls} times");
    assert_eq!(
        not_ready,
        0,
        "sessionize was not ready {not_ready} of {polls} times; log:\n{}",
        sessionize.log_text()
    );
    let log = sessionize.log_text();
    assert!(
        !log.contains("simultaneous"),
        "an insert was refused:\n{log}"
    );
    assert_eq!(env_.accounting().await.total(), expected);
    let _ = std::fs::remove_dir_all(&dir);
}
