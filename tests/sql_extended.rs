//! End-to-end: encrypted columns through the extended query protocol,
//! with tokio-postgres against a real PostgreSQL: named and unnamed
//! statements, binary parameters and results, arrays, pipelining,
//! portals with row limits, refusals in the middle of a pipeline.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::error::Error;

use bytes::{BufMut, BytesMut};
use support::{PgCluster, Proxy, cluster};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

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

/// A `date` in PostgreSQL's binary form (days since 2000-01-01), so the
/// tests need no date crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Days(i32);

impl ToSql for Days {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_i32(self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
    to_sql_checked!();
}

impl<'a> FromSql<'a> for Days {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Days, Box<dyn Error + Sync + Send>> {
        Ok(Days(i32::from_be_bytes(raw.try_into()?)))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
}

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
