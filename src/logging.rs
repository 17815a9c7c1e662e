//! `tracing` set-up from `[log]`. `RUST_LOG`, when set, overrides the level.
//!
//! Nothing in pgveil logs passwords, keys, SQL text or values: log fields are
//! limited to addresses, user and database names, message types and sizes.

use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// Installs the global subscriber. Returns an error if the level directive
/// does not parse or a subscriber is already installed.
pub fn init(log: &Log) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(env),
        _ => EnvFilter::try_new(&log.level),
    }
    .map_err(|e| format!("invalid log level: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| e.to_string())
}
