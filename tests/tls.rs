//! TLS on both hops and authentication across TLS termination, end to end:
//! real PostgreSQL clusters (the shared plaintext one, and one that accepts
//! TCP clients only over TLS), pgveil in process, and real clients: psql
//! (the OS libpq), psycopg 3 (its bundled libpq 18, so a PostgreSQL 17+
//! client for direct TLS negotiation) and tokio-postgres with a rustls
//! connector (`support::tls::TestTls`) that verifies the server and does
//! SCRAM-SHA-256-PLUS.
//!
//! Certificates are generated per run with the `openssl` CLI.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use support::tls::{CertKey, TestTls, certs, psycopg_python, tls_cluster, tls_server_end_point};
use support::{PASSWORD, PgCluster, Proxy, TLS_APP_PASSWORD, TLS_AUTH_PASSWORD, cluster};
use tokio_postgres::{Client, NoTls};

/// Bound on any single connect, query or client process.
const LIMIT: Duration = Duration::from_secs(30);

/// Who the session is, and whether pgveil's upstream hop is TLS.
const WHO: &str =
    "SELECT current_user || ' ' || ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()";

/// A value written through pgveil into an encrypted column; listed in
/// `support::PLAINTEXT_MARKERS` for the log audit.
const MARKER: &str = "veil-marker-tls@example.com";

// ------------------------------------------------------------ configs ----

/// `[listen.tls]` with `pair`, plus `more` lines (`required`, `client_ca`).
fn listen_tls(pair: &CertKey, more: &str) -> String {
    format!(
        "[listen.tls]\ncert = \"{}\"\nkey = \"{}\"\n{more}\n",
        pair.cert.display(),
        pair.key.display()
    )
}

/// `[upstream.tls]` in `mode`, with `ca` when given, plus `more` lines.
fn upstream_tls(mode: Option<&str>, ca: Option<&std::path::Path>, more: &str) -> String {
    let mut out = "[upstream.tls]\n".to_owned();
    if let Some(mode) = mode {
        out.push_str(&format!("mode = \"{mode}\"\n"));
    }
    if let Some(ca) = ca {
        out.push_str(&format!("ca = \"{}\"\n", ca.display()));
    }
    out.push_str(more);
    out.push('\n');
    out
}

/// `[upstream.tls]` verifying the TLS cluster against the test CA.
fn verify_full() -> String {
    upstream_tls(Some("verify-full"), Some(&certs().ca), "")
}

/// A 0600 file holding `pgveil_auth`'s password.
fn auth_password_file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let path = certs().dir.join("auth_password");
        std::fs::write(&path, TLS_AUTH_PASSWORD).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    })
}

/// `[auth] mode = "scram"` with `pgveil_auth` and its lookup function.
fn scram_auth() -> String {
    format!(
        "[auth]\nmode = \"scram\"\nauth_user = \"pgveil_auth\"\nauth_password_file = \"{}\"\n\
         auth_query = \"SELECT usename, passwd FROM pgveil_auth.lookup($1)\"\n",
        auth_password_file().display()
    )
}

fn upstream_of(pg: &PgCluster) -> String {
    format!("127.0.0.1:{}", pg.port)
}

// ------------------------------------------------------------ clients ----

/// libpq/tokio-postgres keywords for `user` through `port`, host name
/// `localhost` (what the certificates name) on 127.0.0.1; no password
/// keyword when `password` is empty (psql takes it from PGPASSWORD).
fn conninfo(port: u16, user: &str, password: &str, extra: &str) -> String {
    let password = if password.is_empty() {
        String::new()
    } else {
        format!("password={password} ")
    };
    format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={user} {password}\
         dbname=postgres connect_timeout=10 {extra}"
    )
}

/// Connects tokio-postgres with `tls` (or without TLS) within [`LIMIT`].
async fn try_connect_tls(
    conn: &str,
    tls: Option<pgveil::tls::PgConnector>,
) -> Result<Client, tokio_postgres::Error> {
    let connect = async {
        match tls {
            Some(tls) => {
                let (client, connection) = tokio_postgres::connect(conn, tls).await?;
                tokio::spawn(connection);
                Ok(client)
            }
            None => {
                let (client, connection) = tokio_postgres::connect(conn, NoTls).await?;
                tokio::spawn(connection);
                Ok(client)
            }
        }
    };
    tokio::time::timeout(LIMIT, connect)
        .await
        .unwrap_or_else(|_| panic!("connect {conn}: timed out"))
}

async fn connect_tls(conn: &str, tls: Option<pgveil::tls::PgConnector>) -> Client {
    try_connect_tls(conn, tls)
        .await
        .unwrap_or_else(|e| panic!("connect {conn}: {}", error_text(&e)))
}

/// [`WHO`] on `client`.
async fn who(client: &Client) -> String {
    tokio::time::timeout(LIMIT, client.query_one(WHO, &[]))
        .await
        .expect("query timed out")
        .unwrap()
        .get(0)
}

/// An error and all its sources, one line.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The server's error (SQLSTATE, message) of a failed connect.
fn db_error(r: Result<Client, tokio_postgres::Error>, what: &str) -> (String, String) {
    match r {
        Ok(_) => panic!("{what}: connected, expected a refusal"),
        Err(e) => match e.as_db_error() {
            Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
            None => panic!("{what}: expected a server error, got: {}", error_text(&e)),
        },
    }
}

/// What a client process did.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a client process within [`LIMIT`], with no PG* environment that
/// could change libpq's defaults and an empty HOME (no ~/.postgresql).
async fn run_client(program: &std::path::Path, args: &[String], password: &str) -> Run {
    let home = certs().dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("HOME", &home)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") && k != "PGPASSWORD" && k != "PGCONNECT_TIMEOUT" {
            cmd.env_remove(k);
        }
    }
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{} timed out", program.display()))
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// psql with `conninfo` (password from PGPASSWORD): `\conninfo`, then
/// [`WHO`]. Output unaligned, tuples only.
async fn psql(conninfo: &str, password: &str) -> Run {
    let args = [
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
        "-c",
        "\\conninfo",
        "-c",
        WHO,
    ]
    .map(str::to_owned);
    run_client(std::path::Path::new("psql"), &args, password).await
}

/// Asserts psql connected over TLS (to pgveil) and printed `who`.
fn assert_psql_tls(run: &Run, who: &str, what: &str) {
    assert!(run.ok, "{what}: psql failed: {}", run.stderr);
    assert!(
        run.stdout.contains("SSL connection"),
        "{what}: the client hop is not TLS:\n{}",
        run.stdout
    );
    assert!(
        run.stdout.lines().any(|l| l.trim() == who),
        "{what}: expected {who:?}, got:\n{}",
        run.stdout
    );
}

/// Connects psycopg 3 with each conninfo in turn; one line each:
/// `ok tls|plain <WHO>` or `err <message>`. The first line is `libpq N`.
const PSYCOPG_SCRIPT: &str = r#"
import json, sys
import psycopg
print("libpq", psycopg.pq.version(), flush=True)
for conninfo in json.loads(sys.argv[1]):
    try:
        with psycopg.connect(conninfo) as conn:
            who = conn.execute(sys.argv[2]).fetchone()[0]
            print("ok", "tls" if conn.pgconn.ssl_in_use else "plain", who, flush=True)
    except psycopg.Error as e:
        print("err", " ".join(str(e).split()), flush=True)
"#;

/// Runs [`PSYCOPG_SCRIPT`]; returns (libpq version, one result per conninfo).
async fn psycopg(conninfos: &[String]) -> (u32, Vec<String>) {
    let python = psycopg_python().clone();
    let args = [
        "-c".to_owned(),
        PSYCOPG_SCRIPT.to_owned(),
        serde_json::to_string(conninfos).unwrap(),
        WHO.to_owned(),
    ];
    let run = run_client(&python, &args, "").await;
    assert!(
        run.ok,
        "psycopg script failed: {}{}",
        run.stdout, run.stderr
    );
    let mut lines = run.stdout.lines();
    let version = lines
        .next()
        .and_then(|l| l.strip_prefix("libpq "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no libpq version in:\n{}", run.stdout));
    let results: Vec<String> = lines.map(str::to_owned).collect();
    assert_eq!(
        results.len(),
        conninfos.len(),
        "psycopg output:\n{}",
        run.stdout
    );
    (version, results)
}

// -------------------------------------------------------------- tests ----

/// The connector's channel binding data is the certificate hashed with the
/// hash of its signature: SHA-256 for the ECDSA/SHA-256 certificate, SHA-384
/// for the RSA/SHA-384 one (checked against `openssl x509 -fingerprint`).
#[test]
fn connector_channel_binding_hash_follows_the_certificate_signature() {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    for (pair, digest, len) in [
        (&certs().server, "-sha256", 32),
        (&certs().server_rsa, "-sha384", 48),
    ] {
        let der = CertificateDer::from_pem_file(&pair.cert).unwrap();
        let hash = tls_server_end_point(&der);
        assert_eq!(hash.len(), len, "{}", pair.cert.display());
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", digest, "-in"])
            .arg(&pair.cert)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let hex: String = text
            .split_once('=')
            .unwrap()
            .1
            .trim()
            .replace(':', "")
            .to_lowercase();
        let ours: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(ours, hex, "{}", pair.cert.display());
    }
}

/// The test tools against PostgreSQL itself, so the tests below prove
/// pgveil and not the harness: the TLS cluster refuses plaintext TCP, and
/// the connector verifies it and does SCRAM-SHA-256-PLUS with its RSA/SHA-384
/// certificate (SHA-384 binding data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_tls_cluster_and_connector_against_postgresql() {
    let pg = tls_cluster();
    let c = certs();
    let direct = conninfo(pg.port, "postgres", PASSWORD, "sslmode=disable");
    let (code, message) = db_error(try_connect_tls(&direct, None).await, "plaintext direct");
    assert_eq!(code, "28000", "{message}");

    let plus = conninfo(
        pg.port,
        "app",
        TLS_APP_PASSWORD,
        "sslmode=require channel_binding=require",
    );
    let client = connect_tls(&plus, Some(TestTls::new(&c.ca))).await;
    assert_eq!(who(&client).await, "app true");
    let r = try_connect_tls(&plus, Some(TestTls::new(&c.other_ca))).await;
    assert!(r.is_err(), "the connector trusted another CA");
}

/// `[listen.tls]` in front of the plaintext shared cluster: psql and
/// tokio-postgres verify pgveil's certificate (CA and host name), through
/// SSLRequest and direct TLS; a client trusting another CA is refused by
/// its own verification. Both certificate kinds (ECDSA with a PKCS#8 key,
/// RSA with a PKCS#1 key) load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_verify_pgveil_certificate_full() {
    let pg = cluster();
    let c = certs();
    for pair in [&c.server, &c.server_rsa] {
        let what = pair.cert.display().to_string();
        let proxy = Proxy::start_full(&upstream_of(pg), &listen_tls(pair, ""), "").await;
        let ca = c.ca.display();

        let verify_full = format!("sslmode=verify-full sslrootcert={ca}");
        let run = psql(
            &conninfo(proxy.port, "postgres", "", &verify_full),
            PASSWORD,
        )
        .await;
        assert_psql_tls(&run, "postgres false", &what);

        let wrong_ca = format!("sslmode=verify-full sslrootcert={}", c.other_ca.display());
        let run = psql(&conninfo(proxy.port, "postgres", "", &wrong_ca), PASSWORD).await;
        assert!(
            !run.ok,
            "{what}: psql trusted a certificate from another CA"
        );
        assert!(
            run.stderr.contains("certificate verify failed"),
            "{what}: {}",
            run.stderr
        );

        for extra in ["sslmode=require", "sslmode=require sslnegotiation=direct"] {
            let conn = conninfo(proxy.port, "postgres", PASSWORD, extra);
            let client = connect_tls(&conn, Some(TestTls::new(&c.ca))).await;
            assert_eq!(who(&client).await, "postgres false", "{what} {extra}");
        }

        let conn = conninfo(proxy.port, "postgres", PASSWORD, "sslmode=require");
        let err = try_connect_tls(&conn, Some(TestTls::new(&c.other_ca)))
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: the connector trusted another CA"));
        assert!(
            error_text(&err).contains("certificate"),
            "{what}: {}",
            error_text(&err)
        );
    }
}

/// `required = true`: a client that does not negotiate TLS gets FATAL 28000
/// saying TLS is required; TLS clients still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_tls_refuses_plaintext_clients() {
    let pg = cluster();
    let c = certs();
    let proxy = Proxy::start_full(
        &upstream_of(pg),
        &listen_tls(&c.server, "required = true"),
        "",
    )
    .await;

    let run = psql(
        &conninfo(proxy.port, "postgres", "", "sslmode=disable"),
        PASSWORD,
    )
    .await;
    assert!(!run.ok, "psql sslmode=disable was served");
    assert!(
        run.stderr.contains("pgveil:") && run.stderr.contains("TLS is required"),
        "{}",
        run.stderr
    );

    let conn = conninfo(proxy.port, "postgres", PASSWORD, "sslmode=disable");
    let (code, message) = db_error(try_connect_tls(&conn, None).await, "sslmode=disable");
    assert_eq!(code, "28000", "{message}");
    assert!(
        message.starts_with("pgveil:") && message.contains("TLS is required"),
        "{message}"
    );

    let verify_full = format!("sslmode=verify-full sslrootcert={}", c.ca.display());
    let run = psql(
        &conninfo(proxy.port, "postgres", "", &verify_full),
        PASSWORD,
    )
    .await;
    assert_psql_tls(&run, "postgres false", "required, verify-full");
}

/// `client_ca`: a client certificate signed by that CA is accepted; no
/// certificate, one from another CA, or no TLS at all is refused (psql and
/// tokio-postgres).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_with_client_ca() {
    let pg = cluster();
    let c = certs();
    let client_ca = format!("client_ca = \"{}\"", c.ca.display());
    let proxy = Proxy::start_full(&upstream_of(pg), &listen_tls(&c.server, &client_ca), "").await;
    let ca = c.ca.display();

    let with_cert = |pair: &CertKey| {
        format!(
            "sslmode=verify-full sslrootcert={ca} sslcert={} sslkey={}",
            pair.cert.display(),
            pair.key.display()
        )
    };
    let run = psql(
        &conninfo(proxy.port, "postgres", "", &with_cert(&c.client)),
        PASSWORD,
    )
    .await;
    assert_psql_tls(&run, "postgres false", "psql with a client certificate");

    for (extra, what) in [
        (
            format!("sslmode=verify-full sslrootcert={ca}"),
            "no client certificate",
        ),
        // `client_ca` implies `required`: a plaintext client would skip it.
        ("sslmode=disable".to_string(), "no TLS at all"),
        (
            with_cert(&c.other_client),
            "a client certificate of another CA",
        ),
    ] {
        let run = psql(&conninfo(proxy.port, "postgres", "", &extra), PASSWORD).await;
        assert!(!run.ok, "psql with {what} was served:\n{}", run.stdout);
    }

    let conn = conninfo(proxy.port, "postgres", PASSWORD, "sslmode=require");
    let client = connect_tls(&conn, Some(TestTls::with_client_cert(&c.ca, &c.client))).await;
    assert_eq!(who(&client).await, "postgres false");
    for tls in [
        TestTls::new(&c.ca),
        TestTls::with_client_cert(&c.ca, &c.other_client),
    ] {
        let r = try_connect_tls(&conn, Some(tls)).await;
        if let Ok(client) = r {
            // TLS 1.3 completes the client's side of the handshake before
            // the server has judged the certificate; the refusal then
            // arrives on first use.
            let q = tokio::time::timeout(LIMIT, client.simple_query("SELECT 1")).await;
            assert!(
                !matches!(q, Ok(Ok(_))),
                "a client without a valid certificate was served"
            );
        }
    }
}

/// pgveil in front of a PostgreSQL that accepts TCP only over TLS
/// (`hostssl ... scram-sha-256`): plaintext is refused by the server itself;
/// `verify-full` (also the default when `[upstream.tls]` is present),
/// `verify-ca`, `require` without a CA and `prefer` all reach it over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_modes_against_a_tls_only_cluster() {
    let pg = tls_cluster();
    let c = certs();
    for (section, what) in [
        (upstream_tls(None, Some(&c.ca), ""), "default mode"),
        (verify_full(), "verify-full"),
        (
            upstream_tls(Some("verify-ca"), Some(&c.ca), ""),
            "verify-ca",
        ),
        (
            upstream_tls(Some("require"), None, ""),
            "require without CA",
        ),
        (upstream_tls(Some("prefer"), None, ""), "prefer"),
    ] {
        let proxy = Proxy::start_with_upstream(&upstream_of(pg), &section).await;
        let conn = conninfo(proxy.port, "postgres", PASSWORD, "sslmode=disable");
        let client = try_connect_tls(&conn, None)
            .await
            .unwrap_or_else(|e| panic!("{what}: {}", error_text(&e)));
        assert_eq!(who(&client).await, "postgres true", "{what}");
    }

    // `disable` means plaintext, which this server refuses.
    let proxy =
        Proxy::start_with_upstream(&upstream_of(pg), &upstream_tls(Some("disable"), None, ""))
            .await;
    let conn = conninfo(proxy.port, "postgres", PASSWORD, "sslmode=disable");
    let (code, message) = db_error(try_connect_tls(&conn, None).await, "mode = disable");
    assert_eq!(code, "28000", "{message}");
}

/// A wrong CA, or a server name the certificate does not carry, is refused
/// with a `pgveil:` error naming the certificate problem (SQLSTATE class
/// 08); `verify-ca` does not check the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_wrong_ca_or_name_is_refused_clearly() {
    let pg = tls_cluster();
    let c = certs();
    let wrong_name = "server_name = \"wrong.example.com\"";
    for (section, what) in [
        (
            upstream_tls(Some("verify-full"), Some(&c.other_ca), ""),
            "verify-full, wrong CA",
        ),
        (
            upstream_tls(Some("verify-ca"), Some(&c.other_ca), ""),
            "verify-ca, wrong CA",
        ),
        (
            upstream_tls(Some("verify-full"), Some(&c.ca), wrong_name),
            "verify-full, wrong server_name",
        ),
    ] {
        let proxy = Proxy::start_with_upstream(&upstream_of(pg), &section).await;
        let conn = conninfo(proxy.port, "postgres", PASSWORD, "sslmode=disable");
        let (code, message) = db_error(try_connect_tls(&conn, None).await, what);
        assert!(code.starts_with("08"), "{what}: SQLSTATE {code}: {message}");
        assert!(
            message.starts_with("pgveil:") && message.to_lowercase().contains("certificate"),
            "{what}: {message}"
        );
    }

    let section = upstream_tls(Some("verify-ca"), Some(&c.ca), wrong_name);
    let proxy = Proxy::start_with_upstream(&upstream_of(pg), &section).await;
    let conn = conninfo(proxy.port, "postgres", PASSWORD, "sslmode=disable");
    let client = connect_tls(&conn, None).await;
    assert_eq!(who(&client).await, "postgres true", "verify-ca, other name");
}

/// TLS on both hops in passthrough mode: a libpq client with default
/// `channel_binding=prefer` sends the "client supports binding" flag, which
/// cannot cross TLS termination, and gets pgveil's FATAL saying what to set;
/// `channel_binding=disable` works. (`required = true`, because with
/// `sslmode=prefer` libpq retries without TLS after a failure.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_over_tls_on_both_hops_explains_channel_binding() {
    let pg = tls_cluster();
    let c = certs();
    let proxy = Proxy::start_full(
        &upstream_of(pg),
        &listen_tls(&c.server, "required = true"),
        &verify_full(),
    )
    .await;
    let assert_explains = |text: &str, what: &str| {
        assert!(
            text.contains("pgveil:")
                && text.contains("channel_binding=disable")
                && text.contains("mode = \"scram\""),
            "{what}: {text}"
        );
    };

    let run = psql(&conninfo(proxy.port, "app", "", ""), TLS_APP_PASSWORD).await;
    assert!(!run.ok, "default psql was served:\n{}", run.stdout);
    assert_explains(&run.stderr, "psql defaults");

    let run = psql(
        &conninfo(proxy.port, "app", "", "channel_binding=disable"),
        TLS_APP_PASSWORD,
    )
    .await;
    assert_psql_tls(&run, "app true", "psql channel_binding=disable");

    let conn = conninfo(proxy.port, "app", TLS_APP_PASSWORD, "sslmode=require");
    let (_, message) = db_error(
        try_connect_tls(&conn, Some(TestTls::new(&c.ca))).await,
        "tokio-postgres defaults",
    );
    assert_explains(&message, "tokio-postgres defaults");
    let client = connect_tls(
        &format!("{conn} channel_binding=disable"),
        Some(TestTls::new(&c.ca)),
    )
    .await;
    assert_eq!(who(&client).await, "app true");

    let (_, results) = psycopg(&[
        conninfo(proxy.port, "app", TLS_APP_PASSWORD, ""),
        conninfo(
            proxy.port,
            "app",
            TLS_APP_PASSWORD,
            "channel_binding=disable",
        ),
    ])
    .await;
    assert!(results[0].starts_with("err "), "{}", results[0]);
    assert_explains(&results[0], "psycopg defaults");
    assert_eq!(results[1], "ok tls app true");
}

/// `[auth] mode = "scram"`, TLS on both hops: psql with default settings,
/// with `channel_binding=require` (pgveil offers SCRAM-SHA-256-PLUS), and
/// tokio-postgres with PLUS against an ECDSA/SHA-256 and an RSA/SHA-384
/// pgveil certificate, direct TLS, and plaintext, all log in as `app`
/// without pgveil knowing the password; a wrong password gets 28P01.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_mode_serves_default_clients_over_tls_on_both_hops() {
    let pg = tls_cluster();
    let c = certs();
    let extra = format!("{}{}", verify_full(), scram_auth());
    let proxy = Proxy::start_full(&upstream_of(pg), &listen_tls(&c.server, ""), &extra).await;
    let ca = c.ca.display();

    let run = psql(&conninfo(proxy.port, "app", "", ""), TLS_APP_PASSWORD).await;
    assert_psql_tls(&run, "app true", "psql defaults");
    let require = format!("sslmode=verify-full sslrootcert={ca} channel_binding=require");
    let run = psql(&conninfo(proxy.port, "app", "", &require), TLS_APP_PASSWORD).await;
    assert_psql_tls(&run, "app true", "psql channel_binding=require");
    let run = psql(&conninfo(proxy.port, "app", "", ""), "not-the-password").await;
    assert!(!run.ok, "psql with a wrong password was served");

    let tls = || Some(TestTls::new(&c.ca));
    for extra in [
        "sslmode=require channel_binding=require",
        "sslmode=require sslnegotiation=direct channel_binding=require",
    ] {
        let conn = conninfo(proxy.port, "app", TLS_APP_PASSWORD, extra);
        let client = connect_tls(&conn, tls()).await;
        assert_eq!(who(&client).await, "app true", "{extra}");
    }
    let plain = conninfo(proxy.port, "app", TLS_APP_PASSWORD, "sslmode=disable");
    let client = connect_tls(&plain, None).await;
    assert_eq!(who(&client).await, "app true", "plaintext client");

    let wrong = conninfo(proxy.port, "app", "not-the-password", "sslmode=require");
    let (code, message) = db_error(try_connect_tls(&wrong, tls()).await, "wrong password");
    assert_eq!(code, "28P01", "{message}");
    let nobody = conninfo(proxy.port, "nobody", "whatever", "sslmode=require");
    let (code, message) = db_error(try_connect_tls(&nobody, tls()).await, "unknown role");
    assert!(code.starts_with("28"), "unknown role: {code} {message}");

    // pgveil's own binding data follows its certificate's signature hash.
    let rsa = Proxy::start_full(&upstream_of(pg), &listen_tls(&c.server_rsa, ""), &extra).await;
    let conn = conninfo(
        rsa.port,
        "app",
        TLS_APP_PASSWORD,
        "sslmode=require channel_binding=require",
    );
    let client = connect_tls(&conn, tls()).await;
    assert_eq!(who(&client).await, "app true", "RSA/SHA-384 certificate");
}

/// psycopg 3 (bundled libpq 18) in scram mode with TLS on both hops: default
/// settings, `verify-full` with `channel_binding=require`, and PostgreSQL
/// 17+ direct TLS negotiation (`sslnegotiation=direct`, ALPN) all work; a
/// wrong password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_defaults_and_direct_tls_in_scram_mode() {
    let pg = tls_cluster();
    let c = certs();
    let extra = format!("{}{}", verify_full(), scram_auth());
    let proxy = Proxy::start_full(&upstream_of(pg), &listen_tls(&c.server, ""), &extra).await;
    let ca = c.ca.display();
    let conninfos = [
        conninfo(proxy.port, "app", TLS_APP_PASSWORD, ""),
        conninfo(
            proxy.port,
            "app",
            TLS_APP_PASSWORD,
            &format!("sslmode=verify-full sslrootcert={ca} channel_binding=require"),
        ),
        conninfo(
            proxy.port,
            "app",
            TLS_APP_PASSWORD,
            &format!("sslmode=verify-full sslrootcert={ca} sslnegotiation=direct"),
        ),
        conninfo(proxy.port, "app", "not-the-password", ""),
        // Protocol 3.2 asked of a PostgreSQL 15: its NegotiateProtocolVersion
        // reaches the client after pgveil's own SCRAM exchange.
        conninfo(
            proxy.port,
            "app",
            TLS_APP_PASSWORD,
            "max_protocol_version=latest",
        ),
    ];
    let (version, results) = psycopg(&conninfos).await;
    assert!(
        version >= 170000,
        "psycopg's libpq {version} cannot do sslnegotiation=direct"
    );
    for (i, what) in ["defaults", "channel_binding=require", "direct TLS"]
        .iter()
        .enumerate()
    {
        assert_eq!(results[i], "ok tls app true", "psycopg {what}");
    }
    assert!(
        results[3].starts_with("err "),
        "wrong password: {}",
        results[3]
    );
    assert_eq!(
        results[4], "ok tls app true",
        "psycopg asking for protocol 3.2"
    );
}

/// An encrypted column still round-trips with TLS on both hops (scram mode),
/// and the database holds ciphertext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_columns_work_over_tls_on_both_hops() {
    let pg = tls_cluster();
    let c = certs();
    let extra = format!(
        "{}[keys]\nmaster_key_file = \"{}\"\n{}\
         [[encrypt]]\ntable = \"tls_contacts\"\ncolumn = \"email\"\ntype = \"text\"\n",
        verify_full(),
        support::key_file().display(),
        scram_auth()
    );
    let proxy = Proxy::start_full(&upstream_of(pg), &listen_tls(&c.server, ""), &extra).await;
    let conn = conninfo(
        proxy.port,
        "app",
        TLS_APP_PASSWORD,
        "sslmode=require channel_binding=require",
    );
    let client = connect_tls(&conn, Some(TestTls::new(&c.ca))).await;
    let round_trip = async {
        client
            .execute(
                "INSERT INTO tls_contacts (id, email) VALUES ($1, $2)",
                &[&1i32, &MARKER],
            )
            .await
            .unwrap();
        let row = client
            .query_one(
                "SELECT email FROM tls_contacts WHERE email = $1",
                &[&MARKER],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), MARKER);
        let rows = client
            .simple_query(&format!(
                "SELECT id FROM tls_contacts WHERE email = '{MARKER}'"
            ))
            .await
            .unwrap();
        assert!(
            rows.iter().any(
                |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("1"))
            ),
            "simple query by equality found nothing"
        );
    };
    tokio::time::timeout(LIMIT, round_trip)
        .await
        .expect("round trip timed out");

    let direct = pg.connect_socket().await;
    let stored: Vec<u8> = direct
        .query_one("SELECT email FROM tls_contacts WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored.len() > MARKER.len(), "stored {} bytes", stored.len());
    assert!(
        !stored.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "the database holds the plaintext"
    );
}

/// Hardening of the client handshake: a client that asks for TLS and then
/// stalls is closed after `startup_timeout_ms`; plaintext sent right behind
/// the SSLRequest (before pgveil's `S`) is never read as part of the
/// session, so it breaks the handshake instead of being injected; direct
/// TLS without ALPN `postgresql` is refused.
#[tokio::test]
async fn handshake_stalls_injected_bytes_and_missing_alpn_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = certs();
    let proxy = Proxy::start_full(
        &upstream_of(cluster()),
        &listen_tls(&c.server, ""),
        "[limits]\nstartup_timeout_ms = 300\n",
    )
    .await;
    let ssl_request = [0u8, 0, 0, 8, 4, 210, 22, 47];

    // Stall after `S`: closed by the startup timeout.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    s.write_all(&ssl_request).await.unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"S");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a stalled handshake was not closed");

    // A StartupMessage pipelined behind the SSLRequest: the handshake sees
    // it as garbage and fails; nothing reaches PostgreSQL.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let mut packet = ssl_request.to_vec();
    let startup = b"\0\x03\0\0user\0postgres\0database\0postgres\0\0";
    packet.extend_from_slice(&((startup.len() + 4) as i32).to_be_bytes());
    packet.extend_from_slice(startup);
    s.write_all(&packet).await.unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply)).await;
    assert_eq!(reply.first(), Some(&b'S'));
    assert!(
        !reply.windows(1).skip(1).any(|w| w == b"R"),
        "authentication started on injected plaintext: {reply:?}"
    );

    // Direct TLS without ALPN: the handshake completes at the TLS level but
    // pgveil closes the connection instead of reading a startup packet.
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates({
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(&c.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    })
    .with_no_client_auth();
    config.alpn_protocols.clear();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    if let Ok(mut tls) = connector.connect(name, tcp).await {
        let _ = tls.write_all(&packet[8..]).await;
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut reply)).await;
        assert!(
            reply.is_empty(),
            "a direct TLS client without ALPN was served"
        );
    }
    proxy.stop().await;
}

/// `scram` mode in front of a plaintext upstream whose `pg_hba.conf` says
/// `md5` for one role and `trust` for another: pgveil verifies each client
/// itself (MD5 challenge against an MD5 verifier, SCRAM otherwise) before
/// the upstream login, so a wrong password is refused even where the
/// database would trust the role. `[upstream.tls] mode = "prefer"` falls
/// back to plaintext against a server without TLS (counted), `require`
/// refuses it clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_mode_md5_and_trust_verifiers_and_prefer_fallback() {
    let pg = cluster();
    pg.psql_socket(&support::tls::tls_setup_sql());
    pg.psql_socket(
        "SET password_encryption = 'md5'; CREATE ROLE pgveil_md5 LOGIN PASSWORD 'md5-secret'; \
         RESET password_encryption; CREATE ROLE pgveil_trust LOGIN PASSWORD 'trust-secret';",
    );
    let extra = format!(
        "{}[metrics]\naddress = \"127.0.0.1:0\"\n{}",
        upstream_tls(Some("prefer"), None, ""),
        scram_auth()
    );
    let proxy = Proxy::start_full(&upstream_of(pg), "", &extra).await;
    for (user, password) in [
        ("pgveil_md5", "md5-secret"),
        ("pgveil_trust", "trust-secret"),
    ] {
        let conn = conninfo(proxy.port, user, password, "sslmode=disable");
        let client = connect_tls(&conn, None).await;
        let me: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(me, user);
        let wrong = conninfo(proxy.port, user, "not-it", "sslmode=disable");
        let (code, message) = db_error(try_connect_tls(&wrong, None).await, user);
        assert_eq!(code, "28P01", "{user}: {message}");
    }
    let mport = proxy.metrics_port.unwrap();
    support::wait_for_metric(mport, "pgveil_upstream_tls_fallbacks_total ", 1.0).await;
    support::wait_for_metric(mport, "pgveil_auth_total{result=\"ok\"} ", 2.0).await;
    proxy.stop().await;

    // Passthrough, so the client sees the connection error itself (in scram
    // mode the failed lookup is reported generically and logged).
    let extra = upstream_tls(Some("require"), None, "");
    let proxy = Proxy::start_full(&upstream_of(pg), "", &extra).await;
    let conn = conninfo(proxy.port, "pgveil_md5", "md5-secret", "sslmode=disable");
    let (code, message) = db_error(try_connect_tls(&conn, None).await, "require");
    assert!(code.starts_with("08"), "{code} {message}");
    assert!(
        message.starts_with("pgveil:") && message.contains("TLS"),
        "{message}"
    );
    proxy.stop().await;
}
