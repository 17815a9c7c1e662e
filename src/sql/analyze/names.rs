//! Names as PostgreSQL makes them: identifiers folded to lower case unless
//! quoted, and the names it gives result columns, which is how outputs of
//! derived tables, CTEs and views are found again by later references.

use sqlparser::ast::{
    Expr, Ident, ObjectName, ObjectNamePart, SelectItem, SetExpr, Statement, Value,
};

use super::Out;

/// Identifier as PostgreSQL folds it: unquoted ASCII letters lower-cased
/// (other letters kept, as in UTF-8 databases), cut to 63 bytes.
pub(super) fn norm(i: &Ident) -> String {
    let mut name = if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_ascii_lowercase()
    };
    name.truncate(crate::sql::referee::truncated_len(&name));
    name
}

/// The parts of a qualified name, each folded as PostgreSQL folds it.
pub(super) fn name_parts(n: &ObjectName) -> Vec<String> {
    n.0.iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => norm(i),
            other => other.to_string(),
        })
        .collect()
}

/// Whether an expression is the keyword `DEFAULT` (in VALUES or SET),
/// which sqlparser reads as an identifier.
pub(super) fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

/// The name PostgreSQL gives a select-list expression without an alias
/// (its `FigureColname`): a column's name through parentheses, casts and
/// `COLLATE`, a function's name, a scalar subquery's first column, or a
/// keyword for other forms; `?column?` when none applies.
pub(super) fn expr_name(e: &Expr) -> String {
    figure_name(e).map_or_else(|| "?column?".into(), |(name, _)| name)
}

/// A name and whether it is strong (a column, function or subquery name)
/// rather than a cast's type name, which a stronger inner name overrides.
fn figure_name(e: &Expr) -> Option<(String, bool)> {
    let keyword = |k: &str| Some((k.to_string(), true));
    match e {
        Expr::Identifier(i) => Some((norm(i), true)),
        Expr::CompoundIdentifier(p) => p.last().map(|i| (norm(i), true)),
        Expr::Nested(inner) | Expr::Collate { expr: inner, .. } => figure_name(inner),
        Expr::Cast {
            expr, data_type, ..
        } => match figure_name(expr) {
            Some((n, true)) => Some((n, true)),
            _ => Some((cast_type_name(&data_type.to_string()), false)),
        },
        Expr::Function(f) => name_parts(&f.name).last().map(|n| (n.clone(), true)),
        Expr::Subquery(q) => match q.body.as_ref() {
            SetExpr::Select(s) => match s.projection.first() {
                Some(SelectItem::ExprWithAlias { alias, .. }) => Some((norm(alias), true)),
                Some(SelectItem::UnnamedExpr(inner)) => figure_name(inner),
                _ => None,
            },
            _ => None,
        },
        Expr::Case { .. } => keyword("case"),
        Expr::Exists { .. } => keyword("exists"),
        Expr::Array(_) => keyword("array"),
        Expr::Tuple(_) => keyword("row"),
        Expr::Substring { .. } => keyword("substring"),
        Expr::Trim { .. } => keyword("btrim"),
        Expr::Position { .. } => keyword("position"),
        Expr::Extract { .. } => keyword("extract"),
        _ => None,
    }
}

/// The name PostgreSQL reports for a cast's type (`int4` for `integer`).
fn cast_type_name(written: &str) -> String {
    let base = written
        .split('(')
        .next()
        .unwrap_or_default()
        .trim()
        .to_lowercase();
    let last = base.rsplit('.').next().unwrap_or_default().to_string();
    match last.as_str() {
        "integer" | "int" => "int4".into(),
        "smallint" => "int2".into(),
        "bigint" => "int8".into(),
        "real" => "float4".into(),
        "double precision" | "float" => "float8".into(),
        "boolean" => "bool".into(),
        "character varying" => "varchar".into(),
        "character" | "char" => "bpchar".into(),
        "decimal" => "numeric".into(),
        "timestamp with time zone" => "timestamptz".into(),
        "timestamp without time zone" | "timestamp" => "timestamp".into(),
        "time with time zone" => "timetz".into(),
        "time without time zone" => "time".into(),
        other => other.to_string(),
    }
}

/// The output an `ORDER BY` or `GROUP BY` position (`ORDER BY 2`) names.
pub(super) fn positional<'o>(e: &Expr, outs: &'o [Out]) -> Option<&'o Out> {
    if let Expr::Value(v) = e
        && let Value::Number(n, _) = &v.value
    {
        let i: usize = n.parse().ok()?;
        return outs.get(i.checked_sub(1)?);
    }
    None
}

/// The output an `ORDER BY` or `GROUP BY` name refers to by its alias.
pub(super) fn alias_ref<'o>(e: &Expr, outs: &'o [Out]) -> Option<&'o Out> {
    if let Expr::Identifier(i) = e {
        let n = norm(i);
        return outs.iter().find(|o| o.name == n && o.name != "?column?");
    }
    None
}

/// A statement's first two words, for the refusal of a kind not modelled.
pub(super) fn statement_kind(s: &Statement) -> String {
    let text = s.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
        .chars()
        .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
        .collect()
}
