//! The fail-closed analyzer.
//!
//! Every expression gets a class: plain data, a literal (which may have to
//! be encrypted), NULL, a parameter, or ciphertext of one key domain. Rules
//! combine classes: equality between ciphertext and literals encrypts the
//! literals; equality between two domains, ordering, patterns, functions and
//! casts on ciphertext are refused. Any construct the analyzer does not
//! model is accepted only if it cannot involve an encrypted column; if it
//! might, the statement is refused. Peer products forward what they cannot
//! parse; pgveil refuses it.
//!
//! The stages, in the order a statement meets them:
//!
//! - this file: the plans it produces and the entry points, which read the
//!   text with both parsers and run the stages below per statement;
//! - `checks.rs`: what PostgreSQL's own reading (the referee) settles, and
//!   the checks that sqlparser read the statement the same way;
//! - bind: `relations.rs` (FROM items, column references, `*`) and
//!   `using.rs` (the column order of `*` over `JOIN ... USING`);
//! - classify: `query.rs` (queries, set operations, select lists), `expr.rs`
//!   with `membership.rs` and `functions.rs` (one class per expression),
//!   `compare.rs` (what two classes meeting may do), `params.rs` (`$n`
//!   bound to encrypted columns), `literal.rs` (where a literal is written);
//! - plan: `statement.rs` (dispatch), `dml.rs`, `insert.rs`, `copy.rs`,
//!   `prepare.rs` and `ddl.rs`, one per statement family;
//! - `names.rs`: identifiers and result column names as PostgreSQL makes
//!   them, used throughout.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::referee::{self, Facts, Referee};
use super::refusal::Refusal;
use super::source::Source;
use crate::catalog::{Catalog, Encrypted, Relation};

mod checks;
mod compare;
mod copy;
mod ddl;
mod dml;
mod expr;
mod functions;
mod insert;
mod literal;
mod membership;
mod names;
mod params;
mod prepare;
mod query;
mod relations;
mod statement;
#[cfg(test)]
mod tests;
mod using;

use checks::{agree, disagreement, referee_checks, same_statements, stored_expressions};
use compare::refuse_col;
use names::norm;
use statement::{is_ddl, sets_search_path};

/// A literal to replace with ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// Bytes of the original text to replace (the literal and its cast).
    pub range: Range<usize>,
    /// The column whose cipher applies.
    pub column: Encrypted,
    /// The plaintext, in the column type's text form.
    pub text: String,
    /// Where the literal sits, which decides how several stored forms are
    /// written (only matters while the column has more than one).
    pub forms: Forms,
}

/// How a value meets a column that may hold one plaintext in several stored
/// forms (key versions during a rotation, plaintext during a migration).
/// With one form, every kind writes the single ciphertext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forms {
    /// Stored or compared where only one value fits: the active form.
    #[default]
    One,
    /// Right of `=`: `= ANY(ARRAY[forms])`.
    Any,
    /// Right of `<>`: `<> ALL(ARRAY[forms])`.
    All,
    /// An element of `IN (...)` or `ARRAY[...]` under `= ANY` / `<> ALL`:
    /// the forms, comma-separated.
    List,
}

/// What to do with one statement.
#[derive(Debug, Clone, Default)]
pub struct StatementPlan {
    /// Byte range of the statement in the original text.
    pub range: Range<usize>,
    /// Literals to encrypt.
    pub edits: Vec<Edit>,
    /// Other text to replace (declared parameter types of encrypted parameters).
    pub replacements: Vec<(Range<usize>, String)>,
    /// For result columns PostgreSQL reports without an origin (set
    /// operations, scalar subqueries): the encrypted column by position.
    pub outputs: Vec<Option<Encrypted>>,
    /// The statement changes the schema: reload the catalog after it.
    pub refresh_catalog: bool,
    /// The statement names a configured table or a view over one.
    pub touches: bool,
    /// `SET search_path` was seen.
    pub sets_search_path: bool,
    /// `PREPARE name`: per parameter, the encrypted column it is bound to.
    pub prepared: Option<(String, Vec<Option<Encrypted>>)>,
    /// `DEALLOCATE name` (`None` inside: `DEALLOCATE ALL`).
    pub deallocated: Option<Option<String>>,
    /// Parameters (`$n`) bound to encrypted columns, by number.
    pub params: BTreeMap<usize, ParamBinding>,
    /// `COPY ... FROM STDIN` / `TO STDOUT` with encrypted columns.
    pub copy: Option<std::sync::Arc<CopyPlan>>,
}

/// How the rows of a COPY are read: which fields hold encrypted columns.
#[derive(Debug, Clone)]
pub struct CopyPlan {
    /// `COPY ... TO STDOUT` (rows from the database) rather than FROM STDIN.
    pub to: bool,
    /// Format and options, as PostgreSQL reads them.
    pub options: crate::copy::CopyOptions,
    /// Per field: its column name, and the encrypted column it holds.
    pub columns: Vec<(String, Option<Encrypted>)>,
}

/// The analysis of one simple Query (possibly several statements).
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    /// Plans of the statements before the first refusal.
    pub statements: Vec<StatementPlan>,
    /// The refusal that stops the rest, if any.
    pub refusal: Option<Refusal>,
    /// Configured tables or columns named but absent from the catalog:
    /// reload it and analyse again before acting.
    pub stale: bool,
}

/// Names whose presence in a statement requires analysis.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    /// Lower-cased names of configured tables, views over them, and
    /// encrypted columns.
    pub names: Vec<String>,
    /// Configured columns as `(schema, table, column)`.
    pub columns: Vec<(String, String, String)>,
    /// Schemas holding configured tables (a rename of one is refused) or
    /// relations derived from them (a rename reloads the catalog).
    pub schemas: Vec<String>,
}

impl Watched {
    /// The names a catalog and config make sensitive.
    pub fn new(
        catalog: &Catalog,
        configured: &[(String, String)],
        columns: &[(String, String, String)],
    ) -> Watched {
        let mut names: Vec<String> = configured.iter().map(|(_, t)| t.to_lowercase()).collect();
        names.extend(catalog.relations().iter().map(|r| r.name.to_lowercase()));
        names.extend(columns.iter().map(|(_, _, c)| c.to_lowercase()));
        names.sort();
        names.dedup();
        // Schemas of views and children too: a rename of one changes
        // their names, so the catalog must be read again after it.
        let mut schemas: Vec<String> = configured
            .iter()
            .map(|(s, _)| s.clone())
            .chain(catalog.relations().iter().map(|r| r.schema.clone()))
            .collect();
        schemas.sort();
        schemas.dedup();
        Watched {
            names,
            columns: columns.to_vec(),
            schemas,
        }
    }

    /// Whether `name` (case-insensitively) is a watched table, view,
    /// column or schema: a name the audit log may show.
    pub fn is_name(&self, name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        self.names.binary_search(&n).is_ok()
            || self.schemas.iter().any(|s| s.eq_ignore_ascii_case(&n))
    }

    /// Whether `text` names anything watched, by PostgreSQL's lexer: an
    /// identifier or keyword equal to a watched name, or a Unicode-escaped
    /// identifier. Constants and comments are not names, except where the
    /// text holds code in strings (`DO`, function bodies), whose words count
    /// too; a text the lexer cannot read is judged by its words.
    pub fn named_in(&self, text: &str) -> bool {
        if self.names.is_empty() {
            return false;
        }
        match referee::scan_names(text, |w| {
            self.names.iter().any(|n| n == w) || referee::refused_function(w)
        }) {
            Some(scan) => {
                scan.hit || (scan.bodies && (self.mentioned_in(text) || self.in_bodies(text, scan)))
            }
            None => self.mentioned_in(text),
        }
    }

    /// Whether the decoded code bodies of `text` (escape or Unicode
    /// strings, whose written words differ) name anything watched; true
    /// when PostgreSQL cannot parse them.
    pub fn in_bodies(&self, text: &str, scan: referee::NameScan) -> bool {
        scan.escaped
            && referee::code_bodies(text)
                .is_none_or(|bodies| bodies.iter().any(|b| self.mentioned_in(b)))
    }

    /// Whether any watched name occurs as a word in `text`.
    pub fn mentioned_in(&self, text: &str) -> bool {
        let lower = text.to_lowercase();
        lower
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .any(|w| self.names.iter().any(|n| n == w))
    }
}

/// A literal as written: where it is, its plaintext, and the cast on it.
#[derive(Debug, Clone)]
struct Lit {
    range: Range<usize>,
    text: String,
    cast: Option<String>,
    /// Reached here through a column of a VALUES list, CTE or derived
    /// table rather than written in place.
    via_column: bool,
    /// A bare numeric literal.
    number: bool,
}

/// What an expression's value is, as far as encryption goes: the rules of
/// the analyzer are rules on how classes may meet.
#[derive(Debug, Clone)]
enum Class {
    Plain,
    Null,
    /// `$n` parameters (several when they meet in a VALUES column), and the
    /// casts written on them.
    Params(Vec<usize>, Vec<CastSite>),
    Lits(Vec<Lit>),
    Enc {
        col: Encrypted,
        direct: bool,
    },
}

/// A cast written on a parameter (`$1::text`, `CAST(p0 AS varchar)`): if
/// the parameter is bound to an encrypted column, the cast is rewritten to
/// the storage type so the database accepts the ciphertext.
#[derive(Debug, Clone)]
struct CastSite {
    /// The whole cast expression.
    range: Range<usize>,
    /// The expression under the outermost chain of casts.
    base: Range<usize>,
    /// The type cast to, as written (lower case).
    to: String,
}

/// A parameter bound to an encrypted column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamBinding {
    /// The column whose cipher applies.
    pub column: Encrypted,
    /// The parameter is an array whose elements are compared with the
    /// column (`col = ANY($1)`).
    pub array: bool,
    /// The column has several stored forms and the parameter is compared
    /// with it: the database receives every form (an array; for an array
    /// parameter, every element's forms), and the statement text was
    /// rewritten to match any of them.
    pub expand: bool,
}

/// An output column of a query or relation: its name and its class.
#[derive(Debug, Clone)]
struct Out {
    name: String,
    class: Class,
}

/// What pgveil knows of a relation in scope: a catalog relation, the
/// outputs of a derived table or CTE, or nothing.
#[derive(Debug, Clone)]
enum RelSource<'c> {
    Catalog(&'c Relation),
    Derived(Vec<Out>),
    Other,
}

/// A relation in scope, by the name it is referred to by.
#[derive(Debug, Clone)]
struct Rel<'c> {
    name: String,
    schema: Option<String>,
    source: RelSource<'c>,
}

/// The relations a column reference may name, and the enclosing query's
/// scope (correlated subqueries).
struct Scope<'s, 'c> {
    rels: Vec<Rel<'c>>,
    parent: Option<&'s Scope<'s, 'c>>,
}

/// The state of analysing one statement: what it reads, and the edits,
/// bindings and uses gathered so far.
struct Ctx<'c, 'a> {
    catalog: &'c Catalog,
    source: &'a Source<'a>,
    watched: &'a Watched,
    edits: Vec<Edit>,
    /// WITH queries in scope; `None` when their columns are unknown.
    ctes: Vec<(String, Option<Vec<Out>>)>,
    touches: bool,
    stale: bool,
    configured: &'a [(String, String)],
    /// Parameters bound to encrypted columns, by number.
    params: BTreeMap<usize, ParamBinding>,
    /// SQL-level prepared statements of this session.
    prepared: &'a HashMap<String, Vec<Option<Encrypted>>>,
    replacements: Vec<(Range<usize>, String)>,
    prepared_out: Option<(String, Vec<Option<Encrypted>>)>,
    /// Literals also used as plaintext (selected, written to plain columns).
    plain_uses: Vec<Range<usize>>,
    /// Parameters also written to plain columns.
    plain_params: Vec<usize>,
    copy: Option<std::sync::Arc<CopyPlan>>,
    /// Where each `$n` is written, by number.
    placeholders: HashMap<usize, Vec<Range<usize>>>,
    /// Parameters that reached a comparison through a derived table, VALUES
    /// list or CTE column: rewriting them where they are written would
    /// change that column, not the comparison.
    derived_params: std::collections::HashSet<usize>,
    /// Inside DDL that stores its expressions (view, index predicate).
    in_ddl: bool,
    /// Resolving the target of INSERT, UPDATE or DELETE, which PostgreSQL
    /// never reads as a WITH query.
    target: bool,
    /// Joins with `USING`, whose `*` PostgreSQL reorders.
    using_joins: Vec<UsingJoin>,
    /// FROM items seen, to tell `USING` joins of different items apart.
    from_items: usize,
}

type R<T> = Result<T, Refusal>;

/// A join with `USING (columns)`: `*` over it lists the merged columns
/// first, then the left side's others, then the right side's.
#[derive(Debug, Clone)]
struct UsingJoin {
    /// The FROM item it belongs to.
    item: usize,
    /// Relations of the left side (names in scope).
    left: Vec<String>,
    /// The relation joined.
    right: String,
    /// The `USING` columns.
    columns: Vec<String>,
}

impl<'c, 'a> Ctx<'c, 'a> {
    /// A context with nothing seen yet, for one statement (or one view
    /// definition): every statement is judged on its own.
    fn new(
        catalog: &'c Catalog,
        source: &'a Source<'a>,
        watched: &'a Watched,
        configured: &'a [(String, String)],
        prepared: &'a HashMap<String, Vec<Option<Encrypted>>>,
    ) -> Self {
        Ctx {
            catalog,
            source,
            watched,
            edits: Vec::new(),
            ctes: Vec::new(),
            touches: false,
            stale: false,
            configured,
            params: BTreeMap::new(),
            prepared,
            replacements: Vec::new(),
            prepared_out: None,
            plain_uses: Vec::new(),
            plain_params: Vec::new(),
            copy: None,
            placeholders: HashMap::new(),
            derived_params: std::collections::HashSet::new(),
            in_ddl: false,
            target: false,
            using_joins: Vec::new(),
            from_items: 0,
        }
    }

    /// Analyses one statement of a Query and checks that sqlparser read it
    /// as PostgreSQL did; returns its output columns when their positions
    /// are known.
    fn analyse(
        &mut self,
        stmt: &Statement,
        facts: &Facts,
        range: Range<usize>,
    ) -> R<Option<Vec<Out>>> {
        let outputs = self.statement(stmt)?;
        agree(self.source, stmt, facts, self.watched, range)?;
        self.one_role_per_value(outputs.as_deref())?;
        Ok(outputs)
    }

    /// A literal or parameter is either encrypted for a column or used as
    /// plaintext (selected, compared with plain data), never both: one
    /// text cannot carry the ciphertext and the plaintext at once.
    fn one_role_per_value(&mut self, outputs: Option<&[Out]>) -> R<()> {
        if let Some(outs) = outputs {
            for o in outs {
                match &o.class {
                    Class::Lits(ls) => {
                        self.plain_uses.extend(ls.iter().map(|l| l.range.clone()));
                    }
                    Class::Params(ns, _) => self.plain_params.extend(ns.iter().copied()),
                    _ => {}
                }
            }
        }
        if let Some(n) = self
            .plain_params
            .iter()
            .find(|n| self.params.contains_key(n))
        {
            return Err(Refusal::general(
                format!("parameter ${n} is used both for an encrypted column and as plaintext"),
                "plaintext_comparison",
            ));
        }
        if let Some(e) = self
            .edits
            .iter()
            .find(|e| self.plain_uses.contains(&e.range))
        {
            return Err(refuse_col(
                &e.column,
                "a value used both for it and as plaintext in one statement",
                "plaintext_comparison",
            ));
        }
        Ok(())
    }

    /// The plan of an analysed statement: what the context gathered, and
    /// the positional hints for outputs PostgreSQL reports without origin.
    fn into_plan(
        self,
        stmt: &Statement,
        range: Range<usize>,
        outputs: Option<Vec<Out>>,
    ) -> StatementPlan {
        let hints = outputs
            .map(|outs| {
                outs.into_iter()
                    .map(|o| match o.class {
                        Class::Enc { col, direct: false } => Some(col),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        StatementPlan {
            range,
            edits: self.edits,
            replacements: self.replacements,
            outputs: hints,
            refresh_catalog: is_ddl(stmt),
            touches: self.touches,
            sets_search_path: sets_search_path(stmt),
            prepared: self.prepared_out,
            deallocated: None,
            params: self.params,
            copy: self.copy,
        }
    }
}

/// A Query as both parsers read it, once they agree on its statements.
struct Reading<'t> {
    source: Source<'t>,
    statements: Vec<Statement>,
    ranges: Vec<Range<usize>>,
    referee: Referee,
}

/// Reads a Query with sqlparser and PostgreSQL's parser. A text either
/// cannot read, or one where they disagree on where its statements begin
/// and end, is refused as a whole: nothing of it can be judged.
fn read(text: &str) -> R<Reading<'_>> {
    let unparsed = || {
        Refusal::general(
            "statement names an encrypted table but could not be analysed",
            "unparsed",
        )
    };
    let Some(source) = Source::new(text) else {
        return Err(unparsed());
    };
    if text.to_lowercase().contains("u&\"") {
        return Err(Refusal::general(
            "Unicode-escaped identifiers (U&\"...\") in a statement that may touch encrypted tables",
            "unparsed",
        ));
    }
    let dialect = PostgreSqlDialect {};
    let Ok(statements) = Parser::parse_sql(&dialect, text) else {
        return Err(unparsed());
    };
    let ranges = source.statements();
    let Ok(referee) = referee::examine(text) else {
        return Err(unparsed());
    };
    if ranges.len() != statements.len() || !same_statements(&ranges, &referee) {
        return Err(disagreement("where its statements begin and end"));
    }
    Ok(Reading {
        source,
        statements,
        ranges,
        referee,
    })
}

/// The plan of a statement that needs no analysis: `DEALLOCATE`, or one
/// that names nothing watched and no prepared statement. `None` when the
/// statement must be analysed.
fn unanalysed(
    stmt: &Statement,
    range: &Range<usize>,
    facts: &Facts,
    stmt_text: &str,
    watched: &Watched,
) -> Option<StatementPlan> {
    if let Statement::Deallocate { name, .. } = stmt {
        let target = if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
            None
        } else {
            Some(norm(name))
        };
        return Some(StatementPlan {
            range: range.clone(),
            deallocated: Some(target),
            ..StatementPlan::default()
        });
    }
    // PostgreSQL's tree says whether a prepared statement is named
    // anywhere (`EXPLAIN ANALYZE EXECUTE p`, `PREPARE`, `DEALLOCATE`).
    let names_prepared = !facts.prepared.is_empty();
    if !names_prepared && !watched.named_in(stmt_text) {
        return Some(StatementPlan {
            range: range.clone(),
            refresh_catalog: is_ddl(stmt),
            sets_search_path: sets_search_path(stmt),
            ..StatementPlan::default()
        });
    }
    None
}

/// Analyses a simple Query's text against the catalog.
///
/// `configured` are the configured `(schema, table)` names, so that a
/// configured table missing from the catalog is noticed (`stale`).
pub fn analyze(
    text: &str,
    catalog: &Catalog,
    watched: &Watched,
    configured: &[(String, String)],
    prepared: &HashMap<String, Vec<Option<Encrypted>>>,
) -> Analysis {
    let reading = match read(text) {
        Ok(r) => r,
        Err(refusal) => {
            return Analysis {
                refusal: Some(refusal),
                ..Analysis::default()
            };
        }
    };
    let mut analysis = Analysis::default();
    let mut after_ddl: Vec<referee::DdlEffect> = Vec::new();
    let statements = reading.statements.iter().zip(reading.ranges);
    for ((stmt, range), facts) in statements.zip(&reading.referee.statements) {
        let stmt_text = &text[range.clone()];
        if let Err(r) = referee_checks(facts, configured, &after_ddl, catalog) {
            analysis.refusal = Some(r);
            break;
        }
        if let Some(mut plan) = unanalysed(stmt, &range, facts, stmt_text, watched) {
            plan.refresh_catalog |= facts.effect != referee::DdlEffect::None;
            analysis.statements.push(plan);
            continue;
        }
        if facts.effect != referee::DdlEffect::None && !after_ddl.contains(&facts.effect) {
            after_ddl.push(facts.effect);
        }
        if let Err(r) = stored_expressions(facts, watched) {
            analysis.refusal = Some(r);
            break;
        }
        let mut ctx = Ctx::new(catalog, &reading.source, watched, configured, prepared);
        let result = ctx.analyse(stmt, facts, range.clone());
        if ctx.stale {
            analysis.stale = true;
        }
        match result {
            Ok(outputs) => {
                let mut plan = ctx.into_plan(stmt, range, outputs);
                plan.refresh_catalog |= facts.effect != referee::DdlEffect::None;
                analysis.statements.push(plan);
            }
            Err(r) => {
                analysis.refusal = Some(r);
                break;
            }
        }
    }
    analysis
}

/// Maps a view's columns to the encrypted columns they expose, by
/// analysing its definition (`pg_get_viewdef`). `Err` when the view does
/// something pgveil cannot follow: statements naming it are then refused.
pub fn view_columns(
    definition: &str,
    catalog: &Catalog,
    watched: &Watched,
    configured: &[(String, String)],
) -> Result<Vec<Option<Encrypted>>, Refusal> {
    let unparsed = || Refusal::general("its definition cannot be analysed", "unparsed");
    let source = Source::new(definition).ok_or_else(unparsed)?;
    let dialect = PostgreSqlDialect {};
    let statements = Parser::parse_sql(&dialect, definition).map_err(|_| unparsed())?;
    let [Statement::Query(q)] = statements.as_slice() else {
        return Err(unparsed());
    };
    let no_prepared = HashMap::new();
    let mut ctx = Ctx::new(catalog, &source, watched, configured, &no_prepared);
    let outs = ctx.query(q, None)?.ok_or_else(unparsed)?;
    if !ctx.edits.is_empty() {
        // A literal compared with an encrypted column inside the view is
        // stored in plaintext in the view definition: it cannot match.
        return Err(Refusal::general(
            "it compares an encrypted column with a literal",
            "unsupported",
        ));
    }
    Ok(outs
        .into_iter()
        .map(|o| match o.class {
            Class::Enc { col, .. } => Some(col),
            _ => None,
        })
        .collect())
}
