//! Parameters (`$n`): where they are written, the casts on them, and
//! their binding to an encrypted column, which decides how the session
//! encodes them at Bind and how the statement text around them is
//! rewritten (storage-type casts, every stored form of a value).

use sqlparser::ast::{DataType, Expr};

use super::compare::{cast_fits, refuse_col, wrap_forms};
use super::{CastSite, Class, Ctx, Forms, ParamBinding, R};
use crate::catalog::{Encrypted, StorageState};
use crate::config::ValueType;
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// A parameter `$n`: recorded where it is written, so that it can be
    /// rewritten if it is bound to a column with several stored forms.
    pub(super) fn placeholder(&mut self, e: &Expr, p: &str) -> R<Class> {
        let n = p
            .strip_prefix('$')
            .and_then(|d| d.parse::<usize>().ok())
            // PostgreSQL allows at most 65535 parameters.
            .filter(|n| (1..=65_535).contains(n))
            .ok_or_else(|| Refusal::general("a parameter pgveil cannot read", "unparsed"))?;
        if let Some(range) = self.extent(e).and_then(|(a, b)| self.source.range(a, b)) {
            self.placeholders.entry(n).or_default().push(range);
        }
        Ok(Class::Params(vec![n], Vec::new()))
    }

    /// A cast on a parameter (or on a cast of one): the cast sites its
    /// class carries, so that a bound parameter's casts can be rewritten.
    pub(super) fn cast_params(
        &mut self,
        e: &Expr,
        expr: &Expr,
        data_type: &DataType,
        ns: Vec<usize>,
        casts: Vec<CastSite>,
    ) -> R<Class> {
        let Some(range) = self.extent(e).and_then(|(a, b)| self.source.range(a, b)) else {
            return Err(Refusal::general(
                "a cast parameter pgveil cannot locate",
                "unparsed",
            ));
        };
        let to = data_type.to_string().to_lowercase();
        let Some(inner) = self.extent(expr).and_then(|(a, b)| self.source.range(a, b)) else {
            return Err(Refusal::general(
                "a cast parameter pgveil cannot locate",
                "unparsed",
            ));
        };
        // A cast of a cast (`($1::text)::varchar`) is rewritten
        // as one, around the innermost expression; casts written
        // elsewhere (inside a VALUES list feeding this column)
        // stay as they are, and this one is added.
        let mut nested = false;
        let mut sites: Vec<CastSite> = Vec::with_capacity(casts.len() + 1);
        for c in casts {
            if c.range.start >= inner.start && c.range.end <= inner.end {
                nested = true;
                sites.push(CastSite {
                    range: range.clone(),
                    base: c.base,
                    to: to.clone(),
                });
            } else {
                sites.push(c);
            }
        }
        if !nested {
            sites.push(CastSite {
                range,
                base: inner,
                to,
            });
        }
        let casts = sites;
        Ok(Class::Params(ns, casts))
    }

    /// Binds parameters to an encrypted column (as arrays of its values
    /// for `= ANY`), rewriting the casts written on them to the storage type.
    pub(super) fn bind_params(
        &mut self,
        ns: &[usize],
        casts: &[CastSite],
        col: &Encrypted,
        array: bool,
        forms: Forms,
    ) -> R<()> {
        self.check_storage(col)?;
        // Several stored forms: the database receives them all as an array
        // and the text around a scalar parameter is rewritten to match any.
        let expand = col.forms > 1 && forms != Forms::One;
        if expand && !array {
            self.single_placeholder(ns, casts, col)?;
        }
        self.record_bindings(ns, col, array, expand)?;
        self.rewrite_casts(casts, col, array, expand, forms)?;
        if let ([n], true, true, true) = (ns, expand, !array, casts.is_empty())
            && let Some(range) = self.placeholders.get(n).and_then(|r| r.first())
        {
            let text = wrap_forms(forms, &format!("${n}"), col.forms);
            self.replacements.push((range.clone(), text));
        }
        Ok(())
    }

    /// A parameter whose text is rewritten to match every stored form must
    /// be written once, with at most one cast, and reach the comparison
    /// directly: a rewrite elsewhere would change another use.
    fn single_placeholder(&self, ns: &[usize], casts: &[CastSite], col: &Encrypted) -> R<()> {
        let single = match ns {
            [n] => {
                self.placeholders.get(n).map_or(0, Vec::len) == 1
                    && casts.len() <= 1
                    && !self.derived_params.contains(n)
            }
            _ => false,
        };
        if !single {
            return Err(refuse_col(
                col,
                format!(
                    "a parameter written more than once, or meeting several columns, while \
                     the column holds each value in {} stored forms (a migration or key \
                     rotation is in progress)",
                    col.forms
                ),
                "migrating",
            ));
        }
        Ok(())
    }

    /// Records each parameter's binding; one parameter cannot serve two
    /// domains, types or shapes.
    fn record_bindings(
        &mut self,
        ns: &[usize],
        col: &Encrypted,
        array: bool,
        expand: bool,
    ) -> R<()> {
        for &n in ns {
            match self.params.get(&n) {
                Some(prev)
                    if prev.column.domain != col.domain
                        || prev.column.value_type != col.value_type
                        || prev.column.storage != col.storage
                        || prev.array != array
                        || prev.expand != expand =>
                {
                    return Err(refuse_col(
                        col,
                        format!("parameter ${n} used for two key domains or types"),
                        "mixed_domains",
                    ));
                }
                Some(_) => {}
                None => {
                    self.params.insert(
                        n,
                        ParamBinding {
                            column: col.clone(),
                            array,
                            expand,
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Rewrites each cast on a bound parameter to the storage type (an
    /// array of it where the parameter carries several values), refusing
    /// casts the column's values would not survive.
    fn rewrite_casts(
        &mut self,
        casts: &[CastSite],
        col: &Encrypted,
        array: bool,
        expand: bool,
        forms: Forms,
    ) -> R<()> {
        let storage = match col.storage {
            StorageState::Bytea => "bytea",
            _ => "text",
        };
        for c in casts {
            let to = c.to.trim();
            let (elem, is_array) = match to.strip_suffix("[]") {
                Some(e) => (e.trim(), true),
                None => (to, false),
            };
            let elem = match elem.split_once('(') {
                // A length on a text type (`varchar(255)`) would truncate
                // ciphertext; the cast is rewritten, so it cannot.
                Some((base, _))
                    if matches!(col.value_type, ValueType::Text | ValueType::Varchar) =>
                {
                    base.trim()
                }
                _ => elem,
            };
            if is_array != array || !cast_fits(elem, col.value_type) {
                return Err(refuse_col(
                    col,
                    format!("a parameter cast to {}", c.to),
                    "function",
                ));
            }
            let base = self.source.text.get(c.base.clone()).ok_or_else(|| {
                Refusal::general("a cast parameter pgveil cannot locate", "unparsed")
            })?;
            let suffix = if array || expand { "[]" } else { "" };
            let mut text = format!("CAST(({base}) AS {storage}{suffix})");
            if expand && !array {
                text = wrap_forms(forms, &text, col.forms);
            }
            if let Some(prev) = self.replacements.iter().find(|(r, _)| *r == c.range) {
                if prev.1 != text {
                    return Err(refuse_col(
                        col,
                        "one cast parameter flowing into two storage types",
                        "mixed_domains",
                    ));
                }
                continue;
            }
            self.replacements.push((c.range.clone(), text));
        }
        Ok(())
    }
}
