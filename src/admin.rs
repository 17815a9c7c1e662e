//! The operator's HTTP endpoint on `[metrics] address`: `/metrics`,
//! `/healthz` (the process serves) and `/readyz` (send clients here).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

pub use crate::shared::Health;
use crate::shared::Shared;

/// How often the upstream's TCP reachability is re-checked for `/readyz`.
pub const UPSTREAM_CHECK_INTERVAL: Duration = Duration::from_secs(3);

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
