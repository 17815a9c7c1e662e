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

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, CastKind, ConflictTarget, CopyLegacyCsvOption,
    CopyLegacyOption, CopyOption, CopySource, CopyTarget, Expr, FromTable, FunctionArg,
    FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, InTarget, Insert, JoinConstraint,
    JoinOperator, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, OrderByKind, Query,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableObject,
    TableWithJoins, UnaryOperator, UpdateTableFromKind, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::referee::{self, Facts, Referee};
use super::refusal::Refusal;
use super::source::{Source, same_token, snippet_tokens};
use crate::catalog::{Catalog, Encrypted, Relation, RelationKind, StorageState};
use crate::config::ValueType;

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
    /// Schemas holding configured tables (a rename of one is refused).
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
        let mut schemas: Vec<String> = configured.iter().map(|(s, _)| s.clone()).collect();
        schemas.sort();
        schemas.dedup();
        Watched {
            names,
            columns: columns.to_vec(),
            schemas,
        }
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
            Some(scan) => scan.hit || (scan.bodies && self.mentioned_in(text)),
            None => self.mentioned_in(text),
        }
    }

    /// Whether any watched name occurs as a word in `text`.
    pub fn mentioned_in(&self, text: &str) -> bool {
        let lower = text.to_lowercase();
        lower
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .any(|w| self.names.iter().any(|n| n == w))
    }
}

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

#[derive(Debug, Clone)]
struct Out {
    name: String,
    class: Class,
}

#[derive(Debug, Clone)]
enum RelSource<'c> {
    Catalog(&'c Relation),
    Derived(Vec<Out>),
    Other,
}

#[derive(Debug, Clone)]
struct Rel<'c> {
    name: String,
    schema: Option<String>,
    source: RelSource<'c>,
}

struct Scope<'s, 'c> {
    rels: Vec<Rel<'c>>,
    parent: Option<&'s Scope<'s, 'c>>,
}

/// Identifier as PostgreSQL folds it.
fn norm(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

fn name_parts(n: &ObjectName) -> Vec<String> {
    n.0.iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => norm(i),
            other => other.to_string(),
        })
        .collect()
}

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

fn refuse_col(col: &Encrypted, op: impl Into<String>, reason: &'static str) -> Refusal {
    Refusal::on_column(&col.id.to_string(), op, reason)
}

/// A comparison that cannot match every stored form of a value while the
/// column has several (a migration or key rotation is in progress).
fn several_forms(col: &Encrypted, op: &str) -> Refusal {
    refuse_col(
        col,
        format!(
            "`{op}` written this way while each value has {} stored forms (a migration or key \
             rotation is in progress; write `column = value`, `column IN (...)`, \
             `column <> value` or `column = ANY(...)`)",
            col.forms
        ),
        "migrating",
    )
}

/// The text that matches an array of `count` stored forms where one value
/// was written: `ANY(x)`, `ALL(x)`, or `(x)[1], (x)[2], ...` in a list.
fn wrap_forms(forms: Forms, array: &str, count: usize) -> String {
    match forms {
        Forms::One => array.to_string(),
        Forms::Any => format!("ANY({array})"),
        Forms::All => format!("ALL({array})"),
        Forms::List => (1..=count)
            .map(|i| format!("({array})[{i}]"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// How a value compared with `col` by `op` is written, given the side the
/// column is on. With one stored form anything goes; with several, only
/// positions where every form can be listed.
fn match_forms(col: &Encrypted, op: &str, enc_left: bool) -> R<Forms> {
    if col.forms <= 1 {
        return Ok(Forms::One);
    }
    match (op, enc_left) {
        ("=", true) => Ok(Forms::Any),
        ("<>" | "!=", true) => Ok(Forms::All),
        ("IN" | "= ANY" | "<> ALL", true) => Ok(Forms::List),
        _ => Err(several_forms(col, op)),
    }
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
    let unparsed = || Analysis {
        refusal: Some(Refusal::general(
            "statement names an encrypted table but could not be analysed",
            "unparsed",
        )),
        ..Analysis::default()
    };
    let Some(source) = Source::new(text) else {
        return unparsed();
    };
    if text.to_lowercase().contains("u&\"") {
        return Analysis {
            refusal: Some(Refusal::general(
                "Unicode-escaped identifiers (U&\"...\") in a statement that may touch encrypted tables",
                "unparsed",
            )),
            ..Analysis::default()
        };
    }
    let dialect = PostgreSqlDialect {};
    let Ok(statements) = Parser::parse_sql(&dialect, text) else {
        return unparsed();
    };
    let ranges = source.statements();
    let Ok(referee) = referee::examine(text) else {
        return unparsed();
    };
    if ranges.len() != statements.len() || !same_statements(&ranges, &referee) {
        return Analysis {
            refusal: Some(disagreement("where its statements begin and end")),
            ..Analysis::default()
        };
    }
    let mut analysis = Analysis::default();
    let mut after_ddl = referee::DdlEffect::None;
    for ((stmt, range), facts) in statements.iter().zip(ranges).zip(&referee.statements) {
        let stmt_text = &text[range.clone()];
        if let Err(r) = referee_checks(facts, configured, after_ddl, catalog) {
            analysis.refusal = Some(r);
            break;
        }
        if let Statement::Deallocate { name, .. } = stmt {
            let target = if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                None
            } else {
                Some(norm(name))
            };
            analysis.statements.push(StatementPlan {
                range,
                deallocated: Some(target),
                ..StatementPlan::default()
            });
            continue;
        }
        // PostgreSQL's tree says whether a prepared statement is named
        // anywhere (`EXPLAIN ANALYZE EXECUTE p`, `PREPARE`, `DEALLOCATE`).
        let names_prepared = !facts.prepared.is_empty();
        if !names_prepared && !watched.named_in(stmt_text) {
            analysis.statements.push(StatementPlan {
                range,
                refresh_catalog: is_ddl(stmt),
                sets_search_path: sets_search_path(stmt),
                ..StatementPlan::default()
            });
            continue;
        }
        let mut ctx = Ctx {
            catalog,
            source: &source,
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
        };
        after_ddl = after_ddl.max(facts.effect);
        if let Err(r) = stored_expressions(facts, watched) {
            analysis.refusal = Some(r);
            break;
        }
        let result = ctx.statement(stmt).and_then(|outputs| {
            agree(&source, stmt, facts, watched, range.clone())?;
            if let Some(outs) = &outputs {
                for o in outs {
                    match &o.class {
                        Class::Lits(ls) => {
                            ctx.plain_uses.extend(ls.iter().map(|l| l.range.clone()));
                        }
                        Class::Params(ns, _) => ctx.plain_params.extend(ns.iter().copied()),
                        _ => {}
                    }
                }
            }
            if let Some(n) = ctx.plain_params.iter().find(|n| ctx.params.contains_key(n)) {
                return Err(Refusal::general(
                    format!("parameter ${n} is used both for an encrypted column and as plaintext"),
                    "plaintext_comparison",
                ));
            }
            if let Some(e) = ctx.edits.iter().find(|e| ctx.plain_uses.contains(&e.range)) {
                return Err(refuse_col(
                    &e.column,
                    "a value used both for it and as plaintext in one statement",
                    "plaintext_comparison",
                ));
            }
            Ok(outputs)
        });
        match result {
            Ok(outputs) => {
                if ctx.stale {
                    analysis.stale = true;
                }
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
                analysis.statements.push(StatementPlan {
                    range,
                    edits: ctx.edits,
                    replacements: ctx.replacements,
                    outputs: hints,
                    refresh_catalog: is_ddl(stmt),
                    touches: ctx.touches,
                    sets_search_path: sets_search_path(stmt),
                    prepared: ctx.prepared_out,
                    deallocated: None,
                    params: ctx.params,
                    copy: ctx.copy,
                });
            }
            Err(r) => {
                if ctx.stale {
                    analysis.stale = true;
                }
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
    let mut ctx = Ctx {
        catalog,
        source: &source,
        watched,
        edits: Vec::new(),
        ctes: Vec::new(),
        touches: false,
        stale: false,
        configured,
        params: BTreeMap::new(),
        prepared: &no_prepared,
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
    };
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

/// A refusal for a statement sqlparser and PostgreSQL read differently.
fn disagreement(what: &str) -> Refusal {
    Refusal::general(
        format!(
            "pgveil's analyzer and PostgreSQL's parser read this statement differently ({what}); \
             pgveil does not guess"
        ),
        "unparsed",
    )
}

/// Whether sqlparser's statements start and end where PostgreSQL's do.
fn same_statements(ranges: &[Range<usize>], referee: &Referee) -> bool {
    ranges.len() == referee.statements.len()
        && ranges
            .iter()
            .zip(&referee.statements)
            .all(|(a, f)| *a == f.range)
}

/// Checks that need only PostgreSQL's reading of a statement: functions
/// that read tables without naming them, renames of schemas holding
/// configured tables, and statements that follow DDL in the same Query
/// (they would be judged against a catalog the DDL has changed).
fn referee_checks(
    facts: &Facts,
    configured: &[(String, String)],
    after_ddl: referee::DdlEffect,
    catalog: &Catalog,
) -> R<()> {
    if let Some(f) = facts
        .functions
        .iter()
        .find(|f| referee::refused_function(f))
    {
        return Err(Refusal::general(
            format!(
                "function {f} runs SQL given as a string or reads whole tables, schemas or \
                 databases, which would return ciphertext (see docs/SQL.md)"
            ),
            "function",
        ));
    }
    if let Some(s) = facts
        .renamed_schemas
        .iter()
        .find(|s| configured.iter().any(|(cs, _)| cs == *s))
    {
        return Err(Refusal::general(
            format!(
                "renaming schema {s}, which holds configured tables (change proxy.toml together \
                 with the schema, then reload)"
            ),
            "unsupported",
        ));
    }
    // After DDL that derives relations from encrypted ones, a relation the
    // catalog does not know may be one it created; after a rename, any name.
    let unsure = match after_ddl {
        referee::DdlEffect::None => false,
        referee::DdlEffect::Derives => facts
            .relations
            .iter()
            .any(|r| !catalog.relations().iter().any(|c| c.name == r.name)),
        referee::DdlEffect::Renames => !facts.relations.is_empty() || !facts.prepared.is_empty(),
    };
    if unsure {
        return Err(Refusal::general(
            "a statement after DDL on encrypted tables in the same Query or pipeline; send the \
             DDL on its own and wait for its result",
            "catalog",
        ));
    }
    Ok(())
}

/// DDL whose expressions the catalog stores (CHECK, generated columns,
/// index expressions and predicates, statistics expressions, partition
/// keys and bounds) over encrypted columns of the relations it names: they
/// would run on ciphertext, and their literals would be stored in
/// plaintext. Refused; plain column lists (keys, UNIQUE, statistics on
/// columns, `EXCLUDE (col WITH =)`) compare ciphertext for equality and pass.
fn stored_expressions(facts: &Facts, watched: &Watched) -> R<()> {
    const DDL: [&str; 5] = [
        "CreateStmt",
        "AlterTableStmt",
        "IndexStmt",
        "CreateStatsStmt",
        "CreateSchemaStmt",
    ];
    if !DDL.contains(&facts.kind.as_str()) {
        return Ok(());
    }
    let encrypted: Vec<&(String, String, String)> = watched
        .columns
        .iter()
        .filter(|(_, t, _)| facts.relations.iter().any(|r| r.name == *t))
        .collect();
    let named = |c: &String| encrypted.iter().find(|(_, _, col)| col == c);
    let refuse = |(s, t, c): &&(String, String, String), what: &str| {
        Err(Refusal::on_column(
            &format!("{s}.{t}.{c}"),
            what,
            "unsupported",
        ))
    };
    if let Some(col) = facts.stored_columns.iter().find_map(named) {
        return refuse(
            col,
            "an expression stored in the catalog (CHECK, generated column, EXCLUDE ... WHERE, \
             index or statistics expression: it would run on ciphertext and store its literals \
             in plaintext)",
        );
    }
    if let Some(col) = facts.partition_keys.iter().find_map(named) {
        return refuse(col, "a partition key (bounds would be plaintext)");
    }
    if facts.partition_strings && !encrypted.is_empty() {
        return Err(Refusal::general(
            "a partition bound with string constants on a table with encrypted columns (pgveil \
             does not know the partition key, and a bound on an encrypted key would be stored \
             in plaintext)",
            "unsupported",
        ));
    }
    Ok(())
}

/// Whether a sqlparser token is a constant (any form of string, a number).
fn is_constant_token(t: &Token) -> bool {
    matches!(
        t,
        Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
    )
}

/// Checks that sqlparser reads an analysed statement as PostgreSQL does:
/// the same constants and parameters at the same bytes, and every watched
/// relation PostgreSQL sees also seen by sqlparser.
fn agree(
    source: &Source<'_>,
    stmt: &Statement,
    facts: &Facts,
    watched: &Watched,
    range: Range<usize>,
) -> R<()> {
    let inside = source
        .tokens
        .iter()
        .filter(|(_, r)| r.start >= range.start && r.end <= range.end);
    let mut literals = Vec::new();
    let mut params = Vec::new();
    for (t, r) in inside {
        if matches!(t, Token::Placeholder(_)) {
            params.push(r.clone());
        } else if is_constant_token(t) {
            literals.push(r.clone());
        }
    }
    if literals != facts.literals {
        return Err(disagreement("where its constants are"));
    }
    if params != facts.params {
        return Err(disagreement("where its parameters are"));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut see = |r: &ObjectName| {
        if let Some(last) = name_parts(r).last() {
            seen.insert(last.clone());
        }
    };
    let _ = sqlparser::ast::visit_relations(stmt, |r| {
        see(r);
        std::ops::ControlFlow::<()>::Continue(())
    });
    match stmt {
        Statement::Copy {
            source: CopySource::Table { table_name, .. },
            ..
        } => see(table_name),
        Statement::CreateTable(ct) => {
            for parent in ct.inherits.iter().flatten() {
                see(parent);
            }
        }
        _ => {}
    }
    if !matches!(
        stmt,
        Statement::Query(_)
            | Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Copy { .. }
    ) {
        // DDL and utility statements: sqlparser's tree does not mark every
        // relation (`REFERENCES t`, `LIKE t`), so a name it rendered back as
        // part of the statement counts as seen. Text it never parsed (the
        // danger) is not rendered.
        let rendered = stmt.to_string();
        for r in &facts.relations {
            if referee::scan_names(&rendered, |w| w == r.name).is_some_and(|s| s.hit) {
                seen.insert(r.name.clone());
            }
        }
    }
    if let Some(missed) = facts
        .relations
        .iter()
        .find(|r| watched.names.contains(&r.name) && !seen.contains(&r.name))
    {
        return Err(disagreement(&format!("whether it names {}", missed.name)));
    }
    Ok(())
}

fn is_ddl(stmt: &Statement) -> bool {
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

fn sets_search_path(stmt: &Statement) -> bool {
    let s = stmt.to_string().to_lowercase();
    s.starts_with("set") && s.contains("search_path")
}

impl<'c, 'a> Ctx<'c, 'a> {
    /// Analyses a statement; returns its output columns when it has a
    /// result whose positions are known.
    fn statement(&mut self, stmt: &Statement) -> R<Option<Vec<Out>>> {
        match stmt {
            Statement::Query(q) => {
                let outs = self.query(q, None)?;
                Ok(outs)
            }
            Statement::Insert(ins) => self.insert(ins, None),
            Statement::Update(u) => {
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
                    let targets: Vec<&ObjectName> = match &a.target {
                        AssignmentTarget::ColumnName(n) => vec![n],
                        AssignmentTarget::Tuple(ns) => ns.iter().collect(),
                    };
                    if targets.len() != 1 {
                        if targets
                            .iter()
                            .any(|n| self.target_column(&scope, n).is_some())
                        {
                            return Err(Refusal::general(
                                "multi-column assignment to an encrypted column",
                                "unsupported",
                            ));
                        }
                        // The sources may still carry ciphertext into the
                        // plain targets: check each source against none.
                        let sources: Vec<Class> = match &a.value {
                            Expr::Subquery(q) => match self.query(q, Some(&scope))? {
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
                                    v.push(self.expr(e, &scope)?);
                                }
                                v
                            }
                            other => vec![self.expr(other, &scope)?],
                        };
                        for class in sources {
                            self.assign(None, class)?;
                        }
                        continue;
                    }
                    if is_default(&a.value) {
                        continue;
                    }
                    let target = self.target_column(&scope, targets[0]);
                    let value = self.expr(&a.value, &scope)?;
                    self.assign(target.as_ref(), value)?;
                }
                if let Some(w) = &u.selection {
                    self.predicate(w, &scope)?;
                }
                match &u.returning {
                    Some(items) => Ok(Some(self.projection(items, &scope, &[])?)),
                    None => Ok(None),
                }
            }
            Statement::Delete(d) => {
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
            Statement::Explain { statement, .. } => self.statement(statement),
            Statement::Prepare {
                name,
                data_types,
                statement,
            } => {
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
            Statement::Execute {
                name: Some(name),
                parameters,
                using,
                ..
            } => {
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
            Statement::Declare { stmts, .. } => {
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        let outs = self.query(q, None)?;
                        refuse_origin_less(outs.as_deref(), "a cursor")?;
                    }
                }
                Ok(None)
            }
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
            Statement::CreateView(v) => {
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
            Statement::CreateIndex(ci) => {
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
            Statement::CreateTable(ct) => {
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
                }
                Ok(None)
            }
            Statement::AlterTable(at) => {
                if let RelSource::Catalog(rel) = self.relation(&at.name)? {
                    use sqlparser::ast::{AlterColumnOperation, AlterTableOperation, ColumnOption};
                    for op in &at.operations {
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
                            AlterTableOperation::RenameTable { .. } => {
                                rel.kind == RelationKind::Table
                            }
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
                            } => {
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
                                continue;
                            }
                            AlterTableOperation::AddConstraint { constraint, .. } => {
                                // Keys compare ciphertext for equality, which
                                // is right; an expression (CHECK) is not.
                                if matches!(
                                    constraint,
                                    sqlparser::ast::TableConstraint::Unique(_)
                                        | sqlparser::ast::TableConstraint::PrimaryKey(_)
                                        | sqlparser::ast::TableConstraint::ForeignKey(_)
                                ) {
                                    continue;
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
                                continue;
                            }
                            _ => continue,
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
                    }
                }
                Ok(None)
            }
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

    fn configured_column(&self, schema: &str, table: &str, column: &str) -> bool {
        self.watched
            .columns
            .iter()
            .any(|(s, t, c)| s == schema && t == table && c == column)
    }

    fn view_write_check(&self, scope: &Scope<'_, 'c>) -> R<()> {
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

    fn insert(&mut self, ins: &Insert, _parent: Option<&Scope<'_, 'c>>) -> R<Option<Vec<Out>>> {
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
        // Target columns, in order; None = unknown table (plain).
        let targets: Option<Vec<Option<Encrypted>>> = match &rel {
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
        };
        if let Some(t) = &targets {
            for col in t.iter().flatten() {
                self.check_storage(col)?;
            }
        }
        if let Some(src) = &ins.source {
            self.insert_source(src, targets.as_deref())?;
        }
        if let Some(OnInsert::OnConflict(oc)) = &ins.on {
            if let Some(ConflictTarget::Columns {
                predicate: Some(pred),
                ..
            }) = &oc.conflict_target
            {
                self.predicate(pred, &scope)?;
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
        } else if let Some(OnInsert::DuplicateKeyUpdate(_)) = &ins.on {
            return Err(Refusal::general("ON DUPLICATE KEY", "unsupported"));
        }
        match &ins.returning {
            Some(items) => Ok(Some(self.projection(items, &scope, &[])?)),
            None => Ok(None),
        }
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
    fn assign(&mut self, target: Option<&Encrypted>, value: Class) -> R<()> {
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

    /// `COPY`: which fields of its rows hold encrypted columns, and how its
    /// rows are written. Only STDIN and STDOUT carry data through pgveil;
    /// a server-side file or program would hold plaintext or ciphertext
    /// that pgveil never sees.
    fn copy(
        &mut self,
        source: &CopySource,
        to: bool,
        target: &CopyTarget,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
        inline: bool,
    ) -> R<()> {
        let refuse = |what: String| Refusal::general(what, "copy");
        let columns: Vec<(String, Option<Encrypted>)> = match source {
            CopySource::Table {
                table_name,
                columns,
            } => {
                let rel = match self.relation(table_name)? {
                    RelSource::Catalog(r) if r.kind == RelationKind::Table => r,
                    RelSource::Catalog(r) => {
                        return Err(refuse(format!(
                            "COPY of view {}.{} over encrypted columns (use COPY (SELECT ...) TO STDOUT)",
                            r.schema, r.name
                        )));
                    }
                    _ => {
                        if self.watched.mentioned_in(&table_name.to_string()) {
                            return Err(refuse(format!(
                                "COPY of {table_name}, which pgveil cannot resolve"
                            )));
                        }
                        return Ok(());
                    }
                };
                if columns.is_empty() {
                    rel.columns
                        .iter()
                        .filter(|c| !c.generated)
                        .map(|c| (c.name.clone(), c.encrypted.clone()))
                        .collect()
                } else {
                    let mut out = Vec::with_capacity(columns.len());
                    for ident in columns {
                        let name = norm(ident);
                        let Some(c) = rel.columns.iter().find(|c| c.name == name) else {
                            return Err(refuse(format!(
                                "COPY names column {name}, which {}.{} does not have",
                                rel.schema, rel.name
                            )));
                        };
                        out.push((c.name.clone(), c.encrypted.clone()));
                    }
                    out
                }
            }
            CopySource::Query(q) => {
                if !to {
                    return Err(refuse("COPY FROM a query".into()));
                }
                match self.query(q, None)? {
                    Some(outs) => outs
                        .into_iter()
                        .map(|o| {
                            let enc = match o.class {
                                Class::Enc { col, .. } => Some(col),
                                _ => None,
                            };
                            (o.name, enc)
                        })
                        .collect(),
                    None => {
                        return Err(refuse(
                            "COPY (query) TO whose columns pgveil cannot line up".into(),
                        ));
                    }
                }
            }
        };
        if columns.iter().all(|(_, e)| e.is_none()) {
            return Ok(());
        }
        for e in columns.iter().filter_map(|(_, e)| e.as_ref()) {
            self.check_storage(e)?;
        }
        if inline {
            return Err(refuse("COPY data inline in the statement text".into()));
        }
        match (to, target) {
            (false, CopyTarget::Stdin) | (true, CopyTarget::Stdout) => {}
            _ => {
                return Err(refuse(format!(
                    "COPY {} a server file or program on encrypted columns (the data would not pass through pgveil; use {} through pgveil)",
                    if to { "TO" } else { "FROM" },
                    if to { "TO STDOUT" } else { "FROM STDIN" }
                )));
            }
        }
        let opts = copy_options(options, legacy, &columns)?;
        self.copy = Some(std::sync::Arc::new(CopyPlan {
            to,
            options: opts,
            columns,
        }));
        Ok(())
    }

    /// Binds parameters to an encrypted column (as arrays of its values
    /// for `= ANY`), rewriting the casts written on them to the storage type.
    fn bind_params(
        &mut self,
        ns: &[usize],
        casts: &[CastSite],
        col: &Encrypted,
        array: bool,
        forms: Forms,
    ) -> R<()> {
        self.check_storage(col)?;
        // Several stored forms: the database receives them all as an array
        // and the text around a scalar parameter is rewritten to match any.
        let expand = col.forms > 1 && forms != Forms::One;
        if expand && !array {
            let single = match ns {
                [n] => {
                    self.placeholders.get(n).map_or(0, Vec::len) == 1
                        && casts.len() <= 1
                        && !self.derived_params.contains(n)
                }
                _ => false,
            };
            if !single {
                return Err(refuse_col(
                    col,
                    format!(
                        "a parameter written more than once, or meeting several columns, while \
                         the column holds each value in {} stored forms (a migration or key \
                         rotation is in progress)",
                        col.forms
                    ),
                    "migrating",
                ));
            }
        }
        for &n in ns {
            match self.params.get(&n) {
                Some(prev)
                    if prev.column.domain != col.domain
                        || prev.column.value_type != col.value_type
                        || prev.column.storage != col.storage
                        || prev.array != array
                        || prev.expand != expand =>
                {
                    return Err(refuse_col(
                        col,
                        format!("parameter ${n} used for two key domains or types"),
                        "mixed_domains",
                    ));
                }
                Some(_) => {}
                None => {
                    self.params.insert(
                        n,
                        ParamBinding {
                            column: col.clone(),
                            array,
                            expand,
                        },
                    );
                }
            }
        }
        let storage = match col.storage {
            StorageState::Bytea => "bytea",
            _ => "text",
        };
        for c in casts {
            let to = c.to.trim();
            let (elem, is_array) = match to.strip_suffix("[]") {
                Some(e) => (e.trim(), true),
                None => (to, false),
            };
            let elem = match elem.split_once('(') {
                // A length on a text type (`varchar(255)`) would truncate
                // ciphertext; the cast is rewritten, so it cannot.
                Some((base, _))
                    if matches!(col.value_type, ValueType::Text | ValueType::Varchar) =>
                {
                    base.trim()
                }
                _ => elem,
            };
            if is_array != array || !cast_fits(elem, col.value_type) {
                return Err(refuse_col(
                    col,
                    format!("a parameter cast to {}", c.to),
                    "function",
                ));
            }
            let base = self.source.text.get(c.base.clone()).ok_or_else(|| {
                Refusal::general("a cast parameter pgveil cannot locate", "unparsed")
            })?;
            let suffix = if array || expand { "[]" } else { "" };
            let mut text = format!("CAST(({base}) AS {storage}{suffix})");
            if expand && !array {
                text = wrap_forms(forms, &text, col.forms);
            }
            if let Some(prev) = self.replacements.iter().find(|(r, _)| *r == c.range) {
                if prev.1 != text {
                    return Err(refuse_col(
                        col,
                        "one cast parameter flowing into two storage types",
                        "mixed_domains",
                    ));
                }
                continue;
            }
            self.replacements.push((c.range.clone(), text));
        }
        if let ([n], true, true, true) = (ns, expand, !array, casts.is_empty())
            && let Some(range) = self.placeholders.get(n).and_then(|r| r.first())
        {
            let text = wrap_forms(forms, &format!("${n}"), col.forms);
            self.replacements.push((range.clone(), text));
        }
        Ok(())
    }

    fn encrypt_literal(&mut self, lit: &Lit, col: &Encrypted, forms: Forms) -> R<()> {
        self.check_storage(col)?;
        if lit.number && matches!(col.value_type, ValueType::Text | ValueType::Varchar) {
            return Err(refuse_col(
                col,
                "a numeric literal (PostgreSQL compares text only with text)",
                "plaintext_comparison",
            ));
        }
        if let Some(cast) = &lit.cast
            && !cast_fits(cast, col.value_type)
        {
            return Err(refuse_col(
                col,
                format!("a value cast to {cast}"),
                "function",
            ));
        }
        if let Some(prev) = self.edits.iter().find(|e| e.range == lit.range) {
            if prev.column.domain != col.domain {
                return Err(refuse_col(
                    col,
                    "one literal flowing into two key domains",
                    "mixed_domains",
                ));
            }
            return Ok(());
        }
        self.edits.push(Edit {
            range: lit.range.clone(),
            column: col.clone(),
            text: lit.text.clone(),
            forms,
        });
        Ok(())
    }

    fn check_storage(&self, col: &Encrypted) -> R<()> {
        if let StorageState::Unsupported(t) = &col.storage {
            return Err(Refusal::on_column(
                &col.id.to_string(),
                format!("storing ciphertext in type {t}"),
                "storage",
            ));
        }
        Ok(())
    }

    fn target_column(&self, scope: &Scope<'_, 'c>, n: &ObjectName) -> Option<Encrypted> {
        let parts = name_parts(n);
        let col = parts.last()?;
        scope.rels.first().and_then(|r| match &r.source {
            RelSource::Catalog(rel) => rel.column(col).and_then(|c| c.encrypted.clone()),
            _ => None,
        })
    }

    /// Resolves a table name to what pgveil knows of it.
    fn relation(&mut self, name: &ObjectName) -> R<RelSource<'c>> {
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

    fn table_with_joins(
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
            let constraint = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c) => c,
                other => {
                    return Err(Refusal::general(
                        format!("join kind {other:?}")
                            .chars()
                            .take(40)
                            .collect::<String>(),
                        "unsupported",
                    ));
                }
            };
            match constraint {
                JoinConstraint::On(e) => {
                    let scope = Scope {
                        rels: rels.clone(),
                        parent,
                    };
                    self.predicate(e, &scope)?;
                }
                JoinConstraint::Using(cols) => {
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
                }
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
        }
        Ok(())
    }

    fn table_factor(
        &mut self,
        f: &TableFactor,
        rels: &mut Vec<Rel<'c>>,
        parent: Option<&Scope<'_, 'c>>,
    ) -> R<()> {
        match f {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                let source = if args.is_some() {
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
                let source = apply_alias_columns(source, alias.as_ref().map(|a| &a.columns[..]));
                rels.push(Rel {
                    name: alias
                        .as_ref()
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
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                let outs = if *lateral {
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
                let source = apply_alias_columns(source, alias.as_ref().map(|a| &a.columns[..]));
                rels.push(Rel {
                    name: alias.as_ref().map(|a| norm(&a.name)).unwrap_or_default(),
                    schema: None,
                    source,
                });
                Ok(())
            }
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

    /// Analyses a query; returns its output columns, or `None` when their
    /// positions cannot be known (a `*` over a table pgveil knows nothing of).
    fn query(&mut self, q: &Query, parent: Option<&Scope<'_, 'c>>) -> R<Option<Vec<Out>>> {
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

    fn set_expr(
        &mut self,
        body: &SetExpr,
        parent: Option<&Scope<'_, 'c>>,
        order: &[&Expr],
    ) -> R<Option<Vec<Out>>> {
        match body {
            SetExpr::Select(s) => {
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
                match &s.group_by {
                    GroupByExpr::Expressions(exprs, _) => {
                        for e in exprs {
                            // Grouping compares for equality: fine on ciphertext.
                            if let Some(o) = positional(e, &outs) {
                                let _ = o;
                                continue;
                            }
                            if let Some(o) = alias_ref(e, &outs) {
                                let _ = o;
                                continue;
                            }
                            self.expr(e, &scope)?;
                        }
                    }
                    GroupByExpr::All(_) => {}
                }
                if let Some(h) = &s.having {
                    self.predicate(h, &scope)?;
                }
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
                    if outs.iter().any(|o| o.name == "*")
                        && self.watched.mentioned_in(&s.to_string())
                    {
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
            SetExpr::Query(q) => self.query(q, parent),
            SetExpr::SetOperation { left, right, .. } => {
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
            SetExpr::Values(values) => {
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

    fn projection(
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
                SelectItem::Wildcard(_) => {
                    let joins: Vec<&UsingJoin> = self
                        .using_joins
                        .iter()
                        .filter(|j| scope.rels.iter().any(|r| r.name == j.right))
                        .collect();
                    if joins.is_empty() {
                        for rel in &scope.rels {
                            wildcard(rel, &mut outs)?;
                        }
                    } else {
                        outs.extend(using::star(&scope.rels, &joins)?);
                    }
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let SelectItemQualifiedWildcardKind::ObjectName(n) = kind else {
                        return Err(Refusal::general(
                            "a wildcard on an expression",
                            "unsupported",
                        ));
                    };
                    let parts = name_parts(n);
                    let Some(q) = parts.last() else {
                        continue;
                    };
                    match scope.rels.iter().find(|r| r.name == *q) {
                        Some(rel) => wildcard(rel, &mut outs)?,
                        None => outs.push(Out {
                            name: "*".into(),
                            class: Class::Plain,
                        }),
                    }
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
    fn predicate(&mut self, e: &Expr, scope: &Scope<'_, 'c>) -> R<()> {
        match self.expr(e, scope)? {
            Class::Enc { col, .. } => Err(refuse_col(
                &col,
                "using the value as a condition",
                "function",
            )),
            _ => Ok(()),
        }
    }

    fn lookup(
        &mut self,
        scope: &Scope<'_, 'c>,
        qualifier: Option<&[String]>,
        col: &str,
    ) -> R<Option<Class>> {
        let mut level = Some(scope);
        let mut unknown_nearer = false;
        while let Some(s) = level {
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
            let named = s
                .rels
                .iter()
                .filter(|r| qualifier.and_then(|q| q.last()) == Some(&r.name));
            let mut named = named.peekable();
            if qualifier.is_some() && named.peek().is_some() {
                // The relation is there but has no column of that name as
                // pgveil names its outputs: where it also has encrypted
                // outputs, pgveil may have named one differently from
                // PostgreSQL, so it does not guess.
                if named.any(|r| match &r.source {
                    RelSource::Derived(outs) => {
                        outs.iter().any(|o| matches!(o.class, Class::Enc { .. }))
                    }
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
            level = s.parent;
        }
        Ok(None)
    }

    fn column_ref(&mut self, parts: &[Ident], scope: &Scope<'_, 'c>) -> R<Class> {
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

    /// Refuses a whole-row reference to a relation holding ciphertext.
    fn whole_row(&self, scope: &Scope<'_, 'c>, name: &str) -> R<()> {
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

    /// Equality-like comparison of two classes.
    /// Records that a value is used as plaintext (compared, ordered or
    /// transformed without an encrypted column): a literal or parameter
    /// that is also encrypted for an encrypted column is then refused
    /// (one role per value).
    fn mark_plain(&mut self, class: &Class) {
        match class {
            Class::Lits(ls) => self.plain_uses.extend(ls.iter().map(|l| l.range.clone())),
            Class::Params(ns, _) => self.plain_params.extend(ns.iter().copied()),
            _ => {}
        }
    }

    /// An expression whose value is used as plaintext.
    fn plain_expr(&mut self, e: &Expr, scope: &Scope<'_, 'c>) -> R<Class> {
        let class = self.expr(e, scope)?;
        self.mark_plain(&class);
        Ok(class)
    }

    fn compare(&mut self, l: Class, r: Class, op: &str) -> R<()> {
        // Which side the column is on decides how several stored forms of a
        // value can be matched (`col = ANY(forms)` exists, `forms = col`
        // does not).
        let enc_left = matches!(l, Class::Enc { .. });
        if !enc_left && !matches!(r, Class::Enc { .. }) {
            // Neither side is encrypted: values on both are used as plaintext.
            self.mark_plain(&l);
            self.mark_plain(&r);
            return Ok(());
        }
        match (l, r) {
            (Class::Enc { col: a, direct: da }, Class::Enc { col: b, direct: db }) => {
                if a.domain != b.domain || a.storage != b.storage {
                    return Err(refuse_col(
                        &a,
                        format!("comparing with {} (another key domain)", b.id),
                        "mixed_domains",
                    ));
                }
                // A column against values derived from literals or another
                // query (not a plain column reference): those values carry
                // one form only, so rows stored in another form would be
                // missed. Column against column (joins) is the documented
                // degradation of the migration window.
                if (a.forms > 1 || b.forms > 1) && !(da && db) {
                    let col = if a.forms > 1 { &a } else { &b };
                    return Err(several_forms(col, op));
                }
                Ok(())
            }
            (Class::Enc { col, .. }, Class::Lits(ls))
            | (Class::Lits(ls), Class::Enc { col, .. }) => {
                if ls.iter().any(|l| l.via_column) {
                    // The same value may also be used as plaintext elsewhere
                    // (selected, compared): it cannot be both.
                    return Err(refuse_col(
                        &col,
                        format!("`{op}` with a value from a VALUES list, CTE or subquery column"),
                        "plaintext_comparison",
                    ));
                }
                let forms = match_forms(&col, op, enc_left)?;
                if forms != Forms::One && self.in_ddl {
                    // The forms would be stored in the catalog and outlive
                    // the window.
                    return Err(several_forms(
                        &col,
                        "a comparison stored in a view or index",
                    ));
                }
                for l in &ls {
                    self.encrypt_literal(l, &col, forms)?;
                }
                Ok(())
            }
            (Class::Enc { .. }, Class::Null) | (Class::Null, Class::Enc { .. }) => Ok(()),
            (Class::Enc { col, .. }, Class::Params(ns, casts))
            | (Class::Params(ns, casts), Class::Enc { col, .. }) => {
                let forms = match_forms(&col, op, enc_left)?;
                if forms != Forms::One && self.in_ddl {
                    return Err(several_forms(
                        &col,
                        "a comparison stored in a view or index",
                    ));
                }
                self.bind_params(&ns, &casts, &col, false, forms)
            }
            (Class::Params(ns, _), _) | (_, Class::Params(ns, _)) => {
                // Compared with something that is not encrypted: if the
                // same parameter is also bound to an encrypted column, the
                // statement is refused (it cannot be both).
                self.plain_params.extend(ns);
                Ok(())
            }
            (Class::Enc { col, .. }, Class::Plain) | (Class::Plain, Class::Enc { col, .. }) => {
                Err(refuse_col(
                    &col,
                    format!("`{op}` with a plaintext expression"),
                    "plaintext_comparison",
                ))
            }
            _ => Ok(()),
        }
    }

    fn literal(&self, e: &Expr) -> Option<R<Lit>> {
        let text = literal_text(e)?;
        let cast = literal_cast(e);
        Some(match self.extent(e) {
            Some((a, b)) => match self.source.range(a, b) {
                Some(range) => Ok(Lit {
                    range,
                    text,
                    number: cast.is_none() && is_number_literal(e),
                    cast,
                    via_column: false,
                }),
                None => Err(Refusal::general(
                    "a literal pgveil cannot locate",
                    "unparsed",
                )),
            },
            None => Err(Refusal::general(
                "a literal pgveil cannot locate",
                "unparsed",
            )),
        })
    }

    /// First and last token of a literal expression, casts included.
    fn extent(&self, e: &Expr) -> Option<(usize, usize)> {
        let src = self.source;
        match e {
            Expr::Value(v) => {
                let i = src.token_at(v.span.start)?;
                Some((i, i))
            }
            Expr::Identifier(i) => {
                let t = src.token_at(i.span.start)?;
                matches!(src.token(t)?, Token::Word(_)).then_some((t, t))
            }
            Expr::CompoundIdentifier(parts) => {
                let a = src.token_at(parts.first()?.span.start)?;
                let b = src.token_at(parts.last()?.span.start)?;
                (b >= a && b - a == 2 * (parts.len() - 1)).then_some((a, b))
            }
            Expr::Nested(inner) => {
                let (a, b) = self.extent(inner)?;
                let (pa, nb) = (a.checked_sub(1)?, b + 1);
                (matches!(src.token(pa)?, Token::LParen) && matches!(src.token(nb)?, Token::RParen))
                    .then_some((pa, nb))
            }
            Expr::UnaryOp { op, expr } => {
                let (a, b) = self.extent(expr)?;
                let pa = a.checked_sub(1)?;
                let ok = match op {
                    UnaryOperator::Minus => matches!(src.token(pa)?, Token::Minus),
                    UnaryOperator::Plus => matches!(src.token(pa)?, Token::Plus),
                    _ => false,
                };
                ok.then_some((pa, b))
            }
            Expr::Cast {
                kind,
                expr,
                data_type,
                format: None,
            } => {
                let (a, b) = self.extent(expr)?;
                let ty = snippet_tokens(&data_type.to_string())?;
                match kind {
                    CastKind::DoubleColon => {
                        if !matches!(src.token(b + 1)?, Token::DoubleColon) {
                            return None;
                        }
                        for (k, t) in ty.iter().enumerate() {
                            if !same_token(src.token(b + 2 + k)?, t) {
                                return None;
                            }
                        }
                        Some((a, b + 1 + ty.len()))
                    }
                    CastKind::Cast => {
                        let pa = a.checked_sub(2)?;
                        let is_cast = matches!(src.token(pa)?, Token::Word(w) if w.value.eq_ignore_ascii_case("cast"));
                        if !is_cast || !matches!(src.token(pa + 1)?, Token::LParen) {
                            return None;
                        }
                        if !matches!(src.token(b + 1)?, Token::Word(w) if w.value.eq_ignore_ascii_case("as"))
                        {
                            return None;
                        }
                        for (k, t) in ty.iter().enumerate() {
                            if !same_token(src.token(b + 2 + k)?, t) {
                                return None;
                            }
                        }
                        let close = b + 2 + ty.len();
                        matches!(src.token(close)?, Token::RParen).then_some((pa, close))
                    }
                    _ => None,
                }
            }
            Expr::TypedString(ts) => {
                let i = src.token_at(ts.value.span.start)?;
                let ty = snippet_tokens(&ts.data_type.to_string())?;
                let start = i.checked_sub(ty.len())?;
                for (k, t) in ty.iter().enumerate() {
                    if !same_token(src.token(start + k)?, t) {
                        return None;
                    }
                }
                Some((start, i))
            }
            _ => None,
        }
    }

    fn expr(&mut self, e: &Expr, scope: &Scope<'_, 'c>) -> R<Class> {
        if let Expr::Value(v) = e {
            match &v.value {
                Value::Null => return Ok(Class::Null),
                Value::Placeholder(p) => {
                    let n = p
                        .strip_prefix('$')
                        .and_then(|d| d.parse::<usize>().ok())
                        // PostgreSQL allows at most 65535 parameters.
                        .filter(|n| (1..=65_535).contains(n))
                        .ok_or_else(|| {
                            Refusal::general("a parameter pgveil cannot read", "unparsed")
                        })?;
                    if let Some(range) = self.extent(e).and_then(|(a, b)| self.source.range(a, b)) {
                        self.placeholders.entry(n).or_default().push(range);
                    }
                    return Ok(Class::Params(vec![n], Vec::new()));
                }
                _ => {}
            }
        }
        if let Some(lit) = self.literal(e) {
            return Ok(Class::Lits(vec![lit?]));
        }
        match e {
            Expr::Identifier(i) => self.column_ref(std::slice::from_ref(i), scope),
            Expr::CompoundIdentifier(parts) => self.column_ref(parts, scope),
            Expr::Nested(inner) => self.expr(inner, scope),
            Expr::Value(_) => Ok(Class::Plain),
            Expr::BinaryOp { left, op, right } => {
                let l = self.expr(left, scope)?;
                let r = self.expr(right, scope)?;
                match op {
                    BinaryOperator::Eq | BinaryOperator::NotEq => {
                        self.compare(l, r, &op.to_string())?;
                        Ok(Class::Plain)
                    }
                    BinaryOperator::And | BinaryOperator::Or => {
                        self.mark_plain(&l);
                        self.mark_plain(&r);
                        for c in [l, r] {
                            if let Class::Enc { col, .. } = c {
                                return Err(refuse_col(&col, format!("`{op}`"), "function"));
                            }
                        }
                        Ok(Class::Plain)
                    }
                    other => {
                        let reason = match other {
                            BinaryOperator::Lt
                            | BinaryOperator::Gt
                            | BinaryOperator::LtEq
                            | BinaryOperator::GtEq => "order",
                            BinaryOperator::PGRegexMatch
                            | BinaryOperator::PGRegexIMatch
                            | BinaryOperator::PGRegexNotMatch
                            | BinaryOperator::PGRegexNotIMatch
                            | BinaryOperator::PGLikeMatch
                            | BinaryOperator::PGILikeMatch
                            | BinaryOperator::PGNotLikeMatch
                            | BinaryOperator::PGNotILikeMatch => "pattern",
                            _ => "function",
                        };
                        self.mark_plain(&l);
                        self.mark_plain(&r);
                        for c in [l, r] {
                            if let Class::Enc { col, .. } = c {
                                return Err(refuse_col(
                                    &col,
                                    format!("operator `{other}`"),
                                    reason,
                                ));
                            }
                        }
                        Ok(Class::Plain)
                    }
                }
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                self.expr(inner, scope)?;
                Ok(Class::Plain)
            }
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                let l = self.expr(a, scope)?;
                let r = self.expr(b, scope)?;
                self.compare(l, r, "IS DISTINCT FROM")?;
                Ok(Class::Plain)
            }
            Expr::In {
                expr,
                target: InTarget::List(list),
                ..
            } => {
                let l = self.expr(expr, scope)?;
                for item in list {
                    let r = self.expr(item, scope)?;
                    if matches!(l, Class::Enc { .. }) || matches!(r, Class::Enc { .. }) {
                        self.compare(l.clone(), r, "IN")?;
                    }
                }
                Ok(Class::Plain)
            }
            Expr::In {
                expr,
                target: InTarget::Subquery(subquery),
                ..
            } => {
                let l = self.expr(expr, scope)?;
                let outs = self.query(subquery, Some(scope))?;
                match outs.and_then(|o| o.into_iter().next()) {
                    // Not "IN": a literal in the subquery's select list has
                    // room for one stored form only.
                    Some(o) => self.compare(l, o.class, "IN (subquery)")?,
                    None => {
                        if let Class::Enc { col, .. } = l {
                            return Err(refuse_col(
                                &col,
                                "IN with a subquery pgveil cannot analyse",
                                "unsupported",
                            ));
                        }
                    }
                }
                Ok(Class::Plain)
            }
            Expr::AnyOp {
                left,
                compare_op,
                right,
                ..
            }
            | Expr::AllOp {
                left,
                compare_op,
                right,
            } => {
                let l = self.expr(left, scope)?;
                let elems: Vec<&Expr> = match right.as_ref() {
                    Expr::Array(a) => a.elem.iter().collect(),
                    Expr::Nested(n) => match n.as_ref() {
                        Expr::Array(a) => a.elem.iter().collect(),
                        other => vec![other],
                    },
                    other => vec![other],
                };
                let eq = matches!(compare_op, BinaryOperator::Eq | BinaryOperator::NotEq);
                // `= ANY` and `<> ALL` hold for a list of every stored form
                // of each element; `= ALL` and `<> ANY` do not.
                let label = match (matches!(e, Expr::AnyOp { .. }), compare_op) {
                    (true, BinaryOperator::Eq) => "= ANY",
                    (false, BinaryOperator::NotEq) => "<> ALL",
                    (true, _) => "<> ANY",
                    (false, _) => "= ALL",
                };
                for el in elems {
                    if let (true, Expr::Subquery(q)) = (eq, el) {
                        let outs = self.query(q, Some(scope))?;
                        match outs.and_then(|o| o.into_iter().next()) {
                            Some(o) => {
                                self.compare(l.clone(), o.class, &format!("{label} (subquery)"))?
                            }
                            None => {
                                if let Class::Enc { col, .. } = &l {
                                    return Err(refuse_col(
                                        col,
                                        "ANY with a subquery pgveil cannot analyse",
                                        "unsupported",
                                    ));
                                }
                            }
                        }
                        continue;
                    }
                    let r = self.expr(el, scope)?;
                    if !eq {
                        for c in [&l, &r] {
                            if let Class::Enc { col, .. } = c {
                                return Err(refuse_col(
                                    col,
                                    format!("`{compare_op}` ANY/ALL"),
                                    "order",
                                ));
                            }
                        }
                        continue;
                    }
                    let array_constructor = match right.as_ref() {
                        Expr::Array(_) => true,
                        Expr::Nested(n) => matches!(n.as_ref(), Expr::Array(_)),
                        _ => false,
                    };
                    if let (Class::Enc { col, .. }, Class::Params(ns, casts), false) =
                        (&l, &r, array_constructor)
                    {
                        // `col = ANY($1)`: an array parameter, encrypted
                        // element by element.
                        let forms = match_forms(col, label, true)?;
                        self.bind_params(ns, casts, col, true, forms)?;
                        continue;
                    }
                    if let (Class::Enc { col, .. }, false) = (&l, array_constructor) {
                        return Err(refuse_col(
                            col,
                            "= ANY over an array value pgveil cannot see into (use ARRAY[...] or IN (...))",
                            "unsupported",
                        ));
                    }
                    if matches!(l, Class::Enc { .. })
                        && !matches!(el, Expr::Array(_))
                        && !matches!(r, Class::Lits(_) | Class::Null | Class::Enc { .. })
                    {
                        return Err(Refusal::general(
                            "= ANY over an array pgveil cannot see into",
                            "unsupported",
                        ));
                    }
                    self.compare(l.clone(), r, label)?;
                }
                Ok(Class::Plain)
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                for x in [expr, low, high] {
                    let class = self.expr(x, scope)?;
                    self.mark_plain(&class);
                    if let Class::Enc { col, .. } = class {
                        return Err(refuse_col(&col, "BETWEEN", "order"));
                    }
                }
                Ok(Class::Plain)
            }
            Expr::Like { expr, pattern, .. }
            | Expr::ILike { expr, pattern, .. }
            | Expr::SimilarTo { expr, pattern, .. }
            | Expr::RLike { expr, pattern, .. } => {
                for x in [expr, pattern] {
                    let class = self.expr(x, scope)?;
                    self.mark_plain(&class);
                    if let Class::Enc { col, .. } = class {
                        return Err(refuse_col(
                            &col,
                            "pattern matching (LIKE, ILIKE, SIMILAR TO, regex)",
                            "pattern",
                        ));
                    }
                }
                Ok(Class::Plain)
            }
            Expr::Cast {
                expr, data_type, ..
            } => match self.expr(expr, scope)? {
                Class::Enc { col, .. } => Err(refuse_col(
                    &col,
                    format!("a cast to {data_type}"),
                    "function",
                )),
                Class::Params(ns, casts) => {
                    let Some(range) = self.extent(e).and_then(|(a, b)| self.source.range(a, b))
                    else {
                        return Err(Refusal::general(
                            "a cast parameter pgveil cannot locate",
                            "unparsed",
                        ));
                    };
                    let to = data_type.to_string().to_lowercase();
                    let Some(inner) = self.extent(expr).and_then(|(a, b)| self.source.range(a, b))
                    else {
                        return Err(Refusal::general(
                            "a cast parameter pgveil cannot locate",
                            "unparsed",
                        ));
                    };
                    // A cast of a cast (`($1::text)::varchar`) is rewritten
                    // as one, around the innermost expression; casts written
                    // elsewhere (inside a VALUES list feeding this column)
                    // stay as they are, and this one is added.
                    let mut nested = false;
                    let mut sites: Vec<CastSite> = Vec::with_capacity(casts.len() + 1);
                    for c in casts {
                        if c.range.start >= inner.start && c.range.end <= inner.end {
                            nested = true;
                            sites.push(CastSite {
                                range: range.clone(),
                                base: c.base,
                                to: to.clone(),
                            });
                        } else {
                            sites.push(c);
                        }
                    }
                    if !nested {
                        sites.push(CastSite {
                            range,
                            base: inner,
                            to,
                        });
                    }
                    let casts = sites;
                    Ok(Class::Params(ns, casts))
                }
                other => {
                    self.mark_plain(&other);
                    Ok(Class::Plain)
                }
            },
            Expr::UnaryOp { op, expr } => match self.plain_expr(expr, scope)? {
                Class::Enc { col, .. } => {
                    Err(refuse_col(&col, format!("operator `{op}`"), "function"))
                }
                _ => Ok(Class::Plain),
            },
            Expr::Function(f) => {
                let name = f.name.to_string().to_lowercase();
                let bare = name.rsplit('.').next().unwrap_or(&name).to_string();
                let args: Vec<&Expr> = match &f.args {
                    FunctionArguments::List(list) => list
                        .args
                        .iter()
                        .filter_map(|a| match a {
                            FunctionArg::Unnamed(FunctionArgExpr::Expr(e))
                            | FunctionArg::Named {
                                arg: FunctionArgExpr::Expr(e),
                                ..
                            }
                            | FunctionArg::ExprNamed {
                                arg: FunctionArgExpr::Expr(e),
                                ..
                            } => Some(e),
                            _ => None,
                        })
                        .collect(),
                    FunctionArguments::Subquery(q) => {
                        let outs = self.query(q, Some(scope))?;
                        let enc = outs.as_ref().and_then(|o| {
                            o.iter().find_map(|o| match &o.class {
                                Class::Enc { col, .. } => Some(col.clone()),
                                _ => None,
                            })
                        });
                        match (enc, outs) {
                            (Some(col), _) => {
                                return Err(refuse_col(
                                    &col,
                                    format!("{bare}(SELECT ...)"),
                                    "function",
                                ));
                            }
                            (None, None) if self.watched.mentioned_in(&q.to_string()) => {
                                return Err(Refusal::general(
                                    "a subquery argument pgveil cannot analyse",
                                    "unsupported",
                                ));
                            }
                            _ => {}
                        }
                        Vec::new()
                    }
                    FunctionArguments::None => Vec::new(),
                };
                if let FunctionArguments::List(list) = &f.args {
                    for a in &list.args {
                        let (FunctionArg::Unnamed(arg)
                        | FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }) = a;
                        if let FunctionArgExpr::QualifiedWildcard(n) = arg {
                            let parts = name_parts(n);
                            if let Some(last) = parts.last() {
                                self.whole_row(scope, last)?;
                            }
                        }
                    }
                }
                if let FunctionArguments::List(list) = &f.args
                    && !list.clauses.is_empty()
                    && self.watched.mentioned_in(&e.to_string())
                {
                    return Err(Refusal::general(
                        "aggregate clauses over encrypted data",
                        "unsupported",
                    ));
                }
                if (f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty())
                    && self.watched.mentioned_in(&e.to_string())
                {
                    return Err(Refusal::general(
                        "window or filtered aggregates over encrypted data",
                        "unsupported",
                    ));
                }
                for a in args {
                    let class = self.expr(a, scope)?;
                    if bare != "count" {
                        self.mark_plain(&class);
                    }
                    if let Class::Enc { col, .. } = class
                        && bare != "count"
                    {
                        return Err(refuse_col(&col, format!("function {bare}()"), "function"));
                    }
                }
                Ok(Class::Plain)
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let op_class = match operand {
                    Some(o) => Some(self.expr(o, scope)?),
                    None => None,
                };
                let mut results = Vec::new();
                for w in conditions {
                    let c = self.expr(&w.condition, scope)?;
                    match &op_class {
                        Some(oc) => self.compare(oc.clone(), c, "CASE WHEN")?,
                        None => {
                            self.mark_plain(&c);
                            if let Class::Enc { col, .. } = c {
                                return Err(refuse_col(
                                    &col,
                                    "using the value as a condition",
                                    "function",
                                ));
                            }
                        }
                    }
                    results.push(self.plain_expr(&w.result, scope)?);
                }
                if let Some(e) = else_result {
                    results.push(self.plain_expr(e, scope)?);
                }
                for r in results {
                    if let Class::Enc { col, .. } = r {
                        return Err(refuse_col(&col, "a CASE that returns it", "function"));
                    }
                }
                Ok(Class::Plain)
            }
            Expr::Subquery(q) => {
                let outs = self.query(q, Some(scope))?;
                match outs.and_then(|o| o.into_iter().next()) {
                    Some(Out {
                        class: Class::Enc { col, .. },
                        ..
                    }) => Ok(Class::Enc { col, direct: false }),
                    _ => Ok(Class::Plain),
                }
            }
            Expr::Exists { subquery, .. } => {
                self.query(subquery, Some(scope))?;
                Ok(Class::Plain)
            }
            Expr::Array(a) => {
                for el in &a.elem {
                    if let Class::Enc { col, .. } = self.plain_expr(el, scope)? {
                        return Err(refuse_col(&col, "an array of it", "function"));
                    }
                }
                Ok(Class::Plain)
            }
            other => {
                // Anything not modelled: acceptable only if it cannot
                // involve an encrypted column.
                if self.watched.mentioned_in(&other.to_string()) {
                    Err(Refusal::general(
                        "an expression pgveil cannot analyse involves an encrypted table or column",
                        "unparsed",
                    ))
                } else {
                    Ok(Class::Plain)
                }
            }
        }
    }
}

fn has_literals(sql: &str) -> bool {
    snippet_tokens(sql).is_none_or(|tokens| {
        tokens.iter().any(|t| {
            matches!(
                t,
                Token::Number(..)
                    | Token::SingleQuotedString(_)
                    | Token::DollarQuotedString(_)
                    | Token::EscapedStringLiteral(_)
                    | Token::UnicodeStringLiteral(_)
                    | Token::NationalStringLiteral(_)
                    | Token::HexStringLiteral(_)
                    | Token::SingleQuotedByteStringLiteral(_)
                    | Token::DoubleQuotedByteStringLiteral(_)
            )
        })
    })
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

fn is_number_literal(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => matches!(v.value, Value::Number(..)),
        Expr::UnaryOp { expr, .. } | Expr::Nested(expr) => is_number_literal(expr),
        _ => false,
    }
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

fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

/// The name PostgreSQL gives a select-list expression without an alias
/// (its `FigureColname`): a column's name through parentheses, casts and
/// `COLLATE`, a function's name, a scalar subquery's first column, or a
/// keyword for other forms; `?column?` when none applies.
fn expr_name(e: &Expr) -> String {
    figure_name(e).map_or_else(|| "?column?".into(), |(name, _)| name)
}

/// A name and whether it is strong (a column, function or subquery name)
/// rather than a cast's type name, which a stronger inner name overrides.
fn figure_name(e: &Expr) -> Option<(String, bool)> {
    let keyword = |k: &str| Some((k.to_string(), true));
    match e {
        Expr::Identifier(i) => Some((norm(i), true)),
        Expr::CompoundIdentifier(p) => p.last().map(|i| (norm(i), true)),
        Expr::Nested(inner) | Expr::Collate { expr: inner, .. } => figure_name(inner),
        Expr::Cast {
            expr, data_type, ..
        } => match figure_name(expr) {
            Some((n, true)) => Some((n, true)),
            _ => Some((cast_type_name(&data_type.to_string()), false)),
        },
        Expr::Function(f) => name_parts(&f.name).last().map(|n| (n.clone(), true)),
        Expr::Subquery(q) => match q.body.as_ref() {
            SetExpr::Select(s) => match s.projection.first() {
                Some(SelectItem::ExprWithAlias { alias, .. }) => Some((norm(alias), true)),
                Some(SelectItem::UnnamedExpr(inner)) => figure_name(inner),
                _ => None,
            },
            _ => None,
        },
        Expr::Case { .. } => keyword("case"),
        Expr::Exists { .. } => keyword("exists"),
        Expr::Array(_) => keyword("array"),
        Expr::Tuple(_) => keyword("row"),
        Expr::Substring { .. } => keyword("substring"),
        Expr::Trim { .. } => keyword("btrim"),
        Expr::Position { .. } => keyword("position"),
        Expr::Extract { .. } => keyword("extract"),
        _ => None,
    }
}

/// The name PostgreSQL reports for a cast's type (`int4` for `integer`).
fn cast_type_name(written: &str) -> String {
    let base = written
        .split('(')
        .next()
        .unwrap_or_default()
        .trim()
        .to_lowercase();
    let last = base.rsplit('.').next().unwrap_or_default().to_string();
    match last.as_str() {
        "integer" | "int" => "int4".into(),
        "smallint" => "int2".into(),
        "bigint" => "int8".into(),
        "real" => "float4".into(),
        "double precision" | "float" => "float8".into(),
        "boolean" => "bool".into(),
        "character varying" => "varchar".into(),
        "character" | "char" => "bpchar".into(),
        "decimal" => "numeric".into(),
        "timestamp with time zone" => "timestamptz".into(),
        "timestamp without time zone" | "timestamp" => "timestamp".into(),
        "time with time zone" => "timetz".into(),
        "time without time zone" => "time".into(),
        other => other.to_string(),
    }
}

fn positional<'o>(e: &Expr, outs: &'o [Out]) -> Option<&'o Out> {
    if let Expr::Value(v) = e
        && let Value::Number(n, _) = &v.value
    {
        let i: usize = n.parse().ok()?;
        return outs.get(i.checked_sub(1)?);
    }
    None
}

fn alias_ref<'o>(e: &Expr, outs: &'o [Out]) -> Option<&'o Out> {
    if let Expr::Identifier(i) = e {
        let n = norm(i);
        return outs.iter().find(|o| o.name == n && o.name != "?column?");
    }
    None
}

fn relation_outputs(r: &Relation) -> R<Vec<Out>> {
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

#[path = "analyze_using.rs"]
mod using;

/// Whether a relation in scope exposes an encrypted column.
fn has_encrypted_source(rel: &Rel<'_>) -> bool {
    match &rel.source {
        RelSource::Catalog(r) => r.columns.iter().any(|c| c.encrypted.is_some()),
        RelSource::Derived(outs) => outs.iter().any(|o| matches!(o.class, Class::Enc { .. })),
        RelSource::Other => false,
    }
}

fn wildcard(rel: &Rel<'_>, outs: &mut Vec<Out>) -> R<()> {
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
fn apply_alias_columns<'c>(
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

/// The plaintext of a literal expression, if it is one.
fn literal_text(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s)
            | Value::NationalStringLiteral(s) => Some(s.clone()),
            Value::DollarQuotedString(d) => Some(d.value.clone()),
            Value::Number(n, _) => Some(n.to_string()),
            Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        },
        Expr::Nested(inner) => literal_text(inner),
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(format!("-{n}")),
                _ => None,
            },
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Plus,
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => Some(n.to_string()),
                _ => None,
            },
            _ => None,
        },
        Expr::Cast {
            expr,
            format: None,
            kind: CastKind::DoubleColon | CastKind::Cast,
            ..
        } => literal_text(expr),
        Expr::TypedString(ts) => match &ts.value.value {
            Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn literal_cast(e: &Expr) -> Option<String> {
    match e {
        Expr::Cast { data_type, .. } => Some(data_type.to_string().to_lowercase()),
        Expr::TypedString(ts) => Some(ts.data_type.to_string().to_lowercase()),
        Expr::Nested(inner) => literal_cast(inner),
        _ => None,
    }
}

/// Whether a literal cast to `cast` is still a value of the column's type.
/// COPY options as PostgreSQL reads them (new and pre-9.0 syntax).
fn copy_options(
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
    columns: &[(String, Option<Encrypted>)],
) -> R<crate::copy::CopyOptions> {
    use crate::copy::{CopyFormat, CopyOptions};
    let refuse = |what: String| Refusal::general(what, "copy");
    let mut format = CopyFormat::Text;
    for o in options {
        if let CopyOption::Format(f) = o {
            format = match f.value.to_lowercase().as_str() {
                "text" => CopyFormat::Text,
                "csv" => CopyFormat::Csv,
                "binary" => CopyFormat::Binary,
                other => return Err(refuse(format!("COPY format {other}"))),
            };
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => format = CopyFormat::Binary,
            CopyLegacyOption::Csv(_) => format = CopyFormat::Csv,
            _ => {}
        }
    }
    let mut opts = CopyOptions::defaults(format);
    let single = |c: char, what: &str| -> R<u8> {
        u8::try_from(u32::from(c))
            .ok()
            .filter(u8::is_ascii)
            .ok_or_else(|| refuse(format!("a non-ASCII COPY {what}")))
    };
    let mut escape_set = false;
    let index = |names: &[Ident]| -> R<Vec<bool>> {
        let mut v = vec![false; columns.len()];
        for n in names {
            let name = norm(n);
            let i = columns
                .iter()
                .position(|(c, _)| *c == name)
                .ok_or_else(|| refuse(format!("COPY option names column {name}, not copied")))?;
            v[i] = true;
        }
        Ok(v)
    };
    for o in options {
        match o {
            CopyOption::Format(_) | CopyOption::Freeze(_) | CopyOption::ForceQuote(_) => {}
            CopyOption::Delimiter(c) => opts.delimiter = single(*c, "delimiter")?,
            CopyOption::Null(s) => opts.null = s.as_bytes().to_vec(),
            CopyOption::Header(h) => opts.header = *h,
            CopyOption::Quote(c) => opts.quote = single(*c, "quote")?,
            CopyOption::Escape(c) => {
                opts.escape = single(*c, "escape")?;
                escape_set = true;
            }
            CopyOption::ForceNotNull(n) => opts.force_not_null = index(n)?,
            CopyOption::ForceNull(n) => opts.force_null = index(n)?,
            CopyOption::Encoding(e) => {
                let e = e.to_uppercase().replace(['-', '_'], "");
                if e != "UTF8" && e != "UNICODE" {
                    return Err(refuse(format!(
                        "COPY with ENCODING {e} on encrypted columns (send UTF8)"
                    )));
                }
            }
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => {}
            CopyLegacyOption::Delimiter(c) => opts.delimiter = single(*c, "delimiter")?,
            CopyLegacyOption::Null(s) => opts.null = s.as_bytes().to_vec(),
            CopyLegacyOption::Header => opts.header = true,
            CopyLegacyOption::Csv(csv) => {
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => opts.header = true,
                        CopyLegacyCsvOption::Quote(q) => opts.quote = single(*q, "quote")?,
                        CopyLegacyCsvOption::Escape(e) => {
                            opts.escape = single(*e, "escape")?;
                            escape_set = true;
                        }
                        CopyLegacyCsvOption::ForceNotNull(n) => {
                            opts.force_not_null = index(n)?;
                        }
                        CopyLegacyCsvOption::ForceQuote(_) => {}
                    }
                }
            }
            other => return Err(refuse(format!("COPY option {other}"))),
        }
    }
    if !escape_set {
        opts.escape = opts.quote;
    }
    Ok(opts)
}

fn cast_fits(cast: &str, ty: ValueType) -> bool {
    if cast.contains('(') {
        // varchar(5) truncates, numeric(10,2) rounds, timestamp(0) rounds:
        // the value stored would not be the value written.
        return false;
    }
    let base = cast.trim();
    let base = base.strip_prefix("pg_catalog.").unwrap_or(base);
    match ty {
        ValueType::Text | ValueType::Varchar => {
            matches!(base, "text" | "varchar" | "character varying")
        }
        ValueType::Int2 | ValueType::Int4 | ValueType::Int8 => matches!(
            base,
            "int" | "integer" | "int2" | "int4" | "int8" | "smallint" | "bigint"
        ),
        ValueType::Bool => matches!(base, "bool" | "boolean"),
        ValueType::Uuid => base == "uuid",
        ValueType::Date => base == "date",
        ValueType::Timestamp => matches!(base, "timestamp" | "timestamp without time zone"),
        ValueType::Timestamptz => matches!(base, "timestamptz" | "timestamp with time zone"),
        ValueType::Numeric => matches!(base, "numeric" | "decimal"),
    }
}

fn statement_kind(s: &Statement) -> String {
    let text = s.to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
        .to_uppercase()
        .chars()
        .filter(|c| c.is_ascii_alphabetic() || *c == ' ')
        .collect()
}

/// Positions of the edits, for tests.
#[cfg(test)]
fn edit_texts<'t>(text: &'t str, a: &Analysis) -> Vec<&'t str> {
    a.statements
        .iter()
        .flat_map(|s| s.edits.iter().map(|e| &text[e.range.clone()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Column, Relation};
    use crate::config::ColumnId;

    fn enc(table: &str, column: &str, domain: &str, ty: ValueType) -> Encrypted {
        Encrypted {
            id: ColumnId {
                schema: "public".into(),
                table: table.into(),
                column: column.into(),
            },
            domain: domain.into(),
            value_type: ty,
            storage: StorageState::Bytea,
            forms: 1,
        }
    }

    fn col(name: &str, attnum: i16, e: Option<Encrypted>) -> Column {
        Column {
            name: name.into(),
            attnum,
            type_name: if e.is_some() {
                "bytea".into()
            } else {
                "int4".into()
            },
            has_default: false,
            generated: false,
            encrypted: e,
        }
    }

    fn catalog() -> Catalog {
        catalog_with(1)
    }

    /// The test catalog, `customers.email` holding each value in
    /// `email_forms` stored forms.
    fn catalog_with(email_forms: usize) -> Catalog {
        Catalog::from_relations(
            vec![
                Relation {
                    oid: 100,
                    schema: "public".into(),
                    name: "customers".into(),
                    kind: RelationKind::Table,
                    columns: vec![
                        col("id", 1, None),
                        col(
                            "email",
                            2,
                            Some(Encrypted {
                                forms: email_forms,
                                ..enc("customers", "email", "email", ValueType::Text)
                            }),
                        ),
                        col(
                            "birth_date",
                            3,
                            Some(enc("customers", "birth_date", "bd", ValueType::Date)),
                        ),
                        col("score", 4, None),
                    ],
                    opaque: None,
                    definition: None,
                },
                Relation {
                    oid: 200,
                    schema: "public".into(),
                    name: "leads".into(),
                    kind: RelationKind::Table,
                    columns: vec![
                        col("id", 1, None),
                        col(
                            "email",
                            2,
                            Some(enc("leads", "email", "email", ValueType::Text)),
                        ),
                        col(
                            "phone",
                            3,
                            Some(enc("leads", "phone", "phone", ValueType::Text)),
                        ),
                    ],
                    opaque: None,
                    definition: None,
                },
            ],
            vec!["public".into()],
        )
    }

    fn cols(names: &[&str]) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for t in ["customers", "leads", "t"] {
            for n in names {
                out.push(("public".to_string(), t.to_string(), n.to_string()));
            }
        }
        out
    }

    fn run(sql: &str) -> Analysis {
        let c = catalog();
        let configured = vec![
            ("public".to_string(), "customers".to_string()),
            ("public".to_string(), "leads".to_string()),
        ];
        let w = Watched::new(&c, &configured, &cols(&["email", "birth_date", "phone"]));
        analyze(sql, &c, &w, &configured, &HashMap::new())
    }

    fn ok_edits(sql: &str) -> Vec<String> {
        let a = run(sql);
        assert!(a.refusal.is_none(), "{sql}: {:?}", a.refusal);
        edit_texts(sql, &a).into_iter().map(String::from).collect()
    }

    fn refused(sql: &str) -> Refusal {
        run(sql)
            .refusal
            .unwrap_or_else(|| panic!("not refused: {sql}"))
    }

    /// The catalog with `customers.email` holding each value in two stored
    /// forms (a migration or rotation in progress).
    fn run_forms(sql: &str) -> Analysis {
        let c = catalog_with(2);
        let configured = vec![
            ("public".to_string(), "customers".to_string()),
            ("public".to_string(), "leads".to_string()),
        ];
        let w = Watched::new(&c, &configured, &cols(&["email", "birth_date", "phone"]));
        analyze(sql, &c, &w, &configured, &HashMap::new())
    }

    #[test]
    fn several_stored_forms_match_every_form_or_are_refused() {
        let forms = |sql: &str| -> Vec<Forms> {
            let a = run_forms(sql);
            assert!(a.refusal.is_none(), "{sql}: {:?}", a.refusal);
            a.statements[0].edits.iter().map(|e| e.forms).collect()
        };
        assert_eq!(
            forms("SELECT id FROM customers WHERE email = 'a'"),
            vec![Forms::Any]
        );
        assert_eq!(
            forms("SELECT id FROM customers WHERE email <> 'a'"),
            vec![Forms::All]
        );
        assert_eq!(
            forms("SELECT id FROM customers WHERE email IN ('a', 'b')"),
            vec![Forms::List, Forms::List]
        );
        assert_eq!(
            forms("SELECT id FROM customers WHERE email = ANY(ARRAY['a'])"),
            vec![Forms::List]
        );
        // Stores write one form.
        assert_eq!(
            forms("INSERT INTO customers (email) VALUES ('a')"),
            vec![Forms::One]
        );
        assert_eq!(
            forms("UPDATE customers SET email = 'b' WHERE id = 1"),
            vec![Forms::One]
        );
        // Another column keeps one form.
        assert_eq!(
            forms("SELECT id FROM leads WHERE email = 'a'"),
            vec![Forms::One]
        );
        for sql in [
            "SELECT id FROM customers WHERE 'a' = email",
            "SELECT id FROM customers WHERE email IS DISTINCT FROM 'a'",
            "SELECT id FROM customers WHERE email = ALL(ARRAY['a'])",
            "SELECT id FROM customers WHERE email IN (SELECT 'a')",
        ] {
            let r = run_forms(sql)
                .refusal
                .unwrap_or_else(|| panic!("not refused: {sql}"));
            assert_eq!(r.reason, "migrating", "{sql}");
        }
        // Parameters: rewritten to match an array of every form.
        let a = run_forms("SELECT id FROM customers WHERE email = $1 AND id = $2");
        assert!(a.refusal.is_none(), "{:?}", a.refusal);
        let p = &a.statements[0];
        assert!(p.params.get(&1).is_some_and(|b| b.expand && !b.array));
        assert!(
            p.replacements.iter().any(|(_, t)| t == "ANY($1)"),
            "{:?}",
            p.replacements
        );
        let a = run_forms("SELECT id FROM customers WHERE email IN ($1, $2::text)");
        let texts: Vec<&str> = a.statements[0]
            .replacements
            .iter()
            .map(|(_, t)| t.as_str())
            .collect();
        assert!(texts.contains(&"($1)[1], ($1)[2]"), "{texts:?}");
        assert!(
            texts
                .iter()
                .any(|t| t.starts_with("(CAST((") && t.contains("AS bytea[]))[2]")),
            "{texts:?}"
        );
        let a = run_forms("SELECT id FROM customers WHERE email = ANY($1)");
        assert!(
            a.statements[0]
                .params
                .get(&1)
                .is_some_and(|b| b.expand && b.array)
        );
        assert!(a.statements[0].replacements.is_empty());
        let r = run_forms("SELECT id FROM customers WHERE email = $1 OR email <> $1").refusal;
        assert_eq!(r.map(|r| r.reason), Some("migrating"));
        // Review regressions: each would have matched one form only, or
        // stored the forms beyond the window.
        for sql in [
            "SELECT id FROM customers c, (SELECT $1 AS x) v WHERE c.email IN (v.x)",
            "SELECT id FROM customers c, (VALUES ($1)) v(x) WHERE c.email = v.x",
            "SELECT * FROM (SELECT email FROM leads UNION ALL SELECT email FROM customers) u WHERE email = 'a'",
            "INSERT INTO leads (email) SELECT email FROM customers",
            "CREATE VIEW v AS SELECT id FROM customers WHERE email = 'a'",
            "CREATE INDEX i ON customers (id) WHERE email = 'a'",
        ] {
            let r = run_forms(sql)
                .refusal
                .unwrap_or_else(|| panic!("not refused: {sql}"));
            assert_eq!(r.reason, "migrating", "{sql}");
        }
        // The other direction is fine: one form into a column with more.
        assert!(
            run_forms("INSERT INTO customers (email) SELECT email FROM leads")
                .refusal
                .is_none()
        );
    }

    #[test]
    fn insert_values_with_and_without_column_list() {
        assert_eq!(
            ok_edits("INSERT INTO customers (id, email) VALUES (1, 'a@x'), (2, E'b@x')"),
            vec!["'a@x'", "E'b@x'"]
        );
        assert_eq!(
            ok_edits("insert into customers values (1, 'a@x', DATE '2020-01-01', 5)"),
            vec!["'a@x'", "DATE '2020-01-01'"]
        );
        assert_eq!(
            ok_edits(
                "insert into customers (birth_date) values ('2020-01-01'::date), (CAST('2020-01-02' AS date)), (NULL), (DEFAULT)"
            ),
            vec!["'2020-01-01'::date", "CAST('2020-01-02' AS date)"]
        );
    }

    #[test]
    fn where_equality_in_and_any() {
        assert_eq!(
            ok_edits(
                "select id from customers where email = 'a@x' or email in ('b', $$c$$) or email = any(array['d'])"
            ),
            vec!["'a@x'", "'b'", "$$c$$", "'d'"]
        );
        assert_eq!(
            ok_edits("select * from customers c where c.email <> 'z'"),
            vec!["'z'"]
        );
        assert_eq!(
            ok_edits(
                "select * from customers where email is not distinct from 'q' and email is not null"
            ),
            vec!["'q'"]
        );
    }

    #[test]
    fn joins_within_a_domain() {
        assert!(
            ok_edits("select c.id from customers c join leads l on c.email = l.email").is_empty()
        );
        assert!(ok_edits("select c.id from customers c join leads l using (email)").is_empty());
        assert_eq!(
            refused("select 1 from customers c join leads l on c.email = l.phone").reason,
            "mixed_domains"
        );
    }

    #[test]
    fn refuses_what_ciphertext_cannot_serve() {
        assert_eq!(
            refused("select * from customers where email like 'a%'").reason,
            "pattern"
        );
        assert_eq!(
            refused("select * from customers where birth_date < '2000-01-01'").reason,
            "order"
        );
        assert_eq!(
            refused("select * from customers order by email").reason,
            "order"
        );
        assert_eq!(
            refused("select email e from customers order by e").reason,
            "order"
        );
        assert_eq!(
            refused("select email from customers order by 1").reason,
            "order"
        );
        assert_eq!(
            refused("select lower(email) from customers").reason,
            "function"
        );
        assert_eq!(
            refused("select email || 'x' from customers").reason,
            "function"
        );
        assert_eq!(
            refused("select * from customers where email = score::text").reason,
            "plaintext_comparison"
        );
        assert_eq!(
            refused("select * from customers where email between 'a' and 'b'").reason,
            "order"
        );
        assert_eq!(refused("copy customers from '/tmp/f'").reason, "copy");
        let a = run("copy customers (id, email) from stdin with (format csv, force_null (email))");
        let plan = a.statements[0].copy.clone().expect("a COPY plan");
        assert!(
            !plan.to && plan.columns[1].1.is_some() && plan.options.force_null == vec![false, true]
        );
        let a = run("copy (select email, id from customers) to stdout");
        assert!(
            a.statements[0]
                .copy
                .as_ref()
                .is_some_and(|p| p.to && p.columns[0].1.is_some())
        );
        assert_eq!(
            refused("select * from customers where email = 'a' ||").reason,
            "unparsed"
        );
    }

    #[test]
    fn counts_and_grouping_are_fine() {
        assert!(ok_edits("select email, count(*) from customers group by email").is_empty());
        assert!(ok_edits("select count(distinct email) from customers").is_empty());
        assert!(ok_edits("select distinct email from customers").is_empty());
        assert_eq!(
            refused("select max(email) from customers").reason,
            "function"
        );
    }

    #[test]
    fn update_delete_returning() {
        assert_eq!(
            ok_edits("update customers set email = 'n@x' where email = 'o@x' returning email"),
            vec!["'n@x'", "'o@x'"]
        );
        assert_eq!(
            ok_edits("delete from customers where email = 'a' returning id"),
            vec!["'a'"]
        );
        assert!(
            ok_edits("update customers c set email = l.email from leads l where l.id = c.id")
                .is_empty()
        );
        assert_eq!(
            refused("update customers set email = lower('X')").reason,
            "plaintext_comparison"
        );
    }

    #[test]
    fn on_conflict_and_insert_select() {
        assert_eq!(
            ok_edits(
                "insert into customers (id, email) values (1, 'a') on conflict (email) do update set email = excluded.email"
            ),
            vec!["'a'"]
        );
        assert!(ok_edits("insert into leads (email) select email from customers").is_empty());
        assert_eq!(
            ok_edits(
                "insert into customers (id, email) select v.i, v.e from (values (1, 'a'), (2, 'b')) as v(i, e)"
            ),
            vec!["'a'", "'b'"]
        );
        assert_eq!(
            refused("insert into leads (phone) select email from customers").reason,
            "mixed_domains"
        );
    }

    #[test]
    fn union_output_gets_a_hint() {
        let a = run("select email from customers union select email from leads");
        assert!(a.refusal.is_none());
        assert!(a.statements[0].outputs[0].is_some());
        let a = run("select (select email from customers limit 1), 1");
        assert!(a.statements[0].outputs[0].is_some());
        assert!(a.statements[0].outputs[1].is_none());
    }

    #[test]
    fn subqueries_and_ctes() {
        assert_eq!(
            ok_edits(
                "with w as (select id, email from customers) select id from w where email = 'a'"
            ),
            vec!["'a'"]
        );
        assert_eq!(
            ok_edits(
                "select id from customers where email in (select email from leads where phone = '1')"
            ),
            vec!["'1'"]
        );
        assert_eq!(
            ok_edits("select x.e from (select email as e from customers) x where x.e = 'k'"),
            vec!["'k'"]
        );
    }

    #[test]
    fn untouched_statements_are_not_analysed() {
        let a = run(
            "select 1; set search_path = crm, public; select * from other where email like 'x'",
        );
        assert!(a.refusal.is_none());
        assert!(a.statements[1].sets_search_path);
    }

    #[test]
    fn multi_statement_stops_at_refusal() {
        let a = run(
            "insert into customers (email) values ('a'); select * from customers where email like 'b%'; select 1",
        );
        assert_eq!(a.statements.len(), 1);
        assert!(a.refusal.is_some());
    }

    #[test]
    fn refusal_message_has_no_value() {
        let r = refused("select * from customers where email like 'secret-value%'");
        assert!(!r.message().contains("secret"));
        assert!(r.message().starts_with("pgveil:"));
        assert!(r.message().contains("public.customers.email"));
    }

    #[test]
    fn quoted_and_qualified_names() {
        assert_eq!(
            ok_edits("select 1 from public.customers where \"email\" = 'a'"),
            vec!["'a'"]
        );
        assert_eq!(
            ok_edits("SELECT 1 FROM Customers WHERE EMAIL = 'a'"),
            vec!["'a'"]
        );
        // A different, quoted table is not the configured one.
        assert!(
            run("select 1 from \"Customers\" where email like 'a'")
                .refusal
                .is_none()
        );
    }

    #[test]
    fn prepare_records_parameters_and_execute_encrypts_arguments() {
        let sql = "PREPARE f(int, text) AS SELECT id FROM customers WHERE id = $1 AND email = $2";
        let a = run(sql);
        assert!(a.refusal.is_none(), "{:?}", a.refusal);
        let plan = &a.statements[0];
        let (name, spec) = plan.prepared.clone().unwrap();
        assert_eq!(name, "f");
        assert!(spec[0].is_none());
        assert_eq!(spec[1].as_ref().unwrap().id.column, "email");
        let retyped: Vec<&str> = plan
            .replacements
            .iter()
            .map(|(r, _)| &sql[r.clone()])
            .collect();
        assert_eq!(retyped, vec!["text"]);

        let c = catalog();
        let configured = vec![("public".to_string(), "customers".to_string())];
        let w = Watched::new(&c, &configured, &cols(&["email"]));
        let mut prepared = HashMap::new();
        prepared.insert("f".to_string(), spec);
        let exec = "EXECUTE f(1, 'a@x')";
        let a = analyze(exec, &c, &w, &configured, &prepared);
        assert!(a.refusal.is_none(), "{:?}", a.refusal);
        assert_eq!(edit_texts(exec, &a), vec!["'a@x'"]);
        for exec in [
            "EXPLAIN ANALYZE EXECUTE f(1, 'a@x')",
            "EXPLAIN (ANALYZE) EXECUTE f (1, 'a@x')",
        ] {
            let a = analyze(exec, &c, &w, &configured, &prepared);
            assert!(a.refusal.is_none(), "{exec}: {:?}", a.refusal);
            assert_eq!(edit_texts(exec, &a), vec!["'a@x'"], "{exec}");
        }
        let a = analyze("EXECUTE f(1, lower('A'))", &c, &w, &configured, &prepared);
        assert!(a.refusal.is_some());
        let a = analyze("DEALLOCATE f", &c, &w, &configured, &prepared);
        assert_eq!(a.statements[0].deallocated, Some(Some("f".to_string())));
    }

    /// Parameters bound to encrypted columns, and the text each cast
    /// replacement puts in place of what.
    type Bindings = (Vec<(usize, String, bool)>, Vec<(String, String)>);

    fn bindings(sql: &str) -> Bindings {
        let a = run(sql);
        assert!(a.refusal.is_none(), "{sql}: {:?}", a.refusal);
        let plan = &a.statements[0];
        let params = plan
            .params
            .iter()
            .map(|(n, b)| (*n, b.column.id.column.clone(), b.array))
            .collect();
        let casts = plan
            .replacements
            .iter()
            .map(|(r, t)| (sql[r.clone()].to_string(), t.clone()))
            .collect();
        (params, casts)
    }

    #[test]
    fn parameters_are_bound_directly_through_casts_and_values_lists() {
        let (p, c) = bindings("select id from customers where email = $1 and id = $2");
        assert_eq!(p, vec![(1, "email".to_string(), false)]);
        assert!(c.is_empty());
        let (p, c) = bindings(
            "select id from customers where email = $1::text or email = CAST($2 AS VARCHAR(255))",
        );
        assert_eq!(p.len(), 2);
        assert_eq!(
            c,
            vec![
                ("$1::text".to_string(), "CAST(($1) AS bytea)".to_string()),
                (
                    "CAST($2 AS VARCHAR(255))".to_string(),
                    "CAST(($2) AS bytea)".to_string()
                )
            ]
        );
        let (_, c) = bindings("select 1 from customers where email = ($1::text)::varchar");
        assert_eq!(
            c,
            vec![(
                "($1::text)::varchar".to_string(),
                "CAST(($1) AS bytea)".to_string()
            )]
        );
        // SQLAlchemy 2's bulk insert.
        let sql = "INSERT INTO customers (email, birth_date, id) SELECT p0::VARCHAR, p1::DATE, p2::INTEGER FROM \
                   (VALUES ($1::VARCHAR, $2::DATE, $3::INTEGER, 0), ($4::VARCHAR, $5::DATE, $6::INTEGER, 1)) \
                   AS imp_sen(p0, p1, p2, sen_counter) ORDER BY sen_counter RETURNING customers.id";
        let (p, c) = bindings(sql);
        let bound: Vec<usize> = p.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(bound, vec![1, 2, 4, 5]);
        assert!(c.contains(&("p0::VARCHAR".to_string(), "CAST((p0) AS bytea)".to_string())));
        assert!(c.contains(&("$5::DATE".to_string(), "CAST(($5) AS bytea)".to_string())));
        assert!(!c.iter().any(|(from, _)| from.contains("INTEGER")));
        // IN lists and arrays.
        let (p, _) = bindings("select 1 from customers where email in ($1, $2)");
        assert_eq!(p.len(), 2);
        let (p, c) = bindings("select 1 from customers where email = any($1::text[])");
        assert_eq!(p, vec![(1, "email".to_string(), true)]);
        assert_eq!(
            c,
            vec![(
                "$1::text[]".to_string(),
                "CAST(($1) AS bytea[])".to_string()
            )]
        );
    }

    #[test]
    fn parameters_used_as_plaintext_or_cast_away_are_refused() {
        for sql in [
            "select 1 from customers where email = $1 and id = $1",
            "select $1 from customers where email = $1",
            "select 1 from customers where email = $1::int",
            "select 1 from customers where email = lower($1)",
            "select 1 from customers where email = $1 and birth_date = $1",
            "insert into customers (email, id) values ($1, $1)",
        ] {
            assert!(run(sql).refusal.is_some(), "{sql}");
        }
    }

    #[test]
    fn origin_less_ciphertext_beside_unknown_wildcard_is_refused() {
        let r = refused("select *, (select email from customers limit 1) from other_table");
        assert_eq!(r.reason, "unsupported");
    }

    #[test]
    fn review_findings_fail_closed() {
        // Unknown CTE columns flowing into encrypted targets.
        assert!(run("with x as (select * from staging) insert into customers (id, email) select * from x").refusal.is_some());
        assert!(
            run("with x as (select * from staging) insert into customers (id, email) table x")
                .refusal
                .is_some()
        );
        // CREATE TABLE AS / SELECT INTO creating a configured table.
        assert!(
            run("create table customers as select 1 as id, 'x'::text as email")
                .refusal
                .is_some()
        );
        assert!(run("select * into leads from staging").refusal.is_some());
        // Type changes and generated columns on encrypted columns.
        assert!(
            run("alter table leads alter column email type bytea using 'x'::bytea")
                .refusal
                .is_some()
        );
        assert!(run("create table leads (id int, name text, email text generated always as (name || '') stored)").refusal.is_some());
        // Constraint expressions over encrypted columns.
        assert!(
            run("alter table customers add constraint c check (email <> 'x')")
                .refusal
                .is_some()
        );
        // Literals in a view definition or an index predicate are encrypted.
        let sql = "create view v13 as select id from customers where email = 'p13'";
        assert_eq!(ok_edits(sql), vec!["'p13'"]);
        assert_eq!(
            ok_edits("create index i on customers (id) where email = 'p14'"),
            vec!["'p14'"]
        );
        assert_eq!(
            ok_edits(
                "insert into customers (id, email) values (1, 'a') on conflict (id) where email <> 'p27' do nothing"
            ),
            vec!["'a'", "'p27'"]
        );
        // Cursors and prepared statements cannot carry positional hints.
        assert!(
            run("declare c cursor for select email from customers union select email from leads")
                .refusal
                .is_some()
        );
        assert!(
            run("prepare p as select email from customers union select email from leads")
                .refusal
                .is_some()
        );
        // Ciphertext copied into plain targets through a tuple assignment.
        assert!(
            run("update customers set (id, score) = (select 1, email from customers c2 limit 1)")
                .refusal
                .is_some()
        );
        // A parameter used for an encrypted column and a plain one.
        assert!(
            run("prepare q as insert into customers (email, score) values ($1, $1)")
                .refusal
                .is_some()
        );
    }

    #[test]
    fn defaults_on_encrypted_columns_are_refused() {
        assert!(
            refused("alter table customers alter column email set default 'x@y'")
                .message()
                .contains("DEFAULT")
        );
        assert!(
            refused("create table leads (id int, email bytea default 'a')")
                .message()
                .contains("DEFAULT")
        );
        assert!(
            run("alter table customers alter column score set default 0")
                .refusal
                .is_none()
        );
    }

    #[test]
    fn whole_row_references_are_refused() {
        assert_eq!(
            refused("select to_json(c) from customers c").reason,
            "function"
        );
        assert_eq!(
            refused("select row_to_json(c.*) from customers c").reason,
            "function"
        );
        assert!(
            run("select distinct on (email) id from customers")
                .refusal
                .is_none()
        );
        assert_eq!(
            refused("select distinct on (lower(email)) id from customers").reason,
            "function"
        );
    }

    #[test]
    fn numbers_and_negative_literals() {
        let c = Catalog::from_relations(
            vec![Relation {
                oid: 1,
                schema: "public".into(),
                name: "t".into(),
                kind: RelationKind::Table,
                columns: vec![col("n", 1, Some(enc("t", "n", "n", ValueType::Int4)))],
                opaque: None,
                definition: None,
            }],
            vec!["public".into()],
        );
        let configured = vec![("public".to_string(), "t".to_string())];
        let w = Watched::new(&c, &configured, &cols(&["n"]));
        let sql = "select 1 from t where n = -5 or n = 7::int4";
        let a = analyze(sql, &c, &w, &configured, &HashMap::new());
        assert!(a.refusal.is_none(), "{:?}", a.refusal);
        assert_eq!(edit_texts(sql, &a), vec!["-5", "7::int4"]);
    }
}
