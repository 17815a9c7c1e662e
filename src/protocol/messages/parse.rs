//! Parse (F): an extended-protocol statement to prepare.

use crate::protocol::reader::{ReadError, Reader};

/// The decoded parts of a Parse frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Prepared statement name (empty: unnamed).
    pub name: &'a str,
    /// SQL text.
    pub query: &'a str,
    /// Declared parameter type OIDs.
    pub param_types: Vec<u32>,
}

/// Decodes a whole Parse frame (header included).
pub fn decode(frame: &[u8]) -> Result<Parse<'_>, ReadError> {
    let mut r = Reader::new(frame);
    let _tag = r.u8()?;
    let _len = r.i32()?;
    let name = r.cstr()?;
    let query = r.cstr()?;
    let n = r.i16()?;
    if n < 0 {
        return Err(ReadError::BadLength(i32::from(n)));
    }
    let mut param_types = Vec::with_capacity(n as usize);
    for _ in 0..n {
        param_types.push(r.i32()? as u32);
    }
    r.finish()?;
    Ok(Parse {
        name,
        query,
        param_types,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        let f = b"P\x00\x00\x00\x14s1\0select $1\0\x00\x01\x00\x00\x00\x19";
        let p = decode(f).unwrap();
        assert_eq!(p.name, "s1");
        assert_eq!(p.query, "select $1");
        assert_eq!(p.param_types, vec![25]);
    }

    #[test]
    fn rejects_negative_count() {
        assert!(decode(b"P\x00\x00\x00\x0a\0\0\xff\xff").is_err());
    }
}
