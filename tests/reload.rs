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
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Running(Child);

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

async fn metric(port: u16, series: &str) -> f64 {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

async fn wait_for_metric(port: u16, series: &str, want: f64) {
    for _ in 0..100 {
        if metric(port, series).await >= want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{series} never reached {want}");
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
    let child = Running(
        Command::new(env!("CARGO_BIN_EXE_pgveil"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
    wait_for_metric(mport, "pgveil_config_reloads_total{result=\"ok\"} ", 1.0).await;

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
    wait_for_metric(mport, "pgveil_config_reloads_total{result=\"error\"} ", 1.0).await;
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
