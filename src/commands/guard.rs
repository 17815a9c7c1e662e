//! `pgveil guard`: CHECK constraints that make the database itself reject
//! anything but a pgveil envelope in configured columns. A proxy cannot see
//! server-side code (functions, triggers, `DO`), nor clients that bypass
//! it; these constraints catch plaintext written that way.
//!
//! It also installs an event trigger that notifies pgveil's channel at the
//! commit of any DDL, so that schema changes made directly in the
//! database, or through another pgveil, are seen within milliseconds
//! instead of within `[catalog] max_age_ms`.

use anyhow::Context;
use pgveil::catalog::{CHANGE_CHANNEL, CHANGE_TRIGGER};
use pgveil::config::{Config, Storage};
use pgveil::crypto::envelope::TEXT_PREFIX;

/// Smallest envelope: format byte, key version (2 bytes), SIV tag (16).
const MIN_ENVELOPE: usize = 19;

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The statements, one per configured column; `learned` gives the storage
/// the database actually uses, when known.
pub fn statements(
    config: &Config,
    default_storage: Option<Storage>,
    learned: &dyn Fn(&pgveil::config::ColumnId) -> Option<Storage>,
) -> Vec<String> {
    config
        .encrypt
        .iter()
        .map(|col| {
            let id = col.id();
            let storage = learned(&id)
                .or(col.storage)
                .or(default_storage)
                .unwrap_or(Storage::Bytea);
            let c = ident(&id.column);
            let check = match storage {
                Storage::Bytea => format!(
                    "{c} IS NULL OR (pg_catalog.octet_length({c}) >= {MIN_ENVELOPE} AND pg_catalog.get_byte({c}, 0) = 1)"
                ),
                Storage::Text => format!("{c} IS NULL OR {c} LIKE '{TEXT_PREFIX}%'"),
            };
            let mut name = format!("pgveil_guard_{}_{}", id.table, id.column);
            name.truncate(63);
            format!(
                "ALTER TABLE {}.{} ADD CONSTRAINT {} CHECK ({check}) NOT VALID",
                ident(&id.schema),
                ident(&id.table),
                ident(&name)
            )
        })
        .collect()
}

/// Prints the constraints, or applies them through `database_url`.
pub fn guard(config: &Config, storage: Option<Storage>, apply: Option<&str>) -> anyhow::Result<()> {
    if config.encrypt.is_empty() {
        anyhow::bail!("no [[encrypt]] columns are configured");
    }
    let Some(url) = apply else {
        let stmts = statements(config, storage, &|_| None);
        println!(
            "-- Defense in depth: the database rejects non-envelope values in encrypted columns."
        );
        println!(
            "-- NOT VALID: existing rows are not checked; after `pgveil migrate encrypt`, run"
        );
        println!("-- ALTER TABLE ... VALIDATE CONSTRAINT ... for each.");
        for s in &stmts {
            println!("{s};");
        }
        println!("-- Schema changes made outside this pgveil are notified to it (superuser):");
        println!("{}", pgveil::catalog::event_trigger_sql());
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .context("connecting to the database")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let mut types = std::collections::HashMap::new();
        for col in &config.encrypt {
            let id = col.id();
            let row = client
                .query_opt(
                    "SELECT t.typname::text FROM pg_catalog.pg_attribute a \
                     JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                     WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = $3 AND NOT a.attisdropped",
                    &[&id.schema, &id.table, &id.column],
                )
                .await
                .context("reading column types")?;
            let Some(row) = row else {
                anyhow::bail!("column {id} does not exist in this database");
            };
            let typname: String = row.get(0);
            let storage = match typname.as_str() {
                "bytea" => Storage::Bytea,
                "text" | "varchar" => Storage::Text,
                other => anyhow::bail!("column {id} is of type {other}, which cannot hold ciphertext"),
            };
            types.insert(id.to_string(), storage);
        }
        let stmts = statements(config, storage, &|id| types.get(&id.to_string()).copied());
        for s in &stmts {
            client
                .batch_execute(s)
                .await
                .with_context(|| format!("applying: {s}"))?;
            println!("applied: {s}");
        }
        client.batch_execute(&pgveil::catalog::event_trigger_sql()).await.context(
            "installing the schema change event trigger (CREATE EVENT TRIGGER needs a superuser)",
        )?;
        println!("applied: event trigger {CHANGE_TRIGGER} (notifies {CHANGE_CHANNEL} at DDL commits)");
        Ok(())
    })
}
