//! End-to-end: encrypted columns through the extended query protocol,
//! with tokio-postgres against a real PostgreSQL: named and unnamed
//! statements, binary parameters and results, arrays, pipelining,
//! portals with row limits, refusals in the middle of a pipeline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::pgdate::Days;

use support::raw::{Raw, bind_msg, execute_msg, msg, parse_msg, tags};

use support::{PgCluster, Proxy, cluster};
use tokio_postgres::types::Type;

fn config() -> String {
    format!(
        r#"[limits]
shutdown_timeout_ms = 200
[keys]
master_key_file = "{}"
[[encrypt]]
table = "customers"
column = "email"
domain = "email"
[[encrypt]]
table = "customers"
column = "name"
[[encrypt]]
table = "customers"
column = "birth_date"
type = "date"
[[encrypt]]
table = "customers"
column = "score"
type = "int4"
[[encrypt]]
table = "leads"
column = "email"
domain = "email"
"#,
        support::key_file().display()
    )
}

const SCHEMA: &str = "
CREATE TABLE customers (id serial PRIMARY KEY, name text, email bytea UNIQUE, birth_date bytea, score bytea, country text);
CREATE TABLE leads (id serial PRIMARY KEY, email bytea, source text);
";

async fn setup(
    pg: &PgCluster,
    db: &str,
) -> (Proxy, tokio_postgres::Client, tokio_postgres::Client) {
    pg.fresh_database(db).await;
    let direct = support::connect(
        &pg.conn_str()
            .replace("dbname=postgres", &format!("dbname={db}")),
    )
    .await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = Proxy::start(pg, &config()).await;
    let client = support::connect(
        &proxy
            .conn_str(pg)
            .replace("dbname=postgres", &format!("dbname={db}")),
    )
    .await;
    (proxy, client, direct)
}

async fn insert(
    c: &tokio_postgres::Client,
    name: &str,
    email: &str,
    born: Option<Days>,
    score: i32,
) {
    c.execute(
        "INSERT INTO customers (name, email, birth_date, score, country) VALUES ($1, $2, $3, $4, 'GB')",
        &[&name, &email, &born, &score],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn prepared_statements_encrypt_parameters_and_decrypt_binary_results() {
    let pg = cluster();
    let (proxy, c, direct) = setup(pg, "ext_basic").await;
    insert(
        &c,
        "Ada Lovelace",
        "ada@example.com",
        Some(Days(-67_000)),
        42,
    )
    .await;
    insert(&c, "Zoë Ångström", "zoe@example.org", None, -7).await;

    // Named statement, binary parameters and results.
    let stmt = c
        .prepare("SELECT name, email, birth_date, score FROM customers WHERE email = $1")
        .await
        .unwrap();
    assert_eq!(stmt.params(), &[Type::TEXT]);
    assert_eq!(stmt.columns()[0].type_(), &Type::TEXT);
    assert_eq!(stmt.columns()[2].type_(), &Type::DATE);
    assert_eq!(stmt.columns()[3].type_(), &Type::INT4);
    for _ in 0..3 {
        let rows = c.query(&stmt, &[&"ada@example.com"]).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].get::<_, String>(0), "Ada Lovelace");
        assert_eq!(rows[0].get::<_, String>(1), "ada@example.com");
        assert_eq!(rows[0].get::<_, Option<Days>>(2), Some(Days(-67_000)));
        assert_eq!(rows[0].get::<_, i32>(3), 42);
    }
    let zoe = c.query_one(&stmt, &[&"zoe@example.org"]).await.unwrap();
    assert_eq!(zoe.get::<_, String>(0), "Zoë Ångström");
    assert_eq!(zoe.get::<_, Option<Days>>(2), None);
    assert_eq!(zoe.get::<_, i32>(3), -7);

    // Equality on an encrypted int and date, bound in binary.
    let n = c
        .query_one(
            "SELECT count(*) FROM customers WHERE score = $1 AND birth_date = $2",
            &[&42i32, &Days(-67_000)],
        )
        .await
        .unwrap();
    assert_eq!(n.get::<_, i64>(0), 1);

    // Unnamed statement with declared types, text-format result via query_typed.
    let rows = c
        .query_typed(
            "SELECT email FROM customers WHERE email = $1::text",
            &[(&"zoe@example.org", Type::TEXT)],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "zoe@example.org");

    // Simple protocol on the same session still works.
    let msgs = c
        .simple_query("SELECT name FROM customers WHERE email = 'ada@example.com'")
        .await
        .unwrap();
    assert!(msgs.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("Ada Lovelace"))));

    // Nothing readable at rest.
    for row in direct
        .simple_query("SELECT c::text FROM customers c")
        .await
        .unwrap()
    {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = row {
            let text = r.get(0).unwrap();
            assert!(
                !text.contains("ada@") && !text.contains("Lovelace") && !text.contains("Zo"),
                "{text}"
            );
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn arrays_in_lists_and_joins() {
    let pg = cluster();
    let (proxy, c, _direct) = setup(pg, "ext_arrays").await;
    for (i, e) in ["a@x.com", "b@x.com", "c@x.com"].iter().enumerate() {
        insert(&c, &format!("N{i}"), e, None, i as i32).await;
        c.execute(
            "INSERT INTO leads (email, source) VALUES ($1, $2)",
            &[e, &"web"],
        )
        .await
        .unwrap();
    }
    let list = vec![
        "a@x.com".to_string(),
        "c@x.com".to_string(),
        "zz@x.com".to_string(),
    ];
    let rows = c
        .query(
            "SELECT email FROM customers WHERE email = ANY($1) ORDER BY id",
            &[&list],
        )
        .await
        .unwrap();
    let got: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, vec!["a@x.com", "c@x.com"]);
    let rows = c
        .query(
            "SELECT email FROM customers WHERE email IN ($1, $2) ORDER BY id",
            &[&"b@x.com", &"c@x.com"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    let rows = c
        .query(
            "SELECT c.name, l.source FROM customers c JOIN leads l ON l.email = c.email WHERE l.email = $1",
            &[&"b@x.com"],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "N1");
    let rows = c
        .query(
            "SELECT email, count(*) FROM leads GROUP BY email ORDER BY 2",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    proxy.stop().await;
}

#[tokio::test]
async fn refusal_mid_pipeline_rolls_back_like_a_database_error() {
    let pg = cluster();
    let (proxy, c, direct) = setup(pg, "ext_refusal").await;
    let err = c
        .query("SELECT name FROM customers WHERE email LIKE $1", &[&"%x%"])
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "0A000");
    assert!(db.message().starts_with("pgveil:"), "{}", db.message());
    // The session still works.
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );

    // In a transaction: the refusal aborts it, as a database error would.
    c.batch_execute("BEGIN").await.unwrap();
    insert(&c, "T", "t@x.com", None, 1).await;
    assert!(
        c.query("SELECT 1 FROM customers WHERE email < $1", &[&"m"])
            .await
            .is_err()
    );
    let e = c.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "25P02");
    c.batch_execute("ROLLBACK").await.unwrap();
    let n: i64 = direct
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // Pipelined: many statements before one Sync; the refused one fails and
    // the others still complete (tokio-postgres syncs each query).
    let c = std::sync::Arc::new(c);
    let stmt = c
        .prepare("INSERT INTO customers (name, email) VALUES ($1, $2)")
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let email = format!("p{i}@x.com");
        let (stmt, c) = (stmt.clone(), c.clone());
        tasks.spawn(async move {
            c.execute(&stmt, &[&format!("P{i}"), &email])
                .await
                .map(|_| ())
        });
    }
    let results = tasks.join_all().await;
    assert!(results.iter().all(Result::is_ok));
    let n = c
        .query_one(
            "SELECT count(*) FROM customers WHERE email = ANY($1)",
            &[&vec!["p3@x.com", "p19@x.com"]],
        )
        .await
        .unwrap();
    assert_eq!(n.get::<_, i64>(0), 2);
    proxy.stop().await;
}

#[tokio::test]
async fn portals_with_row_limits_stream_decrypted_rows() {
    let pg = cluster();
    let (proxy, mut c, _direct) = setup(pg, "ext_portal").await;
    let stmt = c
        .prepare("INSERT INTO customers (name, email) VALUES ($1, $2)")
        .await
        .unwrap();
    for i in 0..25 {
        c.execute(&stmt, &[&format!("Name {i}"), &format!("e{i}@x.com")])
            .await
            .unwrap();
    }
    let tx = c.transaction().await.unwrap();
    let q = tx
        .prepare("SELECT name, email FROM customers ORDER BY id")
        .await
        .unwrap();
    let portal = tx.bind(&q, &[]).await.unwrap();
    let mut seen = 0;
    loop {
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        for r in &rows {
            assert_eq!(r.get::<_, String>(0), format!("Name {seen}"));
            assert_eq!(r.get::<_, String>(1), format!("e{seen}@x.com"));
            seen += 1;
        }
        if rows.len() < 10 {
            break;
        }
    }
    assert_eq!(seen, 25);
    tx.commit().await.unwrap();
    proxy.stop().await;
}

#[tokio::test]
async fn orm_shapes_casts_values_lists_and_sql_prepare() {
    let pg = cluster();
    let (proxy, c, direct) = setup(pg, "ext_orm").await;
    // SQLAlchemy 2's bulk insert shape.
    let rows = c
        .query(
            "INSERT INTO customers (name, email, country) SELECT p0::VARCHAR, p1::VARCHAR, p2::VARCHAR FROM \
             (VALUES ($1, $2, $3, 0), ($4, $5, $6, 1)) AS imp_sen(p0, p1, p2, sen_counter) ORDER BY sen_counter \
             RETURNING customers.id, customers.email",
            &[&"A", &"a@orm.com", &"GB", &"B", &"b@orm.com", &"US"],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].get::<_, String>(1), "b@orm.com");
    // Casts as ORMs write them.
    let r = c
        .query_one(
            "SELECT name FROM customers WHERE email = CAST($1 AS VARCHAR(255))",
            &[&"a@orm.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "A");
    let country: String = direct
        .query_one(
            "SELECT country FROM customers WHERE name IS NOT NULL ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(country, "GB");
    // A parameter used both for an encrypted column and as plaintext.
    let e = c
        .query(
            "SELECT 1 FROM customers WHERE email = $1 AND country = $1",
            &[&"x"],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "0A000");
    // SQL-level PREPARE/EXECUTE and DEALLOCATE alongside protocol statements.
    c.batch_execute("PREPARE byemail(text) AS SELECT name FROM customers WHERE email = $1")
        .await
        .unwrap();
    let msgs = c
        .simple_query("EXECUTE byemail('b@orm.com')")
        .await
        .unwrap();
    assert!(
        msgs.iter().any(
            |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("B"))
        )
    );
    c.batch_execute("DEALLOCATE byemail").await.unwrap();
    c.batch_execute("DISCARD ALL").await.unwrap();
    let r = c
        .query_one(
            "SELECT name FROM customers WHERE email = $1",
            &[&"b@orm.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "B");
    proxy.stop().await;
}

#[tokio::test]
async fn large_values_and_bad_values() {
    let pg = cluster();
    let (proxy, c, _direct) = setup(pg, "ext_large").await;
    let big: String = "Zoë".to_string() + &"x".repeat(1_048_573);
    c.execute(
        "INSERT INTO customers (name, email) VALUES ($1, $2)",
        &[&big, &"big@x.com"],
    )
    .await
    .unwrap();
    let r = c
        .query_one(
            "SELECT name FROM customers WHERE email = $1",
            &[&"big@x.com"],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), big);
    // A value that is not valid for the column's type: refused, session fine.
    let e = c
        .query_typed(
            "SELECT 1 FROM customers WHERE birth_date = $1",
            &[(&"not a date", Type::TEXT)],
        )
        .await
        .unwrap_err();
    assert!(
        e.as_db_error().unwrap().message().starts_with("pgveil:"),
        "{e:?}"
    );
    assert_eq!(
        c.query_one("SELECT 2", &[]).await.unwrap().get::<_, i32>(0),
        2
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_refusal_inside_an_unsynced_pipeline_fails_it_in_the_database() {
    let pg = PgCluster::start(&support::find_pg_bin(), "trust", &[]);
    let db = "ext_raw";
    pg.fresh_database(db).await;
    let direct = support::connect(
        &pg.conn_str()
            .replace("dbname=postgres", &format!("dbname={db}")),
    )
    .await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = Proxy::start(&pg, &config()).await;
    let mut raw = Raw::connect(proxy.port, db).await;

    // INSERT, then a refused statement, then another INSERT, one Sync: the
    // database rolls back the first INSERT, skips the rest.
    raw.send(&[
        parse_msg("", "INSERT INTO customers (name, email) VALUES ($1, $2)"),
        bind_msg("", &["One", "one@x.com"]),
        execute_msg(),
        parse_msg("", "SELECT 1 FROM customers WHERE email LIKE $1"),
        bind_msg("", &["%"]),
        execute_msg(),
        parse_msg("", "INSERT INTO customers (name, email) VALUES ($1, $2)"),
        bind_msg("", &["Two", "two@x.com"]),
        execute_msg(),
        msg(b'S', b""),
    ])
    .await;
    let got = raw.until_ready().await;
    assert_eq!(tags(&got), "12CEZ", "{got:?}");
    let err = String::from_utf8_lossy(&got[3].1).to_string();
    assert!(err.contains("C0A000") && err.contains("Mpgveil:"), "{err}");
    let n: i64 = direct
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the pipeline's implicit transaction is rolled back");

    // Named statement, Describe of statement and portal, a row limit with
    // PortalSuspended, Close, and the session in step afterwards.
    raw.send(&[
        parse_msg("ins", "INSERT INTO customers (name, email) VALUES ($1, $2)"),
        bind_msg("ins", &["A", "a@x.com"]),
        execute_msg(),
        bind_msg("ins", &["B", "b@x.com"]),
        execute_msg(),
        parse_msg("sel", "SELECT name, email FROM customers ORDER BY id"),
        msg(b'D', b"Ssel\0"),
        bind_msg("sel", &[]),
        msg(b'D', b"P\0"),
        msg(b'E', b"\0\0\0\0\x01"),
        msg(b'E', b"\0\0\0\0\x01"),
        msg(b'C', b"Sins\0"),
        msg(b'S', b""),
    ])
    .await;
    let got = raw.until_ready().await;
    assert_eq!(tags(&got), "12C2C1tT2TDsDs3Z", "{got:?}");
    let row = &got[10].1;
    assert!(
        String::from_utf8_lossy(row).contains("A")
            && String::from_utf8_lossy(row).contains("a@x.com"),
        "{row:?}"
    );
    // ParameterDescription of "sel" (no parameters) and RowDescription with
    // text, not bytea, for the encrypted columns.
    let t = &got[7].1;
    assert!(
        !t.windows(4).any(|w| w == 17u32.to_be_bytes()),
        "bytea in {t:?}"
    );

    // Error recovery: an error from the database itself mid-pipeline.
    raw.send(&[
        parse_msg("", "SELECT 1/0"),
        bind_msg("", &[]),
        execute_msg(),
        parse_msg("", "SELECT email FROM customers WHERE email = $1"),
        bind_msg("", &["a@x.com"]),
        execute_msg(),
        msg(b'S', b""),
        parse_msg("", "SELECT email FROM customers WHERE email = $1"),
        bind_msg("", &["b@x.com"]),
        execute_msg(),
        msg(b'S', b""),
    ])
    .await;
    // (PostgreSQL plans the unnamed statement at Bind: 1/0 fails there.)
    assert_eq!(tags(&raw.until_ready().await), "1EZ");
    let got = raw.until_ready().await;
    assert_eq!(tags(&got), "12DCZ", "{got:?}");
    assert!(String::from_utf8_lossy(&got[2].1).contains("b@x.com"));
    drop(raw);
    proxy.stop().await;
}

#[tokio::test]
async fn a_reload_that_changes_encrypted_columns_ends_sessions_holding_statements() {
    let pg = cluster();
    let db = "ext_reload";
    pg.fresh_database(db).await;
    let direct = support::connect(
        &pg.conn_str()
            .replace("dbname=postgres", &format!("dbname={db}")),
    )
    .await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let port = support::free_port();
    let base = format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n[upstream]\naddress = \"127.0.0.1:{}\"\n",
        pg.port
    );
    std::fs::write(&path, format!("{base}{}", config())).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let conn = pg
        .conn_str_on(port)
        .replace("dbname=postgres", &format!("dbname={db}"));
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = support::try_connect(&conn).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let c = client.expect("pgveil started");
    let stmt = c
        .prepare("INSERT INTO leads (source) VALUES ($1)")
        .await
        .unwrap();
    c.execute(&stmt, &[&"web"]).await.unwrap();
    // Reload with leads.source now encrypted: the statement would bind
    // plaintext into it, so the session ends.
    let extra = "[[encrypt]]\ntable = \"leads\"\ncolumn = \"source\"\n";
    direct
        .batch_execute("ALTER TABLE leads ALTER COLUMN source TYPE bytea USING NULL")
        .await
        .unwrap();
    std::fs::write(&path, format!("{base}{}{extra}", config())).unwrap();
    let pid = child.id() as i32;
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let err = c.execute(&stmt, &[&"web"]).await.unwrap_err();
    assert!(format!("{err:?}").contains("reloaded"), "{err:?}");
    // A new session prepares it again and the value is encrypted.
    let c2 = support::connect(&conn).await;
    c2.execute(
        "INSERT INTO leads (source) VALUES ($1)",
        &[&"fresh-source-marker"],
    )
    .await
    .unwrap();
    let stored: Option<Vec<u8>> = direct
        .query_one("SELECT source FROM leads WHERE source IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!String::from_utf8_lossy(&stored.unwrap()).contains("marker"));
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn review_regressions_fail_closed() {
    let pg = PgCluster::start(&support::find_pg_bin(), "trust", &[]);
    let db = "ext_review";
    pg.fresh_database(db).await;
    let direct = support::connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        pg.port
    ))
    .await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = Proxy::start(&pg, &config()).await;
    let mut raw = Raw::connect(proxy.port, db).await;

    // A parameter number beyond PostgreSQL's limit is refused, not allocated.
    raw.send(&[
        parse_msg("", "INSERT INTO customers (email) VALUES ($99999999999)"),
        msg(b'S', b""),
    ])
    .await;
    let got = raw.until_ready().await;
    assert_eq!(tags(&got), "EZ", "{got:?}");

    // COPY FROM STDIN into encrypted columns only on its own in a Query.
    for sql in [
        "COPY customers (email) FROM STDIN; COPY customers (email) FROM STDIN",
        "COPY customers (email) FROM STDIN; SELECT 1 FROM customers WHERE email LIKE 'a%'",
    ] {
        let mut q = sql.as_bytes().to_vec();
        q.push(0);
        raw.send(&[msg(b'Q', &q)]).await;
        let got = raw.until_ready().await;
        assert_eq!(tags(&got), "EZ", "{sql}: {got:?}");
    }

    // Messages the server skips after an error change nothing pgveil knows:
    // the unnamed statement is still the INSERT, so its parameter is
    // encrypted after the Sync.
    raw.send(&[
        parse_msg("", "INSERT INTO customers (id, email) VALUES (1, $1)"),
        msg(b'S', b""),
    ])
    .await;
    assert_eq!(tags(&raw.until_ready().await), "1Z");
    raw.send(&[
        parse_msg("fail", "SELECT 1/0"),
        bind_msg("fail", &[]),
        execute_msg(),
        msg(b'H', b""),
    ])
    .await;
    let got = raw.until(b'E').await;
    assert_eq!(got.last().unwrap().0, b'E', "{got:?}");
    raw.send(&[
        parse_msg("", "SELECT $1::text"),
        bind_msg("", &["skipped-secret"]),
        execute_msg(),
        msg(b'S', b""),
        bind_msg("", &["kept-secret@x.com"]),
        execute_msg(),
        msg(b'S', b""),
    ])
    .await;
    assert_eq!(tags(&raw.until_ready().await), "Z");
    let got = raw.until_ready().await;
    assert_eq!(tags(&got), "2CZ", "{got:?}");
    let stored: Vec<u8> = direct
        .query_one("SELECT email FROM customers WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored[0], 1, "stored in plaintext: {stored:?}");

    // A settings change in a pipeline: statements on encrypted tables
    // behind it, before its ReadyForQuery, are refused.
    raw.send(&[
        parse_msg("", "SET standard_conforming_strings = off"),
        bind_msg("", &[]),
        execute_msg(),
        parse_msg(
            "",
            "INSERT INTO customers (id, email) VALUES (2, 'a\\', '), (3, $$zq-plain$$) --')",
        ),
        bind_msg("", &[]),
        execute_msg(),
        msg(b'S', b""),
    ])
    .await;
    let got = raw.until_ready().await;
    assert!(tags(&got).contains('E'), "{got:?}");
    let n: i64 = direct
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    drop(raw);
    proxy.stop().await;
}
