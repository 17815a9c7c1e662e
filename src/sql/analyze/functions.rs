//! Function calls: arguments, subquery arguments, `t.*` arguments and the
//! clauses an aggregate or window call may carry. No function runs on
//! ciphertext (it would compute on the envelope, not the value).

use sqlparser::ast::{Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Query};

use super::compare::refuse_col;
use super::names::name_parts;
use super::{Class, Ctx, R, Scope};
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// A function call: its arguments are used as plaintext, so a function
    /// of ciphertext is refused (`count` only counts).
    pub(super) fn function(&mut self, e: &Expr, f: &Function, scope: &Scope<'_, 'c>) -> R<Class> {
        let name = f.name.to_string().to_lowercase();
        let bare = name.rsplit('.').next().unwrap_or(&name).to_string();
        let args = self.function_args(f, &bare, scope)?;
        self.function_clauses(e, f, scope)?;
        for a in args {
            let class = self.expr(a, scope)?;
            if bare != "count" {
                self.mark_plain(&class);
            }
            if let Class::Enc { col, .. } = class
                && bare != "count"
            {
                return Err(refuse_col(&col, format!("function {bare}()"), "function"));
            }
        }
        Ok(Class::Plain)
    }

    /// The expressions among a call's arguments (a subquery argument is
    /// analysed in place and yields none).
    fn function_args<'f>(
        &mut self,
        f: &'f Function,
        bare: &str,
        scope: &Scope<'_, 'c>,
    ) -> R<Vec<&'f Expr>> {
        Ok(match &f.args {
            FunctionArguments::List(list) => list
                .args
                .iter()
                .filter_map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
                    | FunctionArg::Named {
                        arg: FunctionArgExpr::Expr(e),
                        ..
                    }
                    | FunctionArg::ExprNamed {
                        arg: FunctionArgExpr::Expr(e),
                        ..
                    } => Some(e),
                    _ => None,
                })
                .collect(),
            FunctionArguments::Subquery(q) => {
                self.subquery_argument(q, bare, scope)?;
                Vec::new()
            }
            FunctionArguments::None => Vec::new(),
        })
    }

    /// `f(SELECT ...)`: refused when the subquery yields ciphertext, or
    /// cannot be analysed and may.
    fn subquery_argument(&mut self, q: &Query, bare: &str, scope: &Scope<'_, 'c>) -> R<()> {
        let outs = self.query(q, Some(scope))?;
        let enc = outs.as_ref().and_then(|o| {
            o.iter().find_map(|o| match &o.class {
                Class::Enc { col, .. } => Some(col.clone()),
                _ => None,
            })
        });
        match (enc, outs) {
            (Some(col), _) => {
                return Err(refuse_col(&col, format!("{bare}(SELECT ...)"), "function"));
            }
            (None, None) if self.watched.mentioned_in(&q.to_string()) => {
                return Err(Refusal::general(
                    "a subquery argument pgveil cannot analyse",
                    "unsupported",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// What a call may carry besides its arguments: `t.*` (a whole row),
    /// aggregate clauses, windows and filters, refused where they could
    /// involve ciphertext.
    fn function_clauses(&self, e: &Expr, f: &Function, scope: &Scope<'_, 'c>) -> R<()> {
        if let FunctionArguments::List(list) = &f.args {
            for a in &list.args {
                let (FunctionArg::Unnamed(arg)
                | FunctionArg::Named { arg, .. }
                | FunctionArg::ExprNamed { arg, .. }) = a;
                if let FunctionArgExpr::QualifiedWildcard(n) = arg {
                    let parts = name_parts(n);
                    if let Some(last) = parts.last() {
                        self.whole_row(scope, last)?;
                    }
                }
            }
        }
        if let FunctionArguments::List(list) = &f.args
            && !list.clauses.is_empty()
            && self.watched.mentioned_in(&e.to_string())
        {
            return Err(Refusal::general(
                "aggregate clauses over encrypted data",
                "unsupported",
            ));
        }
        if (f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty())
            && self.watched.mentioned_in(&e.to_string())
        {
            return Err(Refusal::general(
                "window or filtered aggregates over encrypted data",
                "unsupported",
            ));
        }
        Ok(())
    }
}
