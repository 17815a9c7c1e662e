//! Statements whose results or parameters outlive them: `PREPARE` (its
//! parameters' bindings are kept for `EXECUTE`), `EXECUTE`, and cursors
//! (`DECLARE`), whose rows come back through `FETCH` without positional
//! hints.

use sqlparser::ast::{DataType, Declare, Expr, ExprWithAlias, Ident, ObjectName, Statement};
use sqlparser::tokenizer::Token;

use super::compare::refuse_col;
use super::names::{name_parts, norm};
use super::{Class, Ctx, Out, R, Scope};
use crate::catalog::{Encrypted, StorageState};
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// `PREPARE name AS statement`: records which parameters are bound to
    /// which encrypted columns, for the `EXECUTE`s that follow.
    pub(super) fn prepare(
        &mut self,
        name: &Ident,
        data_types: &[DataType],
        statement: &Statement,
    ) -> R<Option<Vec<Out>>> {
        let outs = self.statement(statement)?;
        refuse_origin_less(outs.as_deref(), "a prepared statement")?;
        let count = self
            .params
            .keys()
            .max()
            .copied()
            .unwrap_or(0)
            .max(data_types.len());
        if self.params.values().any(|b| b.array || b.expand) {
            return Err(Refusal::general(
                "an array parameter compared with an encrypted column in PREPARE, or a \
                 parameter compared with a column that holds several stored forms \
                 (migration or key rotation in progress)",
                "unsupported",
            ));
        }
        let spec: Vec<Option<Encrypted>> = (1..=count)
            .map(|n| self.params.get(&n).map(|b| b.column.clone()))
            .collect();
        if !data_types.is_empty() && spec.iter().any(Option::is_some) {
            self.retype_parameters(name, data_types.len(), &spec)?;
        }
        self.prepared_out = Some((norm(name), spec));
        Ok(None)
    }

    /// `EXECUTE name(args)`: each argument flows into the column its
    /// parameter was bound to at `PREPARE`.
    pub(super) fn execute(
        &mut self,
        name: &ObjectName,
        parameters: &[Expr],
        using: &[ExprWithAlias],
    ) -> R<Option<Vec<Out>>> {
        if !using.is_empty() {
            return Err(Refusal::general("EXECUTE ... USING", "unsupported"));
        }
        let key = name_parts(name).last().cloned().unwrap_or_default();
        let spec = self.prepared.get(&key).cloned().unwrap_or_default();
        let empty = Scope {
            rels: vec![],
            parent: None,
        };
        for (i, arg) in parameters.iter().enumerate() {
            let class = self.expr(arg, &empty)?;
            let target = spec.get(i).cloned().flatten();
            self.assign(target.as_ref(), class)?;
        }
        Ok(None)
    }

    /// `DECLARE cursor FOR query`: rows are fetched later, without hints.
    pub(super) fn declare(&mut self, stmts: &[Declare]) -> R<Option<Vec<Out>>> {
        for d in stmts {
            if let Some(q) = &d.for_query {
                let outs = self.query(q, None)?;
                refuse_origin_less(outs.as_deref(), "a cursor")?;
            }
        }
        Ok(None)
    }

    /// `PREPARE q(text, int) AS ...`: the declared type of each parameter
    /// bound to an encrypted column becomes its storage type, so the
    /// database accepts the ciphertext `EXECUTE` will pass.
    fn retype_parameters(
        &mut self,
        name: &Ident,
        declared: usize,
        spec: &[Option<Encrypted>],
    ) -> R<()> {
        let fail = || Refusal::general("PREPARE parameter types pgveil cannot locate", "unparsed");
        let src = self.source;
        let start = src.token_at(name.span.start).ok_or_else(fail)?;
        if !matches!(src.token(start + 1), Some(Token::LParen)) {
            return Err(fail());
        }
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut depth = 0i32;
        let mut first = start + 2;
        let mut i = start + 2;
        loop {
            match src.token(i).ok_or_else(fail)? {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => {
                    groups.push((first, i - 1));
                    break;
                }
                Token::RParen => depth -= 1,
                Token::Comma if depth == 0 => {
                    groups.push((first, i - 1));
                    first = i + 1;
                }
                _ => {}
            }
            i += 1;
        }
        if groups.len() != declared {
            return Err(fail());
        }
        for (n, col) in spec.iter().enumerate() {
            let (Some(col), Some((a, b))) = (col, groups.get(n)) else {
                continue;
            };
            let storage = match col.storage {
                StorageState::Bytea => "bytea",
                StorageState::Text => "text",
                StorageState::Unsupported(_) => return Err(fail()),
            };
            let range = src.range(*a, *b).ok_or_else(fail)?;
            self.replacements.push((range, storage.to_string()));
        }
        Ok(())
    }
}

/// Results that outlive the statement (cursors, prepared statements) reach
/// the client through FETCH or EXECUTE, whose plans carry no positional
/// hints: ciphertext whose origin PostgreSQL will not report is refused.
fn refuse_origin_less(outs: Option<&[Out]>, what: &str) -> R<()> {
    if let Some(o) = outs
        .unwrap_or_default()
        .iter()
        .find(|o| matches!(o.class, Class::Enc { direct: false, .. }))
        && let Class::Enc { col, .. } = &o.class
    {
        return Err(refuse_col(
            col,
            format!("{what} returning it without a column origin (UNION, scalar subquery)"),
            "unsupported",
        ));
    }
    Ok(())
}
