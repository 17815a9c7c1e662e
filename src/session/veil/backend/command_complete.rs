//! CommandComplete, EmptyQueryResponse and PortalSuspended: the end of one
//! statement's result in a simple Query, or of an Execute.

use bytes::BytesMut;

use super::steps::out_of_step;
use crate::session::veil::extended::Step;
use crate::session::veil::state::{Pending, State};

/// One statement of a simple Query is done: the next result is the next
/// statement's.
pub(super) fn on_query_complete(st: &mut State, frame: BytesMut) -> BytesMut {
    st.decoder = None;
    if let Some(Pending::Query(q)) = st.pending.front_mut() {
        q.index += 1;
    }
    frame
}

/// An Execute is done.
pub(super) fn on_execute_complete(st: &mut State, frame: BytesMut) -> BytesMut {
    match st.pending.pop_front() {
        Some(Pending::Step(Step::Execute { .. })) => {}
        _ => out_of_step(st, frame[0]),
    }
    frame
}
