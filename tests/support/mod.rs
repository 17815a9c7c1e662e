//! Test harness: a throwaway PostgreSQL cluster per test binary, and pgveil
//! proxies in front of it. No mocks: every test talks to a real server.
//!
//! The cluster is found via `PG_BIN`, `pg_config --bindir`, or the highest
//! `/usr/lib/postgresql/*/bin`. As root, the server binaries run as user
//! `postgres` (PostgreSQL refuses root). A watchdog process stops the
//! cluster and removes its directory when the test binary exits, however it
//! exits.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod coherence;
pub mod pgdate;
pub mod raw;
pub mod tls;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use pgveil::config::Config;
use tokio::sync::oneshot;

/// A fixed test master key (32 bytes, base64). Never used outside tests.
pub const TEST_KEY: &str = "cGd2ZWlsLXRlc3Qta2V5LTMyLWJ5dGVzLWxvbmchISE=";

/// A 0600 file holding [`TEST_KEY`], in a directory kept for the process.
pub fn key_file() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("master.key");
    std::fs::write(&path, TEST_KEY).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Password of the `postgres` superuser in test clusters.
pub const PASSWORD: &str = "pgveil-test-pw";

/// Password of the application role `app` in the TLS-only cluster
/// (`tests/tls.rs`).
pub const TLS_APP_PASSWORD: &str = "pgveil-tls-app-pw-7c1e";

/// Password of `pgveil_auth`, the role pgveil's `[auth] mode = "scram"`
/// uses to fetch verifiers in the TLS-only cluster.
pub const TLS_AUTH_PASSWORD: &str = "pgveil-tls-auth-pw-93bd";

/// Every password the tests use; `tests/log_audit.rs` checks no log line
/// carries one.
pub const TEST_PASSWORDS: &[&str] = &[PASSWORD, TLS_APP_PASSWORD, TLS_AUTH_PASSWORD];

/// Distinctive plaintext values the encrypted-column tests write through
/// pgveil; `tests/log_audit.rs` checks no log line carries one.
pub const PLAINTEXT_MARKERS: &[&str] = &[
    "veil-marker-tls@example.com",
    "ada.lovelace@example.com",
    "grace.hopper@example.com",
    "ada@example.com",
    "grace@example.com",
    "zoe@example.org",
    "radia@example.com",
    "o'brien@example.ie",
    "Lovelace, Ada",
    "+44 20 7946 0999",
    "+1 212 555 0102",
    "Zoë Ångström-李",
    // Every marker of tests/adversarial.rs starts with it.
    "advsecret",
];

/// A running PostgreSQL cluster.
#[derive(Debug)]
pub struct PgCluster {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Server binaries directory.
    pub bin: PathBuf,
    /// Cluster root (data dir, socket dir, log).
    pub dir: PathBuf,
    /// `postgres` options, kept to restart the cluster.
    options: String,
}

static CLUSTER: OnceLock<PgCluster> = OnceLock::new();

/// The cluster shared by all tests of this binary, started on first use.
pub fn cluster() -> &'static PgCluster {
    CLUSTER.get_or_init(|| PgCluster::start(&find_pg_bin(), "scram-sha-256", &[]))
}

/// Locates the PostgreSQL server binaries.
pub fn find_pg_bin() -> PathBuf {
    pgveil::localpg::find_server_binaries()
        .unwrap_or_else(|| panic!("{}", pgveil::localpg::INSTALL_HINT))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    pgveil::localpg::is_root()
}

/// Runs a server binary, as `postgres` when we are root.
fn pg_command(bin: &Path, program: &str) -> Command {
    pgveil::localpg::command(bin, program, is_root())
}

fn run_checked(mut cmd: Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgCluster {
    /// Initialises and starts a new cluster: `auth_host` is the pg_hba
    /// method for TCP (`scram-sha-256`, `md5`, `password`, `trust`), and
    /// `settings` are extra `postgres -c` settings.
    pub fn start(bin: &Path, auth_host: &str, settings: &[(&str, &str)]) -> PgCluster {
        PgCluster::start_with_hba(bin, auth_host, settings, None)
    }

    /// Like [`PgCluster::start`], with `hba` (when given) as the whole
    /// `pg_hba.conf` instead of the default one.
    pub fn start_with_hba(
        bin: &Path,
        auth_host: &str,
        settings: &[(&str, &str)],
        hba: Option<&str>,
    ) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("pgveil-pg-")
            .tempdir()
            .unwrap()
            .keep();
        if is_root() {
            let uid = Command::new("id")
                .args(["-u", "postgres"])
                .output()
                .unwrap();
            let gid = Command::new("id")
                .args(["-g", "postgres"])
                .output()
                .unwrap();
            let parse = |o: std::process::Output| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .unwrap()
            };
            std::os::unix::fs::chown(&dir, Some(parse(uid)), Some(parse(gid))).unwrap();
        }
        let pwfile = dir.join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        let _ = Command::new("chmod").arg("644").arg(&pwfile).status();
        let data = dir.join("data");
        let mut initdb = pg_command(bin, "initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync"])
            .args(["--auth-local=trust"])
            .arg(format!("--auth-host={auth_host}"))
            .arg(format!("--pwfile={}", pwfile.display()));
        run_checked(initdb, "initdb");
        // Fixed roles with their own methods, so every authentication
        // exchange can be tested through the proxy; the rest use `auth_host`.
        let hba = hba.map(str::to_owned).unwrap_or_else(|| {
            format!(
                "local all all trust\n\
                 host all pgveil_trust 127.0.0.1/32 trust\n\
                 host all pgveil_md5 127.0.0.1/32 md5\n\
                 host all pgveil_clear 127.0.0.1/32 password\n\
                 host all all 127.0.0.1/32 {auth_host}\n\
                 host all all ::1/128 {auth_host}\n"
            )
        });
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();

        let port = free_port();
        let mut options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            dir.display()
        );
        for (k, v) in settings {
            options.push_str(&format!(" -c {k}={v}"));
        }
        let mut pg_ctl = pg_command(bin, "pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.join("log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run_checked(pg_ctl, "pg_ctl start");
        spawn_watchdog(bin, &dir, &data);
        PgCluster {
            port,
            bin: bin.to_path_buf(),
            dir,
            options,
        }
    }

    /// Runs `pg_ctl start` or `pg_ctl stop` (fast) on this cluster.
    pub fn pg_ctl(&self, action: &str) {
        let mut cmd = pg_command(&self.bin, "pg_ctl");
        cmd.arg("-D").arg(self.dir.join("data")).arg("-w");
        match action {
            "start" => {
                cmd.arg("-l")
                    .arg(self.dir.join("log"))
                    .args(["-o", &self.options, "start"]);
            }
            other => {
                cmd.args(["-m", "fast", other]);
            }
        }
        run_checked(cmd, &format!("pg_ctl {action}"));
    }

    /// libpq-style connection string for the superuser, direct or via `port`.
    pub fn conn_str_on(&self, port: u16) -> String {
        format!("host=127.0.0.1 port={port} user=postgres password={PASSWORD} dbname=postgres")
    }

    /// Connection string straight to PostgreSQL.
    pub fn conn_str(&self) -> String {
        self.conn_str_on(self.port)
    }

    /// URL form, for tools that want one.
    pub fn url(&self) -> String {
        format!(
            "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// A tokio-postgres client straight to PostgreSQL.
    pub async fn connect(&self) -> tokio_postgres::Client {
        connect(&self.conn_str()).await
    }

    /// Drops and creates database `name` (separate statements: neither may
    /// run in a transaction block).
    pub async fn fresh_database(&self, name: &str) {
        let admin = self.connect().await;
        admin
            .simple_query(&format!("DROP DATABASE IF EXISTS {name}"))
            .await
            .unwrap();
        admin
            .simple_query(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    }

    /// Runs SQL as superuser straight on the server (simple protocol).
    pub async fn execute(&self, sql: &str) {
        self.connect().await.batch_execute(sql).await.unwrap();
    }
}

/// Connects with tokio-postgres and drives the connection in the background.
pub async fn connect(conn_str: &str) -> tokio_postgres::Client {
    try_connect(conn_str)
        .await
        .unwrap_or_else(|e| panic!("connect {conn_str}: {e}"))
}

/// Like [`connect`] but returns the error.
pub async fn try_connect(conn_str: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn_str, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Stops the cluster and removes its directory once this process is gone.
fn spawn_watchdog(bin: &Path, dir: &Path, data: &Path) {
    let pg_ctl = bin.join("pg_ctl");
    let stop = if is_root() {
        format!(
            "runuser -u postgres -- {} -D {} stop -m immediate",
            pg_ctl.display(),
            data.display()
        )
    } else {
        format!(
            "{} -D {} stop -m immediate",
            pg_ctl.display(),
            data.display()
        )
    };
    run_after_exit(&format!("{stop} >/dev/null 2>&1; rm -rf {}", dir.display()));
}

/// Removes `dir` once this process is gone.
pub fn remove_after_exit(dir: &Path) {
    run_after_exit(&format!("rm -rf {}", dir.display()));
}

/// Runs the shell command `then` in a detached process once this process
/// has exited, however it exits.
fn run_after_exit(then: &str) {
    let pid = std::process::id();
    let script = format!("while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {then}");
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// A pgveil instance running in this process.
pub struct Proxy {
    /// Where clients connect.
    pub port: u16,
    /// The metrics endpoint's port, when `[metrics]` is configured.
    pub metrics_port: Option<u16>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Starts pgveil in front of `pg` with `extra` TOML appended to a
    /// minimal config (listen on a free port).
    pub async fn start(pg: &PgCluster, extra: &str) -> Proxy {
        Proxy::start_with_upstream(&format!("127.0.0.1:{}", pg.port), extra).await
    }

    /// Starts pgveil in front of any upstream address.
    pub async fn start_with_upstream(upstream: &str, extra: &str) -> Proxy {
        Proxy::start_full(upstream, "", extra).await
    }

    /// Starts pgveil with `listen_extra` inside `[listen]` and `extra` TOML
    /// appended after `[upstream]`.
    pub async fn start_full(upstream: &str, listen_extra: &str, extra: &str) -> Proxy {
        init_test_logging();
        let text = format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n{listen_extra}\n[upstream]\naddress = \"{upstream}\"\n{extra}\n"
        );
        let config = Config::parse(&text, "test").unwrap();
        let server = pgveil::server::Server::bind(config).await.unwrap();
        let port = server.local_addr().unwrap().port();
        let metrics_port = server.metrics_addr().map(|a| a.port());
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            server
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Proxy {
            port,
            metrics_port,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Connection string through this proxy to `pg`.
    pub fn conn_str(&self, pg: &PgCluster) -> String {
        pg.conn_str_on(self.port)
    }

    /// A tokio-postgres client through this proxy.
    pub async fn connect(&self, pg: &PgCluster) -> tokio_postgres::Client {
        connect(&self.conn_str(pg)).await
    }

    /// Signals shutdown and waits for the server to stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Where every test binary writes pgveil's log lines
/// (`target/test-logs/<binary>-<pid>.log`); `tests/log_audit.rs` reads them.
pub fn test_log_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("test-logs")
}

/// Where a `pgveil` child process started by a test writes its stderr
/// (run it with `RUST_LOG=debug`), so the log audit covers it too.
pub fn child_log(what: &str) -> Stdio {
    let dir = test_log_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{what}-child-{}.log", std::process::id()));
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::null(),
    }
}

/// Installs, once per process, a global `tracing` subscriber at DEBUG that
/// writes to `test_log_dir()/<binary>-<pid>.log`, so the in-process pgveil
/// instances log somewhere `tests/log_audit.rs` can check. `log` records
/// (rustls, sqlparser, ...) are bridged in too. Logs of earlier runs of the
/// same binary whose process is gone are removed first, so the audit sees
/// each binary's latest run.
///
/// `tokio_postgres` is capped at INFO: it is the tests' own client here, and
/// at DEBUG it logs every bound parameter value by design.
pub fn init_test_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let dir = test_log_dir();
        if std::fs::create_dir_all(&dir).is_err() {
            return;
        }
        let exe = std::env::current_exe().ok();
        let stem = exe
            .as_deref()
            .and_then(Path::file_stem)
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "test".to_owned());
        // `tls-0123abcd...`: the binary name without cargo's hash.
        let name = match stem.rsplit_once('-') {
            Some((n, h)) if h.chars().all(|c| c.is_ascii_hexdigit()) => n.to_owned(),
            _ => stem,
        };
        remove_stale_logs(&dir, &name);
        let path = dir.join(format!("{name}-{}.log", std::process::id()));
        let Ok(file) = std::fs::File::create(&path) else {
            return;
        };
        // pgveil's own subscriber set-up, so the audit sees exactly what a
        // production log at debug level would hold.
        let _ = pgveil::logging::init_to(
            &pgveil::config::Log {
                level: "debug".into(),
                format: pgveil::config::LogFormat::Text,
            },
            std::sync::Mutex::new(file),
            false,
        );
    });
}

/// Removes `<name>-<pid>.log` files in `dir` whose process no longer runs.
fn remove_stale_logs(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_suffix(".log")
            .and_then(|f| f.strip_prefix(name))
            .and_then(|f| f.strip_prefix('-'))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The text of a metrics endpoint's `/metrics`.
pub async fn metrics_text(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    let read = s.read_to_string(&mut text);
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the metrics endpoint answers")
        .unwrap();
    text
}

/// The value of one Prometheus series on a metrics endpoint (0 if absent).
pub async fn metric(port: u16, series: &str) -> f64 {
    metrics_text(port)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// Waits (up to 10 s) until a series reaches `want`.
pub async fn wait_for_metric(port: u16, series: &str, want: f64) {
    for _ in 0..100 {
        if metric(port, series).await >= want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{series} never reached {want}");
}
