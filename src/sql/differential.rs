//! The invariants that tie the analyzer's reading of a text to PostgreSQL's
//! (the referee's), checked by the differential test
//! (`tests/referee_differential.rs`) and the fuzz target
//! (`fuzz/fuzz_targets/analyze_differential.rs`) on random statements.
//!
//! Whatever the analyzer accepts must be read the same way by PostgreSQL:
//! the same statements, and every literal it encrypts and every parameter
//! it binds exactly where PostgreSQL's lexer has a constant or a `$n`.

use super::analyze::Analysis;
use super::referee;

/// Checks an accepted analysis of `text` against PostgreSQL's reading.
/// `Err` names the broken invariant (test use only: it quotes the text).
pub fn check(text: &str, analysis: &Analysis) -> Result<(), String> {
    if analysis.refusal.is_some() {
        return Ok(());
    }
    let acts = analysis
        .statements
        .iter()
        .any(|p| !p.edits.is_empty() || !p.params.is_empty() || p.copy.is_some() || p.touches);
    if !acts {
        return Ok(());
    }
    let seen = referee::examine(text)
        .map_err(|e| format!("accepted, but PostgreSQL cannot read it ({e}): {text:?}"))?;
    if seen.statements.len() != analysis.statements.len() {
        return Err(format!(
            "accepted {} statements, PostgreSQL reads {}: {text:?}",
            analysis.statements.len(),
            seen.statements.len()
        ));
    }
    let tokens = referee::tokens(text).map_err(|e| format!("{e}: {text:?}"))?;
    for (plan, facts) in analysis.statements.iter().zip(&seen.statements) {
        if plan.range != facts.range {
            return Err(format!(
                "statement at {:?}, PostgreSQL's at {:?}: {text:?}",
                plan.range, facts.range
            ));
        }
        for edit in &plan.edits {
            let starts = tokens.iter().any(|t| t.range.start == edit.range.start);
            let ends = tokens.iter().any(|t| t.range.end == edit.range.end);
            let constant = tokens.iter().any(|t| {
                referee::is_constant(t.token)
                    && t.range.start >= edit.range.start
                    && t.range.end <= edit.range.end
            });
            if !(starts && ends && constant) {
                return Err(format!(
                    "encrypted literal at {:?} is not a PostgreSQL constant: {text:?}",
                    edit.range
                ));
            }
        }
        for n in plan.params.keys() {
            let written = format!("${n}");
            if !facts
                .params
                .iter()
                .any(|r| text.get(r.clone()) == Some(written.as_str()))
            {
                return Err(format!(
                    "bound parameter ${n} that PostgreSQL does not see: {text:?}"
                ));
            }
        }
    }
    Ok(())
}

/// A small CRM catalog (`customers` and `leads` in `public`, each with
/// encrypted `email`, `phone` and `birth_date`) and what it watches: the
/// fixture of the differential test, the fuzz target and the analysis
/// benchmark.
pub struct Fixture {
    /// The catalog.
    pub catalog: crate::catalog::Catalog,
    /// Its watched names.
    pub watched: super::analyze::Watched,
    /// The configured tables.
    pub configured: Vec<(String, String)>,
}

impl Fixture {
    /// Builds the fixture.
    pub fn crm() -> Fixture {
        use crate::catalog::{Catalog, Column, Encrypted, Relation, RelationKind, StorageState};
        use crate::config::{ColumnId, ValueType};
        let col = |table: &str, name: &str, attnum: i16, enc: Option<(&str, ValueType)>| Column {
            name: name.into(),
            attnum,
            type_name: if enc.is_some() { "bytea" } else { "int4" }.into(),
            has_default: false,
            generated: false,
            encrypted: enc.map(|(domain, value_type)| Encrypted {
                id: ColumnId {
                    schema: "public".into(),
                    table: table.into(),
                    column: name.into(),
                },
                domain: domain.into(),
                value_type,
                storage: StorageState::Bytea,
                forms: 1,
            }),
        };
        let table = |oid, name: &str| Relation {
            oid,
            schema: "public".into(),
            name: name.into(),
            kind: RelationKind::Table,
            columns: vec![
                col(name, "id", 1, None),
                col(name, "email", 2, Some(("email", ValueType::Text))),
                col(name, "phone", 3, Some(("phone", ValueType::Text))),
                col(name, "birth_date", 4, Some(("bd", ValueType::Date))),
                col(name, "score", 5, None),
            ],
            opaque: None,
            definition: None,
        };
        let catalog = Catalog::from_relations(
            vec![table(100, "customers"), table(200, "leads")],
            vec!["public".into()],
        );
        let configured: Vec<(String, String)> = ["customers", "leads"]
            .iter()
            .map(|t| ("public".to_string(), t.to_string()))
            .collect();
        let columns: Vec<(String, String, String)> = configured
            .iter()
            .flat_map(|(s, t)| {
                ["email", "phone", "birth_date"]
                    .iter()
                    .map(move |c| (s.clone(), t.clone(), c.to_string()))
            })
            .collect();
        let watched = super::analyze::Watched::new(&catalog, &configured, &columns);
        Fixture {
            catalog,
            watched,
            configured,
        }
    }

    /// Analyses `text` as a session with no prepared statements would.
    pub fn analyze(&self, text: &str) -> Analysis {
        super::analyze::analyze(
            text,
            &self.catalog,
            &self.watched,
            &self.configured,
            &std::collections::HashMap::new(),
        )
    }
}
