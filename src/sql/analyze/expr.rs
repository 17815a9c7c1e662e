//! Classifying expressions: each expression gets a class (plain, literal,
//! NULL, parameter, ciphertext of a domain) from the classes of its parts,
//! and whatever ciphertext cannot serve is refused. Constructs not modelled
//! pass only when they cannot involve an encrypted column.

use sqlparser::ast::{Array, BinaryOperator, CaseWhen, DataType, Expr, InTarget, Query, Value};

use super::compare::refuse_col;
use super::{Class, Ctx, Out, R, Scope};
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// The class of an expression: how its value relates to encrypted
    /// columns. One method per family of expressions follows.
    pub(super) fn expr(&mut self, e: &Expr, scope: &Scope<'_, 'c>) -> R<Class> {
        if let Expr::Value(v) = e {
            match &v.value {
                Value::Null => return Ok(Class::Null),
                Value::Placeholder(p) => return self.placeholder(e, p),
                _ => {}
            }
        }
        if let Some(lit) = self.literal(e) {
            return Ok(Class::Lits(vec![lit?]));
        }
        match e {
            Expr::Identifier(i) => self.column_ref(std::slice::from_ref(i), scope),
            Expr::CompoundIdentifier(parts) => self.column_ref(parts, scope),
            Expr::Nested(inner) => self.expr(inner, scope),
            Expr::Value(_) => Ok(Class::Plain),
            Expr::BinaryOp { left, op, right } => self.binary_op(left, op, right, scope),
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                self.expr(inner, scope)?;
                Ok(Class::Plain)
            }
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                let l = self.expr(a, scope)?;
                let r = self.expr(b, scope)?;
                self.compare(l, r, "IS DISTINCT FROM")?;
                Ok(Class::Plain)
            }
            Expr::In {
                expr,
                target: InTarget::List(list),
                ..
            } => self.in_list(expr, list, scope),
            Expr::In {
                expr,
                target: InTarget::Subquery(subquery),
                ..
            } => self.in_subquery(expr, subquery, scope),
            Expr::AnyOp {
                left,
                compare_op,
                right,
                ..
            }
            | Expr::AllOp {
                left,
                compare_op,
                right,
            } => self.any_all(
                matches!(e, Expr::AnyOp { .. }),
                left,
                compare_op,
                right,
                scope,
            ),
            Expr::Between {
                expr, low, high, ..
            } => self.between([expr, low, high], scope),
            Expr::Like { expr, pattern, .. }
            | Expr::ILike { expr, pattern, .. }
            | Expr::SimilarTo { expr, pattern, .. }
            | Expr::RLike { expr, pattern, .. } => self.pattern([expr, pattern], scope),
            Expr::Cast {
                expr, data_type, ..
            } => self.cast(e, expr, data_type, scope),
            Expr::UnaryOp { op, expr } => match self.plain_expr(expr, scope)? {
                Class::Enc { col, .. } => {
                    Err(refuse_col(&col, format!("operator `{op}`"), "function"))
                }
                _ => Ok(Class::Plain),
            },
            Expr::Function(f) => self.function(e, f, scope),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => self.case(
                operand.as_deref(),
                conditions,
                else_result.as_deref(),
                scope,
            ),
            Expr::Subquery(q) => self.scalar_subquery(q, scope),
            Expr::Exists { subquery, .. } => {
                self.query(subquery, Some(scope))?;
                Ok(Class::Plain)
            }
            Expr::Array(a) => self.array(a, scope),
            other => {
                // Anything not modelled: acceptable only if it cannot
                // involve an encrypted column.
                let text = other.to_string();
                if self.watched.mentioned_in(&text) || self.names_encrypted_rel(scope, &text) {
                    Err(Refusal::general(
                        "an expression pgveil cannot analyse involves an encrypted table or column",
                        "unparsed",
                    ))
                } else {
                    Ok(Class::Plain)
                }
            }
        }
    }

    /// A binary operator: `=` and `<>` compare, `AND` and `OR` need
    /// plain conditions, and no other operator can work on ciphertext.
    fn binary_op(
        &mut self,
        left: &Expr,
        op: &BinaryOperator,
        right: &Expr,
        scope: &Scope<'_, 'c>,
    ) -> R<Class> {
        let l = self.expr(left, scope)?;
        let r = self.expr(right, scope)?;
        match op {
            BinaryOperator::Eq | BinaryOperator::NotEq => {
                self.compare(l, r, &op.to_string())?;
                Ok(Class::Plain)
            }
            BinaryOperator::And | BinaryOperator::Or => {
                self.mark_plain(&l);
                self.mark_plain(&r);
                for c in [l, r] {
                    if let Class::Enc { col, .. } = c {
                        return Err(refuse_col(&col, format!("`{op}`"), "function"));
                    }
                }
                Ok(Class::Plain)
            }
            other => {
                let reason = match other {
                    BinaryOperator::Lt
                    | BinaryOperator::Gt
                    | BinaryOperator::LtEq
                    | BinaryOperator::GtEq => "order",
                    BinaryOperator::PGRegexMatch
                    | BinaryOperator::PGRegexIMatch
                    | BinaryOperator::PGRegexNotMatch
                    | BinaryOperator::PGRegexNotIMatch
                    | BinaryOperator::PGLikeMatch
                    | BinaryOperator::PGILikeMatch
                    | BinaryOperator::PGNotLikeMatch
                    | BinaryOperator::PGNotILikeMatch => "pattern",
                    _ => "function",
                };
                self.mark_plain(&l);
                self.mark_plain(&r);
                for c in [l, r] {
                    if let Class::Enc { col, .. } = c {
                        return Err(refuse_col(&col, format!("operator `{other}`"), reason));
                    }
                }
                Ok(Class::Plain)
            }
        }
    }

    /// `BETWEEN`: an order comparison, which ciphertext has not.
    fn between(&mut self, operands: [&Expr; 3], scope: &Scope<'_, 'c>) -> R<Class> {
        for x in operands {
            let class = self.expr(x, scope)?;
            self.mark_plain(&class);
            if let Class::Enc { col, .. } = class {
                return Err(refuse_col(&col, "BETWEEN", "order"));
            }
        }
        Ok(Class::Plain)
    }

    /// `LIKE`, `ILIKE`, `SIMILAR TO`, regex matches: ciphertext has no
    /// text to match.
    fn pattern(&mut self, operands: [&Expr; 2], scope: &Scope<'_, 'c>) -> R<Class> {
        for x in operands {
            let class = self.expr(x, scope)?;
            self.mark_plain(&class);
            if let Class::Enc { col, .. } = class {
                return Err(refuse_col(
                    &col,
                    "pattern matching (LIKE, ILIKE, SIMILAR TO, regex)",
                    "pattern",
                ));
            }
        }
        Ok(Class::Plain)
    }

    /// A cast: refused on ciphertext; on a parameter, recorded so that it
    /// can be rewritten to the storage type if the parameter is bound.
    fn cast(
        &mut self,
        e: &Expr,
        expr: &Expr,
        data_type: &DataType,
        scope: &Scope<'_, 'c>,
    ) -> R<Class> {
        match self.expr(expr, scope)? {
            Class::Enc { col, .. } => Err(refuse_col(
                &col,
                format!("a cast to {data_type}"),
                "function",
            )),
            Class::Params(ns, casts) => self.cast_params(e, expr, data_type, ns, casts),
            other => {
                self.mark_plain(&other);
                Ok(Class::Plain)
            }
        }
    }

    /// `CASE`: its conditions must be plain (or compare with the
    /// operand), and a CASE cannot return ciphertext.
    fn case(
        &mut self,
        operand: Option<&Expr>,
        conditions: &[CaseWhen],
        else_result: Option<&Expr>,
        scope: &Scope<'_, 'c>,
    ) -> R<Class> {
        let op_class = match operand {
            Some(o) => Some(self.expr(o, scope)?),
            None => None,
        };
        let mut results = Vec::new();
        for w in conditions {
            let c = self.expr(&w.condition, scope)?;
            match &op_class {
                Some(oc) => self.compare(oc.clone(), c, "CASE WHEN")?,
                None => {
                    self.mark_plain(&c);
                    if let Class::Enc { col, .. } = c {
                        return Err(refuse_col(
                            &col,
                            "using the value as a condition",
                            "function",
                        ));
                    }
                }
            }
            results.push(self.plain_expr(&w.result, scope)?);
        }
        if let Some(e) = else_result {
            results.push(self.plain_expr(e, scope)?);
        }
        for r in results {
            if let Class::Enc { col, .. } = r {
                return Err(refuse_col(&col, "a CASE that returns it", "function"));
            }
        }
        Ok(Class::Plain)
    }

    /// A scalar subquery: ciphertext when its first column is, reported by
    /// PostgreSQL without an origin.
    fn scalar_subquery(&mut self, q: &Query, scope: &Scope<'_, 'c>) -> R<Class> {
        let outs = self.query(q, Some(scope))?;
        match outs.and_then(|o| o.into_iter().next()) {
            Some(Out {
                class: Class::Enc { col, .. },
                ..
            }) => Ok(Class::Enc { col, direct: false }),
            _ => Ok(Class::Plain),
        }
    }

    /// `ARRAY[...]` outside `= ANY`: its elements are used as plaintext.
    fn array(&mut self, a: &Array, scope: &Scope<'_, 'c>) -> R<Class> {
        for el in &a.elem {
            if let Class::Enc { col, .. } = self.plain_expr(el, scope)? {
                return Err(refuse_col(&col, "an array of it", "function"));
            }
        }
        Ok(Class::Plain)
    }
}
