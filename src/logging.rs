//! `tracing` set-up from `[log]`. `RUST_LOG`, when set, overrides the level.
//!
//! Nothing in pgveil logs passwords, keys, SQL text or values: log fields are
//! limited to addresses, user and database names, message types and sizes.

use tracing_subscriber::EnvFilter;

use crate::config::{Log, LogFormat};

/// Changes the level filter of the installed subscriber.
pub type Reload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Installs the global subscriber. Returns a function that changes the
/// level later (SIGHUP), or an error if the level directive does not parse
/// or a subscriber is already installed. While `RUST_LOG` is set it wins,
/// at start and on reload.
pub fn init(log: &Log) -> Result<Reload, String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let from_env = std::env::var("RUST_LOG").ok().filter(|e| !e.is_empty());
    let filter = EnvFilter::try_new(from_env.as_deref().unwrap_or(&log.level))
        .map_err(|e| format!("invalid log level: {e}"))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match log.format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| e.to_string())?;
    Ok(Box::new(move |level: &str| {
        if from_env.is_some() {
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| format!("invalid log level: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}
