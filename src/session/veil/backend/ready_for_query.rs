//! ReadyForQuery: the request at the front of the FIFO is answered. Its
//! entry is taken off, its duration and pgveil's overhead recorded, and
//! the per-response state (decoder, discarding, COPY TO) reset.

use bytes::BytesMut;

use super::steps::abandon_steps;
use crate::session::veil::state::{Pending, State, Veil};

/// Ends the response at the front of the FIFO; the frame is forwarded.
pub(super) fn on_ready(veil: &Veil, st: &mut State, frame: BytesMut) -> BytesMut {
    // A COPY TO ends with its response at the latest, and steps still
    // waiting were skipped by the server after an error.
    st.copy_out = None;
    if matches!(st.pending.front(), Some(Pending::Step(_))) {
        abandon_steps(st);
    }
    let metrics = &veil.shared.metrics;
    match st.pending.pop_front() {
        Some(Pending::Query(q)) => {
            if q.changes_settings {
                st.settings_in_flight = st.settings_in_flight.saturating_sub(1);
            }
            metrics
                .statement_duration_seconds
                .with_label_values(&["simple"])
                .observe(q.started.elapsed().as_secs_f64());
            metrics
                .proxy_overhead_seconds
                .observe(q.overhead.as_secs_f64());
        }
        Some(Pending::SyncInCopy(started)) => {
            // The COPY never started: this Sync was a real one.
            st.ext.skip_until_sync = false;
            st.ext.in_batch = false;
            if st.copy_in.as_ref().is_some_and(|c| !c.started) {
                st.copy_in = None;
            }
            metrics
                .statement_duration_seconds
                .with_label_values(&["extended"])
                .observe(started.elapsed().as_secs_f64())
        }
        Some(Pending::Passthrough(started)) => metrics
            .statement_duration_seconds
            .with_label_values(&["extended"])
            .observe(started.elapsed().as_secs_f64()),
        Some(Pending::SettingsSync(started)) => {
            st.settings_in_flight = st.settings_in_flight.saturating_sub(1);
            metrics
                .statement_duration_seconds
                .with_label_values(&["extended"])
                .observe(started.elapsed().as_secs_f64());
        }
        _ => {}
    }
    st.decoder = None;
    st.discard_until_ready = false;
    let idle = frame.get(5) == Some(&b'I');
    st.idle = idle;
    if idle && st.pending.iter().all(|p| matches!(p, Pending::Catalog(_))) {
        st.settings_changed_in_txn = false;
    }
    end_of_ddl(veil, st, frame.get(5).copied());
    frame
}

/// After DDL: the session's own catalog is read again for the next
/// statement (a savepoint rollback or an error may have undone part of
/// it), and once the transaction is over (status `I`: committed or rolled
/// back), every session of the database reloads: a commit publishes the
/// DDL, and what another session loaded meanwhile may predate it.
fn end_of_ddl(veil: &Veil, st: &mut State, status: Option<u8>) {
    if !st.txn_ddl {
        return;
    }
    st.txn_catalog = None;
    if status == Some(b'I') {
        veil.shared.invalidate_catalog(&veil.key());
        // A request pipelined ahead of the DDL ends before it: the DDL's
        // own transaction ends with the last request in flight, and every
        // ReadyForQuery until then invalidates again.
        let more = st.pending.iter().any(|p| !matches!(p, Pending::Catalog(_)));
        if !more {
            st.txn_ddl = false;
        }
    }
}
