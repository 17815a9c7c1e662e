//! What two classes meeting may do: equality between ciphertext and
//! literals encrypts the literals, between two domains or with plaintext it
//! is refused, and a value used as plaintext is recorded so that it cannot
//! also be encrypted. While a column holds several stored forms of each
//! value, only comparisons that can list every form pass.

use sqlparser::ast::Expr;

use super::{Class, Ctx, Edit, Forms, Lit, R, Scope};
use crate::catalog::{Encrypted, StorageState};
use crate::config::ValueType;
use crate::sql::refusal::Refusal;

/// A refusal naming the column whose ciphertext cannot serve `op`.
pub(super) fn refuse_col(col: &Encrypted, op: impl Into<String>, reason: &'static str) -> Refusal {
    Refusal::on_column(&col.id.to_string(), op, reason)
}

/// A comparison that cannot match every stored form of a value while the
/// column has several (a migration or key rotation is in progress).
pub(super) fn several_forms(col: &Encrypted, op: &str) -> Refusal {
    refuse_col(
        col,
        format!(
            "`{op}` written this way while each value has {} stored forms (a migration or key \
             rotation is in progress; write `column = value`, `column IN (...)`, \
             `column <> value` or `column = ANY(...)`)",
            col.forms
        ),
        "migrating",
    )
}

/// The text that matches an array of `count` stored forms where one value
/// was written: `ANY(x)`, `ALL(x)`, or `(x)[1], (x)[2], ...` in a list.
pub(super) fn wrap_forms(forms: Forms, array: &str, count: usize) -> String {
    match forms {
        Forms::One => array.to_string(),
        Forms::Any => format!("ANY({array})"),
        Forms::All => format!("ALL({array})"),
        Forms::List => (1..=count)
            .map(|i| format!("({array})[{i}]"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// How a value compared with `col` by `op` is written, given the side the
/// column is on. With one stored form anything goes; with several, only
/// positions where every form can be listed.
pub(super) fn match_forms(col: &Encrypted, op: &str, enc_left: bool) -> R<Forms> {
    if col.forms <= 1 {
        return Ok(Forms::One);
    }
    match (op, enc_left) {
        ("=", true) => Ok(Forms::Any),
        ("<>" | "!=", true) => Ok(Forms::All),
        ("IN" | "= ANY" | "<> ALL", true) => Ok(Forms::List),
        _ => Err(several_forms(col, op)),
    }
}

impl<'c, 'a> Ctx<'c, 'a> {
    /// Records that a value is used as plaintext (compared, ordered or
    /// transformed without an encrypted column): a literal or parameter
    /// that is also encrypted for an encrypted column is then refused
    /// (one role per value).
    pub(super) fn mark_plain(&mut self, class: &Class) {
        match class {
            Class::Lits(ls) => self.plain_uses.extend(ls.iter().map(|l| l.range.clone())),
            Class::Params(ns, _) => self.plain_params.extend(ns.iter().copied()),
            _ => {}
        }
    }

    /// An expression whose value is used as plaintext.
    pub(super) fn plain_expr(&mut self, e: &Expr, scope: &Scope<'_, 'c>) -> R<Class> {
        let class = self.expr(e, scope)?;
        self.mark_plain(&class);
        Ok(class)
    }

    /// Equality-like comparison of two classes.
    pub(super) fn compare(&mut self, l: Class, r: Class, op: &str) -> R<()> {
        // Which side the column is on decides how several stored forms of a
        // value can be matched (`col = ANY(forms)` exists, `forms = col`
        // does not).
        let enc_left = matches!(l, Class::Enc { .. });
        if !enc_left && !matches!(r, Class::Enc { .. }) {
            // Neither side is encrypted: values on both are used as plaintext.
            self.mark_plain(&l);
            self.mark_plain(&r);
            return Ok(());
        }
        match (l, r) {
            (Class::Enc { col: a, direct: da }, Class::Enc { col: b, direct: db }) => {
                if a.domain != b.domain || a.storage != b.storage {
                    return Err(refuse_col(
                        &a,
                        format!("comparing with {} (another key domain)", b.id),
                        "mixed_domains",
                    ));
                }
                // A column against values derived from literals or another
                // query (not a plain column reference): those values carry
                // one form only, so rows stored in another form would be
                // missed. Column against column (joins) is the documented
                // degradation of the migration window.
                if (a.forms > 1 || b.forms > 1) && !(da && db) {
                    let col = if a.forms > 1 { &a } else { &b };
                    return Err(several_forms(col, op));
                }
                Ok(())
            }
            (Class::Enc { col, .. }, Class::Lits(ls))
            | (Class::Lits(ls), Class::Enc { col, .. }) => {
                if ls.iter().any(|l| l.via_column) {
                    // The same value may also be used as plaintext elsewhere
                    // (selected, compared): it cannot be both.
                    return Err(refuse_col(
                        &col,
                        format!("`{op}` with a value from a VALUES list, CTE or subquery column"),
                        "plaintext_comparison",
                    ));
                }
                let forms = match_forms(&col, op, enc_left)?;
                if forms != Forms::One && self.in_ddl {
                    // The forms would be stored in the catalog and outlive
                    // the window.
                    return Err(several_forms(
                        &col,
                        "a comparison stored in a view or index",
                    ));
                }
                for l in &ls {
                    self.encrypt_literal(l, &col, forms)?;
                }
                Ok(())
            }
            (Class::Enc { .. }, Class::Null) | (Class::Null, Class::Enc { .. }) => Ok(()),
            (Class::Enc { col, .. }, Class::Params(ns, casts))
            | (Class::Params(ns, casts), Class::Enc { col, .. }) => {
                let forms = match_forms(&col, op, enc_left)?;
                if forms != Forms::One && self.in_ddl {
                    return Err(several_forms(
                        &col,
                        "a comparison stored in a view or index",
                    ));
                }
                self.bind_params(&ns, &casts, &col, false, forms)
            }
            (Class::Params(ns, _), _) | (_, Class::Params(ns, _)) => {
                // Compared with something that is not encrypted: if the
                // same parameter is also bound to an encrypted column, the
                // statement is refused (it cannot be both).
                self.plain_params.extend(ns);
                Ok(())
            }
            (Class::Enc { col, .. }, Class::Plain) | (Class::Plain, Class::Enc { col, .. }) => {
                Err(refuse_col(
                    &col,
                    format!("`{op}` with a plaintext expression"),
                    "plaintext_comparison",
                ))
            }
            _ => Ok(()),
        }
    }

    /// Encrypts a literal for `col`, written as `forms` says; a literal
    /// already encrypted for another domain is refused.
    pub(super) fn encrypt_literal(&mut self, lit: &Lit, col: &Encrypted, forms: Forms) -> R<()> {
        self.check_storage(col)?;
        if lit.number && matches!(col.value_type, ValueType::Text | ValueType::Varchar) {
            return Err(refuse_col(
                col,
                "a numeric literal (PostgreSQL compares text only with text)",
                "plaintext_comparison",
            ));
        }
        if let Some(cast) = &lit.cast
            && !cast_fits(cast, col.value_type)
        {
            return Err(refuse_col(
                col,
                format!("a value cast to {cast}"),
                "function",
            ));
        }
        if let Some(prev) = self.edits.iter().find(|e| e.range == lit.range) {
            if prev.column.domain != col.domain {
                return Err(refuse_col(
                    col,
                    "one literal flowing into two key domains",
                    "mixed_domains",
                ));
            }
            return Ok(());
        }
        self.edits.push(Edit {
            range: lit.range.clone(),
            column: col.clone(),
            text: lit.text.clone(),
            forms,
        });
        Ok(())
    }

    /// Refuses a column whose storage type cannot hold ciphertext.
    pub(super) fn check_storage(&self, col: &Encrypted) -> R<()> {
        if let StorageState::Unsupported(t) = &col.storage {
            return Err(Refusal::on_column(
                &col.id.to_string(),
                format!("storing ciphertext in type {t}"),
                "storage",
            ));
        }
        Ok(())
    }
}

/// Whether a literal cast to `cast` is still a value of the column's type.
pub(super) fn cast_fits(cast: &str, ty: ValueType) -> bool {
    if cast.contains('(') {
        // varchar(5) truncates, numeric(10,2) rounds, timestamp(0) rounds:
        // the value stored would not be the value written.
        return false;
    }
    let base = cast.trim();
    let base = base.strip_prefix("pg_catalog.").unwrap_or(base);
    match ty {
        ValueType::Text | ValueType::Varchar => {
            matches!(base, "text" | "varchar" | "character varying")
        }
        ValueType::Int2 | ValueType::Int4 | ValueType::Int8 => matches!(
            base,
            "int" | "integer" | "int2" | "int4" | "int8" | "smallint" | "bigint"
        ),
        ValueType::Bool => matches!(base, "bool" | "boolean"),
        ValueType::Uuid => base == "uuid",
        ValueType::Date => base == "date",
        ValueType::Timestamp => matches!(base, "timestamp" | "timestamp without time zone"),
        ValueType::Timestamptz => matches!(base, "timestamptz" | "timestamp with time zone"),
        ValueType::Numeric => matches!(base, "numeric" | "decimal"),
    }
}
