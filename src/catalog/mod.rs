//! What one database says about the configured tables: their OIDs, every
//! column in order with its storage type, which columns are encrypted, and
//! the views built over them.
//!
//! No I/O: [`load_query`] is the SQL the session runs on the client's own
//! upstream connection, and [`Catalog::build`] turns its rows into facts.
//! View columns are mapped to base columns by analysing each view's
//! definition with the same analyzer that judges client statements.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::config::{ColumnId, Config, Storage, ValueType};

/// How an encrypted column is stored in this database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageState {
    /// `bytea`: the raw envelope.
    Bytea,
    /// `text` or `varchar`: prefixed base64.
    Text,
    /// Any other type cannot hold ciphertext: statements touching it are refused.
    Unsupported(String),
}

impl StorageState {
    fn from_type(type_name: &str) -> StorageState {
        match type_name {
            "bytea" => StorageState::Bytea,
            "text" | "varchar" => StorageState::Text,
            other => StorageState::Unsupported(other.to_string()),
        }
    }

    /// The storage encoding, if usable.
    pub fn storage(&self) -> Option<Storage> {
        match self {
            StorageState::Bytea => Some(Storage::Bytea),
            StorageState::Text => Some(Storage::Text),
            StorageState::Unsupported(_) => None,
        }
    }
}

/// An encrypted column as this database stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encrypted {
    /// The configured column whose cipher applies.
    pub id: ColumnId,
    /// Key domain: columns compare equal only within one domain.
    pub domain: String,
    /// The type the application sees.
    pub value_type: ValueType,
    /// Storage in this database.
    pub storage: StorageState,
    /// Stored forms one plaintext can have now (key versions, plus the
    /// plaintext while migrating): above 1, equality must match them all.
    pub forms: usize,
}

/// One column of a relation.
#[derive(Debug, Clone)]
pub struct Column {
    /// Name as stored.
    pub name: String,
    /// `attnum`.
    pub attnum: i16,
    /// Storage type name (`typname`).
    pub type_name: String,
    /// Whether the column has a `DEFAULT`.
    pub has_default: bool,
    /// A generated column (`GENERATED ALWAYS AS`): left out of COPY.
    pub generated: bool,
    /// Set when the column holds ciphertext.
    pub encrypted: Option<Encrypted>,
}

/// Table or view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// A configured table.
    Table,
    /// A view (or materialized view) over a configured table.
    View,
}

/// A configured table, or a view over one.
#[derive(Debug, Clone)]
pub struct Relation {
    /// `pg_class.oid`.
    pub oid: u32,
    /// Schema.
    pub schema: String,
    /// Name.
    pub name: String,
    /// Table or view.
    pub kind: RelationKind,
    /// Columns in `attnum` order.
    pub columns: Vec<Column>,
    /// For views whose definition pgveil cannot map: why. Statements
    /// naming such a view are refused.
    pub opaque: Option<String>,
    /// View definition, kept until it is analysed.
    pub definition: Option<String>,
}

impl Relation {
    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// The facts about one database.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    relations: Vec<Relation>,
    by_name: HashMap<(String, String), usize>,
    by_oid: HashMap<u32, usize>,
    /// `current_schemas(false)`, in order.
    pub search_path: Vec<String>,
    /// Configured columns absent from this database.
    pub inactive: Vec<ColumnId>,
    /// Configured columns with a `DEFAULT` (stored in plaintext by the database).
    pub defaults: Vec<ColumnId>,
    /// Configured columns with a nondeterministic collation: not served
    /// (their storage is `Unsupported`).
    pub nondeterministic: Vec<ColumnId>,
    /// Identifies this load, for caches keyed on it (0 until set). A load
    /// that finds exactly the same facts keeps the generation it replaces.
    pub generation: u64,
    /// The rows it was built from and the configuration generation it was
    /// built with: equal ones make an equal catalog.
    pub source: (Vec<Rows>, u64),
    /// Unconfigured ancestors of configured tables.
    ancestors: Vec<u32>,
}

/// Errors turning catalog rows into facts.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// A row did not have the expected shape.
    #[error("unexpected catalog row: {0}")]
    Row(String),
}

/// The notification channel of schema changes: the event trigger
/// `pgveil guard --apply` installs notifies it at the commit of any DDL
/// (not of temporary objects), and every session of pgveil listens on it.
pub const CHANGE_CHANNEL: &str = "pgveil_catalog";

/// The event trigger's name.
pub const CHANGE_TRIGGER: &str = "pgveil_catalog_changed";

/// The event trigger, as one transaction: a function that notifies
/// [`CHANGE_CHANNEL`] (delivered at commit, dropped on rollback, once per
/// transaction) unless every command it reports concerns temporary
/// objects, which no other session sees.
pub fn event_trigger_sql() -> String {
    format!(
        "BEGIN;\n\
         CREATE SCHEMA IF NOT EXISTS pgveil;\n\
         CREATE OR REPLACE FUNCTION pgveil.notify_catalog_change() RETURNS event_trigger\n\
         LANGUAGE plpgsql SET search_path = pg_catalog AS $pgveil$\n\
         BEGIN\n\
         \x20 IF EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands() c\n\
         \x20            WHERE c.schema_name IS NULL OR NOT (c.schema_name = 'pg_temp'\n\
         \x20              OR c.schema_name LIKE 'pg\\_temp\\_%'))\n\
         \x20    OR NOT EXISTS (SELECT FROM pg_catalog.pg_event_trigger_ddl_commands()) THEN\n\
         \x20   PERFORM pg_catalog.pg_notify('{CHANGE_CHANNEL}', '');\n\
         \x20 END IF;\n\
         END $pgveil$;\n\
         DROP EVENT TRIGGER IF EXISTS {CHANGE_TRIGGER};\n\
         CREATE EVENT TRIGGER {CHANGE_TRIGGER} ON ddl_command_end\n\
         \x20 EXECUTE FUNCTION pgveil.notify_catalog_change();\n\
         COMMIT;"
    )
}

/// Configured table names, for the fast-path scan and the load query.
pub fn configured_tables(config: &Config) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = config
        .encrypt
        .iter()
        .map(|c| {
            let id = c.id();
            (id.schema, id.table)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A string constant that means the same whatever the session's
/// `standard_conforming_strings`: an escape string, backslashes doubled.
fn sql_string(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// `a = b` with PostgreSQL's own operator, whatever the session's
/// `search_path` holds: a client may define `public.=` and put `public`
/// before `pg_catalog`, and pgveil's catalog query must not lose a row to
/// it. Every comparison in [`load_query`] goes through this.
fn eq(a: &str, b: &str) -> String {
    format!("{a} OPERATOR(pg_catalog.=) {b}")
}

/// The first of the two Queries the session runs to learn the catalog:
/// the session's `search_path` as set (to restore it), and the schemas it
/// resolves names in. See [`load_query`] for why there are two.
pub const PATH_QUERY: &str = "SELECT pg_catalog.current_setting(E'search_path'); \
     SELECT s::pg_catalog.text FROM pg_catalog.unnest(pg_catalog.current_schemas(false)) \
     WITH ORDINALITY AS u(s, i) ORDER BY i";

/// The second Query: with the `search_path` switched to `pg_catalog`
/// for its own duration, the columns of configured tables and of
/// relations over them; view definitions; inheritance edges; columns of
/// configured tables' ancestors; then `saved_path` (the first Query's
/// answer) restored.
///
/// It runs on the client's own connection, so it names every function,
/// type and operator with its schema and writes its constants as escape
/// strings; and because `pg_get_viewdef` runs queries of its own that do
/// not (an `=` the session defined ahead of `pg_catalog` could make it
/// return another view's definition), the path is switched with
/// `set_config(..., true)`, local to the transaction, and set back to the
/// value it had: inside the client's transaction block the rest of the
/// block sees its own value, and its end restores what it would have
/// restored anyway; outside one, the Query's implicit transaction ends
/// with it. Nothing the session defined or set changes what it means.
pub fn load_query(config: &Config, saved_path: &str) -> String {
    let tables = configured_tables(config);
    let mut values = String::new();
    for (i, (schema, table)) in tables.iter().enumerate() {
        if i > 0 {
            values.push_str(", ");
        }
        let _ = write!(values, "({}, {})", sql_string(schema), sql_string(table));
    }
    if values.is_empty() {
        values.push_str("(NULL, NULL)");
    }
    let relnamespace = eq("n.oid", "c.relnamespace");
    let base = format!(
        "SELECT c.oid FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON {relnamespace} \
         WHERE ({} OR {}) AND EXISTS (SELECT FROM (VALUES {values}) v(s, t) \
         WHERE {} AND {})",
        eq("c.relkind", "'r'"),
        eq("c.relkind", "'p'"),
        eq("n.nspname", "v.s::pg_catalog.name"),
        eq("c.relname", "v.t::pg_catalog.name"),
    );
    // Everything that exposes a configured table's columns: views (through
    // pg_rewrite), and inheritance children and partitions (pg_inherits),
    // transitively.
    let rels = format!(
        "WITH RECURSIVE edges(parent, child) AS (\
         SELECT d.refobjid, r.ev_class FROM pg_catalog.pg_depend d \
         JOIN pg_catalog.pg_rewrite r ON {} AND {} \
         WHERE {} \
         UNION ALL SELECT i.inhparent, i.inhrelid FROM pg_catalog.pg_inherits i), \
         rels(oid) AS ({base} UNION \
         SELECT e.child FROM edges e JOIN rels ON {} WHERE NOT ({}))",
        eq("d.classid", "'pg_catalog.pg_rewrite'::pg_catalog.regclass"),
        eq("r.oid", "d.objid"),
        eq("d.refclassid", "'pg_catalog.pg_class'::pg_catalog.regclass"),
        eq("e.parent", "rels.oid"),
        eq("e.child", "rels.oid"),
    );
    let columns = format!(
        "SELECT c.oid::pg_catalog.int8, n.nspname::pg_catalog.text, c.relname::pg_catalog.text, \
         c.relkind::pg_catalog.text, a.attnum::pg_catalog.int4, a.attname::pg_catalog.text, \
         t.typname::pg_catalog.text, a.atthasdef, NOT ({}), \
         co.collisdeterministic IS FALSE \
         FROM {{from}} JOIN pg_catalog.pg_class c ON {} \
         JOIN pg_catalog.pg_namespace n ON {relnamespace} \
         JOIN pg_catalog.pg_attribute a ON {} AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
         JOIN pg_catalog.pg_type t ON {} \
         LEFT JOIN pg_catalog.pg_collation co ON {} \
         ORDER BY 1, 5",
        eq("a.attgenerated", "''"),
        eq("c.oid", "{from}.oid"),
        eq("a.attrelid", "c.oid"),
        eq("t.oid", "a.atttypid"),
        eq("co.oid", "a.attcollation"),
    );
    let from = |rel: &str| columns.replace("{from}", rel);
    format!(
        "SELECT pg_catalog.set_config(E'search_path', E'pg_catalog, pg_temp', true); \
         {rels} {}; \
         {rels} SELECT c.oid::pg_catalog.int8, pg_catalog.pg_get_viewdef(c.oid) \
         FROM rels JOIN pg_catalog.pg_class c ON {} WHERE {} OR {} ORDER BY 1; \
         {rels} SELECT i.inhrelid::pg_catalog.int8, i.inhparent::pg_catalog.int8 \
         FROM pg_catalog.pg_inherits i JOIN rels ON {} ORDER BY 1; \
         WITH RECURSIVE anc(oid) AS (SELECT i.inhparent FROM pg_catalog.pg_inherits i \
         WHERE i.inhrelid OPERATOR(pg_catalog.=) ANY ({base}) \
         UNION SELECT i.inhparent FROM pg_catalog.pg_inherits i JOIN anc ON {}) {}; \
         SELECT pg_catalog.set_config(E'search_path', {}, true)",
        from("rels"),
        eq("c.oid", "rels.oid"),
        eq("c.relkind", "'v'"),
        eq("c.relkind", "'m'"),
        eq("rels.oid", "i.inhrelid"),
        eq("i.inhrelid", "anc.oid"),
        from("anc"),
        sql_string(saved_path),
    )
}

/// The result sets of [`PATH_QUERY`] and [`load_query`] in the order
/// [`Catalog::build`] reads them: columns, view definitions, search path,
/// inheritance edges, ancestors' columns. `None` when a Query did not
/// answer with as many result sets as it has statements.
pub fn catalog_results(path: Vec<Rows>, load: Vec<Rows>) -> Option<Vec<Rows>> {
    let [_, schemas]: [Rows; 2] = path.try_into().ok()?;
    let [_, columns, views, inherits, ancestors, _]: [Rows; 6] = load.try_into().ok()?;
    Some(vec![columns, views, schemas, inherits, ancestors])
}

/// The `search_path` the session had, from [`PATH_QUERY`]'s first result.
pub fn saved_path(path: &[Rows]) -> Option<&str> {
    path.first()?.first()?.first()?.as_deref()
}

/// Rows of one result set, as text (None for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

fn cell(row: &[Option<String>], i: usize) -> Result<&str, CatalogError> {
    row.get(i)
        .and_then(|c| c.as_deref())
        .ok_or_else(|| CatalogError::Row(format!("missing field {i}")))
}

impl Catalog {
    /// Builds the catalog from the three result sets of [`load_query`].
    /// View columns are left unmapped; see [`Catalog::map_views`].
    pub fn build(config: &Config, results: &[Rows]) -> Result<Catalog, CatalogError> {
        let empty = Vec::new();
        let columns = results.first().unwrap_or(&empty);
        let views = results.get(1).unwrap_or(&empty);
        let path = results.get(2).unwrap_or(&empty);
        let inherits = results.get(3).unwrap_or(&empty);
        let mut catalog = Catalog::default();
        // Columns whose collation is nondeterministic (ICU, case- or
        // accent-insensitive): `=` on their ciphertext is not `=` on the
        // plaintext, so an encrypted one is not served.
        let mut nondeterministic: Vec<(u32, String)> = Vec::new();
        for row in columns {
            let oid: u32 = cell(row, 0)?
                .parse()
                .map_err(|_| CatalogError::Row("oid".into()))?;
            let idx = match catalog.by_oid.get(&oid) {
                Some(i) => *i,
                None => {
                    let kind = match cell(row, 3)? {
                        "r" | "p" => RelationKind::Table,
                        _ => RelationKind::View,
                    };
                    catalog.add_relation(oid, cell(row, 1)?, cell(row, 2)?, kind)
                }
            };
            let attnum: i16 = cell(row, 4)?
                .parse()
                .map_err(|_| CatalogError::Row("attnum".into()))?;
            if row.get(9).and_then(|c| c.as_deref()) == Some("t") {
                nondeterministic.push((oid, cell(row, 5)?.to_string()));
            }
            let rel = &mut catalog.relations[idx];
            rel.columns.push(Column {
                name: cell(row, 5)?.to_string(),
                attnum,
                type_name: cell(row, 6)?.to_string(),
                has_default: cell(row, 7)? == "t",
                generated: row.get(8).and_then(|c| c.as_deref()) == Some("t"),
                encrypted: None,
            });
        }
        for row in views {
            let oid: u32 = cell(row, 0)?
                .parse()
                .map_err(|_| CatalogError::Row("view oid".into()))?;
            if let Some(i) = catalog.by_oid.get(&oid) {
                catalog.relations[*i].definition = Some(cell(row, 1)?.to_string());
            }
        }
        catalog.search_path = path
            .iter()
            .filter_map(|r| r.first().cloned().flatten())
            .collect();
        for col in &config.encrypt {
            let id = col.id();
            let unequal = catalog
                .by_name
                .get(&(id.schema.clone(), id.table.clone()))
                .is_some_and(|i| {
                    let oid = catalog.relations[*i].oid;
                    nondeterministic
                        .iter()
                        .any(|(o, c)| *o == oid && *c == id.column)
                });
            let found = catalog
                .by_name
                .get(&(id.schema.clone(), id.table.clone()))
                .copied()
                .and_then(|i| {
                    let rel = &mut catalog.relations[i];
                    rel.columns.iter_mut().find(|c| c.name == id.column)
                });
            match found {
                Some(c) => {
                    if c.has_default {
                        catalog.defaults.push(id.clone());
                    }
                    let storage = match StorageState::from_type(&c.type_name) {
                        _ if unequal => {
                            catalog.nondeterministic.push(id.clone());
                            StorageState::Unsupported(format!(
                                "{} with a nondeterministic collation (equal ciphertexts \
                                 would not mean equal values; give the column a \
                                 deterministic one, such as \"C\")",
                                c.type_name
                            ))
                        }
                        StorageState::Bytea if col.migrating => StorageState::Unsupported(
                            "bytea while `migrating = true` (only text columns are encrypted \
                             in place)"
                                .into(),
                        ),
                        other => other,
                    };
                    let versions = config
                        .domain_key_versions(&col.domain_name())
                        .1
                        .len()
                        .max(1);
                    c.encrypted = Some(Encrypted {
                        storage,
                        domain: col.domain_name(),
                        value_type: col.value_type,
                        forms: versions + usize::from(col.migrating),
                        id,
                    });
                }
                None => catalog.inactive.push(id),
            }
        }
        // Inheritance children and partitions hold their parent's encrypted
        // columns, under the same keys.
        let mut pairs = Vec::new();
        for row in inherits {
            let child: u32 = cell(row, 0)?
                .parse()
                .map_err(|_| CatalogError::Row("inhrelid".into()))?;
            let parent: u32 = cell(row, 1)?
                .parse()
                .map_err(|_| CatalogError::Row("inhparent".into()))?;
            pairs.push((child, parent));
        }
        for _ in 0..pairs.len() {
            let mut changed = false;
            for (child, parent) in &pairs {
                let (Some(&ci), Some(&pi)) =
                    (catalog.by_oid.get(child), catalog.by_oid.get(parent))
                else {
                    continue;
                };
                let inherited: Vec<(String, Encrypted)> = catalog.relations[pi]
                    .columns
                    .iter()
                    .filter_map(|c| c.encrypted.clone().map(|e| (c.name.clone(), e)))
                    .collect();
                for (name, mut enc) in inherited {
                    if let Some(col) = catalog.relations[ci]
                        .columns
                        .iter_mut()
                        .find(|c| c.name == name && c.encrypted.is_none())
                    {
                        enc.storage = StorageState::from_type(&col.type_name);
                        col.encrypted = Some(enc);
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        // Ancestors of configured tables that are not configured themselves:
        // their rows mix plaintext (their own) and ciphertext (the child's),
        // so the shared columns are unusable through them.
        let ancestors = results.get(4).unwrap_or(&empty);
        let encrypted_names: Vec<(String, Encrypted)> = catalog
            .relations
            .iter()
            .flat_map(|r| r.columns.iter())
            .filter_map(|c| c.encrypted.clone().map(|e| (c.name.clone(), e)))
            .collect();
        for row in ancestors {
            let oid: u32 = cell(row, 0)?
                .parse()
                .map_err(|_| CatalogError::Row("ancestor oid".into()))?;
            if catalog.by_oid.contains_key(&oid) && !catalog.pending_ancestor(oid) {
                continue;
            }
            let idx = match catalog.by_oid.get(&oid) {
                Some(i) => *i,
                None => {
                    catalog.ancestors.push(oid);
                    catalog.add_relation(oid, cell(row, 1)?, cell(row, 2)?, RelationKind::Table)
                }
            };
            let name = cell(row, 5)?.to_string();
            let encrypted = encrypted_names
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, e)| Encrypted {
                    storage: StorageState::Unsupported(
                        "a parent table of an encrypted column (its rows mix plaintext and ciphertext)".into(),
                    ),
                    ..e.clone()
                });
            catalog.relations[idx].columns.push(Column {
                attnum: cell(row, 4)?
                    .parse()
                    .map_err(|_| CatalogError::Row("attnum".into()))?,
                name,
                type_name: cell(row, 6)?.to_string(),
                has_default: cell(row, 7)? == "t",
                generated: row.get(8).and_then(|c| c.as_deref()) == Some("t"),
                encrypted,
            });
        }
        Ok(catalog)
    }

    /// Registers a relation with no columns yet; returns its index.
    fn add_relation(&mut self, oid: u32, schema: &str, name: &str, kind: RelationKind) -> usize {
        self.relations.push(Relation {
            oid,
            schema: schema.to_string(),
            name: name.to_string(),
            kind,
            columns: Vec::new(),
            opaque: None,
            definition: None,
        });
        let i = self.relations.len() - 1;
        self.by_oid.insert(oid, i);
        self.by_name
            .insert((schema.to_string(), name.to_string()), i);
        i
    }

    fn pending_ancestor(&self, oid: u32) -> bool {
        self.ancestors.contains(&oid)
    }

    /// A relation by schema and name.
    pub fn relation(&self, schema: &str, name: &str) -> Option<&Relation> {
        self.by_name
            .get(&(schema.to_string(), name.to_string()))
            .map(|i| &self.relations[*i])
    }

    /// A relation by OID (as RowDescription reports it).
    pub fn relation_by_oid(&self, oid: u32) -> Option<&Relation> {
        self.by_oid.get(&oid).map(|i| &self.relations[*i])
    }

    /// The encrypted column a result field comes from, by its origin.
    pub fn origin(&self, table_oid: u32, attnum: i16) -> Option<&Encrypted> {
        self.relation_by_oid(table_oid)?
            .columns
            .iter()
            .find(|c| c.attnum == attnum)?
            .encrypted
            .as_ref()
    }

    /// Every relation.
    pub fn relations(&self) -> &[Relation] {
        &self.relations
    }

    /// Mutable access for view mapping.
    pub fn relations_mut(&mut self) -> &mut [Relation] {
        &mut self.relations
    }

    /// Resolves an unqualified relation name through the search path.
    pub fn resolve_unqualified(&self, name: &str) -> Option<&Relation> {
        if self.search_path.is_empty() {
            return self.relation("public", name);
        }
        self.search_path
            .iter()
            .find_map(|schema| self.relation(schema, name))
    }

    /// Whether any known relation has this name, in any schema.
    pub fn has_name(&self, name: &str) -> bool {
        self.relations.iter().any(|r| r.name == name)
    }

    /// Builds a catalog directly (tests and views).
    pub fn from_relations(relations: Vec<Relation>, search_path: Vec<String>) -> Catalog {
        let mut c = Catalog {
            search_path,
            ..Catalog::default()
        };
        for (i, r) in relations.iter().enumerate() {
            c.by_oid.insert(r.oid, i);
            c.by_name.insert((r.schema.clone(), r.name.clone()), i);
        }
        c.relations = relations;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "[listen]\naddress = \"127.0.0.1:1\"\n[upstream]\naddress = \"127.0.0.1:2\"\n\
             [keys]\nmaster_key_env = \"K\"\n\
             [[encrypt]]\ntable = \"customers\"\ncolumn = \"email\"\ndomain = \"email\"\n\
             [[encrypt]]\ntable = \"customers\"\ncolumn = \"missing\"\n",
            "t",
        )
        .unwrap()
    }

    fn row(v: &[&str]) -> Vec<Option<String>> {
        v.iter().map(|s| Some(s.to_string())).collect()
    }

    #[test]
    fn builds_from_rows() {
        let cols = vec![
            row(&["100", "public", "customers", "r", "1", "id", "int4", "t"]),
            row(&[
                "100",
                "public",
                "customers",
                "r",
                "2",
                "email",
                "bytea",
                "f",
            ]),
            row(&["200", "public", "v", "v", "1", "email", "bytea", "f"]),
        ];
        let views = vec![row(&["200", " SELECT customers.email FROM customers;"])];
        let path = vec![row(&["public"])];
        let c = Catalog::build(&config(), &[cols, views, path]).unwrap();
        let e = c.origin(100, 2).unwrap();
        assert_eq!(e.domain, "email");
        assert_eq!(e.storage, StorageState::Bytea);
        assert!(c.origin(100, 1).is_none());
        assert_eq!(c.inactive.len(), 1);
        assert!(c.relation("public", "v").unwrap().definition.is_some());
        assert_eq!(c.resolve_unqualified("customers").unwrap().oid, 100);
    }

    #[test]
    fn load_query_quotes_names() {
        let mut cfg = config();
        cfg.encrypt[0].table = toml::Spanned::new(0..0, "o'neil".to_string());
        let q = load_query(&cfg, "x");
        assert!(q.contains("E'o''neil'"));
        cfg.encrypt[0].table = toml::Spanned::new(0..0, "a\\b".to_string());
        assert!(load_query(&cfg, "x").contains("E'a\\\\b'"));
        assert!(load_query(&cfg, "\"$user\", o'k").ends_with("E'\"$user\", o''k', true)"));
    }

    #[test]
    fn load_query_uses_only_pg_catalog_operators() {
        let q = format!("{PATH_QUERY}; {}", load_query(&config(), "public"));
        // No bare comparison operator: each one is OPERATOR(pg_catalog.x).
        let bare = q
            .replace("OPERATOR(pg_catalog.=)", "")
            .replace("OPERATOR(pg_catalog.>)", "");
        for op in ["=", "<", ">", " IN "] {
            assert!(!bare.contains(op), "bare {op:?} in {bare}");
        }
    }
}
