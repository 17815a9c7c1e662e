//! `pgveil demo`: a scratch PostgreSQL cluster with a small CRM, pgveil in
//! front of it, and two psql commands to see the difference. Everything it
//! creates lives in one temporary directory, removed on Ctrl-C.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use pgveil::config::Config;
use pgveil::crypto::MasterKey;

const FIRST: &[&str] = &[
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Margaret",
    "Ken",
    "Dennis",
    "Frances",
    "John",
    "Radia",
    "Tim",
    "Katherine",
    "Linus",
    "Hedy",
    "Claude",
    "Sophie",
    "Niklaus",
    "Annie",
];
const LAST: &[&str] = &[
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Hamilton",
    "Thompson",
    "Ritchie",
    "Allen",
    "Backus",
    "Perlman",
    "Berners-Lee",
    "Johnson",
    "Torvalds",
    "Lamarr",
    "Shannon",
    "Wilson",
    "Wirth",
    "Easley",
];
const COUNTRIES: &[&str] = &["UK", "US", "FR", "DE", "NL", "SE", "ES", "IT", "CA", "JP"];

/// How many customers the demo seeds.
const CUSTOMERS: usize = 300;

/// The demo's scratch directory and cluster; stopped and removed on drop.
struct Scratch {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    started: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.started {
            let mut stop = pg_command(&self.bin, "pg_ctl", self.as_postgres);
            stop.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "fast", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = stop.status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_pg_bin() -> anyhow::Result<PathBuf> {
    pgveil::localpg::find_server_binaries().context(pgveil::localpg::INSTALL_HINT)
}

fn pg_command(bin: &Path, program: &str, as_postgres: bool) -> Command {
    pgveil::localpg::command(bin, program, as_postgres)
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `preferred` if it is free on 127.0.0.1, else any free port.
fn port(preferred: u16) -> anyhow::Result<u16> {
    if preferred != 0 && TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        return Ok(preferred);
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let name: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let dir = std::env::temp_dir().join(format!("pgveil-demo-{name}"));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn chown_to_postgres(dir: &Path) -> anyhow::Result<()> {
    let (uid, gid) = pgveil::localpg::postgres_ids().context(
        "no `postgres` user: PostgreSQL refuses to run as root; create the user or run the demo as a normal user",
    )?;
    std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    Ok(())
}

/// Runs the demo. With `check`, verifies plaintext through pgveil and
/// ciphertext directly, then exits instead of waiting for Ctrl-C.
pub fn demo(check: bool) -> anyhow::Result<()> {
    let bin = find_pg_bin()?;
    let as_postgres = pgveil::localpg::is_root();
    let dir = scratch_dir()?;
    let mut scratch = Scratch {
        dir: dir.clone(),
        bin: bin.clone(),
        as_postgres,
        started: false,
    };
    if as_postgres {
        chown_to_postgres(&dir)?;
    }
    eprintln!(
        "pgveil demo: starting a scratch PostgreSQL from {}",
        bin.display()
    );
    let data = dir.join("data");
    let mut initdb = pg_command(&bin, "initdb", as_postgres);
    initdb.arg("-D").arg(&data).args([
        "-U",
        "postgres",
        "-E",
        "UTF8",
        "--no-locale",
        "--auth=trust",
    ]);
    run(initdb, "initdb")?;
    let pg_port = port(0)?;
    let options = format!(
        "-p {pg_port} -k {} -c listen_addresses=127.0.0.1",
        dir.display()
    );
    let mut pg_ctl = pg_command(&bin, "pg_ctl", as_postgres);
    pg_ctl
        .arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .args(["-w", "-o", &options, "start"]);
    run(pg_ctl, "pg_ctl start")?;
    scratch.started = true;

    // A fresh demo key, in a 0600 file, with its check value.
    let key = MasterKey::generate()?;
    let key_path = dir.join("master.key");
    std::fs::write(&key_path, key.to_base64().as_str())?;
    std::fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let listen = port(6432)?;
    let metrics = port(9187)?;
    let config_text = format!(
        "[listen]\naddress = \"127.0.0.1:{listen}\"\n\
         [upstream]\naddress = \"127.0.0.1:{pg_port}\"\n\
         [keys]\nmaster_key_file = \"{}\"\ncheck = \"{}\"\n\
         [metrics]\naddress = \"127.0.0.1:{metrics}\"\n\
         [log]\nlevel = \"warn\"\n\
         [[encrypt]]\ntable = \"customers\"\ncolumn = \"full_name\"\n\
         [[encrypt]]\ntable = \"customers\"\ncolumn = \"email\"\ndomain = \"email\"\n\
         [[encrypt]]\ntable = \"customers\"\ncolumn = \"phone\"\n\
         [[encrypt]]\ntable = \"customers\"\ncolumn = \"birth_date\"\ntype = \"date\"\n",
        key_path.display(),
        key.check_value()
    );
    let config_path = dir.join("proxy.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::parse(&config_text, &config_path.display().to_string())?;
    if !check {
        let _ = pgveil::logging::init(&config.log);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async {
        let server = pgveil::server::Server::bind(config)
            .await?
            .with_reload(config_path.clone(), None);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));
        let direct = format!("host=127.0.0.1 port={pg_port} user=postgres");
        let proxied = format!("host=127.0.0.1 port={listen} user=postgres");
        let admin = connect(&format!("{direct} dbname=postgres")).await?;
        admin.simple_query("CREATE DATABASE crm").await?;
        let crm = connect(&format!("{proxied} dbname=crm")).await?;
        seed(&crm).await?;
        let result = if check {
            self_check(&crm, &format!("{direct} dbname=crm")).await
        } else {
            println!(
                "\npgveil demo is running: {CUSTOMERS} customers whose name, email, phone and birth date\n\
                 are encrypted by pgveil before they reach PostgreSQL.\n\n\
                 Through pgveil (plaintext):\n  psql \"host=127.0.0.1 port={listen} user=postgres dbname=crm\"\n\n\
                 Directly (what the database stores):\n  psql \"host=127.0.0.1 port={pg_port} user=postgres dbname=crm\"\n\n\
                 Try:  SELECT * FROM customers WHERE email = 'ada.lovelace1@example.com';\n      \
                 SELECT country, count(*) FROM customers GROUP BY country;\n      \
                 SELECT * FROM customers WHERE email LIKE 'ada%';   -- refused: ciphertext has no prefix\n\n\
                 Metrics: http://127.0.0.1:{metrics}/metrics   (also /healthz, /readyz)\n\
                 Config:  {}\n\n\
                 Ctrl-C stops everything and removes the scratch cluster.",
                config_path.display()
            );
            tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
            eprintln!("\npgveil demo: stopping");
            Ok(())
        };
        drop(crm);
        drop(admin);
        let _ = stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
        result
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(scratch);
    outcome
}

async fn connect(conn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {conn}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn customer(i: usize) -> (String, String, String, String, &'static str) {
    let first = FIRST[i % FIRST.len()];
    let last = LAST[(i / FIRST.len() + i) % LAST.len()];
    let name = format!("{first} {last}");
    let email = format!(
        "{}.{}{}@example.com",
        first.to_lowercase(),
        last.to_lowercase(),
        i + 1
    );
    let phone = format!("+1 555 {:04}", 1000 + i);
    let birth = format!(
        "{}-{:02}-{:02}",
        1950 + (i * 7) % 50,
        1 + i % 12,
        1 + (i * 3) % 28
    );
    (name, email, phone, birth, COUNTRIES[i % COUNTRIES.len()])
}

/// Creates the CRM schema and seeds it, all through pgveil.
async fn seed(crm: &tokio_postgres::Client) -> anyhow::Result<()> {
    crm.batch_execute(
        "CREATE TABLE customers (\
           id int PRIMARY KEY, full_name bytea NOT NULL, email bytea UNIQUE, \
           phone bytea, birth_date bytea, country text NOT NULL)",
    )
    .await?;
    for chunk in (0..CUSTOMERS).collect::<Vec<_>>().chunks(50) {
        let rows: Vec<String> = chunk
            .iter()
            .map(|&i| {
                let (name, email, phone, birth, country) = customer(i);
                format!(
                    "({}, '{}', '{email}', '{phone}', '{birth}', '{country}')",
                    i + 1,
                    name.replace('\'', "''")
                )
            })
            .collect();
        crm.simple_query(&format!(
            "INSERT INTO customers (id, full_name, email, phone, birth_date, country) VALUES {}",
            rows.join(", ")
        ))
        .await?;
    }
    Ok(())
}

/// Plaintext through pgveil, none directly.
async fn self_check(crm: &tokio_postgres::Client, direct: &str) -> anyhow::Result<()> {
    let (name, email, _, _, _) = customer(0);
    let rows = crm
        .simple_query(&format!(
            "SELECT full_name, email FROM customers WHERE email = '{email}'"
        ))
        .await?;
    let seen = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => {
            Some((r.get(0).map(str::to_string), r.get(1).map(str::to_string)))
        }
        _ => None,
    });
    if seen != Some((Some(name.clone()), Some(email.clone()))) {
        bail!("self-check failed: through pgveil, customer 1 did not read back in plaintext");
    }
    let direct = connect(direct).await?;
    let rows = direct
        .query(
            "SELECT full_name, email, phone, birth_date FROM customers",
            &[],
        )
        .await?;
    for row in &rows {
        for i in 0..4 {
            let v: Option<Vec<u8>> = row.get(i);
            if let Some(v) = v
                && (v.first() != Some(&1) || v.windows(4).any(|w| w == b"exam"))
            {
                bail!("self-check failed: the database holds a value that is not ciphertext");
            }
        }
    }
    println!(
        "pgveil demo self-check passed: {} customers read back in plaintext through pgveil; \
         the database holds only ciphertext in the encrypted columns",
        rows.len()
    );
    Ok(())
}
