//! The responses to pgveil's own catalog query (see `veil/catalog.rs`):
//! consumed, never forwarded, and handed to the client pump waiting for
//! them when its ReadyForQuery arrives.

use crate::protocol::messages::data_row;
use crate::session::veil::state::{Listen, Pending, State};

/// Takes a frame answering the catalog query at the front of the FIFO;
/// `false` when there is none, or for ParameterStatus, NoticeResponse and
/// NotificationResponse, which are the client's as usual.
pub(super) fn consume(st: &mut State, frame: &[u8]) -> bool {
    let Some(Pending::Catalog(load)) = st.pending.front_mut() else {
        return false;
    };
    match frame[0] {
        b'D' => {
            if let Ok(cells) = data_row::decode(frame) {
                load.current.push(
                    cells
                        .iter()
                        .map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned()))
                        .collect(),
                );
            }
        }
        b'C' => {
            let rows = std::mem::take(&mut load.current);
            load.results.push(rows);
        }
        b'E' => {
            load.error = Some("catalog query failed".into());
        }
        b'Z' => {
            if let Some(Pending::Catalog(mut load)) = st.pending.pop_front() {
                // A statement queued behind the LISTEN may have dropped it
                // again (`Dropped` stays).
                if load.listen && st.listen == Listen::Sent {
                    st.listen = if load.error.is_none() {
                        Listen::Active
                    } else {
                        Listen::Refused
                    };
                }
                let result = match load.error.take() {
                    Some(e) => Err(e),
                    None => Ok(std::mem::take(&mut load.results)),
                };
                if let Some(done) = load.done.take() {
                    let _ = done.send(result);
                }
            }
        }
        b'S' | b'N' | b'A' => return false,
        _ => {}
    }
    true
}
