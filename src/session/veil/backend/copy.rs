//! The server's side of COPY: CopyInResponse (the server now ignores
//! Sync), CopyOutResponse (start decrypting with the plan of the current
//! statement or portal), and the CopyData and CopyDone of a COPY TO
//! STDOUT over encrypted columns.

use bytes::BytesMut;
use tracing::warn;

use crate::protocol::messages::ErrorResponse;
use crate::session::veil::copy::{self, CopyStream};
use crate::session::veil::extended::Step;
use crate::session::veil::state::{Pending, State, Veil};

/// CopyInResponse: the COPY FROM STDIN has started.
pub(super) fn on_copy_in_response(st: &mut State, frame: BytesMut) -> BytesMut {
    if let Some(c) = st.copy_in.as_mut() {
        c.started = true;
    }
    // Syncs sent since the COPY began are ignored by the server.
    st.pending.retain(|p| !matches!(p, Pending::SyncInCopy(_)));
    frame
}

/// CopyOutResponse: a COPY TO STDOUT over encrypted columns starts a
/// decrypting stream.
pub(super) fn on_copy_out_response(veil: &Veil, st: &mut State, frame: BytesMut) -> BytesMut {
    let plan = match st.pending.front() {
        Some(Pending::Query(q)) => q.copies.get(q.index).cloned().flatten(),
        Some(Pending::Step(Step::Execute { portal, .. })) => portal
            .as_ref()
            .and_then(|p| p.statement.as_ref())
            .and_then(|s| s.copy.clone()),
        _ => None,
    };
    let max_row = veil.shared.config.limits.max_inspected_frame_bytes as usize;
    st.copy_out = plan
        .filter(|p| p.to)
        .map(|p| CopyStream::new(p, veil.shared.encryption().keyring.clone(), max_row));
    frame
}

/// CopyData or CopyDone of a decrypting COPY TO STDOUT: the decrypted
/// complete rows, or the error that replaces the rest of the output.
pub(super) fn on_copy_out_data(veil: &Veil, st: &mut State, frame: &BytesMut) -> Option<BytesMut> {
    if st.discard_until_ready {
        return None;
    }
    let settings = &st.settings;
    let stream = st.copy_out.as_mut()?;
    let result = if frame[0] == b'd' {
        stream.feed(&frame[5..], settings)
    } else {
        stream.finish(settings)
    };
    match result {
        Ok(rows) => {
            let mut out = if rows.is_empty() {
                BytesMut::new()
            } else {
                copy::copy_data(&rows)
            };
            if frame[0] == b'c' {
                st.copy_out = None;
                out.extend_from_slice(frame);
            }
            (!out.is_empty()).then_some(out)
        }
        Err(e) => {
            warn!(target: "audit", client = %veil.peer, database = %veil.database,
                  user = %veil.user, error = %e.message, "COPY TO: decrypt failed");
            veil.shared
                .metrics
                .decrypt_errors_total
                .with_label_values(&["copy"])
                .inc();
            st.copy_out = None;
            st.discard_until_ready = true;
            let msg = ErrorResponse::error(e.sqlstate, format!("pgveil: {}", e.message));
            Some(msg.to_bytes())
        }
    }
}
