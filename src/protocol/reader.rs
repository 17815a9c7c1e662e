//! A bounds-checked reader for bytes that came from a peer.
//!
//! Every read returns an error instead of panicking, so a malformed message
//! can only ever close the one connection that sent it.

/// A read past the end of a message, or a malformed field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The message ended before a field did.
    #[error("message truncated: needed {needed} more bytes")]
    Truncated {
        /// Bytes missing.
        needed: usize,
    },
    /// A C string had no terminating NUL.
    #[error("unterminated string")]
    Unterminated,
    /// A C string was not valid UTF-8.
    #[error("string is not valid UTF-8")]
    NotUtf8,
    /// A length field was negative where it may not be.
    #[error("invalid length {0}")]
    BadLength(i32),
    /// Bytes were left over after the last field.
    #[error("{0} unexpected bytes at end of message")]
    Trailing(usize),
}

/// Cursor over an untrusted byte slice.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes exactly `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], ReadError> {
        if n > self.buf.len() {
            return Err(ReadError::Truncated {
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, ReadError> {
        Ok(self.take(1)?[0])
    }

    /// Big-endian i16.
    pub fn i16(&mut self) -> Result<i16, ReadError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    /// Big-endian i32.
    pub fn i32(&mut self) -> Result<i32, ReadError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A NUL-terminated UTF-8 string, without its NUL.
    pub fn cstr(&mut self) -> Result<&'a str, ReadError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or(ReadError::Unterminated)?;
        let s = std::str::from_utf8(&self.buf[..end]).map_err(|_| ReadError::NotUtf8)?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated byte string, without its NUL, in any encoding.
    pub fn cbytes(&mut self) -> Result<&'a [u8], ReadError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or(ReadError::Unterminated)?;
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// Fails if any bytes are left.
    pub fn finish(&self) -> Result<(), ReadError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ReadError::Trailing(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields() {
        let mut r = Reader::new(b"\x01\x00\x02\x00\x00\x00\x03ab\0z");
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.i16().unwrap(), 2);
        assert_eq!(r.i32().unwrap(), 3);
        assert_eq!(r.cstr().unwrap(), "ab");
        assert_eq!(r.take(1).unwrap(), b"z");
        r.finish().unwrap();
    }

    #[test]
    fn rejects_truncated_int() {
        assert_eq!(
            Reader::new(b"\x00\x01").i32(),
            Err(ReadError::Truncated { needed: 2 })
        );
    }

    #[test]
    fn rejects_unterminated_string() {
        assert_eq!(Reader::new(b"abc").cstr(), Err(ReadError::Unterminated));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut r = Reader::new(b"\x01\x02");
        r.u8().unwrap();
        assert_eq!(r.finish(), Err(ReadError::Trailing(1)));
    }
}
