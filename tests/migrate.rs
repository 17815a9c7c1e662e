//! `pgveil migrate`: encrypting an existing plaintext database and rotating
//! keys while an application keeps working through pgveil.
//!
//! The command runs as a child process (`target/debug/pgveil`), connected
//! straight to the test cluster, exactly as a DBA would run it; the
//! application is a tokio-postgres client through an in-process pgveil. The
//! job is SIGKILLed halfway and resumed, and afterwards every row must hold
//! what was written (the fixture's value, or the application's last write),
//! as ciphertext of the active key version only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::SinkExt;
use support::{PASSWORD, PgCluster, Proxy, cluster};
use tokio::io::AsyncReadExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Bound for one query or statement.
const QUERY_SECS: u64 = 60;
/// Bound for one `pgveil migrate` run that is expected to finish.
const RUN_SECS: u64 = 150;

/// Awaits `fut`, failing the test (naming `what`) after `secs` seconds.
async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {secs} s"),
    }
}

// ---------------------------------------------------------------------------
// Keys and configuration

/// A deterministic 32-byte master key (base64), different for each seed and
/// from `support::TEST_KEY`.
fn other_key(seed: u8) -> String {
    let bytes: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(31).wrapping_add(seed).wrapping_mul(7) ^ 0x5a)
        .collect();
    let key = base64::engine::general_purpose::STANDARD.encode(bytes);
    assert_ne!(key, support::TEST_KEY);
    key
}

/// Writes `key` to a 0600 file in `dir`.
fn write_key(dir: &Path, name: &str, key: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, key).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The check value `pgveil keygen` prints for `key`.
fn check_of(key: &str) -> String {
    pgveil::crypto::MasterKey::from_base64(key, "test key")
        .unwrap()
        .check_value()
}

/// One key version in `[keys]`.
struct Version<'a> {
    version: u16,
    file: &'a Path,
    check: Option<String>,
}

fn v<'a>(version: u16, file: &'a Path, check: Option<&str>) -> Version<'a> {
    Version {
        version,
        file,
        check: check.map(str::to_owned),
    }
}

/// `[keys]`: version 1 (if present) in the top-level shorthand, the others
/// as `[[keys.versions]]`.
fn keys_toml(versions: &[Version<'_>], active: Option<u16>) -> String {
    let mut s = String::from("[keys]\n");
    if let Some(a) = active {
        s.push_str(&format!("active = {a}\n"));
    }
    for k in versions.iter().filter(|k| k.version == 1) {
        s.push_str(&format!("master_key_file = \"{}\"\n", k.file.display()));
        if let Some(c) = &k.check {
            s.push_str(&format!("check = \"{c}\"\n"));
        }
    }
    for k in versions.iter().filter(|k| k.version != 1) {
        s.push_str(&format!(
            "[[keys.versions]]\nversion = {}\nmaster_key_file = \"{}\"\n",
            k.version,
            k.file.display()
        ));
        if let Some(c) = &k.check {
            s.push_str(&format!("check = \"{c}\"\n"));
        }
    }
    s
}

/// `[[encrypt]]` entries for `columns` of `table`, each with `extra` lines.
fn encrypt_toml(table: &str, columns: &[&str], extra: &str) -> String {
    columns
        .iter()
        .map(|c| format!("[[encrypt]]\ntable = \"{table}\"\ncolumn = \"{c}\"\n{extra}"))
        .collect()
}

/// What the in-process pgveil gets after `[upstream]`: a short drain (so
/// restarts are quick), a metrics endpoint, then `body` (keys, columns).
fn proxy_extra(body: &str) -> String {
    format!("[limits]\nshutdown_timeout_ms = 500\n[metrics]\naddress = \"127.0.0.1:0\"\n{body}")
}

/// Writes a complete `proxy.toml` for `pgveil migrate` (the same keys and
/// columns as the proxy) into `dir`.
fn write_config(dir: &Path, name: &str, pg: &PgCluster, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:{}\"\n{body}",
            pg.port
        ),
    )
    .unwrap();
    path
}

// ---------------------------------------------------------------------------
// Connections

fn url(pg: &PgCluster, db: &str) -> String {
    format!(
        "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/{db}",
        pg.port
    )
}

async fn direct_db(pg: &PgCluster, db: &str) -> Client {
    support::connect(
        &pg.conn_str()
            .replace("dbname=postgres", &format!("dbname={db}")),
    )
    .await
}

fn proxy_conn(proxy: &Proxy, pg: &PgCluster, db: &str) -> String {
    proxy
        .conn_str(pg)
        .replace("dbname=postgres", &format!("dbname={db}"))
}

async fn via(proxy: &Proxy, pg: &PgCluster, db: &str) -> Client {
    support::connect(&proxy_conn(proxy, pg, db)).await
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// A simple-protocol query; panics with the SQL on error.
async fn q(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let msgs = within(QUERY_SECS, sql, c.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    rows(&msgs)
}

/// The first column of a simple-protocol query's rows.
async fn q_col(c: &Client, sql: &str) -> Vec<String> {
    q(c, sql)
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect()
}

async fn q_i64(c: &Client, sql: &str) -> i64 {
    within(QUERY_SECS, sql, c.query_one(sql, &[]))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .get(0)
}

/// A value that changes whenever any row of `table` is written, even with
/// identical contents (it includes each row's `xmin`).
async fn checksum(c: &Client, table: &str) -> String {
    let sql = format!(
        "SELECT md5(coalesce(string_agg(t.xmin::text || ':' || row(t.*)::text, ',' ORDER BY t.id), '')) \
         FROM {table} t"
    );
    within(QUERY_SECS, "checksum", c.query_one(&sql, &[]))
        .await
        .unwrap()
        .get(0)
}

/// How the values of `table.column` are stored, by a direct scan:
/// (plaintext, key version 1, key version 2, NULL).
async fn forms(c: &Client, table: &str, column: &str) -> (i64, i64, i64, i64) {
    let sql = format!(
        "SELECT count(*) FILTER (WHERE {column} NOT LIKE 'pgv:%'), \
                count(*) FILTER (WHERE {column} LIKE 'pgv:AQAB%'), \
                count(*) FILTER (WHERE {column} LIKE 'pgv:AQAC%'), \
                count(*) FILTER (WHERE {column} IS NULL) FROM {table}"
    );
    let r = within(QUERY_SECS, "forms", c.query_one(&sql, &[]))
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// Sum of a metric family's series on pgveil's metrics endpoint.
async fn metric_sum(port: u16, family: &str) -> f64 {
    let text = support::metrics_text(port).await;
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) || l.starts_with(&format!("{family} ")))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

// ---------------------------------------------------------------------------
// The `pgveil migrate` command

/// One finished (or killed) run of `pgveil migrate`.
struct Run {
    what: String,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Everything it printed.
    fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    fn show(&self) -> String {
        format!(
            "`{}` exited {:?} after {:.1} s\n--- stdout\n{}--- stderr\n{}",
            self.what,
            self.code,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }

    /// The rows/s figure of the last line that reports one.
    fn rows_per_second(&self) -> Option<(f64, String)> {
        let line = self
            .text()
            .lines()
            .rev()
            .find(|l| l.contains("rows/s"))?
            .to_string();
        let before = &line[..line.find("rows/s")?];
        let number: String = before
            .trim_end()
            .rsplit(|c: char| c.is_whitespace() || c == '(')
            .next()?
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        Some((number.parse().ok()?, line.trim().to_string()))
    }
}

/// Where to find the database: as `--url`, or in `PGVEIL_MIGRATE_URL`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UrlVia {
    Flag,
    Env,
}

fn migrate_command(
    config: &Path,
    args: &[&str],
    url: &str,
    via: UrlVia,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgveil"));
    cmd.arg("--config").arg(config).arg("migrate").args(args);
    cmd.env_remove("PGVEIL_CONFIG")
        .env_remove("PGVEIL_MIGRATE_URL")
        .env_remove("RUST_LOG");
    match via {
        UrlVia::Flag => {
            cmd.arg("--url").arg(url);
        }
        UrlVia::Env => {
            cmd.env("PGVEIL_MIGRATE_URL", url);
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Checks what a run printed (never the password) and keeps it where the
/// log audit (`tests/log_audit.rs`) reads it.
fn record(run: &Run) {
    let dir = support::test_log_dir();
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("migrate-child-{}.log", std::process::id())))
    {
        use std::io::Write;
        let _ = write!(f, "{}{}", run.stdout, run.stderr);
    }
    assert!(
        !run.text().contains(PASSWORD),
        "`{}` printed the database password",
        run.what
    );
    assert!(
        !run.text().contains(support::TEST_KEY),
        "`{}` printed the master key",
        run.what
    );
}

/// Runs `pgveil --config CONFIG migrate ARGS` to its end (bounded).
async fn migrate(config: &Path, args: &[&str], url: &str) -> Run {
    migrate_via(config, args, url, UrlVia::Flag).await
}

async fn migrate_via(config: &Path, args: &[&str], url: &str, via: UrlVia) -> Run {
    let what = format!("pgveil migrate {}", args.join(" "));
    let started = Instant::now();
    let child = migrate_command(config, args, url, via)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    // On timeout the child is dropped, which kills it (kill_on_drop).
    let out = within(RUN_SECS, &what, child.wait_with_output())
        .await
        .unwrap();
    let run = Run {
        what,
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    };
    record(&run);
    run
}

/// Starts `pgveil migrate ARGS`, waits until `progressed` says the job has
/// written something, lets it run `extra` longer, then SIGKILLs it.
async fn migrate_killed<F, Fut>(
    config: &Path,
    args: &[&str],
    url: &str,
    extra: Duration,
    mut progressed: F,
) -> Run
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let what = format!("pgveil migrate {} (killed)", args.join(" "));
    let started = Instant::now();
    let mut child = migrate_command(config, args, url, UrlVia::Flag)
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_task = tokio::spawn(async move {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s).await;
        String::from_utf8_lossy(&s).into_owned()
    });
    let err_task = tokio::spawn(async move {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s).await;
        String::from_utf8_lossy(&s).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut finished = None;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            finished = Some(status);
            break;
        }
        if progressed().await {
            break;
        }
        assert!(Instant::now() < deadline, "{what}: no progress within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if finished.is_none() {
        tokio::time::sleep(extra).await;
        finished = child.try_wait().unwrap();
        // SIGKILL: no chance to clean up, as after a crash or an OOM kill.
        child.start_kill().unwrap();
    }
    let status = within(30, &what, child.wait()).await.unwrap();
    let run = Run {
        what: what.clone(),
        code: status.code(),
        stdout: within(30, &what, out_task).await.unwrap(),
        stderr: within(30, &what, err_task).await.unwrap(),
        elapsed: started.elapsed(),
    };
    record(&run);
    assert!(
        finished.is_none(),
        "the job ended before it could be killed ({:?}); slow it down with --pause-ms\n{}",
        finished,
        run.show()
    );
    run
}

// ---------------------------------------------------------------------------
// The application: a client through pgveil that writes and searches

/// A table of the fixture and the value each row was created with.
#[derive(Clone, Copy)]
struct Fixture {
    table: &'static str,
    /// Encrypted columns, `email` first.
    columns: &'static [&'static str],
    /// Rows 1..=rows exist before the migration.
    rows: i64,
    value: fn(&str, i64) -> String,
}

/// What the application wrote while the job ran.
#[derive(Default, Debug)]
struct Writes {
    /// Last email written per existing row.
    emails: HashMap<i64, String>,
    /// Rows it inserted (with the fixture's values).
    inserted: Vec<i64>,
    searches: u64,
}

impl Fixture {
    /// What row `id`'s `column` must read as.
    fn expected(&self, w: &Writes, column: &str, id: i64) -> String {
        match (column, w.emails.get(&id)) {
            ("email", Some(e)) => e.clone(),
            _ => (self.value)(column, id),
        }
    }

    /// Every row read through `c` holds its expected values.
    async fn check_all(&self, c: &Client, w: &Writes, label: &str) {
        let sql = format!(
            "SELECT id, {} FROM {} ORDER BY id",
            self.columns.join(", "),
            self.table
        );
        let got = within(QUERY_SECS * 2, label, c.query(&sql, &[]))
            .await
            .unwrap_or_else(|e| panic!("{label}: {e:?}"));
        let mut want: Vec<i64> = (1..=self.rows).chain(w.inserted.iter().copied()).collect();
        want.sort_unstable();
        assert_eq!(got.len(), want.len(), "{label}: row count");
        let mut wrong = Vec::new();
        for (row, id) in got.iter().zip(&want) {
            let rid: i64 = row.get(0);
            assert_eq!(rid, *id, "{label}: rows lost or added");
            for (i, col) in self.columns.iter().enumerate() {
                let value: Option<String> = row.get(i + 1);
                let expected = self.expected(w, col, *id);
                if value.as_deref() != Some(expected.as_str()) && wrong.len() < 10 {
                    wrong.push(format!("id {id} {col}: {value:?}, want {expected:?}"));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "{label}: wrong values:\n{}",
            wrong.join("\n")
        );
    }

    /// Direct scan: every value of every encrypted column is stored as
    /// ciphertext of key version `version`, and no plaintext fragment shows.
    async fn check_stored(&self, direct: &Client, version: u16) {
        let prefix = match version {
            1 => "pgv:AQAB",
            2 => "pgv:AQAC",
            v => panic!("no prefix for version {v}"),
        };
        let not_cipher = self
            .columns
            .iter()
            .map(|c| format!("{c} IS NULL OR {c} NOT LIKE '{prefix}%'"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let leaked = self
            .columns
            .iter()
            .map(|c| format!("{c} LIKE '%@example.%'"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let sql = format!(
            "SELECT count(*) FILTER (WHERE {not_cipher}), count(*) FILTER (WHERE {leaked}), \
             count(*) FILTER (WHERE {}) FROM {}",
            self.columns
                .iter()
                .map(|c| format!("{c} NOT LIKE 'pgv:%'"))
                .collect::<Vec<_>>()
                .join(" OR "),
            self.table
        );
        let r = within(QUERY_SECS, "direct scan", direct.query_one(&sql, &[]))
            .await
            .unwrap();
        let (not_cipher, leaked, plaintext): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        assert_eq!(plaintext, 0, "{}: rows still hold plaintext", self.table);
        assert_eq!(leaked, 0, "{}: plaintext fragments stored", self.table);
        assert_eq!(
            not_cipher, 0,
            "{}: values not ciphertext of key version {version}",
            self.table
        );
    }
}

/// A small deterministic generator (no `rand` in the dev-dependencies).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: i64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as i64
    }
}

/// The application: until `stop`, through pgveil, inserts rows (ids from
/// `first_new_id`), changes existing rows' emails, and searches by email
/// with the extended protocol (`email = $1`) and the simple one
/// (`email = 'literal'`), checking each search finds exactly its row whether
/// or not the job has rewritten it yet.
async fn application(
    conn: String,
    fx: Fixture,
    first_new_id: i64,
    stop: Arc<AtomicBool>,
) -> Writes {
    let c = support::connect(&conn).await;
    let t = fx.table;
    let cols = fx.columns.join(", ");
    let marks = (2..=fx.columns.len() + 1)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let insert = within(
        QUERY_SECS,
        "prepare insert",
        c.prepare(&format!(
            "INSERT INTO {t} (id, {cols}) VALUES ($1, {marks})"
        )),
    )
    .await
    .unwrap();
    let update = within(
        QUERY_SECS,
        "prepare update",
        c.prepare(&format!("UPDATE {t} SET email = $1 WHERE id = $2")),
    )
    .await
    .unwrap();
    let search = within(
        QUERY_SECS,
        "prepare search",
        c.prepare(&format!("SELECT id, email FROM {t} WHERE email = $1")),
    )
    .await
    .unwrap();
    let mut w = Writes::default();
    let mut rng = Lcg(first_new_id as u64);
    let mut next_id = first_new_id;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        // Insert a new row.
        let id = next_id;
        next_id += 1;
        let values: Vec<String> = fx.columns.iter().map(|col| (fx.value)(col, id)).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&id];
        params.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
        let n = within(QUERY_SECS, "insert", c.execute(&insert, &params))
            .await
            .unwrap_or_else(|e| panic!("insert through pgveil: {e:?}"));
        assert_eq!(n, 1);
        w.inserted.push(id);

        // Change an existing row's email (it may or may not be rewritten yet).
        let target = 1 + rng.below(fx.rows);
        let email = format!("changed{round}-{target}@example.com");
        let n = within(QUERY_SECS, "update", c.execute(&update, &[&email, &target]))
            .await
            .unwrap_or_else(|e| panic!("update through pgveil: {e:?}"));
        assert_eq!(n, 1);
        w.emails.insert(target, email);

        // Search: a random existing row (extended), the row just changed
        // (simple), and the row just inserted (extended).
        let probe = 1 + rng.below(fx.rows);
        for (id, simple) in [(probe, false), (target, true), (id, false)] {
            let expected = fx.expected(&w, "email", id);
            let found: Vec<(i64, String)> = if simple {
                let sql = format!("SELECT id, email FROM {t} WHERE email = '{expected}'");
                q(&c, &sql)
                    .await
                    .into_iter()
                    .map(|r| {
                        (
                            r[0].as_deref().unwrap().parse().unwrap(),
                            r[1].clone().unwrap(),
                        )
                    })
                    .collect()
            } else {
                within(QUERY_SECS, "search", c.query(&search, &[&expected]))
                    .await
                    .unwrap_or_else(|e| panic!("search through pgveil: {e:?}"))
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect()
            };
            assert_eq!(
                found,
                vec![(id, expected.clone())],
                "searching {t}.email (simple: {simple}) for row {id}"
            );
            w.searches += 1;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    w
}

struct App {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Writes>,
}

impl App {
    fn start(conn: String, fx: Fixture, first_new_id: i64) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(application(conn, fx, first_new_id, stop.clone()));
        App { stop, task }
    }

    async fn stop(self) -> Writes {
        self.stop.store(true, Ordering::Relaxed);
        within(QUERY_SECS, "application", self.task)
            .await
            .unwrap_or_else(|e| panic!("the application failed: {e}"))
    }
}

// ---------------------------------------------------------------------------
// 1. Encrypting 200,000 plaintext rows online

fn crm_value(column: &str, id: i64) -> String {
    match column {
        "email" => format!("user{id}@example.com"),
        "phone" => format!("+1 555 {id:07}"),
        "full_name" => format!("Customer {id}"),
        "national_id" => format!("NID-{id:09}"),
        other => panic!("no fixture value for {other}"),
    }
}

const CRM: Fixture = Fixture {
    table: "customers",
    columns: &["email", "phone", "full_name", "national_id"],
    rows: 200_000,
    value: crm_value,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypt_200k_rows_online_killed_and_resumed() {
    let pg = cluster();
    let db = "migrate_encrypt_200k";
    pg.fresh_database(db).await;
    let direct = direct_db(pg, db).await;
    let setup = format!(
        "CREATE TABLE customers (id bigserial PRIMARY KEY, email text, phone text, \
                                 full_name text, national_id text);
         INSERT INTO customers (id, email, phone, full_name, national_id)
           SELECT g, 'user' || g || '@example.com', '+1 555 ' || lpad(g::text, 7, '0'),
                  'Customer ' || g, 'NID-' || lpad(g::text, 9, '0')
           FROM generate_series(1, {}) g;
         SELECT setval('customers_id_seq', {});
         ANALYZE customers;",
        CRM.rows, CRM.rows
    );
    within(QUERY_SECS, "fixture", direct.batch_execute(&setup))
        .await
        .unwrap();
    // The fixture's SQL and `crm_value` agree.
    for id in [1i64, 42, 200_000] {
        let r = direct
            .query_one(
                "SELECT email, phone, full_name, national_id FROM customers WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        for (i, col) in CRM.columns.iter().enumerate() {
            assert_eq!(r.get::<_, String>(i), crm_value(col, id));
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let key = support::key_file();
    let check = check_of(support::TEST_KEY);
    let keys = keys_toml(&[v(1, &key, Some(&check))], None);
    let migrating = format!(
        "{keys}{}",
        encrypt_toml("customers", CRM.columns, "migrating = true\n")
    );
    let config = write_config(dir.path(), "proxy.toml", pg, &migrating);
    let url = url(pg, db);

    let proxy = Proxy::start(pg, &proxy_extra(&migrating)).await;
    let mport = proxy.metrics_port.unwrap();
    let app = App::start(proxy_conn(&proxy, pg, db), CRM, 1_000_001);

    // First run, slowed down, SIGKILLed once it has written a few batches.
    // The application never writes `phone` of existing rows, so ciphertext
    // there is the job's.
    let rewritten = "SELECT count(*) FROM customers WHERE id <= 200000 AND phone LIKE 'pgv:%'";
    let killed = migrate_killed(
        &config,
        &["encrypt", "--batch-size", "2000", "--pause-ms", "100"],
        &url,
        Duration::from_millis(250),
        || {
            let direct = &direct;
            async move { q_i64(direct, rewritten).await >= 4000 }
        },
    )
    .await;
    println!("{}", killed.show());
    let (plain, v1, _, _) = forms(&direct, "customers", "phone").await;
    assert!(
        v1 > 0 && plain > 0,
        "after the kill: {plain} plaintext, {v1} ciphertext phones"
    );
    println!("after SIGKILL: {v1} rows rewritten, {plain} still plaintext");
    // Mixed state: unfinished work is visible to verify.
    let run = migrate(&config, &["verify"], &url).await;
    assert!(
        !run.ok(),
        "verify passed with plaintext left\n{}",
        run.show()
    );
    assert!(run.text().contains("customers"), "{}", run.show());
    // A plaintext row reads through pgveil (and is counted).
    let before = metric_sum(mport, "pgveil_plaintext_values_read_total").await;
    let plain_id: i64 = direct
        .query_one(
            "SELECT id FROM customers WHERE phone NOT LIKE 'pgv:%' ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let c = via(&proxy, pg, db).await;
    let r = c
        .query_one(
            "SELECT phone, full_name FROM customers WHERE id = $1",
            &[&plain_id],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), crm_value("phone", plain_id));
    assert_eq!(r.get::<_, String>(1), crm_value("full_name", plain_id));
    let after = metric_sum(mport, "pgveil_plaintext_values_read_total").await;
    assert!(
        after >= before + 2.0,
        "plaintext reads not counted: {before} -> {after}"
    );

    // Resume to the end, the application still running.
    let todo = q_i64(
        &direct,
        "SELECT count(*) FROM customers WHERE email NOT LIKE 'pgv:%' OR phone NOT LIKE 'pgv:%' \
           OR full_name NOT LIKE 'pgv:%' OR national_id NOT LIKE 'pgv:%'",
    )
    .await;
    let run = migrate(&config, &["encrypt", "--batch-size", "2000"], &url).await;
    assert!(run.ok(), "{}", run.show());
    let writes = app.stop().await;
    println!(
        "application during the job: {} inserts, {} email changes, {} searches",
        writes.inserted.len(),
        writes.emails.len(),
        writes.searches
    );
    assert!(writes.searches > 0 && !writes.inserted.is_empty());
    let secs = run.elapsed.as_secs_f64();
    println!(
        "migrate encrypt (resumed run): {todo} rows x 4 columns in {secs:.1} s = {:.0} rows/s \
         measured by the test (debug build, with the application writing concurrently)",
        todo as f64 / secs
    );
    match run.rows_per_second() {
        Some((rate, line)) => println!("migrate encrypt reported {rate:.0} rows/s: {line}"),
        None => panic!("no rows/s figure in the output\n{}", run.show()),
    }
    assert!(
        run.stderr.contains("ETA") || killed.stderr.contains("ETA"),
        "no progress with an ETA on stderr\n{}\n{}",
        killed.show(),
        run.show()
    );

    // Done: verify passes, nothing but version-1 ciphertext is stored.
    let run = migrate(&config, &["verify"], &url).await;
    assert!(run.ok(), "{}", run.show());
    CRM.check_stored(&direct, 1).await;
    // A second encrypt finds nothing to do and writes nothing.
    let sum = checksum(&direct, "customers").await;
    let run = migrate(&config, &["encrypt"], &url).await;
    assert!(run.ok(), "{}", run.show());
    assert_eq!(
        checksum(&direct, "customers").await,
        sum,
        "a finished job rewrote rows"
    );

    // Every row reads back: still migrating, then without `migrating`.
    CRM.check_all(&c, &writes, "through pgveil, migrating")
        .await;
    drop(c);
    proxy.stop().await;
    let done = format!("{keys}{}", encrypt_toml("customers", CRM.columns, ""));
    let proxy = Proxy::start(pg, &proxy_extra(&done)).await;
    let c = via(&proxy, pg, db).await;
    CRM.check_all(&c, &writes, "through pgveil, migration finished")
        .await;
    let changed = writes.emails.iter().next().unwrap();
    let found = q_col(
        &c,
        &format!("SELECT id FROM customers WHERE email = '{}'", changed.1),
    )
    .await;
    assert_eq!(found, vec![changed.0.to_string()]);
    let r = c
        .query(
            "SELECT id FROM customers WHERE email = $1",
            &[&crm_value("email", 199_999)],
        )
        .await
        .unwrap();
    let expected_rows = usize::from(!writes.emails.contains_key(&199_999));
    assert_eq!(r.len(), expected_rows);
    drop(c);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// 2. Rotating to a new key version online

fn contact_value(column: &str, id: i64) -> String {
    match column {
        "email" => format!("person{id}@example.net"),
        "phone" => format!("+33 1 {id:08}"),
        other => panic!("no fixture value for {other}"),
    }
}

const CONTACTS: Fixture = Fixture {
    table: "contacts",
    columns: &["email", "phone"],
    rows: 20_000,
    value: contact_value,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_to_a_new_key_version_online() {
    let pg = cluster();
    let db = "migrate_rotate";
    pg.fresh_database(db).await;
    let direct = direct_db(pg, db).await;
    direct
        .batch_execute("CREATE TABLE contacts (id bigint PRIMARY KEY, email text, phone text)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key1 = support::key_file();
    let check1 = check_of(support::TEST_KEY);
    let key2_text = other_key(2);
    let key2 = write_key(dir.path(), "v2.key", &key2_text);
    let check2 = check_of(&key2_text);
    assert_ne!(check1, check2);
    let columns = encrypt_toml("contacts", CONTACTS.columns, "");

    // Written through pgveil with version 1 only (COPY: quick).
    let only_v1 = format!(
        "{}{columns}",
        keys_toml(&[v(1, &key1, Some(&check1))], None)
    );
    let proxy = Proxy::start(pg, &proxy_extra(&only_v1)).await;
    let c = via(&proxy, pg, db).await;
    let sink = within(
        QUERY_SECS,
        "copy",
        c.copy_in("COPY contacts (id, email, phone) FROM STDIN"),
    )
    .await
    .unwrap();
    futures_util::pin_mut!(sink);
    let data: String = (1..=CONTACTS.rows)
        .map(|id| {
            format!(
                "{id}\t{}\t{}\n",
                contact_value("email", id),
                contact_value("phone", id)
            )
        })
        .collect();
    within(QUERY_SECS, "copy", sink.send(Bytes::from(data)))
        .await
        .unwrap();
    let n = within(QUERY_SECS, "copy", sink.finish()).await.unwrap();
    assert_eq!(n, CONTACTS.rows as u64);
    drop(c);
    proxy.stop().await;
    CONTACTS.check_stored(&direct, 1).await;

    // Versions 1 and 2, writing with 2.
    let both = format!(
        "{}{columns}",
        keys_toml(
            &[v(1, &key1, Some(&check1)), v(2, &key2, Some(&check2))],
            Some(2)
        )
    );
    let config = write_config(dir.path(), "both.toml", pg, &both);
    let url = url(pg, db);
    let proxy = Proxy::start(pg, &proxy_extra(&both)).await;
    let c = via(&proxy, pg, db).await;
    // New rows are written with version 2, by both protocols.
    let (new1, new2) = (500_001i64, 500_002i64);
    q(
        &c,
        &format!(
            "INSERT INTO contacts (id, email, phone) VALUES ({new1}, '{}', '{}')",
            contact_value("email", new1),
            contact_value("phone", new1)
        ),
    )
    .await;
    c.execute(
        "INSERT INTO contacts (id, email, phone) VALUES ($1, $2, $3)",
        &[
            &new2,
            &contact_value("email", new2),
            &contact_value("phone", new2),
        ],
    )
    .await
    .unwrap();
    let stored: Vec<String> = q_col(
        &direct,
        &format!("SELECT email FROM contacts WHERE id IN ({new1}, {new2}) ORDER BY id"),
    )
    .await;
    assert!(
        stored.iter().all(|s| s.starts_with("pgv:AQAC")),
        "not written with version 2: {stored:?}"
    );
    // Searches find rows of both versions.
    let old = 7i64;
    let (e_old, e_new1, e_new2) = (
        contact_value("email", old),
        contact_value("email", new1),
        contact_value("email", new2),
    );
    for (id, email) in [(old, &e_old), (new1, &e_new1), (new2, &e_new2)] {
        let simple = q_col(
            &c,
            &format!("SELECT id FROM contacts WHERE email = '{email}'"),
        )
        .await;
        assert_eq!(simple, vec![id.to_string()], "simple search for {email}");
        let ext = c
            .query("SELECT id, phone FROM contacts WHERE email = $1", &[email])
            .await
            .unwrap();
        assert_eq!(ext.len(), 1, "extended search for {email}");
        assert_eq!(ext[0].get::<_, i64>(0), id);
        assert_eq!(ext[0].get::<_, String>(1), contact_value("phone", id));
    }
    let listed = q_col(
        &c,
        &format!("SELECT id FROM contacts WHERE email IN ('{e_old}', '{e_new1}') ORDER BY id"),
    )
    .await;
    assert_eq!(listed, vec![old.to_string(), new1.to_string()]);
    let any: Vec<i64> = c
        .query(
            "SELECT id FROM contacts WHERE email = ANY($1) ORDER BY id",
            &[&vec![
                e_old.clone(),
                e_new2.clone(),
                "nobody@example.net".to_string(),
            ]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(any, vec![old, new2]);
    let in_params: Vec<i64> = c
        .query(
            "SELECT id FROM contacts WHERE email IN ($1, $2) ORDER BY id",
            &[&e_old, &e_new1],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(in_params, vec![old, new1]);
    let others = q_i64(
        &c,
        &format!("SELECT count(*) FROM contacts WHERE email <> '{e_old}'"),
    )
    .await;
    assert_eq!(others, CONTACTS.rows + 1);
    drop(c);

    // Before the rotation, verify names what is left on version 1.
    let run = migrate_via(&config, &["verify"], &url, UrlVia::Env).await;
    assert!(
        !run.ok(),
        "verify passed with version-1 rows left\n{}",
        run.show()
    );
    assert!(run.text().contains("contacts"), "{}", run.show());

    // Rotate while the application works; killed once, then resumed.
    let app = App::start(proxy_conn(&proxy, pg, db), CONTACTS, 600_001);
    let rotated = "SELECT count(*) FROM contacts WHERE id <= 20000 AND phone LIKE 'pgv:AQAC%'";
    let killed = migrate_killed(
        &config,
        &["rotate", "--batch-size", "1000", "--pause-ms", "100"],
        &url,
        Duration::from_millis(150),
        || {
            let direct = &direct;
            async move { q_i64(direct, rotated).await >= 1000 }
        },
    )
    .await;
    println!("{}", killed.show());
    let (_, v1, v2, _) = forms(&direct, "contacts", "phone").await;
    assert!(v1 > 0 && v2 > 0, "after the kill: {v1} v1, {v2} v2 phones");
    let run = migrate_via(
        &config,
        &["rotate", "--batch-size", "1000"],
        &url,
        UrlVia::Env,
    )
    .await;
    assert!(run.ok(), "{}", run.show());
    println!("{}", run.show());
    let mut writes = app.stop().await;
    writes.inserted.extend([new1, new2]);
    println!(
        "application during the rotation: {} inserts, {} email changes, {} searches",
        writes.inserted.len(),
        writes.emails.len(),
        writes.searches
    );
    let run = migrate_via(&config, &["verify"], &url, UrlVia::Env).await;
    assert!(run.ok(), "{}", run.show());
    CONTACTS.check_stored(&direct, 2).await;
    let c = via(&proxy, pg, db).await;
    CONTACTS
        .check_all(&c, &writes, "through pgveil, versions 1 and 2")
        .await;
    drop(c);
    proxy.stop().await;

    // Version 1 removed: only version 2, as a [[keys.versions]] entry (the
    // top-level key is always version 1).
    let only_v2 = format!(
        "{}{columns}",
        keys_toml(&[v(2, &key2, Some(&check2))], Some(2))
    );
    let proxy = Proxy::start(pg, &proxy_extra(&only_v2)).await;
    let c = via(&proxy, pg, db).await;
    CONTACTS
        .check_all(&c, &writes, "through pgveil, version 2 only")
        .await;
    let found: Vec<i64> = c
        .query("SELECT id FROM contacts WHERE email = $1", &[&e_old])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(found, vec![old]);
    // Without several stored forms, other comparisons are back to normal
    // rules: `'x' = email` is fine again.
    let found = q_col(
        &c,
        &format!("SELECT id FROM contacts WHERE '{e_new1}' = email"),
    )
    .await;
    assert_eq!(found, vec![new1.to_string()]);
    drop(c);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// 3. A wrong master key is refused before any write

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_refused_before_any_write() {
    let pg = cluster();
    let db = "migrate_wrong_key";
    pg.fresh_database(db).await;
    let direct = direct_db(pg, db).await;
    direct
        .batch_execute(
            "CREATE TABLE people (id int PRIMARY KEY, email text);
             INSERT INTO people SELECT g, 'plain' || g || '@example.org' FROM generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_a = support::key_file();
    let check_a = check_of(support::TEST_KEY);
    let (b_text, c_text) = (other_key(11), other_key(12));
    let key_b = write_key(dir.path(), "b.key", &b_text);
    let key_c = write_key(dir.path(), "c.key", &c_text);
    let (check_b, check_c) = (check_of(&b_text), check_of(&c_text));
    let migrating = encrypt_toml("people", &["email"], "migrating = true\n");

    // Ciphertext under key A, written through pgveil, next to plaintext rows.
    let good = format!(
        "{}{migrating}",
        keys_toml(&[v(1, &key_a, Some(&check_a))], None)
    );
    let proxy = Proxy::start(pg, &proxy_extra(&good)).await;
    let c = via(&proxy, pg, db).await;
    for id in 51..=100 {
        q(
            &c,
            &format!("INSERT INTO people VALUES ({id}, 'cipher{id}@example.org')"),
        )
        .await;
    }
    drop(c);
    proxy.stop().await;
    let (plain, v1, _, _) = forms(&direct, "people", "email").await;
    assert_eq!((plain, v1), (50, 50));
    let url = url(pg, db);
    let sum = checksum(&direct, "people").await;

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "encrypt with key B, no check value",
            format!("{}{migrating}", keys_toml(&[v(1, &key_b, None)], None)),
            "encrypt",
        ),
        (
            "rotate from key B (no check value) to key C",
            format!(
                "{}{migrating}",
                keys_toml(&[v(1, &key_b, None), v(2, &key_c, None)], Some(2))
            ),
            "rotate",
        ),
        (
            "encrypt with key A but key B's check value",
            format!(
                "{}{migrating}",
                keys_toml(&[v(1, &key_a, Some(&check_b))], None)
            ),
            "encrypt",
        ),
        (
            "rotate to key C with key B's check value",
            format!(
                "{}{migrating}",
                keys_toml(
                    &[v(1, &key_a, Some(&check_a)), v(2, &key_c, Some(&check_b))],
                    Some(2)
                )
            ),
            "rotate",
        ),
        (
            "rotate to key C (no check value) from key B with key A's check value",
            format!(
                "{}{migrating}",
                keys_toml(&[v(1, &key_b, Some(&check_a)), v(2, &key_c, None)], Some(2))
            ),
            "rotate",
        ),
    ];
    for (i, (label, body, mode)) in cases.iter().enumerate() {
        let config = write_config(dir.path(), &format!("wrong{i}.toml"), pg, body);
        let run = migrate(&config, &[mode, "--batch-size", "10"], &url).await;
        assert!(!run.ok(), "{label}: accepted\n{}", run.show());
        assert!(
            run.text().to_lowercase().contains("key"),
            "{label}: the error does not mention the key\n{}",
            run.show()
        );
        assert_eq!(
            checksum(&direct, "people").await,
            sum,
            "{label}: rows were written\n{}",
            run.show()
        );
        println!("{label}: refused: {}", run.stderr.trim());
    }

    // With the right keys the same rotation goes through: A to C, plaintext
    // included (the column is still migrating).
    let right = format!(
        "{}{migrating}",
        keys_toml(
            &[v(1, &key_a, Some(&check_a)), v(2, &key_c, Some(&check_c))],
            Some(2)
        )
    );
    let config = write_config(dir.path(), "right.toml", pg, &right);
    let run = migrate(&config, &["rotate", "--table", "people"], &url).await;
    assert!(run.ok(), "{}", run.show());
    let run = migrate(&config, &["verify", "--table", "people"], &url).await;
    assert!(run.ok(), "{}", run.show());
    assert_eq!(forms(&direct, "people", "email").await, (0, 0, 100, 0));
    let proxy = Proxy::start(pg, &proxy_extra(&right)).await;
    let c = via(&proxy, pg, db).await;
    let all = q(&c, "SELECT id, email FROM people ORDER BY id").await;
    assert_eq!(all.len(), 100);
    for r in &all {
        let id: i64 = r[0].as_deref().unwrap().parse().unwrap();
        let want = if id <= 50 {
            format!("plain{id}@example.org")
        } else {
            format!("cipher{id}@example.org")
        };
        assert_eq!(r[1].as_deref(), Some(want.as_str()));
    }
    drop(c);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// 4. --dry-run, and the plan for a column that must change type

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_type_change_plan() {
    let pg = cluster();
    let db = "migrate_dry_run";
    pg.fresh_database(db).await;
    let direct = direct_db(pg, db).await;
    direct
        .batch_execute(
            "CREATE TABLE patients (id int PRIMARY KEY, email text, birth_date date);
             INSERT INTO patients SELECT g, 'patient' || g || '@example.org', DATE '1950-01-01' + g
               FROM generate_series(1, 1234) g;
             INSERT INTO patients VALUES (2000, NULL, NULL);",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = support::key_file();
    let keys = keys_toml(&[v(1, &key, Some(&check_of(support::TEST_KEY)))], None);
    let url = url(pg, db);
    let sum = checksum(&direct, "patients").await;

    // Dry run: counts, no write.
    let email_only = format!(
        "{keys}{}",
        encrypt_toml("patients", &["email"], "migrating = true\n")
    );
    let config = write_config(dir.path(), "email.toml", pg, &email_only);
    // (Its exit status is not asserted: the interface leaves open whether
    // "work left" is a failure for a dry run, as it is for verify.)
    let run = migrate(&config, &["encrypt", "--dry-run"], &url).await;
    println!("{}", run.show());
    assert!(
        run.text().contains("1234"),
        "no count of rows to encrypt\n{}",
        run.show()
    );
    assert_eq!(checksum(&direct, "patients").await, sum, "--dry-run wrote");
    let run = migrate(
        &config,
        &["rotate", "--dry-run", "--batch-size", "100"],
        &url,
    )
    .await;
    assert!(
        run.text().contains("1234"),
        "no count of rows to rotate\n{}",
        run.show()
    );
    assert_eq!(
        checksum(&direct, "patients").await,
        sum,
        "rotate --dry-run wrote"
    );
    // A text column holding plaintext but not marked `migrating`: refused
    // (pgveil would not read the plaintext rows meanwhile).
    let not_migrating = format!("{keys}{}", encrypt_toml("patients", &["email"], ""));
    let config2 = write_config(dir.path(), "not-migrating.toml", pg, &not_migrating);
    let run = migrate(&config2, &["encrypt"], &url).await;
    assert!(!run.ok(), "{}", run.show());
    assert!(run.text().contains("migrating"), "{}", run.show());
    assert_eq!(
        checksum(&direct, "patients").await,
        sum,
        "encrypt without migrating wrote"
    );
    // verify counts the plaintext rows too.
    let run = migrate(&config, &["verify"], &url).await;
    assert!(!run.ok(), "{}", run.show());
    assert!(
        run.text().contains("1234"),
        "no plaintext count\n{}",
        run.show()
    );

    // No check value and no ciphertext yet to prove the key against: a
    // wrong key would go unnoticed, so encrypting is refused.
    let unchecked = format!(
        "{}{}",
        keys_toml(&[v(1, &key, None)], None),
        encrypt_toml("patients", &["email"], "migrating = true\n")
    );
    let config3 = write_config(dir.path(), "unchecked.toml", pg, &unchecked);
    let run = migrate(&config3, &["encrypt"], &url).await;
    assert!(!run.ok(), "{}", run.show());
    assert!(run.text().contains("check"), "{}", run.show());
    assert_eq!(
        checksum(&direct, "patients").await,
        sum,
        "an unchecked key wrote"
    );

    // A date column holding plaintext dates: a plan, not a conversion.
    let date = encrypt_toml("patients", &["birth_date"], "type = \"date\"\n");
    for (name, body) in [
        ("date.toml", format!("{keys}{date}")),
        (
            "both.toml",
            format!(
                "{keys}{}{date}",
                encrypt_toml("patients", &["email"], "migrating = true\n")
            ),
        ),
    ] {
        let config = write_config(dir.path(), name, pg, &body);
        for args in [&["encrypt"][..], &["encrypt", "--dry-run"][..]] {
            let run = migrate(&config, args, &url).await;
            println!("{name}: {}", run.show());
            assert!(
                !run.ok(),
                "{name}: a date column converted in place?\n{}",
                run.show()
            );
            let text = run.text();
            assert!(
                text.contains("ADD COLUMN") && text.contains("bytea"),
                "{name}: no type-change plan\n{}",
                run.show()
            );
            assert_eq!(
                checksum(&direct, "patients").await,
                sum,
                "{name}: rows changed although a column needs a type change first\n{}",
                run.show()
            );
        }
    }
    let columns: Vec<String> = q_col(
        &direct,
        "SELECT column_name FROM information_schema.columns \
         WHERE table_name = 'patients' ORDER BY ordinal_position",
    )
    .await;
    assert_eq!(
        columns,
        vec!["id", "email", "birth_date"],
        "the schema was altered"
    );
}

// ---------------------------------------------------------------------------
// 5. While a column holds two forms, only comparisons that match both pass

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comparisons_that_cannot_match_every_form_are_refused() {
    let pg = cluster();
    let db = "migrate_refusals";
    pg.fresh_database(db).await;
    let direct = direct_db(pg, db).await;
    direct
        .batch_execute(
            "CREATE TABLE leads (id int PRIMARY KEY, email text);
             INSERT INTO leads VALUES (1, 'plain@example.org');",
        )
        .await
        .unwrap();
    let key = support::key_file();
    let body = format!(
        "{}{}",
        keys_toml(&[v(1, &key, Some(&check_of(support::TEST_KEY)))], None),
        encrypt_toml("leads", &["email"], "migrating = true\n")
    );
    let proxy = Proxy::start(pg, &proxy_extra(&body)).await;
    let mport = proxy.metrics_port.unwrap();
    let c = via(&proxy, pg, db).await;
    q(&c, "INSERT INTO leads VALUES (2, 'enc@example.org')").await;
    c.execute(
        "INSERT INTO leads VALUES ($1, $2)",
        &[&3i32, &"enc3@example.org"],
    )
    .await
    .unwrap();
    let stored = q_col(&direct, "SELECT email FROM leads ORDER BY id").await;
    assert_eq!(stored[0], "plain@example.org");
    assert!(stored[1].starts_with("pgv:AQAB") && stored[2].starts_with("pgv:AQAB"));

    // Reads: both forms come back as plaintext; the plaintext one is counted.
    let before = metric_sum(mport, "pgveil_plaintext_values_read_total").await;
    assert_eq!(
        q_col(&c, "SELECT email FROM leads ORDER BY id").await,
        vec!["plain@example.org", "enc@example.org", "enc3@example.org"]
    );
    let after = metric_sum(mport, "pgveil_plaintext_values_read_total").await;
    assert!(
        after >= before + 1.0,
        "plaintext read not counted: {before} -> {after}"
    );

    // Comparisons that match every form work for both kinds of rows.
    let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        q_col(&c, "SELECT id FROM leads WHERE email = 'plain@example.org'").await,
        ids(&["1"])
    );
    assert_eq!(
        q_col(&c, "SELECT id FROM leads WHERE email = 'enc@example.org'").await,
        ids(&["2"])
    );
    assert_eq!(
        q_col(
            &c,
            "SELECT id FROM leads WHERE email IN ('plain@example.org', 'enc@example.org') ORDER BY id"
        )
        .await,
        ids(&["1", "2"])
    );
    assert_eq!(
        q_col(
            &c,
            "SELECT id FROM leads WHERE email <> 'plain@example.org' ORDER BY id"
        )
        .await,
        ids(&["2", "3"])
    );
    assert_eq!(
        q_col(
            &c,
            "SELECT id FROM leads WHERE email = ANY(ARRAY['plain@example.org', 'enc3@example.org']) ORDER BY id"
        )
        .await,
        ids(&["1", "3"])
    );
    for (email, id) in [("plain@example.org", 1i32), ("enc3@example.org", 3)] {
        let r = c
            .query("SELECT id FROM leads WHERE email = $1", &[&email])
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "extended search for {email}");
        assert_eq!(r[0].get::<_, i32>(0), id);
    }
    let r: Vec<i32> = c
        .query(
            "SELECT id FROM leads WHERE email = ANY($1) ORDER BY id",
            &[&vec![
                "plain@example.org".to_string(),
                "enc@example.org".to_string(),
            ]],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(r, vec![1, 2]);
    assert_eq!(
        q_col(
            &c,
            "SELECT id FROM leads WHERE email NOT IN ('plain@example.org', 'enc3@example.org')"
        )
        .await,
        ids(&["2"])
    );
    // Updating by a search condition reaches the plaintext row too.
    let n = c
        .execute(
            "UPDATE leads SET email = $1 WHERE email = $2",
            &[&"plain2@example.org", &"plain@example.org"],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(q_col(&direct, "SELECT email FROM leads WHERE id = 1").await[0].starts_with("pgv:"));

    // Refused: what ciphertext never serves, and equality written so that
    // not every form can be listed.
    let refused = |sql: &'static str, mention: &'static str| {
        let c = &c;
        async move {
            let err = within(QUERY_SECS, sql, c.simple_query(sql))
                .await
                .expect_err(sql);
            let db = err
                .as_db_error()
                .unwrap_or_else(|| panic!("{sql}: {err:?}"));
            assert_eq!(db.code(), &SqlState::FEATURE_NOT_SUPPORTED, "{sql}: {db:?}");
            assert!(
                db.message().contains(mention),
                "{sql}: message does not mention {mention:?}: {}",
                db.message()
            );
        }
    };
    refused("SELECT id FROM leads WHERE email LIKE 'plain%'", "pgveil").await;
    refused(
        "SELECT id FROM leads WHERE 'enc@example.org' = email",
        "stored forms",
    )
    .await;
    refused("SELECT id FROM leads WHERE email > 'a'", "pgveil").await;
    refused(
        "SELECT id FROM leads WHERE email IN (SELECT 'enc@example.org')",
        "stored forms",
    )
    .await;
    let err = c
        .query(
            "SELECT id FROM leads WHERE $1 = email",
            &[&"enc@example.org"],
        )
        .await
        .expect_err("$1 = email");
    let dberr = err.as_db_error().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(dberr.code(), &SqlState::FEATURE_NOT_SUPPORTED);
    assert!(
        dberr.message().contains("stored forms"),
        "{}",
        dberr.message()
    );
    // The session is still usable.
    assert_eq!(
        q_col(&c, "SELECT id FROM leads WHERE email = 'enc@example.org'").await,
        ids(&["2"])
    );
    assert!(metric_sum(mport, "pgveil_refused_statements_total").await >= 1.0);
    drop(c);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------
// 6. Rotating one domain's key (same master key, a new version pinned to it)

fn citizen_value(column: &str, id: i64) -> String {
    match column {
        "email" => format!("citizen{id}@example.org"),
        "national_id" => format!("FR-{id:09}"),
        other => panic!("no fixture value for {other}"),
    }
}

const CITIZENS: Fixture = Fixture {
    table: "citizens",
    columns: &["email", "national_id"],
    rows: 3000,
    value: citizen_value,
};

/// The SQLSTATE a simple-protocol query fails with; `None` when it runs.
async fn sqlstate(c: &Client, sql: &str) -> Option<SqlState> {
    let res = within(QUERY_SECS, sql, c.simple_query(sql)).await;
    res.err()
        .map(|e| e.code().cloned().unwrap_or_else(|| panic!("{sql}: {e:?}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_one_domain_only() {
    let pg = cluster();
    let db = "migrate_rotate_domain";
    pg.fresh_database(db).await;
    let direct = direct_db(pg, db).await;
    direct
        .batch_execute(
            "CREATE TABLE citizens (id bigint PRIMARY KEY, email text, national_id text)",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = support::key_file();
    let check = check_of(support::TEST_KEY);
    // `email` in domain "email"; `national_id` in domain "nid", plus `nid`.
    let entries = |nid: &str| {
        format!(
            "{}{}",
            encrypt_toml("citizens", &["email"], "domain = \"email\"\n"),
            encrypt_toml(
                "citizens",
                &["national_id"],
                &format!("domain = \"nid\"\n{nid}")
            )
        )
    };
    let forms_of = |column: &'static str| forms(&direct, "citizens", column);

    // Written through pgveil with version 1 only (multi-row INSERTs, one
    // row per line).
    let only_v1 = format!(
        "{}{}",
        keys_toml(&[v(1, &key, Some(&check))], None),
        entries("")
    );
    let proxy = Proxy::start(pg, &proxy_extra(&only_v1)).await;
    let c = via(&proxy, pg, db).await;
    for chunk in (1..=CITIZENS.rows).collect::<Vec<_>>().chunks(1000) {
        let values: Vec<String> = chunk
            .iter()
            .map(|&id| {
                format!(
                    "({id}, '{}', '{}')",
                    citizen_value("email", id),
                    citizen_value("national_id", id)
                )
            })
            .collect();
        q(
            &c,
            &format!("INSERT INTO citizens VALUES {}", values.join(",\n")),
        )
        .await;
    }
    drop(c);
    proxy.stop().await;
    let n = CITIZENS.rows;
    assert_eq!(forms_of("email").await, (0, n, 0, 0));
    assert_eq!(forms_of("national_id").await, (0, n, 0, 0));

    // Version 2 with the same master key (same check value), `active = 1`,
    // and only the "nid" domain pinned to 2.
    let keys = keys_toml(
        &[v(1, &key, Some(&check)), v(2, &key, Some(&check))],
        Some(1),
    );
    let pinned = format!("{keys}{}", entries("key_version = 2\n"));
    let config = write_config(dir.path(), "pinned.toml", pg, &pinned);
    let url = url(pg, db);
    let proxy = Proxy::start(pg, &proxy_extra(&pinned)).await;
    let c = via(&proxy, pg, db).await;
    let (old, new1, new2) = (7i64, 900_001i64, 900_002i64);
    q(
        &c,
        &format!(
            "INSERT INTO citizens VALUES ({new1}, '{}', '{}')",
            citizen_value("email", new1),
            citizen_value("national_id", new1)
        ),
    )
    .await;
    c.execute(
        "INSERT INTO citizens VALUES ($1, $2, $3)",
        &[
            &new2,
            &citizen_value("email", new2),
            &citizen_value("national_id", new2),
        ],
    )
    .await
    .unwrap();
    let stored = q(
        &direct,
        &format!("SELECT email, national_id FROM citizens WHERE id IN ({new1}, {new2})"),
    )
    .await;
    assert_eq!(stored.len(), 2);
    for r in &stored {
        let (email, nid) = (r[0].as_deref().unwrap(), r[1].as_deref().unwrap());
        assert!(
            email.starts_with("pgv:AQAB"),
            "email not on version 1: {email}"
        );
        assert!(
            nid.starts_with("pgv:AQAC"),
            "national_id not on version 2: {nid}"
        );
    }
    // national_id searches match both versions, by both protocols.
    for id in [old, new1, new2] {
        let nid = citizen_value("national_id", id);
        let simple = q_col(
            &c,
            &format!("SELECT id FROM citizens WHERE national_id = '{nid}'"),
        )
        .await;
        assert_eq!(simple, vec![id.to_string()], "simple search for {nid}");
        let ext: Vec<(i64, String)> = c
            .query(
                "SELECT id, email FROM citizens WHERE national_id = $1",
                &[&nid],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            ext,
            vec![(id, citizen_value("email", id))],
            "extended search for {nid}"
        );
        // email keeps one stored form: a literal on the left is fine.
        let email = citizen_value("email", id);
        let found = q_col(
            &c,
            &format!("SELECT id FROM citizens WHERE '{email}' = email"),
        )
        .await;
        assert_eq!(found, vec![id.to_string()], "'{email}' = email");
    }
    // national_id holds two forms: `'x' = national_id` is refused.
    let left = format!(
        "SELECT id FROM citizens WHERE '{}' = national_id",
        citizen_value("national_id", old)
    );
    assert_eq!(
        sqlstate(&c, &left).await,
        Some(SqlState::FEATURE_NOT_SUPPORTED),
        "{left}"
    );
    drop(c);

    // Only the pinned domain has work; rotate, then verify.
    let run = migrate(&config, &["verify"], &url).await;
    assert!(
        !run.ok(),
        "verify passed with version-1 national_ids\n{}",
        run.show()
    );
    let run = migrate(&config, &["rotate", "--batch-size", "1000"], &url).await;
    assert!(run.ok(), "{}", run.show());
    let run = migrate(&config, &["verify"], &url).await;
    assert!(run.ok(), "{}", run.show());
    assert_eq!(forms_of("national_id").await, (0, 0, n + 2, 0));
    assert_eq!(forms_of("email").await, (0, n + 2, 0, 0));
    proxy.stop().await;

    // The domain's window closed: `key_versions = [2]`.
    let done = format!("{keys}{}", entries("key_version = 2\nkey_versions = [2]\n"));
    let proxy = Proxy::start(pg, &proxy_extra(&done)).await;
    let c = via(&proxy, pg, db).await;
    let writes = Writes {
        inserted: vec![new1, new2],
        ..Writes::default()
    };
    CITIZENS
        .check_all(&c, &writes, "through pgveil, national_id on version 2 only")
        .await;
    assert_eq!(sqlstate(&c, &left).await, None, "{left}");
    assert_eq!(q_col(&c, &left).await, vec![old.to_string()]);
    drop(c);
    proxy.stop().await;
}
