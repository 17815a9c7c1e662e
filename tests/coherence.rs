//! pgveil judges each statement by the catalog and session state
//! PostgreSQL will execute it with: DDL rolled back (whole transactions
//! and savepoints), DDL committed by another session while this one had
//! the catalog cached, a session that redefines `=` and puts its own schema
//! before `pg_catalog`, and prepared-statement names reused after
//! DEALLOCATE. Every case writes a marker (`cohsecret<n>x`) through
//! pgveil and then reads what PostgreSQL stored, straight from the
//! database: the marker must never be there in plaintext.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::PgCluster;
use support::coherence::{assert_no_marker, assert_no_plaintext, is_child, marker, run, setup};
use tokio_postgres::SimpleQueryMessage;

/// A view and a child dropped inside a transaction that rolls back (whole,
/// or to a savepoint) are still there: writes through them are encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_ddl_is_not_kept() {
    let pg = support::cluster();
    let (proxy, direct, through) = setup(pg, "coh_rollback").await;
    let c = support::connect(&through).await;
    let rounds: &[&[&str]] = &[
        &["BEGIN; SAVEPOINT s; DROP VIEW public.pv; ROLLBACK TO s; COMMIT"],
        &[
            "BEGIN",
            "SAVEPOINT s",
            "DROP VIEW public.pv",
            "ROLLBACK TO s",
            "COMMIT",
        ],
        &["BEGIN", "DROP VIEW public.pv", "ROLLBACK"],
        &["BEGIN; DROP VIEW public.pv; ROLLBACK"],
        &["BEGIN", "DROP TABLE public.kid", "ROLLBACK"],
        &[
            "BEGIN",
            "SAVEPOINT a",
            "ALTER TABLE public.kid NO INHERIT sales.people",
            "ROLLBACK TO a",
            "COMMIT",
        ],
        &["BEGIN", "DROP VIEW public.pv", "SELECT 1/0", "ROLLBACK"],
    ];
    let mut n: i32 = 0;
    for (i, steps) in rounds.iter().enumerate() {
        for s in *steps {
            let _ = run(&c, s).await;
        }
        for insert in [
            "INSERT INTO public.pv (id, full_name) VALUES ({id}, '{m}')",
            "INSERT INTO public.kid (id, full_name) VALUES ({id}, '{m}')",
        ] {
            n += 1;
            let sql = insert
                .replace("{id}", &n.to_string())
                .replace("{m}", &marker(n));
            let got = run(&c, &sql).await;
            assert_no_plaintext(&direct, &format!("round {i}: {sql}")).await;
            // What was accepted reads back as written, through pgveil.
            if got.is_ok() {
                let rows = c
                    .query("SELECT full_name FROM sales.people WHERE id = $1", &[&n])
                    .await
                    .unwrap();
                let back: String = rows[0].get(0);
                assert_eq!(back, marker(n), "round {i}: {sql}");
            }
        }
    }
    // The view and the child are still there, as PostgreSQL says.
    let rows = direct
        .query(
            "SELECT count(*) FROM pg_class WHERE relname IN ('pv', 'kid') AND relnamespace = 'public'::regnamespace",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 2);
    drop(c);
    proxy.stop().await;
}

/// Session A changes the schema in a transaction; session B loads (and
/// caches) the catalog meanwhile; once A commits, B's writes follow the
/// committed schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sessions_commit_reaches_this_one() {
    let pg = support::cluster();
    let (proxy, direct, through) = setup(pg, "coh_sessions").await;
    let a = support::connect(&through).await;
    let b = support::connect(&through).await;
    b.simple_query("SELECT 1").await.unwrap();

    // A drops the first column of leads: positions shift.
    a.simple_query("BEGIN").await.unwrap();
    a.simple_query("ALTER TABLE sales.leads DROP COLUMN id")
        .await
        .unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    a.simple_query("COMMIT").await.unwrap();
    let m = marker(1);
    let got = run(&b, &format!("INSERT INTO sales.leads VALUES ('{m}', 'n')")).await;
    assert_no_plaintext(
        &direct,
        "positional insert after another session's DROP COLUMN",
    )
    .await;
    got.unwrap();
    let rows = b
        .query(
            "SELECT contact_email FROM sales.leads WHERE note = 'n'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), m);

    // A creates a view over a configured table; B had loaded the catalog
    // while A's transaction was open.
    a.simple_query("BEGIN; CREATE VIEW public.pv2 AS SELECT id, full_name FROM sales.people")
        .await
        .unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    b.query("SELECT 1", &[]).await.unwrap();
    a.simple_query("COMMIT").await.unwrap();
    let m = marker(2);
    let _ = run(
        &b,
        &format!("INSERT INTO public.pv2 (id, full_name) VALUES (2, '{m}')"),
    )
    .await;
    assert_no_plaintext(&direct, "insert into another session's new view").await;
    // Extended protocol too.
    let m = marker(3);
    let _ = b
        .execute(
            "INSERT INTO public.pv2 (id, full_name) VALUES (3, $1)",
            &[&m],
        )
        .await;
    assert_no_plaintext(&direct, "extended insert into another session's new view").await;

    // A migration transaction that fails and rolls back while B writes.
    a.simple_query("BEGIN").await.unwrap();
    a.simple_query("DROP VIEW public.pv2").await.unwrap();
    let _ = run(&a, "ALTER TABLE sales.nonexistent ADD COLUMN x int").await;
    // B's write waits for A's lock on the view; A rolls back meanwhile.
    let m = marker(4);
    let b = std::sync::Arc::new(b);
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            let _ = run(
                &b,
                &format!("INSERT INTO public.pv2 (id, full_name) VALUES (4, '{m}')"),
            )
            .await;
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    a.simple_query("ROLLBACK").await.unwrap();
    writer.await.unwrap();
    let m = marker(5);
    let _ = run(
        &b,
        &format!("INSERT INTO public.pv2 (id, full_name) VALUES (5, '{m}')"),
    )
    .await;
    assert_no_plaintext(
        &direct,
        "insert while another session's migration rolls back",
    )
    .await;
    drop((a, b));
    proxy.stop().await;
}

/// pgveil's catalog query runs on the client's connection: a session that
/// defines its own `=` for oids and bytea, puts `public` first and then
/// writes, still gets its values encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_operators_do_not_blind_the_catalog() {
    let pg = support::cluster();
    let (proxy, direct, through) = setup(pg, "coh_operators").await;
    let c = support::connect(&through).await;
    let defs = "
        CREATE FUNCTION public.never(oid, oid) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false';
        CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.never);
        CREATE FUNCTION public.never_name(name, name) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false';
        CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = name, FUNCTION = public.never_name);
        CREATE FUNCTION public.never_char(\"char\", \"char\") RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false';
        CREATE OPERATOR public.= (LEFTARG = \"char\", RIGHTARG = \"char\", FUNCTION = public.never_char);
        CREATE FUNCTION public.always_int2(int2, int4) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false';
        CREATE OPERATOR public.> (LEFTARG = int2, RIGHTARG = int4, FUNCTION = public.always_int2);";
    direct.batch_execute(defs).await.unwrap();
    c.simple_query("SET search_path = public, pg_catalog")
        .await
        .unwrap();
    let m = marker(10);
    let got = run(
        &c,
        &format!("INSERT INTO sales.people (id, full_name) VALUES (10, '{m}')"),
    )
    .await;
    assert_no_plaintext(&direct, "insert after redefining =").await;
    got.unwrap();
    let m = marker(11);
    c.execute(
        "INSERT INTO sales.accounts (company, owner_email) VALUES ('c', $1)",
        &[&m],
    )
    .await
    .unwrap();
    assert_no_plaintext(&direct, "extended insert after redefining =").await;
    let rows = c
        .query(
            "SELECT owner_email FROM sales.accounts WHERE owner_email = $1",
            &[&m],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    drop(c);
    proxy.stop().await;
}

/// A prepared-statement name reused after DEALLOCATE is the new
/// statement's: its values are treated by the new statement's columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_prepared_names_follow_the_new_statement() {
    let pg = support::cluster();
    let (proxy, direct, through) = setup(pg, "coh_prepared").await;
    let c = support::connect(&through).await;
    for (i, steps) in [
        vec![
            "PREPARE q (text, text) AS INSERT INTO sales.accounts (company, owner_email) VALUES ($1, $2)",
            "DEALLOCATE q",
            "PREPARE q (text, text) AS INSERT INTO public.notes (body) VALUES ($1 || ' ' || $2) RETURNING body",
        ],
        vec![
            "PREPARE q2 (text, text) AS INSERT INTO sales.accounts (company, owner_email) VALUES ($1, $2); \
             DEALLOCATE q2; \
             PREPARE q2 (text, text) AS INSERT INTO public.notes (body) VALUES ($1 || ' ' || $2) RETURNING body",
        ],
    ]
    .iter()
    .enumerate()
    {
        for s in steps {
            c.simple_query(s).await.unwrap();
        }
        let name = if i == 0 { "q" } else { "q2" };
        let got = run(&c, &format!("EXECUTE {name} ('n', 'hello')")).await;
        match got {
            Ok(msgs) => {
                let body: Vec<String> = msgs
                    .iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                        _ => None,
                    })
                    .collect();
                assert_eq!(body, vec!["n hello".to_string()], "round {i}");
            }
            Err(e) => assert!(e.starts_with("pgveil:"), "round {i}: {e}"),
        }
        let stored = direct
            .query("SELECT body FROM public.notes", &[])
            .await
            .unwrap();
        for r in stored {
            let b: String = r.get(0);
            assert!(!b.to_lowercase().contains("pgv"), "round {i}: stored {b}");
        }
        c.simple_query("DELETE FROM public.notes").await.unwrap();
    }

    // A name prepared for notes first, then for accounts: the marker
    // must be encrypted.
    c.simple_query("PREPARE r (text, text) AS INSERT INTO public.notes (body) VALUES ($1 || $2)")
        .await
        .unwrap();
    c.simple_query("DEALLOCATE r").await.unwrap();
    c.simple_query("PREPARE r (text, text) AS INSERT INTO sales.accounts (company, owner_email) VALUES ($1, $2)")
        .await
        .unwrap();
    let m = marker(20);
    let _ = run(&c, &format!("EXECUTE r ('c', '{m}')")).await;
    assert_no_plaintext(&direct, "EXECUTE of a reused name").await;

    // A statement prepared against a plain table, which is then replaced
    // by a child of a configured table under the same name: PostgreSQL
    // re-plans it against the new table, so pgveil must judge it again.
    for (n, ddl) in [
        (
            22,
            "DROP TABLE public.t2; CREATE TABLE public.t2 PARTITION OF sales.parts FOR VALUES IN (22)",
        ),
        (
            23,
            "DROP TABLE public.t2; CREATE TABLE public.t2 () INHERITS (sales.people)",
        ),
    ] {
        direct
            .batch_execute(
                "DROP TABLE IF EXISTS public.t2; CREATE TABLE public.t2 (id int, full_name bytea)",
            )
            .await
            .unwrap();
        let _ = run(&c, "DEALLOCATE ALL").await;
        let _ = run(&c, "SELECT 1").await;
        c.simple_query(
            "PREPARE t (int, bytea) AS INSERT INTO public.t2 (id, full_name) VALUES ($1, $2)",
        )
        .await
        .unwrap();
        let mut replaced = Ok(Vec::new());
        for part in ddl.split("; ") {
            replaced = run(&c, part).await;
        }
        assert!(is_child(&direct, "public.t2").await, "{ddl}: {replaced:?}");
        let m = marker(n);
        let _ = run(&c, &format!("EXECUTE t ({n}, '{m}')")).await;
        assert_no_marker(
            &direct,
            "SELECT encode(full_name, 'escape') FROM public.t2",
            &format!("{ddl} ({replaced:?})"),
        )
        .await;
    }

    // The same through the extended protocol: a statement parsed while
    // t3 was plain, bound after t3 became a partition of a configured
    // table.
    direct
        .batch_execute("CREATE TABLE public.t3 (id int, full_name bytea)")
        .await
        .unwrap();
    let _ = run(&c, "SELECT 1").await;
    let ins = c
        .prepare("INSERT INTO public.t3 (id, full_name) VALUES ($1, $2)")
        .await
        .unwrap();
    c.execute(&ins, &[&1i32, &b"plain".as_slice()])
        .await
        .unwrap();
    c.simple_query("DELETE FROM public.t3").await.unwrap();
    c.simple_query("DROP TABLE public.t3").await.unwrap();
    c.simple_query("CREATE TABLE public.t3 PARTITION OF sales.parts FOR VALUES IN (24)")
        .await
        .unwrap();
    let m = marker(24);
    let got = c.execute(&ins, &[&24i32, &m.as_bytes()]).await;
    assert_no_marker(
        &direct,
        "SELECT encode(full_name, 'escape') FROM public.t3",
        &format!("extended statement re-planned into a partition: {got:?}"),
    )
    .await;

    // A statement prepared against a plain table that later gets a
    // configured parent: refused or encrypted, never plaintext.
    let _ = run(
        &c,
        "PREPARE p (int, bytea) AS INSERT INTO public.stg (id, full_name) VALUES ($1, $2)",
    )
    .await;
    let altered = run(&c, "ALTER TABLE public.stg INHERIT sales.people").await;
    let is_child = is_child(&direct, "public.stg").await;
    assert_eq!(altered.is_ok(), is_child, "{altered:?}");
    if !is_child {
        // Refused: stg stays a plain table, whose values are its own.
        drop(c);
        proxy.stop().await;
        return;
    }
    // EXECUTE sent through Parse/Bind/Execute, then as a Query.
    let m = marker(22);
    let ext = c.query(&format!("EXECUTE p (22, '{m}')"), &[]).await;
    let m = marker(21);
    let _ = run(&c, &format!("EXECUTE p (21, '{m}')")).await;
    assert_no_marker(
        &direct,
        "SELECT encode(full_name, 'escape') FROM public.stg",
        "EXECUTE after INHERIT",
    )
    .await;
    assert!(
        ext.is_err(),
        "EXECUTE through Parse after INHERIT is refused"
    );
    drop(c);
    proxy.stop().await;
}

/// Settings changed without naming them: a pipelined `UPDATE pg_settings`
/// that turns `standard_conforming_strings` off, then a write whose
/// backslash would read differently; and a `search_path` set through
/// `set_config` with a spelled-apart name, then an unqualified write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_without_set_are_followed() {
    use support::raw::{Raw, msg};

    // Raw speaks no SCRAM: a cluster of its own that trusts loopback.
    let own = PgCluster::start(&support::find_pg_bin(), "trust", &[]);
    let pg = &own;
    let (proxy, direct, through) = setup(pg, "coh_settings").await;
    let query = |sql: &str| {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        msg(b'Q', &body)
    };
    let m = marker(30);
    let mut raw = Raw::connect(proxy.port, "coh_settings").await;
    raw.send(&[
        query("UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_' || 'conforming_strings'"),
        query(&format!(
            "INSERT INTO sales.people (id, full_name, note) VALUES (30, 'a\\', '{m}') --', 'x')"
        )),
    ])
    .await;
    raw.until_ready().await;
    let got = raw.until_ready().await;
    // Sent before the UPDATE answered, with a backslash that reads
    // differently once it has run: refused.
    assert!(
        got.iter()
            .any(|(t, b)| *t == b'E' && String::from_utf8_lossy(b).contains("Mpgveil:")),
        "{got:?}"
    );
    assert_no_plaintext(&direct, "pipelined write after UPDATE pg_settings").await;
    assert_no_marker(
        &direct,
        "SELECT note FROM sales.people WHERE id = 30",
        "pipelined note",
    )
    .await;

    // Fetched through the extended protocol without a Describe.
    raw.send(&[
        query("INSERT INTO sales.people (id, full_name) VALUES (32, 'Hedy')"),
        query("BEGIN; DECLARE rc CURSOR FOR SELECT full_name FROM sales.people WHERE id = 32"),
    ])
    .await;
    raw.until_ready().await;
    raw.until_ready().await;
    raw.send(&[
        support::raw::parse_msg("", "FETCH 1 FROM rc"),
        support::raw::bind_msg("", &[]),
        support::raw::execute_msg(),
        msg(b'S', b""),
    ])
    .await;
    let got = raw.until_ready().await;
    let row = got.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert!(String::from_utf8_lossy(&row.1).contains("Hedy"), "{got:?}");

    // pgjdbc's shape: BEGIN in the same batch as a statement with
    // non-ASCII text; transaction control changes no setting, so it is
    // served.
    raw.send(&[query("COMMIT")]).await;
    raw.until_ready().await;
    raw.send(&[
        support::raw::parse_msg("", "BEGIN"),
        support::raw::bind_msg("", &[]),
        support::raw::execute_msg(),
        support::raw::parse_msg(
            "",
            "INSERT INTO sales.people (id, full_name) VALUES (33, 'Zoë')",
        ),
        support::raw::bind_msg("", &[]),
        support::raw::execute_msg(),
        support::raw::parse_msg("", "COMMIT"),
        support::raw::bind_msg("", &[]),
        support::raw::execute_msg(),
        msg(b'S', b""),
    ])
    .await;
    let got = raw.until_ready().await;
    assert!(!got.iter().any(|(t, _)| *t == b'E'), "{got:?}");

    let c = support::connect(&through).await;
    let rows = c
        .query("SELECT full_name FROM sales.people WHERE id = 33", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), "Zoë");
    c.simple_query("SELECT 1").await.unwrap();
    c.simple_query("SELECT pg_catalog.set_config('search_' || 'path', 'sales, public', false)")
        .await
        .unwrap();
    let m = marker(31);
    let got = run(
        &c,
        &format!("INSERT INTO people (id, full_name) VALUES (31, '{m}')"),
    )
    .await;
    assert_no_plaintext(&direct, "unqualified write after set_config of the path").await;
    got.unwrap();
    drop(c);
    proxy.stop().await;
}

/// A cursor declared over an encrypted table, fetched through the
/// extended protocol (described or not), returns the application's types
/// and plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_fetches_are_decrypted() {
    let pg = support::cluster();
    let (proxy, _direct, through) = setup(pg, "coh_cursors").await;
    let c = support::connect(&through).await;
    c.simple_query("INSERT INTO sales.people (id, full_name) VALUES (1, 'Ada'), (2, 'Grace')")
        .await
        .unwrap();
    c.batch_execute(
        "BEGIN; DECLARE cur CURSOR FOR SELECT id, full_name FROM sales.people ORDER BY id",
    )
    .await
    .unwrap();
    let rows = c.query("FETCH 1 FROM cur", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(1), "Ada");
    let rows = c.query_typed("FETCH 1 FROM cur", &[]).await.unwrap();
    assert_eq!(rows[0].get::<_, String>(1), "Grace");
    // Declared through the extended protocol, as psycopg 3 does.
    c.execute(
        "DECLARE cur2 CURSOR FOR SELECT full_name FROM sales.people WHERE id = $1",
        &[&2i32],
    )
    .await
    .unwrap();
    let msgs = c.simple_query("FETCH ALL FROM cur2").await.unwrap();
    let got: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec!["Grace".to_string()]);
    c.batch_execute("COMMIT").await.unwrap();
    drop(c);
    proxy.stop().await;
}

/// An encrypted column with a nondeterministic collation is not served:
/// `=` on its ciphertext would not be `=` on its values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nondeterministic_collations_are_refused() {
    let pg = support::cluster();
    let (proxy, direct, through) = setup(pg, "coh_collation").await;
    direct
        .batch_execute(
            "CREATE COLLATION public.ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false); \
             ALTER TABLE sales.accounts ALTER COLUMN owner_email TYPE text COLLATE public.ci",
        )
        .await
        .unwrap();
    let c = support::connect(&through).await;
    let m = marker(40);
    let got = run(
        &c,
        &format!("INSERT INTO sales.accounts (company, owner_email) VALUES ('c', '{m}')"),
    )
    .await;
    let e = got.expect_err("refused");
    assert!(
        e.starts_with("pgveil:") && e.contains("nondeterministic"),
        "{e}"
    );
    assert_no_plaintext(&direct, "nondeterministic collation").await;
    // Columns without it are served as before.
    c.simple_query("INSERT INTO sales.people (id, full_name) VALUES (40, 'x')")
        .await
        .unwrap();
    drop(c);
    proxy.stop().await;
}
