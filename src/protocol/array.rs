//! PostgreSQL's array value formats, for `col = ANY($1)` parameters whose
//! elements pgveil encrypts one by one. Only one-dimensional arrays occur
//! there; anything else is an error the caller refuses.

use bytes::{BufMut, BytesMut};

use crate::protocol::reader::{ReadError, Reader};

/// Why an array value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArrayError {
    /// The text form is not a valid one-dimensional array literal.
    #[error("malformed array literal")]
    Text,
    /// The binary form is truncated or inconsistent.
    #[error("malformed binary array: {0}")]
    Binary(#[from] ReadError),
    /// More than one dimension.
    #[error("multi-dimensional arrays are not supported for encrypted columns")]
    Dimensions,
}

/// Elements of a text-format array literal (`{a,"b c",NULL}`), unescaped.
pub fn parse_text(input: &[u8]) -> Result<Vec<Option<Vec<u8>>>, ArrayError> {
    let mut s = input;
    // Optional dimension decoration: `[1:3]={...}`.
    if s.first() == Some(&b'[') {
        let eq = s.iter().position(|b| *b == b'=').ok_or(ArrayError::Text)?;
        if s[..eq].iter().filter(|b| **b == b'[').count() != 1 {
            return Err(ArrayError::Dimensions);
        }
        s = &s[eq + 1..];
    }
    let s = s.trim_ascii();
    let inner = s
        .strip_prefix(b"{")
        .and_then(|r| r.strip_suffix(b"}"))
        .ok_or(ArrayError::Text)?;
    let mut out = Vec::new();
    if inner.trim_ascii().is_empty() {
        return Ok(out);
    }
    let mut i = 0;
    loop {
        while i < inner.len() && inner[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= inner.len() {
            return Err(ArrayError::Text);
        }
        match inner[i] {
            b'{' => return Err(ArrayError::Dimensions),
            b'"' => {
                i += 1;
                let mut v = Vec::new();
                loop {
                    match inner.get(i) {
                        None => return Err(ArrayError::Text),
                        Some(b'"') => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') => {
                            v.push(*inner.get(i + 1).ok_or(ArrayError::Text)?);
                            i += 2;
                        }
                        Some(c) => {
                            v.push(*c);
                            i += 1;
                        }
                    }
                }
                out.push(Some(v));
                while i < inner.len() && inner[i].is_ascii_whitespace() {
                    i += 1;
                }
            }
            _ => {
                let mut v = Vec::new();
                let mut escaped = false;
                while i < inner.len() && inner[i] != b',' {
                    match inner[i] {
                        b'\\' => {
                            v.push(*inner.get(i + 1).ok_or(ArrayError::Text)?);
                            escaped = true;
                            i += 2;
                        }
                        b'"' | b'{' | b'}' => return Err(ArrayError::Text),
                        c => {
                            v.push(c);
                            i += 1;
                        }
                    }
                }
                while v.last().is_some_and(|c| c.is_ascii_whitespace()) {
                    v.pop();
                }
                if v.is_empty() {
                    return Err(ArrayError::Text);
                }
                if !escaped && v.eq_ignore_ascii_case(b"null") {
                    out.push(None);
                } else {
                    out.push(Some(v));
                }
            }
        }
        match inner.get(i) {
            None => return Ok(out),
            Some(b',') => i += 1,
            Some(_) => return Err(ArrayError::Text),
        }
    }
}

/// Elements of a binary-format array.
pub fn parse_binary(input: &[u8]) -> Result<Vec<Option<&[u8]>>, ArrayError> {
    let mut r = Reader::new(input);
    let ndim = r.i32()?;
    let _flags = r.i32()?;
    let _elem = r.i32()?;
    let n = match ndim {
        0 => 0,
        1 => {
            let n = r.i32()?;
            let _lower = r.i32()?;
            usize::try_from(n).map_err(|_| ReadError::BadLength(n))?
        }
        _ => return Err(ArrayError::Dimensions),
    };
    let mut out = Vec::with_capacity(n.min(r.remaining() / 4));
    for _ in 0..n {
        let len = r.i32()?;
        out.push(match len {
            -1 => None,
            l if l < 0 => return Err(ReadError::BadLength(l).into()),
            l => Some(r.take(l as usize)?),
        });
    }
    r.finish()?;
    Ok(out)
}

/// A one-dimensional binary-format array of element type `elem_oid`.
pub fn encode_binary<C: AsRef<[u8]>>(elem_oid: u32, items: &[Option<C>]) -> BytesMut {
    let mut b = BytesMut::new();
    let has_null = items.iter().any(Option::is_none);
    if items.is_empty() {
        b.put_i32(0);
        b.put_i32(0);
        b.put_u32(elem_oid);
        return b;
    }
    b.put_i32(1);
    b.put_i32(i32::from(has_null));
    b.put_u32(elem_oid);
    b.put_i32(items.len() as i32);
    b.put_i32(1);
    for item in items {
        match item {
            None => b.put_i32(-1),
            Some(v) => {
                let v = v.as_ref();
                b.put_i32(v.len() as i32);
                b.put_slice(v);
            }
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Vec<Option<String>> {
        parse_text(s.as_bytes())
            .unwrap()
            .into_iter()
            .map(|v| v.map(|b| String::from_utf8(b).unwrap()))
            .collect()
    }

    #[test]
    fn text_arrays() {
        assert_eq!(text("{}"), Vec::<Option<String>>::new());
        assert_eq!(
            text("{a@x.com, \"b c\" ,NULL,\"NULL\",d\\,e}"),
            vec![
                Some("a@x.com".into()),
                Some("b c".into()),
                None,
                Some("NULL".into()),
                Some("d,e".into())
            ]
        );
        assert_eq!(
            text("[1:2]={x,y}"),
            vec![Some("x".into()), Some("y".into())]
        );
        assert_eq!(text("{\"q\\\"uote\"}"), vec![Some("q\"uote".into())]);
        assert_eq!(parse_text(b"{{a},{b}}"), Err(ArrayError::Dimensions));
        for bad in ["", "{", "{a,}", "{,a}", "{\"a}", "a", "{a\"b}"] {
            assert!(parse_text(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn binary_round_trip() {
        let b = encode_binary(25, &[Some(b"ab".as_slice()), None]);
        assert_eq!(parse_binary(&b).unwrap(), vec![Some(&b"ab"[..]), None]);
        let e = encode_binary::<&[u8]>(17, &[]);
        assert!(parse_binary(&e).unwrap().is_empty());
        assert!(parse_binary(&b[..b.len() - 1]).is_err());
    }
}
