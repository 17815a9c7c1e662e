//! ParameterStatus (B): a run-time setting the server reports
//! (`DateStyle`, `TimeZone`, `standard_conforming_strings`...).

use crate::protocol::reader::{ReadError, Reader};

/// Name and value of a whole ParameterStatus frame.
pub fn decode(frame: &[u8]) -> Result<(&str, &str), ReadError> {
    let mut r = Reader::new(frame);
    let _tag = r.u8()?;
    let _len = r.i32()?;
    let name = r.cstr()?;
    let value = r.cstr()?;
    r.finish()?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes() {
        assert_eq!(
            decode(b"S\x00\x00\x00\x0bTZ\0UTC\0").unwrap(),
            ("TZ", "UTC")
        );
    }
}
