//! `wafunnel grants` on the real server: a client's user reads its own
//! accounts in every BI view, and nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use wafunnel_stream::grants;

use super::{env, generated, Env};

/// One query over HTTP as `user`: the HTTP status and the body.
pub(super) fn http(user: &str, password: &str, query: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--data-binary"])
        .arg(query)
        .arg("-u")
        .arg(format!("{user}:{password}"))
        .arg(env("CLICKHOUSE_URL"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_owned())
}

/// The sorted rows of a query that must succeed.
pub(super) fn rows(user: &str, password: &str, query: &str) -> Vec<String> {
    let (code, body) = http(user, password, &format!("{query} FORMAT TSV"));
    assert_eq!(code, 200, "{user}: {query}: {body}");
    let mut lines: Vec<String> = body.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Asserts that a query is refused with one of `codes`.
fn refused(user: &str, password: &str, query: &str, codes: &[u32]) {
    let (status, body) = http(user, password, query);
    assert_ne!(status, 200, "{user} was allowed: {query}: {body}");
    assert!(
        codes
            .iter()
            .any(|c| body.starts_with(&format!("Code: {c}"))),
        "{user}: {query}: expected code {codes:?}, got {body}"
    );
}

/// Runs `wafunnel grants`; returns its standard output.
pub(super) fn run_grants(config: &Path, users_dir: &Path, envs: &[(&str, &str)]) -> String {
    let out = Command::new(env("WAFUNNEL_BIN"))
        .arg("--config")
        .arg(config)
        .args(["grants", "--users-dir"])
        .arg(users_dir)
        .envs(envs.iter().copied())
        .output()
        .expect("run wafunnel grants");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grants failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The password `grants` printed for `client`, if it generated one.
pub(super) fn generated_password(stdout: &str, client: &str) -> Option<String> {
    let prefix = format!("client {client}: generated password ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
}

/// Waits until the server has reloaded the users file and `user` can log in.
pub(super) fn wait_for_login(user: &str, password: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = http(user, password, "SELECT 1");
        if code == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{user} cannot log in 60 s after grants: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub(super) fn in_list(accounts: &[&str]) -> String {
    let quoted: Vec<String> = accounts.iter().map(|a| format!("'{a}'")).collect();
    quoted.join(", ")
}

/// Each view of `views` as `client` equals the main view filtered to `accounts`.
fn assert_sees_exactly(
    main: &str,
    client: (&str, &str),
    views: &[String],
    accounts: &[&str],
) -> usize {
    let mut seen = 0;
    for view in views {
        let expected = rows(
            "default",
            "",
            &format!(
                "SELECT * FROM {main}.{view} WHERE account_id IN ({})",
                in_list(accounts)
            ),
        );
        let got = rows(
            client.0,
            client.1,
            &format!("SELECT * FROM {}.{view}", client.0),
        );
        assert_eq!(got, expected, "{} in {view}", client.0);
        seen += got.len();
    }
    seen
}

pub(super) struct UsersFile(pub(super) PathBuf);

impl Drop for UsersFile {
    // The test's users must not outlive it on a shared server.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse, CLICKHOUSE_USERS_DIR and WAFUNNEL_BIN: run scripts/test.sh"]
async fn a_clients_user_reads_its_accounts_in_every_view_and_nothing_else() {
    let env_ = Env::new("grants", 1, 1).await;
    let lines = generated(3_000);
    env_.produce(&env_.raw, 1, &lines).await;
    env_.run_pipeline(lines.len() as u64).await;
    let main = env_.cfg.clickhouse.database.clone();
    let users_dir = PathBuf::from(env("CLICKHOUSE_USERS_DIR"));
    let dir = std::env::temp_dir().join(format!("wafunnel-grants-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("wafunnel.toml");
    let write_config = |a_accounts: &[&str]| {
        let text = format!(
            "{}\n[clients.a]\naccounts = [{}]\nnetworks = [\"127.0.0.1\", \"::1\"]\n[clients.b]\naccounts = [\"act_2002\"]\n",
            env_.toml_again(),
            in_list(a_accounts).replace('\'', "\"")
        );
        std::fs::write(&config, text).expect("write config");
    };
    write_config(&["act_1001"]);
    let _cleanup = UsersFile(users_dir.join(format!("{main}_clients.xml")));
    let b_password = "b-password-from-the-environment";
    let b_env = [("WAFUNNEL__CLIENTS__B__PASSWORD", b_password)];

    let out = run_grants(&config, &users_dir, &b_env);
    let a_password = generated_password(&out, "a").expect("a password generated for a");
    assert_eq!(
        generated_password(&out, "b"),
        None,
        "b's comes from the environment: {out}"
    );
    assert!(!out.contains(b_password), "b's password printed: {out}");
    let a_user = format!("{main}_client_a");
    let b_user = format!("{main}_client_b");
    let a = (a_user.as_str(), a_password.as_str());
    let b = (b_user.as_str(), b_password);
    wait_for_login(a.0, a.1);
    wait_for_login(b.0, b.1);

    let db = wafunnel_stream::sink::client(&env_.cfg.clickhouse);
    let views = grants::account_views(&db, &main).await.expect("views");
    for view in [
        "funnel_daily",
        "contacts_daily",
        "conversations",
        "capi_daily",
    ] {
        assert!(views.iter().any(|v| v == view), "{view} not in {views:?}");
    }
    assert!(
        assert_sees_exactly(&main, a, &views, &["act_1001"]) > 0,
        "a sees no rows"
    );
    assert!(
        assert_sees_exactly(&main, b, &views, &["act_2002"]) > 0,
        "b sees no rows"
    );
    let others = rows(
        a.0,
        a.1,
        &format!(
            "SELECT count() FROM {}.funnel_daily WHERE account_id != 'act_1001'",
            a.0
        ),
    );
    assert_eq!(others, ["0"]);

    // 291: DATABASE_ACCESS_DENIED (18.16), 497: ACCESS_DENIED (SQL access control).
    let denied = [291, 497];
    for table in [
        "conversation_rows",
        "funnel_partial",
        "contacts_partial",
        "spend_snapshots",
        "funnel_daily",
        "schema_migrations",
    ] {
        refused(
            a.0,
            a.1,
            &format!("SELECT count() FROM {main}.{table}"),
            &denied,
        );
    }
    refused(
        a.0,
        a.1,
        &format!("SELECT count() FROM {b_user}.funnel_daily"),
        &denied,
    );
    refused(
        a.0,
        a.1,
        &format!("SELECT count() FROM {main}_filtered_a.funnel_daily"),
        &denied,
    );
    refused(
        a.0,
        a.1,
        &format!("SELECT count() FROM {main}_filtered_b.funnel_daily"),
        &denied,
    );
    assert_eq!(rows(a.0, a.1, "SELECT 1 FROM system.one"), ["1"]);
    // 164: READONLY.
    let readonly = [164, 497];
    refused(
        a.0,
        a.1,
        &format!("INSERT INTO {a_user}.funnel_daily (account_id) VALUES ('act_1001')"),
        &readonly,
    );
    refused(
        a.0,
        a.1,
        &format!("CREATE TABLE {a_user}.mine (x UInt8) ENGINE = Memory"),
        &readonly,
    );
    refused(
        a.0,
        a.1,
        &format!("DROP TABLE {a_user}.funnel_daily"),
        &readonly,
    );
    refused(a.0, a.1, "SET prefer_localhost_replica = 0", &readonly);
    // Table functions would read as another user: `remote` as the
    // cluster's, `url` over HTTP.
    refused(
        a.0,
        a.1,
        &format!("SELECT count() FROM remote('127.0.0.1', {main}.funnel_partial, 'default', '')"),
        &readonly,
    );
    refused(
        a.0,
        a.1,
        &format!(
            "SELECT count() FROM url('{}/?query=SELECT+1', TSV, 'x UInt8')",
            env("CLICKHOUSE_URL").trim_end_matches('/')
        ),
        &readonly,
    );
    refused(a.0, "not-the-password", "SELECT 1", &[193, 516]);

    // A view added later is covered by running grants again, a's new
    // account is in its filters, and its password is kept.
    db.query("CREATE VIEW later_view AS SELECT account_id, count() AS days FROM funnel_daily GROUP BY account_id")
        .execute()
        .await
        .expect("create a later view");
    write_config(&["act_1001", "act_3003"]);
    let again = run_grants(&config, &users_dir, &b_env);
    assert_eq!(
        generated_password(&again, "a"),
        None,
        "a's password kept: {again}"
    );
    wait_for_login(a.0, a.1);
    let views = grants::account_views(&db, &main).await.expect("views");
    assert!(views.iter().any(|v| v == "later_view"), "{views:?}");
    assert!(assert_sees_exactly(&main, a, &views, &["act_1001", "act_3003"]) > 0);
    assert_eq!(
        rows(
            a.0,
            a.1,
            &format!("SELECT account_id FROM {a_user}.later_view")
        ),
        ["act_1001", "act_3003"]
    );

    // A view dropped from the main database leaves the client's too.
    db.query("DROP TABLE later_view")
        .execute()
        .await
        .expect("drop the later view");
    run_grants(&config, &users_dir, &b_env);
    refused(
        a.0,
        a.1,
        &format!("SELECT count() FROM {a_user}.later_view"),
        &[60],
    );
}
