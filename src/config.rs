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

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.validate(text, origin)?;
        Ok(config)
    }

    fn validate(&self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let invalid =
            |span: std::ops::Range<usize>, key: String, message: String| ConfigError::Invalid {
                path: origin.to_string(),
                line: line_of(text, span.start),
                key,
                message,
            };
        check_host_port(self.listen.address.get_ref())
            .map_err(|m| invalid(self.listen.address.span(), "listen.address".into(), m))?;
        check_host_port(self.upstream.address.get_ref())
            .map_err(|m| invalid(self.upstream.address.span(), "upstream.address".into(), m))?;
        if let Some(metrics) = &self.metrics {
            check_host_port(metrics.address.get_ref())
                .map_err(|m| invalid(metrics.address.span(), "metrics.address".into(), m))?;
        }
        if self.listen.max_connections == 0 {
            return Err(invalid(
                self.listen.address.span(),
                "listen.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        if self.limits.max_inspected_frame_bytes > self.limits.max_frame_bytes {
            return Err(invalid(
                0..0,
                "limits.max_inspected_frame_bytes".into(),
                "must not exceed limits.max_frame_bytes".into(),
            ));
        }
        if self.limits.max_frame_bytes > DEFAULT_MAX_FRAME_BYTES {
            return Err(invalid(
                0..0,
                "limits.max_frame_bytes".into(),
                "PostgreSQL accepts no message over 1 GiB (1073741824)".into(),
            ));
        }
        if let Some(keys) = &self.keys {
            self.validate_keys(keys, &invalid)?;
        }
        self.validate_tls(&invalid)?;
        self.validate_auth(&invalid)?;
        if !self.encrypt.is_empty() && self.keys.is_none() {
            return Err(invalid(
                self.encrypt[0].table.span(),
                "keys".into(),
                "[[encrypt]] columns are configured but there is no [keys] section".into(),
            ));
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut domains: BTreeMap<String, (ValueType, usize)> = BTreeMap::new();
        for (i, col) in self.encrypt.iter().enumerate() {
            let span = col.table.span();
            let key = |k: &str| format!("encrypt[{}].{}", i + 1, k);
            let table = col.table.get_ref();
            let parts: Vec<&str> = table.split('.').collect();
            if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(invalid(
                    span,
                    key("table"),
                    format!("`{table}` is not `table` or `schema.table`"),
                ));
            }
            if let Some(bad) = parts
                .iter()
                .copied()
                .chain(std::iter::once(col.column.as_str()))
                .find(|p| !is_simple_identifier(p))
            {
                return Err(invalid(
                    span,
                    key("table"),
                    format!(
                        "`{bad}` is not a plain identifier (letters, digits, `_`, `$`, not starting with a digit); \
                         pgveil matches configured names as SQL words"
                    ),
                ));
            }
            if col.column.is_empty() || col.column.contains('.') {
                return Err(invalid(
                    span,
                    key("column"),
                    format!("`{}` is not a column name", col.column),
                ));
            }
            let id = col.id().to_string();
            if let Some(first) = seen.insert(id.clone(), i) {
                return Err(invalid(
                    span,
                    key("column"),
                    format!("{id} is already configured by encrypt[{}]", first + 1),
                ));
            }
            let domain = col.domain_name();
            if domain.is_empty() {
                return Err(invalid(span, key("domain"), "must not be empty".into()));
            }
            match domains.get(&domain) {
                Some((ty, first)) if *ty != col.value_type => {
                    return Err(invalid(
                        span,
                        key("type"),
                        format!(
                            "key domain `{domain}` has type {ty} in encrypt[{}] but {} here; \
                             all columns of one domain must share a type",
                            first + 1,
                            col.value_type
                        ),
                    ));
                }
                Some(_) => {}
                None => {
                    domains.insert(domain, (col.value_type, i));
                }
            }
        }
        Ok(())
    }

    fn validate_keys(
        &self,
        keys: &Keys,
        invalid: &impl Fn(std::ops::Range<usize>, String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let err = |key: &str, m: &str| invalid(0..0, key.into(), m.into());
        if keys.master_key_env.is_some() && keys.master_key_file.is_some() {
            return Err(err(
                "keys",
                "set either master_key_env or master_key_file, not both",
            ));
        }
        if keys.check.is_some() && keys.master_key_env.is_none() && keys.master_key_file.is_none() {
            return Err(err(
                "keys.check",
                "check belongs to master_key_env or master_key_file",
            ));
        }
        for v in &keys.versions {
            let key = format!("keys.versions (version {})", v.version);
            if v.version == 0 {
                return Err(err(&key, "versions start at 1"));
            }
            if v.master_key_env.is_some() == v.master_key_file.is_some() {
                return Err(err(
                    &key,
                    "set exactly one of master_key_env and master_key_file",
                ));
            }
        }
        let sources = keys.sources();
        if sources.is_empty() {
            return Err(err("keys", "set master_key_env or master_key_file"));
        }
        if sources.windows(2).any(|w| w[0].version == w[1].version) {
            return Err(err(
                "keys.versions",
                "a key version is configured twice (the top-level key is version 1)",
            ));
        }
        let configured = |v: u16| sources.iter().any(|s| s.version == v);
        match keys.active {
            Some(v) if !configured(v) => {
                return Err(err(
                    "keys.active",
                    &format!("key version {v} is not configured"),
                ));
            }
            None if sources.len() > 1 => {
                return Err(err(
                    "keys.active",
                    "several key versions are configured: say which one new values use",
                ));
            }
            _ => {}
        }
        let mut pinned: BTreeMap<String, u16> = BTreeMap::new();
        for (i, col) in self.encrypt.iter().enumerate() {
            let key = |k: &str| format!("encrypt[{}].{}", i + 1, k);
            let span = col.table.span();
            if let Some(v) = col.key_version {
                if !configured(v) {
                    return Err(invalid(
                        span,
                        key("key_version"),
                        format!("key version {v} is not configured in [keys]"),
                    ));
                }
                if let Some(prev) = pinned.insert(col.domain_name(), v)
                    && prev != v
                {
                    return Err(invalid(
                        span,
                        key("key_version"),
                        "all columns of one key domain must write with one key version".into(),
                    ));
                }
            }
            if let Some(list) = &col.key_versions {
                if let Some(v) = list.iter().find(|v| !configured(**v)) {
                    return Err(invalid(
                        span,
                        key("key_versions"),
                        format!("key version {v} is not configured in [keys]"),
                    ));
                }
                let (write, _) = self.domain_key_versions(&col.domain_name());
                if !list.contains(&write) {
                    return Err(invalid(
                        span,
                        key("key_versions"),
                        format!("must include {write}, the version the domain writes with"),
                    ));
                }
                let others = self
                    .encrypt
                    .iter()
                    .filter(|c| c.domain_name() == col.domain_name())
                    .filter_map(|c| c.key_versions.as_ref());
                if others.into_iter().any(|o| {
                    let (mut a, mut b) = (o.clone(), list.clone());
                    a.sort_unstable();
                    b.sort_unstable();
                    a != b
                }) {
                    return Err(invalid(
                        span,
                        key("key_versions"),
                        "all columns of one key domain must list the same versions".into(),
                    ));
                }
            }
            if col.migrating && !matches!(col.value_type, ValueType::Text | ValueType::Varchar) {
                return Err(invalid(
                    span,
                    key("migrating"),
                    format!(
                        "only text and varchar columns are encrypted in place; a {} column \
                         changes type first (`pgveil migrate encrypt` prints the plan)",
                        col.value_type
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_tls(
        &self,
        invalid: &impl Fn(std::ops::Range<usize>, String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let Some(tls) = &self.upstream.tls else {
            return Ok(());
        };
        let span = self.upstream.address.span();
        let mode = tls.mode();
        if matches!(
            mode,
            UpstreamTlsMode::VerifyCa | UpstreamTlsMode::VerifyFull
        ) && tls.ca.is_none()
        {
            return Err(invalid(
                span,
                "upstream.tls.ca".into(),
                format!(
                    "mode {} verifies the server against a CA: set ca to the PEM bundle that signed \
                     the PostgreSQL server's certificate",
                    mode.name()
                ),
            ));
        }
        if mode == UpstreamTlsMode::VerifyFull
            && tls.server_name(self.upstream.address.get_ref()).is_empty()
        {
            return Err(invalid(
                span,
                "upstream.tls.server_name".into(),
                "must not be empty".into(),
            ));
        }
        Ok(())
    }

    fn validate_auth(
        &self,
        invalid: &impl Fn(std::ops::Range<usize>, String, String) -> ConfigError,
    ) -> Result<(), ConfigError> {
        let auth = &self.auth;
        if auth.mode == AuthMode::Passthrough {
            if let Some(user) = &auth.auth_user {
                return Err(invalid(
                    user.span(),
                    "auth.auth_user".into(),
                    "is used only with mode = \"scram\"".into(),
                ));
            }
            return Ok(());
        }
        let Some(user) = &auth.auth_user else {
            return Err(invalid(
                0..0,
                "auth.auth_user".into(),
                "mode = \"scram\" looks up verifiers as this role: set auth_user (see docs/TLS.md)"
                    .into(),
            ));
        };
        if user.get_ref().is_empty() {
            return Err(invalid(
                user.span(),
                "auth.auth_user".into(),
                "must not be empty".into(),
            ));
        }
        if auth.auth_password_env.is_some() && auth.auth_password_file.is_some() {
            return Err(invalid(
                user.span(),
                "auth".into(),
                "set either auth_password_env or auth_password_file, not both".into(),
            ));
        }
        if !auth.auth_query.contains("$1") {
            return Err(invalid(
                user.span(),
                "auth.auth_query".into(),
                "must take the user name as $1".into(),
            ));
        }
        Ok(())
    }

    /// A human-readable summary for `pgveil check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "listen:   {} (max_connections {}, tls {})\n",
            self.listen.address.get_ref(),
            self.listen.max_connections,
            match &self.listen.tls {
                Some(t) if t.required => "required",
                Some(_) => "optional",
                None => "off",
            }
        ));
        out.push_str(&format!(
            "upstream: {} (connect timeout {} ms, tls {})\n",
            self.upstream.address.get_ref(),
            self.upstream.connect_timeout_ms,
            match &self.upstream.tls {
                Some(t) => t.mode().name().to_string(),
                None => "off".to_string(),
            }
        ));
        out.push_str(&match (&self.auth.mode, &self.auth.auth_user) {
            (AuthMode::Scram, Some(user)) => format!(
                "auth:     scram (verifiers looked up as {} in database {})\n",
                user.get_ref(),
                self.auth.auth_database
            ),
            _ => "auth:     passthrough (end to end between client and PostgreSQL)\n".to_string(),
        });
        match &self.keys {
            Some(k) => {
                let source = match (&k.master_key_env, &k.master_key_file) {
                    (Some(env), _) => format!("environment variable {env}"),
                    (_, Some(file)) => format!("file {}", file.display()),
                    _ => "none".to_string(),
                };
                out.push_str(&format!(
                    "keys:     master key from {source}{}\n",
                    if k.check.is_some() {
                        ", check value set"
                    } else {
                        ", no check value"
                    }
                ));
            }
            None => out.push_str("keys:     none\n"),
        }
        if let Some(m) = &self.metrics {
            out.push_str(&format!(
                "metrics:  http://{}/metrics\n",
                m.address.get_ref()
            ));
        }
        out.push_str(&format!(
            "policy:   on_unsupported = {:?}\n",
            self.policy.on_unsupported
        ));
        out.push_str(&format!("encrypted columns: {}\n", self.encrypt.len()));
        for col in &self.encrypt {
            out.push_str(&format!(
                "  {} as {} (domain {}, storage {})\n",
                col.id(),
                col.value_type,
                col.domain_name(),
                col.storage
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "from database".into())
            ));
        }
        out
    }
}

fn is_simple_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

/// `host:port` with a non-empty host and a numeric port; IPv6 as `[::1]:5432`.
fn check_host_port(addr: &str) -> Result<(), String> {
    split_host_port(addr).map(|_| ())
}

/// Splits `host:port`, accepting `[v6]:port`.
pub fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("`{addr}` is not host:port"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("`{addr}` has no host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{addr}` has no valid port"))?;
    Ok((host.to_string(), port))
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map(|t| t.bytes().filter(|b| *b == b'\n').count() + 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {

    #[test]
    fn domain_key_versions_follow_pins_and_lists() {
        let text = |extra: &str| {
            format!(
                "[listen]\naddress = \"127.0.0.1:1\"\n[upstream]\naddress = \"127.0.0.1:2\"\n\
                 [keys]\nmaster_key_env = \"K\"\nactive = 1\n\
                 [[keys.versions]]\nversion = 2\nmaster_key_env = \"K\"\n\
                 [[encrypt]]\ntable = \"t\"\ncolumn = \"a\"\ndomain = \"a\"\n{extra}\n\
                 [[encrypt]]\ntable = \"t\"\ncolumn = \"b\"\ndomain = \"b\"\n"
            )
        };
        let c = Config::parse(&text(""), "t").unwrap();
        assert_eq!(c.domain_key_versions("a"), (1, vec![1, 2]));
        // Pinning `a` to 2 keeps `b` at one version.
        let c = Config::parse(&text("key_version = 2"), "t").unwrap();
        assert_eq!(c.domain_key_versions("a"), (2, vec![1, 2]));
        assert_eq!(c.domain_key_versions("b"), (1, vec![1]));
        let c = Config::parse(&text("key_version = 2\nkey_versions = [2]"), "t").unwrap();
        assert_eq!(c.domain_key_versions("a"), (2, vec![2]));
        assert!(
            Config::parse(&text("key_versions = [2]"), "t").is_err(),
            "must include the write version"
        );
        assert!(Config::parse(&text("key_versions = [3]"), "t").is_err());
    }

    use super::*;

    const MINIMAL: &str =
        "[listen]\naddress = \"127.0.0.1:6432\"\n[upstream]\naddress = \"127.0.0.1:5432\"\n";

    #[test]
    fn parses_minimal() {
        let c = Config::parse(MINIMAL, "t").unwrap();
        assert_eq!(c.listen.max_connections, 1000);
        assert_eq!(c.policy.on_unsupported, OnUnsupported::Reject);
    }

    #[test]
    fn rejects_unknown_key_with_name_and_line() {
        let text = format!("{MINIMAL}bogus_key = 1\n");
        let err = Config::parse(&text, "t").unwrap_err().to_string();
        // The key lands in [upstream], line 5.
        assert!(err.contains("bogus_key"), "{err}");
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn accepts_full_contract() {
        let text = r#"
[listen]
address = "127.0.0.1:6432"
max_connections = 1000
[listen.tls]
cert = "c.pem"
key = "k.pem"
required = true
client_ca = "ca.pem"
[upstream]
address = "db.example:5432"
connect_timeout_ms = 5000
[upstream.tls]
mode = "verify-full"
ca = "ca.pem"
server_name = "db"
[keys]
master_key_env = "PGVEIL_MASTER_KEY"
[metrics]
address = "127.0.0.1:9187"
[log]
level = "info"
format = "json"
[policy]
on_unsupported = "passthrough"
[[encrypt]]
table = "customers"
column = "email"
type = "text"
domain = "email"
[[encrypt]]
table = "crm.leads"
column = "email"
domain = "email"
"#;
        let c = Config::parse(text, "t").unwrap();
        assert_eq!(c.encrypt.len(), 2);
        assert_eq!(c.encrypt[1].id().to_string(), "crm.leads.email");
        assert_eq!(c.encrypt[0].id().schema, "public");
    }

    #[test]
    fn rejects_domain_with_two_types() {
        let text = format!(
            "{MINIMAL}[keys]\nmaster_key_env = \"K\"\n[[encrypt]]\ntable = \"a\"\ncolumn = \"x\"\ndomain = \"d\"\n[[encrypt]]\ntable = \"b\"\ncolumn = \"y\"\ntype = \"date\"\ndomain = \"d\"\n"
        );
        let err = Config::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains("encrypt[2].type"), "{err}");
        assert!(err.contains("line 12"), "{err}");
    }

    #[test]
    fn rejects_bad_address_with_line() {
        let text = "[listen]\naddress = \"nope\"\n[upstream]\naddress = \"127.0.0.1:5432\"\n";
        let err = Config::parse(text, "t").unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("listen.address"),
            "{err}"
        );
    }

    #[test]
    fn rejects_encrypt_without_keys() {
        let text = format!("{MINIMAL}[[encrypt]]\ntable = \"a\"\ncolumn = \"x\"\n");
        assert!(Config::parse(&text, "t").is_err());
    }

    #[test]
    fn splits_ipv6() {
        assert_eq!(
            split_host_port("[::1]:5432").unwrap(),
            ("::1".to_string(), 5432)
        );
    }
}
