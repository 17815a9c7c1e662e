//! `proxy.toml`: the DBA's contract with pgveil.
//!
//! Every section rejects unknown keys, so a typo (`adress`) is an error that
//! names the key and its line instead of a silently ignored setting. Checks
//! that span several keys (one type per key domain, no column configured
//! twice) run after parsing and still name the offending line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// Errors from loading or validating a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path that was tried.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key, or a value of the wrong shape.
    /// toml's message already names the line, the column and the key.
    #[error("{path}: {message}")]
    Parse {
        /// Path of the file.
        path: String,
        /// toml's rendering, which includes line and key.
        message: String,
    },
    /// A semantic error found after parsing.
    #[error("{path}: line {line}: {key}: {message}")]
    Invalid {
        /// Path of the file.
        path: String,
        /// 1-based line of the offending key.
        line: usize,
        /// Dotted key, such as `encrypt[2].type`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Default `listen.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// PostgreSQL's own limit on any message (`PQ_LARGE_MESSAGE_LIMIT`, 1 GiB).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 1 << 30;
/// Frames pgveil must hold whole to inspect or rewrite are capped lower:
/// this much memory per client is the worst case an attacker can force.
pub const DEFAULT_MAX_INSPECTED_FRAME_BYTES: u32 = 64 << 20;

/// The whole `proxy.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[listen]`: where clients connect.
    pub listen: Listen,
    /// `[upstream]`: the PostgreSQL server.
    pub upstream: Upstream,
    /// `[keys]`: where the master key comes from.
    #[serde(default)]
    pub keys: Option<Keys>,
    /// `[metrics]`: HTTP endpoint for Prometheus and health checks.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// `[log]`.
    #[serde(default)]
    pub log: Log,
    /// `[policy]`.
    #[serde(default)]
    pub policy: Policy,
    /// `[limits]`: protocol size limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// `[auth]`: how client authentication is handled.
    #[serde(default)]
    pub auth: Auth,
    /// `[catalog]`: how long pgveil trusts what it read of the schema.
    #[serde(default)]
    pub catalog: CatalogSettings,
    /// `[[encrypt]]`: the configured columns.
    #[serde(default)]
    pub encrypt: Vec<EncryptColumn>,
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// `host:port` to bind.
    pub address: Spanned<String>,
    /// Clients served at once; one more gets PostgreSQL's 53300.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// `[listen.tls]`.
    #[serde(default)]
    pub tls: Option<ListenTls>,
}

/// `[listen.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Refuse clients that do not negotiate TLS.
    #[serde(default)]
    pub required: bool,
    /// PEM CA bundle for client certificates.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[upstream]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port` of PostgreSQL; DNS names allowed.
    pub address: Spanned<String>,
    /// TCP connect timeout.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// `[upstream.tls]`.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

/// `[upstream.tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// libpq `sslmode`; `verify-full` when the section is present.
    #[serde(default)]
    pub mode: Option<UpstreamTlsMode>,
    /// PEM CA bundle to verify the server.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Name to verify; default the host in `upstream.address`.
    #[serde(default)]
    pub server_name: Option<String>,
}

impl UpstreamTls {
    /// The mode in force: `verify-full` unless set.
    pub fn mode(&self) -> UpstreamTlsMode {
        self.mode.unwrap_or(UpstreamTlsMode::VerifyFull)
    }

    /// The name the server certificate must carry: `server_name`, else the
    /// host part of `upstream.address` (brackets of an IPv6 literal removed).
    pub fn server_name(&self, address: &str) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    }
}

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTlsMode {
    /// Never TLS.
    Disable,
    /// TLS when offered, else plaintext (logged).
    Prefer,
    /// TLS, no verification.
    Require,
    /// TLS, chain verified.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl UpstreamTlsMode {
    /// The name as written in `proxy.toml` (libpq's spelling).
    pub fn name(self) -> &'static str {
        match self {
            UpstreamTlsMode::Disable => "disable",
            UpstreamTlsMode::Prefer => "prefer",
            UpstreamTlsMode::Require => "require",
            UpstreamTlsMode::VerifyCa => "verify-ca",
            UpstreamTlsMode::VerifyFull => "verify-full",
        }
    }
}

/// `[keys]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keys {
    /// Environment variable holding the base64 master key.
    #[serde(default)]
    pub master_key_env: Option<String>,
    /// File holding the base64 master key.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    /// Key check value printed by `pgveil keygen`.
    #[serde(default)]
    pub check: Option<String>,
    /// `[[keys.versions]]`: further key versions (rotation).
    #[serde(default)]
    pub versions: Vec<KeyVersionSource>,
    /// The version new values are written with; required once more than
    /// one version is configured.
    #[serde(default)]
    pub active: Option<u16>,
}

/// One `[[keys.versions]]` entry.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyVersionSource {
    /// Key version, 1..=65535, never reused for another key.
    pub version: u16,
    /// Environment variable holding this version's base64 master key.
    #[serde(default)]
    pub master_key_env: Option<String>,
    /// File holding it.
    #[serde(default)]
    pub master_key_file: Option<PathBuf>,
    /// Its key check value.
    #[serde(default)]
    pub check: Option<String>,
}

/// Where one key version's master key comes from.
#[derive(Debug, Clone, Copy)]
pub struct KeySource<'a> {
    /// The version.
    pub version: u16,
    /// Environment variable.
    pub env: Option<&'a str>,
    /// File.
    pub file: Option<&'a Path>,
    /// Expected check value.
    pub check: Option<&'a str>,
}

impl Config {
    /// The key versions of a domain: the one it writes with, and those its
    /// stored values may use (reads accept them, searches match them all).
    pub fn domain_key_versions(&self, domain: &str) -> (u16, Vec<u16>) {
        let Some(keys) = &self.keys else {
            return (1, vec![1]);
        };
        let active = keys.active_version();
        let cols = || self.encrypt.iter().filter(|c| c.domain_name() == domain);
        let write = cols().find_map(|c| c.key_version).unwrap_or(active);
        if let Some(list) = cols().find_map(|c| c.key_versions.clone()) {
            let mut list = list;
            list.sort_unstable();
            list.dedup();
            return (write, list);
        }
        // A version another domain was pinned to (and not the global active
        // one) belongs to that domain's rotation, not to this domain.
        let foreign: Vec<u16> = self
            .encrypt
            .iter()
            .filter(|c| c.domain_name() != domain)
            .filter_map(|c| c.key_version)
            // Only versions newer than the active one: pinning a domain to
            // an older version ("rotate all but this one") must not take
            // that version away from the others, which still hold it.
            .filter(|v| *v > active && *v != write)
            .collect();
        let readable = keys
            .sources()
            .iter()
            .map(|s| s.version)
            .filter(|v| !foreign.contains(v))
            .collect();
        (write, readable)
    }
}

impl Keys {
    /// Every configured version: version 1 from the top-level keys (when
    /// set), then `[[keys.versions]]`, in version order.
    pub fn sources(&self) -> Vec<KeySource<'_>> {
        let mut out = Vec::new();
        if self.master_key_env.is_some() || self.master_key_file.is_some() {
            out.push(KeySource {
                version: 1,
                env: self.master_key_env.as_deref(),
                file: self.master_key_file.as_deref(),
                check: self.check.as_deref(),
            });
        }
        out.extend(self.versions.iter().map(|v| KeySource {
            version: v.version,
            env: v.master_key_env.as_deref(),
            file: v.master_key_file.as_deref(),
            check: v.check.as_deref(),
        }));
        out.sort_by_key(|s| s.version);
        out
    }

    /// The version new values are written with (unless a column pins one).
    pub fn active_version(&self) -> u16 {
        self.active
            .or_else(|| self.sources().last().map(|s| s.version))
            .unwrap_or(1)
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only where the keys live is printed, never anything derived from them.
        f.debug_struct("Keys")
            .field("sources", &self.sources())
            .field("active", &self.active)
            .finish()
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// `host:port` of the HTTP endpoint.
    pub address: Spanned<String>,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// `tracing` filter directive; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Output format.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[policy]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// What to do with a statement pgveil cannot prove safe.
    #[serde(default)]
    pub on_unsupported: OnUnsupported,
}

/// `policy.on_unsupported`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnsupported {
    /// Refuse with SQLSTATE 0A000 (the default, and the only safe choice).
    #[default]
    Reject,
    /// Forward statements that touch no configured table; never those that do.
    Passthrough,
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest message pgveil holds whole to inspect or rewrite.
    #[serde(default = "default_max_inspected")]
    pub max_inspected_frame_bytes: u32,
    /// Largest message of any kind (streamed, never held whole).
    #[serde(default = "default_max_frame")]
    pub max_frame_bytes: u32,
    /// A client that has not sent its startup packet by then is dropped.
    #[serde(default = "default_startup_timeout_ms")]
    pub startup_timeout_ms: u64,
    /// On SIGTERM, how long open sessions may finish before they are closed.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Authentication (both hops) must finish within this, as PostgreSQL's
    /// `authentication_timeout`.
    #[serde(default = "default_auth_timeout_ms")]
    pub auth_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_inspected_frame_bytes: default_max_inspected(),
            max_frame_bytes: default_max_frame(),
            startup_timeout_ms: default_startup_timeout_ms(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
            auth_timeout_ms: default_auth_timeout_ms(),
        }
    }
}

/// `[catalog]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSettings {
    /// The longest a catalog read from the database is trusted without
    /// being read again (0: only DDL through pgveil and the change
    /// notifications of `pgveil guard --apply`'s event trigger make it
    /// re-read). Bounds how long a schema change made where pgveil cannot
    /// see it (directly, on a primary behind a standby) goes unnoticed.
    #[serde(default = "default_catalog_max_age_ms")]
    pub max_age_ms: u64,
}

impl Default for CatalogSettings {
    fn default() -> Self {
        CatalogSettings {
            max_age_ms: default_catalog_max_age_ms(),
        }
    }
}

fn default_catalog_max_age_ms() -> u64 {
    1000
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// How authentication crosses pgveil.
    #[serde(default)]
    pub mode: AuthMode,
    /// `scram` mode: the role pgveil logs in as to look up verifiers.
    #[serde(default)]
    pub auth_user: Option<Spanned<String>>,
    /// Environment variable holding `auth_user`'s password.
    #[serde(default)]
    pub auth_password_env: Option<String>,
    /// File holding `auth_user`'s password (trailing newline ignored).
    #[serde(default)]
    pub auth_password_file: Option<PathBuf>,
    /// Query returning `(usename, passwd)` for the user name in `$1`.
    #[serde(default = "default_auth_query")]
    pub auth_query: String,
    /// Database `auth_user` connects to.
    #[serde(default = "default_auth_database")]
    pub auth_database: String,
    /// How long a looked-up verifier is reused.
    #[serde(default = "default_auth_cache_ttl_ms")]
    pub cache_ttl_ms: u64,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            mode: AuthMode::default(),
            auth_user: None,
            auth_password_env: None,
            auth_password_file: None,
            auth_query: default_auth_query(),
            auth_database: default_auth_database(),
            cache_ttl_ms: default_auth_cache_ttl_ms(),
        }
    }
}

/// `auth.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Client and PostgreSQL authenticate each other end to end.
    #[default]
    Passthrough,
    /// pgveil verifies the client against PostgreSQL's stored verifier and
    /// logs in upstream with the key recovered from the client's proof.
    Scram,
}

/// One `[[encrypt]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptColumn {
    /// `table` or `schema.table`.
    pub table: Spanned<String>,
    /// Column name.
    pub column: String,
    /// The type the application sees.
    #[serde(default, rename = "type")]
    pub value_type: ValueType,
    /// Key domain; default `schema.table.column`.
    #[serde(default)]
    pub domain: Option<String>,
    /// Storage encoding, normally learned from the database.
    #[serde(default)]
    pub storage: Option<Storage>,
    /// The column still holds plaintext rows (`pgveil migrate encrypt` is
    /// running): plaintext reads pass through and searches match both forms.
    #[serde(default)]
    pub migrating: bool,
    /// Key version this column's domain writes with, instead of
    /// `[keys] active` (rotating one domain's key).
    #[serde(default)]
    pub key_version: Option<u16>,
    /// Key versions this column's domain may hold in the database (what
    /// reads accept and searches match). Default: every configured version
    /// except those other domains were pinned to alone.
    #[serde(default)]
    pub key_versions: Option<Vec<u16>>,
}

/// Types an encrypted column may present to the application.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    /// `text`.
    #[default]
    Text,
    /// `varchar`.
    Varchar,
    /// `int2`.
    Int2,
    /// `int4`.
    Int4,
    /// `int8`.
    Int8,
    /// `bool`.
    Bool,
    /// `uuid`.
    Uuid,
    /// `date`.
    Date,
    /// `timestamp`.
    Timestamp,
    /// `timestamptz`.
    Timestamptz,
    /// `numeric`.
    Numeric,
}

impl ValueType {
    /// Name as written in `proxy.toml` and SQL.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Text => "text",
            ValueType::Varchar => "varchar",
            ValueType::Int2 => "int2",
            ValueType::Int4 => "int4",
            ValueType::Int8 => "int8",
            ValueType::Bool => "bool",
            ValueType::Uuid => "uuid",
            ValueType::Date => "date",
            ValueType::Timestamp => "timestamp",
            ValueType::Timestamptz => "timestamptz",
            ValueType::Numeric => "numeric",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How ciphertext is stored in the database column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// Raw envelope in a `bytea` column.
    Bytea,
    /// Prefixed base64 envelope in a `text`/`varchar` column.
    Text,
}

impl fmt::Display for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Storage::Bytea => "bytea",
            Storage::Text => "text",
        })
    }
}

/// A configured column with its names resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColumnId {
    /// Schema, `public` when the config names none.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Column.
    pub column: String,
}

impl fmt::Display for ColumnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

impl EncryptColumn {
    /// Schema-qualified identity of this column.
    pub fn id(&self) -> ColumnId {
        let (schema, table) = match self.table.get_ref().split_once('.') {
            Some((s, t)) => (s.to_string(), t.to_string()),
            None => ("public".to_string(), self.table.get_ref().clone()),
        };
        ColumnId {
            schema,
            table,
            column: self.column.clone(),
        }
    }

    /// The key domain: explicit, or `schema.table.column`.
    pub fn domain_name(&self) -> String {
        self.domain.clone().unwrap_or_else(|| self.id().to_string())
    }
}

fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}
fn default_connect_timeout_ms() -> u64 {
    5000
}
fn default_log_level() -> String {
    "info".to_string()
}
fn default_max_inspected() -> u32 {
    DEFAULT_MAX_INSPECTED_FRAME_BYTES
}
fn default_max_frame() -> u32 {
    DEFAULT_MAX_FRAME_BYTES
}
fn default_startup_timeout_ms() -> u64 {
    10_000
}
fn default_shutdown_timeout_ms() -> u64 {
    30_000
}
fn default_auth_timeout_ms() -> u64 {
    60_000
}
fn default_auth_query() -> String {
    "SELECT usename, passwd FROM pg_shadow WHERE usename = $1 \
     AND (valuntil IS NULL OR valuntil > now())"
        .to_string()
}
fn default_auth_database() -> String {
    "postgres".to_string()
}
fn default_auth_cache_ttl_ms() -> u64 {
    10_000
}

mod validate;
pub use validate::split_host_port;

#[cfg(test)]
mod tests;
