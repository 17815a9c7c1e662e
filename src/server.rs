//! The listener: accepts clients under the connection limit, hands each to
//! its own session task, and drains on shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::session;

/// Clients past the limit that may wait at once for their 53300; beyond
/// this they are closed without a word, so a flood cannot pile up tasks.
const MAX_PENDING_REJECTIONS: usize = 256;

/// State shared by every session of one server. Passed, never global, so
/// tests can run several proxies in one process.
#[derive(Debug)]
pub struct Shared {
    /// The configuration snapshot the server started with.
    pub config: Config,
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
    /// Columns are configured for encryption, but this build cannot yet
    /// rewrite statements for them; serving would pass plaintext through.
    #[error(
        "{0} [[encrypt]] column(s) configured, but statement rewriting is not available in \
         this build; refusing to start rather than let plaintext reach the database"
    )]
    EncryptionUnavailable(usize),
}

/// A bound, not yet running, proxy.
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl Server {
    /// Binds `listen.address`.
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        if !config.encrypt.is_empty() {
            return Err(ServerError::EncryptionUnavailable(config.encrypt.len()));
        }
        let address = config.listen.address.get_ref().clone();
        let listener = TcpListener::bind(address.as_str())
            .await
            .map_err(|source| ServerError::Bind { address, source })?;
        Ok(Server {
            listener,
            shared: Arc::new(Shared { config }),
        })
    }

    /// The bound address (useful when the config asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting and lets open
    /// sessions finish for up to `limits.shutdown_timeout_ms`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server { listener, shared } = self;
        let admitted = Arc::new(Semaphore::new(shared.config.listen.max_connections));
        let rejecting = Arc::new(Semaphore::new(MAX_PENDING_REJECTIONS));
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        if let Ok(addr) = listener.local_addr() {
            info!(listen = %addr, upstream = %shared.config.upstream.address.get_ref(), "pgveil serving");
        }
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = sessions.join_next(), if !sessions.is_empty() => {
                    if let Err(e) = done {
                        if e.is_panic() {
                            error!("a session task panicked; other sessions are unaffected");
                        }
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
                                    session::serve(socket, peer, shared, false).await;
                                    drop(permit);
                                });
                            }
                            Err(_) => drop(socket),
                        },
                    }
                }
            }
        }
        drop(listener);
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
