//! Planning one statement: the dispatch on its kind, and what several
//! statement families share (target columns, writes through views).
//! Statements that name encrypted data but that pgveil does not model are
//! refused; those that carry no values (transaction control, DROP) pass.

use sqlparser::ast::{ObjectName, Statement};

use super::names::{name_parts, statement_kind};
use super::{Ctx, Out, R, RelSource, Scope};
use crate::catalog::{Encrypted, RelationKind};
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// Analyses a statement; returns its output columns when it has a
    /// result whose positions are known. Each family has its own method.
    pub(super) fn statement(&mut self, stmt: &Statement) -> R<Option<Vec<Out>>> {
        match stmt {
            Statement::Query(q) => {
                let outs = self.query(q, None)?;
                Ok(outs)
            }
            Statement::Insert(ins) => self.insert(ins, None),
            Statement::Update(u) => self.update(u),
            Statement::Delete(d) => self.delete(d),
            Statement::Explain { statement, .. } => self.statement(statement),
            Statement::Prepare {
                name,
                data_types,
                statement,
            } => self.prepare(name, data_types, statement),
            Statement::Execute {
                name: Some(name),
                parameters,
                using,
                ..
            } => self.execute(name, parameters, using),
            Statement::Declare { stmts, .. } => self.declare(stmts),
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                payload,
            } => {
                self.copy(
                    source,
                    *to,
                    target,
                    options,
                    legacy_options,
                    payload.is_some(),
                )?;
                Ok(None)
            }
            Statement::CreateView(v) => self.create_view(v),
            Statement::CreateIndex(ci) => self.create_index(ci),
            Statement::CreateTable(ct) => self.create_table(ct),
            Statement::AlterTable(at) => self.alter_table(at),
            Statement::Drop { .. }
            | Statement::Truncate(_)
            | Statement::Lock(_)
            | Statement::LockTables { .. }
            | Statement::Comment { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::Discard { .. }
            | Statement::Deallocate { .. } => Ok(None),
            other => Err(Refusal::general(
                format!(
                    "{} statements naming encrypted tables or columns are not supported",
                    statement_kind(other)
                ),
                "unsupported",
            )),
        }
    }

    /// Whether `schema.table.column` is configured as encrypted.
    pub(super) fn configured_column(&self, schema: &str, table: &str, column: &str) -> bool {
        self.watched
            .columns
            .iter()
            .any(|(s, t, c)| s == schema && t == table && c == column)
    }

    /// Writing through a view is refused: pgveil would have to follow the
    /// view back to its table's columns, which it does not.
    pub(super) fn view_write_check(&self, scope: &Scope<'_, 'c>) -> R<()> {
        if let Some(rel) = scope.rels.first()
            && let RelSource::Catalog(r) = &rel.source
            && r.kind == RelationKind::View
        {
            return Err(Refusal::general(
                format!("writing through view {}.{}", r.schema, r.name),
                "view_write",
            ));
        }
        Ok(())
    }

    /// The encrypted column an assignment or ON CONFLICT target names, in
    /// the statement's target relation.
    pub(super) fn target_column(&self, scope: &Scope<'_, 'c>, n: &ObjectName) -> Option<Encrypted> {
        let parts = name_parts(n);
        let col = parts.last()?;
        scope.rels.first().and_then(|r| match &r.source {
            RelSource::Catalog(rel) => rel.column(col).and_then(|c| c.encrypted.clone()),
            _ => None,
        })
    }
}

/// DDL after which the catalog is reloaded.
pub(super) fn is_ddl(stmt: &Statement) -> bool {
    matches!(
        stmt,
        Statement::CreateTable(_)
            | Statement::AlterTable(_)
            | Statement::CreateView(_)
            | Statement::Drop { .. }
            | Statement::CreateSchema { .. }
            | Statement::AlterView { .. }
            | Statement::CreateIndex(_)
    )
}

/// Whether a statement is `SET search_path` (the session's path changes
/// how unqualified names resolve).
pub(super) fn sets_search_path(stmt: &Statement) -> bool {
    let s = stmt.to_string().to_lowercase();
    s.starts_with("set") && s.contains("search_path")
}
