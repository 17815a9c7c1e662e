//! The plan cache: analyses shared by every session of a server.

use std::collections::HashMap;
use std::sync::Arc;

use super::Shared;
use crate::catalog::{Catalog, Encrypted};
use crate::sql::analyze::Watched;
use crate::sql::{Analysis, analyze};

/// Least-recently-used cache of analyses: a hot statement is analysed once
/// per process, whichever session sends it.
#[derive(Default)]
pub(super) struct PlanCache {
    /// Analysis and last-use stamp by key.
    map: HashMap<PlanKey, (Arc<Analysis>, u64)>,
    /// Keys by last-use stamp, oldest first.
    order: std::collections::BTreeMap<u64, PlanKey>,
    clock: u64,
}

/// Catalog generation (database, user or search_path, configuration) and
/// statement text: everything an analysis depends on.
type PlanKey = (u64, String);

impl PlanCache {
    fn get(&mut self, key: &PlanKey) -> Option<Arc<Analysis>> {
        self.clock += 1;
        let clock = self.clock;
        let (analysis, stamp) = self.map.get_mut(key)?;
        let old = std::mem::replace(stamp, clock);
        if let Some(k) = self.order.remove(&old) {
            self.order.insert(clock, k);
        }
        Some(analysis.clone())
    }

    fn insert(&mut self, key: PlanKey, analysis: Arc<Analysis>) {
        self.clock += 1;
        while self.map.len() >= PLAN_CACHE_ENTRIES {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.map.remove(&oldest);
        }
        if let Some((_, old)) = self.map.insert(key.clone(), (analysis, self.clock)) {
            self.order.remove(&old);
        }
        self.order.insert(self.clock, key);
    }
}

/// Entries kept in the plan cache.
const PLAN_CACHE_ENTRIES: usize = 4096;
/// Statements longer than this are analysed every time, not cached.
const PLAN_CACHE_MAX_TEXT: usize = 16 * 1024;

impl Shared {
    /// Analyses `text`, or returns the cached analysis of the same text
    /// against the same catalog. Statements whose analysis depends on the
    /// session (SQL prepared statements) are not cached.
    pub fn analyze_cached(
        &self,
        text: &str,
        catalog: &Catalog,
        watched: &Watched,
        configured: &[(String, String)],
        prepared: &HashMap<String, Vec<Option<Encrypted>>>,
    ) -> Arc<Analysis> {
        // Only prepared statements the text names (EXECUTE) affect the
        // analysis; a statement naming none is cacheable.
        let named: HashMap<String, Vec<Option<Encrypted>>> = if prepared.is_empty() {
            HashMap::new()
        } else {
            let lower = text.to_lowercase();
            let words: std::collections::HashSet<&str> = lower
                .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
                .collect();
            prepared
                .iter()
                .filter(|(k, _)| words.contains(k.to_lowercase().as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let cacheable =
            named.is_empty() && catalog.generation != 0 && text.len() <= PLAN_CACHE_MAX_TEXT;
        let key = (catalog.generation, text.to_string());
        if cacheable && let Some(hit) = self.plans.lock().ok().and_then(|mut c| c.get(&key)) {
            self.metrics.plan_cache_hits_total.inc();
            return hit;
        }
        self.metrics.plan_cache_misses_total.inc();
        let analysis = Arc::new(analyze(text, catalog, watched, configured, &named));
        let session_specific = analysis
            .statements
            .iter()
            .any(|s| s.prepared.is_some() || s.deallocated.is_some());
        if cacheable
            && !analysis.stale
            && !session_specific
            && let Ok(mut cache) = self.plans.lock()
        {
            cache.insert(key, analysis.clone());
        }
        analysis
    }
}
