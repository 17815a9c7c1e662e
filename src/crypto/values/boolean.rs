//! `bool`: canonical plaintext is one byte, 0 or 1.
//!
//! Text input is PostgreSQL's `boolin`: `t`, `true`, `y`, `yes`, `on`, `1`,
//! `f`, `false`, `n`, `no`, `off`, `0`, any case, unambiguous prefixes of
//! the words, surrounding whitespace ignored.

use super::super::error::ValueError;
use super::Format;

pub(super) fn from_text(input: &[u8]) -> Result<Vec<u8>, ValueError> {
    let s = super::trim_pg_space(input).to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| s.len() >= min && word.as_bytes().starts_with(&s);
    let v = match s.first() {
        Some(b't') if prefix_of("true", 1) => true,
        Some(b'f') if prefix_of("false", 1) => false,
        Some(b'y') if prefix_of("yes", 1) => true,
        Some(b'n') if prefix_of("no", 1) => false,
        Some(b'o') if prefix_of("on", 2) => true,
        Some(b'o') if prefix_of("off", 2) => false,
        Some(b'1') if s.len() == 1 => true,
        Some(b'0') if s.len() == 1 => false,
        _ => return Err(ValueError::syntax("boolean")),
    };
    Ok(vec![u8::from(v)])
}

pub(super) fn from_binary(input: &[u8]) -> Result<Vec<u8>, ValueError> {
    match input {
        // boolrecv: any non-zero byte is true.
        [b] => Ok(vec![u8::from(*b != 0)]),
        _ => Err(ValueError::binary("boolean", "expected 1 byte")),
    }
}

pub(super) fn output(format: Format, canonical: &[u8]) -> Result<Vec<u8>, ValueError> {
    let v = match canonical {
        [0] => false,
        [1] => true,
        _ => return Err(super::bad_canonical("bool")),
    };
    Ok(match format {
        Format::Text => vec![if v { b't' } else { b'f' }],
        Format::Binary => vec![u8::from(v)],
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn accepts_boolin_forms() {
        for t in ["t", "TRUE", " tr ", "y", "yes", "on", "1"] {
            assert_eq!(from_text(t.as_bytes()).unwrap(), vec![1], "{t}");
        }
        for f in ["f", "False", "n", "no", "off", "of", "0"] {
            assert_eq!(from_text(f.as_bytes()).unwrap(), vec![0], "{f}");
        }
        for bad in ["o", "", "2", "truee", "yes please"] {
            assert_eq!(
                from_text(bad.as_bytes()).unwrap_err().sqlstate,
                "22P02",
                "{bad}"
            );
        }
    }
}
