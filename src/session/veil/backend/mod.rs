//! The server's side of an encrypting session: one dispatcher for every
//! inspected backend message.
//!
//! Each response is read against the front of the response FIFO
//! ([`Pending`]): pgveil's own catalog query consumes its answers; an
//! extended-protocol [`Step`](super::extended::Step) takes the messages
//! that answer it; anything else answers a simple Query (or a forwarded
//! Sync). The dispatcher looks at that entry and the message type and
//! calls one handler, in a module named for the message:
//!
//! - [`catalog_load`]: the rows of pgveil's own catalog query;
//! - [`steps`]: ParseComplete, BindComplete, CloseComplete, and dropping
//!   the steps PostgreSQL skips after an error;
//! - [`parameter_description`], [`row_description`], [`data_row`],
//!   [`command_complete`]: the answers to Describe, Execute and Query;
//! - [`copy`]: CopyInResponse, CopyOutResponse and the server's CopyData;
//! - [`error_response`], [`ready_for_query`], [`parameter_status`];
//! - [`notification`]: pgveil's schema change notifications, consumed.

mod catalog_load;
mod command_complete;
mod copy;
mod data_row;
mod error_response;
mod notification;
mod parameter_description;
mod parameter_status;
mod ready_for_query;
mod row_description;
mod steps;

use bytes::BytesMut;

use super::state::{Listen, Pending, State, Veil};
use crate::session::SessionError;

/// Which server messages the framer must hand over whole: what a handler
/// below reads or rewrites. Computed per frame, from the FIFO's front.
pub(super) struct Inspect {
    /// Everything: a catalog load is consuming the response, or the rest
    /// of it is being dropped.
    all: bool,
    /// DataRows: the current result has encrypted columns.
    rows: bool,
    /// The server's CopyData and CopyDone: a COPY TO is being decrypted.
    copying: bool,
}

impl Inspect {
    /// What to inspect as the session stands now.
    pub(super) fn now(veil: &Veil) -> Inspect {
        let mut st = veil.state();
        let all = matches!(st.pending.front(), Some(Pending::Catalog(_))) || st.discard_until_ready;
        let rows = st.decoder.is_some() || data_row::execute_rows(veil, &mut st);
        Inspect {
            all,
            rows,
            copying: st.copy_out.is_some(),
        }
    }

    /// Whether a message of type `tag` must be inspected.
    pub(super) fn wants(&self, tag: u8) -> bool {
        self.all
            || matches!(
                tag,
                b'Z' | b'T'
                    | b'A'
                    | b'C'
                    | b'I'
                    | b'E'
                    | b'S'
                    | b'1'
                    | b'2'
                    | b'3'
                    | b't'
                    | b'n'
                    | b's'
                    | b'G'
                    | b'H'
            )
            || (self.rows && tag == b'D')
            || (self.copying && matches!(tag, b'd' | b'c'))
    }
}

/// One inspected server frame; returns what to forward.
pub(super) fn on_frame(veil: &Veil, frame: BytesMut) -> Result<Option<BytesMut>, SessionError> {
    let mut guard = veil.state();
    let st = &mut *guard;
    let listening = st.listen;
    if catalog_load::consume(st, &frame) {
        if st.listen == Listen::Active && listening != Listen::Active {
            veil.shared.catalog_listener_added(&veil.database);
        }
        return Ok(None);
    }
    Ok(match frame[0] {
        b'E' => error_response::on_error(veil, st, frame),
        b'Z' => Some(ready_for_query::on_ready(veil, st, frame)),
        b'G' => Some(copy::on_copy_in_response(st, frame)),
        b'H' => Some(copy::on_copy_out_response(veil, st, frame)),
        b'd' | b'c' if st.copy_out.is_some() => copy::on_copy_out_data(veil, st, &frame),
        b'S' => Some(parameter_status::on_status(st, frame)),
        b'A' => notification::on_notification(veil, frame),
        b'N' => Some(frame),
        b'1' | b'2' | b'3' | b't' | b'T' | b'n' | b'D' | b'C' | b'I' | b's'
            if matches!(st.pending.front(), Some(Pending::Step(_))) =>
        {
            return on_step_frame(veil, st, frame);
        }
        _ if st.discard_until_ready => None,
        b'T' => Some(row_description::on_query_rows(veil, st, frame)),
        b'D' => Some(data_row::on_query_row(veil, st, frame)),
        b'C' | b'I' => Some(command_complete::on_query_complete(st, frame)),
        _ => Some(frame),
    })
}

/// A response to an extended-protocol step.
fn on_step_frame(
    veil: &Veil,
    st: &mut State,
    frame: BytesMut,
) -> Result<Option<BytesMut>, SessionError> {
    // Bookkeeping happens even while the rest of a response is
    // dropped: the statements and portals are real.
    let discarding = st.discard_until_ready;
    let out = match frame[0] {
        b'1' | b'2' | b'3' => Some(steps::on_complete(st, frame)),
        b't' => parameter_description::on_describe(st, frame),
        b'T' | b'n' => row_description::on_describe(veil, st, frame),
        b'D' => Some(data_row::on_execute_row(veil, st, frame)),
        // CommandComplete, EmptyQueryResponse, PortalSuspended.
        _ => Some(command_complete::on_execute_complete(st, frame)),
    };
    if st.desync {
        return Err(SessionError::Protocol(
            "pgveil lost track of the server's responses".into(),
        ));
    }
    Ok(out.filter(|_| !discarding))
}
