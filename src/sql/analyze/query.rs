//! Queries: WITH queries, SELECT and its clauses, set operations, VALUES
//! and select lists. Each yields its output columns with their classes,
//! or `None` where their positions cannot be known, which later stages
//! (derived tables, INSERT ... SELECT, result hints) depend on.

use sqlparser::ast::{
    Expr, GroupByExpr, ObjectName, OrderByKind, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Values,
};

use super::compare::{refuse_col, several_forms};
use super::names::{alias_ref, expr_name, name_parts, norm, positional};
use super::relations::{apply_alias_columns, relation_outputs, wildcard};
use super::{Class, Ctx, Forms, Out, R, RelSource, Scope, UsingJoin, using};
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// Analyses a query; returns its output columns, or `None` when their
    /// positions cannot be known (a `*` over a table pgveil knows nothing of).
    pub(super) fn query(
        &mut self,
        q: &Query,
        parent: Option<&Scope<'_, 'c>>,
    ) -> R<Option<Vec<Out>>> {
        let pushed = self.ctes.len();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let outs = self.query(&cte.query, parent)?;
                let outs = match outs {
                    Some(o) => match apply_alias_columns(
                        RelSource::Derived(o),
                        Some(&cte.alias.columns[..]),
                    ) {
                        RelSource::Derived(o) => Some(o),
                        _ => None,
                    },
                    None => {
                        if self.watched.mentioned_in(&cte.query.to_string()) {
                            return Err(Refusal::general(
                                "a WITH query whose columns cannot be determined",
                                "unsupported",
                            ));
                        }
                        None
                    }
                };
                self.ctes.push((norm(&cte.alias.name), outs));
            }
        }
        let order: Vec<&Expr> = match &q.order_by {
            Some(ob) => match &ob.kind {
                OrderByKind::Expressions(list) => list.iter().map(|o| &o.expr).collect(),
                OrderByKind::All(_) => {
                    return Err(Refusal::general("ORDER BY ALL", "unsupported"));
                }
            },
            None => Vec::new(),
        };
        let result = self.set_expr(&q.body, parent, &order);
        if let Some(lc) = &q.limit_clause
            && self.watched.mentioned_in(&lc.to_string())
        {
            self.ctes.truncate(pushed);
            return Err(Refusal::general(
                "LIMIT or OFFSET expressions over encrypted data",
                "unsupported",
            ));
        }
        self.ctes.truncate(pushed);
        result
    }

    /// The body of a query: a SELECT, a set operation, VALUES, `TABLE t`,
    /// or a data-modifying statement in a WITH query.
    fn set_expr(
        &mut self,
        body: &SetExpr,
        parent: Option<&Scope<'_, 'c>>,
        order: &[&Expr],
    ) -> R<Option<Vec<Out>>> {
        match body {
            SetExpr::Select(s) => self.select(s, parent, order),
            SetExpr::Query(q) => self.query(q, parent),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_operation(left, right, parent, order)
            }
            SetExpr::Values(values) => self.values(values, parent),
            SetExpr::Table(t) => {
                let name = ObjectName::from(
                    t.schema_name
                        .iter()
                        .chain(t.table_name.iter())
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                match self.relation(&name)? {
                    RelSource::Catalog(r) => Ok(Some(relation_outputs(r)?)),
                    RelSource::Derived(o) => Ok(Some(o)),
                    RelSource::Other => Ok(None),
                }
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => self.statement(s),
            other => {
                if self.watched.mentioned_in(&other.to_string()) {
                    return Err(Refusal::general(
                        "this query form over encrypted data",
                        "unsupported",
                    ));
                }
                Ok(None)
            }
        }
    }

    /// A SELECT: its FROM items bound, then each clause analysed in turn.
    fn select(
        &mut self,
        s: &Select,
        parent: Option<&Scope<'_, 'c>>,
        order: &[&Expr],
    ) -> R<Option<Vec<Out>>> {
        let mut rels = Vec::new();
        for t in &s.from {
            self.table_with_joins(t, &mut rels, parent)?;
        }
        let scope = Scope { rels, parent };
        if let Some(w) = &s.selection {
            self.predicate(w, &scope)?;
        }
        if let Some(sqlparser::ast::Distinct::On(exprs)) = &s.distinct {
            for e in exprs {
                // DISTINCT ON compares for equality: fine on ciphertext,
                // but its expressions must be analysable.
                self.expr(e, &scope)?;
            }
        }
        for extra in [&s.prewhere, &s.qualify].into_iter().flatten() {
            if self.watched.mentioned_in(&extra.to_string()) {
                return Err(Refusal::general(
                    "this clause over encrypted data",
                    "unsupported",
                ));
            }
        }
        let outs = self.projection(&s.projection, &scope, order)?;
        self.group_by(&s.group_by, &outs, &scope)?;
        if let Some(h) = &s.having {
            self.predicate(h, &scope)?;
        }
        self.select_into(s, &outs)?;
        if !s.named_window.is_empty() && self.watched.mentioned_in(&s.to_string()) {
            return Err(Refusal::general(
                "WINDOW clauses over encrypted data",
                "unsupported",
            ));
        }
        if outs.iter().any(|o| o.name == "*") {
            if outs
                .iter()
                .any(|o| matches!(o.class, Class::Enc { direct: false, .. }))
            {
                return Err(Refusal::general(
                    "a result column that may hold ciphertext without a known origin, next to `*` over a table pgveil does not know",
                    "unsupported",
                ));
            }
            return Ok(None);
        }
        Ok(Some(outs))
    }

    /// `GROUP BY`: grouping compares for equality, fine on ciphertext; its
    /// expressions (other than output positions and aliases) must be
    /// analysable.
    fn group_by(&mut self, group_by: &GroupByExpr, outs: &[Out], scope: &Scope<'_, 'c>) -> R<()> {
        match group_by {
            GroupByExpr::Expressions(exprs, _) => {
                for e in exprs {
                    // Grouping compares for equality: fine on ciphertext.
                    if let Some(o) = positional(e, outs) {
                        let _ = o;
                        continue;
                    }
                    if let Some(o) = alias_ref(e, outs) {
                        let _ = o;
                        continue;
                    }
                    self.expr(e, scope)?;
                }
            }
            GroupByExpr::All(_) => {}
        }
        Ok(())
    }

    /// `SELECT INTO` creates a table pgveil does not encrypt: refused when
    /// it is a configured table or would receive ciphertext.
    fn select_into(&self, s: &Select, outs: &[Out]) -> R<()> {
        if let Some(into) = &s.into {
            let target = into
                .targets
                .iter()
                .map(|t| t.to_string().to_lowercase())
                .collect::<Vec<_>>()
                .join(" ");
            if self.configured.iter().any(|(_, t)| {
                target
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .any(|w| w == t)
            }) {
                return Err(Refusal::general(
                    format!(
                        "SELECT INTO creating configured table {target} (its rows would not be encrypted)"
                    ),
                    "unsupported",
                ));
            }
            if outs.iter().any(|o| o.name == "*") && self.watched.mentioned_in(&s.to_string()) {
                return Err(Refusal::general(
                    "SELECT INTO over encrypted tables with columns pgveil cannot determine",
                    "unsupported",
                ));
            }
        }
        if s.into.is_some()
            && let Some(o) = outs.iter().find(|o| matches!(o.class, Class::Enc { .. }))
        {
            return Err(Refusal::general(
                format!(
                    "SELECT INTO would copy ciphertext of column {} into an unconfigured table",
                    o.name
                ),
                "unsupported",
            ));
        }
        Ok(())
    }

    /// `UNION`, `INTERSECT`, `EXCEPT`: each output column unifies the
    /// classes of both sides; PostgreSQL reports it without an origin.
    fn set_operation(
        &mut self,
        left: &SetExpr,
        right: &SetExpr,
        parent: Option<&Scope<'_, 'c>>,
        order: &[&Expr],
    ) -> R<Option<Vec<Out>>> {
        let l = self.set_expr(left, parent, &[])?;
        let r = self.set_expr(right, parent, &[])?;
        let (Some(l), Some(r)) = (l, r) else {
            return Ok(None);
        };
        if l.len() != r.len() {
            return Ok(None);
        }
        let mut outs = Vec::with_capacity(l.len());
        for (a, b) in l.into_iter().zip(r) {
            let class = self.unify(a.class, b.class)?;
            outs.push(Out {
                name: a.name,
                class,
            });
        }
        self.order_by(order, &outs, None)?;
        Ok(Some(outs))
    }

    /// A VALUES list: each column unifies the classes of its rows.
    fn values(&mut self, values: &Values, parent: Option<&Scope<'_, 'c>>) -> R<Option<Vec<Out>>> {
        let scope = Scope {
            rels: vec![],
            parent,
        };
        let mut outs: Option<Vec<Out>> = None;
        for row in &values.rows {
            let mut classes = Vec::with_capacity(row.len());
            for e in &row.content {
                classes.push(self.expr(e, &scope)?);
            }
            outs = Some(match outs {
                None => classes
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| Out {
                        name: format!("column{}", i + 1),
                        class: c,
                    })
                    .collect(),
                Some(prev) => {
                    let mut merged = Vec::with_capacity(prev.len());
                    for (p, c) in prev.into_iter().zip(classes) {
                        merged.push(Out {
                            name: p.name,
                            class: self.unify(p.class, c)?,
                        });
                    }
                    merged
                }
            });
        }
        Ok(outs)
    }

    /// Two classes meeting in one output column (UNION, VALUES rows).
    fn unify(&mut self, a: Class, b: Class) -> R<Class> {
        Ok(match (a, b) {
            (Class::Enc { col, .. }, Class::Enc { col: c2, .. }) => {
                if col.domain != c2.domain || col.storage != c2.storage {
                    return Err(refuse_col(
                        &col,
                        format!("combining with {} in one result column", c2.id),
                        "mixed_domains",
                    ));
                }
                if col.forms != c2.forms {
                    // The combined column would be searched for the forms
                    // of one of them only.
                    return Err(several_forms(
                        &col,
                        &format!("combining with {} (another number of stored forms)", c2.id),
                    ));
                }
                Class::Enc { col, direct: false }
            }
            (Class::Enc { col, .. }, Class::Lits(ls))
            | (Class::Lits(ls), Class::Enc { col, .. }) => {
                for l in &ls {
                    self.encrypt_literal(l, &col, Forms::One)?;
                }
                Class::Enc { col, direct: false }
            }
            (Class::Enc { col, .. }, Class::Null) | (Class::Null, Class::Enc { col, .. }) => {
                Class::Enc { col, direct: false }
            }
            (Class::Enc { col, .. }, _) | (_, Class::Enc { col, .. }) => {
                return Err(refuse_col(
                    &col,
                    "combining with plaintext values in one result column",
                    "plaintext_comparison",
                ));
            }
            (Class::Lits(mut a), Class::Lits(b)) => {
                a.extend(b);
                Class::Lits(a)
            }
            (Class::Lits(a), Class::Null) | (Class::Null, Class::Lits(a)) => Class::Lits(a),
            (Class::Null, Class::Null) => Class::Null,
            (Class::Params(mut a, mut ca), Class::Params(b, cb)) => {
                a.extend(b);
                ca.extend(cb);
                Class::Params(a, ca)
            }
            (Class::Params(a, ca), Class::Null) | (Class::Null, Class::Params(a, ca)) => {
                Class::Params(a, ca)
            }
            (Class::Params(a, _), _) | (_, Class::Params(a, _)) => {
                self.plain_params.extend(a);
                Class::Plain
            }
            _ => Class::Plain,
        })
    }

    /// A select list (or `RETURNING` list): the outputs, in order, then
    /// the `ORDER BY` expressions against them.
    pub(super) fn projection(
        &mut self,
        items: &[SelectItem],
        scope: &Scope<'_, 'c>,
        order: &[&Expr],
    ) -> R<Vec<Out>> {
        let mut outs = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let class = self.expr(e, scope)?;
                    outs.push(Out {
                        name: expr_name(e),
                        class,
                    });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let class = self.expr(expr, scope)?;
                    outs.push(Out {
                        name: norm(alias),
                        class,
                    });
                }
                SelectItem::Wildcard(_) => self.star(scope, &mut outs)?,
                SelectItem::QualifiedWildcard(kind, _) => {
                    qualified_star(kind, scope, &mut outs)?;
                }
                other => {
                    if self.watched.mentioned_in(&other.to_string()) {
                        return Err(Refusal::general("this select-list form", "unsupported"));
                    }
                    outs.push(Out {
                        name: "?column?".into(),
                        class: Class::Plain,
                    });
                }
            }
        }
        self.order_by(order, &outs, Some(scope))?;
        Ok(outs)
    }

    /// `*`: every relation's outputs, in the order PostgreSQL lists them
    /// over joins with `USING`.
    fn star(&self, scope: &Scope<'_, 'c>, outs: &mut Vec<Out>) -> R<()> {
        let joins: Vec<&UsingJoin> = self
            .using_joins
            .iter()
            .filter(|j| scope.rels.iter().any(|r| r.name == j.right))
            .collect();
        if joins.is_empty() {
            for rel in &scope.rels {
                wildcard(rel, outs)?;
            }
        } else {
            outs.extend(using::star(&scope.rels, &joins)?);
        }
        Ok(())
    }

    /// `ORDER BY`: by output position, by output alias, or an expression;
    /// ciphertext has no order.
    fn order_by(&mut self, order: &[&Expr], outs: &[Out], scope: Option<&Scope<'_, 'c>>) -> R<()> {
        for e in order {
            let class = if let Some(o) = positional(e, outs) {
                o.class.clone()
            } else if let Some(o) = alias_ref(e, outs) {
                o.class.clone()
            } else if let Some(s) = scope {
                self.expr(e, s)?
            } else if self.watched.mentioned_in(&e.to_string()) {
                return Err(Refusal::general("ORDER BY on a combined query", "order"));
            } else {
                Class::Plain
            };
            self.mark_plain(&class);
            if let Class::Enc { col, .. } = class {
                return Err(refuse_col(&col, "ORDER BY", "order"));
            }
        }
        Ok(())
    }

    /// A boolean condition (WHERE, ON, HAVING).
    pub(super) fn predicate(&mut self, e: &Expr, scope: &Scope<'_, 'c>) -> R<()> {
        match self.expr(e, scope)? {
            Class::Enc { col, .. } => Err(refuse_col(
                &col,
                "using the value as a condition",
                "function",
            )),
            _ => Ok(()),
        }
    }
}

/// `t.*`: the outputs of the relation named, or `*` (plain) when no
/// relation in scope has that name.
fn qualified_star(
    kind: &SelectItemQualifiedWildcardKind,
    scope: &Scope<'_, '_>,
    outs: &mut Vec<Out>,
) -> R<()> {
    let SelectItemQualifiedWildcardKind::ObjectName(n) = kind else {
        return Err(Refusal::general(
            "a wildcard on an expression",
            "unsupported",
        ));
    };
    let parts = name_parts(n);
    let Some(q) = parts.last() else {
        return Ok(());
    };
    match scope.rels.iter().find(|r| r.name == *q) {
        Some(rel) => wildcard(rel, outs)?,
        None => outs.push(Out {
            name: "*".into(),
            class: Class::Plain,
        }),
    }
    Ok(())
}
