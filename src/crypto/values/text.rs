//! `text` and `varchar`: the canonical plaintext is the UTF-8 string.
//!
//! Text and binary formats are identical for these types. Input must be
//! valid UTF-8 without NUL bytes, as PostgreSQL requires in a UTF-8 database;
//! the proxy is responsible for a client_encoding of UTF8.

use super::super::error::{ValueError, sqlstate};

pub(super) fn canonical(input: &[u8]) -> Result<Vec<u8>, ValueError> {
    check(input)?;
    Ok(input.to_vec())
}

pub(super) fn output(canonical: &[u8]) -> Result<Vec<u8>, ValueError> {
    check(canonical).map_err(|_| super::bad_canonical("text"))?;
    Ok(canonical.to_vec())
}

fn check(input: &[u8]) -> Result<(), ValueError> {
    if input.contains(&0) {
        return Err(ValueError::new(
            sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
            "invalid byte sequence for encoding \"UTF8\": 0x00",
        ));
    }
    if std::str::from_utf8(input).is_err() {
        return Err(ValueError::new(
            sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
            "invalid byte sequence for encoding \"UTF8\"",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn rejects_nul_and_bad_utf8() {
        assert!(canonical(b"a\0b").is_err());
        assert!(canonical(&[0xff]).is_err());
        assert_eq!(canonical("Zoë".as_bytes()).unwrap(), "Zoë".as_bytes());
    }
}
