//! The checks that need PostgreSQL's own reading of a statement (the
//! referee): what it settles alone (functions reading whole tables, schema
//! renames, statements after DDL, expressions DDL stores), and whether
//! sqlparser, whose tree the rest of the analyzer walks, read the
//! statement the same way. Any disagreement is a refusal: pgveil does not
//! guess which reading the database will act on.

use std::ops::Range;

use sqlparser::ast::{CopySource, ObjectName, Statement};
use sqlparser::tokenizer::Token;

use super::names::name_parts;
use super::{R, Watched};
use crate::catalog::Catalog;
use crate::sql::referee::{self, Facts, Referee};
use crate::sql::refusal::Refusal;
use crate::sql::source::Source;

/// A refusal for a statement sqlparser and PostgreSQL read differently.
pub(super) fn disagreement(what: &str) -> Refusal {
    Refusal::general(
        format!(
            "pgveil's analyzer and PostgreSQL's parser read this statement differently ({what}); \
             pgveil does not guess"
        ),
        "unparsed",
    )
}

/// Whether sqlparser's statements start and end where PostgreSQL's do.
pub(super) fn same_statements(ranges: &[Range<usize>], referee: &Referee) -> bool {
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
pub(super) fn referee_checks(
    facts: &Facts,
    configured: &[(String, String)],
    after_ddl: &[referee::DdlEffect],
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
    if let Some(s) = facts
        .schemas_renamed_to
        .iter()
        .find(|s| configured.iter().any(|(cs, _)| cs == *s))
    {
        return Err(Refusal::general(
            format!(
                "renaming a schema to {s}, which the configuration names (its tables' rows were \
                 not written through pgveil)"
            ),
            "unsupported",
        ));
    }
    if let Some(r) = facts
        .renamed_to
        .iter()
        .find(|r| names_configured(r, configured))
    {
        return Err(Refusal::general(
            format!(
                "renaming or moving a table to {}, which the configuration names (its rows were \
                 not written through pgveil)",
                r.name
            ),
            "unsupported",
        ));
    }
    if let Some(r) = facts.attached_to.iter().find(|r| {
        names_configured(r, configured) || catalog.relations().iter().any(|c| c.name == r.name)
    }) {
        return Err(Refusal::general(
            format!(
                "attaching an existing table to {} as a child or partition (its rows were not \
                 written through pgveil); create it with INHERITS or PARTITION OF and copy the \
                 rows through pgveil",
                r.name
            ),
            "unsupported",
        ));
    }
    let unsure = after_ddl
        .iter()
        .any(|e| unsure_after(*e, facts, configured, catalog));
    if unsure {
        return Err(Refusal::general(
            "a statement after DDL on encrypted tables in the same Query or pipeline; send the \
             DDL on its own and wait for its result",
            "catalog",
        ));
    }
    Ok(())
}

/// Whether a statement that follows DDL with `effect` in the same Query
/// may be judged against a catalog the DDL has changed.
fn unsure_after(
    effect: referee::DdlEffect,
    facts: &Facts,
    configured: &[(String, String)],
    catalog: &Catalog,
) -> bool {
    let known = |r: &referee::RelName| catalog.relations().iter().any(|c| c.name == r.name);
    match effect {
        referee::DdlEffect::None => false,
        // Columns, positions or children of a known relation changed:
        // what reads or writes rows by them is unsure, further DDL (judged
        // by the configuration's names) is not.
        referee::DdlEffect::Alters => {
            const DDL: [&str; 4] = ["AlterTableStmt", "IndexStmt", "CommentStmt", "DropStmt"];
            if DDL.contains(&facts.kind.as_str()) {
                return false;
            }
            !facts.prepared.is_empty()
                || facts
                    .relations
                    .iter()
                    .any(|r| names_configured(r, configured) || known(r))
        }
        // A relation the catalog does not know may be one it created.
        referee::DdlEffect::Derives => facts.relations.iter().any(|r| !known(r)),
        // Any name may now mean another.
        referee::DdlEffect::Renames => !facts.relations.is_empty() || !facts.prepared.is_empty(),
    }
}

/// Whether `r` may be a configured table: its name is configured in its
/// schema, or in any schema where it was written unqualified.
fn names_configured(r: &referee::RelName, configured: &[(String, String)]) -> bool {
    configured
        .iter()
        .any(|(s, t)| *t == r.name && r.schema.as_ref().is_none_or(|rs| rs == s))
}

/// DDL whose expressions the catalog stores (CHECK, generated columns,
/// index expressions and predicates, statistics expressions, partition
/// keys and bounds) over encrypted columns of the relations it names: they
/// would run on ciphertext, and their literals would be stored in
/// plaintext. Refused; plain column lists (keys, UNIQUE, statistics on
/// columns, `EXCLUDE (col WITH =)`) compare ciphertext for equality and pass.
pub(super) fn stored_expressions(facts: &Facts, watched: &Watched) -> R<()> {
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
pub(super) fn agree(
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
