//! State shared by every session of one server: the configuration, the
//! current [`Encryption`] snapshot and its reload, the catalog and plan
//! caches, TLS settings, metrics and readiness.
//!
//! It lives apart from the listener ([`crate::server`], which builds it
//! and hands it to each session) so that sessions, authentication and the
//! admin endpoint can share it without depending on the listener that
//! uses them. Of those layers it names only one type, the verifier cache
//! of [`crate::auth::lookup`], which it owns and never calls.

mod catalogs;
mod encryption;
mod health;
mod plans;

use std::sync::Arc;

use tracing::{error, info, warn};

use crate::auth::lookup::Lookup;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::tls::TlsSettings;
use catalogs::Catalogs;
pub use catalogs::{Age, CatalogKey};
pub use encryption::Encryption;
use encryption::declare_columns;
pub use health::Health;
use plans::PlanCache;

/// State shared by every session of one server. Passed, never global, so
/// tests can run several proxies in one process.
pub struct Shared {
    /// The configuration the server started with. Listen, upstream and
    /// limits come from here; what SIGHUP may change is in [`Encryption`].
    pub config: Config,
    /// Prometheus metrics of this server.
    pub metrics: Metrics,
    /// Readiness inputs for `/readyz`.
    pub health: Health,
    /// The current encryption settings; replaced as a whole on reload.
    encryption: std::sync::RwLock<Arc<Encryption>>,
    /// Where the config was read from, for SIGHUP.
    config_path: Option<std::path::PathBuf>,
    /// Applies a new `[log] level`.
    log_reload: Option<LogReload>,
    /// Catalogs by (database, user).
    catalogs: Catalogs,
    /// Analyses by (catalog generation, statement text).
    plans: std::sync::Mutex<PlanCache>,
    /// TLS settings of both hops; replaced as a whole when SIGHUP re-reads
    /// the certificate files. Open sessions keep the settings they began with.
    tls: std::sync::RwLock<Arc<TlsSettings>>,
    /// Verifier lookups for `[auth] mode = "scram"`.
    pub auth_lookup: Lookup,
}

/// Changes the log filter at run time.
pub type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Builds the shared state for a config (keys are loaded here).
    pub fn new(config: Config, metrics: Metrics) -> Result<Shared, ServerError> {
        let encryption = Encryption::from_config(config.clone(), 1)?;
        let tls = TlsSettings::from_config(&config).map_err(ServerError::Tls)?;
        if config.auth.mode == crate::config::AuthMode::Scram
            && !tls.upstream.as_ref().is_some_and(|t| t.verifies_chain)
        {
            warn!(
                "[auth] mode = \"scram\" with an upstream whose certificate is not verified: \
                 pgveil's logins to PostgreSQL can be relayed by anyone between them; set \
                 [upstream.tls] mode = \"verify-full\" with ca"
            );
        }
        declare_columns(&metrics, &encryption);
        metrics
            .max_client_connections
            .set(config.listen.max_connections as i64);
        Ok(Shared {
            catalogs: Catalogs::new(config.catalog.max_age_ms),
            config,
            metrics,
            health: Health::default(),
            encryption: std::sync::RwLock::new(Arc::new(encryption)),
            config_path: None,
            log_reload: None,
            plans: std::sync::Mutex::new(PlanCache::default()),
            tls: std::sync::RwLock::new(Arc::new(tls)),
            auth_lookup: Lookup::default(),
        })
    }

    /// The current TLS settings.
    pub fn tls(&self) -> Arc<TlsSettings> {
        self.tls
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// The current encryption settings.
    pub fn encryption(&self) -> Arc<Encryption> {
        self.encryption
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Re-reads the config file (SIGHUP). Encrypted columns, keys, policy
    /// and log level take effect for new statements; listen, upstream and
    /// limits need a restart. An invalid file changes nothing.
    pub fn reload(&self) -> Result<(), String> {
        let result = self.try_reload();
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .config_reloads_total
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(()) => info!("configuration reloaded"),
            Err(e) => {
                error!(error = %e, "configuration reload rejected; the previous configuration stays in force")
            }
        }
        result
    }

    fn try_reload(&self) -> Result<(), String> {
        let path = self
            .config_path
            .as_ref()
            .ok_or("no configuration file to reload")?;
        let config = Config::load(path).map_err(|e| e.to_string())?;
        let current = self.encryption();
        if current.keyring.is_none() && !config.encrypt.is_empty() {
            return Err(
                "[[encrypt]] columns were added to a proxy started without any: open sessions \
                 are relayed uninspected, so enabling encryption requires a restart"
                    .into(),
            );
        }
        if config.listen.address.get_ref() != self.config.listen.address.get_ref()
            || config.upstream.address.get_ref() != self.config.upstream.address.get_ref()
        {
            warn!("listen and upstream addresses change only on restart");
        }
        // Certificate files are re-read, so a renewed certificate is picked
        // up without dropping a connection; sessions keep the TLS they began
        // with. Turning TLS on or off for a hop needs a restart.
        let tls_source = if config.listen.tls.is_some() != self.config.listen.tls.is_some()
            || config.upstream.tls.is_some() != self.config.upstream.tls.is_some()
        {
            warn!("adding or removing [listen.tls] or [upstream.tls] takes effect only on restart");
            &self.config
        } else {
            &config
        };
        // Connections still go to the address pgveil started with: the
        // certificate name must be derived from that one.
        let mut tls_config = tls_source.clone();
        tls_config.upstream.address = self.config.upstream.address.clone();
        let tls = TlsSettings::from_config(&tls_config)
            .map_err(|e| format!("TLS: {e}; the previous certificates stay in force"))?;
        let next =
            Encryption::from_config(config, current.generation + 1).map_err(|e| e.to_string())?;
        if let Some(apply) = &self.log_reload {
            apply(&next.config.log.level)?;
        }
        declare_columns(&self.metrics, &next);
        self.catalogs.set_max_age(next.config.catalog.max_age_ms);
        if let Ok(mut slot) = self.encryption.write() {
            *slot = Arc::new(next);
        }
        if let Ok(mut slot) = self.tls.write() {
            *slot = Arc::new(tls);
        }
        self.invalidate_all_catalogs();
        Ok(())
    }

    /// A fresh catalog generation number.
    pub fn next_catalog_generation(&self) -> u64 {
        self.catalogs.next_generation()
    }

    /// Where SIGHUP re-reads the config from, and how a new `[log] level`
    /// is applied. Set by the server's `with_reload`, before any session
    /// holds the state.
    pub(crate) fn set_reload(&mut self, path: std::path::PathBuf, log_reload: Option<LogReload>) {
        self.config_path = Some(path);
        self.log_reload = log_reload;
    }

    /// The cached catalog for a key, unless it may be out of date (or,
    /// with [`Age::Fresh`], is older than `[catalog] max_age_ms`).
    pub fn catalog_cached(&self, key: &CatalogKey, age: Age) -> Option<Arc<Catalog>> {
        self.catalogs.get(key, age)
    }

    /// The catalog last stored under a key, even one that may be out of
    /// date: a new load identical to it keeps its generation.
    pub fn catalog_previous(&self, key: &CatalogKey) -> Option<Arc<Catalog>> {
        self.catalogs.previous(key)
    }

    /// The invalidation epoch now: read before a catalog load starts.
    pub fn catalog_epoch(&self) -> u64 {
        self.catalogs.epoch()
    }

    /// Caches a freshly loaded catalog, unless a catalog was invalidated
    /// since the load started (`epoch`): then it may predate that change,
    /// and `false` says so (the caller loads again).
    pub fn store_catalog(&self, key: CatalogKey, catalog: Arc<Catalog>, epoch: u64) -> bool {
        self.catalogs.store(key, catalog, epoch)
    }

    /// Marks the catalogs of a database out of date (after DDL through
    /// pgveil, when a transaction that ran DDL ends, on a change
    /// notification): every session of it reloads before its next
    /// statement.
    pub fn invalidate_catalog(&self, key: &CatalogKey) {
        self.catalogs.invalidate(&key.0);
    }

    /// Forgets one session's private catalog (its `search_path` may have
    /// changed, or it ended). Nothing else depends on it: no epoch bump.
    pub fn forget_own_catalog(&self, key: &CatalogKey) {
        self.catalogs.remove(key);
    }

    /// A session of `database` listens for change notifications.
    pub fn catalog_listener_added(&self, database: &str) {
        self.catalogs.listener_added(database);
    }

    /// A session of `database` stopped listening (it ended, or the client
    /// dropped the `LISTEN`); after the last one, its catalogs are read
    /// again.
    pub fn catalog_listener_removed(&self, database: &str) {
        self.catalogs.listener_removed(database);
    }

    /// Forgets every catalog (SIGHUP).
    pub fn invalidate_all_catalogs(&self) {
        self.catalogs.clear();
    }
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// Configured address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The master key could not be loaded or does not match its check value.
    #[error("{0}")]
    Keys(crate::crypto::CryptoError),
    /// A certificate or key file could not be used.
    #[error("TLS: {0}")]
    Tls(crate::tls::TlsError),
    /// The metrics registry could not be built.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}
