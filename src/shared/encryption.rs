//! The settings a configuration reload may change, taken as one snapshot.

use std::sync::Arc;

use super::ServerError;
use crate::catalog;
use crate::config::Config;
use crate::crypto::Keyring;
use crate::metrics::Metrics;

/// The settings a reload may change, taken together so a session always
/// sees one consistent snapshot.
pub struct Encryption {
    /// Counts reloads; sessions compare it to notice one.
    pub generation: u64,
    /// The config these settings came from (its `[[encrypt]]` list drives
    /// the catalog query).
    pub config: Config,
    /// Ciphers of the configured columns; `None` when none are configured.
    pub keyring: Option<Arc<Keyring>>,
    /// Configured `(schema, table)` names.
    pub configured: Vec<(String, String)>,
    /// Configured columns as `(schema, table, column)`.
    pub encrypted_columns: Vec<(String, String, String)>,
    /// The encrypted columns with their types, domains and storage: equal
    /// across a reload that changes none of them.
    pub columns_signature: String,
}

impl Encryption {
    /// Loads keys and derives ciphers for a config.
    pub fn from_config(config: Config, generation: u64) -> Result<Encryption, ServerError> {
        let keyring = if config.encrypt.is_empty() {
            if config.keys.is_some() {
                // Load anyway: a wrong or unreadable key must stop the start.
                Keyring::from_config(&config).map_err(ServerError::Keys)?;
            }
            None
        } else {
            Some(Arc::new(
                Keyring::from_config(&config).map_err(ServerError::Keys)?,
            ))
        };
        let configured = catalog::configured_tables(&config);
        let encrypted_columns = config
            .encrypt
            .iter()
            .map(|c| {
                let id = c.id();
                (id.schema, id.table, id.column)
            })
            .collect();
        let mut entries: Vec<String> = config
            .encrypt
            .iter()
            .map(|c| {
                format!(
                    "{}:{}:{}:{:?}:{}:{:?}",
                    c.id(),
                    c.value_type.name(),
                    c.domain_name(),
                    c.storage,
                    c.migrating,
                    config.domain_key_versions(&c.domain_name())
                )
            })
            .collect();
        entries.sort();
        // Each domain's key versions are in its entries: a statement
        // prepared for one stored form per value must not run once there
        // are two.
        let columns_signature = entries.join(";");
        Ok(Encryption {
            generation,
            columns_signature,
            config,
            keyring,
            configured,
            encrypted_columns,
        })
    }
}

/// Declares the encrypted columns' metric series.
pub(super) fn declare_columns(metrics: &Metrics, encryption: &Encryption) {
    let names: Vec<String> = encryption
        .encrypted_columns
        .iter()
        .map(|(s, t, c)| format!("{s}.{t}.{c}"))
        .collect();
    metrics.declare_columns(names.iter().map(String::as_str));
}
