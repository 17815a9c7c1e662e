//! The message loop after startup: two pumps, client→upstream and
//! upstream→client, each framing its stream and forwarding frames untouched.
//! Later stages hook in where a frame must be inspected or rewritten.

use bytes::BytesMut;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::stream::Stream;
use super::{AuditContext, SessionError, Timing, audit_auth_error};
use crate::protocol::{Chunk, FrameError, Framer};
use crate::shared::Shared;

/// Initial read buffer per direction.
const READ_BUFFER: usize = 16 * 1024;

/// How one direction ended.
enum PumpEnd {
    /// The reading side closed.
    Eof,
    /// The reading side sent a malformed frame.
    Malformed(FrameError),
}

/// Relays a started session until either side closes.
pub async fn run(
    mut client: Stream,
    mut upstream: Stream,
    shared: &Shared,
    ctx: &AuditContext<'_>,
) -> Result<(), SessionError> {
    let limits = &shared.config.limits;
    let mut client_framer = Framer::new(limits.max_frame_bytes, limits.max_inspected_frame_bytes);
    let mut server_framer = Framer::new(limits.max_frame_bytes, limits.max_inspected_frame_bytes);

    let to_server = shared
        .metrics
        .bytes_total
        .with_label_values(&["client_to_server"]);
    let to_client = shared
        .metrics
        .bytes_total
        .with_label_values(&["server_to_client"]);
    let timing = Timing::new(&shared.metrics);
    let outcome = {
        let (mut cr, mut cw) = tokio::io::split(&mut client);
        let (mut ur, mut uw) = tokio::io::split(&mut upstream);
        tokio::select! {
            r = pump(&mut cr, &mut uw, &mut client_framer, &to_server, Side::Client(&timing), ctx) => r.map(|e| (true, e)),
            r = pump(&mut ur, &mut cw, &mut server_framer, &to_client, Side::Server(&timing), ctx) => r.map(|e| (false, e)),
        }
    };
    match outcome? {
        (_, PumpEnd::Eof) => Ok(()),
        (from_client, PumpEnd::Malformed(e)) => {
            Err(super::report_malformed(&mut client, from_client, e).await)
        }
    }
}

/// Copies frames from `reader` to `writer` until EOF or a malformed frame.
/// Which direction a pump carries, with what it observes on the way.
enum Side<'a> {
    Client(&'a Timing),
    Server(&'a Timing),
}

async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    framer: &mut Framer,
    bytes_total: &IntCounter,
    side: Side<'_>,
    ctx: &AuditContext<'_>,
) -> Result<PumpEnd, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    loop {
        loop {
            // During authentication the server's errors are inspected, so
            // that failures reach the audit log; afterwards nothing is.
            let inspect = |tag: u8| match &side {
                Side::Server(t) => tag == b'E' && !t.ready(),
                Side::Client(_) => false,
            };
            let seen = |tag: u8| match &side {
                Side::Client(t) => t.request(tag),
                Side::Server(t) => t.response(tag),
            };
            let next = framer.next_observed(&mut buf, inspect, seen);
            if let (Ok(Some(Chunk::Frame(frame))), Side::Server(_)) = (&next, &side) {
                audit_auth_error(ctx, frame);
            }
            match next {
                Ok(Some(Chunk::Forward(bytes) | Chunk::Frame(bytes))) => {
                    writer.write_all(&bytes).await?;
                    bytes_total.inc_by(bytes.len() as u64);
                }
                Ok(None) => break,
                Err(e) => return Ok(PumpEnd::Malformed(e)),
            }
        }
        writer.flush().await?;
        if !super::fill(reader, &mut buf, READ_BUFFER).await? {
            return Ok(PumpEnd::Eof);
        }
    }
}
