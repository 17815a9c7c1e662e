//! pgveil's own message code on arbitrary input: the bounds-checked
//! [`Reader`] every decoder is built on, and the messages in
//! `pgveil::protocol::messages` (today ErrorResponse, which pgveil encodes;
//! add each decoder here as it lands, on one whole frame body as the
//! session hands it over).
//!
//! Checks: no panic; the Reader consumes exactly what it returns and fails
//! without consuming; an ErrorResponse is always one well-formed frame whose
//! fields read back as exactly what was encoded.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use pgveil::protocol::Reader;
use pgveil::protocol::messages::{ErrorResponse, Severity};
use pgveil::protocol::sqlstate;

#[derive(Debug, Arbitrary)]
enum Op {
    U8,
    I16,
    I32,
    Cstr,
    Take(u16),
    Rest,
    Finish,
}

#[derive(Debug, Arbitrary)]
enum Case {
    /// A sequence of reads over peer bytes.
    Read { ops: Vec<Op>, bytes: Vec<u8> },
    /// An error pgveil sends, with any message text.
    Error { fatal: bool, code: u8, message: String },
}

const CODES: &[&str] = &[
    sqlstate::PROTOCOL_VIOLATION,
    sqlstate::UNABLE_TO_CONNECT,
    sqlstate::TOO_MANY_CONNECTIONS,
    sqlstate::FEATURE_NOT_SUPPORTED,
    sqlstate::ADMIN_SHUTDOWN,
    sqlstate::INVALID_AUTHORIZATION,
];

fn read(ops: &[Op], bytes: &[u8]) {
    let mut r = Reader::new(bytes);
    for op in ops {
        let before = r.remaining();
        let consumed = match op {
            Op::U8 => r.u8().map(|_| 1),
            Op::I16 => r.i16().map(|_| 2),
            Op::I32 => r.i32().map(|_| 4),
            Op::Cstr => r.cstr().map(|s| s.len() + 1),
            Op::Take(n) => r.take(*n as usize).map(|b| {
                assert_eq!(b.len(), *n as usize);
                b.len()
            }),
            Op::Rest => Ok(r.rest().len()),
            Op::Finish => r.finish().map(|()| {
                assert_eq!(before, 0);
                0
            }),
        };
        match consumed {
            Ok(n) => assert_eq!(r.remaining(), before - n, "{op:?} consumed the wrong amount"),
            Err(_) => assert_eq!(r.remaining(), before, "{op:?} consumed bytes and failed"),
        }
    }
}

/// Splits an ErrorResponse frame into its (field type, value) pairs.
fn fields(frame: &[u8]) -> Vec<(u8, Vec<u8>)> {
    assert_eq!(frame[0], b'E');
    let length = i32::from_be_bytes(frame[1..5].try_into().unwrap());
    assert_eq!(length as usize + 1, frame.len(), "length field disagrees with the frame");
    let mut r = Reader::new(&frame[5..]);
    let mut out = Vec::new();
    loop {
        let tag = r.u8().expect("field list not terminated");
        if tag == 0 {
            r.finish().expect("bytes after the field list");
            return out;
        }
        let rest = r.rest();
        let end = rest.iter().position(|b| *b == 0).expect("field value not terminated");
        out.push((tag, rest[..end].to_vec()));
        r = Reader::new(&rest[end + 1..]);
    }
}

fn error(fatal: bool, code: u8, message: String) {
    let code = CODES[code as usize % CODES.len()];
    let (msg, severity) = if fatal {
        (ErrorResponse::fatal(code, message.clone()), "FATAL")
    } else {
        (ErrorResponse::error(code, message.clone()), "ERROR")
    };
    assert_eq!(msg.severity == Severity::Fatal, fatal);
    let got = fields(&msg.to_bytes());
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"SVCM", "fields of an ErrorResponse");
    assert_eq!(got[0].1, severity.as_bytes());
    assert_eq!(got[1].1, severity.as_bytes());
    assert_eq!(got[2].1, code.as_bytes());
    // The text as given, unless it was too long and replaced.
    assert!(
        got[3].1 == message.as_bytes()
            || (got[3].1 == b"pgveil: error message too long" && message.len() > 1000),
        "message field does not read back"
    );
}

fuzz_target!(|case: Case| match case {
    Case::Read { ops, bytes } => read(&ops, &bytes),
    Case::Error { fatal, code, message } => error(fatal, code, message),
});
