//! Binding names to relations: FROM items (tables, views, CTEs, derived
//! tables, joins) become the relations in scope, and column references are
//! resolved against them, nearest scope first. A relation pgveil knows
//! nothing of makes an unqualified reference ambiguous where an encrypted
//! column could be meant.

use sqlparser::ast::{
    Ident, JoinConstraint, JoinOperator, ObjectName, Query, TableAlias, TableFactor, TableWithJoins,
};

use super::names::{name_parts, norm};
use super::{Class, Ctx, Out, R, Rel, RelSource, Scope, UsingJoin};
use crate::catalog::{Relation, StorageState};
use crate::sql::refusal::Refusal;

impl<'c, 'a> Ctx<'c, 'a> {
    /// Resolves a table name to what pgveil knows of it.
    pub(super) fn relation(&mut self, name: &ObjectName) -> R<RelSource<'c>> {
        let parts = name_parts(name);
        let (schema, table) = match parts.as_slice() {
            [t] => (None, t.clone()),
            [s, t] => (Some(s.clone()), t.clone()),
            [_, s, t] => (Some(s.clone()), t.clone()),
            _ => return Ok(RelSource::Other),
        };
        if schema.is_none()
            && let Some((_, outs)) = self.ctes.iter().rev().find(|(n, _)| *n == table)
        {
            if self.target && self.catalog.has_name(&table) {
                // PostgreSQL reads FROM items as the WITH query but the
                // target of INSERT, UPDATE or DELETE as the table.
                return Err(Refusal::general(
                    format!("a WITH query named like table {table}, which holds encrypted columns"),
                    "unsupported",
                ));
            }
            return Ok(match outs {
                Some(o) => RelSource::Derived(o.clone()),
                None => RelSource::Other,
            });
        }
        let found = match &schema {
            Some(s) => self.catalog.relation(s, &table),
            None => self.catalog.resolve_unqualified(&table),
        };
        match found {
            Some(r) => {
                self.touches = true;
                if let Some(why) = &r.opaque {
                    return Err(Refusal::general(
                        format!("view {}.{} cannot be analysed ({why})", r.schema, r.name),
                        "unparsed",
                    ));
                }
                Ok(RelSource::Catalog(r))
            }
            None if schema.is_none() && self.catalog.has_name(&table) => {
                // A view or table over encrypted data exists under this name
                // in a schema the known search path does not reach: the
                // session's path may differ from the one pgveil read.
                Err(Refusal::general(
                    format!(
                        "`{table}` names a relation over encrypted columns outside the search path pgveil knows; qualify it with its schema"
                    ),
                    "unsupported",
                ))
            }
            None => {
                let configured = self
                    .configured
                    .iter()
                    .any(|(s, t)| *t == table && schema.as_ref().is_none_or(|want| want == s));
                if configured {
                    // Configured but unknown here: the catalog may be stale.
                    self.stale = true;
                }
                Ok(RelSource::Other)
            }
        }
    }

    /// The FROM items of one entry of a FROM list, joins included, pushed
    /// onto `rels`; join conditions are analysed as they come.
    pub(super) fn table_with_joins(
        &mut self,
        t: &TableWithJoins,
        rels: &mut Vec<Rel<'c>>,
        parent: Option<&Scope<'_, 'c>>,
    ) -> R<()> {
        let start = rels.len();
        self.from_items += 1;
        let item = self.from_items;
        self.table_factor(&t.relation, rels, parent)?;
        for j in &t.joins {
            self.table_factor(&j.relation, rels, parent)?;
            let constraint = join_constraint(&j.join_operator)?;
            self.join_condition(constraint, rels, start, item, parent)?;
        }
        Ok(())
    }

    /// A join's condition, once its right side is the last of `rels` (the
    /// item's relations start at `start`): `ON` is a predicate, `USING`
    /// compares the columns of both sides.
    fn join_condition(
        &mut self,
        constraint: &JoinConstraint,
        rels: &[Rel<'c>],
        start: usize,
        item: usize,
        parent: Option<&Scope<'_, 'c>>,
    ) -> R<()> {
        match constraint {
            JoinConstraint::On(e) => {
                let scope = Scope {
                    rels: rels.to_vec(),
                    parent,
                };
                self.predicate(e, &scope)?;
            }
            JoinConstraint::Using(cols) => self.using_join(cols, rels, start, item)?,
            JoinConstraint::Natural
                if rels
                    .iter()
                    .any(|r| matches!(r.source, RelSource::Catalog(_))) =>
            {
                return Err(Refusal::general(
                    "NATURAL JOIN with a table holding encrypted columns",
                    "unsupported",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// `JOIN ... USING (cols)`: recorded for the order of `*`, and each
    /// column compared for equality between the two sides.
    fn using_join(
        &mut self,
        cols: &[ObjectName],
        rels: &[Rel<'c>],
        start: usize,
        item: usize,
    ) -> R<()> {
        let n = rels.len();
        self.using_joins.push(UsingJoin {
            item,
            left: rels[start..n - 1].iter().map(|r| r.name.clone()).collect(),
            right: rels[n - 1].name.clone(),
            columns: cols
                .iter()
                .filter_map(|c| name_parts(c).last().cloned())
                .collect(),
        });
        for c in cols {
            let parts = name_parts(c);
            let Some(col) = parts.last() else { continue };
            let left = Scope {
                rels: rels[..n - 1].to_vec(),
                parent: None,
            };
            let right = Scope {
                rels: rels[n - 1..].to_vec(),
                parent: None,
            };
            let l = self.lookup(&left, None, col)?.unwrap_or(Class::Plain);
            let r = self.lookup(&right, None, col)?.unwrap_or(Class::Plain);
            self.compare(l, r, "=")?;
        }
        Ok(())
    }

    /// One FROM item, pushed onto `rels` under the name it is referred to by.
    fn table_factor(
        &mut self,
        f: &TableFactor,
        rels: &mut Vec<Rel<'c>>,
        parent: Option<&Scope<'_, 'c>>,
    ) -> R<()> {
        match f {
            TableFactor::Table {
                name, alias, args, ..
            } => self.named_table(f, name, alias.as_ref(), args.is_some(), rels),
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => self.derived_table(*lateral, subquery, alias.as_ref(), rels, parent),
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if alias.is_some() {
                    return Err(Refusal::general(
                        "an aliased parenthesised join",
                        "unsupported",
                    ));
                }
                self.table_with_joins(table_with_joins, rels, parent)
            }
            other => {
                if self.watched.mentioned_in(&other.to_string()) {
                    return Err(Refusal::general(
                        "this kind of FROM item over encrypted data",
                        "unsupported",
                    ));
                }
                rels.push(Rel {
                    name: String::new(),
                    schema: None,
                    source: RelSource::Other,
                });
                Ok(())
            }
        }
    }

    /// A table, view or CTE by name (or a table function, `f` being the
    /// whole item, when `function` is set).
    fn named_table(
        &mut self,
        f: &TableFactor,
        name: &ObjectName,
        alias: Option<&TableAlias>,
        function: bool,
        rels: &mut Vec<Rel<'c>>,
    ) -> R<()> {
        let source = if function {
            if self.watched.mentioned_in(&f.to_string()) {
                return Err(Refusal::general(
                    "a table function over encrypted data",
                    "function",
                ));
            }
            RelSource::Other
        } else {
            self.relation(name)?
        };
        let parts = name_parts(name);
        let source = apply_alias_columns(source, alias.map(|a| &a.columns[..]));
        rels.push(Rel {
            name: alias
                .map(|a| norm(&a.name))
                .unwrap_or_else(|| parts.last().cloned().unwrap_or_default()),
            schema: if alias.is_none() && parts.len() > 1 {
                parts.get(parts.len() - 2).cloned()
            } else {
                None
            },
            source,
        });
        Ok(())
    }

    /// A subquery in FROM; a `LATERAL` one sees the items before it.
    fn derived_table(
        &mut self,
        lateral: bool,
        subquery: &Query,
        alias: Option<&TableAlias>,
        rels: &mut Vec<Rel<'c>>,
        parent: Option<&Scope<'_, 'c>>,
    ) -> R<()> {
        let outs = if lateral {
            let scope = Scope {
                rels: rels.clone(),
                parent,
            };
            self.query(subquery, Some(&scope))?
        } else {
            self.query(subquery, None)?
        };
        let source = match outs {
            Some(o) => RelSource::Derived(o),
            None => RelSource::Other,
        };
        let source = apply_alias_columns(source, alias.map(|a| &a.columns[..]));
        rels.push(Rel {
            name: alias.map(|a| norm(&a.name)).unwrap_or_default(),
            schema: None,
            source,
        });
        Ok(())
    }

    /// The class of column `col` (of the relation `qualifier` names, if
    /// any), looked up from the nearest scope outwards; `None` when no
    /// relation in any scope has it.
    fn lookup(
        &mut self,
        scope: &Scope<'_, 'c>,
        qualifier: Option<&[String]>,
        col: &str,
    ) -> R<Option<Class>> {
        let mut level = Some(scope);
        let mut unknown_nearer = false;
        while let Some(s) = level {
            let (found, has_other) = self.columns_named(s, qualifier, col)?;
            if !found.is_empty() {
                let enc = found.iter().any(|c| matches!(c, Class::Enc { .. }));
                if enc && (found.len() > 1 || unknown_nearer) {
                    return Err(Refusal::general(
                        format!("ambiguous reference to encrypted column {col}"),
                        "unsupported",
                    ));
                }
                return Ok(found.into_iter().next());
            }
            if has_other && qualifier.is_none() {
                unknown_nearer = true;
            }
            if let Some(class) = missing_column(s, qualifier, col)? {
                return Ok(Some(class));
            }
            level = s.parent;
        }
        Ok(None)
    }

    /// The classes of the columns named `col` in one scope's relations
    /// (those `qualifier` names, if any), and whether a relation pgveil
    /// knows nothing of is among them.
    fn columns_named(
        &mut self,
        s: &Scope<'_, 'c>,
        qualifier: Option<&[String]>,
        col: &str,
    ) -> R<(Vec<Class>, bool)> {
        let mut found: Vec<Class> = Vec::new();
        let mut has_other = false;
        for rel in &s.rels {
            if let Some(q) = qualifier {
                let (qs, qt) = match q {
                    [t] => (None, t),
                    [s, t] => (Some(s), t),
                    [_, s, t] => (Some(s), t),
                    _ => continue,
                };
                if rel.name != *qt {
                    continue;
                }
                if let (Some(want), Some(have)) = (qs, &rel.schema)
                    && want != have
                {
                    continue;
                }
            }
            match &rel.source {
                RelSource::Catalog(r) => {
                    if let Some(c) = r.column(col) {
                        found.push(match &c.encrypted {
                            Some(e) => {
                                self.check_storage(e)?;
                                Class::Enc {
                                    col: e.clone(),
                                    direct: true,
                                }
                            }
                            None => Class::Plain,
                        });
                    }
                }
                RelSource::Derived(outs) => {
                    if let Some(o) = outs.iter().find(|o| o.name == col) {
                        if let Class::Params(ns, _) = &o.class {
                            self.derived_params.extend(ns.iter().copied());
                        }
                        found.push(via_column(o.class.clone()));
                    }
                }
                RelSource::Other => has_other = true,
            }
        }
        Ok((found, has_other))
    }

    /// A column reference (`c`, `t.c`, `s.t.c`), or a whole-row one.
    pub(super) fn column_ref(&mut self, parts: &[Ident], scope: &Scope<'_, 'c>) -> R<Class> {
        let names: Vec<String> = parts.iter().map(norm).collect();
        let Some((col, qual)) = names.split_last() else {
            return Ok(Class::Plain);
        };
        let qualifier = if qual.is_empty() { None } else { Some(qual) };
        match self.lookup(scope, qualifier, col)? {
            Some(c) => Ok(c),
            None if qualifier.is_none() => {
                // Not a column: maybe a whole-row reference (`to_json(c)`).
                self.whole_row(scope, col)?;
                Ok(Class::Plain)
            }
            None => Ok(Class::Plain),
        }
    }

    /// Whether a word of `text` is the name, in scope, of a relation with
    /// encrypted columns (`(c).to_json` reads the row of `c` whole).
    pub(super) fn names_encrypted_rel(&self, scope: &Scope<'_, 'c>, text: &str) -> bool {
        let words: Vec<String> = text
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .map(str::to_lowercase)
            .collect();
        let mut level = Some(scope);
        while let Some(s) = level {
            if s.rels.iter().any(|rel| {
                words.iter().any(|w| *w == rel.name.to_lowercase())
                    && self.whole_row(s, &rel.name).is_err()
            }) {
                return true;
            }
            level = s.parent;
        }
        false
    }

    /// Refuses a whole-row reference to a relation holding ciphertext.
    pub(super) fn whole_row(&self, scope: &Scope<'_, 'c>, name: &str) -> R<()> {
        let mut level = Some(scope);
        while let Some(s) = level {
            for rel in s.rels.iter().filter(|r| r.name == name) {
                let has_enc = match &rel.source {
                    RelSource::Catalog(r) => r.columns.iter().any(|c| c.encrypted.is_some()),
                    RelSource::Derived(outs) => {
                        outs.iter().any(|o| matches!(o.class, Class::Enc { .. }))
                    }
                    RelSource::Other => false,
                };
                if has_enc {
                    return Err(Refusal::general(
                        format!("a whole-row reference to {name}, which holds encrypted columns"),
                        "function",
                    ));
                }
            }
            level = s.parent;
        }
        Ok(())
    }
}

/// The condition of a join, for the join kinds pgveil models.
fn join_constraint(op: &JoinOperator) -> R<&JoinConstraint> {
    match op {
        JoinOperator::Join(c)
        | JoinOperator::Inner(c)
        | JoinOperator::Left(c)
        | JoinOperator::LeftOuter(c)
        | JoinOperator::Right(c)
        | JoinOperator::RightOuter(c)
        | JoinOperator::FullOuter(c)
        | JoinOperator::CrossJoin(c) => Ok(c),
        other => Err(Refusal::general(
            format!("join kind {other:?}")
                .chars()
                .take(40)
                .collect::<String>(),
            "unsupported",
        )),
    }
}

/// PostgreSQL's system columns, which every table has but the catalog of
/// pgveil does not list.
const SYSTEM_COLUMNS: [&str; 6] = ["tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"];

/// A qualified reference to a relation of `s` that has no column `col` as
/// pgveil names its outputs: plain, unless the relation also has encrypted
/// outputs (pgveil may have named one differently from PostgreSQL, so it
/// does not guess). `None` when `s` has no relation of that name.
fn missing_column(s: &Scope<'_, '_>, qualifier: Option<&[String]>, col: &str) -> R<Option<Class>> {
    let named = s
        .rels
        .iter()
        .filter(|r| qualifier.and_then(|q| q.last()) == Some(&r.name));
    let named: Vec<&Rel<'_>> = named.collect();
    if qualifier.is_some() && !named.is_empty() {
        if named.iter().any(|r| match &r.source {
            RelSource::Catalog(rel) => {
                !SYSTEM_COLUMNS.contains(&col) && rel.columns.iter().any(|c| c.encrypted.is_some())
            }
            _ => false,
        }) {
            // Functional notation (`p.row_to_json`) is a function call on
            // the whole row; anything else is a column the catalog lacks.
            return Err(Refusal::general(
                format!(
                    "{col} is not a column pgveil knows of a table with encrypted columns \
                     (functional notation on its rows would read them whole)"
                ),
                "function",
            ));
        }
        if named.iter().any(|r| match &r.source {
            RelSource::Derived(outs) => outs.iter().any(|o| matches!(o.class, Class::Enc { .. })),
            _ => false,
        }) {
            return Err(Refusal::general(
                format!(
                    "column {col} of a derived table with encrypted columns that pgveil \
                     cannot identify"
                ),
                "unsupported",
            ));
        }
        return Ok(Some(Class::Plain));
    }
    Ok(None)
}

/// The outputs of a catalog relation, in column order (`*`, `TABLE t`).
pub(super) fn relation_outputs(r: &Relation) -> R<Vec<Out>> {
    if let Some(e) = r.columns.iter().find_map(|c| {
        c.encrypted
            .as_ref()
            .filter(|e| matches!(e.storage, StorageState::Unsupported(_)))
    }) && let StorageState::Unsupported(why) = &e.storage
    {
        return Err(Refusal::general(
            format!("all columns of {}.{}, which is {why}", r.schema, r.name),
            "storage",
        ));
    }
    Ok(r.columns
        .iter()
        .map(|c| Out {
            name: c.name.clone(),
            class: match &c.encrypted {
                Some(e) => Class::Enc {
                    col: e.clone(),
                    direct: true,
                },
                None => Class::Plain,
            },
        })
        .collect())
}

/// Whether a relation in scope exposes an encrypted column.
pub(super) fn has_encrypted_source(rel: &Rel<'_>) -> bool {
    match &rel.source {
        RelSource::Catalog(r) => r.columns.iter().any(|c| c.encrypted.is_some()),
        RelSource::Derived(outs) => outs.iter().any(|o| matches!(o.class, Class::Enc { .. })),
        RelSource::Other => false,
    }
}

/// The outputs `*` gives over one relation: `*` itself (plain) where
/// pgveil does not know the relation's columns.
pub(super) fn wildcard(rel: &Rel<'_>, outs: &mut Vec<Out>) -> R<()> {
    match &rel.source {
        RelSource::Catalog(r) => outs.extend(relation_outputs(r)?),
        RelSource::Derived(o) => outs.extend(o.iter().cloned()),
        RelSource::Other => outs.push(Out {
            name: "*".into(),
            class: Class::Plain,
        }),
    }
    Ok(())
}

/// Renames derived columns by an alias list `AS t(a, b)`.
pub(super) fn apply_alias_columns<'c>(
    source: RelSource<'c>,
    cols: Option<&[sqlparser::ast::TableAliasColumnDef]>,
) -> RelSource<'c> {
    let Some(cols) = cols.filter(|c| !c.is_empty()) else {
        return source;
    };
    let outs = match source {
        RelSource::Derived(o) => o,
        RelSource::Catalog(r) => match relation_outputs(r) {
            Ok(o) => o,
            Err(_) => return RelSource::Other,
        },
        RelSource::Other => return RelSource::Other,
    };
    RelSource::Derived(
        outs.into_iter()
            .enumerate()
            .map(|(i, mut o)| {
                if let Some(c) = cols.get(i) {
                    o.name = norm(&c.name);
                }
                o
            })
            .collect(),
    )
}

/// Marks literals as having arrived through a relation's column.
fn via_column(class: Class) -> Class {
    match class {
        Class::Lits(ls) => Class::Lits(
            ls.into_iter()
                .map(|mut l| {
                    l.via_column = true;
                    l
                })
                .collect(),
        ),
        other => other,
    }
}
