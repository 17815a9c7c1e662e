//! `UPDATE` and `DELETE`: the target table and the other items in scope,
//! assignments (each value flows into the column it names, as in INSERT),
//! the condition, and `RETURNING`.

use sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr, FromTable, ObjectName, Update, UpdateTableFromKind,
};

use super::names::is_default;
use super::{Class, Ctx, Out, R, Scope};
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// `UPDATE`: its assignments, condition and `RETURNING` list over the
    /// target table and the `FROM` items.
    pub(super) fn update(&mut self, u: &Update) -> R<Option<Vec<Out>>> {
        let mut rels = Vec::new();
        self.target = true;
        let target = self.table_with_joins(&u.table, &mut rels, None);
        self.target = false;
        target?;
        if let Some(from) = &u.from {
            let list = match from {
                UpdateTableFromKind::BeforeSet(l) | UpdateTableFromKind::AfterSet(l) => l,
            };
            for t in list {
                self.table_with_joins(t, &mut rels, None)?;
            }
        }
        let scope = Scope { rels, parent: None };
        self.view_write_check(&scope)?;
        for a in &u.assignments {
            self.assignment(a, &scope)?;
        }
        if let Some(w) = &u.selection {
            self.predicate(w, &scope)?;
        }
        match &u.returning {
            Some(items) => Ok(Some(self.projection(items, &scope, &[])?)),
            None => Ok(None),
        }
    }

    /// One `SET` assignment: the value flows into the column it names.
    fn assignment(&mut self, a: &Assignment, scope: &Scope<'_, 'c>) -> R<()> {
        let targets: Vec<&ObjectName> = match &a.target {
            AssignmentTarget::ColumnName(n) => vec![n],
            AssignmentTarget::Tuple(ns) => ns.iter().collect(),
        };
        if targets.len() != 1 {
            return self.multi_assignment(&targets, &a.value, scope);
        }
        if is_default(&a.value) {
            return Ok(());
        }
        let target = self.target_column(scope, targets[0]);
        let value = self.expr(&a.value, scope)?;
        self.assign(target.as_ref(), value)
    }

    /// `SET (a, b) = ...`: refused onto encrypted columns; the sources may
    /// still carry ciphertext into the plain targets.
    fn multi_assignment(
        &mut self,
        targets: &[&ObjectName],
        value: &Expr,
        scope: &Scope<'_, 'c>,
    ) -> R<()> {
        if targets
            .iter()
            .any(|n| self.target_column(scope, n).is_some())
        {
            return Err(Refusal::general(
                "multi-column assignment to an encrypted column",
                "unsupported",
            ));
        }
        // The sources may still carry ciphertext into the
        // plain targets: check each source against none.
        let sources: Vec<Class> = match value {
            Expr::Subquery(q) => match self.query(q, Some(scope))? {
                Some(outs) => outs.into_iter().map(|o| o.class).collect(),
                None => {
                    if self.watched.mentioned_in(&q.to_string()) {
                        return Err(Refusal::general(
                            "a multi-column assignment from a subquery pgveil cannot analyse",
                            "unsupported",
                        ));
                    }
                    Vec::new()
                }
            },
            Expr::Tuple(items) => {
                let mut v = Vec::new();
                for e in items {
                    v.push(self.expr(e, scope)?);
                }
                v
            }
            other => vec![self.expr(other, scope)?],
        };
        for class in sources {
            self.assign(None, class)?;
        }
        Ok(())
    }

    /// `DELETE`: its condition and `RETURNING` list over the target table
    /// and the `USING` items.
    pub(super) fn delete(&mut self, d: &Delete) -> R<Option<Vec<Out>>> {
        let mut rels = Vec::new();
        let tables = match &d.from {
            FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
        };
        self.target = true;
        let targets: R<()> = tables
            .iter()
            .try_for_each(|t| self.table_with_joins(t, &mut rels, None));
        self.target = false;
        targets?;
        if let Some(using) = &d.using {
            for t in using {
                self.table_with_joins(t, &mut rels, None)?;
            }
        }
        let scope = Scope { rels, parent: None };
        self.view_write_check(&scope)?;
        if let Some(w) = &d.selection {
            self.predicate(w, &scope)?;
        }
        match &d.returning {
            Some(items) => Ok(Some(self.projection(items, &scope, &[])?)),
            None => Ok(None),
        }
    }
}
