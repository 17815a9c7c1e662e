//! The catalog a session judges statements against: loaded on the
//! client's own upstream connection (so it sees what the client sees),
//! with view columns mapped to the base columns they show, and the names
//! that send a statement to the analyzer.

use std::sync::Arc;

use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::state::{CatalogLoad, Listen, Pending, Veil};
use crate::catalog::{self, Catalog};
use crate::protocol::messages::query;
use crate::shared::Encryption;
use crate::sql::analyze::{Watched, view_columns};

/// pgveil's `LISTEN`, on the channel the event trigger of `pgveil guard
/// --apply` notifies at the commit of any DDL.
const LISTEN: &str = "LISTEN pgveil_catalog";

/// How many times a load is repeated when another session's DDL ends
/// while it runs (the load may predate that DDL).
const LOAD_ATTEMPTS: usize = 3;

/// Loads the catalog for this session's database: the caller found none
/// it may use in [`Veil::cached_catalog`] (which, for a catalog that aged
/// out, answers `None` to one caller only: that one must load). `None`
/// when it cannot be loaded (then statements needing analysis are
/// refused).
pub(super) async fn ensure_catalog<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
) -> Option<Arc<Catalog>> {
    if veil.state().ext.in_batch {
        // A Query inside an unsynced extended-protocol batch would run in
        // its implicit transaction, or be skipped after an error in it.
        return None;
    }
    let mut last = None;
    for _ in 0..LOAD_ATTEMPTS {
        let epoch = veil.shared.catalog_epoch();
        let Some(loaded) = load_catalog(veil, writer).await else {
            veil.shared
                .metrics
                .catalog_loads_total
                .with_label_values(&["failed"])
                .inc();
            return None;
        };
        let catalog = Arc::new(loaded);
        if veil.keep_catalog(catalog.clone(), epoch) {
            return Some(catalog);
        }
        last = Some(catalog);
    }
    // Catalogs keep changing under this session: the last load is used
    // for this statement only.
    last
}

/// Runs pgveil's catalog queries on the session's connection and builds
/// the catalog from their rows.
async fn load_catalog<W: AsyncWrite + Unpin>(veil: &Veil, writer: &mut W) -> Option<Catalog> {
    let enc = veil.shared.encryption();
    let config = &enc.config;
    let path = run_catalog_query(veil, writer, catalog::PATH_QUERY).await?;
    let saved = catalog::saved_path(&path)?.to_string();
    if saved.contains('\u{FFFD}') {
        // Not UTF-8 as the server sent it: restoring it from this text
        // would change it.
        warn!(database = %veil.database, "search_path is not valid UTF-8: catalog not loaded");
        return None;
    }
    let load = run_catalog_query(veil, writer, &catalog::load_query(config, &saved)).await?;
    let Some(rows) = catalog::catalog_results(path, load) else {
        warn!(database = %veil.database, "catalog query answered with other result sets than it has statements");
        return None;
    };
    let mut catalog = match Catalog::build(config, &rows) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "catalog rows unexpected");
            return None;
        }
    };
    map_views(&mut catalog, &enc);
    for id in &catalog.inactive {
        info!(database = %veil.database, column = %id, "configured column not present in this database; inactive until it is created");
    }
    for id in &catalog.nondeterministic {
        warn!(database = %veil.database, column = %id, "configured column has a nondeterministic collation: statements on it are refused until it has a deterministic one");
    }
    for id in &catalog.defaults {
        warn!(database = %veil.database, column = %id, "configured column has a DEFAULT: the database stores that default in plaintext");
    }
    catalog.source = (rows, enc.generation);
    let previous = veil.shared.catalog_previous(&veil.key());
    let (generation, result) = match previous {
        // Nothing changed: analyses and prepared statements judged by the
        // previous load stay valid.
        Some(p) if p.source == catalog.source => (p.generation, "unchanged"),
        _ => (veil.shared.next_catalog_generation(), "changed"),
    };
    catalog.generation = generation;
    veil.shared
        .metrics
        .catalog_loads_total
        .with_label_values(&[result])
        .inc();
    Some(catalog)
}

/// Sends one of pgveil's own Queries on the session's connection and waits
/// for its result sets (the server pump consumes them, never forwards).
async fn run_catalog_query<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
    text: &str,
) -> Option<Vec<catalog::Rows>> {
    let (tx, rx) = oneshot::channel();
    veil.state()
        .pending
        .push_back(Pending::Catalog(CatalogLoad::new(Some(tx))));
    if crate::session::write_flush(writer, &query::encode(text))
        .await
        .is_err()
    {
        return None;
    }
    match rx.await {
        Ok(Ok(rows)) => Some(rows),
        Ok(Err(e)) => {
            warn!(database = %veil.database, error = %e, "catalog query failed");
            None
        }
        Err(_) => None,
    }
}

/// Appends pgveil's `LISTEN` for schema change notifications to `out`,
/// ahead of the client's next request: nobody waits for its answer, which
/// the server pump consumes and which says whether the session listens
/// (a hot standby refuses `LISTEN`). Only while the session is idle: a
/// `LISTEN` inside a transaction block would wait for its end.
pub(super) fn listen(veil: &Veil, out: &mut bytes::BytesMut) {
    let mut st = veil.state();
    st.listen = Listen::Sent;
    st.pending
        .push_back(Pending::Catalog(CatalogLoad::listen()));
    out.extend_from_slice(&query::encode(LISTEN));
}

/// Maps view columns to base columns; views pgveil cannot follow become opaque.
fn map_views(catalog: &mut Catalog, shared: &Encryption) {
    let watched = Watched::new(catalog, &shared.configured, &shared.encrypted_columns);
    let definitions: Vec<(usize, String)> = catalog
        .relations_mut()
        .iter_mut()
        .enumerate()
        .filter_map(|(i, r)| r.definition.take().map(|d| (i, d)))
        .collect();
    // Views over views: map again with what the previous pass learned,
    // until nothing changes (bounded by the number of views).
    for _ in 0..=definitions.len() {
        let snapshot = catalog.clone();
        let mut changed = false;
        for (i, def) in &definitions {
            let Some(rel) = catalog.relations_mut().get_mut(*i) else {
                continue;
            };
            match view_columns(def, &snapshot, &watched, &shared.configured) {
                Ok(cols) => {
                    for (c, enc) in rel.columns.iter_mut().zip(cols) {
                        if c.encrypted != enc {
                            c.encrypted = enc;
                            changed = true;
                        }
                    }
                    rel.opaque = None;
                }
                Err(r) => {
                    if rel.opaque.is_none() {
                        changed = true;
                    }
                    rel.opaque = Some(r.operation.clone());
                }
            }
        }
        if !changed {
            break;
        }
    }
}

/// The names that send a statement to the analyzer, for this catalog and
/// configuration, cached in the session.
pub(super) fn watched_for(
    veil: &Veil,
    catalog: Option<&Arc<Catalog>>,
    enc: &Encryption,
) -> Arc<Watched> {
    let key = (catalog.map_or(0, |c| c.generation), enc.generation);
    if let Some((k, w)) = &veil.state().watched
        && *k == key
        && key.0 != 0
    {
        return w.clone();
    }
    let empty = Catalog::default();
    let w = Arc::new(Watched::new(
        catalog.map_or(&empty, |c| c.as_ref()),
        &enc.configured,
        &enc.encrypted_columns,
    ));
    veil.state().watched = Some((key, w.clone()));
    w
}

#[cfg(test)]
mod tests {
    #[test]
    fn listens_on_the_channel_the_trigger_notifies() {
        assert_eq!(
            super::LISTEN,
            format!("LISTEN {}", crate::catalog::CHANGE_CHANNEL)
        );
    }
}
