//! The driver compatibility suite: one CRM scenario (`tests/clients/
//! scenario.json`) run through pgveil by eight real drivers. The external
//! runners (Python, Node, Java) are installed by `tests/clients/install.sh`
//! and run as child processes; tokio-postgres runs here, in all four of its
//! query styles. Each runner must report every step of every mode passed:
//! a runner that ran fewer steps fails, and a driver that cannot be
//! installed fails the suite rather than being skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::pgdate::{Days, days_text};
use support::{PgCluster, Proxy, cluster};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, SimpleQueryMessage, Statement};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scenario() -> Value {
    let text = std::fs::read_to_string(repo().join("tests/clients/scenario.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn proxy_config(s: &Value) -> String {
    let mut out = format!(
        "[limits]\nshutdown_timeout_ms = 500\n[keys]\nmaster_key_file = \"{}\"\n",
        support::key_file().display()
    );
    for e in s["encrypt"].as_array().unwrap() {
        out.push_str(&format!(
            "[[encrypt]]\ntable = \"{}\"\ncolumn = \"{}\"\ntype = \"{}\"\ndomain = \"{}\"\n",
            e["table"].as_str().unwrap(),
            e["column"].as_str().unwrap(),
            e["type"].as_str().unwrap(),
            e["domain"].as_str().unwrap()
        ));
    }
    out
}

async fn database(pg: &PgCluster, s: &Value, name: &str) {
    pg.fresh_database(name).await;
    let direct = support::connect(&db_conn(pg.port, name)).await;
    for stmt in s["schema"].as_array().unwrap() {
        direct.batch_execute(stmt.as_str().unwrap()).await.unwrap();
    }
}

fn db_conn(port: u16, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user=postgres password={} dbname={db}",
        support::PASSWORD
    )
}

/// Runs one external runner; returns (passed, failed, output).
async fn run_external(
    program: &str,
    args: &[&str],
    pg: &PgCluster,
    proxy: &Proxy,
    db: &str,
) -> (usize, usize, String) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(repo())
        .env("PGVEIL_HOST", "127.0.0.1")
        .env("PGVEIL_PORT", proxy.port.to_string())
        .env("DIRECT_PORT", pg.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", support::PASSWORD)
        .env("PGDATABASE", db)
        .env("SCENARIO", repo().join("tests/clients/scenario.json"))
        .kill_on_drop(true);
    let output = match tokio::time::timeout(Duration::from_secs(900), cmd.output()).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return (0, 0, format!("{program}: {e}")),
        Err(_) => return (0, 0, format!("{program}: timed out")),
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let (passed, failed) = summary(&text).unwrap_or((0, 0));
    (passed, failed, text)
}

/// The runner's closing line: `N passed, M failed`.
fn summary(text: &str) -> Option<(usize, usize)> {
    text.lines().rev().find_map(|l| {
        let (p, f) = l.trim().split_once(" passed, ")?;
        Some((p.parse().ok()?, f.strip_suffix(" failed")?.parse().ok()?))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_driver_runs_the_crm_scenario_through_pgveil() {
    let install = std::process::Command::new(repo().join("tests/clients/install.sh"))
        .output()
        .expect("tests/clients/install.sh runs");
    assert!(
        install.status.success(),
        "installing the drivers failed (the suite does not skip drivers):\n{}{}",
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );
    let java_out = repo().join("target/clients/java");
    let javac = std::process::Command::new("javac")
        .arg("-d")
        .arg(&java_out)
        .arg(repo().join("tests/clients/java/JdbcRunner.java"))
        .output()
        .expect("javac runs");
    assert!(
        javac.status.success(),
        "{}",
        String::from_utf8_lossy(&javac.stderr)
    );

    let s = scenario();
    let steps = s["steps"].as_array().unwrap().len();
    let pg = cluster();
    let proxy = Proxy::start(pg, &proxy_config(&s)).await;
    let python = repo().join("target/clients/venv/bin/python");
    let python = python.to_str().unwrap();
    let classpath = format!("{}:/usr/share/java/postgresql.jar", java_out.display());
    let runners: Vec<(&str, &str, Vec<&str>)> = vec![
        (
            "psycopg3",
            python,
            vec!["tests/clients/python/psycopg3_runner.py"],
        ),
        (
            "psycopg2",
            python,
            vec!["tests/clients/python/psycopg2_runner.py"],
        ),
        (
            "asyncpg",
            python,
            vec!["tests/clients/python/asyncpg_runner.py"],
        ),
        (
            "sqlalchemy",
            python,
            vec!["tests/clients/python/sqlalchemy_runner.py"],
        ),
        ("node-pg", "node", vec!["tests/clients/node/pg_runner.mjs"]),
        (
            "postgres-js",
            "node",
            vec!["tests/clients/node/postgresjs_runner.mjs"],
        ),
        ("pgjdbc", "java", vec!["-cp", &classpath, "JdbcRunner"]),
    ];
    let mut report = Vec::new();
    let mut ok = true;
    for (driver, program, args) in &runners {
        let modes = s["modes"][*driver].as_array().unwrap().len();
        let db = format!("clients_{}", driver.replace('-', "_"));
        database(pg, &s, &db).await;
        let (passed, failed, output) = run_external(program, args, pg, &proxy, &db).await;
        let expected = steps * modes;
        let good = passed == expected && failed == 0;
        ok &= good;
        report.push(format!(
            "{driver}: {passed} passed, {failed} failed (expected {expected} passed)"
        ));
        if !good {
            report.push(output);
        }
    }
    // tokio-postgres, in this process.
    let db = "clients_tokio_postgres";
    database(pg, &s, db).await;
    let modes: Vec<String> = s["modes"]["tokio-postgres"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    let mut passed = 0;
    let mut failures = Vec::new();
    for mode in &modes {
        let mut runner = TokioRunner::new(&s, mode, pg.port, proxy.port, db).await;
        for step in s["steps"].as_array().unwrap() {
            let id = step["id"].as_str().unwrap();
            match tokio::time::timeout(Duration::from_secs(120), runner.step(id)).await {
                Ok(Ok(())) => passed += 1,
                Ok(Err(e)) => failures.push(format!("FAIL {mode}/{id}: {e}")),
                Err(_) => failures.push(format!("FAIL {mode}/{id}: timed out")),
            }
        }
    }
    let expected = steps * modes.len();
    ok &= passed == expected && failures.is_empty();
    report.push(format!(
        "tokio-postgres: {passed} passed, {} failed (expected {expected} passed)",
        failures.len()
    ));
    report.extend(failures);
    println!("{}", report.join("\n"));
    proxy.stop().await;
    assert!(ok, "driver suite failed:\n{}", report.join("\n"));
}

/// A parameter, bound natively or spelled as a literal (simple protocol).
#[derive(Debug, Clone)]
enum P {
    Text(Option<String>),
    Date(Option<String>),
    TextArray(Vec<String>),
}

impl P {
    fn t(s: &str) -> P {
        P::Text(Some(s.to_string()))
    }
    fn literal(&self) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\'', "''"));
        match self {
            P::Text(None) | P::Date(None) => "NULL".into(),
            P::Text(Some(s)) => q(s),
            P::Date(Some(s)) => format!("DATE {}", q(s)),
            P::TextArray(v) => format!(
                "ARRAY[{}]",
                v.iter().map(|s| q(s)).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

type Rows = Vec<Vec<Option<String>>>;
type R<T> = Result<T, String>;

struct TokioRunner {
    mode: String,
    client: Client,
    direct_conn: String,
    statements: HashMap<String, Statement>,
    fixture: Value,
}

fn fmt_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

impl TokioRunner {
    async fn new(s: &Value, mode: &str, pg_port: u16, proxy_port: u16, db: &str) -> TokioRunner {
        TokioRunner {
            mode: mode.to_string(),
            client: support::connect(&db_conn(proxy_port, db)).await,
            direct_conn: db_conn(pg_port, db),
            statements: HashMap::new(),
            fixture: s.clone(),
        }
    }

    /// Runs one statement in this runner's mode; rows as text.
    async fn run(&mut self, sql: &str, params: &[P]) -> R<Rows> {
        if self.mode == "simple_query" {
            let mut text = sql.to_string();
            for (i, p) in params.iter().enumerate().rev() {
                text = text.replace(&format!("${}", i + 1), &p.literal());
            }
            let msgs = self.client.simple_query(&text).await.map_err(fmt_err)?;
            return Ok(msgs
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                    }
                    _ => None,
                })
                .collect());
        }
        let owned: Vec<Box<dyn ToSql + Sync + Send>> = params
            .iter()
            .map(|p| -> Box<dyn ToSql + Sync + Send> {
                match p {
                    P::Text(v) => Box::new(v.clone()),
                    P::Date(v) => Box::new(v.as_deref().map(Days::parse)),
                    P::TextArray(v) => Box::new(v.clone()),
                }
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref() as _).collect();
        let rows = match self.mode.as_str() {
            "query" => self.client.query(sql, &refs).await,
            "query_typed" => {
                let typed: Vec<(&(dyn ToSql + Sync), Type)> = refs
                    .iter()
                    .zip(params)
                    .map(|(r, p)| {
                        let t = match p {
                            P::Text(_) => Type::TEXT,
                            P::Date(_) => Type::DATE,
                            P::TextArray(_) => Type::TEXT_ARRAY,
                        };
                        (*r, t)
                    })
                    .collect();
                self.client.query_typed(sql, &typed).await
            }
            _ => {
                let stmt = match self.statements.get(sql) {
                    Some(s) => s.clone(),
                    None => {
                        let s = self.client.prepare(sql).await.map_err(fmt_err)?;
                        self.statements.insert(sql.to_string(), s.clone());
                        s
                    }
                };
                self.client.query(&stmt, &refs).await
            }
        }
        .map_err(fmt_err)?;
        Ok(rows
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| match *r.columns()[i].type_() {
                        Type::DATE => r.get::<_, Option<Days>>(i).map(|d| days_text(d.0)),
                        Type::INT8 => r.get::<_, Option<i64>>(i).map(|v| v.to_string()),
                        Type::INT4 => r.get::<_, Option<i32>>(i).map(|v| v.to_string()),
                        _ => r.get::<_, Option<String>>(i),
                    })
                    .collect()
            })
            .collect())
    }

    fn customers(&self) -> Vec<Value> {
        self.fixture["customers"].as_array().unwrap().clone()
    }

    fn field(c: &Value, k: &str) -> Option<String> {
        c[k].as_str().map(str::to_string)
    }

    async fn step(&mut self, id: &str) -> R<()> {
        let one = |rows: Rows, what: &str| -> R<Vec<Option<String>>> {
            match rows.len() {
                1 => Ok(rows.into_iter().next().unwrap_or_default()),
                n => Err(format!("{what}: {n} rows, want 1")),
            }
        };
        let check = |ok: bool, what: String| if ok { Ok(()) } else { Err(what) };
        match id {
            "reset" => {
                self.run("DELETE FROM leads", &[]).await?;
                self.run("DELETE FROM customers", &[]).await?;
                Ok(())
            }
            "insert_customers" => {
                for c in self.customers() {
                    self.run(
                        "INSERT INTO customers (name, email, phone, birth_date, country) VALUES ($1, $2, $3, $4, $5)",
                        &[
                            P::Text(Self::field(&c, "name")),
                            P::Text(Self::field(&c, "email")),
                            P::Text(Self::field(&c, "phone")),
                            P::Date(Self::field(&c, "birth_date")),
                            P::Text(Self::field(&c, "country")),
                        ],
                    )
                    .await?;
                }
                let n = one(
                    self.run("SELECT count(*) FROM customers", &[]).await?,
                    "count",
                )?;
                check(n[0].as_deref() == Some("4"), format!("count {n:?}"))
            }
            "find_by_email" => {
                let row = one(
                    self.run(
                        "SELECT name, email, phone, birth_date, country FROM customers WHERE email = $1",
                        &[P::t("grace@example.com")],
                    )
                    .await?,
                    "grace",
                )?;
                let g = &self.customers()[1];
                let want: Vec<Option<String>> = ["name", "email", "phone", "birth_date", "country"]
                    .iter()
                    .map(|k| Self::field(g, k))
                    .collect();
                check(row == want, format!("got {row:?}, want {want:?}"))
            }
            "in_list" => {
                let want = vec![
                    "ada@example.com".to_string(),
                    "alan@example.com".to_string(),
                ];
                for (sql, params) in [
                    (
                        "SELECT email FROM customers WHERE email IN ($1, $2) ORDER BY id",
                        vec![P::t("ada@example.com"), P::t("alan@example.com")],
                    ),
                    (
                        "SELECT email FROM customers WHERE email = ANY($1) ORDER BY id",
                        vec![P::TextArray(want.clone())],
                    ),
                ] {
                    let mut got: Vec<String> = self
                        .run(sql, &params)
                        .await?
                        .into_iter()
                        .filter_map(|r| r.into_iter().next().flatten())
                        .collect();
                    got.sort();
                    check(got == want, format!("{sql}: got {got:?}"))?;
                }
                Ok(())
            }
            "update_phone" => {
                self.run(
                    "UPDATE customers SET phone = $1 WHERE email = $2",
                    &[P::t("+44 20 7946 0999"), P::t("ada@example.com")],
                )
                .await?;
                let row = one(
                    self.run(
                        "SELECT phone FROM customers WHERE email = $1",
                        &[P::t("ada@example.com")],
                    )
                    .await?,
                    "ada",
                )?;
                check(
                    row[0].as_deref() == Some("+44 20 7946 0999"),
                    format!("{row:?}"),
                )
            }
            "join_leads" => {
                for l in self.fixture["leads"].as_array().unwrap().clone() {
                    self.run(
                        "INSERT INTO leads (email, source) VALUES ($1, $2)",
                        &[
                            P::Text(Self::field(&l, "email")),
                            P::Text(Self::field(&l, "source")),
                        ],
                    )
                    .await?;
                }
                let mut got: Vec<(String, String)> = self
                    .run(
                        "SELECT c.name, l.source FROM customers c JOIN leads l ON l.email = c.email",
                        &[],
                    )
                    .await?
                    .into_iter()
                    .map(|r| (r[0].clone().unwrap_or_default(), r[1].clone().unwrap_or_default()))
                    .collect();
                got.sort();
                let want = vec![
                    ("Ada Lovelace".to_string(), "newsletter".to_string()),
                    ("Ada Lovelace".into(), "webinar".into()),
                    ("Grace Hopper".into(), "referral".into()),
                ];
                check(got == want, format!("got {got:?}"))
            }
            "group_by" => {
                let mut got: Vec<(String, String)> = self
                    .run("SELECT email, count(*) FROM leads GROUP BY email", &[])
                    .await?
                    .into_iter()
                    .map(|r| {
                        (
                            r[0].clone().unwrap_or_default(),
                            r[1].clone().unwrap_or_default(),
                        )
                    })
                    .collect();
                got.sort();
                let want = vec![
                    ("ada@example.com".to_string(), "2".to_string()),
                    ("grace@example.com".into(), "1".into()),
                    ("nobody@example.net".into(), "1".into()),
                ];
                check(got == want, format!("got {got:?}"))
            }
            "refused_like" => {
                match self
                    .run(
                        "SELECT name FROM customers WHERE email LIKE $1",
                        &[P::t("%@example.com")],
                    )
                    .await
                {
                    Ok(_) => return Err("LIKE was not refused".into()),
                    Err(e) => check(e.starts_with("0A000 pgveil:"), format!("error {e}"))?,
                }
                let row = one(self.run("SELECT 1", &[]).await?, "select 1")?;
                check(row[0].as_deref() == Some("1"), format!("{row:?}"))
            }
            "nulls" => {
                let a = one(
                    self.run(
                        "SELECT phone FROM customers WHERE email = $1",
                        &[P::t("zoe@example.org")],
                    )
                    .await?,
                    "zoe",
                )?;
                let b = one(
                    self.run(
                        "SELECT birth_date FROM customers WHERE email = $1",
                        &[P::t("alan@example.com")],
                    )
                    .await?,
                    "alan",
                )?;
                let c = one(
                    self.run("SELECT count(*) FROM customers WHERE phone IS NULL", &[])
                        .await?,
                    "n",
                )?;
                check(
                    a[0].is_none() && b[0].is_none() && c[0].as_deref() == Some("1"),
                    format!("{a:?} {b:?} {c:?}"),
                )
            }
            "non_ascii" => {
                let name = Self::field(&self.customers()[2], "name").unwrap_or_default();
                let a = one(
                    self.run(
                        "SELECT name FROM customers WHERE email = $1",
                        &[P::t("zoe@example.org")],
                    )
                    .await?,
                    "zoe",
                )?;
                let b = one(
                    self.run(
                        "SELECT email FROM customers WHERE name = $1",
                        &[P::t(&name)],
                    )
                    .await?,
                    "by name",
                )?;
                check(
                    a[0].as_deref() == Some(name.as_str())
                        && b[0].as_deref() == Some("zoe@example.org"),
                    format!("{a:?} {b:?}"),
                )
            }
            "large_value" => {
                let big = format!("Zoë{}", "x".repeat(1_048_573));
                self.run(
                    "INSERT INTO customers (name, email, country) VALUES ($1, $2, 'XX')",
                    &[P::t(&big), P::t("big@example.com")],
                )
                .await?;
                let r = one(
                    self.run(
                        "SELECT name FROM customers WHERE email = $1",
                        &[P::t("big@example.com")],
                    )
                    .await?,
                    "big",
                )?;
                check(
                    r[0].as_deref() == Some(big.as_str()),
                    "large value differs".into(),
                )
            }
            "delete" => {
                self.run(
                    "DELETE FROM customers WHERE email = $1",
                    &[P::t("big@example.com")],
                )
                .await?;
                let n = one(
                    self.run("SELECT count(*) FROM customers", &[]).await?,
                    "count",
                )?;
                check(n[0].as_deref() == Some("4"), format!("{n:?}"))
            }
            "direct_no_plaintext" => {
                let direct = support::try_connect(&self.direct_conn)
                    .await
                    .map_err(fmt_err)?;
                let mut needles = vec!["ada@".to_string(), "Lovelace".into(), "1815-12-10".into()];
                for c in self.customers() {
                    for k in ["name", "email", "phone"] {
                        needles.extend(Self::field(&c, k));
                    }
                }
                for sql in [
                    "SELECT c::text FROM customers c",
                    "SELECT l::text FROM leads l",
                ] {
                    for m in direct.simple_query(sql).await.map_err(fmt_err)? {
                        if let SimpleQueryMessage::Row(r) = m {
                            let text = r.get(0).unwrap_or_default();
                            if let Some(n) = needles.iter().find(|n| text.contains(n.as_str())) {
                                return Err(format!("plaintext {n:?} stored"));
                            }
                        }
                    }
                }
                let nulls = direct
                    .query_one("SELECT count(*) FROM customers WHERE email IS NULL", &[])
                    .await
                    .map_err(fmt_err)?;
                check(nulls.get::<_, i64>(0) == 0, "a NULL email at rest".into())
            }
            other => Err(format!("step {other} not implemented")),
        }
    }
}

#[test]
fn dates_round_trip() {
    for s in [
        "2000-01-01",
        "1815-12-10",
        "1906-12-09",
        "1990-02-28",
        "2024-02-29",
    ] {
        assert_eq!(days_text(Days::parse(s).0), s);
    }
    assert_eq!(Days::parse("2000-01-02"), Days(1));
    let _ = Path::new(".");
}
