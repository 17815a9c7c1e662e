//! `pgveil::protocol::Framer::next_observed` (which `next` wraps) on
//! arbitrary bytes, split into arbitrary chunks, with an arbitrary set of
//! inspected message types and small limits.
//!
//! Checks, against a simple reference parse of the whole input:
//! - the bytes handed out (forwarded and inspected) are exactly the input
//!   consumed, in order: nothing lost, duplicated or reordered;
//! - an inspected frame is returned whole, alone, and only for a type the
//!   predicate selected; forwarded chunks never cover part of one;
//! - an error is reported exactly at the first bad header, with the right
//!   kind, and leaves the buffer untouched;
//! - once all input is in, everything complete has been handed out;
//! - memory reserved for an inspected frame stays within its limit;
//! - every forwarded frame is reported to the observer once, in order.

#![no_main]

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgveil::protocol::{Chunk, FrameError, Framer};

const HEADER_LEN: usize = 5;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Body limit for every frame (small, so the fuzzer can reach it).
    max_frame: u16,
    /// Body limit for inspected frames.
    max_inspected: u16,
    /// Bit `t` set: message type `t` must be returned whole.
    inspect: [u8; 32],
    /// Sizes of the reads the bytes arrive in (0 = an empty read).
    splits: Vec<u8>,
    data: Vec<u8>,
}

/// How the reference parse of the whole input ends.
#[derive(Debug, PartialEq)]
enum End {
    /// Input ends inside a header, or inside an inspected frame, starting here.
    Waiting(usize),
    /// Input ends inside a forwarded frame: all of it can be handed out.
    Streaming,
    /// A bad header starts here.
    Bad(usize, FrameError),
}

struct RefFrame {
    tag: u8,
    start: usize,
    len: usize,
    inspected: bool,
}

fn reference(
    data: &[u8],
    max_frame: u32,
    max_inspected: u32,
    inspect: &dyn Fn(u8) -> bool,
) -> (Vec<RefFrame>, End) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        if data.len() - at < HEADER_LEN {
            return (frames, End::Waiting(at));
        }
        let tag = data[at];
        let length = i32::from_be_bytes(data[at + 1..at + 5].try_into().unwrap());
        let error = if length < 4 {
            Some(FrameError::BadLength {
                tag: tag as char,
                length,
            })
        } else if length as u32 - 4 > max_frame {
            Some(FrameError::TooLarge {
                tag: tag as char,
                length: length as u32 - 4,
                limit: max_frame,
            })
        } else if inspect(tag) && length as u32 - 4 > max_inspected {
            Some(FrameError::TooLargeToInspect {
                tag: tag as char,
                length: length as u32 - 4,
                limit: max_inspected,
            })
        } else {
            None
        };
        if let Some(e) = error {
            return (frames, End::Bad(at, e));
        }
        let len = length as usize + 1;
        let inspected = inspect(tag);
        frames.push(RefFrame {
            tag,
            start: at,
            len,
            inspected,
        });
        if data.len() - at < len {
            return (
                frames,
                if inspected {
                    End::Waiting(at)
                } else {
                    End::Streaming
                },
            );
        }
        at += len;
    }
}

fuzz_target!(|input: Input| {
    let mask = input.inspect;
    let inspect = move |t: u8| mask[t as usize / 8] >> (t % 8) & 1 == 1;
    let max_frame = u32::from(input.max_frame);
    let max_inspected = u32::from(input.max_inspected).min(max_frame);
    let data = &input.data[..];
    let (frames, end) = reference(data, max_frame, max_inspected, &inspect);

    // The reads the bytes arrive in; the last one takes what is left.
    let mut reads = Vec::new();
    let mut at = 0;
    for s in &input.splits {
        let n = (*s as usize).min(data.len() - at);
        reads.push(at..at + n);
        at += n;
    }
    reads.push(at..data.len());

    let mut framer = Framer::new(max_frame, u32::from(input.max_inspected));
    let mut buf = BytesMut::new();
    let mut out: Vec<u8> = Vec::new();
    let mut error = None;
    let mut seen = Vec::new();
    'feed: for read in reads {
        buf.extend_from_slice(&data[read.clone()]);
        let fed = read.end;
        loop {
            let before = buf.clone();
            let capacity = buf.capacity();
            let next = framer.next_observed(&mut buf, inspect, |t| seen.push(t));
            if buf.capacity() > capacity {
                // Only a whole inspected frame may make the framer reserve.
                assert!(
                    buf.capacity() <= 4 * (fed + max_inspected as usize + HEADER_LEN) + 64,
                    "reserved {} bytes with {fed} fed and max_inspected {max_inspected}",
                    buf.capacity()
                );
            }
            match next {
                Ok(None) => break,
                Ok(Some(Chunk::Forward(b))) => {
                    assert!(!b.is_empty(), "empty forward chunk");
                    let start = out.len();
                    let end = start + b.len();
                    for f in frames.iter().filter(|f| f.inspected) {
                        assert!(
                            end <= f.start || start >= f.start + f.len,
                            "forwarded {start}..{end} overlaps inspected frame at {}",
                            f.start
                        );
                    }
                    out.extend_from_slice(&b);
                }
                Ok(Some(Chunk::Frame(b))) => {
                    let start = out.len();
                    let f = frames
                        .iter()
                        .find(|f| f.start == start)
                        .expect("inspected frame not at a frame boundary");
                    assert!(
                        f.inspected && inspect(b[0]),
                        "frame returned whole but not inspected"
                    );
                    assert_eq!(b.len(), f.len, "inspected frame not whole");
                    assert!(framer.at_boundary());
                    out.extend_from_slice(&b);
                }
                Err(e) => {
                    assert_eq!(buf, before, "error changed the buffer");
                    assert_eq!(buf.capacity(), capacity, "error reserved memory");
                    error = Some(e);
                    break 'feed;
                }
            }
            assert_eq!(
                &out[..],
                &data[..out.len()],
                "output is not the input prefix"
            );
            assert_eq!(out.len() + buf.len(), fed, "bytes lost or duplicated");
        }
    }
    // Every forwarded frame whose header has passed is observed once, in order.
    let forwarded: Vec<u8> = frames
        .iter()
        .filter(|f| !f.inspected && f.start < out.len())
        .map(|f| f.tag)
        .collect();
    assert_eq!(seen, forwarded, "observed tags");
    match (end, error) {
        (End::Bad(at, want), Some(got)) => {
            assert_eq!(out.len(), at, "error reported at the wrong place");
            assert_eq!(got, want);
        }
        (end, Some(got)) => panic!("unexpected error {got:?}; reference ends {end:?}"),
        (End::Bad(at, _), None) => panic!("bad header at {at} not reported"),
        (End::Streaming, None) => assert_eq!(out.len(), data.len(), "streamed bytes held back"),
        (End::Waiting(at), None) => assert_eq!(out.len(), at, "complete frames held back"),
    }
});
