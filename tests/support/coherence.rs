//! What the catalog-coherence tests share: a schema with configured
//! tables, views, children and partitions, pgveil in front of it, and
//! checks that no marker value was stored in plaintext.

use super::{PgCluster, Proxy};
use tokio_postgres::{Client, SimpleQueryMessage};

pub const CONFIG_COLUMNS: &str = r#"
[[encrypt]]
table = "sales.people"
column = "full_name"
[[encrypt]]
table = "sales.accounts"
column = "owner_email"
domain = "email"
[[encrypt]]
table = "sales.parts"
column = "full_name"
[[encrypt]]
table = "sales.leads"
column = "contact_email"
domain = "email"
"#;

pub const SCHEMA: &str = "
CREATE SCHEMA sales;
CREATE TABLE sales.people (id int PRIMARY KEY, full_name bytea, note text);
CREATE TABLE sales.accounts (id serial PRIMARY KEY, company text, owner_email text);
CREATE TABLE sales.leads (id text, contact_email bytea, note text);
CREATE TABLE public.stg (id int NOT NULL, full_name bytea, note text);
CREATE TABLE sales.parts (id int, full_name bytea) PARTITION BY LIST (id);
CREATE TABLE public.notes (id serial PRIMARY KEY, body text);
CREATE TABLE public.kid () INHERITS (sales.people);
CREATE VIEW public.pv AS SELECT id, full_name FROM sales.people;
";

pub fn marker(n: i32) -> String {
    format!("cohsecret{n}x")
}

/// A database of its own with the schema, pgveil in front of it, and a
/// direct client to check what was stored.
pub async fn setup(pg: &PgCluster, db: &str) -> (Proxy, Client, String) {
    setup_with(pg, db, "").await
}

/// [`setup`] with more configuration (sections before `[[encrypt]]`).
pub async fn setup_with(pg: &PgCluster, db: &str, extra: &str) -> (Proxy, Client, String) {
    pg.fresh_database(db).await;
    let direct = super::connect(
        &pg.conn_str()
            .replace("dbname=postgres", &format!("dbname={db}")),
    )
    .await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let config = format!(
        "{extra}\n[keys]\nmaster_key_file = \"{}\"\n{CONFIG_COLUMNS}",
        super::key_file().display()
    );
    let proxy = Proxy::start(pg, &config).await;
    let through = proxy
        .conn_str(pg)
        .replace("dbname=postgres", &format!("dbname={db}"));
    (proxy, direct, through)
}

/// Every stored value of the tables pgveil encrypts into, as text: no
/// marker may appear in any of them.
pub async fn assert_no_plaintext(direct: &Client, what: &str) {
    let rows = direct
        .simple_query(
            "SELECT 'people', encode(full_name, 'escape') FROM ONLY sales.people \
             UNION ALL SELECT 'kid', encode(full_name, 'escape') FROM public.kid \
             UNION ALL SELECT 'accounts', owner_email FROM sales.accounts \
             UNION ALL SELECT 'leads', encode(contact_email, 'escape') || ' ' || coalesce(note, '') FROM sales.leads \
             UNION ALL SELECT 'notes', body FROM public.notes",
        )
        .await
        .unwrap();
    for m in rows {
        if let SimpleQueryMessage::Row(r) = m {
            let v = r.get(1).unwrap_or_default();
            assert!(
                !v.contains("cohsecret"),
                "{what}: plaintext stored in {}: {v}",
                r.get(0).unwrap_or_default()
            );
        }
    }
}

/// Runs `sql` (simple protocol); an error is an acceptable outcome (a
/// refusal), as long as nothing reached the database in plaintext.
pub async fn run(c: &Client, sql: &str) -> Result<Vec<SimpleQueryMessage>, String> {
    c.simple_query(sql).await.map_err(|e| {
        e.as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string())
    })
}

/// Whether `rel` is now an inheritance child or partition, as PostgreSQL
/// says.
pub async fn is_child(direct: &Client, rel: &str) -> bool {
    direct
        .query(
            "SELECT count(*) FROM pg_inherits WHERE inhrelid = $1::text::regclass",
            &[&rel],
        )
        .await
        .unwrap()[0]
        .get::<_, i64>(0)
        == 1
}

/// No row of `sql` (one text column, read straight from the database)
/// holds a marker.
pub async fn assert_no_marker(direct: &Client, sql: &str, what: &str) {
    for r in direct.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(r) = r {
            assert!(
                !r.get(0).unwrap_or_default().contains("cohsecret"),
                "{what}: plaintext stored"
            );
        }
    }
}
