//! SIGHUP reloads proxy.toml in a running `pgveil run`: a newly encrypted
//! column is encrypted from the next statement, statements prepared before
//! the reload cannot smuggle plaintext into it, and an invalid file keeps
//! the old configuration serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::cluster;

struct Running(Child);

impl Running {
    /// `pgveil run` on `path`, logging at debug for the log audit.
    fn start(path: &std::path::Path, log: &str) -> Running {
        Running(
            Command::new(env!("CARGO_BIN_EXE_pgveil"))
                .args(["run", "--config"])
                .arg(path)
                .env("RUST_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(support::child_log(log))
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn hup(child: &Running) {
    let status = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn config(pg_port: u16, port: u16, mport: u16, key: &str, columns: &[(&str, &str)]) -> String {
    let mut text = format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n[upstream]\naddress = \"127.0.0.1:{pg_port}\"\n\
         [metrics]\naddress = \"127.0.0.1:{mport}\"\n[keys]\nmaster_key_file = \"{key}\"\n"
    );
    for (t, c) in columns {
        text.push_str(&format!("[[encrypt]]\ntable = \"{t}\"\ncolumn = \"{c}\"\n"));
    }
    text
}

#[tokio::test]
async fn sighup_adds_a_column_safely_and_rejects_an_invalid_file() {
    let pg = cluster();
    let admin = pg.connect().await;
    admin
        .simple_query("DROP DATABASE IF EXISTS reload_db")
        .await
        .unwrap();
    admin
        .simple_query("CREATE DATABASE reload_db")
        .await
        .unwrap();
    let direct =
        support::connect(&pg.conn_str().replace("dbname=postgres", "dbname=reload_db")).await;
    direct
        .batch_execute(
            "CREATE TABLE people (id int, email bytea, ssn bytea); CREATE TABLE notes (id int, ssn bytea)",
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, support::TEST_KEY).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let key = key.display().to_string();
    let path = dir.path().join("proxy.toml");
    let (port, mport) = (support::free_port(), support::free_port());
    std::fs::write(
        &path,
        config(pg.port, port, mport, &key, &[("people", "email")]),
    )
    .unwrap();
    let child = Running::start(&path, "reload");
    let conn = pg
        .conn_str_on(port)
        .replace("dbname=postgres", "dbname=reload_db");
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = support::try_connect(&conn).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = client.expect("pgveil did not start");
    c.batch_execute("PREPARE ins(int, bytea) AS INSERT INTO people (id, ssn) VALUES ($1, $2)")
        .await
        .unwrap();
    // An extended-protocol statement on a table that is not configured yet.
    let ext = support::connect(&conn).await;
    let stmt = ext
        .prepare("INSERT INTO notes (id, ssn) VALUES ($1, $2)")
        .await
        .unwrap();
    ext.execute(&stmt, &[&1i32, &b"n1".as_slice()])
        .await
        .unwrap();

    // The unnamed statement of a query_typed, destroyed by the simple
    // Query after it: no prepared statement is left in this session.
    let unnamed = support::connect(&conn).await;
    unnamed
        .query_typed(
            "SELECT id FROM people WHERE email = $1",
            &[(&"x", tokio_postgres::types::Type::TEXT)],
        )
        .await
        .unwrap();
    unnamed
        .simple_query("SELECT count(*) FROM people")
        .await
        .unwrap();

    // A session that will be sending a large message when it is ended.
    let big = support::connect(&conn).await;
    big.batch_execute("PREPARE big(int, bytea) AS INSERT INTO people (id, ssn) VALUES ($1, $2)")
        .await
        .unwrap();

    // Reload: people.ssn and notes.ssn become encrypted.
    std::fs::write(
        &path,
        config(
            pg.port,
            port,
            mport,
            &key,
            &[("people", "email"), ("people", "ssn"), ("notes", "ssn")],
        ),
    )
    .unwrap();
    hup(&child);
    support::wait_for_metric(mport, "pgveil_config_reloads_total{result=\"ok\"} ", 1.0).await;

    // A 32 MiB Query (more than the sockets buffer) from the session holding a prepared statement: pgveil
    // ends it, reading the rest of the message so that the client, once it
    // has sent it all, reads the FATAL instead of a connection reset.
    let text = format!("SELECT '{}'", "x".repeat(32 << 20));
    let err = big.simple_query(&text).await.unwrap_err();
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not pgveil's FATAL: {err:?}"));
    assert_eq!(db.code(), &tokio_postgres::error::SqlState::ADMIN_SHUTDOWN);
    assert!(db.message().contains("reloaded"), "{}", db.message());

    // The session without prepared statements goes on.
    unnamed
        .simple_query("SELECT count(*) FROM people")
        .await
        .expect("a session with no prepared statement survives the reload");

    // The session holding a SQL prepared statement from before the reload
    // is ended (57P01) before it can EXECUTE it with plaintext.
    let err = c
        .batch_execute("EXECUTE ins(3, 'ssn-old-plan')")
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("reloaded"), "{err:?}");
    let n: i64 = direct
        .query_one("SELECT count(*) FROM people WHERE id = 3", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // A new session encrypts the new column from its first statement.
    let c = support::connect(&conn).await;
    c.batch_execute("INSERT INTO people (id, ssn) VALUES (2, 'ssn-after-reload')")
        .await
        .unwrap();
    let stored: Vec<u8> = direct
        .query_one("SELECT ssn FROM people WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(stored, b"ssn-after-reload");
    assert_eq!(stored[0], 1, "not an envelope");
    // The extended-protocol statement from before the reload ends its session
    // instead of binding plaintext.
    let err = ext
        .execute(&stmt, &[&2i32, &b"n2".as_slice()])
        .await
        .unwrap_err();
    let _ = err;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM notes WHERE id = 2", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "plaintext bound through a stale prepared statement");

    // An invalid file is rejected; the proxy keeps serving the old one.
    std::fs::write(&path, "[listen]\nadress = \"typo\"\n").unwrap();
    hup(&child);
    support::wait_for_metric(mport, "pgveil_config_reloads_total{result=\"error\"} ", 1.0).await;
    c.batch_execute("INSERT INTO people (id, ssn) VALUES (4, 'still-encrypted')")
        .await
        .unwrap();
    let stored: Vec<u8> = direct
        .query_one("SELECT ssn FROM people WHERE id = 4", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored[0], 1);
}

/// SHA-256 fingerprint of the certificate pgveil presents on `port`
/// (`openssl s_client -starttls postgres`: SSLRequest, then the handshake).
fn presented_fingerprint(port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -starttls postgres -connect 127.0.0.1:{port} </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn file_fingerprint(cert: &std::path::Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Renewed certificate files are served after SIGHUP to new connections,
/// while a connection made before keeps working; an unreadable key file is
/// rejected and the previous certificate stays in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_without_dropping_connections() {
    let pg = cluster();
    let certs = support::tls::certs();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    let install = |pair: &support::tls::CertKey| {
        std::fs::copy(&pair.cert, &cert).unwrap();
        std::fs::copy(&pair.key, &key).unwrap();
    };
    install(&certs.server);
    let (port, mport) = (support::free_port(), support::free_port());
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             required = true\n[upstream]\naddress = \"127.0.0.1:{}\"\n\
             [metrics]\naddress = \"127.0.0.1:{mport}\"\n",
            cert.display(),
            key.display(),
            pg.port
        ),
    )
    .unwrap();
    let child = Running::start(&path, "reload-tls");
    let conn = format!(
        "host=localhost port={port} user=postgres password={} dbname=postgres sslmode=require",
        support::PASSWORD
    );
    let connect = || async {
        let (client, connection) =
            tokio_postgres::connect(&conn, support::tls::TestTls::new(&certs.ca)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok::<_, tokio_postgres::Error>(client)
    };
    let mut before = None;
    for _ in 0..100 {
        if let Ok(c) = connect().await {
            before = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = before.expect("pgveil with TLS did not come up");
    let first = file_fingerprint(&certs.server.cert);
    let renewed = file_fingerprint(&certs.server_rsa.cert);
    assert_ne!(first, renewed);
    assert_eq!(presented_fingerprint(port), first);

    install(&certs.server_rsa);
    hup(&child);
    support::wait_for_metric(mport, "pgveil_config_reloads_total{result=\"ok\"} ", 1.0).await;
    assert_eq!(
        presented_fingerprint(port),
        renewed,
        "new connections get the renewed certificate"
    );
    before
        .simple_query("SELECT 1")
        .await
        .expect("a connection from before the reload survives");
    connect()
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();

    std::fs::write(&key, "not a key").unwrap();
    hup(&child);
    support::wait_for_metric(mport, "pgveil_config_reloads_total{result=\"error\"} ", 1.0).await;
    assert_eq!(
        presented_fingerprint(port),
        renewed,
        "a broken key file changes nothing"
    );
    connect()
        .await
        .unwrap()
        .simple_query("SELECT 1")
        .await
        .unwrap();
    before.simple_query("SELECT 2").await.unwrap();
}
