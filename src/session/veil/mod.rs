//! The message loop when columns are configured for encryption.
//!
//! Two pumps share one [`state::State`]: the client pump analyses Query
//! and Parse messages and rewrites or refuses them; the server pump
//! decrypts result rows by column origin and tracks session settings.
//! Every request that ends in ReadyForQuery pushes one [`state::Pending`]
//! entry, in order, so the server pump always knows which request a
//! response belongs to.
//!
//! The catalog is learned on the client's own upstream connection before
//! its first statement, with an internal Query whose responses the server
//! pump consumes instead of forwarding.
//!
//! Client side, by message: `query` (simple Query), `extended` (Parse,
//! Bind, Describe, Execute, Close, Sync; `parameters` encrypts bound
//! values), `copy` (COPY streams, the client's COPY data). Shared by both:
//! `state` (the FIFO and session state), `catalog` (loading it, watched
//! names), `prepared` (SQL prepared statements across reloads). Server
//! side: one dispatcher, `backend`, with a handler per message kind.

mod backend;
mod catalog;
mod copy;
mod extended;
mod parameters;
mod parse;
mod prepared;
mod query;
mod replan;
mod state;
mod watch;

use std::sync::Arc;

use super::stream::Stream;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::SessionError;
use crate::protocol::messages::ErrorResponse;
use crate::protocol::{Chunk, FrameError, Framer, sqlstate};
use crate::shared::Shared;
use state::Veil;

const READ_BUFFER: usize = 16 * 1024;
/// Flush the output buffer once it holds this much.
const FLUSH_AT: usize = 64 * 1024;

/// Runs an encrypting session until either side closes.
pub async fn run(
    mut client: Stream,
    mut upstream: Stream,
    startup_packet: &[u8],
    shared: Arc<Shared>,
    user: &str,
    database: &str,
    peer: std::net::SocketAddr,
) -> Result<(), SessionError> {
    let veil = Veil::new(peer, shared.clone(), user, database);
    let startup = String::from_utf8_lossy(startup_packet)
        .to_ascii_lowercase()
        .replace('-', "_");
    if startup.contains("search_path") || startup.contains("role=") {
        // Set at connection time (`options=-c search_path=...`, where
        // PostgreSQL reads `-` as `_`, or `-c role=...`, which changes
        // what `"$user"` resolves to): this session resolves names
        // differently from others of its user.
        veil.make_key_private();
    }
    let limits = &shared.config.limits;
    let mut client_framer = Framer::new(limits.max_frame_bytes, limits.max_inspected_frame_bytes);
    let mut server_framer = Framer::new(limits.max_frame_bytes, limits.max_inspected_frame_bytes);
    let outcome = {
        let (mut cr, mut cw) = tokio::io::split(&mut client);
        let (mut ur, mut uw) = tokio::io::split(&mut upstream);
        tokio::select! {
            r = client_pump(&veil, &mut cr, &mut uw, &mut client_framer) => r.map(|e| (true, e)),
            r = server_pump(&veil, &mut ur, &mut cw, &mut server_framer) => r.map(|e| (false, e)),
        }
    };
    veil.release();
    let outcome = match outcome {
        Err(SessionError::Reload(message)) => {
            let msg = ErrorResponse::fatal(sqlstate::ADMIN_SHUTDOWN, message.clone());
            super::send_fatal(&mut client, &msg).await;
            return Err(SessionError::Reload(message));
        }
        other => other?,
    };
    match outcome {
        (_, None) => Ok(()),
        (from_client, Some(e)) => Err(super::report_malformed(&mut client, from_client, e).await),
    }
}

async fn flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut BytesMut,
    bytes_total: &prometheus::IntCounter,
) -> Result<(), SessionError> {
    if !out.is_empty() {
        w.write_all(out).await?;
        w.flush().await?;
        bytes_total.inc_by(out.len() as u64);
        out.clear();
    }
    Ok(())
}

/// A pump's byte counter, read buffer and output buffer.
fn pump_state(veil: &Veil, direction: &str) -> (prometheus::IntCounter, BytesMut, BytesMut) {
    (
        veil.shared
            .metrics
            .bytes_total
            .with_label_values(&[direction]),
        BytesMut::with_capacity(READ_BUFFER),
        BytesMut::with_capacity(READ_BUFFER),
    )
}

/// Client → server. Returns the frame error that ended it, if any.
async fn client_pump<R, W>(
    veil: &Veil,
    reader: &mut R,
    writer: &mut W,
    framer: &mut Framer,
) -> Result<Option<FrameError>, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (bytes_total, mut buf, mut out) = pump_state(veil, "client_to_server");
    let mut started = false;
    loop {
        loop {
            let (copying, listen) = {
                let st = veil.state();
                (st.copy_in.is_some(), st.wants_listen())
            };
            let inspect = |tag: u8| {
                matches!(tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'F')
                    || (copying && matches!(tag, b'd' | b'c' | b'f'))
            };
            match framer.next(&mut buf, inspect) {
                Ok(Some(Chunk::Forward(bytes))) => {
                    out.extend_from_slice(&bytes);
                    if out.len() >= FLUSH_AT {
                        flush(writer, &mut out, &bytes_total).await?;
                    }
                }
                Ok(Some(Chunk::Frame(frame))) => {
                    if listen && matches!(frame[0], b'Q' | b'P') {
                        catalog::listen(veil, &mut out);
                    }
                    if !started {
                        // The first statement: learn the catalog first.
                        flush(writer, &mut out, &bytes_total).await?;
                        if veil.cached_catalog().is_none() {
                            catalog::ensure_catalog(veil, writer).await;
                        }
                        started = true;
                    }
                    if copying && !matches!(frame[0], b'd' | b'c' | b'f' | b'S') {
                        // Anything else ends copy-in mode (PostgreSQL fails
                        // the COPY on it).
                        veil.state().copy_in = None;
                    }
                    match frame[0] {
                        b'd' | b'c' | b'f' => {
                            out.extend_from_slice(&copy::on_copy_in(veil, &frame));
                        }
                        b'Q' => {
                            flush(writer, &mut out, &bytes_total).await?;
                            let rewritten = query::on_query(veil, writer, &frame).await?;
                            out.extend_from_slice(&rewritten);
                        }
                        b'P' => {
                            // Parse may wait for a catalog load.
                            flush(writer, &mut out, &bytes_total).await?;
                            let replaced = extended::on_message(veil, writer, &frame).await?;
                            out.extend_from_slice(&replaced);
                        }
                        _ => {
                            let replaced = extended::on_message(veil, writer, &frame).await?;
                            out.extend_from_slice(&replaced);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    flush(writer, &mut out, &bytes_total).await?;
                    return Ok(Some(e));
                }
            }
        }
        flush(writer, &mut out, &bytes_total).await?;
        if !super::fill(reader, &mut buf, READ_BUFFER).await? {
            return Ok(None);
        }
        prepared::reconcile_reload(veil)?;
    }
}

/// Server → client.
async fn server_pump<R, W>(
    veil: &Veil,
    reader: &mut R,
    writer: &mut W,
    framer: &mut Framer,
) -> Result<Option<FrameError>, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (bytes_total, mut buf, mut out) = pump_state(veil, "server_to_client");
    loop {
        loop {
            let inspect = backend::Inspect::now(veil);
            match framer.next(&mut buf, |tag| inspect.wants(tag)) {
                Ok(Some(Chunk::Forward(bytes))) => out.extend_from_slice(&bytes),
                Ok(Some(Chunk::Frame(frame))) => {
                    if let Some(f) = backend::on_frame(veil, frame)? {
                        out.extend_from_slice(&f);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    flush(writer, &mut out, &bytes_total).await?;
                    return Ok(Some(e));
                }
            }
            if out.len() >= FLUSH_AT {
                flush(writer, &mut out, &bytes_total).await?;
            }
        }
        flush(writer, &mut out, &bytes_total).await?;
        if !super::fill(reader, &mut buf, READ_BUFFER).await? {
            return Ok(None);
        }
    }
}
