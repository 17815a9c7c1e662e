//! End-to-end: protocol 3.2 (PostgreSQL 18) through pgveil, by hand-written
//! bytes, because no Rust driver speaks 3.2 yet.
//!
//! Protocol 3.2 changed two things a proxy can break: BackendKeyData and
//! CancelRequest carry keys longer than 4 bytes (PostgreSQL 18 uses 32), and
//! a server may answer a startup with NegotiateProtocolVersion. These tests
//! prove both pass through pgveil unchanged.
//!
//! They need PostgreSQL 18 server binaries in `PGVEIL_PG18_BIN`:
//!
//! ```text
//! PGVEIL_PG18_BIN=$(scripts/fetch-pg18.sh) cargo test --test protocol32
//! ```
//!
//! Without it they are skipped with a note, unless `PGVEIL_REQUIRE_PG18=1`
//! (CI), which turns the skip into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use support::{PgCluster, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Protocol 3.0 and 3.2 as sent in a StartupMessage.
const PROTOCOL_3_0: i32 = 3 << 16;
const PROTOCOL_3_2: i32 = 3 << 16 | 2;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Bounds every wait on the server, so a broken proxy fails instead of hanging.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL 18 binaries, or `None` (with a note) when the tests are to
/// be skipped.
fn pg18_bin() -> Option<PathBuf> {
    match std::env::var_os("PGVEIL_PG18_BIN") {
        Some(bin) => {
            let bin = PathBuf::from(bin);
            assert!(
                bin.join("initdb").exists(),
                "PGVEIL_PG18_BIN={} has no initdb; run scripts/fetch-pg18.sh and \
                 pass the directory it prints",
                bin.display()
            );
            Some(bin)
        }
        None if std::env::var("PGVEIL_REQUIRE_PG18").as_deref() == Ok("1") => panic!(
            "PGVEIL_REQUIRE_PG18=1 but PGVEIL_PG18_BIN is not set: run \
             `export PGVEIL_PG18_BIN=$(scripts/fetch-pg18.sh)` first"
        ),
        None => {
            eprintln!(
                "skipping protocol 3.2 test: PGVEIL_PG18_BIN is not set \
                 (run `PGVEIL_PG18_BIN=$(scripts/fetch-pg18.sh) cargo test --test protocol32`)"
            );
            None
        }
    }
}

/// One PostgreSQL 18 cluster for this test binary, with trust auth over TCP.
fn pg18() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    let bin = pg18_bin()?;
    Some(CLUSTER.get_or_init(|| PgCluster::start(&bin, "trust", &[])))
}

/// A StartupMessage with `version` and `params` (name, value pairs).
fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (name, value) in params {
        for s in [name, value] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    with_length(body)
}

/// A CancelRequest for `pid` with a key of any length.
fn cancel_packet(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut body = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(key);
    with_length(body)
}

fn with_length(body: Vec<u8>) -> Vec<u8> {
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// A regular message: type byte, length, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads backend messages until one of type `want`, within [`TIMEOUT`].
async fn read_until(stream: &mut TcpStream, want: u8) -> Vec<(u8, Vec<u8>)> {
    tokio::time::timeout(TIMEOUT, async {
        let mut seen = Vec::new();
        loop {
            let mut header = [0u8; 5];
            stream.read_exact(&mut header).await.unwrap();
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            assert!(len >= 4, "bad length {len} from the proxy");
            let mut body = vec![0u8; len as usize - 4];
            stream.read_exact(&mut body).await.unwrap();
            seen.push((header[0], body));
            if header[0] == want {
                return seen;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {:?} message within {TIMEOUT:?}", want as char))
}

/// The body of the only message of type `tag`.
fn only(msgs: &[(u8, Vec<u8>)], tag: u8) -> Vec<u8> {
    let found: Vec<_> = msgs.iter().filter(|(t, _)| *t == tag).collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {:?} message, got {:?}",
        tag as char,
        tags(msgs)
    );
    found[0].1.clone()
}

fn tags(msgs: &[(u8, Vec<u8>)]) -> String {
    msgs.iter().map(|(t, _)| *t as char).collect()
}

fn sqlstate_of(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&b'C'))
        .map(|f| String::from_utf8_lossy(&f[1..]).to_string())
        .unwrap_or_default()
}

fn i32_at(body: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(body[at..at + 4].try_into().unwrap())
}

/// NegotiateProtocolVersion (B): newest minor version the server supports,
/// then the `_pq_` options it did not recognise.
fn decode_negotiate(body: &[u8]) -> (i32, Vec<String>) {
    let version = i32_at(body, 0);
    let count = i32_at(body, 4) as usize;
    let options: Vec<String> = body[8..]
        .split(|b| *b == 0)
        .take(count)
        .map(|s| String::from_utf8_lossy(s).to_string())
        .collect();
    (version, options)
}

/// Connects to the proxy, starts up with `packet`, and reads to ReadyForQuery.
async fn start_session(proxy: &Proxy, packet: &[u8]) -> (TcpStream, Vec<(u8, Vec<u8>)>) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(packet).await.unwrap();
    let msgs = read_until(&mut s, b'Z').await;
    assert!(
        !msgs.iter().any(|(t, _)| *t == b'E'),
        "startup failed: {:?}",
        msgs.iter()
            .filter(|(t, _)| *t == b'E')
            .map(|(_, b)| String::from_utf8_lossy(b).to_string())
            .collect::<Vec<_>>()
    );
    (s, msgs)
}

/// Runs `sql` with the simple protocol and returns the first column of each row.
async fn simple_query(s: &mut TcpStream, sql: &str) -> Vec<String> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    s.write_all(&message(b'Q', &body)).await.unwrap();
    read_until(s, b'Z')
        .await
        .iter()
        .filter(|(t, _)| *t == b'D')
        .map(|(_, b)| {
            let len = i32_at(b, 2) as usize;
            String::from_utf8_lossy(&b[6..6 + len]).to_string()
        })
        .collect()
}

/// Sends a CancelRequest through a fresh connection to the proxy and waits
/// for the proxy to close it, as PostgreSQL does once the request is read.
async fn send_cancel(proxy: &Proxy, pid: i32, key: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(&cancel_packet(pid, key)).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut rest))
        .await
        .expect("proxy kept the cancel connection open")
        .unwrap();
    assert!(rest.is_empty(), "cancel connection got a reply: {rest:?}");
}

/// Waits until backend `pid` is running a statement.
async fn wait_until_active(pg: &PgCluster, pid: i32) {
    let client = pg.connect().await;
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let active = client
            .query_opt(
                "select 1 from pg_stat_activity \
                 where pid = $1 and state = 'active' and wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .is_some();
        if active {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pg_sleep never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn protocol_32_long_cancel_key_passes_through() {
    let Some(pg) = pg18() else { return };
    let proxy = Proxy::start(pg, "").await;
    let (mut session, msgs) = start_session(
        &proxy,
        &startup_packet(
            PROTOCOL_3_2,
            &[("user", "postgres"), ("database", "postgres")],
        ),
    )
    .await;

    // 3.2 accepted as is: no downgrade, and a long key.
    assert!(
        !msgs.iter().any(|(t, _)| *t == b'v'),
        "3.2 startup was answered with NegotiateProtocolVersion: {}",
        tags(&msgs)
    );
    let key_data = only(&msgs, b'K');
    let pid = i32_at(&key_data, 0);
    let key = key_data[4..].to_vec();
    assert!(key.len() > 4, "cancel key of {} bytes", key.len());
    assert_eq!(key.len(), 32, "PostgreSQL 18 sends 32-byte keys");
    assert_eq!(simple_query(&mut session, "select 1").await, ["1"]);
    let backend_pid = simple_query(&mut session, "select pg_backend_pid()").await;
    assert_eq!(
        backend_pid,
        [pid.to_string()],
        "BackendKeyData pid rewritten"
    );

    session
        .write_all(&message(b'Q', b"select pg_sleep(30)\0"))
        .await
        .unwrap();
    wait_until_active(pg, pid).await;

    // The key cut to 3.0's 4 bytes is refused by PostgreSQL 18, so the full
    // cancel below succeeding proves all 32 bytes crossed the proxy intact.
    send_cancel(&proxy, pid, &key[..4]).await;
    let mut probe = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), session.peek(&mut probe)).await;
    assert!(early.is_err(), "a truncated cancel key stopped the query");

    let started = tokio::time::Instant::now();
    send_cancel(&proxy, pid, &key).await;
    let msgs = read_until(&mut session, b'Z').await;
    let error = only(&msgs, b'E');
    assert_eq!(
        sqlstate_of(&error),
        "57014",
        "{}",
        String::from_utf8_lossy(&error)
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // The session is still usable after the cancel.
    assert_eq!(simple_query(&mut session, "select 2").await, ["2"]);
}

#[tokio::test]
async fn unknown_protocol_option_is_negotiated_end_to_end() {
    let Some(pg) = pg18() else { return };
    let proxy = Proxy::start(pg, "").await;
    let (mut session, msgs) = start_session(
        &proxy,
        &startup_packet(
            PROTOCOL_3_0,
            &[
                ("user", "postgres"),
                ("database", "postgres"),
                ("_pq_.some_unknown_option", "on"),
            ],
        ),
    )
    .await;

    // PostgreSQL's own NegotiateProtocolVersion, relayed: it keeps 3.0 and
    // names the option it ignored.
    let (version, options) = decode_negotiate(&only(&msgs, b'v'));
    assert_eq!(version, PROTOCOL_3_0);
    assert_eq!(options, ["_pq_.some_unknown_option"]);
    // 3.0 keys are 4 bytes.
    assert_eq!(only(&msgs, b'K').len(), 8);
    assert_eq!(simple_query(&mut session, "select 'ok'").await, ["ok"]);
}

#[tokio::test]
async fn newer_minor_version_is_negotiated_down_to_32() {
    let Some(pg) = pg18() else { return };
    let proxy = Proxy::start(pg, "").await;
    let (mut session, msgs) = start_session(
        &proxy,
        &startup_packet(
            3 << 16 | 9,
            &[("user", "postgres"), ("database", "postgres")],
        ),
    )
    .await;

    let (version, options) = decode_negotiate(&only(&msgs, b'v'));
    assert_eq!(version, PROTOCOL_3_2);
    assert!(options.is_empty(), "{options:?}");
    assert_eq!(only(&msgs, b'K').len(), 4 + 32);
    assert_eq!(simple_query(&mut session, "select 3").await, ["3"]);
}
