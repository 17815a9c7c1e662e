//! End-to-end: COPY through pgveil. Encrypted columns are sealed as
//! `COPY ... FROM STDIN` streams in and opened as `COPY ... TO STDOUT`
//! streams out, in text, CSV and binary, from psql, tokio-postgres and raw
//! protocol messages split at arbitrary byte boundaries; pg_dump and
//! restores through pgveil and directly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::pgdate::Days;

use std::path::Path;
use std::process::Command;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use support::raw::{Raw, msg, tags};
use support::{PASSWORD, PgCluster, Proxy, cluster};
use tokio_postgres::binary_copy::{BinaryCopyInWriter, BinaryCopyOutStream};
use tokio_postgres::types::Type;

fn config() -> String {
    format!(
        r#"[limits]
shutdown_timeout_ms = 200
[keys]
master_key_file = "{}"
[[encrypt]]
table = "customers"
column = "name"
[[encrypt]]
table = "customers"
column = "email"
domain = "email"
[[encrypt]]
table = "customers"
column = "phone"
[[encrypt]]
table = "customers"
column = "birth_date"
type = "date"
[[encrypt]]
table = "leads"
column = "email"
domain = "email"
"#,
        support::key_file().display()
    )
}

const SCHEMA: &str = "
CREATE TABLE customers (id int PRIMARY KEY, name text, email bytea UNIQUE, phone bytea, birth_date bytea, note text);
CREATE TABLE leads (email bytea, source text);
";

/// Quoted delimiters, embedded newlines and quotes, NULLs, empty strings,
/// non-ASCII text: exactly what PostgreSQL itself writes for such rows.
const TRICKY_CSV: &str = "id,name,email,phone,birth_date,note\n\
1,\"Lovelace, Ada\",ada@example.com,+44 1,1815-12-10,\"first, \"\"quoted\"\"\"\n\
2,\"multi\nline\",grace@example.com,,1906-12-09,\n\
3,Zoë Ångström-李,zoe@example.org,\"\",,plain\n\
4,\\N,\"comma,in@email\",\"\"\"quote\",2000-02-29,\"\"\n";

fn db_conn(port: u16, db: &str) -> String {
    format!("host=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname={db}")
}

async fn setup(
    pg: &PgCluster,
    db: &str,
) -> (Proxy, tokio_postgres::Client, tokio_postgres::Client) {
    pg.fresh_database(db).await;
    let direct = support::connect(&db_conn(pg.port, db)).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = Proxy::start(pg, &config()).await;
    let client = support::connect(&db_conn(proxy.port, db)).await;
    (proxy, client, direct)
}

fn psql(port: u16, db: &str, command: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-c",
            command,
        ])
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn no_plaintext(direct: &tokio_postgres::Client, needles: &[&str]) {
    for m in direct
        .simple_query("SELECT c::text FROM customers c")
        .await
        .unwrap()
    {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let row = r.get(0).unwrap();
            for n in needles {
                assert!(!row.contains(n), "plaintext {n:?} at rest: {row}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_copy_round_trips_csv_text_and_binary_exactly() {
    let pg = cluster();
    let db = "copy_psql";
    let (proxy, _c, direct) = setup(pg, db).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("in.csv");
    std::fs::write(&src, TRICKY_CSV).unwrap();
    let cols = "(id, name, email, phone, birth_date, note)";
    psql(
        proxy.port,
        db,
        &format!(
            "\\copy customers {cols} from '{}' with (format csv, header)",
            src.display()
        ),
    );
    no_plaintext(
        &direct,
        &["Lovelace", "ada@", "grace@", "Zo", "comma,in", "1815"],
    )
    .await;
    // CSV out, same options: byte for byte what went in.
    let out = dir.path().join("out.csv");
    psql(
        proxy.port,
        db,
        &format!(
            "\\copy (select * from customers order by id) to '{}' with (format csv, header)",
            out.display()
        ),
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), TRICKY_CSV);
    psql(
        proxy.port,
        db,
        &format!(
            "\\copy customers to '{}' with (format csv, header)",
            out.display()
        ),
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), TRICKY_CSV);
    // Text and binary: out, empty the table, in again, CSV unchanged.
    for (format, ext) in [("text", "txt"), ("binary", "bin")] {
        let file = dir.path().join(format!("rows.{ext}"));
        psql(
            proxy.port,
            db,
            &format!(
                "\\copy customers to '{}' with (format {format})",
                file.display()
            ),
        );
        let data = std::fs::read(&file).unwrap();
        if format == "text" {
            let text = String::from_utf8(data).unwrap();
            assert!(
                text.contains("multi\\nline") && text.contains("Lovelace, Ada"),
                "{text}"
            );
        }
        direct.batch_execute("DELETE FROM customers").await.unwrap();
        psql(
            proxy.port,
            db,
            &format!(
                "\\copy customers from '{}' with (format {format})",
                file.display()
            ),
        );
        no_plaintext(&direct, &["Lovelace", "ada@"]).await;
        psql(
            proxy.port,
            db,
            &format!(
                "\\copy customers to '{}' with (format csv, header)",
                out.display()
            ),
        );
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            TRICKY_CSV,
            "after {format}"
        );
    }
    // Other options (pre-9.0 syntax sqlparser cannot read is refused as unparsed).
    direct.batch_execute("DELETE FROM customers").await.unwrap();
    let semi = dir.path().join("semi.csv");
    std::fs::write(&semi, "1;'a;b';x@y.z;NULL\n2;'';''NULL;NULL\n").unwrap();
    psql(
        proxy.port,
        db,
        &format!(
            "\\copy customers (id, name, email, phone) from '{}' with (format csv, delimiter ';', quote '''', null 'NULL')",
            semi.display()
        ),
    );
    let rows = psql(
        proxy.port,
        db,
        "select id, name, email, phone is null from customers order by id",
    );
    assert!(
        rows.contains("a;b") && rows.contains("x@y.z") && rows.contains("| NULL "),
        "{rows}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn tokio_postgres_binary_copy_in_and_out() {
    let pg = cluster();
    let (proxy, c, direct) = setup(pg, "copy_binary").await;
    let sink = c
        .copy_in("COPY customers (id, name, email, birth_date) FROM STDIN (FORMAT binary)")
        .await
        .unwrap();
    let types = [Type::INT4, Type::TEXT, Type::TEXT, Type::DATE];
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures_util::pin_mut!(writer);
    for i in 0..500i32 {
        let name = format!("Name {i} ✓");
        let email = format!("u{i}@example.com");
        let born = (i % 3 != 0).then_some(Days(i - 10_000));
        writer
            .as_mut()
            .write(&[&i, &name, &email, &born])
            .await
            .unwrap();
    }
    assert_eq!(writer.finish().await.unwrap(), 500);
    no_plaintext(&direct, &["Name ", "@example.com"]).await;
    let stream = c
        .copy_out("COPY (SELECT id, name, email, birth_date FROM customers ORDER BY id) TO STDOUT (FORMAT binary)")
        .await
        .unwrap();
    let rows = BinaryCopyOutStream::new(stream, &types);
    futures_util::pin_mut!(rows);
    let mut n = 0;
    while let Some(row) = rows.next().await {
        let row = row.unwrap();
        let i: i32 = row.get(0);
        assert_eq!(row.get::<String>(1), format!("Name {i} ✓"));
        assert_eq!(row.get::<String>(2), format!("u{i}@example.com"));
        assert_eq!(
            row.get::<Option<Days>>(3),
            (i % 3 != 0).then_some(Days(i - 10_000))
        );
        n += 1;
    }
    assert_eq!(n, 500);
    // Text copy_in with the data split into many small pieces.
    let sink = c
        .copy_in("COPY leads (email, source) FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let data = (0..200)
        .map(|i| format!("l{i}@x.com\tsrc\\t{i}\n"))
        .collect::<String>();
    for chunk in data.as_bytes().chunks(7) {
        sink.send(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 200);
    let r = c
        .query_one("SELECT source FROM leads WHERE email = $1", &[&"l42@x.com"])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "src\t42");
    proxy.stop().await;
}

/// Raw CopyData split at the given offsets.
async fn raw_copy(raw: &mut Raw, sql: &str, data: &[u8], cuts: &[usize]) -> Vec<(u8, Vec<u8>)> {
    let mut q = sql.as_bytes().to_vec();
    q.push(0);
    raw.send(&[msg(b'Q', &q)]).await;
    let got = raw.until(b'G').await;
    assert_eq!(got.last().unwrap().0, b'G', "{got:?}");
    let mut last = 0;
    let mut msgs = Vec::new();
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        if c > last {
            msgs.push(msg(b'd', &data[last..c]));
            last = c;
        }
    }
    msgs.push(msg(b'c', b""));
    raw.send(&msgs).await;
    raw.until_ready().await
}

#[tokio::test]
async fn copy_data_split_at_any_byte_and_errors_leave_the_session_usable() {
    let pg = PgCluster::start(&support::find_pg_bin(), "trust", &[]);
    let db = "copy_raw";
    pg.fresh_database(db).await;
    let direct = support::connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        pg.port
    ))
    .await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let proxy = Proxy::start(&pg, &config()).await;
    let mut raw = Raw::connect(proxy.port, db).await;
    let client = support::connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        proxy.port
    ))
    .await;

    let csv = TRICKY_CSV.as_bytes();
    let text = b"10\tTab\\there\ta\\\\b@x.com\t\\N\t2001-01-01\tn\n11\tEsc \\x41\\101\tq@x.com\tp\t\\N\t\\N\n";
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    for round in 0..12 {
        direct.batch_execute("DELETE FROM customers").await.unwrap();
        let mut cuts: Vec<usize> = (0..(1 + round * 3)).map(|_| next() % csv.len()).collect();
        cuts.sort();
        let got = raw_copy(
            &mut raw,
            "COPY customers FROM STDIN WITH (FORMAT csv, HEADER)",
            csv,
            &cuts,
        )
        .await;
        assert_eq!(tags(&got), "CZ", "round {round}, cuts {cuts:?}: {got:?}");
        let mut cuts: Vec<usize> = (0..(1 + round)).map(|_| next() % text.len()).collect();
        cuts.sort();
        let got = raw_copy(&mut raw, "COPY customers FROM STDIN", text, &cuts).await;
        assert_eq!(
            tags(&got),
            "CZ",
            "round {round}, text cuts {cuts:?}: {got:?}"
        );
        let rows = client
            .query("SELECT id, name, email FROM customers ORDER BY id", &[])
            .await
            .unwrap();
        assert_eq!(rows.len(), 6);
        assert_eq!(
            rows[1].get::<_, Option<String>>(1).as_deref(),
            Some("multi\nline")
        );
        assert_eq!(
            rows[4].get::<_, Option<String>>(1).as_deref(),
            Some("Tab\there")
        );
        assert_eq!(
            rows[4].get::<_, Option<String>>(2).as_deref(),
            Some("a\\b@x.com")
        );
        assert_eq!(
            rows[5].get::<_, Option<String>>(1).as_deref(),
            Some("Esc AA")
        );
    }
    no_plaintext(&direct, &["Lovelace", "Tab", "q@x.com"]).await;

    // A row with a missing field: refused with PostgreSQL's wording and the
    // line; nothing of the COPY is stored; the session goes on.
    direct.batch_execute("DELETE FROM customers").await.unwrap();
    let bad = b"1,A,a@x.com,p,2000-01-01,n\n2,B\n";
    let got = raw_copy(&mut raw, "COPY customers FROM STDIN (FORMAT csv)", bad, &[]).await;
    assert_eq!(tags(&got), "EZ", "{got:?}");
    let err = String::from_utf8_lossy(&got[0].1).to_string();
    assert!(
        err.contains("C22P04")
            && err.contains("Mpgveil: missing data for column \"email\" (COPY line 2)"),
        "{err}"
    );
    assert!(!err.contains("a@x.com"));
    // A value that is not a date for the encrypted date column.
    let got = raw_copy(
        &mut raw,
        "COPY customers FROM STDIN (FORMAT csv)",
        b"1,A,a@x.com,p,not-a-date,n\n",
        &[],
    )
    .await;
    let err = String::from_utf8_lossy(&got[0].1).to_string();
    assert!(
        err.contains("Mpgveil: invalid input for type date") && !err.contains("not-a-date"),
        "{err}"
    );
    // The database's own error in the middle (duplicate email).
    let got = raw_copy(
        &mut raw,
        "COPY customers (id, email) FROM STDIN",
        b"1\td@x.com\n2\td@x.com\n",
        &[],
    )
    .await;
    let err = String::from_utf8_lossy(&got[0].1).to_string();
    assert!(err.contains("C23505") && !err.contains("d@x.com"), "{err}");
    // CopyFail from the client.
    let mut q = b"COPY customers FROM STDIN".to_vec();
    q.push(0);
    raw.send(&[msg(b'Q', &q)]).await;
    raw.until(b'G').await;
    raw.send(&[
        msg(b'd', b"5\tE\te@x.com\t\\N\t\\N\t\\N\n"),
        msg(b'f', b"client gave up\0"),
    ])
    .await;
    let got = raw.until_ready().await;
    assert_eq!(tags(&got), "EZ");
    let n: i64 = direct
        .query_one("SELECT count(*) FROM customers", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // Still usable, and COPY of a table without encrypted columns passes.
    direct
        .batch_execute("CREATE TABLE plain (a int, b text)")
        .await
        .unwrap();
    let got = raw_copy(&mut raw, "COPY plain FROM STDIN", b"1\tx\n", &[]).await;
    assert_eq!(tags(&got), "CZ");
    proxy.stop().await;
}

#[tokio::test]
async fn copy_to_from_file_or_program_and_views_are_refused() {
    let pg = cluster();
    let (proxy, c, _direct) = setup(pg, "copy_refused").await;
    for sql in [
        "COPY customers FROM '/tmp/plain.csv'",
        "COPY customers TO '/tmp/out.csv'",
        "COPY customers (email) TO PROGRAM 'cat'",
        "COPY customers FROM STDIN WITH (FORMAT csv, ENCODING 'LATIN1')",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        let db = e.as_db_error().unwrap();
        assert_eq!(db.code().code(), "0A000", "{sql}");
        assert!(
            db.message().starts_with("pgveil:"),
            "{sql}: {}",
            db.message()
        );
    }
    // Columns without encryption may go to a file as usual.
    c.batch_execute("COPY customers (id, note) TO '/dev/null'")
        .await
        .unwrap();
    proxy.stop().await;
}

fn pg_tool(tool: &str, port: u16, args: &[&str]) -> std::process::Output {
    let bin = support::find_pg_bin().join(tool);
    let program = if bin.exists() {
        bin
    } else {
        Path::new(tool).to_path_buf()
    };
    Command::new(program)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .env("PGPASSWORD", PASSWORD)
        .output()
        .expect("pg tool runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_dump_through_pgveil_is_plaintext_and_restores_encrypted() {
    let pg = cluster();
    let db = "copy_dump";
    let (proxy, c, _direct) = setup(pg, db).await;
    c.batch_execute(
        "INSERT INTO customers (id, name, email, phone, birth_date) VALUES \
         (1, 'Ada Lovelace', 'ada@example.com', '+44 1', '1815-12-10'), (2, 'Zoë', 'zoe@example.org', NULL, NULL)",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Through pgveil: plaintext. Directly: ciphertext.
    let plain = dir.path().join("plain.sql");
    let out = pg_tool(
        "pg_dump",
        proxy.port,
        &["-d", db, "-f", plain.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&plain).unwrap();
    assert!(
        text.contains("ada@example.com")
            && text.contains("Ada Lovelace")
            && text.contains("1815-12-10"),
        "{text}"
    );
    let cipher = dir.path().join("cipher.sql");
    let out = pg_tool(
        "pg_dump",
        pg.port,
        &["-d", db, "-f", cipher.to_str().unwrap()],
    );
    assert!(out.status.success());
    let text = std::fs::read_to_string(&cipher).unwrap();
    assert!(!text.contains("ada@example.com") && !text.contains("Lovelace"));

    // Plaintext dump restored through pgveil: encrypted at rest.
    pg.fresh_database("copy_dump_plain").await;
    let out = pg_tool(
        "psql",
        proxy.port,
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "copy_dump_plain",
            "-f",
            plain.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Ciphertext dump restored directly: kept as it is.
    pg.fresh_database("copy_dump_cipher").await;
    let out = pg_tool(
        "psql",
        pg.port,
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "copy_dump_cipher",
            "-f",
            cipher.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for restored in ["copy_dump_plain", "copy_dump_cipher"] {
        let d = support::connect(&db_conn(pg.port, restored)).await;
        no_plaintext(&d, &["ada@", "Lovelace", "1815"]).await;
        let v = support::connect(&db_conn(proxy.port, restored)).await;
        let r = v
            .query_one(
                "SELECT name FROM customers WHERE email = $1",
                &[&"ada@example.com"],
            )
            .await;
        let r = match r {
            Ok(r) => r,
            Err(e) => panic!("{restored}: {e:?}"),
        };
        assert_eq!(r.get::<_, String>(0), "Ada Lovelace", "{restored}");
    }
    // pg_restore of a custom-format dump made through pgveil.
    let custom = dir.path().join("plain.dump");
    let out = pg_tool(
        "pg_dump",
        proxy.port,
        &["-d", db, "-Fc", "-f", custom.to_str().unwrap()],
    );
    assert!(out.status.success());
    pg.fresh_database("copy_dump_custom").await;
    let out = pg_tool(
        "pg_restore",
        proxy.port,
        &["-d", "copy_dump_custom", custom.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = support::connect(&db_conn(pg.port, "copy_dump_custom")).await;
    no_plaintext(&d, &["ada@", "Lovelace"]).await;
    proxy.stop().await;
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_cursor_copy_in_and_out() {
    let install = Command::new(repo().join("tests/clients/install.sh"))
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let pg = cluster();
    let db = "copy_psycopg";
    let (proxy, _c, direct) = setup(pg, db).await;
    let out = Command::new(repo().join("target/clients/venv/bin/python"))
        .arg(repo().join("tests/clients/python/copy_check.py"))
        .env("PGVEIL_HOST", "127.0.0.1")
        .env("PGVEIL_PORT", proxy.port.to_string())
        .env("PGUSER", "postgres")
        .env("PGPASSWORD", PASSWORD)
        .env("PGDATABASE", db)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    no_plaintext(&direct, &["py1@", "Nâme"]).await;
    proxy.stop().await;
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_csv_load_keeps_proxy_memory_flat() {
    let pg = cluster();
    let db = "copy_million";
    pg.fresh_database(db).await;
    let direct = support::connect(&db_conn(pg.port, db)).await;
    direct.batch_execute(SCHEMA).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let path = dir.path().join("proxy.toml");
    std::fs::write(
        &path,
        format!("[listen]\naddress = \"127.0.0.1:{port}\"\n[upstream]\naddress = \"127.0.0.1:{}\"\n[log]\nlevel = \"warn\"\n{}", pg.port, config()),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let write = |rows: usize, name: &str| {
        use std::io::Write;
        let file = dir.path().join(name);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..rows {
            writeln!(w, "lead{i}@example.com,\"campaign, {}\"", i % 97).unwrap();
        }
        file
    };
    let small = write(100_000, "small.csv");
    let big = write(1_000_000, "big.csv");
    let copy = |file: &Path| {
        psql(
            port,
            db,
            &format!("\\copy leads from '{}' with (format csv)", file.display()),
        )
    };
    copy(&small);
    let after_small = peak_rss_kib(child.id());
    copy(&big);
    let after_big = peak_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    println!("pgveil peak RSS: {after_small} KiB after 100k rows, {after_big} KiB after 1M more");
    assert!(
        after_big < after_small + 16 * 1024,
        "peak RSS grew from {after_small} KiB to {after_big} KiB"
    );
    let n: i64 = direct
        .query_one("SELECT count(*) FROM leads", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1_100_000);
    let plain: i64 = direct
        .query_one(
            "SELECT count(*) FROM leads WHERE get_byte(email, 0) <> 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0);
}
