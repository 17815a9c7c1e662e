//! Splicing ciphertext into the original statement text. Only the
//! replaced literals change; every other byte of the client's SQL reaches
//! the database as sent.

use std::ops::Range;

use crate::config::Storage;

/// Replaces non-overlapping byte ranges of `text`. Returns `None` when
/// ranges overlap or fall outside the text.
pub fn splice(text: &str, mut replacements: Vec<(Range<usize>, String)>) -> Option<String> {
    replacements.sort_by_key(|(r, _)| r.start);
    let mut out = String::with_capacity(text.len() + replacements.len() * 80);
    let mut at = 0;
    for (range, with) in replacements {
        if range.start < at || range.end > text.len() || range.start > range.end {
            return None;
        }
        out.push_str(text.get(at..range.start)?);
        out.push_str(&with);
        at = range.end;
    }
    out.push_str(text.get(at..)?);
    Some(out)
}

/// The SQL literal for a stored value: `'\x…'::bytea` (or `E'\\x…'::bytea`
/// when `standard_conforming_strings` is off), or `'…'::text` for text
/// storage (prefix and base64 need no escaping).
pub fn ciphertext_literal(stored: &[u8], storage: Storage, standard_strings: bool) -> String {
    match storage {
        Storage::Bytea => {
            let hex = crate::crypto::envelope::bytea_to_hex(stored);
            if standard_strings {
                format!("'{hex}'::bytea")
            } else {
                format!("E'\\{hex}'::bytea")
            }
        }
        Storage::Text => format!("'{}'::text", String::from_utf8_lossy(stored)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_in_order() {
        let t = "select 'a', 'b'";
        let out = splice(t, vec![(12..15, "X".into()), (7..10, "Y".into())]).unwrap();
        assert_eq!(out, "select Y, X");
    }

    #[test]
    fn rejects_overlap() {
        assert!(splice("abcdef", vec![(0..3, "x".into()), (2..4, "y".into())]).is_none());
    }

    #[test]
    fn bytea_literals_for_both_string_modes() {
        assert_eq!(
            ciphertext_literal(&[1, 0xab], Storage::Bytea, true),
            "'\\x01ab'::bytea"
        );
        assert_eq!(
            ciphertext_literal(&[1, 0xab], Storage::Bytea, false),
            "E'\\\\x01ab'::bytea"
        );
    }
}
