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
//! How depends on the server (`SELECT version()`):
//! - **ClickHouse 24.2 and later** (SQL access control): the client
//!   database holds views with `SQL SECURITY DEFINER`, which read the main
//!   view with the rights of the user running `grants`; the client's user
//!   is created with `CREATE USER` and granted `SELECT` on its database only.
//! - **Before 24.2** (users in `users.xml`, e.g. 18.16): a view runs with
//!   the rights of the user reading it, so a view in the client database
//!   that reads the main one is refused to a user allowed the client
//!   database only ("Access denied to database"). The filtered views are
//!   therefore in a second database, `<database>_filtered_<name>`, that the
//!   client may not read, and the client database holds `Distributed` tables
//!   over them through `clickhouse.clients_cluster`, a cluster of this one
//!   server whose user may read them: the server reads them over a
//!   connection of its own, with that user's rights. The client's profile
//!   sets `readonly = 1` and `prefer_localhost_replica = 0` (with 1 the
//!   server would read them in-process with the client's rights, and be
//!   refused; the client cannot change it). Users, profile and quota are a
//!   users-file fragment, `<database>_clients.xml`, that `grants` writes
//!   into the server's `users.d` directory (the server reloads it within
//!   seconds) or prints for the operator.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clickhouse::Client;
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
    /// A name that would become a database, user or XML element name is not
    /// letters, digits and `_`.
    #[error("`{0}` cannot name a ClickHouse user (check clickhouse.database: letters, digits and `_` only)")]
    BadName(String),
    /// A server before 24.2 lacks the cluster the client databases read through.
    #[error("the server has no cluster `{0}` (check clickhouse.clients_cluster; add it to the server's remote_servers, see README, Client access)")]
    NoCluster(String),
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
            | GrantsError::NoCluster(_)
            | GrantsError::Limits(_)
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
    /// Before 24.2: the database of the filtered views, which the client cannot read.
    pub filtered: String,
}

impl Names {
    /// The names of client `name`'s objects for the main database `database`.
    pub fn new(database: &str, name: &str) -> Names {
        Names {
            client: format!("{database}_client_{name}"),
            filtered: format!("{database}_filtered_{name}"),
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

/// 24.2 and later: the statements that create or update the client's user.
/// `sha256` is the hash of a new password (required when `exists` is
/// false); `None` keeps the current one.
pub fn sql_user_statements(
    names: &Names,
    networks: &[String],
    sha256: Option<&str>,
    exists: bool,
) -> Vec<String> {
    let user = ident(&names.client);
    let mut out = Vec::new();
    match (sha256, exists) {
        (Some(hash), false) => out.push(format!(
            "CREATE USER IF NOT EXISTS {user} IDENTIFIED WITH sha256_hash BY {}",
            literal(hash)
        )),
        (Some(hash), true) => out.push(format!(
            "ALTER USER {user} IDENTIFIED WITH sha256_hash BY {}",
            literal(hash)
        )),
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

/// Before 24.2: the statements that make the filtered database hold
/// `views` filtered to `accounts`, the client database `Distributed`
/// tables over them through `cluster`, and drop the objects of `stale` views.
pub fn users_file_statements(
    main: &str,
    names: &Names,
    views: &[String],
    stale: &[String],
    accounts: &[String],
    cluster: &str,
) -> Vec<String> {
    let (client, filtered) = (ident(&names.client), ident(&names.filtered));
    let mut out = vec![
        format!("CREATE DATABASE IF NOT EXISTS {filtered}"),
        format!("CREATE DATABASE IF NOT EXISTS {client}"),
    ];
    // 18.16 has no CREATE OR REPLACE: the client's table is missing for
    // the moment between its DROP and its CREATE.
    for view in views {
        let v = ident(view);
        out.push(format!("DROP TABLE IF EXISTS {client}.{v}"));
        out.push(format!("DROP TABLE IF EXISTS {filtered}.{v}"));
        out.push(format!(
            "CREATE VIEW {filtered}.{v} AS {}",
            filtered_select(main, view, accounts)
        ));
        out.push(format!(
            "CREATE TABLE {client}.{v} AS {filtered}.{v} ENGINE = Distributed({}, {}, {})",
            literal(cluster),
            literal(&names.filtered),
            literal(view)
        ));
    }
    for view in stale {
        out.push(format!("DROP TABLE IF EXISTS {client}.{}", ident(view)));
        out.push(format!("DROP TABLE IF EXISTS {filtered}.{}", ident(view)));
    }
    out
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
    /// What it may use of the server.
    pub limits: ClientLimits,
}

/// Before 24.2: the users-file fragment of the main database `main`'s
/// clients: their users, and the read-only profile and the quota they use.
pub fn users_file(main: &str, users: &[FileUser<'_>]) -> String {
    let profile = format!("{main}_client");
    let mut out = String::from("<?xml version=\"1.0\"?>\n");
    out.push_str(&format!(
        "<!-- Written by `wafunnel grants` for database {main}: edits are overwritten. -->\n"
    ));
    out.push_str("<yandex>\n  <profiles>\n");
    out.push_str(&format!("    <{profile}>\n      <readonly>1</readonly>\n"));
    out.push_str("      <prefer_localhost_replica>0</prefer_localhost_replica>\n");
    out.push_str(&format!("    </{profile}>\n"));
    // Limits hook: each user's own profile (inheriting this one) and quota.
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
    for user in users {
        let name = &user.names.client;
        out.push_str(&format!("    <{name}>\n"));
        out.push_str(&format!(
            "      <password_sha256_hex>{}</password_sha256_hex>\n",
            user.sha256
        ));
        out.push_str("      <networks>\n");
        for network in user.networks {
            out.push_str(&format!("        <ip>{network}</ip>\n"));
        }
        out.push_str("      </networks>\n");
        // Limits hook: the user's own profile and quota, named like it.
        out.push_str(&format!(
            "      <profile>{name}</profile>\n      <quota>{name}</quota>\n"
        ));
        out.push_str(&format!(
            "      <allow_databases>\n        <database>{name}</database>\n      </allow_databases>\n"
        ));
        out.push_str(&format!("    </{name}>\n"));
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
        db.query(statement).execute().await?;
    }
    Ok(())
}

/// Gives every configured client its read access. Before 24.2 the users
/// file is written into `users_dir`, or returned when it is `None`.
pub async fn run(cfg: &Config, users_dir: Option<&Path>) -> Result<Outcome, GrantsError> {
    let main = &cfg.clickhouse.database;
    check_name(main)?;
    let db = sink::client(&cfg.clickhouse);
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
                    .map(|p| sha256_hex(p.expose()));
                execute(
                    &db,
                    &sql_user_statements(&names, &client.networks, hash.as_deref(), exists > 0),
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
            let cluster = &cfg.clickhouse.clients_cluster;
            let known: u64 = db
                .query("SELECT count() FROM system.clusters WHERE cluster = ?")
                .bind(cluster)
                .fetch_one()
                .await?;
            if known == 0 {
                return Err(GrantsError::NoCluster(cluster.clone()));
            }
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
                let mut stale = stale_in(tables_in(&db, &names.client).await?);
                stale.extend(stale_in(tables_in(&db, &names.filtered).await?));
                let stale: Vec<String> = stale
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                execute(
                    &db,
                    &users_file_statements(main, &names, &views, &stale, &client.accounts, cluster),
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
                    write_atomically(&path, &text)?;
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

/// Writes `text` to `path` through a temporary file the server ignores (its
/// name does not end in `.xml`), so it never reads half a file.
fn write_atomically(path: &Path, text: &str) -> Result<(), GrantsError> {
    let error = |source| GrantsError::UsersFile {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("xml.tmp");
    std::fs::write(&tmp, text).map_err(error)?;
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
        let hash = sha256_hex("pw");
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
    fn users_file_statements_golden() {
        let names = Names::new("wafunnel", "acme");
        assert_eq!(
            users_file_statements(
                "wafunnel",
                &names,
                &strings(&["funnel_daily"]),
                &strings(&["old"]),
                &strings(&["act_1001"]),
                "wafunnel_self",
            ),
            [
                "CREATE DATABASE IF NOT EXISTS `wafunnel_filtered_acme`",
                "CREATE DATABASE IF NOT EXISTS `wafunnel_client_acme`",
                "DROP TABLE IF EXISTS `wafunnel_client_acme`.`funnel_daily`",
                "DROP TABLE IF EXISTS `wafunnel_filtered_acme`.`funnel_daily`",
                "CREATE VIEW `wafunnel_filtered_acme`.`funnel_daily` AS SELECT * FROM `wafunnel`.`funnel_daily` WHERE account_id IN ('act_1001')",
                "CREATE TABLE `wafunnel_client_acme`.`funnel_daily` AS `wafunnel_filtered_acme`.`funnel_daily` ENGINE = Distributed('wafunnel_self', 'wafunnel_filtered_acme', 'funnel_daily')",
                "DROP TABLE IF EXISTS `wafunnel_client_acme`.`old`",
                "DROP TABLE IF EXISTS `wafunnel_filtered_acme`.`old`",
            ]
        );
    }

    #[test]
    fn the_users_file_keeps_each_users_hash() {
        let networks = strings(&["::/0"]);
        let users: Vec<FileUser<'_>> = ["acme", "beta"]
            .iter()
            .map(|name| FileUser {
                names: Names::new("wafunnel", name),
                networks: &networks,
                sha256: sha256_hex(name),
                limits: ClientLimits::default(),
            })
            .collect();
        let text = users_file("wafunnel", &users);
        assert!(text.contains("<allow_databases>\n        <database>wafunnel_client_acme</database>\n      </allow_databases>"), "{text}");
        assert!(
            text.contains("<profile>wafunnel_client_acme</profile>\n      <quota>wafunnel_client_acme</quota>"),
            "{text}"
        );
        assert!(
            text.contains("<wafunnel_client_beta>\n      <profile>wafunnel_client</profile>\n      <max_execution_time>"),
            "each user's profile inherits the common one: {text}"
        );
        assert!(text.contains("<readonly>1</readonly>"), "{text}");
        assert!(
            text.contains("<prefer_localhost_replica>0</prefer_localhost_replica>"),
            "{text}"
        );
        assert!(
            !text.contains("wafunnel_filtered_"),
            "the filtered databases are not the client's: {text}"
        );
        assert_eq!(
            hash_in_file(&text, "wafunnel_client_acme"),
            Some(sha256_hex("acme"))
        );
        assert_eq!(
            hash_in_file(&text, "wafunnel_client_beta"),
            Some(sha256_hex("beta"))
        );
        assert_eq!(hash_in_file(&text, "wafunnel_client_gamma"), None);
        assert_eq!(hash_in_file("", "wafunnel_client_acme"), None);
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
    fn names_that_cannot_be_users_are_refused() {
        assert!(check_name("wafunnel_e2e_1").is_ok());
        for bad in ["", "a-b", "a.b", "1db", "a`b"] {
            assert!(
                matches!(check_name(bad), Err(GrantsError::BadName(_))),
                "{bad}"
            );
        }
    }
}
