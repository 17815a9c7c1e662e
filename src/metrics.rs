//! Prometheus metrics. One [`Metrics`] per server (no global registry), so
//! tests can run several proxies in one process.
//!
//! Labels are bounded: reasons and protocols are fixed sets, `column` is a
//! configured `schema.table.column`. No metric ever carries a value or SQL.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric family pgveil exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Clients connected now.
    pub client_connections: IntGauge,
    /// Clients accepted since start.
    pub client_connections_total: IntCounter,
    /// Clients refused, by reason (`max_connections`, `protocol`, `startup_timeout`, `upstream`).
    pub client_connections_rejected_total: IntCounterVec,
    /// Failed connects to the upstream.
    pub upstream_connect_errors_total: IntCounter,
    /// Statements by protocol and kind.
    pub statements_total: IntCounterVec,
    /// Refused statements by reason.
    pub refused_statements_total: IntCounterVec,
    /// Request to ReadyForQuery, by protocol.
    pub statement_duration_seconds: HistogramVec,
    /// Time pgveil itself spent per statement.
    pub proxy_overhead_seconds: Histogram,
    /// Values encrypted, by configured column.
    pub values_encrypted_total: IntCounterVec,
    /// Values decrypted, by configured column.
    pub values_decrypted_total: IntCounterVec,
    /// Stored values that failed to decrypt, by configured column.
    pub decrypt_errors_total: IntCounterVec,
    /// Plaintext values read through from `migrating` columns, by column.
    pub plaintext_values_read_total: IntCounterVec,
    /// Statement analysis served from cache.
    pub plan_cache_hits_total: IntCounter,
    /// Statement analysis computed.
    pub plan_cache_misses_total: IntCounter,
    /// Config reloads by result.
    pub config_reloads_total: IntCounterVec,
    /// Catalog loads by result (`changed`, `unchanged`, `failed`).
    pub catalog_loads_total: IntCounterVec,
    /// Catalog change notifications received from the database.
    pub catalog_notifications_total: IntCounter,
    /// Bytes relayed, by direction (`client_to_server`, `server_to_client`).
    pub bytes_total: IntCounterVec,
    /// 1 while `/readyz` would answer 200.
    pub ready: IntGauge,
    /// `listen.max_connections`.
    pub max_client_connections: IntGauge,
    /// TLS handshakes by hop (`client`, `upstream`) and result (`ok`, `error`).
    pub tls_handshakes_total: IntCounterVec,
    /// Upstream connections that fell back to plaintext (`mode = "prefer"`).
    pub upstream_tls_fallbacks_total: IntCounter,
    /// Authentications pgveil terminated (`[auth] mode = "scram"`), by result
    /// (`ok`, `failed`, `lookup_error`, `upstream_error`).
    pub auth_total: IntCounterVec,
}

/// Every refusal reason, so each series exists from the start.
pub const REFUSAL_REASONS: &[&str] = &[
    "pattern",
    "order",
    "function",
    "mixed_domains",
    "plaintext_comparison",
    "storage",
    "unparsed",
    "copy",
    "extended",
    "view_write",
    "unsupported",
    "invalid_value",
    "catalog",
    "reload",
    "migrating",
];

impl Metrics {
    /// Creates and registers every family.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("pgveil_build_info", "pgveil build information"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;

        let m = Metrics {
            client_connections: IntGauge::new(
                "pgveil_client_connections",
                "Client connections open now",
            )?,
            client_connections_total: IntCounter::new(
                "pgveil_client_connections_total",
                "Client connections accepted",
            )?,
            client_connections_rejected_total: IntCounterVec::new(
                Opts::new(
                    "pgveil_client_connections_rejected_total",
                    "Client connections refused, by reason",
                ),
                &["reason"],
            )?,
            upstream_connect_errors_total: IntCounter::new(
                "pgveil_upstream_connect_errors_total",
                "Failed connection attempts to the upstream PostgreSQL",
            )?,
            statements_total: IntCounterVec::new(
                Opts::new("pgveil_statements_total", "Statements by protocol and kind"),
                &["protocol", "kind"],
            )?,
            refused_statements_total: IntCounterVec::new(
                Opts::new(
                    "pgveil_refused_statements_total",
                    "Statements refused, by reason",
                ),
                &["reason"],
            )?,
            statement_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "pgveil_statement_duration_seconds",
                    "Time from the client's request to ReadyForQuery",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 10)?),
                &["protocol"],
            )?,
            proxy_overhead_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "pgveil_proxy_overhead_seconds",
                    "Time pgveil spent analysing, rewriting, encrypting and decrypting per statement",
                )
                .buckets(prometheus::exponential_buckets(0.000001, 4.0, 10)?),
            )?,
            values_encrypted_total: IntCounterVec::new(
                Opts::new("pgveil_values_encrypted_total", "Values encrypted, by column"),
                &["column"],
            )?,
            values_decrypted_total: IntCounterVec::new(
                Opts::new("pgveil_values_decrypted_total", "Values decrypted, by column"),
                &["column"],
            )?,
            decrypt_errors_total: IntCounterVec::new(
                Opts::new(
                    "pgveil_decrypt_errors_total",
                    "Stored values that failed to decrypt, by column",
                ),
                &["column"],
            )?,
            plaintext_values_read_total: IntCounterVec::new(
                Opts::new(
                    "pgveil_plaintext_values_read_total",
                    "Plaintext values read through from columns marked migrating, by column",
                ),
                &["column"],
            )?,
            plan_cache_hits_total: IntCounter::new(
                "pgveil_plan_cache_hits_total",
                "Statement analyses served from the plan cache",
            )?,
            plan_cache_misses_total: IntCounter::new(
                "pgveil_plan_cache_misses_total",
                "Statement analyses computed",
            )?,
            config_reloads_total: IntCounterVec::new(
                Opts::new("pgveil_config_reloads_total", "Configuration reloads, by result"),
                &["result"],
            )?,
            catalog_loads_total: IntCounterVec::new(
                Opts::new(
                    "pgveil_catalog_loads_total",
                    "Catalog reads from the database, by result: changed, unchanged (same facts as before), failed",
                ),
                &["result"],
            )?,
            catalog_notifications_total: IntCounter::new(
                "pgveil_catalog_notifications_total",
                "Schema change notifications received from the event trigger of pgveil guard --apply",
            )?,
            bytes_total: IntCounterVec::new(
                Opts::new("pgveil_bytes_total", "Bytes relayed, by direction"),
                &["direction"],
            )?,
            ready: IntGauge::new("pgveil_ready", "1 while /readyz answers 200")?,
            max_client_connections: IntGauge::new(
                "pgveil_max_client_connections",
                "Configured listen.max_connections",
            )?,
            tls_handshakes_total: IntCounterVec::new(
                Opts::new(
                    "pgveil_tls_handshakes_total",
                    "TLS handshakes, by hop and result",
                ),
                &["side", "result"],
            )?,
            upstream_tls_fallbacks_total: IntCounter::new(
                "pgveil_upstream_tls_fallbacks_total",
                "Upstream connections made in plaintext because the server refused TLS (mode prefer)",
            )?,
            auth_total: IntCounterVec::new(
                Opts::new(
                    "pgveil_auth_total",
                    "Client authentications terminated by pgveil (auth mode scram), by result",
                ),
                &["result"],
            )?,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.client_connections.clone()))?;
        r.register(Box::new(m.client_connections_total.clone()))?;
        r.register(Box::new(m.client_connections_rejected_total.clone()))?;
        r.register(Box::new(m.upstream_connect_errors_total.clone()))?;
        r.register(Box::new(m.statements_total.clone()))?;
        r.register(Box::new(m.refused_statements_total.clone()))?;
        r.register(Box::new(m.statement_duration_seconds.clone()))?;
        r.register(Box::new(m.proxy_overhead_seconds.clone()))?;
        r.register(Box::new(m.values_encrypted_total.clone()))?;
        r.register(Box::new(m.values_decrypted_total.clone()))?;
        r.register(Box::new(m.decrypt_errors_total.clone()))?;
        r.register(Box::new(m.plaintext_values_read_total.clone()))?;
        r.register(Box::new(m.plan_cache_hits_total.clone()))?;
        r.register(Box::new(m.plan_cache_misses_total.clone()))?;
        r.register(Box::new(m.config_reloads_total.clone()))?;
        r.register(Box::new(m.catalog_loads_total.clone()))?;
        r.register(Box::new(m.catalog_notifications_total.clone()))?;
        r.register(Box::new(m.bytes_total.clone()))?;
        r.register(Box::new(m.ready.clone()))?;
        r.register(Box::new(m.max_client_connections.clone()))?;
        r.register(Box::new(m.tls_handshakes_total.clone()))?;
        r.register(Box::new(m.upstream_tls_fallbacks_total.clone()))?;
        r.register(Box::new(m.auth_total.clone()))?;
        for side in ["client", "upstream"] {
            for result in ["ok", "error"] {
                m.tls_handshakes_total.with_label_values(&[side, result]);
            }
        }
        for result in ["ok", "failed", "lookup_error", "upstream_error"] {
            m.auth_total.with_label_values(&[result]);
        }
        for reason in REFUSAL_REASONS {
            m.refused_statements_total.with_label_values(&[reason]);
        }
        for direction in ["client_to_server", "server_to_client"] {
            m.bytes_total.with_label_values(&[direction]);
        }
        // Pre-create the fixed label sets so dashboards see zeros, not gaps.
        for reason in [
            "max_connections",
            "protocol",
            "startup_timeout",
            "upstream",
            "tls",
            "tls_required",
            "auth",
        ] {
            m.client_connections_rejected_total
                .with_label_values(&[reason]);
        }
        for protocol in ["simple", "extended"] {
            for kind in ["passthrough", "rewritten", "refused"] {
                m.statements_total.with_label_values(&[protocol, kind]);
            }
        }
        for result in ["ok", "error"] {
            m.config_reloads_total.with_label_values(&[result]);
        }
        for result in ["changed", "unchanged", "failed"] {
            m.catalog_loads_total.with_label_values(&[result]);
        }
        Ok(m)
    }

    /// Creates the per-column series of configured columns, so they read 0
    /// before their first event.
    pub fn declare_columns<'a>(&self, columns: impl Iterator<Item = &'a str>) {
        for c in columns {
            self.values_encrypted_total.with_label_values(&[c]);
            self.values_decrypted_total.with_label_values(&[c]);
            self.decrypt_errors_total.with_label_values(&[c]);
            self.plaintext_values_read_total.with_label_values(&[c]);
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_names() {
        let m = Metrics::new().unwrap();
        m.client_connections_total.inc();
        let text = m.render();
        for name in [
            "pgveil_build_info",
            "pgveil_client_connections ",
            "pgveil_client_connections_total 1",
            "pgveil_client_connections_rejected_total",
            "pgveil_upstream_connect_errors_total",
            "pgveil_statements_total",
            "pgveil_config_reloads_total",
            "pgveil_catalog_loads_total{result=\"unchanged\"} 0",
            "pgveil_catalog_notifications_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn two_instances_do_not_collide() {
        let a = Metrics::new().unwrap();
        let b = Metrics::new().unwrap();
        a.client_connections_total.inc();
        assert!(b.render().contains("pgveil_client_connections_total 0"));
    }
}
