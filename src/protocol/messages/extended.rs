//! The extended-protocol messages pgveil must read or rebuild: Bind,
//! Describe, Close, Execute (frontend) and ParameterDescription (backend),
//! plus Parse and Describe built from parts. Decoders check every length
//! against the frame, so a malformed message is an error, never a panic.

use bytes::{BufMut, BytesMut};

use crate::protocol::reader::{ReadError, Reader};

/// A Bind message (F).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal (empty: unnamed).
    pub portal: &'a str,
    /// Source prepared statement (empty: unnamed).
    pub statement: &'a str,
    /// Parameter format codes as sent: none (all text), one (for all), or
    /// one per parameter.
    pub param_formats: Vec<i16>,
    /// Parameter values; `None` is SQL NULL.
    pub params: Vec<Option<&'a [u8]>>,
    /// Result column format codes as sent (same convention).
    pub result_formats: Vec<i16>,
}

fn count(r: &mut Reader<'_>) -> Result<usize, ReadError> {
    let n = r.i16()?;
    if n < 0 {
        return Err(ReadError::BadLength(i32::from(n)));
    }
    Ok(n as usize)
}

fn formats(r: &mut Reader<'_>) -> Result<Vec<i16>, ReadError> {
    let n = count(r)?;
    let mut v = Vec::with_capacity(n.min(r.remaining() / 2));
    for _ in 0..n {
        v.push(r.i16()?);
    }
    Ok(v)
}

/// Decodes a whole Bind frame (header included).
pub fn decode_bind(frame: &[u8]) -> Result<Bind<'_>, ReadError> {
    let mut r = Reader::new(frame);
    r.take(5)?;
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let param_formats = formats(&mut r)?;
    let n = count(&mut r)?;
    let mut params = Vec::with_capacity(n.min(r.remaining() / 4));
    for _ in 0..n {
        let len = r.i32()?;
        params.push(match len {
            -1 => None,
            l if l < 0 => return Err(ReadError::BadLength(l)),
            l => Some(r.take(l as usize)?),
        });
    }
    let result_formats = formats(&mut r)?;
    r.finish()?;
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    })
}

/// The format code that applies to item `i` under PostgreSQL's rule: no
/// codes means text, one code applies to all.
pub fn format_of(codes: &[i16], i: usize) -> i16 {
    match codes {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// Builds a Bind frame with one format code per parameter.
pub fn encode_bind(
    portal: &str,
    statement: &str,
    params: &[(i16, Option<&[u8]>)],
    result_formats: &[i16],
) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(b'B');
    b.put_i32(0);
    put_cstr(&mut b, portal);
    put_cstr(&mut b, statement);
    b.put_i16(params.len() as i16);
    for (f, _) in params {
        b.put_i16(*f);
    }
    b.put_i16(params.len() as i16);
    for (_, v) in params {
        match v {
            None => b.put_i32(-1),
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
        }
    }
    b.put_i16(result_formats.len() as i16);
    for f in result_formats {
        b.put_i16(*f);
    }
    finish(b)
}

/// Builds a Parse frame.
pub fn encode_parse(name: &str, query: &str, param_types: &[u32]) -> BytesMut {
    let mut b = BytesMut::with_capacity(query.len() + name.len() + 16);
    b.put_u8(b'P');
    b.put_i32(0);
    put_cstr(&mut b, name);
    put_cstr(&mut b, query);
    b.put_i16(param_types.len() as i16);
    for t in param_types {
        b.put_u32(*t);
    }
    finish(b)
}

/// Builds a Describe frame (`kind` is `b'S'` or `b'P'`).
pub fn encode_describe(kind: u8, name: &str) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(b'D');
    b.put_i32(0);
    b.put_u8(kind);
    put_cstr(&mut b, name);
    finish(b)
}

/// Decodes Describe or Close: which kind (`b'S'`tatement or `b'P'`ortal)
/// and its name.
pub fn decode_target(frame: &[u8]) -> Result<(u8, &str), ReadError> {
    let mut r = Reader::new(frame);
    r.take(5)?;
    let kind = r.u8()?;
    let name = r.cstr()?;
    r.finish()?;
    Ok((kind, name))
}

/// Decodes Execute: portal name and row limit (0: all).
pub fn decode_execute(frame: &[u8]) -> Result<(&str, i32), ReadError> {
    let mut r = Reader::new(frame);
    r.take(5)?;
    let portal = r.cstr()?;
    let limit = r.i32()?;
    r.finish()?;
    Ok((portal, limit))
}

/// Decodes ParameterDescription: parameter type OIDs.
pub fn decode_parameter_description(frame: &[u8]) -> Result<Vec<u32>, ReadError> {
    let mut r = Reader::new(frame);
    r.take(5)?;
    let n = count(&mut r)?;
    let mut v = Vec::with_capacity(n.min(r.remaining() / 4));
    for _ in 0..n {
        v.push(r.i32()? as u32);
    }
    r.finish()?;
    Ok(v)
}

/// Builds a ParameterDescription frame.
pub fn encode_parameter_description(types: &[u32]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(b't');
    b.put_i32(0);
    b.put_i16(types.len() as i16);
    for t in types {
        b.put_u32(*t);
    }
    finish(b)
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}

/// Writes the length field of a frame built with a zero placeholder.
fn finish(mut b: BytesMut) -> BytesMut {
    let len = (b.len() - 1) as i32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_round_trips() {
        let f = encode_bind("p", "s", &[(0, Some(b"abc")), (1, None)], &[1]);
        let b = decode_bind(&f).unwrap();
        assert_eq!(b.portal, "p");
        assert_eq!(b.statement, "s");
        assert_eq!(b.param_formats, vec![0, 1]);
        assert_eq!(b.params, vec![Some(&b"abc"[..]), None]);
        assert_eq!(b.result_formats, vec![1]);
    }

    #[test]
    fn bind_rejects_bad_lengths() {
        let mut f = encode_bind("", "", &[(0, Some(b"abc"))], &[]).to_vec();
        // Parameter length larger than the frame.
        let at = f.len() - 2 - 3 - 4;
        f[at..at + 4].copy_from_slice(&100i32.to_be_bytes());
        assert!(decode_bind(&f).is_err());
        f[at..at + 4].copy_from_slice(&(-5i32).to_be_bytes());
        assert!(decode_bind(&f).is_err());
        assert!(decode_bind(b"B\0\0\0\x04").is_err());
    }

    #[test]
    fn format_rule() {
        assert_eq!(format_of(&[], 3), 0);
        assert_eq!(format_of(&[1], 3), 1);
        assert_eq!(format_of(&[0, 1], 1), 1);
    }

    #[test]
    fn describe_execute_parameter_description() {
        let d = encode_describe(b'S', "s1");
        assert_eq!(decode_target(&d).unwrap(), (b'S', "s1"));
        let e = b"E\0\0\0\x0ap1\0\0\0\0\x05";
        assert_eq!(decode_execute(e).unwrap(), ("p1", 5));
        let t = encode_parameter_description(&[25, 17]);
        assert_eq!(decode_parameter_description(&t).unwrap(), vec![25, 17]);
        let p = encode_parse("a", "select $1", &[17]);
        let parsed = super::super::parse::decode(&p).unwrap();
        assert_eq!(parsed.param_types, vec![17]);
    }
}
