//! COPY through an encrypting session: rows from the client
//! (`COPY ... FROM STDIN`) have their encrypted columns sealed as they
//! stream through; rows from the database (`COPY ... TO STDOUT`) have them
//! opened. The row format and everything else in the row stay as they were.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};

use crate::catalog::StorageState;
use crate::config::Storage;
use crate::copy::{CopyError, CopyFormat, Transformer};
use crate::crypto::{Format, Keyring, SessionSettings, envelope};
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
