//! COPY data streams. Rows arrive split across CopyData messages however
//! the sender chose; [`Transformer`] reassembles them, hands the fields of
//! configured columns to a mapping function (encrypt on the way in, decrypt
//! on the way out) and rebuilds each row in the same format, byte for byte
//! except for those fields. Memory is bounded by the largest single row.
//!
//! - [`text`]: PostgreSQL's `text` and `csv` formats.
//! - [`binary`]: the `binary` format.

pub mod binary;
pub mod text;

use bytes::BytesMut;

/// The data format of a COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// Tab-separated text with backslash escapes.
    Text,
    /// Comma-separated values with quoting.
    Csv,
    /// PostgreSQL's binary tuple format.
    Binary,
}

/// The options of a COPY that decide how its rows are read and written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// Data format.
    pub format: CopyFormat,
    /// Field separator.
    pub delimiter: u8,
    /// The string that stands for NULL.
    pub null: Vec<u8>,
    /// CSV quote character.
    pub quote: u8,
    /// CSV escape character (defaults to the quote).
    pub escape: u8,
    /// The first line is a header (text and CSV).
    pub header: bool,
    /// Per column: CSV `FORCE_NULL` (a quoted null string is NULL too).
    pub force_null: Vec<bool>,
    /// Per column: CSV `FORCE_NOT_NULL` (an unquoted null string is not NULL).
    pub force_not_null: Vec<bool>,
}

impl CopyOptions {
    /// PostgreSQL's defaults for a format.
    pub fn defaults(format: CopyFormat) -> CopyOptions {
        let csv = format == CopyFormat::Csv;
        CopyOptions {
            format,
            delimiter: if csv { b',' } else { b'\t' },
            null: if csv { Vec::new() } else { b"\\N".to_vec() },
            quote: b'"',
            escape: b'"',
            header: false,
            force_null: Vec::new(),
            force_not_null: Vec::new(),
        }
    }
}

/// A row pgveil cannot read or a value it cannot map. Messages carry the
/// line number and column name, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CopyError {
    /// SQLSTATE to report.
    pub sqlstate: &'static str,
    /// Message without the `pgveil:` prefix.
    pub message: String,
}

impl CopyError {
    /// A malformed COPY row (SQLSTATE 22P04, bad_copy_file_format).
    pub fn format(message: impl Into<String>) -> CopyError {
        CopyError {
            sqlstate: "22P04",
            message: message.into(),
        }
    }
}

/// Maps one field of a configured column: `(column index, value in the
/// COPY's own field representation)` to the new value in that
/// representation (already unescaped; the transformer escapes it again).
pub type FieldMap<'a> = dyn FnMut(usize, &[u8]) -> Result<Vec<u8>, CopyError> + 'a;

/// Reassembles rows from CopyData payloads and rewrites mapped columns.
#[derive(Debug)]
pub struct Transformer {
    options: CopyOptions,
    /// Which columns to map; its length is the number of columns a row has.
    mapped: Vec<bool>,
    /// Check the number of fields of every row (data from the client).
    check_count: bool,
    /// Column names, for error messages.
    names: Vec<String>,
    carry: BytesMut,
    /// Rows (lines, for text and CSV) seen so far.
    line: u64,
    /// The end-of-data marker or binary trailer was seen: the rest passes.
    ended: bool,
    binary_header: bool,
    max_row: usize,
}

impl Transformer {
    /// A transformer for rows of `names.len()` columns; `mapped[i]` says
    /// whether column `i` goes through the map. `check_count` makes a row
    /// with the wrong number of fields an error (as PostgreSQL reports it).
    pub fn new(
        options: CopyOptions,
        names: Vec<String>,
        mapped: Vec<bool>,
        check_count: bool,
        max_row: usize,
    ) -> Transformer {
        Transformer {
            options,
            mapped,
            check_count,
            names,
            carry: BytesMut::new(),
            line: 0,
            ended: false,
            binary_header: false,
            max_row,
        }
    }

    /// Feeds one CopyData payload; appends every complete row, rewritten,
    /// to `out`. An incomplete row waits for the next payload.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        map: &mut FieldMap<'_>,
    ) -> Result<(), CopyError> {
        if self.ended {
            // Data from the client after its end marker never reaches the
            // database (a newer server might read it); the server's own
            // output passes.
            if !self.check_count {
                out.extend_from_slice(input);
            }
            return Ok(());
        }
        self.carry.extend_from_slice(input);
        let mut start = 0usize;
        loop {
            let rest = &self.carry[start..];
            let (used, done) = match self.options.format {
                CopyFormat::Binary => {
                    if !self.binary_header {
                        match binary::header_len(rest)? {
                            Some(n) => {
                                out.extend_from_slice(&rest[..n]);
                                self.binary_header = true;
                                start += n;
                                continue;
                            }
                            None => break,
                        }
                    }
                    match binary::row(rest, &self.mapped, self.check_count, out, map)? {
                        Some(r) => r,
                        None => break,
                    }
                }
                _ => {
                    let Some(end) = text::record_end(&self.options, rest) else {
                        break;
                    };
                    self.line += 1;
                    let record = &rest[..end];
                    let header = self.options.header && self.line == 1;
                    let done = text::is_end_marker(record);
                    if header || (done && !self.check_count) {
                        out.extend_from_slice(record);
                    } else if done {
                        // The client's end marker: the COPY ends at its
                        // CopyDone either way.
                    } else {
                        text::row(
                            &self.options,
                            record,
                            &self.mapped,
                            self.check_count.then_some(&self.names[..]),
                            out,
                            map,
                        )
                        .map_err(|e| self.at_line(e))?;
                    }
                    (end, done)
                }
            };
            start += used;
            if done {
                self.ended = true;
                if !self.check_count {
                    out.extend_from_slice(&self.carry[start..]);
                }
                start = self.carry.len();
                break;
            }
        }
        let _ = self.carry.split_to(start);
        if self.carry.len() > self.max_row {
            return Err(CopyError::format(format!(
                "a COPY row longer than {} bytes (limits.max_inspected_frame_bytes)",
                self.max_row
            )));
        }
        Ok(())
    }

    /// At CopyDone: the last row may lack its line end.
    pub fn finish(&mut self, out: &mut Vec<u8>, map: &mut FieldMap<'_>) -> Result<(), CopyError> {
        if self.ended || self.carry.is_empty() {
            return Ok(());
        }
        if self.options.format == CopyFormat::Binary {
            return Err(CopyError::format("COPY binary data ends inside a row"));
        }
        self.line += 1;
        let record = std::mem::take(&mut self.carry);
        if text::unterminated_quote(&self.options, &record) {
            return Err(self.at_line(CopyError::format("unterminated CSV quoted field")));
        }
        let marker = text::is_end_marker(&record);
        if (self.options.header && self.line == 1) || (marker && !self.check_count) {
            out.extend_from_slice(&record);
            return Ok(());
        }
        if marker {
            return Ok(());
        }
        text::row(
            &self.options,
            &record,
            &self.mapped,
            self.check_count.then_some(&self.names[..]),
            out,
            map,
        )
        .map_err(|e| self.at_line(e))
    }

    fn at_line(&self, e: CopyError) -> CopyError {
        CopyError {
            sqlstate: e.sqlstate,
            message: format!("{} (COPY line {})", e.message, self.line),
        }
    }
}
