//! `tracing` set-up from `[log]`. `RUST_LOG`, when set, overrides the level.
//!
//! Nothing in pgveil logs passwords, keys, SQL text or values: log fields are
//! limited to addresses, user and database names, message types and sizes.

use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// Changes the level filter of the installed subscriber.
pub type Reload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Installs the global subscriber, writing to stderr. Returns a function
/// that changes the level later (SIGHUP), or an error if the level
/// directive does not parse or a subscriber is already installed. While
/// `RUST_LOG` is set it wins, at start and on reload.
pub fn init(log: &Log) -> Result<Reload, String> {
    use std::io::IsTerminal;
    init_to(log, std::io::stderr, std::io::stderr().is_terminal())
}

/// Like [`init`], to any writer (the tests log to files).
pub fn init_to<W>(log: &Log, writer: W, ansi: bool) -> Result<Reload, String>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let from_env = std::env::var("RUST_LOG").ok().filter(|e| !e.is_empty());
    let filter = level_filter(from_env.as_deref().unwrap_or(&log.level))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::filter_fn(may_log))
        .with(filter);
    let result = match log.format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(writer),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(writer),
            )
            .try_init(),
    };
    result.map_err(|e| e.to_string())?;
    Ok(Box::new(move |level: &str| {
        if from_env.is_some() {
            return Ok(());
        }
        handle
            .reload(level_filter(level)?)
            .map_err(|e| e.to_string())
    }))
}

fn level_filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| format!("invalid log level: {e}"))
}

/// Events that are never written, whatever level is asked for: libraries
/// that log the SQL or parameters they handle. sqlparser logs each
/// statement and its literals at debug, tokio-postgres (used by `demo`,
/// `guard` and `migrate`) each bound parameter; either would put a
/// customer's plaintext in a log line.
fn may_log(meta: &tracing::Metadata<'_>) -> bool {
    allowed(meta.target(), *meta.level())
}

fn allowed(target: &str, level: tracing::Level) -> bool {
    if target == "sqlparser" || target.starts_with("sqlparser::") {
        return false;
    }
    if target == "tokio_postgres" || target.starts_with("tokio_postgres::") {
        return level <= tracing::Level::INFO;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::allowed;
    use tracing::Level;

    #[test]
    fn library_sql_logging_is_never_enabled() {
        assert!(!allowed("sqlparser::parser", Level::DEBUG));
        assert!(!allowed("sqlparser", Level::ERROR));
        assert!(!allowed("tokio_postgres::query", Level::DEBUG));
        assert!(allowed("tokio_postgres::connection", Level::INFO));
        assert!(allowed("pgveil::session", Level::DEBUG));
        assert!(allowed("sqlparsers", Level::DEBUG));
    }
}
