//! `pgveil migrate encrypt | rotate | verify`: brings the stored values of
//! the configured columns to ciphertext of the active key version, on a
//! live database, connecting to PostgreSQL directly.
//!
//! Safe to kill at any moment: each batch is one UPDATE, so it commits
//! whole or not at all, and a row is rewritten only if it is still the row
//! version the batch read (`xmin`), so a concurrent write by the
//! application (through pgveil, hence already current) always wins and
//! nothing is encrypted twice. Old values are never sent back to the
//! database (in `encrypt` they are plaintext, and statement logs would keep
//! them). Re-running finds what is left: any value
//! that is not ciphertext of the active version.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use base64::Engine;
use pgveil::config::{ColumnId, Config, Storage};
use pgveil::crypto::{ColumnCipher, Keyring};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

mod rewrite;
use rewrite::convert;

/// Which subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plaintext (columns marked `migrating`) to ciphertext.
    Encrypt,
    /// Older key versions to the active one.
    Rotate,
    /// Report what is not yet ciphertext of the active version.
    Verify,
}

/// Options shared by the subcommands.
pub struct Options {
    /// libpq-style URL of the database.
    pub url: String,
    /// Only this table (`table` or `schema.table`).
    pub table: Option<String>,
    /// Rows per batch (one UPDATE each).
    pub batch_size: usize,
    /// Pause between batches.
    pub pause: Duration,
    /// Report, change nothing.
    pub dry_run: bool,
    /// CA to verify the database's certificate with (TLS required, host
    /// name checked); without it the URL's `sslmode` applies, unverified.
    pub ca: Option<std::path::PathBuf>,
}

/// One configured column as this database stores it.
struct Target<'k> {
    id: ColumnId,
    storage: Storage,
    cipher: &'k ColumnCipher,
}

/// The configured columns of one table and how its rows are addressed.
struct Job<'k> {
    schema: String,
    table: String,
    /// Primary key columns with their SQL types; empty: `ctid`.
    key: Vec<(String, String)>,
    columns: Vec<Target<'k>>,
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl Job<'_> {
    fn relation(&self) -> String {
        format!("{}.{}", quote(&self.schema), quote(&self.table))
    }

    fn name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// SQL that is true when `t.<col>` is not ciphertext of the active
    /// version (and not NULL).
    fn needs_work(&self, col: &Target<'_>) -> String {
        let c = format!("t.{}", quote(&col.id.column));
        let v = col.cipher.active_version().map(|v| v.get()).unwrap_or(1);
        let header = [1u8, (v >> 8) as u8, v as u8];
        match col.storage {
            Storage::Text => format!(
                "({c} IS NOT NULL AND left({c}, 8) COLLATE \"C\" <> 'pgv:{}')",
                base64::engine::general_purpose::STANDARD.encode(header)
            ),
            Storage::Bytea => format!(
                "({c} IS NOT NULL AND substring({c} from 1 for 3) <> '\\x{:02x}{:02x}{:02x}'::bytea)",
                header[0], header[1], header[2]
            ),
        }
    }

    fn any_needs_work(&self) -> String {
        let parts: Vec<String> = self.columns.iter().map(|c| self.needs_work(c)).collect();
        format!("({})", parts.join(" OR "))
    }

    /// The row address: primary key columns (as text) or ctid.
    fn key_exprs(&self) -> Vec<String> {
        if self.key.is_empty() {
            return vec!["t.ctid".into()];
        }
        self.key
            .iter()
            .map(|(k, _)| format!("t.{}", quote(k)))
            .collect()
    }

    fn key_types(&self) -> Vec<String> {
        if self.key.is_empty() {
            return vec!["tid".into()];
        }
        self.key.iter().map(|(_, t)| t.clone()).collect()
    }
}

/// Runs a subcommand; `Ok(false)` when it finished but something is left
/// (verify found old values, a plan needs the DBA).
pub fn migrate(config: &Config, mode: Mode, opts: &Options) -> anyhow::Result<bool> {
    let keyring = Keyring::from_config(config).context("loading the keys")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(config, &keyring, mode, opts))
}

async fn run(
    config: &Config,
    keyring: &Keyring,
    mode: Mode,
    opts: &Options,
) -> anyhow::Result<bool> {
    let client = connect(opts).await?;
    client
        .batch_execute(
            "SET application_name = 'pgveil-migrate'; SET statement_timeout = 0; \
             SET standard_conforming_strings = on",
        )
        .await?;
    let (jobs, plans) = jobs(config, keyring, &client, opts.table.as_deref()).await?;
    for plan in &plans {
        eprintln!("{plan}");
    }
    if jobs.is_empty() && plans.is_empty() {
        bail!("no configured column matches (check --table and [[encrypt]])");
    }
    for job in &jobs {
        warn_constraints(&client, job).await?;
    }
    check_keys(config, &client, &jobs).await?;
    let mut clean = plans.is_empty();
    // A column that needs a type change first: change nothing at all, so
    // the DBA resolves the plan (or limits the run with --table) knowingly.
    let hold = !plans.is_empty() && mode != Mode::Verify && !opts.dry_run;
    for job in &jobs {
        let report = report(&client, job).await?;
        eprintln!("{}: {report}", job.name());
        let remaining = count(&client, job).await?;
        if mode == Mode::Verify || opts.dry_run || hold {
            if remaining > 0 {
                clean = false;
                if opts.dry_run {
                    eprintln!(
                        "{}: would rewrite {remaining} rows in batches of {} ({})",
                        job.name(),
                        opts.batch_size,
                        if job.key.is_empty() {
                            "by ctid: the table has no primary key"
                        } else {
                            "by primary key"
                        }
                    );
                }
            }
            continue;
        }
        if mode == Mode::Encrypt
            && let Some(c) = job
                .columns
                .iter()
                .find(|c| !c.cipher.migrating() && c.storage == Storage::Text)
        {
            let plain = plaintext_count(&client, job, c).await?;
            if plain > 0 {
                bail!(
                    "{}: {plain} plaintext values, but the column is not marked `migrating = true`; \
                     set it (and reload pgveil) before encrypting, so the application keeps reading them",
                    c.id
                );
            }
        }
        let left = convert(&client, job, opts, remaining).await?;
        if left > 0 {
            clean = false;
            eprintln!(
                "{}: {left} rows still changed concurrently on every pass; run the command again",
                job.name()
            );
        }
    }
    if hold {
        eprintln!(
            "nothing was written: carry out the plan above first, or limit the run with --table"
        );
    }
    if mode == Mode::Verify {
        if clean {
            eprintln!("verify: every value is ciphertext of the active key version");
        } else {
            eprintln!("verify: values remain that are not ciphertext of the active key version");
        }
    }
    Ok(clean)
}

/// Connects directly to PostgreSQL: TLS as the URL's `sslmode` says
/// (prefer by default), verified against `--ca` when given.
async fn connect(opts: &Options) -> anyhow::Result<Client> {
    let mut config: tokio_postgres::Config = opts
        .url
        .parse()
        .context("reading the database URL (its password is not shown)")?;
    if opts.ca.is_some() {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    let failed = "connecting to the database (the URL's password is not shown)";
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .context(failed)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        return Ok(client);
    }
    let tls = pgveil::tls::PgConnector::new(opts.ca.as_deref(), None)?;
    let (client, connection) = config.connect(tls).await.context(failed)?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Groups the configured columns by table, reads their types and keys.
/// Columns of a type that cannot hold ciphertext get a printed plan.
async fn jobs<'k>(
    config: &Config,
    keyring: &'k Keyring,
    client: &Client,
    only: Option<&str>,
) -> anyhow::Result<(Vec<Job<'k>>, Vec<String>)> {
    let mut by_table: BTreeMap<(String, String), Vec<ColumnId>> = BTreeMap::new();
    for col in &config.encrypt {
        let id = col.id();
        let wanted = match only {
            None => true,
            Some(t) => t == id.table || t == format!("{}.{}", id.schema, id.table),
        };
        if wanted {
            by_table
                .entry((id.schema.clone(), id.table.clone()))
                .or_default()
                .push(id);
        }
    }
    let mut jobs = Vec::new();
    let mut plans = Vec::new();
    for ((schema, table), ids) in by_table {
        let mut key = primary_key(client, &schema, &table).await?;
        if key
            .iter()
            .any(|(k, _)| ids.iter().any(|id| &id.column == k))
        {
            // An encrypted key column: paging by it would send its plaintext
            // as parameters and print it in messages; rows go by ctid.
            key.clear();
        }
        let mut job = Job {
            key,
            schema,
            table,
            columns: Vec::new(),
        };
        for id in ids {
            let row = client
                .query_opt(
                    "SELECT t.typname::text, format_type(a.atttypid, a.atttypmod) \
                     FROM pg_catalog.pg_attribute a \
                     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                     WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 \
                     AND a.attnum > 0 AND NOT a.attisdropped",
                    &[&id.schema, &id.table, &id.column],
                )
                .await
                .context("reading column types")?;
            let Some(row) = row else {
                bail!("column {id} does not exist in this database");
            };
            let typname: String = row.get(0);
            let cipher = keyring
                .column_by_id(&id)
                .with_context(|| format!("no key for {id}"))?;
            let storage = match typname.as_str() {
                "bytea" if cipher.migrating() => bail!(
                    "{id} is bytea but marked `migrating = true`: only text columns are encrypted \
                     in place (plaintext bytes cannot be told from ciphertext)"
                ),
                "bytea" => Storage::Bytea,
                "text" | "varchar" => Storage::Text,
                _ => {
                    plans.push(type_change_plan(
                        &job,
                        &id,
                        &row.get::<_, String>(1),
                        cipher,
                    ));
                    continue;
                }
            };
            job.columns.push(Target {
                id,
                storage,
                cipher,
            });
        }
        if !job.columns.is_empty() {
            jobs.push(job);
        }
    }
    Ok((jobs, plans))
}

async fn primary_key(
    client: &Client,
    schema: &str,
    table: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let rows = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey) \
             WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&schema, &table],
        )
        .await
        .context("reading the primary key")?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The reviewed plan for a plaintext column whose type cannot hold
/// ciphertext: pgveil never alters a schema by itself.
fn type_change_plan(job: &Job<'_>, id: &ColumnId, sql_type: &str, cipher: &ColumnCipher) -> String {
    let rel = job.relation();
    let col = quote(&id.column);
    let new = quote(&format!("{}__pgveil", id.column));
    let stage = format!(
        "{}.{}",
        quote(&id.schema),
        quote(&format!("{}__pgveil_stage", id.table))
    );
    let names: Vec<String> = if job.key.is_empty() {
        vec!["<a unique key>".to_string()]
    } else {
        job.key.iter().map(|(k, _)| quote(k)).collect()
    };
    let key = names.join(", ");
    let qualified = |alias: &str| {
        names
            .iter()
            .map(|k| format!("{alias}.{k}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (tkey, skey) = (qualified("t"), qualified("s"));
    format!(
        "{id}: a {sql_type} column cannot hold ciphertext; it needs a bytea column. Nothing was \
         changed. Plan (review it, run the SQL directly against PostgreSQL):\n\
         \x20 1. ALTER TABLE {rel} ADD COLUMN {new} bytea;\n\
         \x20    CREATE TABLE {stage} AS SELECT {key}, NULL::bytea AS {col} FROM {rel} WITH NO DATA;\n\
         \x20 2. Add to proxy.toml, then SIGHUP pgveil:\n\
         \x20      [[encrypt]]\n\
         \x20      table = \"{}.{}__pgveil_stage\"\n\
         \x20      column = \"{}\"\n\
         \x20      type = \"{}\"\n\
         \x20      domain = \"{}\"\n\
         \x20 3. Pause writes to {} on {rel} (the copy below must be current), then copy the\n\
         \x20    plaintext out directly and back in through pgveil, which encrypts it:\n\
         \x20      psql <direct>  -c '\\copy (SELECT {key}, {col} FROM {rel}) TO plain.csv CSV'\n\
         \x20      psql <pgveil>  -c '\\copy {stage} FROM plain.csv CSV'   (then shred plain.csv)\n\
         \x20 4. One short transaction, directly:\n\
         \x20      BEGIN; LOCK TABLE {rel} IN SHARE ROW EXCLUSIVE MODE;\n\
         \x20      UPDATE {rel} t SET {new} = s.{col} FROM {stage} s WHERE ({tkey}) = ({skey});\n\
         \x20      ALTER TABLE {rel} RENAME COLUMN {col} TO {};\n\
         \x20      ALTER TABLE {rel} RENAME COLUMN {new} TO {col};\n\
         \x20      COMMIT;\n\
         \x20 5. SIGHUP pgveil (its catalog now sees bytea), resume writes, drop {stage} and the\n\
         \x20    plaintext column once backups no longer need it; remove the stage's [[encrypt]].",
        id.schema,
        id.table,
        id.column,
        cipher.value_type(),
        cipher.domain().as_str(),
        id.column,
        quote(&format!("{}__plaintext", id.column)),
    )
}

/// Unique indexes and foreign keys on encrypted columns keep working on
/// ciphertext (equality), but see a plaintext and a ciphertext of one
/// value as different values while the migration runs.
async fn warn_constraints(client: &Client, job: &Job<'_>) -> anyhow::Result<()> {
    for col in &job.columns {
        let rows = client
            .query(
                "SELECT conname::text, contype::text FROM pg_catalog.pg_constraint k \
                 JOIN pg_catalog.pg_class c ON c.oid = k.conrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (k.conkey) \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 \
                   AND k.contype IN ('u', 'p', 'f') \
                 UNION \
                 SELECT ic.relname::text, 'u' FROM pg_catalog.pg_index i \
                 JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
                 JOIN pg_catalog.pg_class c ON c.oid = i.indrelid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey) \
                 WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND i.indisunique",
                &[&col.id.schema, &col.id.table, &col.id.column],
            )
            .await?;
        let mut seen = std::collections::HashSet::new();
        for r in rows {
            let (name, kind): (String, String) = (r.get(0), r.get(1));
            // A unique constraint is also listed as its index.
            if !seen.insert(name.clone()) {
                continue;
            }
            let what = match kind.as_str() {
                "f" => "foreign key",
                "p" => "primary key",
                _ => "unique constraint/index",
            };
            eprintln!(
                "warning: {what} {name} spans {}: equality and uniqueness keep working on \
                 ciphertext (deterministic encryption), but while values exist in two stored forms \
                 (plaintext and ciphertext, or two key versions) one value can appear twice and \
                 references can miss; keep the window short",
                col.id
            );
        }
    }
    Ok(())
}

/// A wrong master key must be found before any row is written: check
/// values from the config are verified when the keyring loads; for a
/// version without one, existing ciphertext of that version must decrypt.
async fn check_keys(config: &Config, client: &Client, jobs: &[Job<'_>]) -> anyhow::Result<()> {
    let Some(keys) = &config.keys else {
        bail!("no [keys] section");
    };
    for source in keys.sources().iter().filter(|s| s.check.is_none()) {
        let v = source.version;
        let mut proved = false;
        for job in jobs {
            for col in &job.columns {
                let header = [1u8, (v >> 8) as u8, v as u8];
                let c = format!("t.{}", quote(&col.id.column));
                let filter = match col.storage {
                    Storage::Text => format!(
                        "left({c}, 8) COLLATE \"C\" = 'pgv:{}'",
                        base64::engine::general_purpose::STANDARD.encode(header)
                    ),
                    Storage::Bytea => format!(
                        "substring({c} from 1 for 3) = '\\x{:02x}{:02x}{:02x}'::bytea",
                        header[0], header[1], header[2]
                    ),
                };
                let sql = format!(
                    "SELECT {c} FROM {} t WHERE {filter} LIMIT 16",
                    job.relation()
                );
                for row in client.query(sql.as_str(), &[]).await? {
                    let stored = stored_bytes(&row, 0, col.storage);
                    let Some(stored) = stored else { continue };
                    if col.cipher.reseal(col.storage, &stored).is_err() {
                        bail!(
                            "key version {v} does not decrypt the existing ciphertext of {}: wrong \
                             master key ({}); nothing was written",
                            col.id,
                            source
                                .env
                                .map(|e| format!("environment variable {e}"))
                                .unwrap_or_else(|| {
                                    source
                                        .file
                                        .map(|f| format!("file {}", f.display()))
                                        .unwrap_or_default()
                                })
                        );
                    }
                    proved = true;
                }
            }
        }
        if !proved && v == keys.active_version() {
            bail!(
                "key version {v} has no `check` value in [keys] and no existing ciphertext to prove it \
                 against: a wrong key would encrypt the data irrecoverably. Add the check value \
                 `pgveil keygen` printed for it (pgveil check shows the loaded key's value)"
            );
        }
    }
    Ok(())
}

fn stored_bytes(row: &tokio_postgres::Row, i: usize, storage: Storage) -> Option<Vec<u8>> {
    match storage {
        Storage::Text => row.get::<_, Option<String>>(i).map(String::into_bytes),
        Storage::Bytea => row.get::<_, Option<Vec<u8>>>(i),
    }
}

async fn count(client: &Client, job: &Job<'_>) -> anyhow::Result<i64> {
    let sql = format!(
        "SELECT count(*) FROM {} t WHERE {}",
        job.relation(),
        job.any_needs_work()
    );
    Ok(client.query_one(sql.as_str(), &[]).await?.get(0))
}

async fn plaintext_count(client: &Client, job: &Job<'_>, col: &Target<'_>) -> anyhow::Result<i64> {
    let c = format!("t.{}", quote(&col.id.column));
    let sql = format!(
        "SELECT count(*) FROM {} t WHERE {c} IS NOT NULL AND left({c}, 4) COLLATE \"C\" <> 'pgv:'",
        job.relation()
    );
    Ok(client.query_one(sql.as_str(), &[]).await?.get(0))
}

/// Per column: plaintext values and values per key version.
async fn report(client: &Client, job: &Job<'_>) -> anyhow::Result<String> {
    let mut parts = Vec::new();
    for col in &job.columns {
        let c = format!("t.{}", quote(&col.id.column));
        let head = match col.storage {
            Storage::Text => {
                format!("CASE WHEN {c} LIKE 'pgv:%' THEN decode(substr({c}, 5, 4), 'base64') END")
            }
            Storage::Bytea => format!(
                "CASE WHEN get_byte({c}, 0) = 1 AND length({c}) > 3 THEN substring({c} from 1 for 3) END"
            ),
        };
        let sql = format!(
            "SELECT {head} AS h, count(*) FROM {} t WHERE {c} IS NOT NULL GROUP BY 1 ORDER BY 1",
            job.relation()
        );
        let mut counts = Vec::new();
        for r in client.query(sql.as_str(), &[]).await? {
            let h: Option<Vec<u8>> = r.get(0);
            let n: i64 = r.get(1);
            counts.push(match h.as_deref() {
                Some([1, a, b]) => format!("{n} at key version {}", u16::from_be_bytes([*a, *b])),
                _ => format!("{n} plaintext"),
            });
        }
        if counts.is_empty() {
            counts.push("no values".into());
        }
        parts.push(format!("{} ({})", col.id.column, counts.join(", ")));
    }
    Ok(parts.join("; "))
}
