//! End-to-end: encrypted columns through the simple query protocol, against
//! a real PostgreSQL, with a small CRM fixture.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::{PgCluster, Proxy, cluster};
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;

fn crm_config() -> String {
    format!(
        r#"[keys]
master_key_file = "{}"
[[encrypt]]
table = "customers"
column = "email"
domain = "email"
[[encrypt]]
table = "customers"
column = "phone"
[[encrypt]]
table = "customers"
column = "birth_date"
type = "date"
[[encrypt]]
table = "leads"
column = "email"
domain = "email"
[[encrypt]]
table = "crm_new"
column = "secret"
"#,
        support::key_file().display()
    )
}

/// Creates a fresh database with the fixture schema; returns its name.
async fn fixture(pg: &PgCluster, name: &str) -> String {
    pg.fresh_database(name).await;
    name.to_string()
}

async fn connect_db(proxy: &Proxy, pg: &PgCluster, db: &str) -> tokio_postgres::Client {
    support::connect(
        &proxy
            .conn_str(pg)
            .replace("dbname=postgres", &format!("dbname={db}")),
    )
    .await
}

async fn direct_db(pg: &PgCluster, db: &str) -> tokio_postgres::Client {
    support::connect(
        &pg.conn_str()
            .replace("dbname=postgres", &format!("dbname={db}")),
    )
    .await
}

const SCHEMA: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text, email bytea UNIQUE, phone text, birth_date bytea);
CREATE TABLE leads (id int PRIMARY KEY, email bytea, source text);
CREATE VIEW customer_contacts AS SELECT id, email, phone FROM customers;
";

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

async fn q(c: &tokio_postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    rows(
        &c.simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}")),
    )
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

#[tokio::test]
async fn crm_round_trip_and_equality() {
    let pg = cluster();
    let db = fixture(pg, "crm_round_trip").await;
    let proxy = Proxy::start(pg, &crm_config()).await;
    let c = connect_db(&proxy, pg, &db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    q(
        &c,
        "INSERT INTO customers (id, name, email, phone, birth_date) VALUES \
         (1, 'Ada', 'ada@example.com', '+44 20 7946 0001', '1815-12-10'), \
         (2, 'Grace', E'grace@example.com', $$+1 555 0100$$, DATE '1906-12-09'), \
         (3, 'Nobody', NULL, NULL, NULL)",
    )
    .await;
    q(
        &c,
        "INSERT INTO leads VALUES (10, 'ada@example.com', 'web'), (11, 'zed@example.com', 'fair')",
    )
    .await;

    // Plaintext through pgveil.
    assert_eq!(
        q(
            &c,
            "SELECT email, phone, birth_date FROM customers WHERE id = 1"
        )
        .await,
        vec![vec![
            s("ada@example.com"),
            s("+44 20 7946 0001"),
            s("1815-12-10")
        ]]
    );
    // Equality, IN, IS NULL, joins within a domain.
    assert_eq!(
        q(
            &c,
            "SELECT id FROM customers WHERE email = 'grace@example.com'"
        )
        .await,
        vec![vec![s("2")]]
    );
    assert_eq!(
        q(
            &c,
            "SELECT count(*) FROM customers WHERE email IN ('ada@example.com', 'grace@example.com')"
        )
        .await,
        vec![vec![s("2")]]
    );
    assert_eq!(
        q(&c, "SELECT id FROM customers WHERE email IS NULL").await,
        vec![vec![s("3")]]
    );
    assert_eq!(
        q(
            &c,
            "SELECT c.name, l.source FROM customers c JOIN leads l ON c.email = l.email"
        )
        .await,
        vec![vec![s("Ada"), s("web")]]
    );
    assert_eq!(
        q(
            &c,
            "SELECT birth_date FROM customers WHERE birth_date = '1906-12-09'::date"
        )
        .await,
        vec![vec![s("1906-12-09")]]
    );
    // UNION loses the origin: decrypted by the analyzer's knowledge.
    let mut union = q(
        &c,
        "SELECT email FROM customers WHERE id = 1 UNION SELECT email FROM leads WHERE id = 11",
    )
    .await;
    union.sort();
    assert_eq!(
        union,
        vec![vec![s("ada@example.com")], vec![s("zed@example.com")]]
    );
    // A view over the table.
    assert_eq!(
        q(&c, "SELECT email FROM customer_contacts WHERE id = 2").await,
        vec![vec![s("grace@example.com")]]
    );
    // UPDATE and RETURNING.
    assert_eq!(
        q(&c, "UPDATE customers SET email = 'ada@new.example' WHERE email = 'ada@example.com' RETURNING email").await,
        vec![vec![s("ada@new.example")]]
    );
    // GROUP BY and DISTINCT work on ciphertext inside PostgreSQL.
    assert_eq!(
        q(&c, "SELECT count(DISTINCT email) FROM customers").await,
        vec![vec![s("2")]]
    );

    // Directly, PostgreSQL holds no plaintext.
    let d = direct_db(pg, &db).await;
    for row in q(
        &d,
        "SELECT email, phone, birth_date FROM customers WHERE id IN (1, 2)",
    )
    .await
    {
        for cell in row.into_iter().flatten() {
            assert!(
                cell.starts_with("\\x01") || cell.starts_with("pgv:"),
                "plaintext in the database: {cell}"
            );
        }
    }
}

#[tokio::test]
async fn refusals_behave_like_database_errors() {
    let pg = cluster();
    let db = fixture(pg, "crm_refusals").await;
    let proxy = Proxy::start(pg, &crm_config()).await;
    let c = connect_db(&proxy, pg, &db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    for sql in [
        "SELECT * FROM customers WHERE email LIKE 'ada%'",
        "SELECT * FROM customers ORDER BY email",
        "SELECT lower(email) FROM customers",
        "SELECT * FROM customers WHERE birth_date > '2000-01-01'",
        "SELECT * FROM customers c JOIN leads l ON c.phone = l.email",
        "COPY customers FROM '/tmp/plain.csv'",
    ] {
        let err = c.simple_query(sql).await.unwrap_err();
        let db_err = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{sql}: {err:?}"));
        assert_eq!(db_err.code(), &SqlState::FEATURE_NOT_SUPPORTED, "{sql}");
        assert!(
            db_err.message().starts_with("pgveil:"),
            "{}",
            db_err.message()
        );
        assert!(!db_err.message().contains("ada"), "{}", db_err.message());
    }
    // In a transaction: the refusal fails it, as a database error would.
    c.batch_execute("BEGIN").await.unwrap();
    q(
        &c,
        "INSERT INTO customers (id, email) VALUES (7, 'tx@example.com')",
    )
    .await;
    assert!(
        c.simple_query("SELECT * FROM customers WHERE email LIKE 'x%'")
            .await
            .is_err()
    );
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::IN_FAILED_SQL_TRANSACTION));
    c.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        q(&c, "SELECT count(*) FROM customers").await,
        vec![vec![s("0")]]
    );
    // Multi-statement Query: statements before the refused one roll back.
    assert!(
        c.simple_query("INSERT INTO customers (id, email) VALUES (8, 'm@example.com'); SELECT email FROM customers ORDER BY email")
            .await
            .is_err()
    );
    assert_eq!(
        q(&c, "SELECT count(*) FROM customers").await,
        vec![vec![s("0")]]
    );
    // The session stays usable.
    assert_eq!(q(&c, "SELECT 1").await, vec![vec![s("1")]]);
    // A bad value for a typed column is refused with PostgreSQL's code.
    let err = c
        .simple_query("INSERT INTO customers (id, birth_date) VALUES (9, 'not a date')")
        .await
        .unwrap_err();
    assert!(err.code().is_some());
    assert_ne!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
}

#[tokio::test]
async fn simple_and_extended_protocols_share_one_session() {
    let pg = cluster();
    let db = fixture(pg, "crm_extended").await;
    let proxy = Proxy::start(pg, &crm_config()).await;
    let c = connect_db(&proxy, pg, &db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    q(
        &c,
        "INSERT INTO customers (id, email, phone) VALUES (1, 'a@example.com', '555')",
    )
    .await;
    let row = c
        .query_one(
            "SELECT email, phone FROM customers WHERE email = $1",
            &[&"a@example.com"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "a@example.com");
    assert_eq!(row.get::<_, String>(1), "555");
    let err = c
        .query("SELECT 1 FROM customers WHERE email LIKE $1", &[&"a%"])
        .await
        .unwrap_err();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code(), &SqlState::FEATURE_NOT_SUPPORTED);
    assert!(db_err.message().starts_with("pgveil:"));
    // Unrelated statements pass, with binary results.
    let row = c.query_one("SELECT $1::int4 + 1", &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test]
async fn table_created_through_pgveil_is_protected_from_its_first_insert() {
    let pg = cluster();
    let db = fixture(pg, "crm_ddl").await;
    let proxy = Proxy::start(pg, &crm_config()).await;
    let c = connect_db(&proxy, pg, &db).await;
    // The session has already loaded a catalog without crm_new.
    q(&c, "SELECT 1").await;
    c.batch_execute("CREATE TABLE crm_new (id int, secret bytea)")
        .await
        .unwrap();
    q(&c, "INSERT INTO crm_new VALUES (1, 'first-secret-marker')").await;
    assert_eq!(
        q(&c, "SELECT secret FROM crm_new").await,
        vec![vec![s("first-secret-marker")]]
    );
    let d = direct_db(pg, &db).await;
    let stored = q(&d, "SELECT secret FROM crm_new").await;
    assert!(stored[0][0].as_deref().unwrap().starts_with("\\x01"));
}

#[tokio::test]
async fn markers_never_reach_disk_or_server_log() {
    let pg = PgCluster::start(
        &support::find_pg_bin(),
        "scram-sha-256",
        &[("log_statement", "all")],
    );
    let db = fixture(&pg, "crm_markers").await;
    let proxy = Proxy::start(&pg, &crm_config()).await;
    let c = connect_db(&proxy, &pg, &db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    let marker = "zqxmarker7731";
    q(&c, &format!(
        "INSERT INTO customers (id, name, email, phone) VALUES (1, 'n', '{marker}-mail@example.com', '{marker}-phone')"
    ))
    .await;
    q(
        &c,
        &format!("SELECT id FROM customers WHERE email = '{marker}-mail@example.com'"),
    )
    .await;
    drop(c);
    pg.execute("CHECKPOINT").await;
    let out = std::process::Command::new("grep")
        .args(["-r", "-l", "-a", marker])
        .arg(&pg.dir)
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "marker found in: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn sql_prepare_execute_and_cursors() {
    let pg = cluster();
    let db = fixture(pg, "crm_prepare").await;
    let proxy = Proxy::start(pg, &crm_config()).await;
    let c = connect_db(&proxy, pg, &db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    q(
        &c,
        "PREPARE ins(int, text) AS INSERT INTO customers (id, email) VALUES ($1, $2)",
    )
    .await;
    q(&c, "EXECUTE ins(1, 'p1@example.com')").await;
    q(&c, "EXECUTE ins(2, 'p2@example.com')").await;
    q(
        &c,
        "PREPARE find AS SELECT id, email FROM customers WHERE email = $1",
    )
    .await;
    assert_eq!(
        q(&c, "EXECUTE find('p2@example.com')").await,
        vec![vec![s("2"), s("p2@example.com")]]
    );
    q(&c, "DEALLOCATE find").await;
    // Cursors: FETCH results carry their origin and are decrypted.
    c.batch_execute("BEGIN").await.unwrap();
    q(
        &c,
        "DECLARE cur CURSOR FOR SELECT email FROM customers WHERE id = 1",
    )
    .await;
    assert_eq!(
        q(&c, "FETCH 1 FROM cur").await,
        vec![vec![s("p1@example.com")]]
    );
    c.batch_execute("COMMIT").await.unwrap();
    // A unique violation's detail does not show ciphertext.
    let err = c
        .simple_query("INSERT INTO customers (id, email) VALUES (3, 'p1@example.com')")
        .await
        .unwrap_err();
    let db_err = err.as_db_error().unwrap();
    assert_eq!(db_err.code(), &SqlState::UNIQUE_VIOLATION);
    let detail = db_err.detail().unwrap_or_default();
    assert!(!detail.contains("\\x01"), "{detail}");
    assert!(detail.contains("<encrypted>"), "{detail}");
}

#[tokio::test]
async fn standard_conforming_strings_off_uses_escape_syntax() {
    let pg = cluster();
    let db = fixture(pg, "crm_scs").await;
    let proxy = Proxy::start(pg, &crm_config()).await;
    let c = connect_db(&proxy, pg, &db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    c.batch_execute("SET standard_conforming_strings = off")
        .await
        .unwrap();
    q(
        &c,
        "INSERT INTO customers (id, email) VALUES (1, 'scs@example.com')",
    )
    .await;
    assert_eq!(
        q(
            &c,
            "SELECT id FROM customers WHERE email = 'scs@example.com'"
        )
        .await,
        vec![vec![s("1")]]
    );
    // Backslashes are ambiguous in this mode: refused, not guessed.
    let err = c
        .simple_query("SELECT id FROM customers WHERE email = 'a\\'b'")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    c.batch_execute("SET standard_conforming_strings = on")
        .await
        .unwrap();
    assert_eq!(
        q(&c, "SELECT email FROM customers").await,
        vec![vec![s("scs@example.com")]]
    );
}

#[tokio::test]
async fn passthrough_policy_forwards_and_unsupported_storage_is_refused() {
    let pg = cluster();
    let db = fixture(pg, "crm_policy").await;
    let proxy = Proxy::start(
        pg,
        &format!(
            "{}\n[policy]\non_unsupported = \"passthrough\"\n",
            crm_config()
        ),
    )
    .await;
    let c = connect_db(&proxy, pg, &db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    // Refusable, but forwarded under the passthrough policy (runs on ciphertext).
    q(&c, "SELECT id FROM customers ORDER BY email").await;
    drop(c);

    let db = fixture(pg, "crm_storage").await;
    let proxy = Proxy::start(pg, &crm_config()).await;
    let c = connect_db(&proxy, pg, &db).await;
    c.batch_execute("CREATE TABLE customers (id int, email int, phone text, birth_date date)")
        .await
        .unwrap();
    let err = c
        .simple_query("INSERT INTO customers (id, birth_date) VALUES (1, '2000-01-01')")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    assert!(err.as_db_error().unwrap().message().contains("birth_date"));
}

#[tokio::test]
async fn guard_constraints_reject_plaintext_written_around_pgveil() {
    let pg = cluster();
    let db = fixture(pg, "crm_guard").await;
    let proxy = Proxy::start(pg, &crm_config()).await;
    let c = connect_db(&proxy, pg, &db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    c.batch_execute("CREATE TABLE crm_new (id int, secret bytea)")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("proxy.toml");
    std::fs::write(
        &config_path,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[upstream]\naddress = \"127.0.0.1:{}\"\n{}\n[[encrypt]]\ntable = \"customers\"\ncolumn = \"name\"\nstorage = \"text\"\n",
            pg.port,
            crm_config()
        ),
    )
    .unwrap();
    c.batch_execute("ALTER TABLE customers ALTER COLUMN name TYPE text")
        .await
        .unwrap();
    let url = format!(
        "postgresql://postgres:{}@127.0.0.1:{}/{db}",
        support::PASSWORD,
        pg.port
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["guard", "--config"])
        .arg(&config_path)
        .args(["--apply", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = direct_db(pg, &db).await;
    let triggers = d
        .query(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname = 'pgveil_catalog_changed' \
             AND evtevent = 'ddl_command_end' AND evtenabled = 'O'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        triggers[0].get::<_, i64>(0),
        1,
        "guard installs the event trigger"
    );
    let err = d
        .simple_query("INSERT INTO customers (id, email) VALUES (1, 'plain@example.com')")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION));
    let err = d
        .simple_query("INSERT INTO customers (id, name) VALUES (2, 'Plain Name')")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION));
    // Through pgveil the same rows are ciphertext and pass the check.
    drop(c);
    let proxy = Proxy::start(
        pg,
        &format!(
            "{}\n[[encrypt]]\ntable = \"customers\"\ncolumn = \"name\"\n",
            crm_config()
        ),
    )
    .await;
    let c = connect_db(&proxy, pg, &db).await;
    q(
        &c,
        "INSERT INTO customers (id, email, name) VALUES (1, 'ok@example.com', 'Ada')",
    )
    .await;
    assert_eq!(
        q(&c, "SELECT name, email FROM customers").await,
        vec![vec![s("Ada"), s("ok@example.com")]]
    );
}

#[tokio::test]
async fn session_level_review_findings_fail_closed() {
    let pg = cluster();
    let db = fixture(pg, "crm_review").await;
    let proxy = Proxy::start(pg, &crm_config()).await;
    let c = connect_db(&proxy, pg, &db).await;
    c.batch_execute(SCHEMA).await.unwrap();
    let d = direct_db(pg, &db).await;
    let plaintext_stored = |rows: Vec<tokio_postgres::Row>| {
        rows.iter().any(|r| {
            r.get::<_, Option<&str>>(0)
                .is_some_and(|v| v.contains("PLAIN"))
        })
    };

    // A DEALLOCATE that fails in the database is not forgotten by pgveil.
    c.batch_execute("PREPARE p(int, text) AS INSERT INTO customers (id, phone) VALUES ($1, $2)")
        .await
        .unwrap();
    let _ = c.batch_execute("SELECT 1/0; DEALLOCATE p").await;
    c.batch_execute("EXECUTE p(25, 'PLAIN_E25')").await.unwrap();
    // Quoted, mixed-case prepared statement names.
    c.batch_execute(
        "PREPARE \"P8\"(int, text) AS INSERT INTO customers (id, phone) VALUES ($1, $2)",
    )
    .await
    .unwrap();
    c.batch_execute("EXECUTE \"P8\"(8, 'PLAIN_E8')")
        .await
        .unwrap();
    let rows = d.query("SELECT phone FROM customers", &[]).await.unwrap();
    assert!(!plaintext_stored(rows), "plaintext stored through EXECUTE");

    // A view in a schema outside the known search path is refused, not
    // written through as an unknown table.
    c.batch_execute("CREATE SCHEMA app").await.unwrap();
    c.batch_execute("CREATE VIEW app.cc AS SELECT id, phone FROM public.customers")
        .await
        .unwrap();
    c.batch_execute("SELECT set_config('search'||'_path', 'app, public', false)")
        .await
        .unwrap();
    assert!(
        c.batch_execute("UPDATE cc SET phone = 'PLAIN_E9' WHERE id = 8")
            .await
            .is_err()
    );
    c.batch_execute("RESET search_path").await.unwrap();

    // Non-UTF-8 client encodings are refused for statements on encrypted tables.
    c.batch_execute("SET client_encoding = 'SJIS'")
        .await
        .unwrap();
    let err = c
        .batch_execute("UPDATE customers SET phone = 'PLAIN_E5' WHERE id = 8")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    c.batch_execute("SET client_encoding = 'UTF8'")
        .await
        .unwrap();

    // A settings change in the same Query as a statement on encrypted tables.
    assert!(
        c.batch_execute("SET standard_conforming_strings = off; UPDATE customers SET phone = 'PLAIN_E6' WHERE id = 8")
            .await
            .is_err()
    );
    let rows = d.query("SELECT phone FROM customers", &[]).await.unwrap();
    assert!(!plaintext_stored(rows), "plaintext stored");

    // Writing through the unconfigured parent of a configured table.
    c.batch_execute("CREATE TABLE parent_t (id int, secret bytea)")
        .await
        .unwrap();
    c.batch_execute("CREATE TABLE crm_new () INHERITS (parent_t)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO crm_new VALUES (1, 'kid-secret')")
        .await
        .unwrap();
    let err = c
        .batch_execute("UPDATE parent_t SET secret = 'PLAIN_E16' WHERE id = 1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED));
    assert!(c.batch_execute("SELECT * FROM parent_t").await.is_err());
    let rows = d.query("SELECT secret FROM crm_new", &[]).await.unwrap();
    let stored: Vec<u8> = rows[0].get(0);
    assert_eq!(stored[0], 1);
}
