//! Query (F): a simple-protocol statement string.

use bytes::{BufMut, BytesMut};

use crate::protocol::reader::{ReadError, Reader};

/// The SQL text of a whole Query frame (header included).
pub fn decode(frame: &[u8]) -> Result<&str, ReadError> {
    let mut r = Reader::new(frame);
    let _tag = r.u8()?;
    let _len = r.i32()?;
    let text = r.cstr()?;
    r.finish()?;
    Ok(text)
}

/// The SQL bytes of a whole Query frame, in whatever client encoding.
pub fn decode_bytes(frame: &[u8]) -> Result<&[u8], ReadError> {
    let mut r = Reader::new(frame);
    let _tag = r.u8()?;
    let _len = r.i32()?;
    let text = r.cbytes()?;
    r.finish()?;
    Ok(text)
}

/// A Query frame for `text`.
pub fn encode(text: &str) -> BytesMut {
    let mut b = BytesMut::with_capacity(text.len() + 6);
    b.put_u8(b'Q');
    b.put_i32((text.len() + 5) as i32);
    b.put_slice(text.as_bytes());
    b.put_u8(0);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let f = encode("select 1");
        assert_eq!(decode(&f).unwrap(), "select 1");
    }

    #[test]
    fn rejects_missing_terminator() {
        assert!(decode(b"Q\x00\x00\x00\x06ab").is_err());
    }

    #[test]
    fn rejects_trailing_bytes() {
        assert!(decode(b"Q\x00\x00\x00\x07a\0b").is_err());
    }
}
