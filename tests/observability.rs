//! The operator endpoint: /metrics, /healthz, /readyz over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Minimal HTTP/1.1 GET; returns (status, body).
async fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn counter(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
}

#[tokio::test]
async fn endpoints_and_connection_counters() {
    let pg = cluster();
    let proxy = support::Proxy::start(pg, "[metrics]\naddress = \"127.0.0.1:0\"").await;
    let mport = proxy.metrics_port.unwrap();

    assert_eq!(get(mport, "/healthz").await.0, 200);
    assert_eq!(get(mport, "/nope").await.0, 404);
    // The first upstream check runs at start.
    let mut ready = 0;
    for _ in 0..50 {
        ready = get(mport, "/readyz").await.0;
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 200);

    let client = proxy.connect(pg).await;
    client.simple_query("select 1").await.unwrap();
    let (status, text) = get(mport, "/metrics").await;
    assert_eq!(status, 200);
    assert!(text.contains("pgveil_build_info{version="), "{text}");
    assert_eq!(counter(&text, "pgveil_client_connections "), 1.0);
    assert!(counter(&text, "pgveil_client_connections_total ") >= 1.0);
    assert!(counter(&text, "pgveil_bytes_total{direction=\"client_to_server\"} ") > 0.0);
    drop(client);
}

async fn wait_for_ready(port: u16, want: u16) {
    for _ in 0..100 {
        if get(port, "/readyz").await.0 == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/readyz never returned {want}");
}

#[tokio::test]
async fn readyz_follows_the_upstream_and_draining() {
    // A cluster of its own, so stopping it disturbs no other test.
    let pg = support::PgCluster::start(&support::find_pg_bin(), "scram-sha-256", &[]);
    let proxy = support::Proxy::start(
        &pg,
        "[metrics]\naddress = \"127.0.0.1:0\"\n[limits]\nshutdown_timeout_ms = 10000",
    )
    .await;
    let mport = proxy.metrics_port.unwrap();
    wait_for_ready(mport, 200).await;
    pg.pg_ctl("stop");
    wait_for_ready(mport, 503).await;
    pg.pg_ctl("start");
    wait_for_ready(mport, 200).await;

    // Draining: after the shutdown signal, an open session keeps /readyz at 503.
    let client = proxy.connect(&pg).await;
    let stopping = tokio::spawn(proxy.stop());
    wait_for_ready(mport, 503).await;
    let (_, body) = get(mport, "/readyz").await;
    assert!(body.contains("draining"), "{body}");
    drop(client);
    stopping.await.unwrap();
}

#[tokio::test]
async fn upstream_errors_are_counted() {
    let port = support::free_port();
    let proxy = support::Proxy::start_with_upstream(
        &format!("127.0.0.1:{port}"),
        "[metrics]\naddress = \"127.0.0.1:0\"",
    )
    .await;
    let mport = proxy.metrics_port.unwrap();
    let (status, body) = get(mport, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("unreachable"), "{body}");
    let conn = format!(
        "host=127.0.0.1 port={} user=u password=p dbname=d",
        proxy.port
    );
    assert!(support::try_connect(&conn).await.is_err());
    let (_, text) = get(mport, "/metrics").await;
    assert_eq!(counter(&text, "pgveil_upstream_connect_errors_total "), 1.0);
    assert_eq!(
        counter(
            &text,
            "pgveil_client_connections_rejected_total{reason=\"upstream\"} "
        ),
        1.0
    );
}

#[tokio::test]
async fn encryption_counters_move_with_the_workload() {
    use std::os::unix::fs::PermissionsExt;
    let pg = cluster();
    let admin = pg.connect().await;
    admin
        .simple_query("DROP DATABASE IF EXISTS obs_db")
        .await
        .unwrap();
    admin.simple_query("CREATE DATABASE obs_db").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "cGd2ZWlsLXRlc3Qta2V5LTMyLWJ5dGVzLWxvbmchISE=").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let proxy = support::Proxy::start(
        pg,
        &format!(
            "[metrics]\naddress = \"127.0.0.1:0\"\n[keys]\nmaster_key_file = \"{}\"\n\
             [[encrypt]]\ntable = \"contacts\"\ncolumn = \"email\"\n",
            key.display()
        ),
    )
    .await;
    let mport = proxy.metrics_port.unwrap();
    let c = support::connect(
        &proxy
            .conn_str(pg)
            .replace("dbname=postgres", "dbname=obs_db"),
    )
    .await;
    c.batch_execute("CREATE TABLE contacts (id int, email bytea)")
        .await
        .unwrap();
    c.batch_execute("INSERT INTO contacts VALUES (1, 'a@example.com'), (2, 'b@example.com')")
        .await
        .unwrap();
    for _ in 0..3 {
        c.simple_query("SELECT email FROM contacts WHERE email = 'a@example.com'")
            .await
            .unwrap();
    }
    assert!(
        c.simple_query("SELECT * FROM contacts ORDER BY email")
            .await
            .is_err()
    );
    let (_, text) = get(mport, "/metrics").await;
    let col = "{column=\"public.contacts.email\"} ";
    assert_eq!(
        counter(&text, &format!("pgveil_values_encrypted_total{col}")),
        5.0
    );
    assert_eq!(
        counter(&text, &format!("pgveil_values_decrypted_total{col}")),
        3.0
    );
    assert_eq!(
        counter(&text, "pgveil_refused_statements_total{reason=\"order\"} "),
        1.0
    );
    assert!(counter(&text, "pgveil_plan_cache_hits_total ") >= 2.0);
    assert!(
        counter(
            &text,
            "pgveil_statements_total{kind=\"refused\",protocol=\"simple\"} "
        ) >= 1.0
    );
    assert!(
        counter(
            &text,
            "pgveil_statement_duration_seconds_count{protocol=\"simple\"} "
        ) >= 5.0
    );
    assert!(counter(&text, "pgveil_proxy_overhead_seconds_count ") >= 5.0);
    // No value ever appears in the metrics.
    assert!(!text.contains("a@example.com"));
}
