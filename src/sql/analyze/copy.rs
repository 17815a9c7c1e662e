//! `COPY`: which fields of its rows hold encrypted columns, and its format
//! and options as PostgreSQL reads them, so that the session can rewrite
//! the fields of each row in flight. Only `FROM STDIN` and `TO STDOUT`
//! carry data through pgveil.

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, ObjectName,
};

use super::names::norm;
use super::{Class, CopyPlan, Ctx, R, RelSource};
use crate::catalog::{Encrypted, RelationKind};
use crate::copy::{CopyFormat, CopyOptions};
use crate::sql::refusal::Refusal;

/// The fields of a COPY: each column's name and the encrypted column it is.
type Fields = Vec<(String, Option<Encrypted>)>;

/// A refusal of a COPY.
fn refuse(what: String) -> Refusal {
    Refusal::general(what, "copy")
}

impl<'c, 'a> Ctx<'c, 'a> {
    /// `COPY`: which fields of its rows hold encrypted columns, and how its
    /// rows are written. Only STDIN and STDOUT carry data through pgveil;
    /// a server-side file or program would hold plaintext or ciphertext
    /// that pgveil never sees.
    pub(super) fn copy(
        &mut self,
        source: &CopySource,
        to: bool,
        target: &CopyTarget,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
        inline: bool,
    ) -> R<()> {
        let Some(columns) = self.copy_fields(source, to)? else {
            return Ok(());
        };
        if columns.iter().all(|(_, e)| e.is_none()) {
            return Ok(());
        }
        for e in columns.iter().filter_map(|(_, e)| e.as_ref()) {
            self.check_storage(e)?;
        }
        if inline {
            return Err(refuse("COPY data inline in the statement text".into()));
        }
        match (to, target) {
            (false, CopyTarget::Stdin) | (true, CopyTarget::Stdout) => {}
            _ => {
                return Err(refuse(format!(
                    "COPY {} a server file or program on encrypted columns (the data would not pass through pgveil; use {} through pgveil)",
                    if to { "TO" } else { "FROM" },
                    if to { "TO STDOUT" } else { "FROM STDIN" }
                )));
            }
        }
        let opts = copy_options(options, legacy, &columns)?;
        self.copy = Some(std::sync::Arc::new(CopyPlan {
            to,
            options: opts,
            columns,
        }));
        Ok(())
    }

    /// The fields of a COPY's rows; `None` for a table pgveil does not know
    /// and that names nothing watched (nothing to rewrite).
    fn copy_fields(&mut self, source: &CopySource, to: bool) -> R<Option<Fields>> {
        match source {
            CopySource::Table {
                table_name,
                columns,
            } => self.copy_table_fields(table_name, columns),
            CopySource::Query(q) => {
                if !to {
                    return Err(refuse("COPY FROM a query".into()));
                }
                match self.query(q, None)? {
                    Some(outs) => Ok(Some(
                        outs.into_iter()
                            .map(|o| {
                                let enc = match o.class {
                                    Class::Enc { col, .. } => Some(col),
                                    _ => None,
                                };
                                (o.name, enc)
                            })
                            .collect(),
                    )),
                    None => Err(refuse(
                        "COPY (query) TO whose columns pgveil cannot line up".into(),
                    )),
                }
            }
        }
    }

    /// The fields of `COPY table (columns)`: the columns listed, or every
    /// column that is not generated.
    fn copy_table_fields(
        &mut self,
        table_name: &ObjectName,
        columns: &[Ident],
    ) -> R<Option<Fields>> {
        let rel = match self.relation(table_name)? {
            RelSource::Catalog(r) if r.kind == RelationKind::Table => r,
            RelSource::Catalog(r) => {
                return Err(refuse(format!(
                    "COPY of view {}.{} over encrypted columns (use COPY (SELECT ...) TO STDOUT)",
                    r.schema, r.name
                )));
            }
            _ => {
                if self.watched.mentioned_in(&table_name.to_string()) {
                    return Err(refuse(format!(
                        "COPY of {table_name}, which pgveil cannot resolve"
                    )));
                }
                return Ok(None);
            }
        };
        if columns.is_empty() {
            return Ok(Some(
                rel.columns
                    .iter()
                    .filter(|c| !c.generated)
                    .map(|c| (c.name.clone(), c.encrypted.clone()))
                    .collect(),
            ));
        }
        let mut out = Vec::with_capacity(columns.len());
        for ident in columns {
            let name = norm(ident);
            let Some(c) = rel.columns.iter().find(|c| c.name == name) else {
                return Err(refuse(format!(
                    "COPY names column {name}, which {}.{} does not have",
                    rel.schema, rel.name
                )));
            };
            out.push((c.name.clone(), c.encrypted.clone()));
        }
        Ok(Some(out))
    }
}

/// COPY options as PostgreSQL reads them (new and pre-9.0 syntax).
fn copy_options(
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
    columns: &[(String, Option<Encrypted>)],
) -> R<CopyOptions> {
    let mut opts = CopyOptions::defaults(copy_format(options, legacy)?);
    let mut escape_set = false;
    apply_options(&mut opts, &mut escape_set, options, columns)?;
    apply_legacy_options(&mut opts, &mut escape_set, legacy, columns)?;
    if !escape_set {
        opts.escape = opts.quote;
    }
    Ok(opts)
}

/// The format a COPY names (text unless it says otherwise).
fn copy_format(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> R<CopyFormat> {
    let mut format = CopyFormat::Text;
    for o in options {
        if let CopyOption::Format(f) = o {
            format = match f.value.to_lowercase().as_str() {
                "text" => CopyFormat::Text,
                "csv" => CopyFormat::Csv,
                "binary" => CopyFormat::Binary,
                other => return Err(refuse(format!("COPY format {other}"))),
            };
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => format = CopyFormat::Binary,
            CopyLegacyOption::Csv(_) => format = CopyFormat::Csv,
            _ => {}
        }
    }
    Ok(format)
}

/// The options of `COPY ... WITH (...)`.
fn apply_options(
    opts: &mut CopyOptions,
    escape_set: &mut bool,
    options: &[CopyOption],
    columns: &[(String, Option<Encrypted>)],
) -> R<()> {
    for o in options {
        match o {
            CopyOption::Format(_) | CopyOption::Freeze(_) | CopyOption::ForceQuote(_) => {}
            CopyOption::Delimiter(c) => opts.delimiter = single(*c, "delimiter")?,
            CopyOption::Null(s) => opts.null = s.as_bytes().to_vec(),
            CopyOption::Header(h) => opts.header = *h,
            CopyOption::Quote(c) => opts.quote = single(*c, "quote")?,
            CopyOption::Escape(c) => {
                opts.escape = single(*c, "escape")?;
                *escape_set = true;
            }
            CopyOption::ForceNotNull(n) => opts.force_not_null = index(n, columns)?,
            CopyOption::ForceNull(n) => opts.force_null = index(n, columns)?,
            CopyOption::Encoding(e) => {
                let e = e.to_uppercase().replace(['-', '_'], "");
                if e != "UTF8" && e != "UNICODE" {
                    return Err(refuse(format!(
                        "COPY with ENCODING {e} on encrypted columns (send UTF8)"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The options of the pre-9.0 syntax (`COPY ... CSV HEADER`).
fn apply_legacy_options(
    opts: &mut CopyOptions,
    escape_set: &mut bool,
    legacy: &[CopyLegacyOption],
    columns: &[(String, Option<Encrypted>)],
) -> R<()> {
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => {}
            CopyLegacyOption::Delimiter(c) => opts.delimiter = single(*c, "delimiter")?,
            CopyLegacyOption::Null(s) => opts.null = s.as_bytes().to_vec(),
            CopyLegacyOption::Header => opts.header = true,
            CopyLegacyOption::Csv(csv) => {
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => opts.header = true,
                        CopyLegacyCsvOption::Quote(q) => opts.quote = single(*q, "quote")?,
                        CopyLegacyCsvOption::Escape(e) => {
                            opts.escape = single(*e, "escape")?;
                            *escape_set = true;
                        }
                        CopyLegacyCsvOption::ForceNotNull(n) => {
                            opts.force_not_null = index(n, columns)?;
                        }
                        CopyLegacyCsvOption::ForceQuote(_) => {}
                    }
                }
            }
            other => return Err(refuse(format!("COPY option {other}"))),
        }
    }
    Ok(())
}

/// A one-byte option (delimiter, quote, escape), which must be ASCII.
fn single(c: char, what: &str) -> R<u8> {
    u8::try_from(u32::from(c))
        .ok()
        .filter(u8::is_ascii)
        .ok_or_else(|| refuse(format!("a non-ASCII COPY {what}")))
}

/// Per field, whether an option's column list (`FORCE_NULL (a, b)`) names it.
fn index(names: &[Ident], columns: &[(String, Option<Encrypted>)]) -> R<Vec<bool>> {
    let mut v = vec![false; columns.len()];
    for n in names {
        let name = norm(n);
        let i = columns
            .iter()
            .position(|(c, _)| *c == name)
            .ok_or_else(|| refuse(format!("COPY option names column {name}, not copied")))?;
        v[i] = true;
    }
    Ok(v)
}
