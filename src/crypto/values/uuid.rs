//! `uuid`: canonical plaintext is the 16 bytes.
//!
//! Text input is PostgreSQL's `uuid_in`: 32 hex digits in any case, an
//! optional hyphen after any group of four digits, optionally in braces.
//! Output is lowercase `8-4-4-4-12`.

use super::super::error::ValueError;
use super::Format;

pub(super) fn from_text(input: &[u8]) -> Result<Vec<u8>, ValueError> {
    let err = || ValueError::syntax("uuid");
    let mut s = input;
    let braces = s.first() == Some(&b'{');
    if braces {
        s = &s[1..];
    }
    let mut out = Vec::with_capacity(16);
    for i in 0..16 {
        let (hi, lo) = match s {
            [hi, lo, ..] => (hex(*hi).ok_or_else(err)?, hex(*lo).ok_or_else(err)?),
            _ => return Err(err()),
        };
        out.push(hi << 4 | lo);
        s = &s[2..];
        if i % 2 == 1 && i < 15 && s.first() == Some(&b'-') {
            s = &s[1..];
        }
    }
    if braces {
        s = s.strip_prefix(b"}").ok_or_else(err)?;
    }
    if !s.is_empty() {
        return Err(err());
    }
    Ok(out)
}

fn hex(c: u8) -> Option<u8> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

pub(super) fn from_binary(input: &[u8]) -> Result<Vec<u8>, ValueError> {
    if input.len() != 16 {
        return Err(ValueError::binary("uuid", "expected 16 bytes"));
    }
    Ok(input.to_vec())
}

pub(super) fn output(format: Format, canonical: &[u8]) -> Result<Vec<u8>, ValueError> {
    if canonical.len() != 16 {
        return Err(super::bad_canonical("uuid"));
    }
    Ok(match format {
        Format::Binary => canonical.to_vec(),
        Format::Text => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut s = Vec::with_capacity(36);
            for (i, b) in canonical.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    s.push(b'-');
                }
                s.push(HEX[usize::from(b >> 4)]);
                s.push(HEX[usize::from(b & 0xf)]);
            }
            s
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn accepts_uuid_in_forms() {
        let canon = from_text(b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
        for form in [
            "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
            "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11",
            "{a0eebc99-9c0b4ef8-bb6d6bb9-bd380a11}",
        ] {
            assert_eq!(from_text(form.as_bytes()).unwrap(), canon, "{form}");
        }
        for bad in [
            "",
            "a0eebc99",
            "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11 ",
            "a0e-ebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        ] {
            assert_eq!(
                from_text(bad.as_bytes()).unwrap_err().sqlstate,
                "22P02",
                "{bad}"
            );
        }
        assert_eq!(
            output(Format::Text, &canon).unwrap(),
            b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
    }
}
