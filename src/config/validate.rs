//! Loading and validating `proxy.toml`: parse, then the checks that span
//! several keys, each naming the offending line.

use std::path::Path;

use super::*;

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
