//! The opening of a connection, before any regular message: SSL and GSS
//! negotiation, CancelRequest, and the StartupMessage, which is forwarded to
//! the upstream unchanged (protocol 3.0 and 3.2 alike).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::SessionError;
use super::stream::Stream;
use crate::config::UpstreamTlsMode;
use crate::metrics::Metrics;
use crate::protocol::messages::ErrorResponse;
use crate::protocol::sqlstate;
use crate::protocol::startup::{self, InitialPacket, StartupParams, TLS_HANDSHAKE_BYTE};
use crate::shared::Shared;
use crate::tls::{ServerTls, UpstreamTls};

/// How a connection opened.
#[derive(Debug)]
pub enum Opening {
    /// The client went away before sending a startup packet.
    Closed,
    /// A CancelRequest, raw, to be forwarded.
    Cancel(Vec<u8>),
    /// A StartupMessage, raw, plus what pgveil read from it.
    Startup {
        /// The packet as the client sent it, length included.
        packet: Vec<u8>,
        /// Decoded parameters.
        params: StartupParams,
    },
}

/// Reads initial packets until a StartupMessage or CancelRequest arrives.
/// SSLRequest is answered `S` and the handshake run when `[listen.tls]` is
/// configured, `N` otherwise; GSSENCRequest always `N`. A ClientHello as the
/// very first byte is PostgreSQL 17's direct TLS negotiation, accepted only
/// with ALPN `postgresql`. Nothing past a request packet is read before it
/// is answered, so bytes a client (or an attacker in the path) sends ahead
/// of the handshake never count as encrypted input.
pub async fn negotiate(
    client: TcpStream,
    tls: Option<&ServerTls>,
    metrics: &Metrics,
) -> Result<(Stream, Opening), SessionError> {
    let mut slot = Some(Stream::Plain(client));
    match read_opening(&mut slot, tls, metrics).await {
        Ok(opening) => match slot {
            Some(stream) => Ok((stream, opening)),
            None => Err(SessionError::Tls("handshake did not complete".into())),
        },
        Err(e @ SessionError::Protocol(_)) => {
            // Said in the clear or over TLS, whichever the client is on.
            if let Some(stream) = slot.as_mut() {
                let msg =
                    ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, format!("pgveil: {e}"));
                let _ = super::write_flush(stream, &msg.to_bytes()).await;
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

async fn read_opening(
    slot: &mut Option<Stream>,
    tls: Option<&ServerTls>,
    metrics: &Metrics,
) -> Result<Opening, SessionError> {
    let mut ssl_done = false;
    let mut gss_done = false;
    if let (Some(tls), Some(Stream::Plain(tcp))) = (tls, slot.as_ref()) {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE_BYTE {
            handshake(slot, tls, metrics, true).await?;
            ssl_done = true;
        }
    }
    loop {
        let stream = slot
            .as_mut()
            .ok_or_else(|| SessionError::Tls("handshake did not complete".into()))?;
        let mut len = [0u8; 4];
        match stream.read(&mut len[..1]).await? {
            0 => return Ok(Opening::Closed),
            _ if len[0] == TLS_HANDSHAKE_BYTE && !stream.is_tls() => {
                return Err(SessionError::Protocol(
                    "direct TLS negotiation, but TLS is not configured".into(),
                ));
            }
            _ => {}
        }
        stream.read_exact(&mut len[1..]).await?;
        let length = startup::check_length(i32::from_be_bytes(len))
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        let mut packet = vec![0u8; length];
        packet[..4].copy_from_slice(&len);
        stream.read_exact(&mut packet[4..]).await?;
        match startup::parse(&packet).map_err(|e| SessionError::Protocol(e.to_string()))? {
            InitialPacket::SslRequest if !ssl_done => {
                ssl_done = true;
                match tls {
                    Some(tls) => {
                        stream.write_all(b"S").await?;
                        handshake(slot, tls, metrics, false).await?;
                    }
                    None => stream.write_all(b"N").await?,
                }
            }
            InitialPacket::GssEncRequest if !gss_done && !stream.is_tls() => {
                gss_done = true;
                stream.write_all(b"N").await?;
            }
            InitialPacket::SslRequest | InitialPacket::GssEncRequest => {
                return Err(SessionError::Protocol("repeated encryption request".into()));
            }
            InitialPacket::CancelRequest => return Ok(Opening::Cancel(packet)),
            InitialPacket::Startup(params) => return Ok(Opening::Startup { packet, params }),
        }
    }
}

/// Runs the server side of a TLS handshake on a plain stream.
async fn handshake(
    slot: &mut Option<Stream>,
    tls: &ServerTls,
    metrics: &Metrics,
    direct: bool,
) -> Result<(), SessionError> {
    let Some(Stream::Plain(tcp)) = slot.take() else {
        return Err(SessionError::Protocol("repeated encryption request".into()));
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let result = acceptor.accept(tcp).await;
    let counted = |ok: bool| {
        metrics
            .tls_handshakes_total
            .with_label_values(&["client", if ok { "ok" } else { "error" }])
            .inc()
    };
    let accepted = match result {
        Ok(s) => s,
        Err(e) => {
            counted(false);
            return Err(SessionError::Tls(e.to_string()));
        }
    };
    // Direct negotiation skips the SSLRequest that says "this is
    // PostgreSQL": ALPN must say it instead, as PostgreSQL 17 requires.
    if direct && accepted.get_ref().1.alpn_protocol() != Some(crate::tls::ALPN_POSTGRESQL) {
        counted(false);
        return Err(SessionError::Tls(
            "direct TLS negotiation without ALPN protocol \"postgresql\"".into(),
        ));
    }
    counted(true);
    *slot = Some(Stream::Accepted(Box::new(accepted)));
    Ok(())
}

/// Opens the upstream connection within the configured timeout, with TLS
/// as `[upstream.tls]` says: SSLRequest, then the handshake on `S`; on `N`
/// only `prefer` continues in plaintext (logged and counted).
pub async fn connect_upstream(
    shared: &Shared,
    tls: Option<&UpstreamTls>,
) -> Result<Stream, SessionError> {
    let address = shared.config.upstream.address.get_ref();
    let timeout = Duration::from_millis(shared.config.upstream.connect_timeout_ms);
    let failed = |reason: String| SessionError::Upstream {
        address: address.clone(),
        reason,
    };
    let connect = async {
        let mut tcp = TcpStream::connect(address.as_str())
            .await
            .map_err(|e| failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (Some(tls), Some(config)) = (tls, tls.and_then(|t| t.config.clone())) else {
            return Ok(Stream::Plain(tcp));
        };
        tcp.write_all(&SSL_REQUEST).await?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer).await?;
        match answer[0] {
            b'S' => {}
            b'N' if tls.mode == UpstreamTlsMode::Prefer => {
                shared.metrics.upstream_tls_fallbacks_total.inc();
                warn!(upstream = %address, "the server refused TLS; continuing in plaintext (upstream.tls.mode = \"prefer\")");
                return Ok(Stream::Plain(tcp));
            }
            b'N' => {
                return Err(failed(format!(
                    "the server does not accept TLS, but upstream.tls.mode is \"{}\"",
                    tls.mode.name()
                )));
            }
            _ => {
                return Err(failed(
                    "the server answered the SSLRequest with an unexpected byte".into(),
                ));
            }
        }
        let connector = tokio_rustls::TlsConnector::from(config);
        match connector.connect(tls.server_name.clone(), tcp).await {
            Ok(s) => {
                shared
                    .metrics
                    .tls_handshakes_total
                    .with_label_values(&["upstream", "ok"])
                    .inc();
                Ok(Stream::Connected(Box::new(s)))
            }
            Err(e) => {
                shared
                    .metrics
                    .tls_handshakes_total
                    .with_label_values(&["upstream", "error"])
                    .inc();
                Err(failed(format!("TLS handshake failed: {e}")))
            }
        }
    };
    tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| failed(format!("timed out after {} ms", timeout.as_millis())))?
}

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 4, 210, 22, 47];

/// Forwards a CancelRequest unchanged to the upstream. The packet carries
/// the backend's own key, which pgveil passed through untouched, so this
/// works whichever pgveil replica receives it.
pub async fn forward_cancel(shared: &Shared, packet: &[u8], peer: SocketAddr) {
    let result = async {
        let tls = shared.tls();
        let mut upstream = connect_upstream(shared, tls.upstream.as_deref()).await?;
        upstream.write_all(packet).await?;
        upstream.flush().await?;
        // PostgreSQL closes the connection once it has read the request.
        let mut sink = [0u8; 1];
        let _ = tokio::time::timeout(Duration::from_secs(5), upstream.read(&mut sink)).await;
        Ok::<(), SessionError>(())
    }
    .await;
    match result {
        Ok(()) => debug!(%peer, "cancel request forwarded"),
        Err(e) => warn!(%peer, error = %e, "cancel request not forwarded"),
    }
}
