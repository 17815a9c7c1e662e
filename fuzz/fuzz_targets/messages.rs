//! pgveil's own message code on arbitrary input: the bounds-checked
//! [`Reader`] every decoder is built on, and each codec in
//! `pgveil::protocol::messages`. Add a new decoder to [`DECODERS`] and,
//! if it has an encoder, a round trip below.
//!
//! Checks:
//! - no decoder panics, on a frame with a correct header and any body or on
//!   any bytes at all;
//! - a frame a decoder accepts is canonical: encoding what was decoded gives
//!   back the same bytes (so a frame pgveil decodes but leaves unchanged can
//!   be re-sent byte for byte, and trailing bytes are never accepted);
//! - every encoder writes one well-formed frame that decodes to what was
//!   encoded;
//! - the Reader consumes exactly what it returns and fails without consuming.
//!
//! Strings containing NUL are left out of the encoder checks: the encoders
//! write them as they are, which ends the C string early (see "Known
//! findings" in fuzz/README.md). Remove the `has_nul` filters once they
//! refuse or replace NUL.

#![no_main]

use arbitrary::Arbitrary;
use bytes::BufMut;
use libfuzzer_sys::fuzz_target;
use pgveil::protocol::Reader;
use pgveil::protocol::messages::{
    ErrorResponse, Severity, data_row, parameter_status, parse, query, row_description,
};
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
struct ArbField {
    name: String,
    table_oid: u32,
    column: i16,
    type_oid: u32,
    type_size: i16,
    type_modifier: i32,
    format: i16,
}

#[derive(Debug, Arbitrary)]
enum Case {
    /// A frame with a correct header and any body, to one decoder.
    Decode {
        which: u8,
        body: Vec<u8>,
    },
    /// Any bytes at all, to one decoder.
    DecodeRaw {
        which: u8,
        bytes: Vec<u8>,
    },
    /// A sequence of reads over peer bytes.
    Read {
        ops: Vec<Op>,
        bytes: Vec<u8>,
    },
    /// Encoders, with any content.
    Error {
        fatal: bool,
        code: u8,
        message: String,
    },
    Query {
        text: String,
    },
    DataRow {
        cells: Vec<Option<Vec<u8>>>,
    },
    RowDescription {
        fields: Vec<ArbField>,
    },
}

/// A decoder, and the frame it would write for what it decoded (`None`
/// when the frame is refused).
type Decoder = fn(&[u8]) -> Option<Vec<u8>>;

const DECODERS: &[(u8, Decoder)] = &[
    (b'Q', |f| {
        query::decode(f).ok().map(|t| query::encode(t).to_vec())
    }),
    (b'D', |f| {
        data_row::decode(f)
            .ok()
            .map(|c| data_row::encode(&c).to_vec())
    }),
    (b'T', |f| {
        row_description::decode(f)
            .ok()
            .map(|fs| row_description::encode(&fs).to_vec())
    }),
    (b'P', |f| {
        let p = parse::decode(f).ok()?;
        let mut body = Vec::new();
        body.put_slice(p.name.as_bytes());
        body.put_u8(0);
        body.put_slice(p.query.as_bytes());
        body.put_u8(0);
        body.put_i16(p.param_types.len() as i16);
        for t in &p.param_types {
            body.put_u32(*t);
        }
        Some(frame(b'P', &body))
    }),
    (b'S', |f| {
        let (name, value) = parameter_status::decode(f).ok()?;
        Some(frame(b'S', format!("{name}\0{value}\0").as_bytes()))
    }),
];

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.put_i32((body.len() + 4) as i32);
    f.put_slice(body);
    f
}

fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

/// Asserts `f` is one frame of type `tag` whose length field matches.
fn well_formed(f: &[u8], tag: u8) {
    assert_eq!(f[0], tag);
    let length = i32::from_be_bytes(f[1..5].try_into().unwrap());
    assert_eq!(
        length as usize + 1,
        f.len(),
        "length field disagrees with the frame"
    );
}

fn decode(which: u8, body: &[u8]) {
    let (tag, decoder) = DECODERS[which as usize % DECODERS.len()];
    let f = frame(tag, body);
    if let Some(again) = decoder(&f) {
        assert_eq!(
            again, f,
            "{:?} accepted a frame it does not re-encode identically",
            tag as char
        );
    }
}

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
            Ok(n) => assert_eq!(
                r.remaining(),
                before - n,
                "{op:?} consumed the wrong amount"
            ),
            Err(_) => assert_eq!(r.remaining(), before, "{op:?} consumed bytes and failed"),
        }
    }
}

const CODES: &[&str] = &[
    sqlstate::PROTOCOL_VIOLATION,
    sqlstate::UNABLE_TO_CONNECT,
    sqlstate::TOO_MANY_CONNECTIONS,
    sqlstate::FEATURE_NOT_SUPPORTED,
    sqlstate::ADMIN_SHUTDOWN,
    sqlstate::INVALID_AUTHORIZATION,
];

/// Splits an ErrorResponse frame into its (field type, value) pairs.
fn error_fields(f: &[u8]) -> Vec<(u8, Vec<u8>)> {
    well_formed(f, b'E');
    let mut r = Reader::new(&f[5..]);
    let mut out = Vec::new();
    loop {
        let tag = r.u8().expect("field list not terminated");
        if tag == 0 {
            r.finish().expect("bytes after the field list");
            return out;
        }
        let rest = r.rest();
        let end = rest
            .iter()
            .position(|b| *b == 0)
            .expect("field value not terminated");
        out.push((tag, rest[..end].to_vec()));
        r = Reader::new(&rest[end + 1..]);
    }
}

fn error(fatal: bool, code: u8, message: String) {
    if has_nul(&message) {
        return;
    }
    let code = CODES[code as usize % CODES.len()];
    let (msg, severity) = if fatal {
        (ErrorResponse::fatal(code, message.clone()), "FATAL")
    } else {
        (ErrorResponse::error(code, message.clone()), "ERROR")
    };
    assert_eq!(msg.severity == Severity::Fatal, fatal);
    let got = error_fields(&msg.to_bytes());
    let tags: Vec<u8> = got.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, b"SVCM", "fields of an ErrorResponse");
    assert_eq!(got[0].1, severity.as_bytes());
    assert_eq!(got[1].1, severity.as_bytes());
    assert_eq!(got[2].1, code.as_bytes());
    assert_eq!(
        got[3].1,
        message.as_bytes(),
        "message field does not read back"
    );
}

fn query_round_trip(text: &str) {
    if has_nul(text) {
        return;
    }
    let f = query::encode(text);
    well_formed(&f, b'Q');
    assert_eq!(query::decode(&f), Ok(text));
}

fn data_row_round_trip(cells: &[Option<Vec<u8>>]) {
    let f = data_row::encode(cells);
    well_formed(&f, b'D');
    let back = data_row::decode(&f).expect("encoded DataRow does not decode");
    let want: Vec<Option<&[u8]>> = cells.iter().map(|c| c.as_deref()).collect();
    assert_eq!(back, want);
}

fn row_description_round_trip(fields: &[ArbField]) {
    if fields.iter().any(|f| has_nul(&f.name)) {
        return;
    }
    let fields: Vec<row_description::Field> = fields
        .iter()
        .map(|f| row_description::Field {
            name: f.name.clone(),
            table_oid: f.table_oid,
            column: f.column,
            type_oid: f.type_oid,
            type_size: f.type_size,
            type_modifier: f.type_modifier,
            format: f.format,
        })
        .collect();
    let f = row_description::encode(&fields);
    well_formed(&f, b'T');
    assert_eq!(
        row_description::decode(&f).expect("encoded RowDescription does not decode"),
        fields
    );
}

fuzz_target!(|case: Case| match case {
    Case::Decode { which, body } => decode(which, &body),
    Case::DecodeRaw { which, bytes } => {
        let _ = DECODERS[which as usize % DECODERS.len()].1(&bytes);
    }
    Case::Read { ops, bytes } => read(&ops, &bytes),
    Case::Error {
        fatal,
        code,
        message,
    } => error(fatal, code, message),
    Case::Query { text } => query_round_trip(&text),
    Case::DataRow { cells } => data_row_round_trip(&cells),
    Case::RowDescription { fields } => row_description_round_trip(&fields),
});
