//! The referee: PostgreSQL's own lexer and parser (libpg_query, the
//! PostgreSQL 18 grammar) say where statements begin and end, where every
//! literal and parameter is, and what each statement references: relations,
//! functions, prepared statements, cursors, schemas it renames.
//!
//! sqlparser stays the analyzer's parser, but it reads some text differently
//! from PostgreSQL (lines after `COPY ... FROM STDIN;` become inline data,
//! nested comments, string continuations, dialect corners). The analyzer
//! compares its reading with the referee's and refuses any statement on
//! which they disagree (`sql::analyze`), so a statement is never judged by a
//! reading PostgreSQL does not share.
//!
//! Errors carry no text of the statement: libpg_query's messages quote the
//! token at fault, which may be a customer's value.

use std::collections::BTreeSet;
use std::ops::Range;

use pg_query::protobuf::{KeywordKind, ObjectType, Token};
use serde_json::Value;

/// Why the referee could not read a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RefereeError {
    /// PostgreSQL's lexer rejects it (an unterminated quote, a NUL byte).
    #[error("PostgreSQL's lexer cannot read the statement")]
    Scan,
    /// PostgreSQL's grammar rejects it.
    #[error("PostgreSQL's parser cannot read the statement")]
    Parse,
    /// Its parse tree could not be walked (an internal limit).
    #[error("the statement's parse tree cannot be read")]
    Tree,
}

/// Functions that run SQL held in a string or read whole relations, schemas
/// or databases: through them a statement reads encrypted tables without
/// naming them. Refused in databases with configured tables.
pub const REFUSED_FUNCTIONS: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    // Full-text search over the rows of a query given as text.
    "ts_stat",
    "ts_rewrite",
    // tablefunc: pivot, tree and XML tables from queries or table names.
    "crosstab",
    "crosstab2",
    "crosstab3",
    "crosstab4",
    "connectby",
    // xml2: reads the table and columns named in its arguments.
    "xpath_table",
    // pg_cron: runs the SQL it stores, later, in another session.
    "schedule_in_database",
];

/// Prefixes of refused names: the `dblink` and `pg_background` extensions'
/// functions, which run SQL given as a string, and anything in pg_cron's
/// schema (`cron.schedule` stores SQL it runs later).
const REFUSED_PREFIXES: &[&str] = &["dblink", "pg_background", "cron."];

/// Whether a function name (folded, last part, or `cron.`-qualified) is
/// refused: the list and prefixes above. The word `cron` is too, so that
/// the fast path sends `cron.schedule(...)` to analysis.
pub fn refused_function(name: &str) -> bool {
    REFUSED_FUNCTIONS.contains(&name)
        || name == "cron"
        || REFUSED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Lower-case substrings one of which every text calling a refused
/// function holds (the fast path's pre-test).
pub const REFUSED_HINTS: &[&str] = &[
    "to_xml",
    "dblink",
    "ts_stat",
    "ts_rewrite",
    "crosstab",
    "connectby",
    "xpath_table",
    "schedule",
    "pg_background",
];

/// A relation as written: `schema.name` or `name` (folded as PostgreSQL
/// folds identifiers).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RelName {
    /// The schema, when written.
    pub schema: Option<String>,
    /// The relation's name.
    pub name: String,
}

/// What PostgreSQL's parser says about one statement.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// From its first token to its last (comments and the `;` excluded).
    pub range: Range<usize>,
    /// The statement's node kind (`SelectStmt`, `InsertStmt`, `CopyStmt`, ...).
    pub kind: String,
    /// Every node kind anywhere in its tree.
    pub nodes: BTreeSet<String>,
    /// Every relation it names (tables, views, CTE references, targets,
    /// parents in `INHERITS` / `PARTITION OF`, ...).
    pub relations: Vec<RelName>,
    /// Every function it calls (last name part).
    pub functions: Vec<String>,
    /// Prepared statements it names (`PREPARE`, `EXECUTE`, `DEALLOCATE`).
    pub prepared: Vec<String>,
    /// Cursors it names (`DECLARE`, `FETCH`, `MOVE`, `CLOSE`).
    pub cursors: Vec<String>,
    /// Schemas it renames (`ALTER SCHEMA s RENAME TO ...`).
    pub renamed_schemas: Vec<String>,
    /// The new names of schemas it renames.
    pub schemas_renamed_to: Vec<String>,
    /// The names relations get from it (`RENAME TO`, `SET SCHEMA`); the
    /// schema is `None` where the relation was named unqualified.
    pub renamed_to: Vec<RelName>,
    /// Relations it makes existing tables children or partitions of
    /// (`ALTER TABLE ... INHERIT parent`, `ALTER TABLE parent ATTACH
    /// PARTITION ...`).
    pub attached_to: Vec<RelName>,
    /// Columns named in its expressions (`ColumnRef`s, last part). In DDL
    /// these are the expressions the catalog stores (CHECK, generated
    /// columns, index expressions and predicates, statistics expressions).
    pub column_refs: Vec<String>,
    /// Columns named in expressions the catalog stores with DDL: CHECK and
    /// generated-column expressions, `EXCLUDE ... WHERE`, index and
    /// statistics expressions (not index predicates, which the analyzer
    /// reads as conditions).
    pub stored_columns: Vec<String>,
    /// Columns a `PARTITION BY` names.
    pub partition_keys: Vec<String>,
    /// A partition bound (`FOR VALUES ...`) holds a string constant.
    pub partition_strings: bool,
    /// What it does to the relations later statements are judged against.
    pub effect: DdlEffect,
    /// Byte ranges of its constants (strings of every form, numbers).
    pub literals: Vec<Range<usize>>,
    /// Byte ranges of its `$n` parameters.
    pub params: Vec<Range<usize>>,
}

/// How a DDL statement changes the relations a later statement of the same
/// Query or pipeline would be judged against (by a catalog read before it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum DdlEffect {
    /// Nothing a later statement's judgement depends on.
    #[default]
    None,
    /// Changes or drops existing relations (`ALTER TABLE`, `DROP`): their
    /// columns, positions and children may differ from the catalog's.
    Alters,
    /// Creates or re-parents a relation that exposes other relations'
    /// columns: an inheritance child or partition (`INHERITS`,
    /// `PARTITION OF`, `ALTER TABLE ... INHERIT / ATTACH PARTITION`), a view,
    /// `CREATE TABLE AS`, a schema with elements.
    Derives,
    /// Renames or moves relations or schemas: any name may now mean another.
    Renames,
}

/// A lexical token of PostgreSQL's scanner.
#[derive(Debug, Clone)]
pub struct Tok {
    /// Byte range in the text.
    pub range: Range<usize>,
    /// The scanner's token number (`pg_query::protobuf::Token`).
    pub token: i32,
    /// Whether it is a keyword of any kind (usable as a name where the
    /// grammar allows).
    pub keyword: bool,
}

/// PostgreSQL's reading of a whole text.
#[derive(Debug, Clone, Default)]
pub struct Referee {
    /// Its statements, in order (empty statements are skipped, as
    /// PostgreSQL skips them).
    pub statements: Vec<Facts>,
}

/// PostgreSQL's lexer's tokens of `text`, comments included.
///
/// `pg_query::scan_tokens` builds a slice from the C result even when it
/// holds no token (a null pointer): text with nothing but whitespace is
/// answered here, without calling it.
fn raw_tokens(text: &str) -> Option<Vec<pg_query::protobuf::ScanToken>> {
    if text
        .bytes()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
    {
        return Some(Vec::new());
    }
    pg_query::scan_tokens(text).ok()
}

/// Tokens of `text` by PostgreSQL's lexer, comments excluded.
pub fn tokens(text: &str) -> Result<Vec<Tok>, RefereeError> {
    let raw = raw_tokens(text).ok_or(RefereeError::Scan)?;
    let comment = [Token::SqlComment as i32, Token::CComment as i32];
    let mut out = Vec::with_capacity(raw.len());
    for t in raw {
        if comment.contains(&t.token) {
            continue;
        }
        let (Ok(start), Ok(end)) = (usize::try_from(t.start), usize::try_from(t.end)) else {
            return Err(RefereeError::Scan);
        };
        if start > end || end > text.len() {
            return Err(RefereeError::Scan);
        }
        out.push(Tok {
            range: start..end,
            token: t.token,
            keyword: t.keyword_kind != KeywordKind::NoKeyword as i32,
        });
    }
    Ok(out)
}

/// Whether a token is a constant: a string of any form, a bit string or a
/// number.
pub fn is_constant(token: i32) -> bool {
    [
        Token::Sconst,
        Token::Usconst,
        Token::Bconst,
        Token::Xconst,
        Token::Iconst,
        Token::Fconst,
    ]
    .iter()
    .any(|t| *t as i32 == token)
}

/// What a lexical scan of a text shows about the names in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NameScan {
    /// A name matched the predicate, or a Unicode-escaped identifier
    /// (`U&"..."`) hides one.
    pub hit: bool,
    /// The text holds code in strings (`DO`, `CREATE FUNCTION` /
    /// `PROCEDURE` bodies): names in its strings matter too.
    pub bodies: bool,
    /// The text holds the keyword `RENAME` (`ALTER SCHEMA s RENAME TO ...`
    /// names a schema, not a table).
    pub renames: bool,
    /// The text holds an escape or Unicode string (`E'...'`, `U&'...'`),
    /// whose words differ from the text written: code in one is read only
    /// after decoding ([`code_bodies`]).
    pub escaped: bool,
}

/// Scans the identifiers and keywords of `text` (folded as PostgreSQL folds
/// them: unquoted ASCII lower-cased, quoted ones unquoted) with `matches`.
/// Constants and comments are not names and are not offered. `None` when
/// PostgreSQL's lexer cannot read the text.
pub fn scan_names(text: &str, mut matches: impl FnMut(&str) -> bool) -> Option<NameScan> {
    let raw = raw_tokens(text)?;
    let mut scan = NameScan::default();
    let mut folded = String::new();
    for t in raw {
        let is_name =
            t.token == Token::Ident as i32 || t.keyword_kind != KeywordKind::NoKeyword as i32;
        if t.token == Token::Uident as i32 {
            scan.hit = true;
            continue;
        }
        if [Token::Do, Token::Function, Token::Procedure]
            .iter()
            .any(|k| *k as i32 == t.token)
        {
            scan.bodies = true;
        }
        if t.token == Token::Rename as i32 {
            scan.renames = true;
        }
        if t.token == Token::Usconst as i32
            || (t.token == Token::Sconst as i32
                && usize::try_from(t.start)
                    .ok()
                    .and_then(|a| text.as_bytes().get(a))
                    .is_some_and(|b| matches!(b, b'e' | b'E')))
        {
            scan.escaped = true;
        }
        if !is_name {
            continue;
        }
        let (Ok(a), Ok(b)) = (usize::try_from(t.start), usize::try_from(t.end)) else {
            return None;
        };
        let word = text.get(a..b)?;
        folded.clear();
        fold_identifier(word, &mut folded);
        // Watched names are lower-cased: a quoted `"Customers"` is matched
        // by its lower-cased form too (errs toward analysis).
        if matches(&folded) || matches(&folded.to_lowercase()) || matches(&word.to_lowercase()) {
            scan.hit = true;
        }
    }
    Some(scan)
}

/// An identifier as PostgreSQL folds it: `"Ab""c"` is `Ab"c`, `AbC` is `abc`
/// (ASCII only, as in UTF-8 databases), cut to 63 bytes.
fn fold_identifier(word: &str, out: &mut String) {
    if let Some(inner) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        out.push_str(&inner.replace("\"\"", "\""));
    } else {
        out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
    }
    let cut = truncated_len(out);
    out.truncate(cut);
}

/// PostgreSQL's longest identifier, in bytes (`NAMEDATALEN - 1`): longer
/// ones are cut, so a long name may mean a watched one.
pub const MAX_IDENTIFIER: usize = 63;

/// The length of `name` as PostgreSQL keeps it: at most
/// [`MAX_IDENTIFIER`] bytes, cut at a character boundary.
pub fn truncated_len(name: &str) -> usize {
    if name.len() <= MAX_IDENTIFIER {
        return name.len();
    }
    let mut cut = MAX_IDENTIFIER;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    cut
}

/// The code in the string bodies of `text`'s `DO` blocks and function or
/// procedure definitions, decoded as PostgreSQL decodes their strings
/// (escape and Unicode strings included). `None` when PostgreSQL cannot
/// parse `text`.
pub fn code_bodies(text: &str) -> Option<Vec<String>> {
    let parsed = pg_query::parse(text, pg_query::ParserOptions::DEFAULT).ok()?;
    let mut out = Vec::new();
    for raw in &parsed.protobuf.stmts {
        let tree = serde_json::to_value(raw.stmt.as_ref()?).ok()?;
        collect_bodies(&tree, &mut out, 0);
    }
    Some(out)
}

/// Every string under a `DefElem` named `as` (the body option of `DO`,
/// `CREATE FUNCTION` and `CREATE PROCEDURE`).
fn collect_bodies(v: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Object(map) => {
            if let Some(d) = map.get("DefElem")
                && d.get("defname").and_then(Value::as_str) == Some("as")
            {
                collect_strings(d.get("arg"), out, depth);
            }
            map.values().for_each(|c| collect_bodies(c, out, depth + 1));
        }
        Value::Array(items) => items.iter().for_each(|c| collect_bodies(c, out, depth + 1)),
        _ => {}
    }
}

/// Every `String` node's value under `v`.
fn collect_strings(v: Option<&Value>, out: &mut Vec<String>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Some(Value::Object(map)) => {
            if let Some(s) = map
                .get("String")
                .and_then(|s| s.get("sval"))
                .and_then(Value::as_str)
            {
                out.push(s.to_string());
            }
            map.values()
                .for_each(|c| collect_strings(Some(c), out, depth + 1));
        }
        Some(Value::Array(items)) => items
            .iter()
            .for_each(|c| collect_strings(Some(c), out, depth + 1)),
        _ => {}
    }
}

/// Reads `text` with PostgreSQL's lexer and parser.
pub fn examine(text: &str) -> Result<Referee, RefereeError> {
    let toks = tokens(text)?;
    let parsed =
        pg_query::parse(text, pg_query::ParserOptions::DEFAULT).map_err(|_| RefereeError::Parse)?;
    let mut statements = Vec::with_capacity(parsed.protobuf.stmts.len());
    for raw in &parsed.protobuf.stmts {
        let start = usize::try_from(raw.stmt_location).map_err(|_| RefereeError::Tree)?;
        let len = usize::try_from(raw.stmt_len).map_err(|_| RefereeError::Tree)?;
        let end = if len == 0 { text.len() } else { start + len };
        let inside: Vec<&Tok> = toks
            .iter()
            .filter(|t| t.range.start >= start && t.range.end <= end)
            .filter(|t| t.token != Token::Ascii59 as i32)
            .collect();
        let (Some(first), Some(last)) = (inside.first(), inside.last()) else {
            return Err(RefereeError::Tree);
        };
        let mut facts = Facts {
            range: first.range.start..last.range.end,
            ..Facts::default()
        };
        for t in &inside {
            if is_constant(t.token) {
                facts.literals.push(t.range.clone());
            } else if t.token == Token::Param as i32 {
                facts.params.push(t.range.clone());
            }
        }
        let Some(stmt) = raw.stmt.as_ref() else {
            return Err(RefereeError::Tree);
        };
        let tree = serde_json::to_value(stmt.as_ref()).map_err(|_| RefereeError::Tree)?;
        if let Some((kind, _)) = tree
            .get("node")
            .and_then(Value::as_object)
            .and_then(|m| m.iter().next())
        {
            facts.kind = kind.clone();
        }
        walk(&tree, &mut facts, 0)?;
        facts.effect = effect(&facts, &tree);
        facts.attached_to = attachments(&facts, &tree);
        if matches!(facts.kind.as_str(), "CreateStmt" | "AlterTableStmt") {
            // Typed fields hide the node kind: look for the bound by field.
            facts.partition_strings = partition_bound_strings(&tree);
        }
        statements.push(facts);
    }
    Ok(Referee { statements })
}

/// Deepest tree walked; deeper statements are refused (PostgreSQL's own
/// stack limit stops far shallower trees than serde_json's recursion).
const MAX_DEPTH: usize = 2000;

/// Collects every node kind and the references of interest, anywhere in
/// the tree: the walk is generic, so no node kind can be missed.
fn walk(v: &Value, facts: &mut Facts, depth: usize) -> Result<(), RefereeError> {
    if depth > MAX_DEPTH {
        return Err(RefereeError::Tree);
    }
    match v {
        Value::Object(map) => {
            // A node in a typed field (`InsertStmt.relation`, `CallStmt.funccall`)
            // is serialised without its kind: recognise it by its fields.
            if map.contains_key("relname") && map.contains_key("relpersistence") {
                node("RangeVar", v, facts);
            } else if map.contains_key("funcname") && map.contains_key("funcformat") {
                node("FuncCall", v, facts);
            }
            for (key, child) in map {
                if key.starts_with(|c: char| c.is_ascii_uppercase()) {
                    if !facts.nodes.contains(key) {
                        facts.nodes.insert(key.clone());
                    }
                    if key != "RangeVar" && key != "FuncCall" {
                        node(key, child, facts);
                    }
                }
                walk(child, facts, depth + 1)?;
            }
        }
        Value::Array(items) => {
            for child in items {
                walk(child, facts, depth + 1)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The statement's [`DdlEffect`].
fn effect(facts: &Facts, tree: &Value) -> DdlEffect {
    let body = tree.get("node").and_then(|n| n.get(&facts.kind));
    let non_empty = |key: &str| {
        body.and_then(|b| b.get(key))
            .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
    };
    let inherit = pg_query::protobuf::AlterTableType::AtAddInherit as i64;
    match facts.kind.as_str() {
        "RenameStmt" | "AlterObjectSchemaStmt" => DdlEffect::Renames,
        "ViewStmt" | "CreateTableAsStmt" | "CreateSchemaStmt" => DdlEffect::Derives,
        "CreateStmt" if non_empty("inh_relations") || non_empty("partbound") => DdlEffect::Derives,
        "AlterTableStmt"
            if facts.nodes.contains("PartitionCmd")
                || body
                    .and_then(|b| b.get("cmds"))
                    .and_then(Value::as_array)
                    .is_some_and(|cmds| {
                        cmds.iter().any(|c| {
                            c.get("node")
                                .and_then(|n| n.get("AlterTableCmd"))
                                .and_then(|a| a.get("subtype"))
                                .and_then(Value::as_i64)
                                == Some(inherit)
                        })
                    }) =>
        {
            DdlEffect::Derives
        }
        "AlterTableStmt" | "DropStmt" => DdlEffect::Alters,
        _ => DdlEffect::None,
    }
}

/// The parents an `ALTER TABLE` makes existing tables children or
/// partitions of: the `INHERIT` parent, or the table `ATTACH PARTITION` is
/// run on.
fn attachments(facts: &Facts, tree: &Value) -> Vec<RelName> {
    if facts.kind != "AlterTableStmt" {
        return Vec::new();
    }
    let Some(body) = tree.get("node").and_then(|n| n.get("AlterTableStmt")) else {
        return Vec::new();
    };
    let inherit = pg_query::protobuf::AlterTableType::AtAddInherit as i64;
    let attach = pg_query::protobuf::AlterTableType::AtAttachPartition as i64;
    let mut out = Vec::new();
    let cmds = body.get("cmds").and_then(Value::as_array);
    for cmd in cmds.into_iter().flatten() {
        let Some(c) = cmd.get("node").and_then(|n| n.get("AlterTableCmd")) else {
            continue;
        };
        let subtype = c.get("subtype").and_then(Value::as_i64);
        if subtype == Some(inherit) {
            if let Some(parent) = c
                .get("def")
                .and_then(|d| d.get("node"))
                .and_then(|n| n.get("RangeVar"))
            {
                out.push(rel_name(parent));
            }
        } else if subtype == Some(attach)
            && let Some(rel) = body.get("relation")
        {
            out.push(rel_name(rel));
        }
    }
    out
}

/// A `RangeVar`'s name.
fn rel_name(v: &Value) -> RelName {
    let schema = text_field(v, "schemaname");
    RelName {
        schema: (!schema.is_empty()).then_some(schema),
        name: text_field(v, "relname"),
    }
}

/// Whether a `partbound` anywhere in the tree holds a string constant.
fn partition_bound_strings(v: &Value) -> bool {
    match v {
        Value::Object(map) => map.iter().any(|(k, child)| {
            (matches!(k.as_str(), "partbound" | "bound" | "PartitionBoundSpec")
                && child.to_string().contains("\"Sval\""))
                || partition_bound_strings(child)
        }),
        Value::Array(items) => items.iter().any(partition_bound_strings),
        _ => false,
    }
}

/// The names of every `ColumnRef` under `v`.
fn collect_columns(v: Option<&Value>, out: &mut Vec<String>) {
    match v {
        Some(Value::Object(map)) => {
            for (k, child) in map {
                if k == "ColumnRef" {
                    if let Some(name) = last_name(child.get("fields")) {
                        out.push(name);
                    }
                } else {
                    collect_columns(Some(child), out);
                }
            }
        }
        Some(Value::Array(items)) => items.iter().for_each(|c| collect_columns(Some(c), out)),
        _ => {}
    }
}

fn text_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The first `String` of a qualified name list, when it has several.
fn first_name(list: Option<&Value>) -> Option<String> {
    let items = list?.as_array()?;
    if items.len() < 2 {
        return None;
    }
    items
        .first()?
        .get("node")?
        .get("String")?
        .get("sval")?
        .as_str()
        .map(str::to_string)
}

/// The last `String` of a name list (`funcname`, `defnames`).
fn last_name(list: Option<&Value>) -> Option<String> {
    list?
        .as_array()?
        .iter()
        .filter_map(|n| n.get("node")?.get("String")?.get("sval")?.as_str())
        .next_back()
        .map(str::to_string)
}

fn node(kind: &str, body: &Value, facts: &mut Facts) {
    match kind {
        "RangeVar" => facts.relations.push(rel_name(body)),
        "FuncCall" => {
            if let Some(name) = last_name(body.get("funcname")) {
                if first_name(body.get("funcname")).as_deref() == Some("cron") {
                    facts.functions.push(format!("cron.{name}"));
                }
                facts.functions.push(name);
            }
        }
        "ExecuteStmt" | "PrepareStmt" | "DeallocateStmt" => {
            facts.prepared.push(text_field(body, "name"));
        }
        "DeclareCursorStmt" | "FetchStmt" | "ClosePortalStmt" => {
            facts.cursors.push(text_field(body, "portalname"));
        }
        "ColumnRef" => {
            if let Some(name) = last_name(body.get("fields")) {
                facts.column_refs.push(name);
            }
        }
        "IndexElem" | "StatsElem" => collect_columns(body.get("expr"), &mut facts.stored_columns),
        "Constraint" => {
            collect_columns(body.get("raw_expr"), &mut facts.stored_columns);
            collect_columns(body.get("where_clause"), &mut facts.stored_columns);
        }
        "PartitionElem" => {
            collect_columns(body.get("expr"), &mut facts.stored_columns);
            let name = text_field(body, "name");
            if !name.is_empty() {
                facts.partition_keys.push(name);
            }
        }
        "RenameStmt" => {
            let kind = body.get("rename_type").and_then(Value::as_i64);
            let relation_kinds = [
                ObjectType::ObjectTable,
                ObjectType::ObjectView,
                ObjectType::ObjectMatview,
                ObjectType::ObjectForeignTable,
            ];
            if kind == Some(ObjectType::ObjectSchema as i64) {
                facts.renamed_schemas.push(text_field(body, "subname"));
                facts.schemas_renamed_to.push(text_field(body, "newname"));
            } else if relation_kinds.iter().any(|k| kind == Some(*k as i64))
                && let Some(rel) = body.get("relation")
            {
                facts.renamed_to.push(RelName {
                    schema: rel_name(rel).schema,
                    name: text_field(body, "newname"),
                });
            }
        }
        "AlterObjectSchemaStmt" => {
            if let Some(rel) = body.get("relation") {
                facts.renamed_to.push(RelName {
                    schema: Some(text_field(body, "newschema")),
                    name: rel_name(rel).name,
                });
            }
        }
        _ => {}
    }
}

/// A statement's text for logs: PostgreSQL's own normalisation (every
/// constant replaced by `$n`) of the statements up to and including
/// `through` (an index), never anything after them; whatever the lexer
/// still sees as a constant afterwards is masked too. `<unparsed>` where
/// PostgreSQL's parser cannot read the text (nothing of it is shown).
///
/// A quoted identifier is kept only where it cannot be a value written
/// with the wrong quotes (`email = "ada"`): when it is part of a qualified
/// name (next to a `.`) or `known` says it names something (pgveil's
/// watched tables, columns and schemas).
pub fn fingerprint(text: &str, through: Option<usize>, known: &dyn Fn(&str) -> bool) -> String {
    let Ok(parts) = pg_query::split_with_scanner(text) else {
        return "<unparsed>".to_string();
    };
    let last = through.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > last {
            break;
        }
        let Ok(normal) = pg_query::normalize(part) else {
            out.push("<unparsed>".to_string());
            break;
        };
        out.push(mask_constants(normal.trim(), known));
    }
    let joined = out.join("; ");
    let joined: String = joined.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.len() > 400 {
        let mut cut = 400;
        while !joined.is_char_boundary(cut) {
            cut -= 1;
        }
        return format!("{}...", &joined[..cut]);
    }
    joined
}

/// Replaces every constant token left in a normalised statement with `?`
/// (normalisation keeps some, such as type modifiers), drops comments, and
/// masks quoted identifiers that could be values written with the wrong
/// quotes (see [`fingerprint`]); on a lexer failure nothing is kept.
fn mask_constants(text: &str, known: &dyn Fn(&str) -> bool) -> String {
    let Some(toks) = raw_tokens(text) else {
        return "<unparsed>".to_string();
    };
    let comment = [Token::SqlComment as i32, Token::CComment as i32];
    let dot = i32::from(b'.');
    let mut spans = Vec::with_capacity(toks.len());
    for t in &toks {
        let (Ok(start), Ok(end)) = (usize::try_from(t.start), usize::try_from(t.end)) else {
            return "<unparsed>".to_string();
        };
        if text.get(start..end).is_none() {
            return "<unparsed>".to_string();
        }
        spans.push((start, end));
    }
    // The neighbours of a token, comments skipped: a comment does not
    // separate a name from its dot.
    let solid: Vec<usize> = (0..toks.len())
        .filter(|&i| !comment.contains(&toks[i].token))
        .collect();
    let beside_dot = |k: usize| {
        (k > 0 && toks[solid[k - 1]].token == dot)
            || solid.get(k + 1).is_some_and(|&j| toks[j].token == dot)
    };
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut k = 0;
    for (i, t) in toks.iter().enumerate() {
        let (start, end) = spans[i];
        let word = text.get(start..end).unwrap_or_default();
        let mask = if comment.contains(&t.token) {
            " "
        } else {
            let here = k;
            k += 1;
            if is_constant(t.token) {
                "?"
            } else if t.token == Token::Uident as i32 {
                "\"?\""
            } else if word.starts_with('"') {
                let name = word.trim_matches('"');
                if plain_name(name) && (beside_dot(here) || known(name)) {
                    continue;
                }
                "\"?\""
            } else {
                continue;
            }
        };
        out.push_str(text.get(at..start).unwrap_or_default());
        out.push_str(mask);
        at = end;
    }
    out.push_str(text.get(at..).unwrap_or_default());
    out
}

/// Whether a quoted identifier's content looks like a name (letters,
/// digits, `_`, `$`), the only kind the audit fingerprint may keep.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

#[cfg(test)]
mod tests;
