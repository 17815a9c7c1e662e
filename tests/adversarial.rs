//! pgveil played against as an attacker would: statements and sequences
//! built to get a configured column's plaintext into the database, its
//! catalog or its log, or to get ciphertext or wrong rows back, sent with a
//! real client through pgveil to a real PostgreSQL of this suite's own.
//!
//! Every attack writes a distinct marker (`advsecret<n>x`). Whatever the
//! client got, the suite then checks what reached the database directly:
//! stored rows and catalog definitions of the attack's own database, and,
//! after all attacks and a CHECKPOINT, every file of the data directory and
//! the server log. pgveil's own log lines are checked by `tests/log_audit.rs`
//! (the marker prefix is in `support::PLAINTEXT_MARKERS`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;

use support::{PgCluster, Proxy};

const CONFIG_COLUMNS: &str = r#"
[[encrypt]]
table = "sales.people"
column = "full_name"
[[encrypt]]
table = "sales.people"
column = "email"
domain = "email"
[[encrypt]]
table = "sales.people"
column = "birth_date"
type = "date"
[[encrypt]]
table = "sales.accounts"
column = "owner_email"
domain = "email"
[[encrypt]]
table = "sales.leads"
column = "contact_email"
domain = "email"
"#;

const SCHEMA: &str = "
CREATE SCHEMA sales;
CREATE TABLE sales.people (id int PRIMARY KEY, full_name bytea, email bytea, birth_date bytea, note text);
CREATE TABLE sales.accounts (id serial PRIMARY KEY, company text, owner_email text);
CREATE TABLE sales.leads (id int, contact_email bytea, note text);
CREATE TABLE public.notes (id serial PRIMARY KEY, body text);
CREATE TABLE public.stg (id int NOT NULL, full_name bytea, email bytea, birth_date bytea, note text);
";

/// What the client must get from the attack's last statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An error (pgveil's refusal, or PostgreSQL's own).
    Error,
    /// pgveil's refusal: SQLSTATE 0A000 (or pgveil's 42P01 relay) with a
    /// message starting `pgveil:`.
    Refused,
    /// Anything, as long as no plaintext reaches the database.
    Any,
}

struct Attack {
    steps: Vec<String>,
    expect: Expect,
}

fn attack(steps: &[&str], expect: Expect) -> Attack {
    Attack {
        steps: steps.iter().map(|s| s.to_string()).collect(),
        expect,
    }
}

/// Writes of the marker (`MKR`) into encrypted columns, in every form a value
/// can take in SQL.
fn writes() -> Vec<String> {
    let mut v = Vec::new();
    for value in [
        "'MKR'",
        "E'MKR'",
        "$$MKR$$",
        "$q$MKR$q$",
        "U&'MKR'",
        "'MKR'::text",
        "CAST('MKR' AS varchar(60))",
        "'MKR' COLLATE \"C\"",
        "('MKR')",
        "(SELECT 'MKR')",
        "lower('MKR')",
        "'adv' || substr('secret', 1, 0) || 'MKR'",
        "COALESCE(NULL, 'MKR')",
        "format('%s', 'MKR')",
        "convert_to('MKR', 'UTF8')",
        "'MKR'::bytea",
        "decode(encode('MKR'::bytea, 'hex'), 'hex')",
    ] {
        v.push(format!(
            "INSERT INTO sales.people (id, full_name) VALUES (1, {value})"
        ));
        v.push(format!(
            "INSERT INTO sales.accounts (company, owner_email) VALUES ('c', {value})"
        ));
    }
    v
}

/// The statement in wrappers that make PostgreSQL run it.
fn wrapped(stmt: &str) -> Vec<String> {
    vec![
        format!("EXPLAIN ANALYZE {stmt}"),
        format!("WITH w AS ({stmt} RETURNING 1) SELECT count(*) FROM w"),
        format!("/* a comment */ {stmt}"),
        format!("/* nested /* comment */ still */ {stmt}"),
        format!("SELECT 1; {stmt}"),
        format!("BEGIN; {stmt}; COMMIT"),
        format!("COPY public.notes(body) FROM STDIN;\n{stmt}"),
        format!("DO $do$ BEGIN {stmt}; END $do$"),
        format!(
            "CREATE FUNCTION public.f() RETURNS void LANGUAGE sql AS $f$ {stmt} $f$; SELECT public.f()"
        ),
        format!("PREPARE px AS {stmt}; EXECUTE px"),
        format!("EXPLAIN (ANALYZE, FORMAT JSON) {stmt}"),
        stmt.replace("sales.people", "\"sales\".\"people\"")
            .replace("sales.accounts", "SALES.Accounts"),
    ]
}

fn attacks() -> Vec<Attack> {
    let mut out = Vec::new();
    for w in writes() {
        out.push(attack(&[&w], Expect::Any));
    }
    for base in [
        "INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR')",
        "INSERT INTO sales.accounts (company, owner_email) VALUES ('c', 'MKR')",
        "INSERT INTO sales.leads VALUES (1, 'MKR', 'n')",
    ] {
        for w in wrapped(base) {
            out.push(attack(&[&w], Expect::Any));
        }
    }
    let refused: &[&[&str]] = &[
        // Reproductions of the review (issue 15).
        &[
            "COPY public.notes(body) FROM STDIN;\nINSERT INTO sales.accounts(company, owner_email) VALUES ('c', 'MKR')",
        ],
        &["ALTER SCHEMA sales RENAME TO s2"],
        &["ALTER SCHEMA \"sales\" RENAME TO s2"],
        &["ALTER TABLE sales.people RENAME TO p3"],
        &["ALTER TABLE sales.people SET SCHEMA public"],
        &["ALTER TABLE sales.people ATTACH PARTITION public.stg FOR VALUES IN ('MKR')"],
        &[
            "CREATE TABLE public.kid () INHERITS (sales.people); INSERT INTO public.kid (id, full_name) VALUES (1, 'MKR')",
        ],
        &[
            "CREATE TABLE public.c1 (a text, contact_email bytea CHECK (contact_email <> 'MKR')) INHERITS (sales.leads)",
        ],
        &["CREATE TABLE public.c2 (CHECK (full_name <> 'MKR')) INHERITS (sales.people)"],
        &["ALTER TABLE sales.people ADD COLUMN x text CHECK (email <> 'MKR')"],
        &["ALTER TABLE sales.people ADD CONSTRAINT ck CHECK (full_name <> 'MKR')"],
        &[
            "CREATE TABLE public.g1 (y text GENERATED ALWAYS AS (CASE WHEN email = 'MKR' THEN 'a' END) STORED) INHERITS (sales.people)",
        ],
        &["CREATE INDEX ON sales.people ((full_name = 'MKR'))"],
        &["CREATE INDEX ON sales.people ((lower(encode(email, 'escape')))) WHERE note = 'MKR'"],
        &["CREATE STATISTICS st1 ON (full_name || 'MKR'::bytea), id FROM sales.people"],
        &["ALTER TABLE sales.people ADD CONSTRAINT ex EXCLUDE (id WITH =) WHERE (email <> 'MKR')"],
        &["SELECT query_to_xml('select email from sales.people', true, false, '')"],
        &["SELECT table_to_xml('sales.people'::regclass, true, false, '')"],
        &["SELECT schema_to_xml('sales', true, false, '')"],
        &["SELECT database_to_xml(true, false, '')"],
        &["SELECT * FROM query_to_xml_and_xmlschema('select 1', true, false, '')"],
        &[
            "INSERT INTO sales.accounts (company, owner_email) SELECT 'v', e FROM (VALUES ('MKR')) v(e) WHERE e = 'MKR'",
        ],
        &[
            "INSERT INTO sales.accounts (company, owner_email) SELECT 'v', e FROM (VALUES ('MKR')) v(e) WHERE e <> 'MKR'",
        ],
        &[
            "INSERT INTO sales.accounts (company, owner_email) SELECT 'v', e FROM (VALUES ('MKR')) v(e) WHERE e LIKE '%MKR%'",
        ],
        &[
            "INSERT INTO sales.accounts (company, owner_email) SELECT 'v', e FROM (VALUES ('MKR')) v(e) WHERE length(e) > 1",
        ],
        &[
            "INSERT INTO sales.accounts (company, owner_email) SELECT 'v', e FROM (VALUES ('MKR')) v(e) ORDER BY e",
        ],
        &[
            "INSERT INTO sales.accounts (company, owner_email) SELECT upper(e), e FROM (VALUES ('MKR')) v(e)",
        ],
        &[
            "INSERT INTO sales.accounts (company, owner_email) SELECT e, e FROM (VALUES ('MKR')) v(e) WHERE e IN ('MKR', 'x')",
        ],
        &[
            "UPDATE sales.accounts SET owner_email = v.e FROM (VALUES ('MKR')) v(e) WHERE v.e LIKE 'adv%'",
        ],
        &["COPY sales.people (id, email) FROM STDIN;\n1\tM\n\\.\n"],
        &["CREATE TABLE public.pt PARTITION OF sales.people FOR VALUES IN ('MKR')"],
        &[
            "SELECT dblink_exec('dbname=x', 'INSERT INTO sales.people (id, full_name) VALUES (1, ''MKR'')')",
        ],
        &["SELECT 1 FROM sales.people WHERE full_name = 'MKR' AND U&\"email\" = 'MKR'"],
        &[
            "SET search_path = sales, public",
            "WITH people AS (SELECT 1) INSERT INTO people (id, full_name) VALUES (1, 'MKR')",
        ],
        &[
            "SET search_path = sales, public",
            "WITH people AS (SELECT 1 AS id) UPDATE people SET full_name = 'MKR' WHERE id = 1",
        ],
        // Second review: names a table only gets with its rows, code in
        // escape strings, functional notation, more string-SQL functions.
        &[
            "DROP TABLE sales.leads",
            "CREATE TABLE public.l2 (id int, contact_email bytea, note text)",
            "INSERT INTO public.l2 VALUES (1, 'prefilled', 'n')",
            "ALTER TABLE public.l2 SET SCHEMA sales",
            "ALTER TABLE sales.l2 RENAME TO leads",
        ],
        &[
            "DROP TABLE sales.leads",
            "CREATE SCHEMA stage",
            "CREATE TABLE stage.leads (id int, contact_email bytea, note text)",
            "ALTER TABLE stage.leads SET SCHEMA sales",
        ],
        &["CREATE SCHEMA s9", "ALTER SCHEMA s9 RENAME TO sales"],
        // Refused: the INSERT after it would otherwise write plaintext
        // into what is then a child of an encrypted table.
        &["ALTER TABLE public.stg INHERIT sales.people"],
        &["ALTER TABLE public.stg INHERIT sales.people; INSERT INTO public.stg VALUES (1, 'MKR')"],
        &["ALTER TABLE public.stg INHERIT \"sales\".\"people\""],
        &["ALTER TABLE sales.people ATTACH PARTITION public.stg DEFAULT"],
        &["DO E'BEGIN INSERT INTO sales.\\x70eople (id, full_name) VALUES (1, ''MKR''); END'"],
        &[
            "DO U&'BEGIN INSERT INTO sales.!0070eople (id, full_name) VALUES (1, ''MKR''); END' UESCAPE '!'",
        ],
        &[
            "CREATE FUNCTION public.f2() RETURNS void LANGUAGE sql AS E'INSERT INTO sales.\\160eople (id, full_name) VALUES (1, ''MKR'')'",
        ],
        &["SELECT p.row_to_json FROM sales.people p"],
        &["SELECT (p).to_json FROM sales.people p"],
        &[
            "SELECT cron.schedule('j', '* * * * *', 'INSERT INTO sales.people (id, full_name) VALUES (1, ''MKR'')')",
        ],
        &[
            "SELECT * FROM crosstab('select id, note, full_name from sales.people') AS t(a int, b bytea)",
        ],
        &["SELECT * FROM ts_stat('select to_tsvector(note) from sales.people')"],
        &["/* MKR */ SELECT query_to_xml('select 1', true, false, '') -- MKR"],
        &[
            "ALTER TABLE sales.people DROP COLUMN id; INSERT INTO sales.people VALUES ('MKR', NULL, NULL, 'n')",
        ],
    ];
    for steps in refused {
        out.push(attack(steps, Expect::Refused));
    }
    let errors: &[&[&str]] = &[
        // Text PostgreSQL's lexer or parser rejects: never forwarded when it
        // names encrypted tables.
        &["INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR') garbage"],
        &["INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR"],
        &["INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR') ;; SELEC 1"],
        &[
            "SET standard_conforming_strings = off; INSERT INTO sales.people (id, full_name) VALUES (1, 'a\\' || ''MKR'')",
        ],
        &["INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR' 'continued')"],
        &["INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR'\n'continued')"],
    ];
    for steps in errors {
        out.push(attack(steps, Expect::Error));
    }
    let sequences: &[&[&str]] = &[
        &[
            "CREATE VIEW public.pv AS SELECT id, full_name FROM sales.people",
            "INSERT INTO public.pv (id, full_name) VALUES (1, 'MKR')",
        ],
        &[
            "CREATE TABLE public.kid2 () INHERITS (sales.people)",
            "INSERT INTO public.kid2 (id, full_name) VALUES (1, 'MKR')",
        ],
        &[
            "SET search_path = sales, public",
            "INSERT INTO people (id, full_name) VALUES (1, 'MKR')",
        ],
        &[
            "SET search_path = sales, public",
            "INSERT INTO accounts (company, owner_email) VALUES ('c', 'MKR')",
        ],
        &[
            "PREPARE p1 (int, text) AS INSERT INTO sales.people (id, full_name) VALUES ($1, $2::bytea)",
            "EXECUTE p1 (1, 'MKR')",
        ],
        &[
            "PREPARE p2 AS INSERT INTO sales.accounts (company, owner_email) VALUES ($1, $2)",
            "EXPLAIN ANALYZE EXECUTE p2 ('c', 'MKR')",
        ],
        &[
            "BEGIN",
            "DECLARE c1 CURSOR FOR SELECT full_name FROM sales.people WHERE full_name = 'MKR'",
            "FETCH ALL c1",
            "COMMIT",
        ],
        &[
            "CREATE SCHEMA s3 CREATE TABLE k3 () INHERITS (sales.people)",
            "INSERT INTO s3.k3 (id, full_name) VALUES (1, 'x')",
            "SELECT 1",
        ],
        &[
            "CREATE RULE r1 AS ON INSERT TO public.notes DO ALSO INSERT INTO sales.people (id, full_name) VALUES (9, 'MKR')",
        ],
        &["CREATE TABLE public.lk (LIKE sales.people)", "SELECT 1"],
        &["INSERT INTO sales.people (id, full_name) SELECT 1, 'MKR' WHERE 'MKR' = 'MKR'"],
        &[
            "INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR') ON CONFLICT (id) DO UPDATE SET full_name = 'MKR'",
        ],
        &[
            "MERGE INTO sales.people t USING (SELECT 1 AS id) s ON t.id = s.id WHEN NOT MATCHED THEN INSERT (id, full_name) VALUES (1, 'MKR')",
        ],
        &[
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "INSERT INTO sales.people (id, full_name) VALUES (1, 'a\\' || ''MKR'')",
        ],
        &[
            "CREATE TEMP TABLE t1 AS SELECT 'MKR'::bytea AS full_name",
            "INSERT INTO sales.people (id, full_name) SELECT 1, full_name FROM t1",
        ],
        &[
            "INSERT INTO sales.people (id, full_name) VALUES (1, 'x')",
            "UPDATE sales.people SET full_name = full_name || 'MKR'::bytea",
        ],
        &[
            "INSERT INTO public.notes (body) VALUES ('harmless')",
            "INSERT INTO sales.accounts (company, owner_email) SELECT 'c', body || 'MKR' FROM public.notes",
        ],
        &[
            "SELECT 1; SELECT 2; INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR'); SELECT 3",
        ],
        &[";;INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR');;"],
        &["insert/**/into/**/sales.people(id,full_name)values(1,'MKR')"],
        &["INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR') RETURNING full_name"],
        &["INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR'), (2, 'MKR2')"],
        &["INSERT INTO sales.people VALUES (1, 'MKR', NULL, NULL, 'n')"],
        &["INSERT INTO sales.people (id, birth_date) VALUES (1, 'MKR')"],
        &[
            "WITH v(e) AS (VALUES ('MKR')) INSERT INTO sales.accounts (company, owner_email) SELECT 'c', e FROM v",
        ],
        &[
            "WITH v(e) AS (VALUES ('MKR')) INSERT INTO sales.accounts (company, owner_email) SELECT e, e FROM v",
        ],
        &[
            "INSERT INTO sales.accounts (company, owner_email) SELECT 'c', x FROM unnest(ARRAY['MKR']) x",
        ],
        &["INSERT INTO sales.accounts (company, owner_email) SELECT 'c', (ARRAY['MKR'])[1]"],
        &[
            "INSERT INTO sales.accounts (company, owner_email) VALUES ('c', (SELECT body FROM public.notes LIMIT 1) || 'MKR')",
        ],
        &["TABLE sales.people"],
        &["SELECT * FROM ROWS FROM (query_to_xml('select 1', true, false, '')) x"],
        &["SELECT pg_catalog.query_to_xml('select full_name from sales.people', true, false, '')"],
        &["SELECT \"query_to_xml\"('select 1', true, false, '')"],
        &[
            "CREATE FUNCTION public.w(t text) RETURNS void LANGUAGE plpgsql AS $b$ BEGIN EXECUTE format('INSERT INTO %s (id, full_name) VALUES (1, %L)', 'sales.' || 'people', t); END $b$",
        ],
        &[
            "DO $$ BEGIN EXECUTE 'INSERT INTO sales.' || 'people (id, full_name) VALUES (1, ''MKR'')'; END $$",
        ],
        &[
            "PREPARE p3 AS SELECT 1",
            "DEALLOCATE p3",
            "PREPARE p3 AS INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR')",
            "EXECUTE p3",
        ],
        &[
            "CREATE VIEW public.pv2 AS SELECT id, full_name FROM sales.people WHERE full_name = 'MKR'",
        ],
        &[
            "CREATE MATERIALIZED VIEW public.mv AS SELECT id, 'MKR'::bytea AS full_name FROM sales.people",
        ],
        &["CREATE TABLE public.ctas AS SELECT * FROM sales.people"],
        &["SELECT * INTO public.si FROM sales.people"],
        &["COMMENT ON TABLE sales.people IS 'customers'"],
        &["NOTIFY people_changed, 'email updated'"],
        &["WITH people AS (SELECT 1) INSERT INTO sales.people (id, full_name) VALUES (1, 'MKR')"],
        &[
            "CREATE SCHEMA vs",
            "CREATE VIEW vs.pv4 AS SELECT id, full_name FROM sales.people",
            "ALTER SCHEMA vs RENAME TO vs2",
            "INSERT INTO vs2.pv4 (id, full_name) VALUES (1, 'MKR')",
        ],
        &[
            "CREATE TABLE public.kid4 () INHERITS (sales.people)",
            "ALTER SCHEMA public RENAME TO pub2",
            "INSERT INTO pub2.kid4 (id, full_name) VALUES (1, 'MKR')",
        ],
        &["SELECT id FROM sales.people WHERE email = \"MKR\""],
    ];
    for steps in sequences {
        out.push(attack(steps, Expect::Any));
    }
    out
}

fn marker(n: usize) -> String {
    format!("advsecret{n}x")
}

async fn run_attack(pg: &PgCluster, proxy: &Proxy, n: usize, a: &Attack) -> Result<(), String> {
    let db = format!("adv_{n}");
    let admin = pg.connect().await;
    admin
        .batch_execute(&format!("CREATE DATABASE {db} TEMPLATE adv_template"))
        .await
        .map_err(|e| format!("create database: {e}"))?;
    let conn = proxy
        .conn_str(pg)
        .replace("dbname=postgres", &format!("dbname={db}"));
    let c = support::connect(&conn).await;
    let m = marker(n);
    let mut last = Ok(());
    for step in &a.steps {
        let sql = step.replace("MKR", &m);
        last = c.simple_query(&sql).await.map(|_| ()).map_err(|e| {
            let db = e.as_db_error();
            (
                db.map(|d| d.code().code().to_string()).unwrap_or_default(),
                db.map(|d| d.message().to_string())
                    .unwrap_or_else(|| e.to_string()),
            )
        });
        if let Err((_, msg)) = &last
            && msg.contains(&m)
        {
            return Err(format!("the client's error quotes the marker: {msg}"));
        }
    }
    match (a.expect, &last) {
        (Expect::Refused, Err((code, msg)))
            if msg.starts_with("pgveil:") && (code == "0A000" || code == "42P01") => {}
        (Expect::Refused, other) => return Err(format!("not refused: {other:?}")),
        (Expect::Error, Err(_)) | (Expect::Any, _) => {}
        (Expect::Error, Ok(())) => return Err("accepted".into()),
    }
    drop(c);
    let direct = support::connect(
        &pg.conn_str()
            .replace("dbname=postgres", &format!("dbname={db}")),
    )
    .await;
    if let Some(place) = stored_plaintext(&direct, &m).await {
        return Err(format!("plaintext in {place}"));
    }
    Ok(())
}

/// Where the marker sits in plaintext in a database: rows of every user
/// table, and every definition the catalog stores.
async fn stored_plaintext(c: &tokio_postgres::Client, m: &str) -> Option<String> {
    let tables = c
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm', 'p') \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
            &[],
        )
        .await
        .ok()?;
    for t in tables {
        let name: String = t.get(0);
        let sql = format!(
            "SELECT count(*) FROM {name} x WHERE x::text LIKE '%' || $1 || '%' \
             OR encode(convert_to(x::text, 'UTF8'), 'hex') LIKE '%' || encode(convert_to($1, 'UTF8'), 'hex') || '%' \
             OR x::text LIKE '%' || encode(convert_to($1, 'UTF8'), 'hex') || '%'"
        );
        if let Ok(row) = c.query_one(&sql, &[&m]).await
            && row.get::<_, i64>(0) > 0
        {
            return Some(format!("table {name}"));
        }
    }
    let catalog = "SELECT 'constraint', pg_get_constraintdef(oid) FROM pg_constraint \
         UNION ALL SELECT 'index', pg_get_indexdef(indexrelid) FROM pg_index \
         UNION ALL SELECT 'view', pg_get_viewdef(oid) FROM pg_class WHERE relkind IN ('v', 'm') \
         UNION ALL SELECT 'bound', pg_get_expr(relpartbound, oid) FROM pg_class WHERE relpartbound IS NOT NULL \
         UNION ALL SELECT 'default', pg_get_expr(adbin, adrelid) FROM pg_attrdef \
         UNION ALL SELECT 'statistics', pg_get_statisticsobjdef(oid) FROM pg_statistic_ext \
         UNION ALL SELECT 'function', prosrc FROM pg_proc WHERE pronamespace <> 'pg_catalog'::regnamespace \
         UNION ALL SELECT 'rule', pg_get_ruledef(oid) FROM pg_rewrite \
         UNION ALL SELECT 'comment', description FROM pg_description";
    for row in c.query(catalog, &[]).await.ok()? {
        let what: String = row.get(0);
        let def: Option<String> = row.get(1);
        if def.is_some_and(|d| d.contains(m)) {
            return Some(format!("the catalog ({what})"));
        }
    }
    None
}

/// The attack numbers whose marker occurs in a file (one pass over it).
fn markers_in(path: &Path) -> Vec<usize> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for at in memchr::memmem::find_iter(&bytes, b"advsecret") {
        let digits: String = bytes[at + 9..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .map(|b| *b as char)
            .collect();
        if let Ok(n) = digits.parse() {
            found.push(n);
        }
    }
    found
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_leave_no_plaintext_anywhere() {
    let pg = PgCluster::start(&support::find_pg_bin(), "scram-sha-256", &[]);
    let admin = pg.connect().await;
    admin
        .batch_execute("CREATE DATABASE adv_template")
        .await
        .unwrap();
    let tpl = support::connect(
        &pg.conn_str()
            .replace("dbname=postgres", "dbname=adv_template"),
    )
    .await;
    tpl.batch_execute(SCHEMA).await.unwrap();
    drop(tpl);
    let config = format!(
        "[keys]\nmaster_key_file = \"{}\"\n{CONFIG_COLUMNS}",
        support::key_file().display()
    );
    let proxy = Proxy::start(&pg, &config).await;
    let all = attacks();
    assert!(all.len() >= 150, "{} attacks", all.len());
    let mut failures = Vec::new();
    for (n, a) in all.iter().enumerate() {
        if let Err(e) = run_attack(&pg, &proxy, n, a).await {
            eprintln!("attack #{n} failed: {e}");
            failures.push(format!("#{n} {:?}: {e}", a.steps));
        }
    }
    admin.batch_execute("CHECKPOINT").await.unwrap();
    let mut files = Vec::new();
    files_under(&pg.dir, &mut files);
    for f in &files {
        for n in markers_in(f) {
            failures.push(format!("#{n}: marker found in {}", f.display()));
        }
    }
    proxy.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} attacks got through:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

/// The extended protocol and pipelines: SQL `EXECUTE` of a protocol
/// statement, DDL and a write in one pipeline, one parameter in two roles,
/// and PostgreSQL's names for parenthesised columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_attacks_leave_no_plaintext() {
    use support::raw::{Raw, bind_msg, execute_msg, msg, parse_msg};

    let pg = PgCluster::start(&support::find_pg_bin(), "trust", &[]);
    pg.fresh_database("advp").await;
    let direct = support::connect(&pg.conn_str().replace("dbname=postgres", "dbname=advp")).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let config = format!(
        "[keys]\nmaster_key_file = \"{}\"\n{CONFIG_COLUMNS}",
        support::key_file().display()
    );
    let proxy = Proxy::start(&pg, &config).await;
    let c = support::connect(
        &proxy
            .conn_str(&pg)
            .replace("dbname=postgres", "dbname=advp"),
    )
    .await;

    // A statement prepared through the protocol, run with SQL EXECUTE.
    let m = marker(1000);
    let mut raw = Raw::connect(proxy.port, "advp").await;
    raw.send(&[
        parse_msg(
            "pst1",
            "INSERT INTO sales.accounts (company, owner_email) VALUES ($1, $2)",
        ),
        msg(b'S', b""),
    ])
    .await;
    raw.until_ready().await;
    // Its arguments are encrypted as at Bind (checked below), or refused.
    for sql in [
        format!("EXPLAIN ANALYZE EXECUTE pst1('c', '{m}')"),
        format!("EXECUTE pst1('c', '{m}')"),
    ] {
        let mut body = sql.clone().into_bytes();
        body.push(0);
        raw.send(&[msg(b'Q', &body)]).await;
        raw.until_ready().await;
    }
    // A name never prepared: PostgreSQL would log the arguments with its
    // error; pgveil answers in its place.
    for sql in [
        format!("EXECUTE never_prepared('c', '{m}')"),
        format!("EXPLAIN ANALYZE EXECUTE never_prepared('c', '{m}')"),
    ] {
        let mut body = sql.clone().into_bytes();
        body.push(0);
        raw.send(&[msg(b'Q', &body)]).await;
        let got = raw.until_ready().await;
        assert!(
            got.iter()
                .any(|(t, b)| *t == b'E' && String::from_utf8_lossy(b).contains("Mpgveil:")),
            "{sql}: {got:?}"
        );
    }
    drop(raw);

    // One parameter as ciphertext and as plaintext.
    let m = marker(1001);
    for sql in [
        "INSERT INTO sales.accounts (company, owner_email) SELECT 'p', $1 WHERE $1 LIKE '%secret%'",
        "INSERT INTO sales.accounts (company, owner_email) VALUES (upper($1), $1)",
        "INSERT INTO sales.accounts (company, owner_email) VALUES ($1 || '', $1)",
    ] {
        let e = c.execute(sql, &[&m]).await.expect_err(sql);
        assert!(
            e.as_db_error()
                .is_some_and(|d| d.message().starts_with("pgveil:")),
            "{sql}: {e}"
        );
    }

    // DDL and a write to what it created, in one pipeline.
    let m = marker(1002);
    let mut raw = Raw::connect(proxy.port, "advp").await;
    raw.send(&[
        parse_msg("", "CREATE TABLE public.kid () INHERITS (sales.people)"),
        bind_msg("", &[]),
        execute_msg(),
        parse_msg(
            "",
            &format!("INSERT INTO public.kid (id, full_name) VALUES (1, '{m}')"),
        ),
        bind_msg("", &[]),
        execute_msg(),
        msg(b'S', b""),
    ])
    .await;
    let got = raw.until_ready().await;
    let errors: Vec<String> = got
        .iter()
        .filter(|(t, _)| *t == b'E')
        .map(|(_, b)| String::from_utf8_lossy(b).to_string())
        .collect();
    assert!(errors.iter().any(|e| e.contains("Mpgveil:")), "{got:?}");

    // Parenthesised and subquery columns keep their names: the literal is
    // encrypted and the count is PostgreSQL's.
    c.execute(
        "INSERT INTO sales.accounts (company, owner_email) VALUES ('k', 'known@example.com')",
        &[],
    )
    .await
    .unwrap();
    for sql in [
        "SELECT count(*) FROM (SELECT (owner_email) FROM sales.accounts) x WHERE x.owner_email = 'known@example.com'",
        "SELECT count(*) FROM (SELECT (SELECT (a.owner_email)) FROM sales.accounts a) x WHERE x.owner_email = 'known@example.com'",
        "SELECT count(*) FROM (SELECT owner_email::text FROM sales.accounts) x WHERE x.owner_email = 'known@example.com'",
    ] {
        match c.simple_query(sql).await {
            Ok(msgs) => {
                let n = msgs.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                    _ => None,
                });
                assert_eq!(n.as_deref(), Some("1"), "{sql}");
            }
            Err(e) => {
                let db = e.as_db_error().expect("a database error");
                assert!(
                    db.message().starts_with("pgveil:"),
                    "{sql}: {}",
                    db.message()
                );
            }
        }
    }

    // Merged USING columns come back as PostgreSQL returns them on plaintext.
    c.execute(
        "INSERT INTO sales.people (id, full_name, email) VALUES (1, 'Ada', 'ada@x'), (2, 'Bob', 'bob@x')",
        &[],
    )
    .await
    .unwrap();
    let msgs = c
        .simple_query(
            "SELECT * FROM sales.people p1 FULL JOIN sales.people p2 USING (email) ORDER BY p1.id",
        )
        .await
        .unwrap();
    let rows: Vec<Vec<Option<String>>> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0][0].as_deref(), Some("ada@x"), "{rows:?}");
    assert_eq!(rows[0][2].as_deref(), Some("Ada"), "{rows:?}");
    assert_eq!(rows[0][6].as_deref(), Some("Ada"), "{rows:?}");
    let copied = {
        use futures_util::StreamExt;
        let stream = c
            .copy_out("COPY (SELECT * FROM sales.people p1 JOIN sales.people p2 USING (id) ORDER BY id) TO STDOUT")
            .await
            .unwrap();
        let chunks: Vec<_> = stream.collect().await;
        chunks
            .into_iter()
            .map(|b| String::from_utf8(b.unwrap().to_vec()).unwrap())
            .collect::<String>()
    };
    let first: Vec<&str> = copied.lines().next().unwrap().split('\t').collect();
    assert_eq!(first[..3], ["1", "Ada", "ada@x"], "{copied}");
    assert_eq!(first[5..8], ["Ada", "ada@x", "\\N"], "{copied}");

    for n in 1000..=1002 {
        assert_eq!(stored_plaintext(&direct, &marker(n)).await, None, "#{n}");
    }
    direct.batch_execute("CHECKPOINT").await.unwrap();
    let mut files = Vec::new();
    files_under(&pg.dir, &mut files);
    for f in &files {
        assert!(markers_in(f).is_empty(), "marker found in {}", f.display());
    }
    proxy.stop().await;
}
