//! The catalog a session judges statements against: loaded on the
//! client's own upstream connection (so it sees what the client sees),
//! with view columns mapped to the base columns they show, and the names
//! that send a statement to the analyzer.

use std::sync::Arc;

use tokio::io::AsyncWrite;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::state::{CatalogLoad, Pending, Veil};
use crate::catalog::{self, Catalog};
use crate::protocol::messages::query;
use crate::shared::Encryption;
use crate::sql::analyze::{Watched, view_columns};

/// Catalog for this session's database, loading it if needed. `None` when
/// it cannot be loaded (then statements needing analysis are refused).
pub(super) async fn ensure_catalog<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
) -> Option<Arc<Catalog>> {
    if let Some(c) = veil.shared.catalog_cached(&veil.key()) {
        return Some(c);
    }
    if veil.state().ext.in_batch {
        // A Query inside an unsynced extended-protocol batch would run in
        // its implicit transaction, or be skipped after an error in it.
        return None;
    }
    let (tx, rx) = oneshot::channel();
    veil.state()
        .pending
        .push_back(Pending::Catalog(CatalogLoad {
            results: Vec::new(),
            current: Vec::new(),
            error: None,
            done: Some(tx),
        }));
    let enc = veil.shared.encryption();
    let config = &enc.config;
    let q = query::encode(&catalog::load_query(config));
    if crate::session::write_flush(writer, &q).await.is_err() {
        return None;
    }
    let rows = match rx.await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            warn!(database = %veil.database, error = %e, "catalog query failed");
            return None;
        }
        Err(_) => return None,
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
    for id in &catalog.defaults {
        warn!(database = %veil.database, column = %id, "configured column has a DEFAULT: the database stores that default in plaintext");
    }
    catalog.generation = veil.shared.next_catalog_generation();
    let catalog = Arc::new(catalog);
    veil.shared.store_catalog(veil.key(), catalog.clone());
    Some(catalog)
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
