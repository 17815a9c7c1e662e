//! `pgveil keygen`, `pgveil encrypt`, `pgveil decrypt`: the DBA's tools for
//! keys and for values stored or searched by hand.

use anyhow::Context as _;
use pgveil::config::{Config, Storage};
use pgveil::crypto::envelope::{TEXT_PREFIX, bytea_from_hex, bytea_to_hex};
use pgveil::crypto::{Format, Keyring, MasterKey, SessionSettings};

/// Prints a new master key from the OS RNG and its check value.
pub fn keygen() -> anyhow::Result<()> {
    let key = MasterKey::generate()?;
    // stdout: the key, then the check line, so `keygen | head -n 1` is
    // the key; the guidance goes to stderr.
    eprintln!(
        "# pgveil master key (line 1): keep it in your secret store, never in proxy.toml or git."
    );
    eprintln!("# Point [keys] master_key_env or master_key_file (mode 0600) at it.");
    eprintln!("# Line 2 is its check value: add it under [keys] so a wrong key is refused.");
    // `keygen | head -n 1` closes the pipe early: that is not an error.
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{}", key.to_base64().as_str())
        .and_then(|()| writeln!(out, "check = \"{}\"", key.check_value()))
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(())
}

/// Prints the SQL literal that stores (or searches for) `value` in `column`.
pub fn encrypt(
    config: &Config,
    column: &str,
    storage: Option<Storage>,
    value: &str,
) -> anyhow::Result<()> {
    let keyring = Keyring::from_config(config)?;
    let col = keyring.resolve(column)?;
    let storage = storage.or(col.storage()).unwrap_or(Storage::Bytea);
    let stored = col.encrypt(
        Format::Text,
        value.as_bytes(),
        storage,
        &SessionSettings::new(),
    )?;
    match storage {
        Storage::Bytea => println!("'{}'::bytea", bytea_to_hex(&stored)),
        Storage::Text => {
            // Prefix and base64 contain no quote, so the literal is safe.
            let text = String::from_utf8(stored).context("internal: text storage not UTF-8")?;
            println!("'{text}'");
        }
    }
    Ok(())
}

/// Prints the plaintext of a stored value as psql shows it: `\x...` hex for
/// `bytea`, or the prefixed base64 text. A surrounding SQL literal
/// (`'...'::bytea`) is accepted too.
pub fn decrypt(
    config: &Config,
    column: &str,
    storage: Option<Storage>,
    stored: &str,
) -> anyhow::Result<()> {
    let keyring = Keyring::from_config(config)?;
    let col = keyring.resolve(column)?;
    let mut s = stored.trim();
    s = s.strip_suffix("::bytea").unwrap_or(s);
    s = s
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .unwrap_or(s);
    let storage = storage
        .or(col.storage())
        .unwrap_or(if s.starts_with(TEXT_PREFIX) {
            Storage::Text
        } else {
            Storage::Bytea
        });
    let bytes = match storage {
        Storage::Bytea => bytea_from_hex(s.as_bytes()).map_err(|_| {
            anyhow::anyhow!("pgveil: the value is not bytea hex as psql prints it (\\x...)")
        })?,
        Storage::Text => s.as_bytes().to_vec(),
    };
    let plain = col.decrypt(storage, &bytes, Format::Text, &SessionSettings::new())?;
    println!("{}", String::from_utf8_lossy(&plain));
    Ok(())
}
