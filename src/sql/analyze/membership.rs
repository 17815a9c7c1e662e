//! Membership tests: `IN` lists and subqueries, `= ANY` and `<> ALL` over
//! arrays and subqueries. Equality against each element is what ciphertext
//! can serve; while a column has several stored forms, only the forms
//! that list every form of each element pass.

use sqlparser::ast::{BinaryOperator, Expr, Query};

use super::compare::{match_forms, refuse_col};
use super::{Class, Ctx, R, Scope};
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// `x IN (a, b, ...)`: each element compared with `x` where either is
    /// ciphertext.
    pub(super) fn in_list(
        &mut self,
        expr: &Expr,
        list: &[Expr],
        scope: &Scope<'_, 'c>,
    ) -> R<Class> {
        let l = self.expr(expr, scope)?;
        for item in list {
            let r = self.expr(item, scope)?;
            if matches!(l, Class::Enc { .. }) || matches!(r, Class::Enc { .. }) {
                self.compare(l.clone(), r, "IN")?;
            }
        }
        Ok(Class::Plain)
    }

    /// `x IN (SELECT ...)`: `x` compared with the subquery's first column.
    pub(super) fn in_subquery(
        &mut self,
        expr: &Expr,
        subquery: &Query,
        scope: &Scope<'_, 'c>,
    ) -> R<Class> {
        let l = self.expr(expr, scope)?;
        let outs = self.query(subquery, Some(scope))?;
        match outs.and_then(|o| o.into_iter().next()) {
            // Not "IN": a literal in the subquery's select list has
            // room for one stored form only.
            Some(o) => self.compare(l, o.class, "IN (subquery)")?,
            None => {
                if let Class::Enc { col, .. } = l {
                    return Err(refuse_col(
                        &col,
                        "IN with a subquery pgveil cannot analyse",
                        "unsupported",
                    ));
                }
            }
        }
        Ok(Class::Plain)
    }

    /// `x op ANY (...)` and `x op ALL (...)` (`any` tells which) over an
    /// array constructor, an array value or a subquery.
    pub(super) fn any_all(
        &mut self,
        any: bool,
        left: &Expr,
        compare_op: &BinaryOperator,
        right: &Expr,
        scope: &Scope<'_, 'c>,
    ) -> R<Class> {
        let l = self.expr(left, scope)?;
        let elems: Vec<&Expr> = match right {
            Expr::Array(a) => a.elem.iter().collect(),
            Expr::Nested(n) => match n.as_ref() {
                Expr::Array(a) => a.elem.iter().collect(),
                other => vec![other],
            },
            other => vec![other],
        };
        let eq = matches!(compare_op, BinaryOperator::Eq | BinaryOperator::NotEq);
        // `= ANY` and `<> ALL` hold for a list of every stored form
        // of each element; `= ALL` and `<> ANY` do not.
        let label = match (any, compare_op) {
            (true, BinaryOperator::Eq) => "= ANY",
            (false, BinaryOperator::NotEq) => "<> ALL",
            (true, _) => "<> ANY",
            (false, _) => "= ALL",
        };
        for el in elems {
            if let (true, Expr::Subquery(q)) = (eq, el) {
                self.any_all_subquery(&l, q, label, scope)?;
                continue;
            }
            let r = self.expr(el, scope)?;
            if !eq {
                for c in [&l, &r] {
                    if let Class::Enc { col, .. } = c {
                        return Err(refuse_col(col, format!("`{compare_op}` ANY/ALL"), "order"));
                    }
                }
                continue;
            }
            let array_constructor = match right {
                Expr::Array(_) => true,
                Expr::Nested(n) => matches!(n.as_ref(), Expr::Array(_)),
                _ => false,
            };
            self.any_all_element(&l, r, el, array_constructor, label)?;
        }
        Ok(Class::Plain)
    }

    /// `x = ANY (SELECT ...)`: `x` compared with the subquery's first column.
    fn any_all_subquery(
        &mut self,
        l: &Class,
        q: &Query,
        label: &str,
        scope: &Scope<'_, 'c>,
    ) -> R<()> {
        let outs = self.query(q, Some(scope))?;
        match outs.and_then(|o| o.into_iter().next()) {
            Some(o) => self.compare(l.clone(), o.class, &format!("{label} (subquery)"))?,
            None => {
                if let Class::Enc { col, .. } = l {
                    return Err(refuse_col(
                        col,
                        "ANY with a subquery pgveil cannot analyse",
                        "unsupported",
                    ));
                }
            }
        }
        Ok(())
    }

    /// One element (class `r`) of `= ANY` or `<> ALL`: an array parameter
    /// is bound element by element; otherwise pgveil must see the elements
    /// of an array constructor to compare them.
    fn any_all_element(
        &mut self,
        l: &Class,
        r: Class,
        el: &Expr,
        array_constructor: bool,
        label: &str,
    ) -> R<()> {
        if let (Class::Enc { col, .. }, Class::Params(ns, casts), false) =
            (l, &r, array_constructor)
        {
            // `col = ANY($1)`: an array parameter, encrypted
            // element by element.
            let forms = match_forms(col, label, true)?;
            self.bind_params(ns, casts, col, true, forms)?;
            return Ok(());
        }
        if let (Class::Enc { col, .. }, false) = (l, array_constructor) {
            return Err(refuse_col(
                col,
                "= ANY over an array value pgveil cannot see into (use ARRAY[...] or IN (...))",
                "unsupported",
            ));
        }
        if matches!(l, Class::Enc { .. })
            && !matches!(el, Expr::Array(_))
            && !matches!(r, Class::Lits(_) | Class::Null | Class::Enc { .. })
        {
            return Err(Refusal::general(
                "= ANY over an array pgveil cannot see into",
                "unsupported",
            ));
        }
        self.compare(l.clone(), r, label)
    }
}
