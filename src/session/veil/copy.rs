//! COPY through an encrypting session: rows from the client
//! (`COPY ... FROM STDIN`) have their encrypted columns sealed as they
//! stream through; rows from the database (`COPY ... TO STDOUT`) have them
//! opened. The row format and everything else in the row stay as they were.
//!
//! This module holds the stream and the client's side (CopyData, CopyDone,
//! CopyFail); the server's CopyInResponse, CopyOutResponse and CopyData are
//! handled in `backend/copy.rs`.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use super::query::refusal_token;
use super::state::{Pending, Veil};
use crate::catalog::StorageState;
use crate::config::Storage;
use crate::copy::{CopyError, CopyFormat, Transformer};
use crate::crypto::{Format, Keyring, SessionSettings, envelope};
use crate::sql::Refusal;
use crate::sql::analyze::CopyPlan;

/// One COPY data stream in progress.
pub(super) struct CopyStream {
    pub plan: Arc<CopyPlan>,
    transformer: Transformer,
    /// Keys as of the COPY's start: a reload mid-stream changes nothing.
    keyring: Option<Arc<Keyring>>,
    /// pgveil failed the COPY: the rest of the client's data is dropped.
    pub failed: bool,
    /// The server answered with CopyInResponse: it now ignores Sync.
    pub started: bool,
}

impl CopyStream {
    pub fn new(plan: Arc<CopyPlan>, keyring: Option<Arc<Keyring>>, max_row: usize) -> CopyStream {
        let names = plan.columns.iter().map(|(n, _)| n.clone()).collect();
        let mapped = plan.columns.iter().map(|(_, e)| e.is_some()).collect();
        let transformer = Transformer::new(plan.options.clone(), names, mapped, !plan.to, max_row);
        CopyStream {
            plan,
            transformer,
            keyring,
            failed: false,
            started: false,
        }
    }

    /// One CopyData payload in; the rewritten complete rows out.
    pub fn feed(
        &mut self,
        payload: &[u8],
        settings: &SessionSettings,
    ) -> Result<Vec<u8>, CopyError> {
        let mut out = Vec::with_capacity(payload.len() * 2);
        let (plan, keyring) = (&self.plan, self.keyring.as_deref());
        let mut map = |i: usize, v: &[u8]| map_field(plan, keyring, settings, i, v);
        self.transformer.feed(payload, &mut out, &mut map)?;
        Ok(out)
    }

    /// At the end of the data: a last row without its line end.
    pub fn finish(&mut self, settings: &SessionSettings) -> Result<Vec<u8>, CopyError> {
        let mut out = Vec::new();
        let (plan, keyring) = (&self.plan, self.keyring.as_deref());
        let mut map = |i: usize, v: &[u8]| map_field(plan, keyring, settings, i, v);
        self.transformer.finish(&mut out, &mut map)?;
        Ok(out)
    }
}

/// Encrypts (FROM) or decrypts (TO) one field, in the COPY's own value
/// representation: text and CSV carry a `bytea` as `\x` hex, binary as raw
/// bytes; a text-stored column carries its prefixed text either way.
fn map_field(
    plan: &CopyPlan,
    keyring: Option<&Keyring>,
    settings: &SessionSettings,
    i: usize,
    value: &[u8],
) -> Result<Vec<u8>, CopyError> {
    let Some((name, Some(col))) = plan.columns.get(i) else {
        return Ok(value.to_vec());
    };
    let id = || col.id.to_string();
    let internal = || CopyError {
        sqlstate: "XX000",
        message: format!("no key for encrypted column {}", id()),
    };
    let cipher = keyring
        .and_then(|k| k.column_by_id(&col.id))
        .ok_or_else(internal)?;
    let storage = match col.storage {
        StorageState::Bytea => Storage::Bytea,
        StorageState::Text => Storage::Text,
        StorageState::Unsupported(_) => return Err(internal()),
    };
    let binary = plan.options.format == CopyFormat::Binary;
    let format = if binary { Format::Binary } else { Format::Text };
    if plan.to {
        let stored = if storage == Storage::Bytea && !binary {
            envelope::bytea_from_hex(value).map_err(|_| corrupt(&id()))?
        } else {
            value.to_vec()
        };
        return cipher
            .decrypt_or_plain(storage, &stored, format, settings)
            .map(|(plain, _)| plain)
            .map_err(|_| corrupt(&id()));
    }
    let stored = cipher
        .encrypt(format, value, storage, settings)
        .map_err(|e| CopyError {
            sqlstate: e.sqlstate(),
            message: format!(
                "invalid input for type {} in encrypted column {} (field {name})",
                col.value_type.name(),
                id()
            ),
        })?;
    if storage == Storage::Bytea && !binary {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = Vec::with_capacity(2 + stored.len() * 2);
        hex.extend_from_slice(b"\\x");
        for b in &stored {
            hex.push(DIGITS[usize::from(b >> 4)]);
            hex.push(DIGITS[usize::from(b & 15)]);
        }
        return Ok(hex);
    }
    Ok(stored)
}

fn corrupt(id: &str) -> CopyError {
    CopyError {
        sqlstate: "XX001",
        message: format!("a stored value in encrypted column {id} could not be decrypted"),
    }
}

/// A CopyData message.
pub(super) fn copy_data(payload: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(payload.len() + 5);
    b.put_u8(b'd');
    b.put_i32(payload.len() as i32 + 4);
    b.put_slice(payload);
    b
}

/// A CopyFail message.
pub(super) fn copy_fail(message: &str) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(b'f');
    b.put_i32(message.len() as i32 + 5);
    b.put_slice(message.as_bytes());
    b.put_u8(0);
    b
}

/// A Query with COPY statements over encrypted columns: their plans go
/// with the Query's response; COPY FROM STDIN starts encrypting the
/// client's data.
pub(super) fn start_copies(veil: &Veil, plans: &[crate::sql::StatementPlan]) {
    let enc = veil.shared.encryption();
    let max_row = veil.shared.config.limits.max_inspected_frame_bytes as usize;
    let mut st = veil.state();
    let copies: Vec<_> = plans.iter().map(|p| p.copy.clone()).collect();
    if let Some(plan) = copies.iter().flatten().find(|p| !p.to) {
        st.copy_in = Some(CopyStream::new(plan.clone(), enc.keyring.clone(), max_row));
    }
    if let Some(Pending::Query(q)) = st.pending.back_mut() {
        q.copies = copies;
    }
}

/// CopyData, CopyDone or CopyFail from the client during an encrypting
/// COPY FROM STDIN. Returns what to send upstream.
pub(super) fn on_copy_in(veil: &Veil, frame: &[u8]) -> BytesMut {
    let mut guard = veil.state();
    let st = &mut *guard;
    let settings = &st.settings;
    let Some(stream) = st.copy_in.as_mut() else {
        return BytesMut::from(frame);
    };
    let tag = frame[0];
    if stream.failed {
        // pgveil already failed this COPY: the rest of the data (which may
        // hold plaintext) goes nowhere.
        if tag != b'd' {
            st.copy_in = None;
        }
        return BytesMut::new();
    }
    let result = match tag {
        b'd' => stream.feed(&frame[5..], settings),
        b'c' => stream.finish(settings),
        _ => {
            st.copy_in = None;
            return BytesMut::from(frame);
        }
    };
    match result {
        Ok(rows) => {
            let mut out = if rows.is_empty() {
                BytesMut::new()
            } else {
                copy_data(&rows)
            };
            if tag == b'c' {
                st.copy_in = None;
                out.extend_from_slice(frame);
            }
            out
        }
        Err(e) => {
            stream.failed = true;
            if tag == b'c' {
                st.copy_in = None;
            }
            drop(guard);
            let refusal = Refusal {
                column: None,
                operation: e.message,
                hint: "Nothing of this COPY was stored. Fix the data and run it again.".into(),
                reason: "copy",
                sqlstate: e.sqlstate,
            };
            let relation = refusal_token(veil, "COPY", refusal, "simple");
            copy_fail(&format!("pgveil: {relation}"))
        }
    }
}
