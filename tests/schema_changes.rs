//! Schema changes pgveil did not carry: DDL made straight in the database
//! (as a DBA does, or another pgveil in front of the same database). With
//! the event trigger of `pgveil guard --apply`, pgveil is notified at the
//! commit; without it, `[catalog] max_age_ms` bounds how long it trusts
//! what it read. Each case writes a marker through pgveil after the change
//! and reads what PostgreSQL stored, straight from the database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::coherence::{assert_no_plaintext, marker, run, setup_with};

const NOTIFIED: &str = "pgveil_catalog_notifications_total";

fn metrics_section() -> String {
    format!(
        "[metrics]\naddress = \"127.0.0.1:{}\"\n",
        support::free_port()
    )
}

/// Direct DDL is notified: a view, a child and a dropped column created
/// by another connection are known before the next statement, although
/// the catalog never ages out (`max_age_ms = 0`). Also after the client
/// ran `UNLISTEN *` and `DISCARD ALL`: pgveil listens again. And when no
/// session was open to hear it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_ddl_is_notified() {
    let pg = support::cluster();
    let extra = format!("{}[catalog]\nmax_age_ms = 0\n", metrics_section());
    let (proxy, direct, through) = setup_with(pg, "sch_notified", &extra).await;
    let port = proxy.metrics_port.unwrap();
    direct
        .batch_execute(&pgveil::catalog::event_trigger_sql())
        .await
        .unwrap();
    let b = support::connect(&through).await;
    b.simple_query("SELECT 1").await.unwrap();

    // A view over a configured table, created directly.
    direct
        .batch_execute("CREATE VIEW public.dv AS SELECT id, full_name FROM sales.people")
        .await
        .unwrap();
    support::wait_for_metric(port, NOTIFIED, 1.0).await;
    let m = marker(1);
    let got = run(
        &b,
        &format!("INSERT INTO public.dv (id, full_name) VALUES (1, '{m}')"),
    )
    .await;
    assert_no_plaintext(&direct, "insert into a view created directly").await;
    // pgveil refuses writes through views; reads through it decrypt.
    assert!(got.unwrap_err().contains("view public.dv"));
    b.execute(
        "INSERT INTO sales.people (id, full_name) VALUES (1, $1)",
        &[&m],
    )
    .await
    .unwrap();
    let rows = b
        .query("SELECT full_name FROM public.dv WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), m, "read back decrypted");

    // The client drops every LISTEN of its connection: pgveil's too.
    b.simple_query("UNLISTEN *").await.unwrap();
    b.simple_query("DISCARD ALL").await.unwrap();
    b.simple_query("SELECT 1").await.unwrap();
    // A migration in one transaction: a column dropped (positions shift)
    // and a child table.
    direct
        .batch_execute(
            "BEGIN; ALTER TABLE sales.leads DROP COLUMN id; \
             CREATE TABLE public.dkid () INHERITS (sales.accounts); COMMIT",
        )
        .await
        .unwrap();
    support::wait_for_metric(port, NOTIFIED, 2.0).await;
    let m = marker(2);
    let got = run(&b, &format!("INSERT INTO sales.leads VALUES ('{m}', 'n')")).await;
    assert_no_plaintext(&direct, "positional insert after a direct DROP COLUMN").await;
    got.unwrap();
    let m = marker(3);
    let _ = b
        .execute(
            "INSERT INTO public.dkid (company, owner_email) VALUES ('c', $1)",
            &[&m],
        )
        .await
        .unwrap();
    let stored = direct
        .query("SELECT owner_email FROM public.dkid", &[])
        .await
        .unwrap();
    assert!(
        !stored[0].get::<_, String>(0).contains("cohsecret"),
        "child table created directly stores plaintext"
    );

    // A temporary table of another connection concerns nobody else: no
    // notification.
    direct
        .batch_execute("CREATE TEMP TABLE scratch (x int)")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(support::metric(port, NOTIFIED).await, 2.0);

    // DDL while no session of the database is open (so nobody listens):
    // the next session does not trust what the last one cached.
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    direct
        .batch_execute("CREATE VIEW public.dv2 AS SELECT id, full_name FROM sales.people")
        .await
        .unwrap();
    let c = support::connect(&through).await;
    let rows = c
        .query("SELECT full_name FROM public.dv2 WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), marker(1), "read decrypted");
    drop(c);
    proxy.stop().await;
}

/// Without the event trigger, a catalog older than `max_age_ms` is read
/// again before the next statement; an unchanged one keeps its analyses
/// (the plan cache still hits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_ddl_is_seen_within_max_age() {
    let pg = support::cluster();
    let extra = format!("{}[catalog]\nmax_age_ms = 200\n", metrics_section());
    let (proxy, direct, through) = setup_with(pg, "sch_aged", &extra).await;
    let port = proxy.metrics_port.unwrap();
    let b = support::connect(&through).await;
    let select = "SELECT full_name FROM sales.people WHERE id = 99";
    b.simple_query(select).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hits = support::metric(port, "pgveil_plan_cache_hits_total").await;
    b.simple_query(select).await.unwrap();
    assert!(
        support::metric(port, "pgveil_catalog_loads_total{result=\"unchanged\"}").await >= 1.0,
        "the aged catalog was read again"
    );
    assert!(
        support::metric(port, "pgveil_plan_cache_hits_total").await > hits,
        "an unchanged catalog keeps its cached analyses"
    );

    direct
        .batch_execute("CREATE VIEW public.av AS SELECT id, full_name FROM sales.people")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = marker(4);
    let got = run(
        &b,
        &format!("INSERT INTO public.av (id, full_name) VALUES (4, '{m}')"),
    )
    .await;
    assert_no_plaintext(&direct, "insert into a view created directly, aged catalog").await;
    assert!(got.unwrap_err().contains("view public.av"));
    let rows = b
        .simple_query("SELECT full_name FROM public.av")
        .await
        .unwrap();
    assert!(matches!(
        &rows[0],
        tokio_postgres::SimpleQueryMessage::RowDescription(_)
    ));
    assert_eq!(support::metric(port, NOTIFIED).await, 0.0);
    drop(b);
    proxy.stop().await;
}
