//! Statements prepared unanalysed (they named nothing encrypted) are
//! re-planned by PostgreSQL from their text when a relation they name
//! changes: names resolve again, and may now resolve to a child or
//! partition of a configured table. Before such a statement runs again
//! after a catalog change, its text is scanned against the current
//! catalog; if it now names anything watched, it is refused.

use std::sync::Arc;

use tokio::io::AsyncWrite;

use super::catalog::{ensure_catalog, watched_for};
use super::extended::Statement;
use super::state::Veil;
use crate::catalog::Catalog;
use crate::protocol::messages::extended;
use crate::session::SessionError;
use crate::sql::{Refusal, scan};

/// The refusal for a statement prepared before the tables it names
/// changed (its encryption would now differ).
fn refusal(name: &str) -> Refusal {
    Refusal::general(
        format!(
            "prepared statement \"{name}\" was prepared before the tables it names changed, and would now be encrypted differently; prepare it again"
        ),
        "unsupported",
    )
}

/// `EXECUTE` of SQL prepared statements named in `text` that were
/// prepared unanalysed under an older catalog.
pub(super) fn replanned_sql(
    veil: &Veil,
    text: &str,
    catalog: Option<&Arc<Catalog>>,
) -> Option<Refusal> {
    let catalog = catalog?;
    let lower = text.to_lowercase();
    let words: std::collections::HashSet<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .collect();
    let changed: Vec<(String, Arc<str>)> = {
        let st = veil.state();
        st.plain_prepared
            .iter()
            .filter(|(name, (_, generation))| {
                *generation != catalog.generation && words.contains(name.as_str())
            })
            .map(|(name, (prepare, _))| (name.clone(), prepare.clone()))
            .collect()
    };
    let enc = veil.shared.encryption();
    let watched = watched_for(veil, Some(catalog), &enc);
    for (name, prepare) in changed {
        if scan::needs_analysis(&prepare, &watched, &[]) {
            return Some(refusal(&name));
        }
        if let Some(entry) = veil.state().plain_prepared.get_mut(&name) {
            entry.1 = catalog.generation;
        }
    }
    None
}

/// Bind of a protocol statement parsed under an older catalog: one parsed
/// unanalysed must still name nothing watched, one analysed must bind its
/// parameters to the same encrypted columns and have no refusal now.
/// Outside a batch the current catalog is loaded first if it is not
/// cached (a Bind of a hot prepared statement is the first message of its
/// batch), except for the unnamed statement, which the load's own Query
/// would destroy; then the check waits for a catalog a later statement
/// loads.
pub(super) async fn replanned_protocol<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
    name: &str,
    statement: &Statement,
) -> Option<Refusal> {
    let parsed_with = statement.catalog.as_ref()?.generation;
    let mut current = veil.cached_catalog();
    if current.is_none() && !name.is_empty() && !veil.state().ext.in_batch {
        current = ensure_catalog(veil, writer).await;
    }
    let current = current?;
    if current.generation == parsed_with {
        return None;
    }
    let enc = veil.shared.encryption();
    let watched = watched_for(veil, Some(&current), &enc);
    if !statement.analyzed {
        return scan::needs_analysis(&statement.sql, &watched, &[]).then(|| refusal(name));
    }
    let prepared = veil.state().prepared.clone();
    let analysis = crate::sql::analyze(
        &statement.sql,
        &current,
        &watched,
        &enc.configured,
        &prepared,
    );
    let now: Vec<(usize, String)> = match (&analysis.refusal, analysis.statements.first()) {
        (None, Some(plan)) => plan
            .params
            .iter()
            .map(|(n, b)| (*n, b.column.id.to_string()))
            .collect(),
        _ => return Some(refusal(name)),
    };
    let then: Vec<(usize, String)> = statement
        .params
        .iter()
        .enumerate()
        .filter_map(|(i, b)| b.as_ref().map(|b| (i + 1, b.column.id.to_string())))
        .collect();
    (now != then).then(|| refusal(name))
}

/// Why a Bind's statement must not run: PostgreSQL would re-plan it into
/// encrypted tables (see `replan.rs`).
pub(super) async fn replanned_bind<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
    frame: &[u8],
) -> Result<Option<Refusal>, SessionError> {
    let bind = extended::decode_bind(frame)
        .map_err(|e| SessionError::Protocol(format!("malformed Bind: {e}")))?;
    let statement = veil.state().ext.statements.get(bind.statement).cloned();
    Ok(match statement {
        Some(s) => replanned_protocol(veil, writer, bind.statement, &s).await,
        None => None,
    })
}
