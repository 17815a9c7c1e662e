//! `numeric`: canonical plaintext is PostgreSQL's binary `numeric` of
//! `trim_scale(value)`.
//!
//! PostgreSQL considers `1.50` and `1.5` equal, so pgveil encrypts them to
//! the same bytes: the display scale is normalised away (trailing fractional
//! zeros removed, `-0` is `0`). Equality, `IN`, `GROUP BY` and unique indexes
//! behave as on a plaintext `numeric` column; reading back prints
//! `trim_scale(value)` (`1.5`, not `1.50`). See `docs/FORMAT.md`.
//!
//! Layout: `ndigits` u16, `weight` i16, `sign` u16 (0x0000 positive, 0x4000
//! negative, 0xC000 NaN, 0xD000 +Infinity, 0xF000 -Infinity), `dscale` u16,
//! then `ndigits` base-10000 digits as i16, all big-endian.

use super::super::error::{ValueError, sqlstate};
use super::Format;

const SIGN_POS: u16 = 0x0000;
const SIGN_NEG: u16 = 0x4000;
const SIGN_NAN: u16 = 0xC000;
const SIGN_PINF: u16 = 0xD000;
const SIGN_NINF: u16 = 0xF000;
const DSCALE_MAX: i64 = 0x3FFF;

/// A finite value as decimal digits: `digits[0]` has power `p0` (value =
/// Σ digits\[i\] × 10^(p0 − i)).
struct Decimal {
    neg: bool,
    digits: Vec<u8>,
    p0: i64,
}

enum Value {
    Finite(Decimal),
    Special(u16),
}

fn overflow() -> ValueError {
    ValueError::new(
        sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
        "value overflows numeric format",
    )
}

/// Encodes a value canonically: strips zeros, computes weight and dscale.
fn encode(v: Value) -> Result<Vec<u8>, ValueError> {
    let mut d = match v {
        Value::Special(sign) => return Ok(header(0, 0, sign, 0)),
        Value::Finite(d) => d,
    };
    let lead = d.digits.iter().take_while(|&&x| x == 0).count();
    d.digits.drain(..lead);
    d.p0 -= i64::try_from(lead).map_err(|_| overflow())?;
    while d.digits.last() == Some(&0) {
        d.digits.pop();
    }
    if d.digits.is_empty() {
        return Ok(header(0, 0, SIGN_POS, 0));
    }
    let n = i64::try_from(d.digits.len()).map_err(|_| overflow())?;
    let p_last = d.p0 - (n - 1);
    let dscale = (-p_last).max(0);
    let weight = d.p0.div_euclid(4);
    let last_group = p_last.div_euclid(4);
    let ndigits = weight - last_group + 1;
    let (Ok(weight16), Ok(nd16)) = (i16::try_from(weight), u16::try_from(ndigits)) else {
        return Err(overflow());
    };
    if dscale > DSCALE_MAX {
        return Err(overflow());
    }
    let mut groups = vec![0u16; usize::from(nd16)];
    for (i, digit) in d.digits.iter().enumerate() {
        let p = d.p0 - i64::try_from(i).map_err(|_| overflow())?;
        let idx = usize::try_from(weight - p.div_euclid(4)).map_err(|_| overflow())?;
        let pos = u32::try_from(p.rem_euclid(4)).map_err(|_| overflow())?;
        if let Some(g) = groups.get_mut(idx) {
            *g += u16::from(*digit) * 10u16.pow(pos);
        }
    }
    let sign = if d.neg { SIGN_NEG } else { SIGN_POS };
    // dscale <= 0x3FFF, so it fits.
    let mut out = header(
        nd16,
        weight16,
        sign,
        u16::try_from(dscale).map_err(|_| overflow())?,
    );
    out.reserve(groups.len() * 2);
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Ok(out)
}

fn header(ndigits: u16, weight: i16, sign: u16, dscale: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(8);
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    out
}

pub(super) fn from_text(input: &[u8]) -> Result<Vec<u8>, ValueError> {
    let s = super::trim_pg_space(input);
    let lower = s.to_ascii_lowercase();
    let special = match lower.as_slice() {
        b"nan" => Some(SIGN_NAN),
        b"infinity" | b"+infinity" | b"inf" | b"+inf" => Some(SIGN_PINF),
        b"-infinity" | b"-inf" => Some(SIGN_NINF),
        _ => None,
    };
    if let Some(sign) = special {
        return encode(Value::Special(sign));
    }
    let syntax = || ValueError::syntax("numeric");
    let (neg, body) = match s.first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, exponent) = match body.iter().position(|&c| c == b'e' || c == b'E') {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    };
    let (int_part, frac_part) = match mantissa.iter().position(|&c| c == b'.') {
        Some(i) => (&mantissa[..i], &mantissa[i + 1..]),
        None => (mantissa, &[][..]),
    };
    let all_digits = |p: &[u8]| p.iter().all(u8::is_ascii_digit);
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
    {
        return Err(syntax());
    }
    let exp = match exponent {
        None => 0i64,
        Some(e) => {
            let (eneg, edigits) = match e.first() {
                Some(b'-') => (true, &e[1..]),
                Some(b'+') => (false, &e[1..]),
                _ => (false, e),
            };
            if edigits.is_empty() || !all_digits(edigits) {
                return Err(syntax());
            }
            let mut v: i64 = 0;
            for c in edigits {
                v = v.saturating_mul(10).saturating_add(i64::from(c - b'0'));
            }
            if v >= i64::from(i32::MAX / 2) {
                return Err(overflow());
            }
            if eneg { -v } else { v }
        }
    };
    let mut digits = Vec::with_capacity(int_part.len() + frac_part.len());
    digits.extend(int_part.iter().chain(frac_part).map(|c| c - b'0'));
    let int_len = i64::try_from(int_part.len()).map_err(|_| overflow())?;
    encode(Value::Finite(Decimal {
        neg,
        digits,
        p0: int_len - 1 + exp,
    }))
}

/// Reads PostgreSQL's binary format without normalising.
fn read_binary(input: &[u8]) -> Result<(u16, i16, u16, u16, Vec<u16>), ValueError> {
    let bad = |what: &str| ValueError::binary("numeric", what);
    let field = |i: usize| -> Result<[u8; 2], ValueError> {
        match input.get(i..i + 2) {
            Some([a, b]) => Ok([*a, *b]),
            _ => Err(bad("insufficient data left in message")),
        }
    };
    let ndigits = u16::from_be_bytes(field(0)?);
    let weight = i16::from_be_bytes(field(2)?);
    let sign = u16::from_be_bytes(field(4)?);
    let dscale = u16::from_be_bytes(field(6)?);
    if input.len() != 8 + 2 * usize::from(ndigits) {
        return Err(bad("incorrect binary data format"));
    }
    if !matches!(sign, SIGN_POS | SIGN_NEG | SIGN_NAN | SIGN_PINF | SIGN_NINF) {
        return Err(bad("invalid sign in external \"numeric\" value"));
    }
    if i64::from(dscale) > DSCALE_MAX {
        return Err(bad("invalid scale in external \"numeric\" value"));
    }
    let mut groups = Vec::with_capacity(usize::from(ndigits));
    for i in 0..usize::from(ndigits) {
        let g = i16::from_be_bytes(field(8 + 2 * i)?);
        let g = u16::try_from(g)
            .ok()
            .filter(|g| *g < 10000)
            .ok_or_else(|| bad("invalid digit in external \"numeric\" value"))?;
        groups.push(g);
    }
    Ok((ndigits, weight, sign, dscale, groups))
}

/// Base-10000 groups to decimal digits; the first digit has power p0.
fn to_decimal(weight: i16, groups: &[u16]) -> (Vec<u8>, i64) {
    let mut digits = Vec::with_capacity(groups.len() * 4);
    for g in groups {
        digits.extend_from_slice(&[
            (g / 1000) as u8,
            ((g / 100) % 10) as u8,
            ((g / 10) % 10) as u8,
            (g % 10) as u8,
        ]);
    }
    (digits, i64::from(weight) * 4 + 3)
}

pub(super) fn from_binary(input: &[u8]) -> Result<Vec<u8>, ValueError> {
    let (_, weight, sign, dscale, groups) = read_binary(input)?;
    if !matches!(sign, SIGN_POS | SIGN_NEG) {
        return encode(Value::Special(sign));
    }
    let (mut digits, p0) = to_decimal(weight, &groups);
    // numeric_recv truncates digits hidden by dscale (trunc_var).
    let keep = p0 + 1 + i64::from(dscale);
    if keep <= 0 {
        digits.clear();
    } else if let Ok(k) = usize::try_from(keep) {
        digits.truncate(k);
    }
    encode(Value::Finite(Decimal {
        neg: sign == SIGN_NEG,
        digits,
        p0,
    }))
}

pub(super) fn output(format: Format, canonical: &[u8]) -> Result<Vec<u8>, ValueError> {
    let bad = || super::bad_canonical("numeric");
    let (_, weight, sign, dscale, groups) = read_binary(canonical).map_err(|_| bad())?;
    // Only the canonical form decrypts: re-encoding must reproduce it.
    if from_binary(canonical).map_err(|_| bad())? != canonical {
        return Err(bad());
    }
    if format == Format::Binary {
        // PostgreSQL's numeric_send reads dscale out of the on-disk header of
        // the infinities (0xD000/0xF000 & 0x1F80) >> 7 = 32: mirror it so the
        // bytes are exactly the server's. The canonical form keeps 0.
        if matches!(sign, SIGN_PINF | SIGN_NINF) {
            return Ok(header(0, 0, sign, 32));
        }
        return Ok(canonical.to_vec());
    }
    let text = match sign {
        SIGN_NAN => "NaN".to_string(),
        SIGN_PINF => "Infinity".to_string(),
        SIGN_NINF => "-Infinity".to_string(),
        _ => {
            let (digits, p0) = to_decimal(weight, &groups);
            let lead = digits.iter().take_while(|&&d| d == 0).count();
            let digits = digits.get(lead..).unwrap_or(&[]);
            let trail = digits.iter().rev().take_while(|&&d| d == 0).count();
            let digits = digits.get(..digits.len() - trail).unwrap_or(&[]);
            let p0 = p0 - lead as i64;
            let mut s = String::new();
            if sign == SIGN_NEG {
                s.push('-');
            }
            if digits.is_empty() {
                s.push('0');
            } else if p0 < 0 {
                s.push_str("0.");
                for _ in 0..(-p0 - 1) {
                    s.push('0');
                }
                digits.iter().for_each(|d| s.push(char::from(b'0' + d)));
            } else {
                for i in 0..=p0 {
                    let d = usize::try_from(i)
                        .ok()
                        .and_then(|i| digits.get(i))
                        .unwrap_or(&0);
                    s.push(char::from(b'0' + d));
                }
                let int_len = usize::try_from(p0 + 1).unwrap_or(usize::MAX);
                if let Some(frac) = digits.get(int_len..).filter(|f| !f.is_empty()) {
                    s.push('.');
                    frac.iter().for_each(|d| s.push(char::from(b'0' + d)));
                }
            }
            debug_assert_eq!(s.split('.').nth(1).map_or(0, str::len), usize::from(dscale));
            s
        }
    };
    Ok(text.into_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn round(s: &str) -> String {
        let c = from_text(s.as_bytes()).unwrap();
        String::from_utf8(output(Format::Text, &c).unwrap()).unwrap()
    }

    #[test]
    fn normalises_scale() {
        assert_eq!(round("1.50"), "1.5");
        assert_eq!(from_text(b"1.50").unwrap(), from_text(b"1.5").unwrap());
        assert_eq!(from_text(b"15e-1").unwrap(), from_text(b"1.5").unwrap());
        assert_eq!(round("-0.000"), "0");
        assert_eq!(round("  +0012.3400e2 "), "1234");
        assert_eq!(round(".5"), "0.5");
        assert_eq!(round("5."), "5");
        assert_eq!(round("-0.00012"), "-0.00012");
        assert_eq!(round("123456789.987654321"), "123456789.987654321");
        assert_eq!(round("1e20"), "100000000000000000000");
        assert_eq!(round("nan"), "NaN");
        assert_eq!(round("-inf"), "-Infinity");
    }

    #[test]
    fn binary_matches_postgres_layout() {
        // 1.5: ndigits 2, weight 0, sign +, dscale 1, digits 1, 5000.
        assert_eq!(
            from_text(b"1.5").unwrap(),
            vec![0, 2, 0, 0, 0, 0, 0, 1, 0, 1, 0x13, 0x88]
        );
        // PostgreSQL's send of 1.50 (dscale 2) canonicalises to the same.
        assert_eq!(
            from_binary(&[0, 2, 0, 0, 0, 0, 0, 2, 0, 1, 0x13, 0x88]).unwrap(),
            from_text(b"1.5").unwrap()
        );
        // dscale 0 hides the fraction: truncated as numeric_recv does.
        assert_eq!(
            from_binary(&[0, 2, 0, 0, 0x40, 0, 0, 0, 0, 1, 0x13, 0x88]).unwrap(),
            from_text(b"-1").unwrap()
        );
    }

    #[test]
    fn rejects_bad_input() {
        for bad in ["", "1.2.3", "e5", "1e", "abc", "1 2", "--1", "0x10"] {
            assert_eq!(
                from_text(bad.as_bytes()).unwrap_err().sqlstate,
                "22P02",
                "{bad}"
            );
        }
        assert_eq!(from_text(b"1e-20000").unwrap_err().sqlstate, "22003");
        assert_eq!(from_text(b"1e200000").unwrap_err().sqlstate, "22003");
        assert!(from_binary(&[0, 1, 0, 0, 0, 0, 0, 0, 0x27, 0x10]).is_err());
        assert!(from_binary(&[0, 0, 0, 0, 0x12, 0, 0, 0]).is_err());
        assert!(from_binary(&[0, 1, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
