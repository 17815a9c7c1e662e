//! The opening of a connection, before any regular message: SSL and GSS
//! negotiation, CancelRequest, and the StartupMessage, which is forwarded to
//! the upstream unchanged (protocol 3.0 and 3.2 alike).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::SessionError;
use crate::protocol::startup::{self, InitialPacket, StartupParams, TLS_HANDSHAKE_BYTE};
use crate::server::Shared;

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

/// Reads initial packets until a StartupMessage or CancelRequest arrives,
/// answering SSLRequest and GSSENCRequest with `N` (no TLS configured).
/// Nothing past a request packet is read before it is answered.
pub async fn negotiate(client: &mut TcpStream) -> Result<Opening, SessionError> {
    let mut ssl_done = false;
    let mut gss_done = false;
    loop {
        let mut len = [0u8; 4];
        match client.read(&mut len[..1]).await? {
            0 => return Ok(Opening::Closed),
            _ if len[0] == TLS_HANDSHAKE_BYTE => {
                return Err(SessionError::Protocol(
                    "direct TLS negotiation, but TLS is not configured".into(),
                ));
            }
            _ => {}
        }
        client.read_exact(&mut len[1..]).await?;
        let length = startup::check_length(i32::from_be_bytes(len))
            .map_err(|e| SessionError::Protocol(e.to_string()))?;
        let mut packet = vec![0u8; length];
        packet[..4].copy_from_slice(&len);
        client.read_exact(&mut packet[4..]).await?;
        match startup::parse(&packet).map_err(|e| SessionError::Protocol(e.to_string()))? {
            InitialPacket::SslRequest if !ssl_done => {
                ssl_done = true;
                client.write_all(b"N").await?;
            }
            InitialPacket::GssEncRequest if !gss_done => {
                gss_done = true;
                client.write_all(b"N").await?;
            }
            InitialPacket::SslRequest | InitialPacket::GssEncRequest => {
                return Err(SessionError::Protocol("repeated encryption request".into()));
            }
            InitialPacket::CancelRequest => return Ok(Opening::Cancel(packet)),
            InitialPacket::Startup(params) => return Ok(Opening::Startup { packet, params }),
        }
    }
}

/// Opens the upstream TCP connection within the configured timeout.
pub async fn connect_upstream(shared: &Shared) -> Result<TcpStream, SessionError> {
    let address = shared.config.upstream.address.get_ref();
    let timeout = Duration::from_millis(shared.config.upstream.connect_timeout_ms);
    let failed = |reason: String| SessionError::Upstream {
        address: address.clone(),
        reason,
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(address.as_str()))
        .await
        .map_err(|_| failed(format!("timed out after {} ms", timeout.as_millis())))?
        .map_err(|e| failed(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Forwards a CancelRequest unchanged to the upstream. The packet carries
/// the backend's own key, which pgveil passed through untouched, so this
/// works whichever pgveil replica receives it.
pub async fn forward_cancel(shared: &Shared, packet: &[u8], peer: SocketAddr) {
    let result = async {
        let mut upstream = connect_upstream(shared).await?;
        upstream.write_all(packet).await?;
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
