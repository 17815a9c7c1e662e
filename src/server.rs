//! The listener: accepts clients under the connection limit, hands each to
//! its own session task, and drains on shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::admin::{self, Health};
use crate::auth::lookup::Lookup;
use crate::catalog::{self, Catalog, Encrypted};
use crate::config::Config;
use crate::crypto::Keyring;
use crate::metrics::Metrics;
use crate::session;
use crate::sql::analyze::Watched;
use crate::sql::{Analysis, analyze};
use crate::tls::TlsSettings;

/// Clients past the limit that may wait at once for their 53300; beyond
/// this they are closed without a word, so a flood cannot pile up tasks.
const MAX_PENDING_REJECTIONS: usize = 256;

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
    catalogs: std::sync::Mutex<HashMap<(String, String), Arc<Catalog>>>,
    catalog_generation: std::sync::atomic::AtomicU64,
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

/// The settings a reload may change, taken together so a session always
/// sees one consistent snapshot.
pub struct Encryption {
    /// Counts reloads; sessions compare it to notice one.
    pub generation: u64,
    /// The config these settings came from (its `[[encrypt]]` list drives
    /// the catalog query).
    pub config: Config,
    /// Ciphers of the configured columns; `None` when none are configured.
    pub keyring: Option<Arc<Keyring>>,
    /// Configured `(schema, table)` names.
    pub configured: Vec<(String, String)>,
    /// Configured columns as `(schema, table, column)`.
    pub encrypted_columns: Vec<(String, String, String)>,
    /// The encrypted columns with their types, domains and storage: equal
    /// across a reload that changes none of them.
    pub columns_signature: String,
}

impl Encryption {
    /// Loads keys and derives ciphers for a config.
    pub fn from_config(config: Config, generation: u64) -> Result<Encryption, ServerError> {
        let keyring = if config.encrypt.is_empty() {
            if config.keys.is_some() {
                // Load anyway: a wrong or unreadable key must stop the start.
                Keyring::from_config(&config).map_err(ServerError::Keys)?;
            }
            None
        } else {
            Some(Arc::new(
                Keyring::from_config(&config).map_err(ServerError::Keys)?,
            ))
        };
        let configured = catalog::configured_tables(&config);
        let encrypted_columns = config
            .encrypt
            .iter()
            .map(|c| {
                let id = c.id();
                (id.schema, id.table, id.column)
            })
            .collect();
        let mut entries: Vec<String> = config
            .encrypt
            .iter()
            .map(|c| {
                format!(
                    "{}:{}:{}:{:?}:{}:{:?}",
                    c.id(),
                    c.value_type.name(),
                    c.domain_name(),
                    c.storage,
                    c.migrating,
                    config.domain_key_versions(&c.domain_name())
                )
            })
            .collect();
        entries.sort();
        // Each domain's key versions are in its entries: a statement
        // prepared for one stored form per value must not run once there
        // are two.
        let columns_signature = entries.join(";");
        Ok(Encryption {
            generation,
            columns_signature,
            config,
            keyring,
            configured,
            encrypted_columns,
        })
    }
}

fn declare_columns(metrics: &Metrics, encryption: &Encryption) {
    let names: Vec<String> = encryption
        .encrypted_columns
        .iter()
        .map(|(s, t, c)| format!("{s}.{t}.{c}"))
        .collect();
    metrics.declare_columns(names.iter().map(String::as_str));
}

/// Least-recently-used cache of analyses: a hot statement is analysed once
/// per process, whichever session sends it.
#[derive(Default)]
struct PlanCache {
    /// Analysis and last-use stamp by key.
    map: HashMap<PlanKey, (Arc<Analysis>, u64)>,
    /// Keys by last-use stamp, oldest first.
    order: std::collections::BTreeMap<u64, PlanKey>,
    clock: u64,
}

/// Catalog generation (database, user or search_path, configuration) and
/// statement text: everything an analysis depends on.
type PlanKey = (u64, String);

impl PlanCache {
    fn get(&mut self, key: &PlanKey) -> Option<Arc<Analysis>> {
        self.clock += 1;
        let clock = self.clock;
        let (analysis, stamp) = self.map.get_mut(key)?;
        let old = std::mem::replace(stamp, clock);
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(clock, k);
        }
        Some(analysis.clone())
    }

    fn insert(&mut self, key: PlanKey, analysis: Arc<Analysis>) {
        self.clock += 1;
        while self.map.len() >= PLAN_CACHE_ENTRIES {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
        }
        if let Some((_, old)) = self.map.insert(key.clone(), (analysis, self.clock)) {
            self.order.remove(&old);
        }
        self.order.insert(self.clock, key);
    }
}

/// Entries kept in the plan cache.
const PLAN_CACHE_ENTRIES: usize = 4096;
/// Statements longer than this are analysed every time, not cached.
const PLAN_CACHE_MAX_TEXT: usize = 16 * 1024;

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
            config,
            metrics,
            health: Health::default(),
            encryption: std::sync::RwLock::new(Arc::new(encryption)),
            config_path: None,
            log_reload: None,
            catalogs: std::sync::Mutex::new(HashMap::new()),
            catalog_generation: std::sync::atomic::AtomicU64::new(1),
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
        self.catalog_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Analyses `text`, or returns the cached analysis of the same text
    /// against the same catalog. Statements whose analysis depends on the
    /// session (SQL prepared statements) are not cached.
    pub fn analyze_cached(
        &self,
        text: &str,
        catalog: &Catalog,
        watched: &Watched,
        configured: &[(String, String)],
        prepared: &HashMap<String, Vec<Option<Encrypted>>>,
    ) -> Arc<Analysis> {
        // Only prepared statements the text names (EXECUTE) affect the
        // analysis; a statement naming none is cacheable.
        let named: HashMap<String, Vec<Option<Encrypted>>> = if prepared.is_empty() {
            HashMap::new()
        } else {
            let lower = text.to_lowercase();
            let words: std::collections::HashSet<&str> = lower
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .collect();
            prepared
                .iter()
                .filter(|(k, _)| words.contains(k.to_lowercase().as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let cacheable =
            named.is_empty() && catalog.generation != 0 && text.len() <= PLAN_CACHE_MAX_TEXT;
        let key = (catalog.generation, text.to_string());
        if cacheable && let Some(hit) = self.plans.lock().ok().and_then(|mut c| c.get(&key)) {
            self.metrics.plan_cache_hits_total.inc();
            return hit;
        }
        self.metrics.plan_cache_misses_total.inc();
        let analysis = Arc::new(analyze(text, catalog, watched, configured, &named));
        let session_specific = analysis
            .statements
            .iter()
            .any(|s| s.prepared.is_some() || s.deallocated.is_some());
        if cacheable
            && !analysis.stale
            && !session_specific
            && let Ok(mut cache) = self.plans.lock()
        {
            cache.insert(key, analysis.clone());
        }
        analysis
    }

    /// The cached catalog for a (database, user).
    pub fn catalog_cached(&self, key: &(String, String)) -> Option<Arc<Catalog>> {
        self.catalogs.lock().ok()?.get(key).cloned()
    }

    /// Caches a freshly loaded catalog.
    pub fn store_catalog(&self, key: (String, String), catalog: Arc<Catalog>) {
        if let Ok(mut map) = self.catalogs.lock() {
            map.insert(key, catalog);
        }
    }

    /// Forgets the catalogs of a database (after DDL): every session of it
    /// reloads before its next statement.
    pub fn invalidate_catalog(&self, key: &(String, String)) {
        if let Ok(mut map) = self.catalogs.lock() {
            map.retain(|k, _| k.0 != key.0);
        }
    }

    /// Forgets every catalog (SIGHUP).
    pub fn invalidate_all_catalogs(&self) {
        if let Ok(mut map) = self.catalogs.lock() {
            map.clear();
        }
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

/// A bound, not yet running, proxy.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds `listen.address`.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let address = config.listen.address.get_ref().clone();
        let listener = TcpListener::bind(address.as_str())
            .await
            .map_err(|source| ServerError::Bind { address, source })?;
        let admin = match &config.metrics {
            Some(m) => {
                let address = m.address.get_ref().clone();
                Some(
                    TcpListener::bind(address.as_str())
                        .await
                        .map_err(|source| ServerError::Bind { address, source })?,
                )
            }
            None => None,
        };
        let metrics = Metrics::new()?;
        let shared = Shared::new(config, metrics)?;
        Ok(Server {
            listener,
            admin,
            shared: Arc::new(shared),
        })
    }

    /// The bound address (useful when the config asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The bound metrics address, when `[metrics]` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The state shared with sessions (metrics, health).
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Enables SIGHUP reloads from `path`, applying log levels through
    /// `log_reload`. Call before [`Server::run`].
    pub fn with_reload(
        mut self,
        path: std::path::PathBuf,
        log_reload: Option<LogReload>,
    ) -> Server {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.config_path = Some(path);
            shared.log_reload = log_reload;
        }
        self
    }

    /// Serves until `shutdown` completes, then stops accepting and lets open
    /// sessions finish for up to `limits.shutdown_timeout_ms`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            listener,
            admin,
            shared,
        } = self;
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = admin.map(|l| {
            tokio::spawn(admin::serve(l, shared.clone(), async {
                let _ = admin_stopped.await;
            }))
        });
        let admitted = Arc::new(Semaphore::new(shared.config.listen.max_connections));
        let rejecting = Arc::new(Semaphore::new(MAX_PENDING_REJECTIONS));
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        if let Ok(addr) = listener.local_addr() {
            info!(listen = %addr, upstream = %shared.config.upstream.address.get_ref(), "pgveil serving");
        }
        let mut hangup = hangup_signal();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = recv_hangup(&mut hangup) => {
                    info!("SIGHUP: reloading configuration");
                    let shared = shared.clone();
                    // Key files are read from disk: keep it off the accept loop.
                    drop(tokio::task::spawn_blocking(move || {
                        if shared.reload().is_err() {
                            // Even a rejected reload re-reads the catalogs.
                            shared.invalidate_all_catalogs();
                        }
                    }));
                }
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    if let Err(e) = done
                        && e.is_panic() {
                            error!("a session task panicked; other sessions are unaffected");
                        }
                }
                accepted = listener.accept() => {
                    let (socket, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Typically EMFILE: back off instead of spinning.
                            warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let shared = shared.clone();
                    match admitted.clone().try_acquire_owned() {
                        Ok(permit) => {
                            sessions.spawn(async move {
                                session::serve(socket, peer, shared, true).await;
                                drop(permit);
                            });
                        }
                        Err(_) => match rejecting.clone().try_acquire_owned() {
                            Ok(permit) => {
                                sessions.spawn(async move {
                                    shared.metrics.client_connections_rejected_total.with_label_values(&["max_connections"]).inc();
                                session::serve(socket, peer, shared, false).await;
                                    drop(permit);
                                });
                            }
                            Err(_) => {
                                shared.metrics.client_connections_rejected_total.with_label_values(&["max_connections"]).inc();
                                drop(socket)
                            }
                        },
                    }
                }
            }
        }
        drop(listener);
        shared.health.set_draining();
        shared.metrics.ready.set(0);
        let timeout = Duration::from_millis(shared.config.limits.shutdown_timeout_ms);
        info!(
            sessions = sessions.len(),
            timeout_ms = timeout.as_millis() as u64,
            "shutting down: no longer accepting; waiting for open sessions"
        );
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => {
                    warn!(sessions = sessions.len(), "shutdown timeout reached; closing remaining sessions");
                    sessions.abort_all();
                    while sessions.join_next().await.is_some() {}
                    break;
                }
                next = sessions.join_next() => if next.is_none() { break },
            }
        }
        let _ = admin_stop.send(());
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        info!("pgveil stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    info!("shutdown signal received");
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

fn hangup_signal() -> Hangup {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Next SIGHUP; never resolves when signals are unavailable.
async fn recv_hangup(h: &mut Hangup) -> Option<()> {
    #[cfg(unix)]
    {
        match h {
            Some(sig) => sig.recv().await,
            None => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = h;
        std::future::pending().await
    }
}
