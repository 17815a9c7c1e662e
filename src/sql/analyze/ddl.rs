//! DDL over configured tables: views and index predicates (stored
//! expressions, analysed like queries, their literals encrypted), CREATE
//! TABLE and ALTER TABLE (no defaults, type changes or constraint
//! expressions on encrypted columns, no renames of what the configuration
//! names).

use sqlparser::ast::{
    AlterColumnOperation, AlterTable, AlterTableOperation, ColumnOption, CreateIndex, CreateTable,
    CreateView, Ident, Query, TableConstraint,
};

use super::literal::has_literals;
use super::names::{name_parts, norm};
use super::{Class, Ctx, Out, R, Rel, RelSource, Scope};
use crate::catalog::{Relation, RelationKind};
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// `CREATE VIEW`: its query is analysed as stored DDL (its literals
    /// are encrypted, so the view compares ciphertext).
    pub(super) fn create_view(&mut self, v: &CreateView) -> R<Option<Vec<Out>>> {
        // Its literals would be stored in the view definition: they
        // are encrypted like any other, so the view compares ciphertext.
        self.touches = true;
        let was_stale = self.stale;
        self.in_ddl = true;
        let analysed = self.query(&v.query, None);
        self.in_ddl = false;
        analysed?;
        if self.stale && !was_stale && !has_literals(&v.query.to_string()) {
            // Over a table created earlier in this same Query: with
            // no literal in it, the view stores nothing to encrypt;
            // it is mapped when the catalog is next read.
            self.stale = was_stale;
        }
        Ok(None)
    }

    /// `CREATE INDEX ... WHERE`: the predicate is stored DDL over the table.
    pub(super) fn create_index(&mut self, ci: &CreateIndex) -> R<Option<Vec<Out>>> {
        if let Some(pred) = &ci.predicate {
            let mut rels = Vec::new();
            let source = self.relation(&ci.table_name)?;
            rels.push(Rel {
                name: name_parts(&ci.table_name)
                    .last()
                    .cloned()
                    .unwrap_or_default(),
                schema: None,
                source,
            });
            let scope = Scope { rels, parent: None };
            self.in_ddl = true;
            let analysed = self.predicate(pred, &scope);
            self.in_ddl = false;
            analysed?;
        }
        Ok(None)
    }

    /// `CREATE TABLE`: no DEFAULT or generated value on a configured
    /// column, and `CREATE TABLE AS` may not create a configured table or
    /// copy ciphertext into an unconfigured one.
    pub(super) fn create_table(&mut self, ct: &CreateTable) -> R<Option<Vec<Out>>> {
        let parts = name_parts(&ct.name);
        let (schema, table) = match parts.as_slice() {
            [t] => (
                self.catalog
                    .search_path
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "public".into()),
                t.clone(),
            ),
            [s, t] | [_, s, t] => (s.clone(), t.clone()),
            _ => (String::new(), String::new()),
        };
        for col in &ct.columns {
            let has_default = col.options.iter().any(|o| {
                matches!(
                    o.option,
                    sqlparser::ast::ColumnOption::Default(_)
                        | sqlparser::ast::ColumnOption::Generated { .. }
                )
            });
            if has_default && self.configured_column(&schema, &table, &norm(&col.name)) {
                return Err(Refusal::on_column(
                    &format!("{schema}.{table}.{}", norm(&col.name)),
                    "a DEFAULT (the database would store it in plaintext)",
                    "unsupported",
                ));
            }
        }
        if let Some(q) = &ct.query {
            self.create_table_as(q, &table)?;
        }
        Ok(None)
    }

    /// `CREATE TABLE table AS query`.
    fn create_table_as(&mut self, q: &Query, table: &str) -> R<()> {
        if self.configured.iter().any(|(_, t)| *t == table) {
            return Err(Refusal::general(
                format!(
                    "CREATE TABLE AS creating configured table {table} (its rows would not be encrypted); create it, then INSERT"
                ),
                "unsupported",
            ));
        }
        let outs = self.query(q, None)?;
        if outs.is_none() && self.watched.mentioned_in(&q.to_string()) {
            return Err(Refusal::general(
                "CREATE TABLE AS over encrypted tables with columns pgveil cannot determine",
                "unsupported",
            ));
        }
        if let Some(outs) = outs
            && let Some(o) = outs.iter().find(|o| matches!(o.class, Class::Enc { .. }))
        {
            return Err(Refusal::general(
                format!(
                    "CREATE TABLE AS would copy ciphertext of column {} into an unconfigured table",
                    o.name
                ),
                "unsupported",
            ));
        }
        Ok(())
    }

    /// `ALTER TABLE`, on a table pgveil knows: each operation checked.
    pub(super) fn alter_table(&mut self, at: &AlterTable) -> R<Option<Vec<Out>>> {
        if let RelSource::Catalog(rel) = self.relation(&at.name)? {
            for op in &at.operations {
                self.alter_table_operation(rel, op)?;
            }
        }
        Ok(None)
    }

    /// One `ALTER TABLE` operation: no renames or moves of configured
    /// tables and columns, no DEFAULT, type change or constraint expression
    /// on an encrypted column.
    fn alter_table_operation(&self, rel: &Relation, op: &AlterTableOperation) -> R<()> {
        let renamed = match op {
            AlterTableOperation::RenameColumn {
                old_column_name,
                new_column_name,
            } => {
                let old = norm(old_column_name);
                let new = norm(new_column_name);
                self.configured_column(&rel.schema, &rel.name, &old)
                    || self.configured_column(&rel.schema, &rel.name, &new)
                    || rel.column(&old).is_some_and(|c| c.encrypted.is_some())
            }
            AlterTableOperation::RenameTable { .. } => rel.kind == RelationKind::Table,
            _ => false,
        };
        if renamed {
            return Err(Refusal::general(
                format!(
                    "renaming configured table {}.{} or its encrypted columns (change proxy.toml together with the schema, then reload)",
                    rel.schema, rel.name
                ),
                "unsupported",
            ));
        }
        if op.to_string().to_uppercase().starts_with("SET SCHEMA")
            && rel.kind == RelationKind::Table
        {
            return Err(Refusal::general(
                format!(
                    "moving configured table {}.{} to another schema",
                    rel.schema, rel.name
                ),
                "unsupported",
            ));
        }
        let (column, has_default) = match op {
            AlterTableOperation::AlterColumn {
                column_name,
                op: AlterColumnOperation::SetDefault { .. },
            } => (norm(column_name), true),
            AlterTableOperation::AddColumn { column_def, .. } => (
                norm(&column_def.name),
                column_def.options.iter().any(|o| {
                    matches!(
                        o.option,
                        ColumnOption::Default(_) | ColumnOption::Generated { .. }
                    )
                }),
            ),
            AlterTableOperation::AlterColumn {
                column_name,
                op: AlterColumnOperation::SetDataType { .. },
            } => return self.alter_column_type(rel, column_name),
            AlterTableOperation::AddConstraint { constraint, .. } => {
                return self.add_constraint(rel, op, constraint);
            }
            _ => return Ok(()),
        };
        let configured = self.configured_column(&rel.schema, &rel.name, &column)
            || rel.column(&column).is_some_and(|c| c.encrypted.is_some());
        if has_default && configured {
            return Err(Refusal::on_column(
                &format!("{}.{}.{column}", rel.schema, rel.name),
                "a DEFAULT (the database would store it in plaintext)",
                "unsupported",
            ));
        }
        Ok(())
    }

    /// `ALTER COLUMN ... TYPE` on an encrypted column (a USING expression
    /// would write plaintext).
    fn alter_column_type(&self, rel: &Relation, column_name: &Ident) -> R<()> {
        let c = norm(column_name);
        if self.configured_column(&rel.schema, &rel.name, &c)
            || rel.column(&c).is_some_and(|col| col.encrypted.is_some())
        {
            return Err(Refusal::on_column(
                &format!("{}.{}.{c}", rel.schema, rel.name),
                "changing its type (a USING expression would write plaintext; see docs/SQL.md for the migration)",
                "unsupported",
            ));
        }
        Ok(())
    }

    /// `ADD CONSTRAINT`: keys compare ciphertext for equality, which is
    /// right; an expression (CHECK) over an encrypted column is not.
    fn add_constraint(
        &self,
        rel: &Relation,
        op: &AlterTableOperation,
        constraint: &TableConstraint,
    ) -> R<()> {
        // Keys compare ciphertext for equality, which
        // is right; an expression (CHECK) is not.
        if matches!(
            constraint,
            sqlparser::ast::TableConstraint::Unique(_)
                | sqlparser::ast::TableConstraint::PrimaryKey(_)
                | sqlparser::ast::TableConstraint::ForeignKey(_)
        ) {
            return Ok(());
        }
        if rel.columns.iter().any(|c| {
            c.encrypted.is_some()
                && self.watched.mentioned_in(&format!(" {} ", c.name))
                && op
                    .to_string()
                    .to_lowercase()
                    .split(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
                    .any(|w| w == c.name)
        }) {
            return Err(Refusal::general(
                "a constraint expression over encrypted columns (it would run on ciphertext; plaintext literals would be stored in the catalog)",
                "function",
            ));
        }
        Ok(())
    }
}
