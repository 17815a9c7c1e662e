//! Finds message boundaries in a byte stream after startup.
//!
//! Every regular message is a type byte, a big-endian i32 length that counts
//! itself, and a body. The framer checks each header before anything is
//! allocated, then either
//! - hands back a *whole* frame the caller asked to inspect (bounded by
//!   `max_inspected`), or
//! - marks the frame for forwarding untouched, streaming its body as it
//!   arrives, so a 1 GiB message costs only the read buffer.
//!
//! Consecutive forwarded bytes are returned as one contiguous chunk so that a
//! pipelined batch costs one write.

use bytes::BytesMut;

/// A malformed or oversized frame header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length field was below 4.
    #[error("invalid message length {length} for message type {tag:?}")]
    BadLength {
        /// Message type byte, as a char for the log.
        tag: char,
        /// The length field.
        length: i32,
    },
    /// The message is larger than `max_frame_bytes`.
    #[error("message of type {tag:?} is {length} bytes, over the limit of {limit}")]
    TooLarge {
        /// Message type byte.
        tag: char,
        /// Declared body length.
        length: u32,
        /// The configured limit.
        limit: u32,
    },
    /// The message must be inspected but is larger than `max_inspected_frame_bytes`.
    #[error(
        "message of type {tag:?} is {length} bytes, over the limit of {limit} for messages pgveil inspects"
    )]
    TooLargeToInspect {
        /// Message type byte.
        tag: char,
        /// Declared body length.
        length: u32,
        /// The configured limit.
        limit: u32,
    },
}

/// What the framer found next in the buffer.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes to forward untouched: whole frames and possibly the start or
    /// end of a streamed one.
    Forward(BytesMut),
    /// A whole frame (header included) the caller asked to inspect.
    Frame(BytesMut),
}

/// Incremental frame splitter for one direction of one connection.
#[derive(Debug, Clone)]
pub struct Framer {
    max_frame: u32,
    max_inspected: u32,
    /// Bytes of a forwarded frame that have not arrived yet.
    remaining: usize,
}

/// Header size: type byte plus length.
pub const HEADER_LEN: usize = 5;

impl Framer {
    /// A framer with the given limits on body length.
    pub fn new(max_frame: u32, max_inspected: u32) -> Self {
        Framer {
            max_frame,
            max_inspected: max_inspected.min(max_frame),
            remaining: 0,
        }
    }

    /// True when the framer is at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    /// Takes the next chunk off the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed; `inspect(tag)` says
    /// which message types must be returned whole. Errors leave `buf`
    /// untouched; the connection cannot continue after one.
    pub fn next(
        &mut self,
        buf: &mut BytesMut,
        inspect: impl Fn(u8) -> bool,
    ) -> Result<Option<Chunk>, FrameError> {
        self.next_observed(buf, inspect, |_| {})
    }

    /// Like [`Framer::next`], calling `seen(tag)` for every frame that is
    /// forwarded without inspection, as its header passes (for timing
    /// requests without holding frames back).
    pub fn next_observed(
        &mut self,
        buf: &mut BytesMut,
        inspect: impl Fn(u8) -> bool,
        mut seen: impl FnMut(u8),
    ) -> Result<Option<Chunk>, FrameError> {
        let mut span = 0usize;
        loop {
            if self.remaining > 0 {
                let take = self.remaining.min(buf.len() - span);
                span += take;
                self.remaining -= take;
                if self.remaining > 0 {
                    break;
                }
                continue;
            }
            let rest = &buf[span..];
            if rest.len() < HEADER_LEN {
                break;
            }
            let tag = rest[0];
            let length = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
            let header_error = if length < 4 {
                Some(FrameError::BadLength {
                    tag: tag as char,
                    length,
                })
            } else if (length as u32 - 4) > self.max_frame {
                Some(FrameError::TooLarge {
                    tag: tag as char,
                    length: length as u32 - 4,
                    limit: self.max_frame,
                })
            } else if inspect(tag) && (length as u32 - 4) > self.max_inspected {
                Some(FrameError::TooLargeToInspect {
                    tag: tag as char,
                    length: length as u32 - 4,
                    limit: self.max_inspected,
                })
            } else {
                None
            };
            if let Some(err) = header_error {
                // Forward what precedes the bad frame first; fail on the next call.
                if span > 0 {
                    break;
                }
                return Err(err);
            }
            let total = length as usize + 1;
            if inspect(tag) {
                if span > 0 {
                    break;
                }
                if buf.len() < total {
                    buf.reserve(total - buf.len());
                    return Ok(None);
                }
                return Ok(Some(Chunk::Frame(buf.split_to(total))));
            }
            seen(tag);
            self.remaining = total;
        }
        if span == 0 {
            Ok(None)
        } else {
            Ok(Some(Chunk::Forward(buf.split_to(span))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn none(_: u8) -> bool {
        false
    }

    #[test]
    fn forwards_consecutive_frames_as_one_chunk() {
        let mut bytes = frame(b'Q', b"select 1\0");
        bytes.extend(frame(b'S', b""));
        let mut buf = BytesMut::from(&bytes[..]);
        let mut f = Framer::new(1 << 30, 1 << 20);
        match f.next(&mut buf, none).unwrap() {
            Some(Chunk::Forward(b)) => assert_eq!(&b[..], &bytes[..]),
            other => panic!("{other:?}"),
        }
        assert!(buf.is_empty());
        assert!(f.at_boundary());
    }

    #[test]
    fn returns_inspected_frame_whole() {
        let mut bytes = frame(b'S', b"");
        bytes.extend(frame(b'Q', b"select 1\0"));
        let mut buf = BytesMut::from(&bytes[..]);
        let mut f = Framer::new(1 << 30, 1 << 20);
        let is_q = |t| t == b'Q';
        assert!(matches!(f.next(&mut buf, is_q).unwrap(), Some(Chunk::Forward(b)) if b.len() == 5));
        assert!(matches!(f.next(&mut buf, is_q).unwrap(), Some(Chunk::Frame(b)) if b[0] == b'Q'));
        assert!(f.next(&mut buf, is_q).unwrap().is_none());
    }

    #[test]
    fn waits_for_whole_inspected_frame() {
        let bytes = frame(b'Q', b"select 1\0");
        let mut buf = BytesMut::from(&bytes[..7]);
        let mut f = Framer::new(1 << 30, 1 << 20);
        assert!(f.next(&mut buf, |_| true).unwrap().is_none());
        buf.extend_from_slice(&bytes[7..]);
        assert!(matches!(
            f.next(&mut buf, |_| true).unwrap(),
            Some(Chunk::Frame(_))
        ));
    }

    #[test]
    fn streams_forwarded_frame_in_pieces() {
        let body = vec![7u8; 1000];
        let bytes = frame(b'd', &body);
        let mut f = Framer::new(1 << 30, 16);
        let mut out = Vec::new();
        for piece in bytes.chunks(100) {
            let mut buf = BytesMut::from(piece);
            while let Some(Chunk::Forward(b)) = f.next(&mut buf, none).unwrap() {
                out.extend_from_slice(&b);
            }
            assert!(buf.is_empty());
        }
        assert_eq!(out, bytes);
        assert!(f.at_boundary());
    }

    #[test]
    fn rejects_length_below_four() {
        let mut buf = BytesMut::from(&b"Q\x00\x00\x00\x03"[..]);
        let err = Framer::new(100, 10).next(&mut buf, none).unwrap_err();
        assert!(matches!(err, FrameError::BadLength { length: 3, .. }));
    }

    #[test]
    fn rejects_negative_length() {
        let mut buf = BytesMut::from(&b"Q\xff\xff\xff\xff"[..]);
        assert!(Framer::new(100, 10).next(&mut buf, none).is_err());
    }

    #[test]
    fn rejects_oversized_before_allocating() {
        let mut buf = BytesMut::from(&b"d\x7f\xff\xff\xff"[..]);
        let err = Framer::new(1 << 30, 10).next(&mut buf, none).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn rejects_oversized_inspected_frame() {
        let mut buf = BytesMut::from(&frame(b'Q', &[b'x'; 64])[..]);
        let err = Framer::new(1 << 30, 16)
            .next(&mut buf, |_| true)
            .unwrap_err();
        assert!(matches!(err, FrameError::TooLargeToInspect { .. }));
    }

    #[test]
    fn forwards_good_frames_before_reporting_bad_one() {
        let mut bytes = frame(b'S', b"");
        bytes.extend_from_slice(b"Q\x00\x00\x00\x00");
        let mut buf = BytesMut::from(&bytes[..]);
        let mut f = Framer::new(100, 10);
        assert!(matches!(f.next(&mut buf, none).unwrap(), Some(Chunk::Forward(b)) if b.len() == 5));
        assert!(f.next(&mut buf, none).is_err());
    }
}
