//! RowDescription (B): the columns of a result. pgveil reads each field's
//! origin (table OID, column number) and rewrites the type of encrypted
//! columns to the type the application expects.

use bytes::{BufMut, BytesMut};

use crate::protocol::reader::{ReadError, Reader};

/// One field of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Column name as the client will see it.
    pub name: String,
    /// Origin table OID, 0 if none.
    pub table_oid: u32,
    /// Origin column number, 0 if none.
    pub column: i16,
    /// Type OID.
    pub type_oid: u32,
    /// `typlen`.
    pub type_size: i16,
    /// `atttypmod`.
    pub type_modifier: i32,
    /// 0 text, 1 binary.
    pub format: i16,
}

/// Decodes a whole RowDescription frame.
pub fn decode(frame: &[u8]) -> Result<Vec<Field>, ReadError> {
    let mut r = Reader::new(frame);
    let _tag = r.u8()?;
    let _len = r.i32()?;
    let n = r.i16()?;
    if n < 0 {
        return Err(ReadError::BadLength(i32::from(n)));
    }
    let mut fields = Vec::with_capacity(n as usize);
    for _ in 0..n {
        fields.push(Field {
            name: r.cstr()?.to_string(),
            table_oid: r.i32()? as u32,
            column: r.i16()?,
            type_oid: r.i32()? as u32,
            type_size: r.i16()?,
            type_modifier: r.i32()?,
            format: r.i16()?,
        });
    }
    r.finish()?;
    Ok(fields)
}

/// Encodes a RowDescription frame.
pub fn encode(fields: &[Field]) -> BytesMut {
    let mut b = BytesMut::with_capacity(7 + fields.len() * 32);
    b.put_u8(b'T');
    b.put_i32(0);
    b.put_i16(fields.len() as i16);
    for f in fields {
        b.put_slice(f.name.as_bytes());
        b.put_u8(0);
        b.put_u32(f.table_oid);
        b.put_i16(f.column);
        b.put_u32(f.type_oid);
        b.put_i16(f.type_size);
        b.put_i32(f.type_modifier);
        b.put_i16(f.format);
    }
    let len = (b.len() - 1) as i32;
    b[1..5].copy_from_slice(&len.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let fields = vec![Field {
            name: "email".into(),
            table_oid: 16384,
            column: 2,
            type_oid: 17,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }];
        assert_eq!(decode(&encode(&fields)).unwrap(), fields);
    }

    #[test]
    fn rejects_truncated_field() {
        let mut f = encode(&[Field {
            name: "a".into(),
            table_oid: 1,
            column: 1,
            type_oid: 25,
            type_size: -1,
            type_modifier: -1,
            format: 0,
        }]);
        f.truncate(f.len() - 2);
        assert!(decode(&f).is_err());
    }
}
