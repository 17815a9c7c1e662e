//! Typed plaintext values: one canonical byte encoding per type, so the same
//! value sent in text or binary format encrypts to the same bytes.
//!
//! | type          | class | canonical plaintext                                   |
//! |---------------|-------|-------------------------------------------------------|
//! | text, varchar | 0x01  | UTF-8 bytes, no NUL                                   |
//! | int2/4/8      | 0x02  | 8-byte big-endian two's complement                    |
//! | bool          | 0x03  | one byte, 0x00 or 0x01                                |
//! | uuid          | 0x04  | 16 bytes                                              |
//! | date          | 0x05  | PostgreSQL binary `date` (i32 days from 2000-01-01)   |
//! | timestamp     | 0x06  | PostgreSQL binary `timestamp` (i64 µs from 2000-01-01)|
//! | timestamptz   | 0x07  | PostgreSQL binary `timestamptz` (i64 µs, UTC)         |
//! | numeric       | 0x08  | PostgreSQL binary `numeric` of `trim_scale(value)`    |
//!
//! Text input is parsed as described in `docs/FORMAT.md`; text output is what
//! PostgreSQL prints under the session's [`SessionSettings`]. Binary input and
//! output are exactly PostgreSQL's `recv`/`send` formats.

mod boolean;
mod datetime;
mod int;
mod numeric;
mod settings;
mod text;
mod uuid;

pub use settings::{DateOrder, DateStyle, SessionSettings, TimeZone};

use super::error::ValueError;
use crate::config::ValueType;

/// Wire format of a value, as in Bind and RowDescription format codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Format code 0.
    Text,
    /// Format code 1.
    Binary,
}

impl Format {
    /// From a protocol format code; `None` for codes other than 0 and 1.
    pub fn from_code(code: i16) -> Option<Format> {
        match code {
            0 => Some(Format::Text),
            1 => Some(Format::Binary),
            _ => None,
        }
    }
}

/// The type class byte bound into the associated data. Types that share a
/// canonical encoding share a class, so a column can move between them
/// (`text` ↔ `varchar`, `int4` → `int8`) without re-encryption.
pub fn type_class(ty: ValueType) -> u8 {
    match ty {
        ValueType::Text | ValueType::Varchar => 0x01,
        ValueType::Int2 | ValueType::Int4 | ValueType::Int8 => 0x02,
        ValueType::Bool => 0x03,
        ValueType::Uuid => 0x04,
        ValueType::Date => 0x05,
        ValueType::Timestamp => 0x06,
        ValueType::Timestamptz => 0x07,
        ValueType::Numeric => 0x08,
    }
}

/// Converts a client value in `format` to the canonical plaintext of `ty`.
/// `settings` matter for `timestamptz` text input without an offset.
pub fn to_canonical(
    ty: ValueType,
    format: Format,
    input: &[u8],
    settings: &SessionSettings,
) -> Result<Vec<u8>, ValueError> {
    match (ty, format) {
        (ValueType::Text | ValueType::Varchar, _) => text::canonical(input),
        (ValueType::Int2 | ValueType::Int4 | ValueType::Int8, Format::Text) => {
            int::from_text(ty, input)
        }
        (ValueType::Int2 | ValueType::Int4 | ValueType::Int8, Format::Binary) => {
            int::from_binary(ty, input)
        }
        (ValueType::Bool, Format::Text) => boolean::from_text(input),
        (ValueType::Bool, Format::Binary) => boolean::from_binary(input),
        (ValueType::Uuid, Format::Text) => uuid::from_text(input),
        (ValueType::Uuid, Format::Binary) => uuid::from_binary(input),
        (ValueType::Date, Format::Text) => datetime::date_from_text(input),
        (ValueType::Date, Format::Binary) => datetime::date_from_binary(input),
        (ValueType::Timestamp, Format::Text) => datetime::timestamp_from_text(input),
        (ValueType::Timestamp | ValueType::Timestamptz, Format::Binary) => {
            datetime::timestamp_from_binary(ty, input)
        }
        (ValueType::Timestamptz, Format::Text) => datetime::timestamptz_from_text(input, settings),
        (ValueType::Numeric, Format::Text) => numeric::from_text(input),
        (ValueType::Numeric, Format::Binary) => numeric::from_binary(input),
    }
}

/// Converts a canonical plaintext of `ty` to what the client expects in
/// `format`. A canonical value that is not valid for `ty` (possible only if
/// the config's type changed) is an error.
pub fn from_canonical(
    ty: ValueType,
    format: Format,
    canonical: &[u8],
    settings: &SessionSettings,
) -> Result<Vec<u8>, ValueError> {
    match (ty, format) {
        (ValueType::Text | ValueType::Varchar, _) => text::output(canonical),
        (ValueType::Int2 | ValueType::Int4 | ValueType::Int8, _) => {
            int::output(ty, format, canonical)
        }
        (ValueType::Bool, _) => boolean::output(format, canonical),
        (ValueType::Uuid, _) => uuid::output(format, canonical),
        (ValueType::Date, _) => datetime::date_output(format, canonical, settings),
        (ValueType::Timestamp | ValueType::Timestamptz, _) => {
            datetime::timestamp_output(ty, format, canonical, settings)
        }
        (ValueType::Numeric, _) => numeric::output(format, canonical),
    }
}

/// Error for a canonical value of the wrong shape.
pub(crate) fn bad_canonical(ty: &str) -> ValueError {
    ValueError::new(
        super::error::sqlstate::DATA_CORRUPTED,
        format!("decrypted value is not a canonical {ty}"),
    )
}

/// Trims PostgreSQL's input whitespace (`isspace`: space, \t, \n, \v, \f, \r).
pub(crate) fn trim_pg_space(s: &[u8]) -> &[u8] {
    let is_space = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = s.iter().position(|c| !is_space(c)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !is_space(c))
        .map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn trims_pg_space() {
        assert_eq!(trim_pg_space(b" \t a b \r\n"), b"a b");
        assert_eq!(trim_pg_space(b"   "), b"");
        assert_eq!(trim_pg_space(b""), b"");
    }
}
