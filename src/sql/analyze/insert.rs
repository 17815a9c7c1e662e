//! `INSERT` and the flow of values into columns: a literal reaching an
//! encrypted column is encrypted, a parameter is bound to it, ciphertext
//! may move only within its domain, and ciphertext never lands in a plain
//! column. `assign` is shared by UPDATE, ON CONFLICT and EXECUTE.

use sqlparser::ast::{
    AssignmentTarget, ConflictTarget, Insert, OnConflict, OnConflictAction, OnInsert, Query,
    SetExpr, TableObject,
};

use super::compare::{refuse_col, several_forms};
use super::names::{is_default, name_parts, norm};
use super::{Class, Ctx, Forms, Out, R, Rel, RelSource, Scope};
use crate::catalog::Encrypted;
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// `INSERT`: each value must fit its target column; `ON CONFLICT` and
    /// `RETURNING` are analysed over the target (and `excluded`).
    pub(super) fn insert(
        &mut self,
        ins: &Insert,
        _parent: Option<&Scope<'_, 'c>>,
    ) -> R<Option<Vec<Out>>> {
        let name = match &ins.table {
            TableObject::TableName(n) => n,
            TableObject::TableFunction(_) | TableObject::TableQuery(_) => {
                return Err(Refusal::general(
                    "INSERT into a table function",
                    "unsupported",
                ));
            }
        };
        self.target = true;
        let rel = self.relation(name);
        self.target = false;
        let rel = rel?;
        let alias = ins
            .table_alias
            .as_ref()
            .map(|a| norm(&a.alias))
            .unwrap_or_else(|| name_parts(name).last().cloned().unwrap_or_default());
        let target_rel = Rel {
            name: alias,
            schema: None,
            source: rel.clone(),
        };
        let scope = Scope {
            rels: vec![target_rel.clone()],
            parent: None,
        };
        self.view_write_check(&scope)?;
        let targets = insert_targets(ins, &rel);
        if let Some(t) = &targets {
            for col in t.iter().flatten() {
                self.check_storage(col)?;
            }
        }
        if let Some(src) = &ins.source {
            self.insert_source(src, targets.as_deref())?;
        }
        if let Some(OnInsert::OnConflict(oc)) = &ins.on {
            self.on_conflict(oc, &scope, &rel)?;
        } else if let Some(OnInsert::DuplicateKeyUpdate(_)) = &ins.on {
            return Err(Refusal::general("ON DUPLICATE KEY", "unsupported"));
        }
        match &ins.returning {
            Some(items) => Ok(Some(self.projection(items, &scope, &[])?)),
            None => Ok(None),
        }
    }

    /// `ON CONFLICT`: the arbiter's predicate over the target, and `DO
    /// UPDATE` assignments over the target and `excluded`.
    fn on_conflict(
        &mut self,
        oc: &OnConflict,
        scope: &Scope<'_, 'c>,
        rel: &RelSource<'c>,
    ) -> R<()> {
        if let Some(ConflictTarget::Columns {
            predicate: Some(pred),
            ..
        }) = &oc.conflict_target
        {
            self.predicate(pred, scope)?;
        }
        if let OnConflictAction::DoUpdate(du) = &oc.action {
            let mut rels = scope.rels.clone();
            rels.push(Rel {
                name: "excluded".into(),
                schema: None,
                source: rel.clone(),
            });
            let s2 = Scope { rels, parent: None };
            for a in &du.assignments {
                let AssignmentTarget::ColumnName(n) = &a.target else {
                    return Err(Refusal::general(
                        "multi-column assignment in ON CONFLICT",
                        "unsupported",
                    ));
                };
                let target = self.target_column(&s2, n);
                let value = self.expr(&a.value, &s2)?;
                self.assign(target.as_ref(), value)?;
            }
            if let Some(w) = &du.selection {
                self.predicate(w, &s2)?;
            }
        }
        Ok(())
    }

    /// The source of an INSERT: each value must fit its target column.
    fn insert_source(&mut self, src: &Query, targets: Option<&[Option<Encrypted>]>) -> R<()> {
        if let (SetExpr::Values(values), None) = (src.body.as_ref(), &src.with) {
            for row in &values.rows {
                for (i, e) in row.content.iter().enumerate() {
                    let target = targets.and_then(|t| t.get(i)).cloned().flatten();
                    if is_default(e) {
                        continue;
                    }
                    let class = self.expr(
                        e,
                        &Scope {
                            rels: vec![],
                            parent: None,
                        },
                    )?;
                    self.assign(target.as_ref(), class)?;
                }
            }
            return Ok(());
        }
        let outs = self.query(src, None)?;
        match (outs, targets) {
            (Some(outs), Some(targets)) => {
                for (o, t) in outs.into_iter().zip(targets.iter()) {
                    self.assign(t.as_ref(), o.class)?;
                }
                Ok(())
            }
            (Some(outs), None) => {
                for o in outs {
                    self.assign(None, o.class)?;
                }
                Ok(())
            }
            (None, Some(t)) if t.iter().all(|c| c.is_none()) => Ok(()),
            (None, _) => Err(Refusal::general(
                "INSERT ... SELECT whose columns pgveil cannot line up with the encrypted target columns",
                "unsupported",
            )),
        }
    }

    /// A value flowing into a column (`None` = a plaintext column).
    pub(super) fn assign(&mut self, target: Option<&Encrypted>, value: Class) -> R<()> {
        match (target, value) {
            (Some(t), Class::Lits(lits)) => {
                for l in lits {
                    self.encrypt_literal(&l, t, Forms::One)?;
                }
                Ok(())
            }
            (Some(_), Class::Null) => Ok(()),
            (Some(t), Class::Enc { col, .. }) => {
                if col.domain == t.domain && col.storage == t.storage && col.forms > t.forms {
                    // Plaintext or old-version values of a column in its
                    // window would land in one that cannot hold them.
                    Err(several_forms(
                        &col,
                        &format!("copying into {} (fewer stored forms)", t.id),
                    ))
                } else if col.domain == t.domain && col.storage == t.storage {
                    Ok(())
                } else {
                    Err(refuse_col(
                        t,
                        format!(
                            "copying values of {} (another key domain or storage)",
                            col.id
                        ),
                        "mixed_domains",
                    ))
                }
            }
            (Some(t), Class::Params(ns, casts)) => {
                self.bind_params(&ns, &casts, t, false, Forms::One)
            }
            (Some(t), Class::Plain) => Err(refuse_col(
                t,
                "writing a value pgveil cannot see (an expression or plaintext column)",
                "plaintext_comparison",
            )),
            (None, Class::Enc { col, .. }) => Err(refuse_col(
                &col,
                "copying ciphertext into a column that is not encrypted",
                "plaintext_comparison",
            )),
            (None, Class::Lits(ls)) => {
                self.plain_uses.extend(ls.into_iter().map(|l| l.range));
                Ok(())
            }
            (None, Class::Params(ns, _)) => {
                self.plain_params.extend(ns);
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }
}

/// The target columns of an INSERT, in order, and the encrypted column
/// each is; `None` for a table pgveil does not know (its columns are plain).
fn insert_targets(ins: &Insert, rel: &RelSource<'_>) -> Option<Vec<Option<Encrypted>>> {
    match rel {
        RelSource::Catalog(r) => Some(if ins.columns.is_empty() {
            r.columns.iter().map(|c| c.encrypted.clone()).collect()
        } else {
            ins.columns
                .iter()
                .map(|c| {
                    let parts = name_parts(c);
                    let col = parts.last().cloned().unwrap_or_default();
                    r.column(&col).and_then(|c| c.encrypted.clone())
                })
                .collect()
        }),
        _ => None,
    }
}
