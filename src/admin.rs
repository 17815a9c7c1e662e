//! The operator's HTTP endpoint on `[metrics] address`: `/metrics`,
//! `/healthz` (the process serves) and `/readyz` (send clients here).

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::server::Shared;

/// How often the upstream's TCP reachability is re-checked for `/readyz`.
pub const UPSTREAM_CHECK_INTERVAL: Duration = Duration::from_secs(3);

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

/// Serves the endpoint until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let checker = tokio::spawn(check_upstream_forever(shared.clone()));
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(shared);
    if let Ok(addr) = listener.local_addr() {
        info!(address = %addr, "metrics and health endpoint serving");
    }
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        warn!(error = %e, "metrics endpoint stopped");
    }
    checker.abort();
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let readiness = shared.health.readiness();
    shared.metrics.ready.set(i64::from(readiness.is_ok()));
    match readiness {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

async fn check_upstream_forever(shared: Arc<Shared>) {
    let address = shared.config.upstream.address.get_ref().clone();
    let timeout = Duration::from_millis(shared.config.upstream.connect_timeout_ms)
        .min(UPSTREAM_CHECK_INTERVAL);
    loop {
        let result = match tokio::time::timeout(timeout, TcpStream::connect(address.as_str())).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("upstream {address} unreachable: {e}")),
            Err(_) => Err(format!("upstream {address} unreachable: connect timed out")),
        };
        shared.health.set_upstream(result);
        shared
            .metrics
            .ready
            .set(i64::from(shared.health.readiness().is_ok()));
        tokio::time::sleep(UPSTREAM_CHECK_INTERVAL).await;
    }
}
