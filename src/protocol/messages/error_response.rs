//! ErrorResponse (B): how pgveil reports its own errors (refusals, protocol
//! violations, an unreachable upstream) in the place the protocol expects.

use bytes::{BufMut, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::response::ErrorResponse as PgErrorResponse;

/// Severity of an error pgveil sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement fails, the session continues.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An error to send to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorResponse {
    /// Severity.
    pub severity: Severity,
    /// SQLSTATE.
    pub code: &'static str,
    /// Primary message. Must never contain a configured column's value.
    pub message: String,
}

impl ErrorResponse {
    /// An `ERROR`.
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        ErrorResponse {
            severity: Severity::Error,
            code,
            message: message.into(),
        }
    }

    /// A `FATAL`, after which the connection closes.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ErrorResponse {
            severity: Severity::Fatal,
            code,
            message: message.into(),
        }
    }

    /// Appends the wire encoding to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let msg = PgErrorResponse::new(vec![
            (b'S', self.severity.as_str().to_string()),
            (b'V', self.severity.as_str().to_string()),
            (b'C', self.code.to_string()),
            // A NUL would end the field early and corrupt the frame.
            (b'M', self.message.replace('\0', "?")),
        ]);
        let start = buf.len();
        if msg.encode(buf).is_err() {
            // Only an over-long message can fail; send a short one instead.
            buf.truncate(start);
            encode_minimal(buf, self.severity.as_str(), self.code);
        }
    }

    /// The wire encoding as a new buffer.
    pub fn to_bytes(&self) -> BytesMut {
        let mut buf = BytesMut::with_capacity(64 + self.message.len());
        self.encode(&mut buf);
        buf
    }
}

/// One field (`C` code, `M` message...) of an ErrorResponse or
/// NoticeResponse body (the bytes after the 5-byte header).
pub fn field(body: &[u8], tag: u8) -> Option<String> {
    body.split(|b| *b == 0)
        .find(|f| f.first() == Some(&tag))
        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
}

fn encode_minimal(buf: &mut BytesMut, severity: &str, code: &str) {
    let message = "pgveil: error message too long";
    let fields = [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ];
    let body: usize = fields.iter().map(|(_, v)| v.len() + 2).sum::<usize>() + 1;
    buf.put_u8(b'E');
    buf.put_i32((body + 4) as i32);
    for (tag, value) in fields {
        buf.put_u8(tag);
        buf.put_slice(value.as_bytes());
        buf.put_u8(0);
    }
    buf.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_fields() {
        let b = ErrorResponse::fatal("08P01", "pgveil: bad").to_bytes();
        assert_eq!(b[0], b'E');
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        assert_eq!(&b[5..], b"SFATAL\0VFATAL\0C08P01\0Mpgveil: bad\0\0");
    }

    #[test]
    fn minimal_encoding_is_well_formed() {
        let mut b = BytesMut::new();
        encode_minimal(&mut b, "ERROR", "0A000");
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
    }
}
