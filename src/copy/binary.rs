//! PostgreSQL's binary COPY format: an 11-byte signature, flags and a
//! header extension, then tuples of length-prefixed fields, then a -1
//! trailer.

use super::{CopyError, FieldMap};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Length of the file header if `buf` holds all of it.
pub fn header_len(buf: &[u8]) -> Result<Option<usize>, CopyError> {
    if buf.len() < SIGNATURE.len() + 8 {
        if !SIGNATURE.starts_with(&buf[..buf.len().min(SIGNATURE.len())]) {
            return Err(CopyError::format("COPY file signature not recognized"));
        }
        return Ok(None);
    }
    if &buf[..SIGNATURE.len()] != SIGNATURE {
        return Err(CopyError::format("COPY file signature not recognized"));
    }
    let at = SIGNATURE.len() + 4;
    let ext = i32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let ext = usize::try_from(ext).map_err(|_| CopyError::format("invalid COPY file header"))?;
    let total = at + 4 + ext;
    Ok((buf.len() >= total).then_some(total))
}

/// Rewrites one tuple if `buf` holds all of it: `(bytes used, trailer)`.
pub fn row(
    buf: &[u8],
    mapped: &[bool],
    check_count: bool,
    out: &mut Vec<u8>,
    map: &mut FieldMap<'_>,
) -> Result<Option<(usize, bool)>, CopyError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let count = i16::from_be_bytes([buf[0], buf[1]]);
    if count == -1 {
        out.extend_from_slice(&buf[..2]);
        return Ok(Some((2, true)));
    }
    let count = usize::try_from(count).map_err(|_| CopyError::format("invalid field count"))?;
    if check_count && count != mapped.len() {
        return Err(CopyError::format(format!(
            "row field count is {count}, expected {}",
            mapped.len()
        )));
    }
    // First make sure the whole tuple is here.
    let mut at = 2;
    let mut spans = Vec::with_capacity(count);
    for _ in 0..count {
        let Some(len) = buf.get(at..at + 4) else {
            return Ok(None);
        };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len == -1 {
            spans.push(None);
            continue;
        }
        let len = usize::try_from(len).map_err(|_| CopyError::format("invalid field length"))?;
        if buf.len() < at + len {
            return Ok(None);
        }
        spans.push(Some(at..at + len));
        at += len;
    }
    out.extend_from_slice(&buf[..2]);
    for (i, span) in spans.into_iter().enumerate() {
        match span {
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(r) if mapped.get(i).copied().unwrap_or(false) => {
                let v = map(i, &buf[r])?;
                let len =
                    i32::try_from(v.len()).map_err(|_| CopyError::format("field too long"))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&v);
            }
            Some(r) => {
                out.extend_from_slice(&buf[r.start - 4..r.end]);
            }
        }
    }
    Ok(Some((at, false)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::{CopyFormat, CopyOptions, Transformer};

    fn tuple(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut b = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v);
                }
            }
        }
        b
    }

    #[test]
    fn binary_stream_split_anywhere() {
        let mut data = SIGNATURE.to_vec();
        data.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        data.extend(tuple(&[Some(b"1"), Some(b"ab"), None]));
        data.extend(tuple(&[Some(b"2"), Some(b"cd"), Some(b"x")]));
        data.extend_from_slice(&(-1i16).to_be_bytes());
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend(tuple(&[Some(b"1"), Some(b"AB"), None]));
        want.extend(tuple(&[Some(b"2"), Some(b"CD"), Some(b"x")]));
        want.extend_from_slice(&(-1i16).to_be_bytes());
        for cut in 0..data.len() {
            let mut t = Transformer::new(
                CopyOptions::defaults(CopyFormat::Binary),
                vec!["a".into(), "b".into(), "c".into()],
                vec![false, true, false],
                true,
                1 << 20,
            );
            let mut out = Vec::new();
            let mut up = |_: usize, v: &[u8]| Ok(v.to_ascii_uppercase());
            t.feed(&data[..cut], &mut out, &mut up).unwrap();
            t.feed(&data[cut..], &mut out, &mut up).unwrap();
            t.finish(&mut out, &mut up).unwrap();
            assert_eq!(out, want, "cut at {cut}");
        }
    }
}
