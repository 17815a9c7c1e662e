//! PostgreSQL's `text` and `csv` COPY formats: finding where a record ends,
//! splitting it into fields, and writing a field back.

use super::{CopyError, CopyFormat, CopyOptions, FieldMap};

/// Bytes up to and including the end of the first complete record in
/// `buf`, or `None` if it is not complete yet. Text: an unescaped line
/// feed. CSV: a line feed outside quotes.
pub fn record_end(o: &CopyOptions, buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    let mut quoted = false;
    while i < buf.len() {
        let c = buf[i];
        match o.format {
            CopyFormat::Csv => {
                if quoted && o.escape != o.quote && c == o.escape && i + 1 < buf.len() {
                    i += 2;
                    continue;
                }
                if quoted && o.escape != o.quote && c == o.escape {
                    return None;
                }
                if c == o.quote {
                    quoted = !quoted;
                } else if c == b'\n' && !quoted {
                    return Some(i + 1);
                }
            }
            _ => {
                if c == b'\\' {
                    if i + 1 >= buf.len() {
                        return None;
                    }
                    i += 2;
                    continue;
                }
                if c == b'\n' {
                    return Some(i + 1);
                }
            }
        }
        i += 1;
    }
    None
}

/// Whether data ends inside a quoted CSV field.
pub fn unterminated_quote(o: &CopyOptions, buf: &[u8]) -> bool {
    if o.format != CopyFormat::Csv {
        return false;
    }
    let mut quoted = false;
    let mut i = 0;
    while i < buf.len() {
        let c = buf[i];
        if quoted && o.escape != o.quote && c == o.escape {
            i += 2;
            continue;
        }
        if c == o.quote {
            quoted = !quoted;
        }
        i += 1;
    }
    quoted
}

/// The end-of-data line `\.`.
pub fn is_end_marker(record: &[u8]) -> bool {
    let body = strip_eol(record).0;
    body == b"\\."
}

/// A record without its line end, and the line end.
fn strip_eol(record: &[u8]) -> (&[u8], &[u8]) {
    if record.ends_with(b"\r\n") {
        record.split_at(record.len() - 2)
    } else if record.ends_with(b"\n") {
        record.split_at(record.len() - 1)
    } else {
        (record, &[])
    }
}

/// One field as it appears in the record.
struct Field<'a> {
    raw: &'a [u8],
    quoted: bool,
}

fn split_text<'a>(o: &CopyOptions, line: &'a [u8]) -> Vec<Field<'a>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < line.len() {
        if line[i] == b'\\' {
            i += 2;
            continue;
        }
        if line[i] == o.delimiter {
            fields.push(Field {
                raw: &line[start..i],
                quoted: false,
            });
            start = i + 1;
        }
        i += 1;
    }
    fields.push(Field {
        raw: &line[start.min(line.len())..],
        quoted: false,
    });
    fields
}

fn split_csv<'a>(o: &CopyOptions, line: &'a [u8]) -> Vec<Field<'a>> {
    let mut fields = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut quoted = false;
    let mut saw_quote = false;
    while i < line.len() {
        let c = line[i];
        if quoted && o.escape != o.quote && c == o.escape {
            i += 2;
            continue;
        }
        if c == o.quote {
            quoted = !quoted;
            saw_quote = true;
        } else if c == o.delimiter && !quoted {
            fields.push(Field {
                raw: &line[start..i],
                quoted: saw_quote,
            });
            start = i + 1;
            saw_quote = false;
        }
        i += 1;
    }
    fields.push(Field {
        raw: &line[start.min(line.len())..],
        quoted: saw_quote,
    });
    fields
}

/// A text-format field's value, escapes resolved.
pub fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' || i + 1 >= raw.len() {
            out.push(c);
            i += 1;
            continue;
        }
        let n = raw[i + 1];
        i += 2;
        match n {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(n - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d) if d.is_ascii_hexdigit() => {
                            v = v * 16 + (*d as char).to_digit(16).unwrap_or(0);
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

/// Writes a value as a text-format field, as PostgreSQL's COPY TO does.
pub fn escape_text(o: &CopyOptions, value: &[u8], out: &mut Vec<u8>) {
    if !value
        .iter()
        .any(|&c| c < 0x20 || c == b'\\' || c == o.delimiter)
    {
        out.extend_from_slice(value);
        return;
    }
    for &c in value {
        match c {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            8 => out.extend_from_slice(b"\\b"),
            12 => out.extend_from_slice(b"\\f"),
            11 => out.extend_from_slice(b"\\v"),
            c if c == o.delimiter => {
                out.push(b'\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
}

/// A CSV field's value, quotes and escapes resolved.
fn unquote_csv(o: &CopyOptions, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut quoted = false;
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if quoted
            && c == o.escape
            && raw
                .get(i + 1)
                .is_some_and(|n| *n == o.quote || *n == o.escape)
        {
            // An escaped quote or escape (with ESCAPE = QUOTE, a doubled quote).
            out.push(raw[i + 1]);
            i += 2;
            continue;
        }
        if c == o.quote {
            quoted = !quoted;
        } else {
            out.push(c);
        }
        i += 1;
    }
    out
}

/// Writes a value as a CSV field, quoted when PostgreSQL would quote it or
/// when `force` is set.
pub fn quote_csv(o: &CopyOptions, value: &[u8], force: bool, out: &mut Vec<u8>) {
    let needs = force
        || value == o.null.as_slice()
        || value == b"\\."
        || value
            .iter()
            .any(|c| *c == o.delimiter || *c == o.quote || *c == b'\n' || *c == b'\r');
    if !needs {
        out.extend_from_slice(value);
        return;
    }
    out.push(o.quote);
    for &c in value {
        if c == o.quote || c == o.escape {
            out.push(o.escape);
        }
        out.push(c);
    }
    out.push(o.quote);
}

/// Rewrites one record: mapped, non-NULL fields go through `map` (their
/// value unescaped; the result escaped again); everything else is copied
/// as it was. With `names`, the field count is checked against them.
pub fn row(
    o: &CopyOptions,
    record: &[u8],
    mapped: &[bool],
    names: Option<&[String]>,
    out: &mut Vec<u8>,
    map: &mut FieldMap<'_>,
) -> Result<(), CopyError> {
    let (line, eol) = strip_eol(record);
    if o.format == CopyFormat::Text
        && line.contains(&b'\r')
        && !line.windows(2).any(|w| w == b"\\\r")
    {
        return Err(CopyError::format(
            "literal carriage return found in data (use \"\\r\")",
        ));
    }
    let fields = match o.format {
        CopyFormat::Csv => split_csv(o, line),
        _ => split_text(o, line),
    };
    if let Some(names) = names {
        if fields.len() > names.len() {
            return Err(CopyError::format("extra data after last expected column"));
        }
        if fields.len() < names.len() {
            let missing = names.get(fields.len()).map(String::as_str).unwrap_or("?");
            return Err(CopyError::format(format!(
                "missing data for column \"{missing}\""
            )));
        }
    }
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(o.delimiter);
        }
        if !mapped.get(i).copied().unwrap_or(false) {
            out.extend_from_slice(f.raw);
            continue;
        }
        let is_null = match o.format {
            CopyFormat::Csv => {
                let forced_not = o.force_not_null.get(i).copied().unwrap_or(false);
                let forced = o.force_null.get(i).copied().unwrap_or(false);
                (!f.quoted && f.raw == o.null.as_slice() && !forced_not)
                    || (f.quoted && forced && unquote_csv(o, f.raw) == o.null)
            }
            _ => f.raw == o.null.as_slice(),
        };
        if is_null {
            out.extend_from_slice(f.raw);
            continue;
        }
        // Most fields need no unescaping: pass them as they are.
        let owned;
        let value: &[u8] = match o.format {
            CopyFormat::Csv if f.quoted => {
                owned = unquote_csv(o, f.raw);
                &owned
            }
            CopyFormat::Text if f.raw.contains(&b'\\') => {
                owned = unescape_text(f.raw);
                &owned
            }
            _ => f.raw,
        };
        let mapped_value = map(i, value)?;
        match o.format {
            CopyFormat::Csv => quote_csv(o, &mapped_value, f.quoted, out),
            _ => escape_text(o, &mapped_value, out),
        }
    }
    out.extend_from_slice(eol);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(_: usize, v: &[u8]) -> Result<Vec<u8>, CopyError> {
        Ok(v.to_ascii_uppercase())
    }

    fn rewrite(o: &CopyOptions, record: &str, mapped: &[bool]) -> String {
        let mut out = Vec::new();
        row(o, record.as_bytes(), mapped, None, &mut out, &mut upper).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_records_and_escapes() {
        let o = CopyOptions::defaults(CopyFormat::Text);
        assert_eq!(record_end(&o, b"a\tb\nc"), Some(4));
        assert_eq!(record_end(&o, b"a\\\nb\n"), Some(5));
        assert_eq!(record_end(&o, b"a\\"), None);
        assert_eq!(
            rewrite(&o, "1\tab\\tc\\\\d\t\\N\n", &[false, true, true]),
            "1\tAB\\tC\\\\D\t\\N\n"
        );
        assert_eq!(unescape_text(b"\\101\\x42\\q"), b"ABq");
        assert!(is_end_marker(b"\\.\r\n"));
    }

    #[test]
    fn csv_records_quotes_and_nulls() {
        let o = CopyOptions::defaults(CopyFormat::Csv);
        assert_eq!(record_end(&o, b"1,\"a\nb\",c\nx"), Some(10));
        assert_eq!(record_end(&o, b"1,\"a\nb"), None);
        assert_eq!(
            rewrite(&o, "1,\"x,y\",,\"\"\r\n", &[false, true, true, true]),
            "1,\"X,Y\",,\"\"\r\n"
        );
        assert_eq!(
            rewrite(&o, "1,\"say \"\"hi\"\"\"\n", &[false, true]),
            "1,\"SAY \"\"HI\"\"\"\n"
        );
        let mut forced = o.clone();
        forced.force_null = vec![true];
        let mut out = Vec::new();
        row(&forced, b"\"\"\n", &[true], None, &mut out, &mut |_, _| {
            Err(CopyError::format("mapped"))
        })
        .unwrap();
        assert_eq!(out, b"\"\"\n");
        assert!(unterminated_quote(&o, b"1,\"abc"));
    }

    #[test]
    fn field_counts_are_checked() {
        let o = CopyOptions::defaults(CopyFormat::Text);
        let names = vec!["a".to_string(), "b".to_string()];
        let mut out = Vec::new();
        let e = row(
            &o,
            b"1\n",
            &[false, true],
            Some(&names),
            &mut out,
            &mut upper,
        )
        .unwrap_err();
        assert!(e.message.contains("missing data for column \"b\""));
        let e = row(
            &o,
            b"1\t2\t3\n",
            &[false, true],
            Some(&names),
            &mut out,
            &mut upper,
        )
        .unwrap_err();
        assert!(e.message.contains("extra data"));
    }
}
