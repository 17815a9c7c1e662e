//! Prepared statements across their life: SQL `PREPARE`s recorded as
//! analysed, re-checked before `EXECUTE` after a configuration reload, and
//! the session ended when a reload changes the encrypted columns under a
//! statement pgveil cannot re-prepare behind the client's back.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::warn;

use super::extended;
use super::state::Veil;
use crate::catalog::{Catalog, Encrypted};
use crate::session::SessionError;
use crate::shared::Encryption;
use crate::sql::analyze::Watched;
use crate::sql::{Refusal, scan};

/// A `PREPARE` as analysed.
pub(super) struct PreparedMeta {
    generation: u64,
    /// The catalog it was analysed against: PostgreSQL re-plans a
    /// prepared statement from its text when a relation it names changes
    /// (names resolve again), so after a catalog change it is analysed
    /// again before `EXECUTE`.
    catalog: u64,
    text: String,
    summary: Vec<(std::ops::Range<usize>, String)>,
    spec: Vec<Option<Encrypted>>,
}

/// A prepared statement to re-check: name, PREPARE text, edits, parameters.
type StaleEntry = (
    String,
    String,
    Vec<(std::ops::Range<usize>, String)>,
    Vec<Option<Encrypted>>,
);

/// Where a plan encrypts and for which column: two analyses of one
/// `PREPARE` encrypt alike when these are equal.
fn edit_summary(plan: &crate::sql::StatementPlan) -> Vec<(std::ops::Range<usize>, String)> {
    plan.edits
        .iter()
        .map(|e| {
            (
                e.range.start - plan.range.start..e.range.end - plan.range.start,
                e.column.id.to_string(),
            )
        })
        .collect()
}

/// Keeps the session's map of SQL-level prepared statements current.
pub(super) fn record_prepared(
    veil: &Veil,
    text: &str,
    plans: &[crate::sql::StatementPlan],
    catalog: Option<&Catalog>,
) {
    let catalog = catalog.map_or(0, |c| c.generation);
    let generation = veil.shared.encryption().generation;
    let mut st = veil.state();
    if st.ext.skip_until_sync {
        // The server skips this message: nothing is prepared.
        return;
    }
    for plan in plans {
        if let Some((name, spec)) = &plan.prepared {
            // The name is now this SQL statement's, whatever pgveil noted
            // for it from the extended protocol before, unless this PREPARE
            // fails (the name is taken): then pgveil cannot tell which.
            let protocol = st.ext.statements.remove(name);
            let differs = st.prepared.get(name).is_some_and(|old| old != spec)
                || protocol.is_some_and(|p| {
                    p.params
                        .iter()
                        .map(|b| b.as_ref().map(|b| &b.column))
                        .collect::<Vec<_>>()
                        != spec.iter().map(Option::as_ref).collect::<Vec<_>>()
                });
            if differs {
                st.ext.conflicted.insert(name.clone());
            }
            st.prepared.insert(name.clone(), spec.clone());
            st.prepared_meta.insert(
                name.clone(),
                PreparedMeta {
                    generation,
                    catalog,
                    text: text.get(plan.range.clone()).unwrap_or_default().to_string(),
                    summary: edit_summary(plan),
                    spec: spec.clone(),
                },
            );
        }
        // DEALLOCATE is deliberately not applied: it may fail or be rolled
        // back in the database, and a name pgveil forgot while PostgreSQL
        // still holds it would let EXECUTE through unanalysed.
    }
}

/// Names `text` prepares before it executes them (an `EXECUTE` earlier
/// in the text runs the statement held before).
fn prepared_first(text: &str) -> Vec<String> {
    let Ok(referee) = crate::sql::referee::examine(text) else {
        return Vec::new();
    };
    let mut first: Vec<String> = Vec::new();
    let mut executed: Vec<String> = Vec::new();
    for facts in referee.statements {
        if facts.kind == "DeallocateStmt" {
            continue;
        }
        for name in facts.prepared {
            let seen = first.contains(&name) || executed.contains(&name);
            if seen {
                continue;
            }
            if facts.kind == "PrepareStmt" {
                first.push(name);
            } else {
                executed.push(name);
            }
        }
    }
    first
}

/// After a reload or a catalog change, a SQL prepared statement named in
/// `text` is analysed again; if it would now be encrypted differently (or
/// refused), the statement is refused (the database still holds the old
/// plan, or re-plans it against relations pgveil did not check it with),
/// so a newly encrypted column never receives plaintext through it.
pub(super) fn recheck_prepared(
    veil: &Veil,
    text: &str,
    catalog: &Catalog,
    enc: &Encryption,
) -> Option<Refusal> {
    let lower = text.to_lowercase();
    let words: std::collections::HashSet<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .collect();
    // A name this text prepares again, before any EXECUTE of it, is the
    // new statement's.
    let preparing = prepared_first(text);
    let stale: Vec<StaleEntry> = {
        let st = veil.state();
        st.prepared_meta
            .iter()
            .filter(|(name, _)| !preparing.contains(name))
            .filter(|(name, meta)| {
                (meta.generation < enc.generation || meta.catalog != catalog.generation)
                    && words.contains(name.as_str())
            })
            .map(|(name, meta)| {
                (
                    name.clone(),
                    meta.text.clone(),
                    meta.summary.clone(),
                    meta.spec.clone(),
                )
            })
            .collect()
    };
    for (name, prepare_text, summary, spec) in stale {
        let watched = Watched::new(catalog, &enc.configured, &enc.encrypted_columns);
        let analysis = crate::sql::analyze(
            &prepare_text,
            catalog,
            &watched,
            &enc.configured,
            &HashMap::new(),
        );
        let same = analysis.refusal.is_none()
            && analysis.statements.first().is_some_and(|p| {
                edit_summary(p) == summary && p.prepared.as_ref().map(|(_, s)| s) == Some(&spec)
            });
        if !same {
            return Some(Refusal::general(
                format!(
                    "prepared statement {name} was prepared before a configuration reload or a change of the tables it names that changes its encryption; DEALLOCATE and PREPARE it again"
                ),
                "reload",
            ));
        }
        if let Some(meta) = veil.state().prepared_meta.get_mut(&name) {
            meta.generation = enc.generation;
            meta.catalog = catalog.generation;
        }
    }
    None
}

/// After a configuration reload, before forwarding anything more: a
/// statement this session prepared under other encrypted columns could
/// bind plaintext into a newly encrypted column, or ciphertext where there
/// is no longer a key. pgveil cannot re-prepare it behind the client's
/// back, so it ends the session (the client reconnects and prepares again).
pub(super) fn reconcile_reload(veil: &Veil) -> Result<(), SessionError> {
    let enc = veil.shared.encryption();
    let statements: Vec<(String, Arc<extended::Statement>)> = {
        let mut st = veil.state();
        if st.generation == enc.generation {
            return Ok(());
        }
        st.generation = enc.generation;
        if st.columns_signature == enc.columns_signature {
            return Ok(());
        }
        st.columns_signature = enc.columns_signature.clone();
        if !st.prepared.is_empty() || st.unanalysed_prepare {
            warn!(target: "audit", client = %veil.peer, database = %veil.database, user = %veil.user,
                  "session ended: encrypted columns changed under SQL prepared statements");
            return Err(SessionError::Reload(
                "pgveil: configuration reloaded; encrypted columns changed under this session's prepared statements, reconnect to prepare them again".into(),
            ));
        }
        st.ext
            .statements
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let catalog = veil.cached_catalog().unwrap_or_default();
    let watched = Watched::new(&catalog, &enc.configured, &enc.encrypted_columns);
    for (name, statement) in statements {
        if statement.analyzed || scan::needs_analysis(&statement.sql, &watched, &[]) {
            warn!(target: "audit", client = %veil.peer, database = %veil.database, user = %veil.user,
                  statement = %name, "session ended: encrypted columns changed under a prepared statement");
            return Err(SessionError::Reload(format!(
                "pgveil: configuration reloaded; encrypted columns changed under prepared statement \"{name}\", reconnect to prepare it again"
            )));
        }
    }
    Ok(())
}
