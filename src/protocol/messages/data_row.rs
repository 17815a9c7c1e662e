//! DataRow (B): one result row, as raw `[len][bytes]` cells.

use bytes::{BufMut, BytesMut};

use crate::protocol::reader::{ReadError, Reader};

/// The cells of a whole DataRow frame; `None` is SQL NULL.
pub fn decode(frame: &[u8]) -> Result<Vec<Option<&[u8]>>, ReadError> {
    let mut r = Reader::new(frame);
    let _tag = r.u8()?;
    let _len = r.i32()?;
    let n = r.i16()?;
    if n < 0 {
        return Err(ReadError::BadLength(i32::from(n)));
    }
    let mut cells = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = r.i32()?;
        cells.push(match len {
            -1 => None,
            l if l < 0 => return Err(ReadError::BadLength(l)),
            l => Some(r.take(l as usize)?),
        });
    }
    r.finish()?;
    Ok(cells)
}

/// Encodes a DataRow frame.
pub fn encode<C: AsRef<[u8]>>(cells: &[Option<C>]) -> BytesMut {
    let body: usize = cells
        .iter()
        .map(|c| 4 + c.as_ref().map(|v| v.as_ref().len()).unwrap_or(0))
        .sum();
    let mut b = BytesMut::with_capacity(7 + body);
    b.put_u8(b'D');
    b.put_i32((6 + body) as i32);
    b.put_i16(cells.len() as i16);
    for c in cells {
        match c {
            None => b.put_i32(-1),
            Some(v) => {
                b.put_i32(v.as_ref().len() as i32);
                b.put_slice(v.as_ref());
            }
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let cells: Vec<Option<&[u8]>> = vec![Some(b"abc"), None, Some(b"")];
        let f = encode(&cells);
        assert_eq!(decode(&f).unwrap(), cells);
    }

    #[test]
    fn rejects_cell_past_end() {
        assert!(decode(b"D\x00\x00\x00\x0a\x00\x01\x00\x00\x00\x09").is_err());
    }

    #[test]
    fn rejects_negative_length_other_than_null() {
        assert!(decode(b"D\x00\x00\x00\x0a\x00\x01\xff\xff\xff\xfe").is_err());
    }
}
