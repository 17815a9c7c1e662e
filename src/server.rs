//! The listener: accepts clients under the connection limit, hands each to
//! its own session task, drains on shutdown and reloads on SIGHUP. The
//! state it hands to sessions is in [`crate::shared`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::admin;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::session;
pub use crate::shared::{Encryption, LogReload, ServerError, Shared};

/// Clients past the limit that may wait at once for their 53300; beyond
/// this they are closed without a word, so a flood cannot pile up tasks.
const MAX_PENDING_REJECTIONS: usize = 256;

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
            shared.set_reload(path, log_reload);
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
