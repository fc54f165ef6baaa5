//! `wafunnel grants`: each client of the agency reads its own accounts, and
//! nothing else, in every BI view.
//!
//! Contract: for every configured client, the database
//! `<database>_client_<name>` holds one object per view of the main
//! database that has an `account_id` column, under the view's name and with
//! its columns, returning the view's rows of the client's accounts only. The
//! views are found in `system.tables`/`system.columns` at each run, so the
//! views of later migrations are covered by running `grants` again. A
//! read-only user named like the client database may read that database and
//! no other of the pipeline's (every user can read `system`). Running
//! `grants` again replaces the filters with the configured accounts, drops
//! the objects of views that no longer exist and keeps the password a
//! client has (one given in its configuration replaces it).
//!
//! The invariant that makes this hold: **no query a client writes ever runs
//! with any rights but the client's own**. Only queries `grants` writes
//! itself (a fixed `SELECT` of a view filtered to the client's accounts)
//! run with more. How depends on the server (`SELECT version()`):
//! - **ClickHouse 24.2 and later** (SQL access control): the client
//!   database holds views with `SQL SECURITY DEFINER`, which read the main
//!   view with the rights of the user running `grants`. Only the view's own
//!   fixed query runs with them: the rest of a client's query (its
//!   subqueries, `IN`, `JOIN`, table functions) is checked against the
//!   client's grants, `SELECT` on its database only. The user is created
//!   with `CREATE USER ... IDENTIFIED WITH sha256_hash BY ... SALT ...`
//!   (a salted SHA-256) and `readonly = 1`.
//! - **Before 24.2** (users in `users.xml`, e.g. 18.16): a view runs with
//!   the rights of the user reading it, and the server has no row filters
//!   (`<databases><db><table><filter>` under a user came in 19.x; 18.16
//!   ignores it) and no settings constraints. Per client and view:
//!   - in `<database>_filtered_<name>`, the main view filtered to the
//!     client's accounts, which only the client's reader
//!     `<database>_reader_<name>` may read (with the main database; it
//!     connects from the server itself only: `127.0.0.1`, `::1`);
//!   - in `<database>_hidden_<name>`, which no user may read, a `URL` table
//!     whose URL is this server's own HTTP interface (`clickhouse.self_url`)
//!     with a fixed query of that filtered view in `Native` format, run as
//!     the reader;
//!   - in the client database, a materialized view `TO` that table, that
//!     nothing ever inserts into: 18.16 reads a materialized view's target
//!     with the server's rights, so the client reads the rows the URL
//!     returns, while `SHOW CREATE TABLE` shows it neither the reader's
//!     password nor the account list. (An error of the reader's request,
//!     e.g. while the server reloads the users file, quotes its URL: what
//!     keeps the reader to the server is its network, not its password.)
//!
//!   The client's query runs on those rows with the client's rights: its
//!   subqueries, joins and `IN` sets read as the client and are refused
//!   outside its database. Rejected designs: `Distributed` tables over a
//!   cluster of this server (the earlier one) send the client's whole
//!   query, `IN (SELECT ...)` subqueries included, to run as the cluster's
//!   user, so any table of the server could be read through them; a
//!   per-client cluster user cannot be confined either, because reading the
//!   filtered views needs the right to read the main database; `Merge`
//!   tables check the reader's rights on their sources. The server computes
//!   a view in full before the outer `WHERE` either way (18.16 pushes no
//!   predicate into views), so a client's query costs about what it did
//!   through `Distributed`, plus the transfer of its rows over the loopback.
//!
//!   Users, profiles and quota are a users-file fragment,
//!   `<database>_clients.xml`, mode 0640, that `grants` writes into the
//!   server's `users.d` directory (the server reloads it within seconds) or
//!   prints for the operator. Passwords are stored as
//!   `password_sha256_hex`, the strongest form 18.16 knows (it has no
//!   salted one); generated passwords are 144 random bits. The client's
//!   profile sets `readonly = 1`, so no setting can be changed, and
//!   `log_queries = 0`, so its query texts never reach `system.query_log`,
//!   which every user can read; it also sets the few settings BI drivers
//!   send on every request to the value they send (see
//!   [`DRIVER_SETTINGS`]): 18.16 accepts, in readonly mode, a setting
//!   equal to its current value and refuses any other.
//!
//!   What 18.16 shows every user and no configuration closes: the text
//!   (never the rows) of every query running now, in `system.processes`,
//!   and of every logged query, in `system.query_log`. `grants` runs its
//!   statements, which name the accounts, with `log_queries = 0`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clickhouse::Client;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use wafunnel_runtime::config::{ClientLimits, Config, ConfigError, Secret};
use wafunnel_runtime::error::{Classify, Fault};

use crate::sink::{self, SinkError};

// Each client's own profile and quota (execution time, concurrency,
// memory, rows, quota): rendered there for both paths, used below only in
// `users_file` and after the SQL path's user statements.
mod limits;

/// Why `grants` failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    /// ClickHouse failed or refused a statement (see [`SinkError`]).
    #[error(transparent)]
    ClickHouse(#[from] SinkError),
    /// The database has no view with an `account_id` column: not migrated.
    #[error("database {0} has no view with an account_id column (check clickhouse.database; run `wafunnel migrate`)")]
    NoViews(String),
    /// A name that would become a database, user, XML element or URL part
    /// is not letters, digits and `_`.
    #[error("`{0}` cannot name a ClickHouse user or table here (check clickhouse.database and the client names: letters, digits and `_` only)")]
    BadName(String),
    /// `clickhouse.self_url` is not a plain `http://` address.
    #[error("clickhouse.self_url `{0}` is not an http:// address of the server as it reaches itself (e.g. http://127.0.0.1:8123)")]
    BadSelfUrl(String),
    /// `SELECT version()` answered something else than a version.
    #[error("clickhouse answered `{0}` as its version")]
    Version(String),
    /// A client's limits are invalid (see [`ConfigError`]).
    #[error(transparent)]
    Limits(#[from] ConfigError),
    /// The users file cannot be read or written.
    #[error("cannot write the users file {path}: {source} (check --users-dir)")]
    UsersFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl From<clickhouse::error::Error> for GrantsError {
    fn from(e: clickhouse::error::Error) -> Self {
        GrantsError::ClickHouse(e.into())
    }
}

impl Classify for GrantsError {
    fn fault(&self) -> Fault {
        match self {
            GrantsError::ClickHouse(e) => e.fault(),
            GrantsError::NoViews(_)
            | GrantsError::BadName(_)
            | GrantsError::Limits(_)
            | GrantsError::BadSelfUrl(_)
            | GrantsError::UsersFile { .. } => Fault::User,
            GrantsError::Version(_) => Fault::External,
        }
    }

    fn is_retryable(&self) -> bool {
        match self {
            GrantsError::ClickHouse(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// How the server controls access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `CREATE USER`, `GRANT` and `SQL SECURITY DEFINER` views (24.2 and later).
    Sql,
    /// Users in the users files; views run with the reader's rights.
    UsersFile,
}

/// The access path for a server version (`18.16.1`, `25.8.2.29`).
pub fn access_for(version: &str) -> Result<Access, GrantsError> {
    let mut parts = version.trim().split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) if (major, minor) >= (24, 2) => Ok(Access::Sql),
        (Some(Ok(_)), Some(Ok(_))) => Ok(Access::UsersFile),
        _ => Err(GrantsError::Version(version.trim().to_owned())),
    }
}

/// The names `grants` gives a client's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The database the client reads, and its user's name.
    pub client: String,
    /// Before 24.2: the database of the views filtered to the client's
    /// accounts, which only its reader may read.
    pub filtered: String,
    /// Before 24.2: the database of the `URL` tables that read the
    /// filtered views as the reader, which no user may read.
    pub hidden: String,
    /// Before 24.2: the user the client's `URL` tables read the filtered
    /// views as; it may connect from the server itself only.
    pub reader: String,
}

impl Names {
    /// The names of client `name`'s objects for the main database `database`.
    pub fn new(database: &str, name: &str) -> Names {
        Names {
            client: format!("{database}_client_{name}"),
            filtered: format!("{database}_filtered_{name}"),
            hidden: format!("{database}_hidden_{name}"),
            reader: format!("{database}_reader_{name}"),
        }
    }
}

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// `SELECT *` of `main`.`view` restricted to `accounts`.
fn filtered_select(main: &str, view: &str, accounts: &[String]) -> String {
    let list: Vec<String> = accounts.iter().map(|a| literal(a)).collect();
    format!(
        "SELECT * FROM {}.{} WHERE account_id IN ({})",
        ident(main),
        ident(view),
        list.join(", ")
    )
}

/// 24.2 and later: the statements that make the client database hold
/// `views`, filtered to `accounts`, and drop the objects of `stale` views.
pub fn sql_view_statements(
    main: &str,
    names: &Names,
    views: &[String],
    stale: &[String],
    accounts: &[String],
) -> Vec<String> {
    let db = ident(&names.client);
    let mut out = vec![format!("CREATE DATABASE IF NOT EXISTS {db}")];
    for view in views {
        out.push(format!(
            "CREATE OR REPLACE VIEW {db}.{} SQL SECURITY DEFINER AS {}",
            ident(view),
            filtered_select(main, view, accounts)
        ));
    }
    for view in stale {
        out.push(format!("DROP TABLE IF EXISTS {db}.{}", ident(view)));
    }
    out
}

/// A password as ClickHouse 24.2+ stores it salted: `SHA-256(password ||
/// salt)` and the salt, both in hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaltedHash {
    /// `SHA-256(password || salt)`, hex.
    pub hash: String,
    /// The salt, hex (16 random bytes).
    pub salt: String,
}

impl SaltedHash {
    /// The salted hash of `password` with a new random salt.
    pub fn new(password: &str) -> SaltedHash {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        SaltedHash::with_salt(password, &hex::encode(salt))
    }

    fn with_salt(password: &str, salt: &str) -> SaltedHash {
        SaltedHash {
            hash: sha256_hex(&format!("{password}{salt}")),
            salt: salt.to_owned(),
        }
    }
}

/// 24.2 and later: the statements that create or update the client's user.
/// `password` is the salted hash of a new password (required when `exists`
/// is false); `None` keeps the current one.
pub fn sql_user_statements(
    names: &Names,
    networks: &[String],
    password: Option<&SaltedHash>,
    exists: bool,
) -> Vec<String> {
    let user = ident(&names.client);
    let mut out = Vec::new();
    let identified = |p: &SaltedHash| {
        format!(
            "IDENTIFIED WITH sha256_hash BY {} SALT {}",
            literal(&p.hash),
            literal(&p.salt)
        )
    };
    match (password, exists) {
        (Some(p), false) => out.push(format!(
            "CREATE USER IF NOT EXISTS {user} {}",
            identified(p)
        )),
        (Some(p), true) => out.push(format!("ALTER USER {user} {}", identified(p))),
        (None, _) => {}
    }
    let hosts: Vec<String> = networks
        .iter()
        .map(|n| format!("IP {}", literal(n)))
        .collect();
    out.push(format!(
        "ALTER USER {user} HOST {} DEFAULT DATABASE {} SETTINGS readonly = 1",
        hosts.join(", "),
        ident(&names.client)
    ));
    out.push(format!(
        "GRANT SELECT ON {}.* TO {user} WITH REPLACE OPTION",
        ident(&names.client)
    ));
    out
}

/// The `URL` of a client's table for `view`: the filtered view's rows in
/// `Native` format, read from `self_url` as the client's reader. The query
/// names no account: every user of 18.16 sees it in `system.processes`
/// while it runs.
fn reader_url(self_url: &str, names: &Names, reader_password: &str, view: &str) -> String {
    let query = format!(
        "SELECT * FROM {}.{} FORMAT Native",
        ident(&names.filtered),
        ident(view)
    );
    format!(
        "{}/?user={}&password={reader_password}&query={}",
        self_url.trim_end_matches('/'),
        names.reader,
        utf8_percent_encode(&query, NON_ALPHANUMERIC),
    )
}

/// Before 24.2: the statements that make, per view of `views`, the
/// filtered database hold the view filtered to `accounts`, the hidden
/// database a `URL` table that reads it through `self_url` as the reader,
/// and the client database a materialized view over that table (which
/// shows the client neither the URL nor the accounts); and drop the objects
/// of `stale` views.
pub fn users_file_statements(
    main: &str,
    names: &Names,
    views: &[String],
    stale: &[String],
    accounts: &[String],
    self_url: &str,
    reader_password: &str,
) -> Vec<String> {
    let client = ident(&names.client);
    let filtered = ident(&names.filtered);
    let hidden = ident(&names.hidden);
    let mut out = vec![
        format!("CREATE DATABASE IF NOT EXISTS {filtered}"),
        format!("CREATE DATABASE IF NOT EXISTS {hidden}"),
        format!("CREATE DATABASE IF NOT EXISTS {client}"),
    ];
    // 18.16 has no CREATE OR REPLACE: the client's table is missing for
    // the moment between its DROP and its CREATE.
    for view in views {
        let v = ident(view);
        for db in [&client, &hidden, &filtered] {
            out.push(format!("DROP TABLE IF EXISTS {db}.{v}"));
        }
        out.push(format!(
            "CREATE VIEW {filtered}.{v} AS {}",
            filtered_select(main, view, accounts)
        ));
        out.push(format!(
            "CREATE TABLE {hidden}.{v} AS {filtered}.{v} ENGINE = URL({}, Native)",
            literal(&reader_url(self_url, names, reader_password, view))
        ));
        // Nothing is ever inserted into a view: the materialized view only
        // lends its target, read with the server's rights, to the client.
        out.push(format!(
            "CREATE MATERIALIZED VIEW {client}.{v} TO {hidden}.{v} AS SELECT * FROM {}.{v}",
            ident(main)
        ));
    }
    for view in stale {
        for db in [&client, &hidden, &filtered] {
            out.push(format!("DROP TABLE IF EXISTS {db}.{}", ident(view)));
        }
    }
    out
}

/// Settings clickhouse-connect (the driver of Superset and similar tools)
/// sends with every query, with the value it sends. The client's profile
/// sets them to that value, so its requests pass in readonly mode; none of
/// them touches what a client may read or what it may cost: how input
/// dates are parsed (a client cannot insert), progress headers, and
/// compression of the answer when the client asks for it.
pub const DRIVER_SETTINGS: &[(&str, &str)] = &[
    ("date_time_input_format", "best_effort"),
    ("send_progress_in_http_headers", "1"),
    ("http_headers_progress_interval_ms", "120000"),
    ("enable_http_compression", "1"),
];

/// The settings of the profile clients log in with: the
/// isolation ones, then [`DRIVER_SETTINGS`]. Limits belong here too.
pub fn client_profile() -> Vec<(String, String)> {
    let mut settings = vec![
        ("readonly".to_owned(), "1".to_owned()),
        ("log_queries".to_owned(), "0".to_owned()),
    ];
    settings.extend(
        DRIVER_SETTINGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    settings
}

fn xml_elements(out: &mut String, indent: &str, items: &[(String, String)]) {
    for (name, value) in items {
        out.push_str(&format!("{indent}<{name}>{value}</{name}>\n"));
    }
}

/// One client's entry in the users file.
#[derive(Debug, Clone)]
pub struct FileUser<'a> {
    /// Its names.
    pub names: Names,
    /// Where it may connect from.
    pub networks: &'a [String],
    /// The SHA-256 of its password, in hex.
    pub sha256: String,
    /// The SHA-256 of its reader's password, in hex.
    pub reader_sha256: String,
    /// What it may use of the server (its reader too).
    pub limits: ClientLimits,
}

/// Where a reader may connect from: the server itself.
const READER_NETWORKS: &[&str] = &["127.0.0.1", "::1"];

/// Before 24.2: the users-file fragment of the main database `main`'s
/// clients: their users and readers, and the profiles and the quota they use.
pub fn users_file(main: &str, users: &[FileUser<'_>]) -> String {
    let profile = format!("{main}_client");
    let mut out = String::from("<?xml version=\"1.0\"?>\n");
    out.push_str(&format!(
        "<!-- Written by `wafunnel grants` for database {main}: edits are overwritten. -->\n"
    ));
    out.push_str("<yandex>\n  <profiles>\n");
    out.push_str(&format!("    <{profile}>\n"));
    xml_elements(&mut out, "      ", &client_profile());
    out.push_str(&format!("    </{profile}>\n"));
    // Limits hook: each client's own profile (inheriting this one) and
    // quota, which its reader uses too, so the fixed query a client's query
    // causes stops with it.
    for user in users {
        out.push_str(&limits::users_file_profile(
            &user.names.client,
            &profile,
            &user.limits,
        ));
    }
    out.push_str("  </profiles>\n  <quotas>\n");
    for user in users {
        out.push_str(&limits::users_file_quota(&user.names.client, &user.limits));
    }
    out.push_str("  </quotas>\n  <users>\n");
    let mut user_entry = |name: &str,
                          sha256: &str,
                          networks: &mut dyn Iterator<Item = &str>,
                          profile: &str,
                          databases: &[&str]| {
        out.push_str(&format!("    <{name}>\n"));
        out.push_str(&format!(
            "      <password_sha256_hex>{sha256}</password_sha256_hex>\n"
        ));
        out.push_str("      <networks>\n");
        for network in networks {
            out.push_str(&format!("        <ip>{network}</ip>\n"));
        }
        out.push_str("      </networks>\n");
        // Limits hook: the user's own profile and quota, named like it.
        out.push_str(&format!(
            "      <profile>{profile}</profile>\n      <quota>{profile}</quota>\n"
        ));
        out.push_str("      <allow_databases>\n");
        for database in databases {
            out.push_str(&format!("        <database>{database}</database>\n"));
        }
        out.push_str("      </allow_databases>\n");
        out.push_str(&format!("    </{name}>\n"));
    };
    for user in users {
        let names = &user.names;
        user_entry(
            &names.client,
            &user.sha256,
            &mut user.networks.iter().map(String::as_str),
            &names.client,
            &[&names.client],
        );
        user_entry(
            &names.reader,
            &user.reader_sha256,
            &mut READER_NETWORKS.iter().copied(),
            &names.client,
            &[main, &names.filtered],
        );
    }
    out.push_str("  </users>\n</yandex>\n");
    out
}

/// The password hash of `user` in a users file [`users_file`] wrote.
fn hash_in_file(text: &str, user: &str) -> Option<String> {
    // Its profile and quota are named like it: look among the users only.
    let text = &text[text.find("<users>")?..];
    let start = text.find(&format!("<{user}>"))?;
    let end = start + text[start..].find(&format!("</{user}>"))?;
    let entry = &text[start..end];
    let from = entry.find("<password_sha256_hex>")? + "<password_sha256_hex>".len();
    let to = from + entry[from..].find('<')?;
    let hash = &entry[from..to];
    (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hash.to_owned())
}

/// The reader password in the URL of a client table's definition.
fn password_in_url(create_table_query: &str) -> Option<&str> {
    let from = create_table_query.find("&password=")? + "&password=".len();
    let rest = &create_table_query[from..];
    let to = rest.find('&')?;
    Some(&rest[..to])
}

/// The SHA-256 of a password, in hex, as both kinds of server take it.
pub fn sha256_hex(password: &str) -> String {
    hex::encode(Sha256::digest(password.as_bytes()))
}

fn generate_password() -> Secret {
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    Secret(hex::encode(bytes))
}

/// What `grants` did for one client.
#[derive(Debug)]
pub struct Granted {
    /// The client's name.
    pub client: String,
    /// Its user and database.
    pub user: String,
    /// The views it can read.
    pub views: Vec<String>,
    /// A password generated for it now: shown once, never stored in clear.
    pub generated_password: Option<Secret>,
}

/// What `grants` did.
#[derive(Debug)]
pub struct Outcome {
    /// The access path taken.
    pub access: Access,
    /// Per client.
    pub clients: Vec<Granted>,
    /// Before 24.2: the users file written, or its text when no
    /// directory was given (for the operator to install).
    pub users_file: Option<Result<PathBuf, String>>,
}

fn check_name(name: &str) -> Result<(), GrantsError> {
    if name.is_empty()
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || name.as_bytes()[0].is_ascii_digit()
    {
        return Err(GrantsError::BadName(name.to_owned()));
    }
    Ok(())
}

fn check_self_url(url: &str) -> Result<(), GrantsError> {
    let rest = url.strip_prefix("http://").unwrap_or_default();
    if rest.is_empty()
        || !rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]/".contains(&b))
    {
        return Err(GrantsError::BadSelfUrl(url.to_owned()));
    }
    Ok(())
}

/// The views of `database` that have an `account_id` column, by name.
pub async fn account_views(db: &Client, database: &str) -> Result<Vec<String>, GrantsError> {
    Ok(db
        .query(
            "SELECT name FROM system.tables \
             WHERE database = ? AND engine = 'View' AND name IN \
             (SELECT table FROM system.columns WHERE database = ? AND name = 'account_id') \
             ORDER BY name",
        )
        .bind(database)
        .bind(database)
        .fetch_all::<String>()
        .await?)
}

async fn tables_in(db: &Client, database: &str) -> Result<Vec<String>, GrantsError> {
    Ok(db
        .query("SELECT name FROM system.tables WHERE database = ? ORDER BY name")
        .bind(database)
        .fetch_all::<String>()
        .await?)
}

async fn execute(db: &Client, statements: &[String]) -> Result<(), GrantsError> {
    for statement in statements {
        // The client treats `?` as a bind placeholder; the URLs carry one.
        db.query(&statement.replace('?', "??")).execute().await?;
    }
    Ok(())
}

/// Gives every configured client its read access. Before 24.2 the users
/// file is written into `users_dir`, or returned when it is `None`.
pub async fn run(cfg: &Config, users_dir: Option<&Path>) -> Result<Outcome, GrantsError> {
    let main = &cfg.clickhouse.database;
    check_name(main)?;
    for name in cfg.clients.keys() {
        check_name(name)?;
    }
    // The statements name the clients' accounts: kept out of the query
    // log, which every user of a server before 24.2 can read.
    let db = sink::client(&cfg.clickhouse).with_option("log_queries", "0");
    let version: String = db.query("SELECT version()").fetch_one().await?;
    let access = access_for(&version)?;
    let views = account_views(&db, main).await?;
    if views.is_empty() {
        return Err(GrantsError::NoViews(main.clone()));
    }
    let views_set: BTreeSet<&String> = views.iter().collect();
    let stale_in = |existing: Vec<String>| -> Vec<String> {
        existing
            .into_iter()
            .filter(|t| !views_set.contains(t))
            .collect()
    };
    let mut clients = Vec::new();
    match access {
        Access::Sql => {
            for (name, client) in &cfg.clients {
                let names = Names::new(main, name);
                let stale = stale_in(tables_in(&db, &names.client).await?);
                execute(
                    &db,
                    &sql_view_statements(main, &names, &views, &stale, &client.accounts),
                )
                .await?;
                let exists: u64 = db
                    .query("SELECT count() FROM system.users WHERE name = ?")
                    .bind(&names.client)
                    .fetch_one()
                    .await?;
                let generated = match (&client.password, exists > 0) {
                    (None, false) => Some(generate_password()),
                    _ => None,
                };
                let hash = client
                    .password
                    .as_ref()
                    .or(generated.as_ref())
                    .map(|p| SaltedHash::new(p.expose()));
                execute(
                    &db,
                    &sql_user_statements(&names, &client.networks, hash.as_ref(), exists > 0),
                )
                .await?;
                // Limits hook: the user's profile and quota.
                execute(
                    &db,
                    &limits::sql_statements(&names.client, &cfg.limits_of(name)?),
                )
                .await?;
                clients.push(Granted {
                    client: name.clone(),
                    user: names.client,
                    views: views.clone(),
                    generated_password: generated,
                });
            }
            Ok(Outcome {
                access,
                clients,
                users_file: None,
            })
        }
        Access::UsersFile => {
            let self_url = &cfg.clickhouse.self_url;
            check_self_url(self_url)?;
            let path = users_dir.map(|d| d.join(format!("{main}_clients.xml")));
            let previous = match &path {
                Some(p) => match std::fs::read_to_string(p) {
                    Ok(text) => text,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                    Err(source) => {
                        return Err(GrantsError::UsersFile {
                            path: p.clone(),
                            source,
                        })
                    }
                },
                None => String::new(),
            };
            let mut users = Vec::new();
            for (name, client) in &cfg.clients {
                let names = Names::new(main, name);
                let reader_password = kept_reader_password(&db, &names, &views, &previous)
                    .await?
                    .unwrap_or_else(|| generate_password().expose().to_owned());
                let mut stale = stale_in(tables_in(&db, &names.client).await?);
                stale.extend(stale_in(tables_in(&db, &names.filtered).await?));
                stale.extend(stale_in(tables_in(&db, &names.hidden).await?));
                let stale: Vec<String> = stale
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                execute(
                    &db,
                    &users_file_statements(
                        main,
                        &names,
                        &views,
                        &stale,
                        &client.accounts,
                        self_url,
                        &reader_password,
                    ),
                )
                .await?;
                let (sha256, generated) =
                    match (&client.password, hash_in_file(&previous, &names.client)) {
                        (Some(p), _) => (sha256_hex(p.expose()), None),
                        (None, Some(kept)) => (kept, None),
                        (None, None) => {
                            let p = generate_password();
                            (sha256_hex(p.expose()), Some(p))
                        }
                    };
                users.push(FileUser {
                    names: names.clone(),
                    networks: &client.networks,
                    sha256,
                    reader_sha256: sha256_hex(&reader_password),
                    limits: cfg.limits_of(name)?,
                });
                clients.push(Granted {
                    client: name.clone(),
                    user: names.client,
                    views: views.clone(),
                    generated_password: generated,
                });
            }
            let text = users_file(main, &users);
            let users_file = match path {
                Some(path) => {
                    write_private(&path, &text)?;
                    Ok(path)
                }
                None => Err(text),
            };
            Ok(Outcome {
                access,
                clients,
                users_file: Some(users_file),
            })
        }
    }
}

/// The reader password the client's URL tables use now, if the users file
/// still holds its hash: kept, so the tables of a run that changes nothing
/// keep working while the server reloads the file.
async fn kept_reader_password(
    db: &Client,
    names: &Names,
    views: &[String],
    previous: &str,
) -> Result<Option<String>, GrantsError> {
    let Some(hash) = hash_in_file(previous, &names.reader) else {
        return Ok(None);
    };
    let Some(view) = views.first() else {
        return Ok(None);
    };
    let definitions: Vec<String> = db
        .query("SELECT create_table_query FROM system.tables WHERE database = ? AND name = ?")
        .bind(&names.hidden)
        .bind(view)
        .fetch_all()
        .await?;
    Ok(definitions
        .iter()
        .filter_map(|d| password_in_url(d))
        .find(|p| sha256_hex(p) == hash)
        .map(str::to_owned))
}

/// Writes `text` to `path` readable by its owner and group only (0640: the
/// server may run as another user of the file's group), through a
/// temporary file the server ignores (its name does not end in `.xml`), so
/// it never reads half a file.
fn write_private(path: &Path, text: &str) -> Result<(), GrantsError> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let error = |source| GrantsError::UsersFile {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("xml.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&tmp)
        .map_err(error)?;
    // The mode given at creation is reduced by the umask; set it exactly.
    file.set_permissions(std::fs::Permissions::from_mode(0o640))
        .map_err(error)?;
    file.write_all(text.as_bytes()).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_server_version_picks_the_path() {
        assert_eq!(access_for("18.16.1").unwrap(), Access::UsersFile);
        assert_eq!(access_for("24.1.8.22").unwrap(), Access::UsersFile);
        assert_eq!(access_for("24.2.1.2248").unwrap(), Access::Sql);
        assert_eq!(access_for("25.8.2.29\n").unwrap(), Access::Sql);
        assert!(matches!(access_for("Ok."), Err(GrantsError::Version(_))));
    }

    /// The statements of the SQL path for client `acme` of `wafunnel`
    /// (views `capi_daily` and `funnel_daily`, a stale `old`, an account id
    /// with a quote): a new user, then an existing one given a password.
    /// `tests/chdb/test_grants_sql.py` runs the same file on current ClickHouse.
    #[test]
    fn sql_statements_golden() {
        let names = Names::new("wafunnel", "acme");
        let views = strings(&["capi_daily", "funnel_daily"]);
        let accounts = strings(&["act_1001", "act_'2"]);
        let networks = strings(&["::/0", "10.0.0.0/8"]);
        let hash = SaltedHash::with_salt("pw", "00112233445566778899aabbccddeeff");
        let mut all =
            sql_view_statements("wafunnel", &names, &views, &strings(&["old"]), &accounts);
        all.extend(sql_user_statements(&names, &networks, Some(&hash), false));
        all.extend(sql_user_statements(&names, &networks, Some(&hash), true));
        let golden = include_str!("../../../tests/chdb/grants_statements.sql");
        assert_eq!(all, golden.lines().collect::<Vec<_>>());
        let kept = sql_user_statements(&names, &networks, None, true);
        assert_eq!(kept, all[all.len() - 2..]);
    }

    #[test]
    fn salted_hashes_are_sha256_of_the_password_then_the_salt() {
        // printf 'pw0011' | sha256sum
        assert_eq!(
            SaltedHash::with_salt("pw", "0011").hash,
            sha256_hex("pw0011")
        );
        let (a, b) = (SaltedHash::new("pw"), SaltedHash::new("pw"));
        assert_ne!(a.salt, b.salt, "a new salt each time");
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.salt.len(), 32);
    }

    #[test]
    fn users_file_statements_golden() {
        let names = Names::new("wafunnel", "acme");
        assert_eq!(
            users_file_statements(
                "wafunnel",
                &names,
                &strings(&["funnel_daily"]),
                &strings(&["old"]),
                &strings(&["act_1001"]),
                "http://127.0.0.1:8123/",
                "0a1b",
            ),
            [
                "CREATE DATABASE IF NOT EXISTS `wafunnel_filtered_acme`",
                "CREATE DATABASE IF NOT EXISTS `wafunnel_hidden_acme`",
                "CREATE DATABASE IF NOT EXISTS `wafunnel_client_acme`",
                "DROP TABLE IF EXISTS `wafunnel_client_acme`.`funnel_daily`",
                "DROP TABLE IF EXISTS `wafunnel_hidden_acme`.`funnel_daily`",
                "DROP TABLE IF EXISTS `wafunnel_filtered_acme`.`funnel_daily`",
                "CREATE VIEW `wafunnel_filtered_acme`.`funnel_daily` AS SELECT * FROM `wafunnel`.`funnel_daily` WHERE account_id IN ('act_1001')",
                "CREATE TABLE `wafunnel_hidden_acme`.`funnel_daily` AS `wafunnel_filtered_acme`.`funnel_daily` ENGINE = URL('http://127.0.0.1:8123/?user=wafunnel_reader_acme&password=0a1b&query=SELECT%20%2A%20FROM%20%60wafunnel%5Ffiltered%5Facme%60%2E%60funnel%5Fdaily%60%20FORMAT%20Native', Native)",
                "CREATE MATERIALIZED VIEW `wafunnel_client_acme`.`funnel_daily` TO `wafunnel_hidden_acme`.`funnel_daily` AS SELECT * FROM `wafunnel`.`funnel_daily`",
                "DROP TABLE IF EXISTS `wafunnel_client_acme`.`old`",
                "DROP TABLE IF EXISTS `wafunnel_hidden_acme`.`old`",
                "DROP TABLE IF EXISTS `wafunnel_filtered_acme`.`old`",
            ]
        );
    }

    #[test]
    fn the_reader_password_is_found_in_a_tables_definition() {
        let names = Names::new("wafunnel", "acme");
        let statements = users_file_statements(
            "wafunnel",
            &names,
            &strings(&["funnel_daily"]),
            &[],
            &strings(&["act_1001"]),
            "http://127.0.0.1:8123",
            "0a1b",
        );
        let create = &statements[statements.len() - 2];
        assert_eq!(password_in_url(create), Some("0a1b"));
        assert_eq!(password_in_url("CREATE VIEW x AS SELECT 1"), None);
    }

    #[test]
    fn the_users_file_keeps_each_users_hash_and_confines_each_user() {
        let networks = strings(&["::/0"]);
        let users: Vec<FileUser<'_>> = ["acme", "beta"]
            .iter()
            .map(|name| FileUser {
                names: Names::new("wafunnel", name),
                networks: &networks,
                sha256: sha256_hex(name),
                reader_sha256: sha256_hex(&format!("reader {name}")),
                limits: ClientLimits::default(),
            })
            .collect();
        let text = users_file("wafunnel", &users);
        assert!(text.contains("<allow_databases>\n        <database>wafunnel_client_acme</database>\n      </allow_databases>"), "{text}");
        assert!(text.contains("<allow_databases>\n        <database>wafunnel</database>\n        <database>wafunnel_filtered_acme</database>\n      </allow_databases>"), "{text}");
        assert!(
            text.contains("<profile>wafunnel_client_acme</profile>\n      <quota>wafunnel_client_acme</quota>"),
            "{text}"
        );
        assert!(
            text.contains("<wafunnel_client_beta>\n      <profile>wafunnel_client</profile>\n      <max_execution_time>"),
            "each user's profile inherits the common one: {text}"
        );
        assert!(text.contains("<readonly>1</readonly>"), "{text}");
        assert!(text.contains("<log_queries>0</log_queries>"), "{text}");
        for (name, value) in DRIVER_SETTINGS {
            assert!(
                text.contains(&format!("<{name}>{value}</{name}>")),
                "{text}"
            );
        }
        // The readers connect from the server itself only.
        let reader = &text[text.find("<wafunnel_reader_acme>").expect("reader")..];
        let reader = &reader[..reader.find("</wafunnel_reader_acme>").expect("end")];
        assert!(
            reader.contains(
                "<networks>\n        <ip>127.0.0.1</ip>\n        <ip>::1</ip>\n      </networks>"
            ),
            "{reader}"
        );
        assert_eq!(
            hash_in_file(&text, "wafunnel_client_acme"),
            Some(sha256_hex("acme"))
        );
        assert_eq!(
            hash_in_file(&text, "wafunnel_reader_beta"),
            Some(sha256_hex("reader beta"))
        );
        assert_eq!(
            hash_in_file(&text, "wafunnel_client_beta"),
            Some(sha256_hex("beta"))
        );
        assert_eq!(hash_in_file(&text, "wafunnel_client_gamma"), None);
        assert_eq!(hash_in_file("", "wafunnel_client_acme"), None);
    }

    #[test]
    fn the_users_file_is_not_world_readable() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("wafunnel-grants-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("wafunnel_clients.xml");
        // An earlier file readable by everyone is replaced by a private one.
        std::fs::write(&path, "old").expect("old file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_private(&path, "<yandex/>").expect("write");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "<yandex/>");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn generated_passwords_differ_and_hash_like_sha256sum() {
        assert_ne!(generate_password().expose(), generate_password().expose());
        assert_eq!(generate_password().expose().len(), 36);
        assert_eq!(
            sha256_hex("pw"),
            "30c952fab122c3f9759f02a6d95c3758b246b4fee239957b2d4fee46e26170c4"
        );
    }

    #[test]
    fn names_and_self_urls_that_cannot_be_used_are_refused() {
        assert!(check_name("wafunnel_e2e_1").is_ok());
        for bad in ["", "a-b", "a.b", "1db", "a`b", "a&b", "a b"] {
            assert!(
                matches!(check_name(bad), Err(GrantsError::BadName(_))),
                "{bad}"
            );
        }
        for good in [
            "http://127.0.0.1:8123",
            "http://[::1]:8123/",
            "http://localhost:18123",
        ] {
            assert!(check_self_url(good).is_ok(), "{good}");
        }
        for bad in [
            "https://127.0.0.1:8123",
            "127.0.0.1:8123",
            "http://",
            "http://h/?a=b",
            "http://h/'",
        ] {
            assert!(
                matches!(check_self_url(bad), Err(GrantsError::BadSelfUrl(_))),
                "{bad}"
            );
        }
    }
}
