//! RowDescription (and NoData): which result columns are encrypted, by
//! origin or the analyzer's hints, reported with the application's types;
//! for a simple Query it sets up the decoder of the rows that follow, for
//! a Describe it records the columns on the statement or portal.

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;

use super::steps::out_of_step;
use crate::catalog::{Catalog, Encrypted};
use crate::crypto::Format;
use crate::protocol::messages::row_description;
use crate::protocol::types;
use crate::session::veil::extended::Step;
use crate::session::veil::state::{Decoder, Pending, State, Veil};

/// RowDescription answering a simple Query's statement: the decoder for
/// its rows, and the frame with encrypted columns' types rewritten.
pub(super) fn on_query_rows(veil: &Veil, st: &mut State, frame: BytesMut) -> BytesMut {
    let Some(Pending::Query(q)) = st.pending.front() else {
        return frame;
    };
    let Ok(mut fields) = row_description::decode(&frame) else {
        return frame;
    };
    let hints = q.hints.get(q.index).cloned().unwrap_or_default();
    let cols = encrypted_columns(q.catalog.as_deref(), &hints, &fields);
    if cols.iter().all(Option::is_none) {
        st.decoder = None;
        return frame;
    }
    let columns = cols
        .iter()
        .zip(&fields)
        .map(|(c, f)| {
            c.clone().map(|e| {
                let format = if f.format == 1 {
                    Format::Binary
                } else {
                    Format::Text
                };
                (e, format)
            })
        })
        .collect();
    present_columns(&mut fields, &cols);
    st.decoder = Some(Decoder::new(
        veil,
        columns,
        veil.shared.encryption().keyring.clone(),
    ));
    row_description::encode(&fields)
}

/// RowDescription or NoData answering a Describe of a statement or portal:
/// its columns are recorded; dropped when pgveil asked for it.
pub(super) fn on_describe(veil: &Veil, st: &mut State, frame: BytesMut) -> Option<BytesMut> {
    let tag = frame[0];
    let Some(Pending::Step(step)) = st.pending.pop_front() else {
        return Some(frame);
    };
    let (injected, out) = match step {
        Step::DescribeStatement {
            statement,
            injected,
        } => {
            let out = match statement {
                Some(s) if tag == b'T' => {
                    describe_rows(veil, st, frame, s.catalog.clone(), &s.hints, &s.columns)
                }
                Some(s) => {
                    let _ = s.columns.set(Vec::new());
                    frame
                }
                None => frame,
            };
            (injected, out)
        }
        Step::DescribePortal { portal, injected } => {
            let out = match portal {
                Some(p) if tag == b'T' => {
                    let (catalog, hints) = p
                        .statement
                        .as_ref()
                        .map(|s| (s.catalog.clone(), s.hints.clone()))
                        .unwrap_or_default();
                    describe_rows(veil, st, frame, catalog, &hints, &p.columns)
                }
                Some(p) => {
                    let _ = p.columns.set(Vec::new());
                    frame
                }
                None => frame,
            };
            (injected, out)
        }
        _ => {
            out_of_step(st, tag);
            (false, frame)
        }
    };
    (!injected).then_some(out)
}

/// A RowDescription answering a Describe: records which columns are
/// encrypted and rewrites their types. Returns the frame to forward.
fn describe_rows(
    veil: &Veil,
    st: &State,
    frame: BytesMut,
    catalog: Option<Arc<Catalog>>,
    hints: &[Option<Encrypted>],
    slot: &OnceLock<Vec<Option<Encrypted>>>,
) -> BytesMut {
    let Ok(mut fields) = row_description::decode(&frame) else {
        let _ = slot.set(Vec::new());
        return frame;
    };
    let catalog = catalog.or_else(|| veil.cached_catalog_locked(st));
    let cols = encrypted_columns(catalog.as_deref(), hints, &fields);
    let any = cols.iter().any(Option::is_some);
    if any {
        present_columns(&mut fields, &cols);
    }
    let _ = slot.set(cols);
    if any {
        row_description::encode(&fields)
    } else {
        frame
    }
}

/// Which result columns hold ciphertext: by origin (table OID and column
/// number), else by the analyzer's positional hints.
fn encrypted_columns(
    catalog: Option<&Catalog>,
    hints: &[Option<Encrypted>],
    fields: &[row_description::Field],
) -> Vec<Option<Encrypted>> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            catalog
                .and_then(|c| c.origin(f.table_oid, f.column).cloned())
                .or_else(|| hints.get(i).cloned().flatten())
        })
        .collect()
}

/// Reports encrypted columns with the type the application sees.
fn present_columns(fields: &mut [row_description::Field], cols: &[Option<Encrypted>]) {
    for (f, c) in fields.iter_mut().zip(cols) {
        if let Some(e) = c {
            let (oid, size) = types::pg_type(e.value_type);
            f.type_oid = oid;
            f.type_size = size;
            f.type_modifier = -1;
        }
    }
}
