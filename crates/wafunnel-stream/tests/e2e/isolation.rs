//! Client isolation under attack: as client A, every way of reaching
//! another account's rows that the server offers (other databases, system
//! tables, table functions, settings in every form, subqueries, joins,
//! unions, dictionaries, writes and DDL, KILL QUERY, error messages) on the
//! real server. Each attempt asserts that no marker of client B, of an
//! account of no client or of a table of the main database appears in the
//! answer, rows or error text; the table of every attempt and its outcome
//! is printed (`--nocapture`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::grants::{generated_password, http, rows, run_grants, wait_for_login, UsersFile};
use super::{env, Env};

/// One query over HTTP as `user` with extra URL parameters.
fn http_with(user: &str, password: &str, params: &str, query: &str) -> (u16, String) {
    let url = format!("{}/?{params}", env("CLICKHOUSE_URL").trim_end_matches('/'));
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--data-binary"])
        .arg(query)
        .arg("-u")
        .arg(format!("{user}:{password}"))
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_owned())
}

/// A statement of the test's own as the admin, kept out of the query log
/// (which every user can read on 18.16: the markers must not reach it
/// through the test itself).
fn admin(query: &str) -> String {
    let (code, body) = http_with("default", "", "log_queries=0", query);
    assert_eq!(code, 200, "admin: {query}: {body}");
    body
}

/// The sorted rows of a lookup of the test's own as the admin, kept out
/// of the query log like [`admin`].
fn admin_rows(query: &str) -> Vec<String> {
    let mut lines: Vec<String> = admin(&format!("{query} FORMAT TSV"))
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// What an attempt returned, for the report.
fn outcome(code: u16, body: &str) -> String {
    if code == 200 {
        let lines = body.lines().count();
        return format!("200, {lines} line(s)");
    }
    let code = body
        .strip_prefix("Code: ")
        .and_then(|rest| rest.split(',').next())
        .unwrap_or("?");
    let what = body
        .split("DB::Exception: ")
        .nth(1)
        .and_then(|rest| rest.split(", e.what()").next())
        .unwrap_or(body);
    let what: String = what.chars().take(70).collect();
    format!("refused, code {code}: {what}")
}

struct Attacks {
    user: String,
    password: String,
    markers: Vec<String>,
    log: BTreeMap<String, Vec<(String, String)>>,
}

impl Attacks {
    /// Runs `query` as A with `params`; asserts that no marker appears in
    /// the answer; returns the status and body.
    fn attempt(&mut self, kind: &str, params: &str, query: &str) -> (u16, String) {
        let (code, body) = http_with(&self.user, &self.password, params, query);
        // A name the attack itself gives (the canary table's) may be
        // echoed back; no value of another account is ever typed in one.
        for marker in self.markers.iter().filter(|m| !query.contains(m.as_str())) {
            assert!(
                !body.contains(marker.as_str()),
                "LEAK of {marker} by {kind}: {params} {query}\n{body}"
            );
        }
        let shown = if params.is_empty() {
            query.to_owned()
        } else {
            format!("[?{params}] {query}")
        };
        self.log
            .entry(kind.to_owned())
            .or_default()
            .push((shown, outcome(code, &body)));
        (code, body)
    }

    /// An attempt that must be refused with one of `codes` (any code when
    /// empty: a query malformed for the types of its source).
    fn refused(&mut self, kind: &str, params: &str, query: &str, codes: &[u32]) {
        let (code, body) = self.attempt(kind, params, query);
        assert_ne!(code, 200, "{kind}: allowed: {query}: {body}");
        assert!(
            codes.is_empty()
                || codes
                    .iter()
                    .any(|c| body.starts_with(&format!("Code: {c},"))),
            "{kind}: {query}: expected code {codes:?}, got {body}"
        );
    }
}

// Error codes of 18.16.
const DENIED: u32 = 291; // DATABASE_ACCESS_DENIED
const READONLY: u32 = 164;
const UNKNOWN_TABLE: u32 = 60;
const UNKNOWN_FUNCTION: u32 = 46;
const NO_DICTIONARY: u32 = 36;
const SYNTAX: u32 = 62;
const UNKNOWN_DATABASE: u32 = 81;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Kafka, ClickHouse, CLICKHOUSE_USERS_DIR and WAFUNNEL_BIN: run scripts/test.sh"]
async fn a_client_reads_nothing_of_another_account_whatever_it_tries() {
    let env_ = Env::new("isolation", 1, 1).await;
    let main = env_.cfg.clickhouse.database.clone();
    let pid = std::process::id();
    // Distinctive values of B and of an account of no client.
    let a_account = format!("act_1{pid}");
    let b_account = format!("act_2{pid}");
    let other_account = format!("act_3{pid}");
    let b_hash = format!("bsecrethash{pid}");
    let b_click = format!("bsecretclick{pid}");
    let b_ad = format!("bsecretad{pid}");
    let b_campaign = format!("bsecretcampaign{pid}");
    let b_export = format!("bsecretexport{pid}");
    let b_revenue = "777123.4567";
    let b_spend = "555321.7654";
    let other_hash = format!("thirdpartyhash{pid}");
    let canary_table = format!("zz_canary_{pid}");
    let canary_value = format!("canarysecret{pid}");
    let insert = |table: &str, columns: &str, values: &[String]| {
        admin(&format!(
            "INSERT INTO {main}.{table} ({columns}) VALUES {}",
            values.join(", ")
        ));
    };
    let conv = |account: &str, ad: &str, hash: &str, click: &str, revenue: &str| {
        format!("('{account}', '{ad}', '{hash}', 1772323200000, 1772326800000, 1, 3, 1, {revenue}, '{click}', 1, 0)")
    };
    insert(
        "conversation_rows",
        "account_id, ad_id, user_hash, started_at, last_activity_at, clicks, inbound_messages, purchases, revenue, click_id, version, is_deleted",
        &[
            conv(&a_account, "ad_a", "ahash1", "aclick1", "12.5"),
            conv(&b_account, &b_ad, &b_hash, &b_click, b_revenue),
            conv(&other_account, "ad_o", &other_hash, "oclick", "1.25"),
        ],
    );
    let funnel = |account: &str, ad: &str, revenue: &str| {
        format!("('{account}', '{ad}', '2026-03-01', 0, 5, 3, {revenue}, 1)")
    };
    insert(
        "funnel_partial",
        "account_id, ad_id, day, partition, clicks, inbound_messages, revenue, version",
        &[
            funnel(&a_account, "ad_a", "12.5"),
            funnel(&b_account, &b_ad, b_revenue),
            funnel(&other_account, "ad_o", "1.25"),
        ],
    );
    insert(
        "contacts_partial",
        "account_id, day, partition, unique_contacts, version",
        &[
            format!("('{a_account}', '2026-03-01', 0, 4, 1)"),
            format!("('{b_account}', '2026-03-01', 0, 8675309123, 1)"),
        ],
    );
    insert(
        "ads",
        "account_id, ad_id, partition, campaign_id, adset_id, named_at, named_by, version",
        &[
            format!("('{a_account}', 'ad_a', 0, 'camp_a', 'set_a', 1, 'x', 1)"),
            format!("('{b_account}', '{b_ad}', 0, '{b_campaign}', 'set_b', 1, 'x', 1)"),
        ],
    );
    insert(
        "spend_snapshots",
        "account_id, ad_id, date, partition, event_id, event_time, spend, currency, version",
        &[
            format!("('{a_account}', 'ad_a', '2026-03-01', 0, 'ea', 1, 3.5, 'USD', 1)"),
            format!("('{b_account}', '{b_ad}', '2026-03-01', 0, 'eb', 1, {b_spend}, 'USD', 1)"),
        ],
    );
    insert(
        "capi_exports",
        "export_id, account_id, day, event_name, event_time, status, attempts, updated_at, version",
        &[
            format!("('exp_a{pid}', '{a_account}', '2026-03-01', 'Purchase', 1, 'sent', 1, 1, 1)"),
            format!("('{b_export}', '{b_account}', '2026-03-01', 'Purchase', 1, 'sent', 1, 1, 1)"),
        ],
    );
    admin(&format!(
        "CREATE TABLE {main}.{canary_table} (secret String) ENGINE = MergeTree ORDER BY secret"
    ));
    admin(&format!(
        "INSERT INTO {main}.{canary_table} VALUES ('{canary_value}')"
    ));

    // Two clients, A and B.
    let users_dir = PathBuf::from(env("CLICKHOUSE_USERS_DIR"));
    let dir = std::env::temp_dir().join(format!("wafunnel-isolation-{pid}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("wafunnel.toml");
    // The suite's thousand attempts, most refused, would use up the default
    // hourly quota of errors, and every later attempt would then be refused
    // by the quota instead of by the rights this suite tests.
    std::fs::write(
        &config,
        format!(
            "{}\n[client_limits]\nquota_queries = 0\nquota_errors = 0\n[clients.a]\naccounts = [\"{a_account}\"]\nnetworks = [\"127.0.0.1\", \"::1\"]\n[clients.b]\naccounts = [\"{b_account}\"]\nnetworks = [\"127.0.0.1\", \"::1\"]\n",
            env_.toml_again()
        ),
    )
    .expect("write config");
    let users_file = users_dir.join(format!("{main}_clients.xml"));
    let _cleanup = UsersFile(users_file.clone());
    let out = run_grants(&config, &users_dir, &[]);
    let a_password = generated_password(&out, "a").expect("a's password");
    let b_password = generated_password(&out, "b").expect("b's password");
    let a_user = format!("{main}_client_a");
    let b_user = format!("{main}_client_b");
    wait_for_login(&a_user, &a_password);
    wait_for_login(&b_user, &b_password);

    // The file the server reads holds no password in clear and is not
    // readable by every user of the machine.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&users_file)
            .expect("users file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o007, 0, "world-accessible: {mode:o}");
        let text = std::fs::read_to_string(&users_file).expect("read");
        assert!(!text.contains(&a_password) && !text.contains(&b_password));
    }

    // The markers: nothing of these may reach A.
    let markers: Vec<String> = vec![
        b_account.clone(),
        other_account.clone(),
        b_hash.clone(),
        b_click.clone(),
        b_ad.clone(),
        b_campaign.clone(),
        b_export.clone(),
        b_revenue.to_owned(),
        b_spend.to_owned(),
        "8675309123".to_owned(),
        other_hash.clone(),
        canary_table.clone(),
        canary_value.clone(),
    ];
    // The readers' passwords, in the URLs of the hidden tables.
    let mut markers = markers;
    for client in ["a", "b"] {
        let definitions = admin_rows(&format!(
            "SELECT create_table_query FROM system.tables WHERE database = '{main}_hidden_{client}'"
        ));
        let definition = definitions.first().expect("a hidden table");
        let password = definition
            .split("&password=")
            .nth(1)
            .and_then(|rest| rest.split('&').next())
            .expect("a reader password in the URL");
        assert_eq!(password.len(), 36, "{definition}");
        markers.push(password.to_owned());
    }
    let mut attacks = Attacks {
        user: a_user.clone(),
        password: a_password.clone(),
        markers,
        log: BTreeMap::new(),
    };

    // A reads its own rows in every view, and only them.
    let client_views = admin_rows(&format!(
        "SELECT name FROM system.tables WHERE database = '{a_user}'"
    ));
    assert!(client_views.len() >= 6, "{client_views:?}");
    for view in &client_views {
        let (code, body) = attacks.attempt(
            "own views",
            "",
            &format!("SELECT * FROM {a_user}.{view} FORMAT TSV"),
        );
        assert_eq!(code, 200, "{view}: {body}");
    }
    let (_, body) = attacks.attempt(
        "own views",
        "",
        &format!("SELECT user_hash, click_id FROM {a_user}.conversations FORMAT TSV"),
    );
    assert_eq!(body.trim(), "ahash1\taclick1");
    let (_, body) = attacks.attempt(
        "own views",
        "",
        &format!("SELECT count() FROM {a_user}.funnel_daily WHERE account_id != '{a_account}'"),
    );
    assert_eq!(body.trim(), "0");

    // Every table and view of the main database, the other databases of
    // the pipeline and of B, read directly and through every construct
    // that reads a table, with the result or an error carrying its rows.
    let mut sources: Vec<(String, Vec<String>)> = Vec::new();
    let columns_of = |database: &str, table: &str| -> Vec<String> {
        admin_rows(&format!(
            "SELECT name FROM system.columns WHERE database = '{database}' AND table = '{table}'"
        ))
    };
    for database in [
        main.clone(),
        format!("{main}_filtered_b"),
        format!("{main}_hidden_b"),
        format!("{main}_client_b"),
        format!("{main}_filtered_a"),
        format!("{main}_hidden_a"),
    ] {
        for table in admin_rows(&format!(
            "SELECT name FROM system.tables WHERE database = '{database}'"
        )) {
            let columns = columns_of(&database, &table);
            sources.push((format!("{database}.{table}"), columns));
        }
    }
    assert!(sources.len() > 30, "{sources:?}");
    let own = format!("{a_user}.conversations");
    for (source, columns) in &sources {
        // Every column of every row in one string: what an error would echo.
        let dump = format!(
            "arrayStringConcat(groupArray(concat({})))",
            columns
                .iter()
                .map(|c| format!("ifNull(toString(`{c}`), '')"))
                .collect::<Vec<_>>()
                .join(", '|', ")
        );
        let forms = [
            ("direct", format!("SELECT * FROM {source}")),
            ("IN subquery", format!("SELECT count() FROM {own} WHERE 1 IN (SELECT toUInt8({dump}) FROM {source})")),
            ("IN subquery", format!("SELECT count() FROM {own} WHERE user_hash IN (SELECT {dump} FROM {source})")),
            ("NOT IN subquery", format!("SELECT count() FROM {own} WHERE user_hash NOT IN (SELECT toString(toUInt8({dump})) FROM {source})")),
            ("GLOBAL IN subquery", format!("SELECT count() FROM {own} WHERE 1 GLOBAL IN (SELECT toUInt8({dump}) FROM {source})")),
            ("scalar subquery", format!("SELECT (SELECT {dump} FROM {source})")),
            ("scalar subquery", format!("SELECT count() FROM {own} WHERE user_hash = (SELECT toString(toUInt8({dump})) FROM {source})")),
            ("JOIN", format!("SELECT * FROM {own} ANY LEFT JOIN (SELECT 'ahash1' AS user_hash, {dump} AS leaked FROM {source}) USING user_hash")),
            ("GLOBAL JOIN", format!("SELECT * FROM {own} GLOBAL ANY LEFT JOIN (SELECT 'ahash1' AS user_hash, {dump} AS leaked FROM {source}) USING user_hash")),
            ("UNION ALL", format!("SELECT user_hash FROM {own} UNION ALL SELECT {dump} FROM {source}")),
            ("arrayJoin", format!("SELECT arrayJoin([(SELECT {dump} FROM {source})])")),
            ("FROM subquery", format!("SELECT * FROM (SELECT * FROM {source})")),
            ("error channel", format!("SELECT throwIf(1, (SELECT {dump} FROM {source}))")),
            ("error channel", format!("SELECT toUInt8((SELECT {dump} FROM {source}))")),
            ("DESCRIBE / SHOW", format!("SHOW CREATE TABLE {source}")),
            ("DESCRIBE / SHOW", format!("DESCRIBE TABLE {source}")),
        ];
        for (kind, query) in forms {
            let (code, body) = attacks.attempt(kind, "", &query);
            assert_ne!(code, 200, "{kind}: allowed: {query}: {body}");
        }
    }

    // System tables: readable, and none shows another account, B's
    // objects or the main database's tables.
    let system_tables = rows(
        a_user.as_str(),
        a_password.as_str(),
        "SELECT name FROM system.tables WHERE database = 'system'",
    );
    for table in &system_tables {
        if ["numbers", "numbers_mt", "zeros", "zeros_mt"].contains(&table.as_str()) {
            continue;
        }
        attacks.attempt(
            "system tables",
            "",
            &format!("SELECT * FROM system.{table} FORMAT TSV"),
        );
    }
    for query in [
        "SELECT name FROM system.databases".to_owned(),
        format!("SELECT name FROM system.tables WHERE database = '{main}'"),
        format!("SELECT count() FROM system.columns WHERE database = '{main}'"),
        format!("SELECT count() FROM system.parts WHERE database = '{main}'"),
        "SHOW DATABASES".to_owned(),
        format!("SHOW TABLES FROM {main}"),
        format!("SHOW TABLES FROM {main}_client_b"),
        "SELECT * FROM system.processes".to_owned(),
        "SHOW PROCESSLIST".to_owned(),
        "SELECT * FROM system.settings WHERE changed".to_owned(),
        "SELECT * FROM system.clusters".to_owned(),
        "SELECT * FROM system.macros".to_owned(),
        "SELECT * FROM system.dictionaries".to_owned(),
    ] {
        attacks.attempt("system tables", "", &query);
    }
    let (_, databases) = attacks.attempt(
        "system tables",
        "",
        "SELECT name FROM system.databases ORDER BY name != 'system'",
    );
    assert_eq!(
        databases.lines().collect::<Vec<_>>(),
        ["system", a_user.as_str()],
        "the databases A is told of"
    );
    // The query log exists and is readable by A, and holds no query of
    // B's, of A's or of the readers (their profiles do not log).
    admin("SYSTEM FLUSH LOGS");
    let (code, body) = attacks.attempt("system tables", "", "SELECT count() FROM system.query_log");
    assert_eq!(code, 200, "{body}");
    assert!(body.trim().parse::<u64>().expect("count") > 0);
    let (_, logged) = attacks.attempt(
        "system tables",
        "",
        &format!("SELECT count() FROM system.query_log WHERE user LIKE '{main}\\_%'"),
    );
    assert_eq!(logged.trim(), "0", "clients' or readers' queries logged");

    // While B and its reader run a query, A sees in system.processes that
    // they do (user and text: 18.16 shows every user's queries), but
    // nothing of B's rows.
    let b_query = {
        let (user, password) = (b_user.clone(), b_password.clone());
        let db = b_user.clone();
        std::thread::spawn(move || {
            http(
                &user,
                &password,
                &format!("SELECT count() FROM {db}.conversations WHERE sleep(3) = 0 FORMAT TSV"),
            )
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_b = false;
    while Instant::now() < deadline && !seen_b {
        let (_, body) = attacks.attempt(
            "system tables",
            "",
            "SELECT user, query FROM system.processes FORMAT TSV",
        );
        seen_b = body.contains(&b_user);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(seen_b, "B's query never seen running");
    // Refused while B's query runs, nothing to kill once it is done: in
    // both cases B's query must end with its result.
    for query in [
        format!("KILL QUERY WHERE user = '{b_user}' SYNC"),
        format!("KILL QUERY WHERE user LIKE '{main}\\_reader%' SYNC"),
        "KILL QUERY WHERE 1".to_owned(),
    ] {
        let (code, body) = attacks.attempt("KILL QUERY", "", &query);
        assert!(
            code == 200 && body.trim().is_empty() || body.starts_with("Code: 164,"),
            "{query}: {body}"
        );
    }
    let (code, body) = b_query.join().expect("b's query");
    assert_eq!((code, body.trim()), (200, "1"), "B's query was not killed");

    // Table functions, dictionaries.
    let url = env("CLICKHOUSE_URL");
    let url = url.trim_end_matches('/');
    for query in [
        format!("SELECT * FROM remote('127.0.0.1:{}', {main}.conversation_rows, 'default', '')", env_port()),
        format!("SELECT * FROM remote('127.0.0.1', {main}.conversation_rows)"),
        format!("SELECT * FROM remoteSecure('127.0.0.1', {main}.conversation_rows)"),
        format!("SELECT * FROM cluster('wafunnel_self', {main}.conversation_rows)"),
        format!("SELECT * FROM url('{url}/?query=SELECT+*+FROM+{main}.conversation_rows', TSV, 'x String')"),
        "SELECT * FROM file('../users.d/x.xml', TSV, 'x String')".to_owned(),
        "SELECT * FROM numbers(3)".to_owned(),
        format!("SELECT * FROM merge('{main}', '.*')"),
        format!("SELECT * FROM merge('{main}_filtered_b', '.*')"),
        "SELECT * FROM mysql('127.0.0.1:3306', 'db', 't', 'u', 'p')".to_owned(),
        "SELECT * FROM odbc('DSN=x', 't')".to_owned(),
        "SELECT * FROM jdbc('x', 't')".to_owned(),
        "SELECT * FROM hdfs('hdfs://x/y', TSV, 'x String')".to_owned(),
        format!("SELECT count() FROM {own} WHERE 1 IN (SELECT count() FROM remote('127.0.0.1', {main}.conversation_rows))"),
        format!("SELECT count() FROM {own} WHERE 1 IN (SELECT count() FROM merge('{main}', '.*'))"),
    ] {
        attacks.refused(
            "table functions",
            "",
            &query,
            &[READONLY, UNKNOWN_FUNCTION, DENIED],
        );
    }
    for query in [
        format!("SELECT dictGetString('{main}', 'user_hash', toUInt64(1))"),
        "SELECT dictGetString('conversations', 'user_hash', tuple('x'))".to_owned(),
        "SELECT dictHas('x', toUInt64(1))".to_owned(),
        "SYSTEM RELOAD DICTIONARIES".to_owned(),
    ] {
        attacks.refused(
            "dictionaries",
            "",
            &query,
            &[NO_DICTIONARY, READONLY, UNKNOWN_FUNCTION],
        );
    }

    // Settings, in every form the server takes them: none may change, and
    // the subquery that leaked through the earlier design stays refused.
    let leak = format!(
        "SELECT count() FROM {own} WHERE 1 IN (SELECT toUInt8(arrayStringConcat(groupArray(user_hash))) FROM {main}.conversation_rows)"
    );
    let session = format!("session_id=isolation{pid}");
    let current: BTreeMap<String, String> = rows(
        &a_user,
        &a_password,
        "SELECT name, value FROM system.settings",
    )
    .into_iter()
    .filter_map(|l| {
        l.split_once('\t')
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
    })
    .collect();
    for (name, value) in [
        ("readonly", "0"),
        ("readonly", "2"),
        ("prefer_localhost_replica", "0"),
        ("log_queries", "1"),
        ("max_memory_usage", "1"),
        ("max_execution_time", "1"),
        ("distributed_product_mode", "allow"),
        ("enable_optimize_predicate_expression", "1"),
        ("max_subquery_depth", "1000"),
        ("skip_unavailable_shards", "1"),
        ("insert_distributed_sync", "1"),
        ("date_time_input_format", "basic"),
        ("send_progress_in_http_headers", "0"),
    ] {
        // 18.16 accepts a setting equal to its current value, and only that.
        assert_ne!(current.get(name).map(String::as_str), Some(value), "{name}");
        let sql_value = if value.parse::<i64>().is_ok() {
            value.to_owned()
        } else {
            format!("'{value}'")
        };
        attacks.refused(
            "settings",
            &session,
            &format!("SET {name} = {sql_value}"),
            &[READONLY],
        );
        attacks.refused(
            "settings",
            &format!("{name}={value}"),
            "SELECT 1",
            &[READONLY],
        );
        attacks.refused("settings", &format!("{name}={value}"), &leak, &[READONLY]);
        attacks.refused(
            "settings",
            "",
            &format!("SELECT 1 SETTINGS {name} = {sql_value}"),
            &[READONLY],
        );
        attacks.refused(
            "settings",
            "",
            &format!("{leak} SETTINGS {name} = {sql_value}"),
            &[READONLY],
        );
    }
    attacks.refused("settings", &session, "SET readonly = 0", &[READONLY]);
    attacks.refused("settings", &session, &leak, &[DENIED]);
    attacks.refused("settings", "", &format!("USE {main}"), &[113, DENIED]);
    attacks.refused("settings", &session, &format!("USE {main}"), &[DENIED]);
    attacks.refused(
        "settings",
        &format!("database={main}"),
        "SELECT 1",
        &[DENIED],
    );
    attacks.refused(
        "settings",
        &format!("database={main}_client_b"),
        "SELECT 1",
        &[DENIED],
    );
    // A setting equal to the profile's value is accepted, and changes nothing.
    let (code, body) = attacks.attempt("settings", "readonly=1", "SELECT 1");
    assert_eq!((code, body.trim()), (200, "1"));
    attacks.refused("settings", "", &leak, &[DENIED]);

    // Writes and DDL, on A's own database, the main one, B's.
    let b_db = format!("{main}_client_b");
    for query in [
        format!("INSERT INTO {a_user}.conversations (account_id) VALUES ('x')"),
        format!("INSERT INTO {main}.conversation_rows (account_id) VALUES ('x')"),
        format!("INSERT INTO {b_db}.conversations (account_id) VALUES ('x')"),
        format!("INSERT INTO FUNCTION url('{url}/?query=INSERT+INTO+{main}.ads+FORMAT+TSV', TSV, 'x String') VALUES ('x')"),
        format!("CREATE TABLE {a_user}.mine (x UInt8) ENGINE = Memory"),
        format!("CREATE TABLE {a_user}.mine ENGINE = Memory AS SELECT * FROM {main}.conversation_rows"),
        format!("CREATE VIEW {a_user}.mine AS SELECT * FROM {main}.conversation_rows"),
        format!("CREATE TABLE {a_user}.mine AS {main}.conversation_rows ENGINE = Distributed('wafunnel_self', '{main}', 'conversation_rows')"),
        format!("CREATE TABLE {a_user}.mine (x String) ENGINE = URL('{url}/?query=SELECT+1', TSV)"),
        format!("CREATE TEMPORARY TABLE mine AS SELECT * FROM {main}.conversation_rows"),
        "CREATE TEMPORARY TABLE mine (x UInt8)".to_owned(),
        "CREATE DATABASE mine".to_owned(),
        format!("DROP TABLE {a_user}.conversations"),
        format!("DROP TABLE {b_db}.conversations"),
        format!("DROP DATABASE {b_db}"),
        format!("DETACH TABLE {a_user}.conversations"),
        format!("ATTACH TABLE {a_user}.conversations"),
        format!("ATTACH TABLE {a_user}.mine (x UInt8) ENGINE = Memory"),
        format!("TRUNCATE TABLE {main}.conversation_rows"),
        format!("RENAME TABLE {a_user}.conversations TO {a_user}.c2"),
        format!("ALTER TABLE {a_user}.conversations ADD COLUMN x UInt8"),
        format!("ALTER TABLE {main}.conversation_rows DELETE WHERE 1"),
        format!("ALTER TABLE {main}.conversation_rows UPDATE revenue = 0 WHERE 1"),
        format!("ALTER TABLE {a_user}.conversations MODIFY COLUMN revenue String"),
        format!("OPTIMIZE TABLE {main}.conversation_rows FINAL"),
        format!("OPTIMIZE TABLE {a_user}.conversations"),
        "SYSTEM STOP MERGES".to_owned(),
        "SYSTEM FLUSH LOGS".to_owned(),
        "SYSTEM DROP MARK CACHE".to_owned(),
        "SYSTEM RELOAD CONFIG".to_owned(),
        "SYSTEM SHUTDOWN".to_owned(),
    ] {
        attacks.refused(
            "writes and DDL",
            "",
            &query,
            &[READONLY, DENIED, UNKNOWN_FUNCTION, SYNTAX, UNKNOWN_DATABASE, UNKNOWN_TABLE],
        );
    }
    // The readers' passwords are in the URL tables of the hidden
    // databases (and their queries name no account, as system.processes
    // shows every user); A's own tables are materialized views that show neither
    // the URL nor the accounts, and guessing does not log A in as a reader.
    for view in &client_views {
        let (code, create) = attacks.attempt(
            "reader credentials",
            "",
            &format!("SHOW CREATE TABLE {a_user}.{view} FORMAT TSVRaw"),
        );
        assert_eq!(code, 200, "{create}");
        assert!(create.contains("MATERIALIZED VIEW"), "{create}");
        assert!(!create.contains(&a_account), "{create}");
    }
    attacks.attempt(
        "reader credentials",
        "",
        &format!("SELECT * FROM system.tables WHERE database = '{a_user}' FORMAT TSV"),
    );
    for reader in [format!("{main}_reader_a"), format!("{main}_reader_b")] {
        for password in ["", a_password.as_str()] {
            let (code, body) = http(&reader, password, "SELECT 1");
            assert_ne!(code, 200, "{reader} logged in: {body}");
            attacks
                .log
                .entry("reader credentials".to_owned())
                .or_default()
                .push((
                    format!("log in as {reader} with a guessed password"),
                    outcome(code, &body),
                ));
        }
    }

    // The other way round: B sees none of A's values either.
    let (_, b_rows) = http(
        &b_user,
        &b_password,
        &format!("SELECT user_hash, click_id, revenue FROM {b_db}.conversations FORMAT TSV"),
    );
    assert_eq!(b_rows.trim(), format!("{b_hash}\t{b_click}\t{b_revenue}"));

    // The table for the report.
    let mut total = 0;
    for (kind, attempts) in &attacks.log {
        println!("## {kind} ({} attempts)", attempts.len());
        for (query, result) in attempts {
            let query: String = query.chars().take(160).collect();
            println!("| `{}` | {result} |", query.replace('|', "\\|"));
        }
        total += attempts.len();
    }
    println!("{total} attempts, no marker of another account in any answer");

    admin(&format!("DROP TABLE {main}.{canary_table}"));
}

/// The server's native port, as deploy/local starts it.
fn env_port() -> String {
    std::env::var("CLICKHOUSE_TCP_PORT").unwrap_or_else(|_| "9000".to_owned())
}
