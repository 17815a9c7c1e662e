//! Step bookkeeping: ParseComplete, BindComplete and CloseComplete confirm
//! what a Parse, Bind or Close registered; after an error the steps
//! PostgreSQL skips are dropped and their registrations undone; a response
//! that matches no step ends the session.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use tracing::warn;

use crate::session::veil::extended::Step;
use crate::session::veil::state::{Pending, State};

/// ParseComplete, BindComplete or CloseComplete: the step it answers is
/// done; a Close forgets what it closed.
pub(super) fn on_complete(st: &mut State, frame: BytesMut) -> BytesMut {
    let tag = frame[0];
    let Some(Pending::Step(step)) = st.pending.pop_front() else {
        return frame;
    };
    match (tag, step) {
        (b'1', Step::Parse { .. }) | (b'2', Step::Bind { .. }) => {}
        (b'3', step @ Step::Close { .. }) => closed(st, step),
        _ => out_of_step(st, tag),
    }
    frame
}

/// After an error: the steps PostgreSQL will skip are dropped, and what
/// they registered is undone.
pub(super) fn abandon_steps(st: &mut State) {
    while let Some(Pending::Step(_)) = st.pending.front() {
        match st.pending.pop_front() {
            Some(Pending::Step(Step::Parse {
                name,
                new,
                previous,
            })) => restore(&mut st.ext.statements, name, &new, previous),
            Some(Pending::Step(Step::Bind {
                name,
                new,
                previous,
            })) => restore(&mut st.ext.portals, name, &new, previous),
            _ => {}
        }
    }
    if st.pending.is_empty() && st.ext.in_batch {
        st.ext.skip_until_sync = true;
    }
}

/// Undoes a registration the server never confirmed, unless it was
/// replaced since.
fn restore<T>(
    map: &mut HashMap<String, Arc<T>>,
    name: String,
    new: &Arc<T>,
    previous: Option<Arc<T>>,
) {
    if !map.get(&name).is_some_and(|cur| Arc::ptr_eq(cur, new)) {
        return;
    }
    match previous {
        Some(p) => map.insert(name, p),
        None => map.remove(&name),
    };
}

/// CloseComplete: forget what was closed, unless it was replaced since.
fn closed(st: &mut State, step: Step) {
    if let Step::Close { statement, portal } = step {
        if let Some((name, s)) = statement
            && st
                .ext
                .statements
                .get(&name)
                .is_some_and(|cur| Arc::ptr_eq(cur, &s))
        {
            st.ext.statements.remove(&name);
        }
        if let Some((name, p)) = portal
            && st
                .ext
                .portals
                .get(&name)
                .is_some_and(|cur| Arc::ptr_eq(cur, &p))
        {
            st.ext.portals.remove(&name);
        }
    }
}

/// Logs a step/response mismatch: pgveil lost track of the stream, which
/// must not happen; the response is forwarded unchanged.
pub(super) fn out_of_step(st: &mut State, tag: u8) {
    st.desync = true;
    warn!(tag = %(tag as char), "response does not match the expected extended-protocol step; ending the session");
}
