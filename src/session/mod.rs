//! One client connection, from its first byte to its close.
//!
//! - [`startup`]: SSL/GSS negotiation, CancelRequest, the StartupMessage.
//! - [`relay`]: the message loop in both directions after startup.

pub mod relay;
pub mod startup;
pub mod stream;
pub mod veil;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::auth::{self, AuthError};
use crate::config::AuthMode;
use crate::protocol::messages::ErrorResponse;
use crate::protocol::sqlstate;
use crate::shared::Shared;
use startup::Opening;
use stream::Stream;

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
    /// The client's TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A configuration reload invalidated something this session holds.
    #[error("{0}")]
    Reload(String),
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
pub async fn serve(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>, admitted: bool) {
    let _ = client.set_nodelay(true);
    let limits = &shared.config.limits;
    let tls = shared.tls();
    let opening = tokio::time::timeout(
        Duration::from_millis(limits.startup_timeout_ms),
        startup::negotiate(client, tls.server.as_deref(), &shared.metrics),
    )
    .await;
    let (mut client, opening) = match opening {
        Err(_) => {
            info!(%peer, "client did not complete startup in time; closing");
            if admitted {
                reject(&shared, "startup_timeout");
            }
            return;
        }
        Ok(Err(SessionError::Tls(e))) => {
            // rustls's reasons name protocol failures, never key material.
            warn!(%peer, error = %e, "TLS handshake with client failed; closing");
            if admitted {
                reject(&shared, "tls");
            }
            return;
        }
        Ok(Err(SessionError::Io(e))) => {
            debug!(%peer, error = %e, "client connection failed during startup");
            return;
        }
        Ok(Err(e)) => {
            warn!(%peer, error = %e, "malformed startup; closing");
            if admitted {
                reject(&shared, "protocol");
            }
            // negotiate() has told the client why.
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
                let _ = write_flush(&mut client, &msg.to_bytes()).await;
                return;
            }
            if tls.server.as_ref().is_some_and(|t| t.required) && !client.is_tls() {
                info!(%peer, user = %params.user, "client did not negotiate TLS, which is required; refusing");
                reject(&shared, "tls_required");
                let msg = ErrorResponse::fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    "pgveil: TLS is required: connect with sslmode=require, verify-ca or verify-full",
                );
                let _ = write_flush(&mut client, &msg.to_bytes()).await;
                return;
            }
            debug!(%peer, user = %params.user, database = %params.database, tls = client.is_tls(),
                   protocol = %format!("{}.{}", params.major, params.minor), "client startup");
            let ctx = AuditContext {
                peer,
                database: &params.database,
                user: &params.user,
            };
            let authenticated = tokio::time::timeout(
                Duration::from_millis(limits.auth_timeout_ms),
                authenticate(&mut client, &packet, &shared, &tls, &ctx),
            )
            .await;
            let upstream = match authenticated {
                Ok(Ok(u)) => u,
                Ok(Err(e)) => {
                    if let Some(msg) = e.client_message() {
                        let _ = write_flush(&mut client, &msg).await;
                    }
                    match &e {
                        AuthError::ClientClosed => {
                            debug!(%peer, "client closed during authentication")
                        }
                        AuthError::Upstream(_) | AuthError::Unreachable(_) => {}
                        other => info!(%peer, error = %other, "authentication did not complete"),
                    }
                    reject(
                        &shared,
                        if matches!(e, AuthError::Unreachable(_)) {
                            "upstream"
                        } else {
                            "auth"
                        },
                    );
                    return;
                }
                Err(_) => {
                    info!(%peer, "authentication did not complete in time; closing");
                    let msg = ErrorResponse::fatal(
                        sqlstate::INVALID_AUTHORIZATION,
                        "pgveil: authentication timed out",
                    );
                    let _ = write_flush(&mut client, &msg.to_bytes()).await;
                    reject(&shared, "auth");
                    return;
                }
            };
            let metrics = &shared.metrics;
            metrics.client_connections_total.inc();
            metrics.client_connections.inc();
            let result = match shared.encryption().keyring.is_some() {
                true => {
                    veil::run(
                        client,
                        upstream,
                        &packet,
                        shared.clone(),
                        &params.user,
                        &params.database,
                        peer,
                    )
                    .await
                }
                false => relay::run(client, upstream, &shared, &ctx).await,
            };
            metrics.client_connections.dec();
            match result {
                Ok(()) => debug!(%peer, "session ended"),
                Err(e) => info!(%peer, error = %e, "session ended with error"),
            }
        }
    }
}

/// Opens the upstream connection and authenticates the client on it, as
/// `[auth] mode` says. Returns the upstream once AuthenticationOk has
/// reached the client.
async fn authenticate(
    client: &mut Stream,
    packet: &[u8],
    shared: &Shared,
    tls: &crate::tls::TlsSettings,
    ctx: &AuditContext<'_>,
) -> Result<Stream, AuthError> {
    if shared.config.auth.mode == AuthMode::Scram {
        let end_point = tls.server.as_ref().and_then(|t| t.end_point.as_deref());
        return auth::terminate::authenticate(client, packet, end_point, shared, ctx).await;
    }
    let mut upstream = match startup::connect_upstream(shared, tls.upstream.as_deref()).await {
        Ok(u) => u,
        Err(e) => {
            warn!(peer = %ctx.peer, error = %e, "upstream unreachable");
            shared.metrics.upstream_connect_errors_total.inc();
            return Err(AuthError::Unreachable(e.to_string()));
        }
    };
    auth::passthrough::relay(client, &mut upstream, packet, ctx).await?;
    Ok(upstream)
}

/// Writes and flushes: TLS holds written bytes until flushed.
pub(crate) async fn write_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

fn reject(shared: &Shared, reason: &str) {
    shared
        .metrics
        .client_connections_rejected_total
        .with_label_values(&[reason])
        .inc();
}

/// Who a session is, for audit log lines.
#[derive(Debug, Clone, Copy)]
pub struct AuditContext<'a> {
    /// Client address.
    pub peer: SocketAddr,
    /// Database.
    pub database: &'a str,
    /// User.
    pub user: &'a str,
}

/// Logs an authentication failure (an ErrorResponse before the first
/// ReadyForQuery) to the audit log: code and client, never the message,
/// which could quote what the client sent.
pub fn audit_auth_error(ctx: &AuditContext<'_>, frame: &[u8]) {
    let code =
        crate::protocol::messages::error_response::field(frame.get(5..).unwrap_or_default(), b'C')
            .unwrap_or_default();
    tracing::warn!(target: "audit", client = %ctx.peer, database = %ctx.database,
                   user = %ctx.user, sqlstate = %code, "authentication failed");
}

/// Request→ReadyForQuery timing for `pgveil_statement_duration_seconds`.
/// Requests are seen as their headers pass (Query, Sync, FunctionCall);
/// each ReadyForQuery closes the oldest.
pub struct Timing {
    inner: Mutex<TimingState>,
    simple: prometheus::Histogram,
    extended: prometheus::Histogram,
    simple_statements: prometheus::IntCounter,
    extended_statements: prometheus::IntCounter,
}

struct TimingState {
    ready: bool,
    open: VecDeque<(Instant, bool)>,
}

impl Timing {
    /// Timing for one session.
    pub fn new(metrics: &crate::metrics::Metrics) -> Timing {
        Timing {
            inner: Mutex::new(TimingState {
                ready: false,
                open: VecDeque::new(),
            }),
            simple: metrics
                .statement_duration_seconds
                .with_label_values(&["simple"]),
            extended: metrics
                .statement_duration_seconds
                .with_label_values(&["extended"]),
            simple_statements: metrics
                .statements_total
                .with_label_values(&["simple", "passthrough"]),
            extended_statements: metrics
                .statements_total
                .with_label_values(&["extended", "passthrough"]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TimingState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether authentication has completed (first ReadyForQuery seen).
    pub fn ready(&self) -> bool {
        self.lock().ready
    }

    /// A client message passed (a plain relay: every statement passes).
    pub fn request(&self, tag: u8) {
        match tag {
            b'Q' => {
                self.simple_statements.inc();
                self.lock().open.push_back((Instant::now(), true))
            }
            b'P' => self.extended_statements.inc(),
            b'S' | b'F' => self.lock().open.push_back((Instant::now(), false)),
            _ => {}
        }
    }

    /// A server message passed.
    pub fn response(&self, tag: u8) {
        if tag != b'Z' {
            return;
        }
        let mut st = self.lock();
        if !st.ready {
            st.ready = true;
            return;
        }
        if let Some((start, simple)) = st.open.pop_front() {
            let h = if simple { &self.simple } else { &self.extended };
            h.observe(start.elapsed().as_secs_f64());
        }
    }
}

/// Tells the client why its session ends after a malformed frame from
/// either side; the returned error is for the log.
pub(crate) async fn report_malformed(
    client: &mut Stream,
    from_client: bool,
    e: crate::protocol::FrameError,
) -> SessionError {
    let message = if from_client {
        format!("pgveil: invalid message from client: {e}")
    } else {
        warn!(error = %e, "malformed message from upstream");
        "pgveil: invalid message from the database server".to_string()
    };
    let msg = ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, message);
    send_fatal(client, &msg).await;
    SessionError::Protocol(e.to_string())
}

/// How long a session being ended keeps reading what the client is still
/// sending.
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends a FATAL and lets the client read it: a client in the middle of
/// sending a large message reads nothing until it has sent it all, and
/// closing a socket with unread input makes the kernel reset the
/// connection, discarding the FATAL unread. So what the client still sends
/// is read and dropped, until it closes (as drivers do on a FATAL) or
/// [`DRAIN_FOR`] has passed.
pub(crate) async fn send_fatal(client: &mut Stream, msg: &ErrorResponse) {
    use tokio::io::AsyncReadExt;
    if write_flush(client, &msg.to_bytes()).await.is_err() {
        return;
    }
    let mut scratch = vec![0u8; 16 * 1024];
    let drain = async {
        while let Ok(n) = client.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
}

/// Reads more bytes into a pump's buffer; `false` at end of stream.
pub(crate) async fn fill<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut bytes::BytesMut,
    chunk: usize,
) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    if buf.capacity() - buf.len() < chunk / 4 {
        buf.reserve(chunk);
    }
    Ok(reader.read_buf(buf).await? != 0)
}
