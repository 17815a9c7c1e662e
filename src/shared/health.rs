//! Readiness inputs for `/readyz`: the server marks draining, the
//! upstream checker records reachability. Kept with the shared state (not
//! in [`crate::admin`], which serves them and re-exports the type) so that
//! [`super::Shared`] holds them without depending on the HTTP endpoint.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness inputs, updated by the server and the upstream checker.
#[derive(Debug)]
pub struct Health {
    draining: AtomicBool,
    upstream_ok: AtomicBool,
    upstream_error: Mutex<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            draining: AtomicBool::new(false),
            upstream_ok: AtomicBool::new(false),
            upstream_error: Mutex::new("upstream not checked yet".into()),
        }
    }
}

impl Health {
    /// Marks the process as draining: `/readyz` turns 503.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Records the result of an upstream check.
    pub fn set_upstream(&self, result: Result<(), String>) {
        match result {
            Ok(()) => self.upstream_ok.store(true, Ordering::Relaxed),
            Err(e) => {
                if let Ok(mut slot) = self.upstream_error.lock() {
                    *slot = e;
                }
                self.upstream_ok.store(false, Ordering::Relaxed);
            }
        }
    }

    /// `Ok` when ready, else a one-line reason.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining: shutting down".into());
        }
        if !self.upstream_ok.load(Ordering::Relaxed) {
            let reason = self
                .upstream_error
                .lock()
                .map(|s| s.clone())
                .unwrap_or_else(|_| "upstream unreachable".into());
            return Err(reason);
        }
        Ok(())
    }
}
