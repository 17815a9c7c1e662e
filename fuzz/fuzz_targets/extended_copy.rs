//! The extended-protocol decoders (Bind, Describe/Close, Execute,
//! ParameterDescription), PostgreSQL array values, and the COPY row
//! transformer in every format, on arbitrary input split at an arbitrary
//! point. Checks that nothing panics, and that a Bind pgveil decodes
//! re-encodes to the same bytes when its formats are already one per
//! parameter.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgveil::copy::{CopyFormat, CopyOptions, Transformer};
use pgveil::protocol::array;
use pgveil::protocol::messages::extended;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let mut frame = vec![b'B'];
    frame.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    frame.extend_from_slice(body);
    if let Ok(b) = extended::decode_bind(&frame)
        && b.param_formats.len() == b.params.len()
    {
        let params: Vec<(i16, Option<&[u8]>)> =
            b.param_formats.iter().copied().zip(b.params.iter().copied()).collect();
        let again = extended::encode_bind(b.portal, b.statement, &params, &b.result_formats);
        assert_eq!(&again[..], &frame[..]);
    }
    let _ = extended::decode_target(&frame);
    let _ = extended::decode_execute(&frame);
    let _ = extended::decode_parameter_description(&frame);
    let _ = array::parse_text(body);
    let _ = array::parse_binary(body);

    let format = match selector % 3 {
        0 => CopyFormat::Text,
        1 => CopyFormat::Csv,
        _ => CopyFormat::Binary,
    };
    let mut options = CopyOptions::defaults(format);
    options.header = selector & 4 != 0;
    let columns = usize::from(selector >> 3) % 5 + 1;
    let mut t = Transformer::new(
        options,
        (0..columns).map(|i| format!("c{i}")).collect(),
        (0..columns).map(|i| i % 2 == 0).collect(),
        selector & 8 != 0,
        1 << 16,
    );
    let cut = usize::from(selector).min(body.len());
    let mut out = Vec::new();
    let mut map = |_: usize, v: &[u8]| Ok(v.iter().rev().copied().collect());
    if t.feed(&body[..cut], &mut out, &mut map).is_ok() && t.feed(&body[cut..], &mut out, &mut map).is_ok() {
        let _ = t.finish(&mut out, &mut map);
    }
});
