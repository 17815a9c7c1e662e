//! One client connection, from its first byte to its close.
//!
//! - [`startup`]: SSL/GSS negotiation, CancelRequest, the StartupMessage.
//! - [`relay`]: the message loop in both directions after startup.

pub mod relay;
pub mod startup;
pub mod veil;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::protocol::messages::ErrorResponse;
use crate::protocol::sqlstate;
use crate::server::Shared;
use startup::Opening;

/// Errors that end a session. None of them carries SQL text or values.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Socket error on either side.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The client took too long to start up.
    #[error("startup timed out")]
    StartupTimeout,
    /// The upstream could not be reached.
    #[error("could not connect to upstream {address}: {reason}")]
    Upstream {
        /// Configured address.
        address: String,
        /// Why.
        reason: String,
    },
}

/// Serves one accepted client. `admitted` is false when the connection limit
/// is reached: the client then gets PostgreSQL's own 53300 after its startup
/// packet, as libpq expects it.
pub async fn serve(mut client: TcpStream, peer: SocketAddr, shared: Arc<Shared>, admitted: bool) {
    let _ = client.set_nodelay(true);
    let limits = &shared.config.limits;
    let opening = tokio::time::timeout(
        Duration::from_millis(limits.startup_timeout_ms),
        startup::negotiate(&mut client),
    )
    .await;
    let opening = match opening {
        Err(_) => {
            info!(%peer, "client did not complete startup in time; closing");
            reject(&shared, "startup_timeout");
            return;
        }
        Ok(Err(e)) => {
            warn!(%peer, error = %e, "malformed startup; closing");
            reject(&shared, "protocol");
            let msg = ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, format!("pgveil: {e}"));
            let _ = client.write_all(&msg.to_bytes()).await;
            return;
        }
        Ok(Ok(o)) => o,
    };
    match opening {
        Opening::Closed => debug!(%peer, "client closed during startup"),
        Opening::Cancel(packet) => startup::forward_cancel(&shared, &packet, peer).await,
        Opening::Startup { packet, params } => {
            if !admitted {
                info!(%peer, "connection limit reached; refusing client");
                let msg = ErrorResponse::fatal(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    "sorry, too many clients already",
                );
                let _ = client.write_all(&msg.to_bytes()).await;
                return;
            }
            debug!(%peer, user = %params.user, database = %params.database,
                   protocol = %format!("{}.{}", params.major, params.minor), "client startup");
            let upstream = match startup::connect_upstream(&shared).await {
                Ok(u) => u,
                Err(e) => {
                    warn!(%peer, error = %e, "upstream unreachable");
                    shared.metrics.upstream_connect_errors_total.inc();
                    reject(&shared, "upstream");
                    let msg =
                        ErrorResponse::fatal(sqlstate::UNABLE_TO_CONNECT, format!("pgveil: {e}"));
                    let _ = client.write_all(&msg.to_bytes()).await;
                    return;
                }
            };
            let metrics = &shared.metrics;
            metrics.client_connections_total.inc();
            metrics.client_connections.inc();
            let result = match shared.keyring.clone() {
                Some(keyring) => {
                    veil::run(
                        client,
                        upstream,
                        &packet,
                        shared.clone(),
                        keyring,
                        &params.user,
                        &params.database,
                    )
                    .await
                }
                None => relay::run(client, upstream, &packet, &shared).await,
            };
            metrics.client_connections.dec();
            match result {
                Ok(()) => debug!(%peer, "session ended"),
                Err(e) => info!(%peer, error = %e, "session ended with error"),
            }
        }
    }
}

fn reject(shared: &Shared, reason: &str) {
    shared
        .metrics
        .client_connections_rejected_total
        .with_label_values(&[reason])
        .inc();
}
