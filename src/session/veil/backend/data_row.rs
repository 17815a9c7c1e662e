//! DataRow: cells of encrypted columns decrypted in the field's format, by
//! the decoder of the current simple-Query result or of the Execute's
//! portal. A value that cannot be decrypted replaces the row with an
//! error, and the rest of the response is dropped.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tracing::warn;

use crate::catalog::Encrypted;
use crate::crypto::{Format, SessionSettings};
use crate::protocol::messages::extended::format_of;
use crate::protocol::messages::{ErrorResponse, data_row};
use crate::session::veil::extended::{Portal, Step};
use crate::session::veil::state::{Decoder, Pending, State, Veil};

/// A DataRow of a simple Query's result.
pub(super) fn on_query_row(veil: &Veil, st: &mut State, frame: BytesMut) -> BytesMut {
    let Some(decoder) = &st.decoder else {
        return frame;
    };
    let t0 = Instant::now();
    let result = decrypt_row(veil, decoder, &st.settings, &frame);
    if let Some(Pending::Query(q)) = st.pending.front_mut() {
        q.overhead += t0.elapsed();
    }
    match result {
        Ok(row) => row,
        Err(msg) => {
            st.decoder = None;
            st.discard_until_ready = true;
            msg.to_bytes()
        }
    }
}

/// A DataRow answering an Execute.
pub(super) fn on_execute_row(veil: &Veil, st: &mut State, frame: BytesMut) -> BytesMut {
    let decoder = match st.pending.front() {
        Some(Pending::Step(Step::Execute {
            decoder: Some(Some(d)),
            ..
        })) => d.clone(),
        _ => return frame,
    };
    match decrypt_row(veil, &decoder, &st.settings, &frame) {
        Ok(row) => row,
        Err(msg) => {
            // The rest of this response is dropped; the client
            // sees the error where the row was.
            st.discard_until_ready = true;
            msg.to_bytes()
        }
    }
}

/// Whether the rows about to arrive answer an Execute whose portal has
/// encrypted columns (resolved once per Execute).
pub(super) fn execute_rows(veil: &Veil, st: &mut State) -> bool {
    let Some(Pending::Step(Step::Execute { portal, decoder })) = st.pending.front_mut() else {
        return false;
    };
    decoder
        .get_or_insert_with(|| portal.as_deref().and_then(|p| portal_decoder(veil, p)))
        .is_some()
}

/// How a portal's rows decrypt: its own described columns, else its
/// statement's, with the result formats of the Bind.
fn portal_decoder(veil: &Veil, portal: &Portal) -> Option<Arc<Decoder>> {
    if let Some(cols) = portal.columns.get() {
        return build_decoder(veil, cols, &portal.result_formats);
    }
    let statement = portal.statement.as_ref()?;
    let cols = statement.columns.get()?;
    let mut cache = statement.decoder.lock().unwrap_or_else(|p| p.into_inner());
    let keyring = veil.shared.encryption().keyring.clone();
    if let Some((formats, decoder)) = cache.as_ref()
        && *formats == portal.result_formats
        && decoder
            .as_ref()
            .is_none_or(|d| match (&d.keyring, &keyring) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (a, b) => a.is_none() && b.is_none(),
            })
    {
        // Same formats and the same keys as when it was built.
        return decoder.clone();
    }
    let decoder = build_decoder(veil, cols, &portal.result_formats);
    *cache = Some((portal.result_formats.clone(), decoder.clone()));
    decoder
}

/// A decoder for result columns in the given formats; `None` when no
/// column is encrypted.
fn build_decoder(veil: &Veil, cols: &[Option<Encrypted>], formats: &[i16]) -> Option<Arc<Decoder>> {
    if cols.iter().all(Option::is_none) {
        return None;
    }
    let columns = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            c.clone().map(|e| {
                let format = if format_of(formats, i) == 1 {
                    Format::Binary
                } else {
                    Format::Text
                };
                (e, format)
            })
        })
        .collect();
    Some(Arc::new(Decoder::new(
        veil,
        columns,
        veil.shared.encryption().keyring.clone(),
    )))
}

/// Decrypts the encrypted cells of one DataRow into a new row; the error
/// that replaces it names the column, never the value.
fn decrypt_row(
    veil: &Veil,
    decoder: &Decoder,
    settings: &SessionSettings,
    frame: &[u8],
) -> Result<BytesMut, ErrorResponse> {
    let corrupt = |col: &str| {
        veil.shared
            .metrics
            .decrypt_errors_total
            .with_label_values(&[col])
            .inc();
        warn!(target: "audit", client = %veil.peer, database = %veil.database,
              user = %veil.user, column = %col, "decrypt failed: stored value is not a valid envelope");
        ErrorResponse::error(
            "XX001",
            format!("pgveil: a stored value in encrypted column {col} could not be decrypted"),
        )
    };
    let cells = data_row::decode(frame).map_err(|_| corrupt("?"))?;
    // Built in place: plaintext is about half the size of ciphertext.
    let mut out = BytesMut::with_capacity(frame.len());
    out.extend_from_slice(&frame[..7]);
    let put = |out: &mut BytesMut, cell: Option<&[u8]>| match cell {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(v) => {
            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
            out.extend_from_slice(v);
        }
    };
    for (i, cell) in cells.iter().enumerate() {
        let spec = decoder.columns.get(i).and_then(|c| c.as_ref());
        match (cell, spec) {
            (Some(v), Some((enc, format))) => {
                let name = || enc.id.to_string();
                let cipher = decoder
                    .keyring
                    .as_deref()
                    .and_then(|k| k.column_by_id(&enc.id))
                    .ok_or_else(|| corrupt(&name()))?;
                let storage = enc.storage.storage().ok_or_else(|| corrupt(&name()))?;
                let hex;
                let stored: &[u8] = match (storage, format) {
                    (crate::config::Storage::Bytea, Format::Text) => {
                        hex = crate::crypto::envelope::bytea_from_hex(v)
                            .map_err(|_| corrupt(&name()))?;
                        &hex
                    }
                    _ => v,
                };
                match cipher.decrypt_or_plain(storage, stored, *format, settings) {
                    Ok((plain, false)) => {
                        if let Some(Some(c)) = decoder.counters.get(i) {
                            c.inc();
                        }
                        put(&mut out, Some(&plain));
                    }
                    Ok((plain, true)) => {
                        // A row `pgveil migrate encrypt` has not reached yet.
                        if let Some(Some(c)) = decoder.plain_counters.get(i) {
                            c.inc();
                        }
                        put(&mut out, Some(&plain));
                    }
                    Err(e) => {
                        let name = name();
                        veil.shared
                            .metrics
                            .decrypt_errors_total
                            .with_label_values(&[&name])
                            .inc();
                        warn!(target: "audit", client = %veil.peer, database = %veil.database,
                              user = %veil.user, column = %name, error = %e, "decrypt failed");
                        return Err(ErrorResponse::error(e.sqlstate(), format!("pgveil: {e}")));
                    }
                }
            }
            (c, _) => put(&mut out, *c),
        }
    }
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}
