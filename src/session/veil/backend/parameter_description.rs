//! ParameterDescription, answering a Describe of a statement: encrypted
//! parameters are reported with the application's types.

use bytes::BytesMut;

use super::steps::out_of_step;
use crate::protocol::messages::extended;
use crate::protocol::types;
use crate::session::veil::extended::{Statement, Step};
use crate::session::veil::state::{Pending, State};

/// ParameterDescription: dropped when pgveil asked for it, else forwarded
/// with encrypted parameters' types as the client knows them.
pub(super) fn on_describe(st: &mut State, frame: BytesMut) -> Option<BytesMut> {
    match st.pending.front() {
        Some(Pending::Step(Step::DescribeStatement {
            statement,
            injected,
        })) => {
            if *injected {
                return None;
            }
            Some(
                statement
                    .as_deref()
                    .and_then(|s| present_parameters(s, &frame))
                    .unwrap_or(frame),
            )
        }
        _ => {
            out_of_step(st, frame[0]);
            Some(frame)
        }
    }
}

/// ParameterDescription for a client's Describe: encrypted parameters show
/// the type the client declared, or the column's own type, never the
/// storage type.
fn present_parameters(statement: &Statement, frame: &[u8]) -> Option<BytesMut> {
    if !statement.encrypts_params() {
        return None;
    }
    let mut oids = extended::decode_parameter_description(frame).ok()?;
    for (i, oid) in oids.iter_mut().enumerate() {
        if let Some(Some(b)) = statement.params.get(i) {
            let declared = statement.client_types.get(i).copied().unwrap_or(0);
            let app = types::pg_type(b.column.value_type).0;
            *oid = match (declared, b.array) {
                (0, false) => app,
                (0, true) => types::array_of(app),
                (d, _) => d,
            };
        }
    }
    Some(extended::encode_parameter_description(&oids))
}
