//! Literals: their plaintext, the cast written on them, and the tokens
//! they span, so that the literal and its cast can be replaced with
//! ciphertext in the original text.

use sqlparser::ast::{CastKind, Expr, UnaryOperator, Value};
use sqlparser::tokenizer::Token;

use super::{Ctx, Lit, R};
use crate::sql::refusal::Refusal;
use crate::sql::source::{same_token, snippet_tokens};

impl<'c, 'a> Ctx<'c, 'a> {
    /// The literal an expression is, located in the text; `None` when it is
    /// not a literal, `Err` when it is one pgveil cannot locate.
    pub(super) fn literal(&self, e: &Expr) -> Option<R<Lit>> {
        let text = literal_text(e)?;
        let cast = literal_cast(e);
        Some(match self.extent(e) {
            Some((a, b)) => match self.source.range(a, b) {
                Some(range) => Ok(Lit {
                    range,
                    text,
                    number: cast.is_none() && is_number_literal(e),
                    cast,
                    via_column: false,
                }),
                None => Err(Refusal::general(
                    "a literal pgveil cannot locate",
                    "unparsed",
                )),
            },
            None => Err(Refusal::general(
                "a literal pgveil cannot locate",
                "unparsed",
            )),
        })
    }

    /// First and last token of a literal expression, casts included.
    pub(super) fn extent(&self, e: &Expr) -> Option<(usize, usize)> {
        let src = self.source;
        match e {
            Expr::Value(v) => {
                let i = src.token_at(v.span.start)?;
                Some((i, i))
            }
            Expr::Identifier(i) => {
                let t = src.token_at(i.span.start)?;
                matches!(src.token(t)?, Token::Word(_)).then_some((t, t))
            }
            Expr::CompoundIdentifier(parts) => {
                let a = src.token_at(parts.first()?.span.start)?;
                let b = src.token_at(parts.last()?.span.start)?;
                (b >= a && b - a == 2 * (parts.len() - 1)).then_some((a, b))
            }
            Expr::Nested(inner) => {
                let (a, b) = self.extent(inner)?;
                let (pa, nb) = (a.checked_sub(1)?, b + 1);
                (matches!(src.token(pa)?, Token::LParen) && matches!(src.token(nb)?, Token::RParen))
                    .then_some((pa, nb))
            }
            Expr::UnaryOp { op, expr } => {
                let (a, b) = self.extent(expr)?;
                let pa = a.checked_sub(1)?;
                let ok = match op {
                    UnaryOperator::Minus => matches!(src.token(pa)?, Token::Minus),
                    UnaryOperator::Plus => matches!(src.token(pa)?, Token::Plus),
                    _ => false,
                };
                ok.then_some((pa, b))
            }
            Expr::Cast {
                kind,
                expr,
                data_type,
                format: None,
            } => {
                let (a, b) = self.extent(expr)?;
                let ty = snippet_tokens(&data_type.to_string())?;
                self.cast_extent(kind, a, b, &ty)
            }
            Expr::TypedString(ts) => {
                let i = src.token_at(ts.value.span.start)?;
                let ty = snippet_tokens(&ts.data_type.to_string())?;
                let start = i.checked_sub(ty.len())?;
                for (k, t) in ty.iter().enumerate() {
                    if !same_token(src.token(start + k)?, t) {
                        return None;
                    }
                }
                Some((start, i))
            }
            _ => None,
        }
    }

    /// The extent of a cast written on tokens `a..=b`, as `x::ty` or
    /// `CAST(x AS ty)`, where `ty` are the tokens of the type written.
    fn cast_extent(
        &self,
        kind: &CastKind,
        a: usize,
        b: usize,
        ty: &[Token],
    ) -> Option<(usize, usize)> {
        let src = self.source;
        match kind {
            CastKind::DoubleColon => {
                if !matches!(src.token(b + 1)?, Token::DoubleColon) {
                    return None;
                }
                for (k, t) in ty.iter().enumerate() {
                    if !same_token(src.token(b + 2 + k)?, t) {
                        return None;
                    }
                }
                Some((a, b + 1 + ty.len()))
            }
            CastKind::Cast => {
                let pa = a.checked_sub(2)?;
                let is_cast = matches!(src.token(pa)?, Token::Word(w) if w.value.eq_ignore_ascii_case("cast"));
                if !is_cast || !matches!(src.token(pa + 1)?, Token::LParen) {
                    return None;
                }
                if !matches!(src.token(b + 1)?, Token::Word(w) if w.value.eq_ignore_ascii_case("as"))
                {
                    return None;
                }
                for (k, t) in ty.iter().enumerate() {
                    if !same_token(src.token(b + 2 + k)?, t) {
                        return None;
                    }
                }
                let close = b + 2 + ty.len();
                matches!(src.token(close)?, Token::RParen).then_some((pa, close))
            }
            _ => None,
        }
    }
}

/// The plaintext of a literal expression, if it is one.
fn literal_text(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s)
            | Value::NationalStringLiteral(s) => Some(s.clone()),
            Value::DollarQuotedString(d) => Some(d.value.clone()),
            Value::Number(n, _) => Some(n.to_string()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Nested(inner) => literal_text(inner),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(format!("-{n}")),
                _ => None,
            },
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(n.to_string()),
                _ => None,
            },
            _ => None,
        },
        Expr::Cast {
            expr,
            format: None,
            kind: CastKind::DoubleColon | CastKind::Cast,
            ..
        } => literal_text(expr),
        Expr::TypedString(ts) => match &ts.value.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// The type a literal is cast to, as written (lower case).
fn literal_cast(e: &Expr) -> Option<String> {
    match e {
        Expr::Cast { data_type, .. } => Some(data_type.to_string().to_lowercase()),
        Expr::TypedString(ts) => Some(ts.data_type.to_string().to_lowercase()),
        Expr::Nested(inner) => literal_cast(inner),
        _ => None,
    }
}

/// Whether an expression is a bare number (signs and parentheses allowed).
fn is_number_literal(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => matches!(v.value, Value::Number(..)),
        Expr::UnaryOp { expr, .. } | Expr::Nested(expr) => is_number_literal(expr),
        _ => false,
    }
}

/// Whether SQL text holds any constant (or cannot be tokenized, in which
/// case it may).
pub(super) fn has_literals(sql: &str) -> bool {
    snippet_tokens(sql).is_none_or(|tokens| {
        tokens.iter().any(|t| {
            matches!(
                t,
                Token::Number(..)
                    | Token::SingleQuotedString(_)
                    | Token::DollarQuotedString(_)
                    | Token::EscapedStringLiteral(_)
                    | Token::UnicodeStringLiteral(_)
                    | Token::NationalStringLiteral(_)
                    | Token::HexStringLiteral(_)
                    | Token::SingleQuotedByteStringLiteral(_)
                    | Token::DoubleQuotedByteStringLiteral(_)
            )
        })
    })
}
