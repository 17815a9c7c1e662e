//! `int2`, `int4`, `int8`: canonical plaintext is 8 bytes big-endian, so a
//! column can widen from `int4` to `int8` without re-encryption, and the
//! ciphertext length reveals nothing about the magnitude.
//!
//! Text input: optional surrounding whitespace, optional sign, decimal
//! digits (PostgreSQL 16's `0x`, `0o`, `0b` and `_` forms are refused).

use super::super::error::{ValueError, sqlstate};
use super::Format;
use crate::config::ValueType;

fn range(ty: ValueType) -> (i64, i64, usize) {
    match ty {
        ValueType::Int2 => (i64::from(i16::MIN), i64::from(i16::MAX), 2),
        ValueType::Int4 => (i64::from(i32::MIN), i64::from(i32::MAX), 4),
        _ => (i64::MIN, i64::MAX, 8),
    }
}

fn out_of_range(ty: ValueType) -> ValueError {
    let name = match ty {
        ValueType::Int2 => "smallint",
        ValueType::Int4 => "integer",
        _ => "bigint",
    };
    ValueError::new(
        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
        format!("value is out of range for type {name}"),
    )
}

pub(super) fn from_text(ty: ValueType, input: &[u8]) -> Result<Vec<u8>, ValueError> {
    let s = super::trim_pg_space(input);
    let (neg, digits) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ValueError::syntax(ty.name()));
    }
    // Accumulate negatively so i64::MIN parses.
    let mut v: i64 = 0;
    for d in digits {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_sub(i64::from(d - b'0')))
            .ok_or_else(|| out_of_range(ty))?;
    }
    let v = if neg {
        v
    } else {
        v.checked_neg().ok_or_else(|| out_of_range(ty))?
    };
    check(ty, v)
}

pub(super) fn from_binary(ty: ValueType, input: &[u8]) -> Result<Vec<u8>, ValueError> {
    let v = match (ty, input.len()) {
        (ValueType::Int2, 2) => i64::from(i16::from_be_bytes([input[0], input[1]])),
        (ValueType::Int4, 4) => {
            i64::from(i32::from_be_bytes([input[0], input[1], input[2], input[3]]))
        }
        (ValueType::Int8, 8) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(input);
            i64::from_be_bytes(b)
        }
        _ => {
            return Err(ValueError::binary(
                ty.name(),
                "insufficient data left in message",
            ));
        }
    };
    check(ty, v)
}

fn check(ty: ValueType, v: i64) -> Result<Vec<u8>, ValueError> {
    let (min, max, _) = range(ty);
    if v < min || v > max {
        return Err(out_of_range(ty));
    }
    Ok(v.to_be_bytes().to_vec())
}

pub(super) fn output(
    ty: ValueType,
    format: Format,
    canonical: &[u8],
) -> Result<Vec<u8>, ValueError> {
    let bytes: [u8; 8] = canonical
        .try_into()
        .map_err(|_| super::bad_canonical(ty.name()))?;
    let v = i64::from_be_bytes(bytes);
    let (min, max, width) = range(ty);
    if v < min || v > max {
        return Err(super::bad_canonical(ty.name()));
    }
    Ok(match format {
        Format::Text => v.to_string().into_bytes(),
        Format::Binary => bytes[8 - width..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_like_postgres() {
        assert_eq!(
            from_text(ValueType::Int4, b" -42 ").unwrap(),
            (-42i64).to_be_bytes()
        );
        assert_eq!(
            from_text(ValueType::Int8, b"-9223372036854775808").unwrap(),
            i64::MIN.to_be_bytes()
        );
        assert_eq!(
            from_text(ValueType::Int2, b"32768").unwrap_err().sqlstate,
            "22003"
        );
        assert_eq!(
            from_text(ValueType::Int2, b"1.0").unwrap_err().sqlstate,
            "22P02"
        );
        assert_eq!(
            from_text(ValueType::Int2, b"").unwrap_err().sqlstate,
            "22P02"
        );
        assert_eq!(
            from_text(ValueType::Int2, b"-").unwrap_err().sqlstate,
            "22P02"
        );
        assert_eq!(
            from_text(ValueType::Int8, b"99999999999999999999")
                .unwrap_err()
                .sqlstate,
            "22003"
        );
    }

    #[test]
    fn binary_is_exact_width() {
        assert!(from_binary(ValueType::Int4, &[0, 0, 1]).is_err());
        let c = from_binary(ValueType::Int2, &[0xff, 0xfe]).unwrap();
        assert_eq!(
            output(ValueType::Int2, Format::Binary, &c).unwrap(),
            vec![0xff, 0xfe]
        );
        assert_eq!(output(ValueType::Int2, Format::Text, &c).unwrap(), b"-2");
    }
}
