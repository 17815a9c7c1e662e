//! The catalogs sessions judge statements by, cached per (database, user)
//! and shared by every session of this process.
//!
//! A cached catalog is trusted until something says it may be out of
//! date: DDL through pgveil, a change notification from the event trigger
//! `pgveil guard --apply` installs (DDL made anywhere in the database), or
//! its age passing `[catalog] max_age_ms` (changes nothing reported). A
//! catalog that may be out of date is kept, marked stale, so that the next
//! load can tell whether anything really changed: an identical one keeps
//! its generation, and with it every analysis cached against it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::catalog::Catalog;

/// Cache key: (database, user), or a session's private key.
pub type CatalogKey = (String, String);

struct Entry {
    catalog: Arc<Catalog>,
    loaded: Instant,
    /// Something changed since it was loaded, or may have.
    stale: bool,
    /// A session is re-reading it because it aged out, since then: the
    /// others go on with it meanwhile, instead of all re-reading at once.
    refreshing: Option<Instant>,
}

/// The cache with its counters.
pub(super) struct Catalogs {
    entries: Mutex<HashMap<CatalogKey, Entry>>,
    generation: AtomicU64,
    /// Bumped by every invalidation: a load that started before one must
    /// not be cached (it may predate the change that caused it).
    epoch: AtomicU64,
    /// `[catalog] max_age_ms` (0: no limit); follows SIGHUP.
    max_age_ms: AtomicU64,
    /// Sessions listening for change notifications, by database.
    listeners: Mutex<HashMap<String, usize>>,
}

/// How a lookup treats a catalog older than the maximum age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Age {
    /// Only a catalog within the maximum age: the caller can load.
    Fresh,
    /// Any catalog not known to be out of date: the caller cannot load
    /// now (inside an unsynced batch, reading results of statements
    /// already judged).
    Any,
}

impl Catalogs {
    pub(super) fn new(max_age_ms: u64) -> Catalogs {
        Catalogs {
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            epoch: AtomicU64::new(0),
            max_age_ms: AtomicU64::new(max_age_ms),
            listeners: Mutex::new(HashMap::new()),
        }
    }

    /// A session of `database` listens now.
    pub(super) fn listener_added(&self, database: &str) {
        if let Ok(mut map) = self.listeners.lock() {
            *map.entry(database.to_string()).or_default() += 1;
        }
    }

    /// A session of `database` stopped listening. When it was the last,
    /// nothing reports changes any more: the database's catalogs are out
    /// of date from now on (the next session reads them again, after its
    /// own `LISTEN`).
    pub(super) fn listener_removed(&self, database: &str) {
        let last = match self.listeners.lock() {
            Ok(mut map) => match map.get_mut(database) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    map.remove(database);
                    true
                }
                None => false,
            },
            Err(_) => true,
        };
        if last {
            self.invalidate(database);
        }
    }

    pub(super) fn set_max_age(&self, ms: u64) {
        self.max_age_ms.store(ms, Ordering::Relaxed);
    }

    pub(super) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The catalog under `key`, unless it may be out of date. One that
    /// aged out is `None` for one [`Age::Fresh`] caller, which re-reads
    /// it; the others get it as it is until that load is stored (or has
    /// taken as long as the maximum age, in case it failed).
    pub(super) fn get(&self, key: &CatalogKey, age: Age) -> Option<Arc<Catalog>> {
        let mut map = self.entries.lock().ok()?;
        let entry = map.get_mut(key).filter(|e| !e.stale)?;
        let max = Duration::from_millis(self.max_age_ms.load(Ordering::Relaxed));
        if age == Age::Fresh && !max.is_zero() && entry.loaded.elapsed() > max {
            let now = Instant::now();
            if entry.refreshing.is_none_or(|since| now - since > max) {
                entry.refreshing = Some(now);
                return None;
            }
        }
        Some(entry.catalog.clone())
    }

    /// The last catalog stored under `key`, stale or not: what a new load
    /// is compared with.
    pub(super) fn previous(&self, key: &CatalogKey) -> Option<Arc<Catalog>> {
        let map = self.entries.lock().ok()?;
        map.get(key).map(|e| e.catalog.clone())
    }

    pub(super) fn store(&self, key: CatalogKey, catalog: Arc<Catalog>, epoch: u64) -> bool {
        let Ok(mut map) = self.entries.lock() else {
            return false;
        };
        // Compared under the lock invalidations take too.
        if self.epoch() != epoch {
            return false;
        }
        map.insert(
            key,
            Entry {
                catalog,
                loaded: Instant::now(),
                stale: false,
                refreshing: None,
            },
        );
        true
    }

    /// Marks the catalogs of `database` stale.
    pub(super) fn invalidate(&self, database: &str) {
        if let Ok(mut map) = self.entries.lock() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            for (k, e) in map.iter_mut() {
                if k.0 == database {
                    e.stale = true;
                }
            }
        }
    }

    pub(super) fn remove(&self, key: &CatalogKey) {
        if let Ok(mut map) = self.entries.lock() {
            map.remove(key);
        }
    }

    /// Forgets every catalog: the configuration changed, so even an
    /// identical load means something else.
    pub(super) fn clear(&self) {
        if let Ok(mut map) = self.entries.lock() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(db: &str) -> CatalogKey {
        (db.to_string(), "u".to_string())
    }

    #[test]
    fn stale_catalogs_are_kept_for_comparison_only() {
        let c = Catalogs::new(0);
        let epoch = c.epoch();
        assert!(c.store(key("a"), Arc::new(Catalog::default()), epoch));
        assert!(c.store(key("b"), Arc::new(Catalog::default()), epoch));
        c.invalidate("a");
        assert!(c.get(&key("a"), Age::Any).is_none());
        assert!(c.previous(&key("a")).is_some());
        assert!(c.get(&key("b"), Age::Fresh).is_some());
        // A load that started before the invalidation is not cached.
        assert!(!c.store(key("a"), Arc::new(Catalog::default()), epoch));
        c.clear();
        assert!(c.previous(&key("b")).is_none());
    }

    #[test]
    fn the_last_listener_leaving_makes_catalogs_stale() {
        let c = Catalogs::new(0);
        c.listener_added("a");
        c.listener_added("a");
        assert!(c.store(key("a"), Arc::new(Catalog::default()), c.epoch()));
        c.listener_removed("a");
        assert!(c.get(&key("a"), Age::Fresh).is_some());
        c.listener_removed("a");
        assert!(c.get(&key("a"), Age::Fresh).is_none());
    }

    #[test]
    fn aged_catalogs_serve_only_callers_that_cannot_load() {
        let c = Catalogs::new(1);
        assert!(c.store(key("a"), Arc::new(Catalog::default()), c.epoch()));
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            c.get(&key("a"), Age::Fresh).is_none(),
            "one caller re-reads it"
        );
        assert!(
            c.get(&key("a"), Age::Fresh).is_some(),
            "the others go on meanwhile"
        );
        assert!(c.get(&key("a"), Age::Any).is_some());
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            c.get(&key("a"), Age::Fresh).is_none(),
            "a load that never came is retried"
        );
        c.set_max_age(0);
        assert!(c.get(&key("a"), Age::Fresh).is_some());
    }
}
