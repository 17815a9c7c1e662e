//! End-to-end: pgveil as a transparent relay in front of a real PostgreSQL,
//! driven by tokio-postgres and by hand-written bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{Proxy, cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{NoTls, SimpleQueryMessage};

fn startup_packet(user: &str, minor: i32) -> Vec<u8> {
    let mut body = (3 << 16 | minor).to_be_bytes().to_vec();
    body.extend_from_slice(format!("user\0{user}\0database\0postgres\0\0").as_bytes());
    let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

/// Reads backend messages until one of type `want` (returned with its body).
async fn read_until(stream: &mut TcpStream, want: u8) -> Vec<(u8, Vec<u8>)> {
    let mut seen = Vec::new();
    loop {
        let mut header = [0u8; 5];
        stream.read_exact(&mut header).await.unwrap();
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        stream.read_exact(&mut body).await.unwrap();
        seen.push((header[0], body));
        if header[0] == want {
            return seen;
        }
    }
}

fn sqlstate_of(body: &[u8]) -> String {
    let mut fields = body.split(|b| *b == 0);
    fields
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn simple_query_passes_through() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let client = proxy.connect(pg).await;
    let rows = client
        .simple_query("select 1 as a, 'x' as b; select null::text as c")
        .await
        .unwrap();
    let values: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .collect();
    assert_eq!(values, vec![Some("1".to_string()), None]);
}

#[tokio::test]
async fn prepared_query_binary_results() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let client = proxy.connect(pg).await;
    let stmt = client
        .prepare("select $1::int4 + 1, $2::text")
        .await
        .unwrap();
    for i in 0..3 {
        let row = client.query_one(&stmt, &[&i, &"hé"]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 1);
        assert_eq!(row.get::<_, &str>(1), "hé");
    }
}

#[tokio::test]
async fn query_typed_unnamed_statement() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let client = proxy.connect(pg).await;
    let rows = client
        .query_typed("select $1 || '!'", &[(&"hi", Type::TEXT)])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, &str>(0), "hi!");
}

#[tokio::test]
async fn transaction_rollback() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let mut client = proxy.connect(pg).await;
    client
        .batch_execute("create table if not exists relay_tx (id int)")
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute("insert into relay_tx values (1)", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let n: i64 = client
        .query_one("select count(*) from relay_tx", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn server_error_keeps_session_usable() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let client = proxy.connect(pg).await;
    let err = client.simple_query("select 1/0").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::DIVISION_BY_ZERO));
    let err = client
        .query("select * from no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNDEFINED_TABLE));
    let row = client.query_one("select 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);
}

#[tokio::test]
async fn cancel_reaches_the_right_backend() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let client = proxy.connect(pg).await;
    let token = client.cancel_token();
    let sleeper = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel_query(NoTls).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("cancel did not stop pg_sleep")
        .unwrap();
    assert_eq!(result.unwrap_err().code(), Some(&SqlState::QUERY_CANCELED));
}

#[tokio::test]
async fn large_result_streams() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let client = proxy.connect(pg).await;
    let rows = client
        .query(
            "select g, repeat('x', 40) from generate_series(1, 200000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 200_000);
    assert_eq!(rows[199_999].get::<_, i32>(0), 200_000);
}

#[tokio::test]
async fn sixteen_mib_parameter() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let client = proxy.connect(pg).await;
    let big = "y".repeat(16 << 20);
    let row = client
        .query_one(
            "select length($1::text), md5($1::text) = md5(repeat('y', 16777216))",
            &[&big],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 16 << 20);
    assert!(row.get::<_, bool>(1));
}

#[tokio::test]
async fn wrong_password_gets_postgres_error() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres password=wrong dbname=postgres",
        proxy.port
    );
    let err = support::try_connect(&conn)
        .await
        .expect_err("wrong password accepted");
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
}

#[tokio::test]
async fn every_auth_method_relays() {
    let pg = cluster();
    pg.execute(
        "do $$ begin
           if not exists (select from pg_roles where rolname = 'pgveil_md5') then
             set password_encryption = 'md5';
             create role pgveil_md5 login password 'md5pw';
             reset password_encryption;
             create role pgveil_clear login password 'clearpw';
             create role pgveil_trust login;
           end if;
         end $$",
    )
    .await;
    let proxy = Proxy::start(pg, "").await;
    for (user, pw) in [
        ("pgveil_md5", "md5pw"),
        ("pgveil_clear", "clearpw"),
        ("pgveil_trust", "x"),
        ("postgres", support::PASSWORD),
    ] {
        let conn = format!(
            "host=127.0.0.1 port={} user={user} password={pw} dbname=postgres",
            proxy.port
        );
        let client = support::connect(&conn).await;
        let who: String = client
            .query_one("select current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);
    }
}

#[tokio::test]
async fn two_hundred_concurrent_clients() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let conn = proxy.conn_str(pg);
    let mut tasks = Vec::new();
    for i in 0..200i32 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let client = support::connect(&conn).await;
            for _ in 0..3 {
                let row = client
                    .query_one("select $1::int4 * 2", &[&i])
                    .await
                    .unwrap();
                assert_eq!(row.get::<_, i32>(0), i * 2);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn malformed_client_does_not_disturb_others() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let good = proxy.connect(pg).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let worker = tokio::spawn(async move {
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let row = good.query_one("select 1", &[]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), 1);
            n += 1;
        }
        n
    });

    // Garbage instead of a startup packet.
    let mut bad = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let msgs = read_until(&mut bad, b'E').await;
    assert_eq!(sqlstate_of(&msgs.last().unwrap().1), "08P01");

    // A frame with a length below 4 after a valid startup.
    let mut bad = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    bad.write_all(&startup_packet("pgveil_trust", 0))
        .await
        .unwrap();
    bad.write_all(b"Q\x00\x00\x00\x02").await.unwrap();
    let msgs = read_until(&mut bad, b'E').await;
    let (_, body) = msgs.iter().rev().find(|(t, _)| *t == b'E').unwrap();
    assert_eq!(sqlstate_of(body), "08P01");

    // A frame claiming 2 GiB.
    let mut bad = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    bad.write_all(&startup_packet("pgveil_trust", 0))
        .await
        .unwrap();
    bad.write_all(b"Q\x7f\xff\xff\xff").await.unwrap();
    let msgs = read_until(&mut bad, b'E').await;
    let (_, body) = msgs.iter().rev().find(|(t, _)| *t == b'E').unwrap();
    assert_eq!(sqlstate_of(body), "08P01");

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(worker.await.unwrap() > 0);
}

#[tokio::test]
async fn connection_limit_answers_53300() {
    let pg = cluster();
    let proxy =
        Proxy::start_full(&format!("127.0.0.1:{}", pg.port), "max_connections = 2", "").await;
    let a = proxy.connect(pg).await;
    let b = proxy.connect(pg).await;
    let err = support::try_connect(&proxy.conn_str(pg))
        .await
        .expect_err("third client admitted");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = proxy.connect(pg).await;
    c.simple_query("select 1").await.unwrap();
    drop(b);
}

#[tokio::test]
async fn unreachable_upstream_gives_08001() {
    let port = support::free_port();
    let upstream = format!("127.0.0.1:{port}");
    let proxy = Proxy::start_with_upstream(&upstream, "").await;
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres password=x dbname=postgres",
        proxy.port
    );
    let err = support::try_connect(&conn)
        .await
        .expect_err("connected to nothing");
    assert_eq!(
        err.code(),
        Some(&SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION)
    );
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(message.contains(&upstream), "{message}");
}

#[tokio::test]
async fn stalled_client_is_dropped() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "[limits]\nstartup_timeout_ms = 300").await;
    let mut stalled = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    stalled.write_all(&[0, 0]).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf))
        .await
        .expect("stalled client was not dropped")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn ssl_request_is_declined_then_startup_works() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "").await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    s.write_all(&startup_packet("pgveil_trust", 0))
        .await
        .unwrap();
    let msgs = read_until(&mut s, b'Z').await;
    assert_eq!(msgs[0].0, b'R');
}

#[tokio::test]
async fn graceful_shutdown_lets_sessions_finish() {
    let pg = cluster();
    let proxy = Proxy::start(pg, "[limits]\nshutdown_timeout_ms = 5000").await;
    let port = proxy.port;
    let client = proxy.connect(pg).await;
    let stopping = tokio::spawn(proxy.stop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New clients are refused, the open session still works.
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    client.simple_query("select 1").await.unwrap();
    drop(client);
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("proxy did not stop after its last session")
        .unwrap();
}
