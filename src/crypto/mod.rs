//! The column encryption core: master keys, the HKDF key hierarchy, the
//! deterministic AES-SIV envelope and typed plaintext encodings. No network
//! code; the only I/O is reading the key file.
//!
//! The proxy builds one [`Keyring`] from the config at start (it loads and
//! checks the master key and derives every domain's cipher once), then per
//! value calls [`ColumnCipher::encrypt`] and [`ColumnCipher::decrypt`]:
//!
//! ```no_run
//! # use pgveil::crypto::{Keyring, Format, SessionSettings};
//! # fn f(config: &pgveil::config::Config) -> Result<(), pgveil::crypto::CryptoError> {
//! let keyring = Keyring::from_config(config)?;
//! let settings = SessionSettings::new(); // updated from ParameterStatus
//! let col = keyring.column("public", "customers", "email").expect("configured");
//! let storage = col.storage().unwrap_or(pgveil::config::Storage::Bytea);
//! let stored = col.encrypt(Format::Text, b"ada@example.com", storage, &settings)?;
//! let plain = col.decrypt(storage, &stored, Format::Text, &settings)?;
//! assert_eq!(plain, b"ada@example.com");
//! # Ok(()) }
//! ```
//!
//! The byte-level format is specified in `docs/FORMAT.md`.

pub mod envelope;
pub mod error;
pub mod hierarchy;
pub mod keys;
pub mod values;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

pub use error::{CryptoError, DecryptFailure, ValueError};
pub use hierarchy::{Domain, KeyVersion};
pub use keys::MasterKey;
pub use values::{Format, SessionSettings};

use crate::config::{ColumnId, Config, EncryptColumn, Storage, ValueType};
use hierarchy::DomainCipher;

/// One key version of a domain: its cipher and associated data.
struct VersionKey {
    version: KeyVersion,
    cipher: DomainCipher,
    ad: Vec<u8>,
}

/// A key domain with its ciphers, shared by all columns of the domain.
struct DomainKeys {
    domain: Domain,
    /// Index in `versions` of the version new values are encrypted with.
    active: usize,
    /// Every configured version; each decrypts its own envelopes.
    versions: Vec<VersionKey>,
}

impl DomainKeys {
    fn new(
        masters: &[(KeyVersion, &MasterKey)],
        active: KeyVersion,
        domain: Domain,
        ty: ValueType,
    ) -> DomainKeys {
        let versions: Vec<VersionKey> = masters
            .iter()
            .map(|(version, master)| {
                let key = hierarchy::derive_domain_key(master, *version, &domain);
                VersionKey {
                    version: *version,
                    cipher: DomainCipher::new(key),
                    ad: envelope::associated_data(
                        *version,
                        values::type_class(ty),
                        domain.as_str(),
                    ),
                }
            })
            .collect();
        let active = versions
            .iter()
            .position(|k| k.version == active)
            .unwrap_or(0);
        DomainKeys {
            domain,
            active,
            versions,
        }
    }

    fn active(&self) -> Option<&VersionKey> {
        self.versions.get(self.active)
    }

    fn version(&self, v: KeyVersion) -> Option<&VersionKey> {
        self.versions.iter().find(|k| k.version == v)
    }
}

/// The cipher of one configured column.
pub struct ColumnCipher {
    id: ColumnId,
    name: String,
    value_type: ValueType,
    storage: Option<Storage>,
    /// `migrating = true`: stored plaintext is read through.
    migrating: bool,
    domain: Arc<DomainKeys>,
}

impl fmt::Debug for ColumnCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnCipher")
            .field("column", &self.name)
            .field("type", &self.value_type)
            .field("domain", &self.domain.domain)
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl ColumnCipher {
    /// The column.
    pub fn id(&self) -> &ColumnId {
        &self.id
    }

    /// The type the application sees.
    pub fn value_type(&self) -> ValueType {
        self.value_type
    }

    /// The storage encoding stated in the config, if any.
    pub fn storage(&self) -> Option<Storage> {
        self.storage
    }

    /// The key domain.
    pub fn domain(&self) -> &Domain {
        &self.domain.domain
    }

    fn invalid(&self, error: ValueError) -> CryptoError {
        CryptoError::InvalidValue {
            column: self.name.clone(),
            value_type: self.value_type,
            error,
        }
    }

    fn failed(&self, failure: DecryptFailure) -> CryptoError {
        CryptoError::Decrypt {
            column: self.name.clone(),
            failure,
        }
    }

    /// Canonicalises a client value (sent in `format`) and encrypts it,
    /// returning the bytes to store: the envelope for `bytea` (binary format
    /// of the column; the proxy writes `\x` hex for text format), or the
    /// prefixed base64 text for `text`.
    pub fn encrypt(
        &self,
        format: Format,
        input: &[u8],
        storage: Storage,
        settings: &SessionSettings,
    ) -> Result<Vec<u8>, CryptoError> {
        let canonical = values::to_canonical(self.value_type, format, input, settings)
            .map_err(|e| self.invalid(e))?;
        let env = self.seal_canonical(&canonical)?;
        Ok(envelope::encode_storage(storage, env))
    }

    /// Decrypts a stored value (binary form for `bytea`, the text for
    /// `text`) and renders it as the client expects in `format`.
    pub fn decrypt(
        &self,
        storage: Storage,
        stored: &[u8],
        format: Format,
        settings: &SessionSettings,
    ) -> Result<Vec<u8>, CryptoError> {
        let canonical = self.open_stored(storage, stored)?;
        values::from_canonical(self.value_type, format, &canonical, settings).map_err(|e| {
            if e.sqlstate == error::sqlstate::DATA_CORRUPTED {
                self.failed(DecryptFailure::WrongType)
            } else {
                self.invalid(e)
            }
        })
    }

    /// Whether stored plaintext is read through (`migrating = true`).
    pub fn migrating(&self) -> bool {
        self.migrating
    }

    /// How many stored forms one plaintext can have now: one per configured
    /// key version, plus the plaintext itself while migrating. More than one
    /// means equality must match every form.
    pub fn form_count(&self) -> usize {
        self.domain.versions.len() + usize::from(self.migrating)
    }

    /// The key version new values are written with.
    pub fn active_version(&self) -> Option<KeyVersion> {
        self.domain.active().map(|k| k.version)
    }

    /// Every stored form of a client value, in a fixed order: the active
    /// version's ciphertext, the other versions' (ascending), then the
    /// plaintext as stored while migrating. Searches match any of them.
    pub fn forms(
        &self,
        format: Format,
        input: &[u8],
        storage: Storage,
        settings: &SessionSettings,
    ) -> Result<Vec<Vec<u8>>, CryptoError> {
        let canonical = values::to_canonical(self.value_type, format, input, settings)
            .map_err(|e| self.invalid(e))?;
        let mut out = Vec::with_capacity(self.form_count());
        let active = self.domain.active();
        let others = self
            .domain
            .versions
            .iter()
            .filter(|k| Some(k.version) != active.map(|a| a.version));
        for key in active.into_iter().chain(others) {
            let env = envelope::seal(&key.cipher, key.version, &key.ad, &canonical)
                .map_err(|_| CryptoError::Internal(self.name.clone()))?;
            out.push(envelope::encode_storage(storage, env));
        }
        if self.migrating {
            // Text and varchar only (validated): the canonical form is the
            // text as the application stored it.
            out.push(canonical);
        }
        Ok(out)
    }

    /// Like [`ColumnCipher::decrypt`], but a value that is not an envelope
    /// passes through as plaintext while the column is migrating. Returns
    /// whether it did.
    pub fn decrypt_or_plain(
        &self,
        storage: Storage,
        stored: &[u8],
        format: Format,
        settings: &SessionSettings,
    ) -> Result<(Vec<u8>, bool), CryptoError> {
        if self.migrating && !envelope::looks_like_envelope(storage, stored) {
            let text = values::from_canonical(self.value_type, format, stored, settings)
                .map_err(|e| self.invalid(e))?;
            return Ok((text, true));
        }
        self.decrypt(storage, stored, format, settings)
            .map(|v| (v, false))
    }

    /// What a stored value is, for `pgveil migrate`: plaintext, or the key
    /// version of its envelope.
    pub fn stored_version(&self, storage: Storage, stored: &[u8]) -> Option<KeyVersion> {
        if !envelope::looks_like_envelope(storage, stored) {
            return None;
        }
        let env = envelope::decode_storage(storage, stored).ok()?;
        envelope::key_version(&env).ok()
    }

    /// Re-encrypts a stored value (any configured version, or plaintext
    /// while migrating) with the active version.
    pub fn reseal(&self, storage: Storage, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let canonical = if self.migrating && !envelope::looks_like_envelope(storage, stored) {
            values::to_canonical(
                self.value_type,
                Format::Text,
                stored,
                &SessionSettings::default(),
            )
            .map_err(|e| self.invalid(e))?
        } else {
            self.open_stored(storage, stored)?
        };
        Ok(envelope::encode_storage(
            storage,
            self.seal_canonical(&canonical)?,
        ))
    }

    /// Encrypts a canonical plaintext into a v1 envelope with the active key.
    pub fn seal_canonical(&self, canonical: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let key = self
            .domain
            .active()
            .ok_or_else(|| CryptoError::Internal(self.name.clone()))?;
        envelope::seal(&key.cipher, key.version, &key.ad, canonical)
            .map_err(|_| CryptoError::Internal(self.name.clone()))
    }

    /// Decodes and decrypts a stored value to its canonical plaintext.
    pub fn open_stored(&self, storage: Storage, stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let env = envelope::decode_storage(storage, stored).map_err(|f| self.failed(f))?;
        self.open_envelope(&env)
    }

    /// Decrypts a v1 envelope to its canonical plaintext.
    pub fn open_envelope(&self, env: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let version = envelope::key_version(env).map_err(|f| self.failed(f))?;
        let key = self
            .domain
            .version(version)
            .ok_or_else(|| self.failed(DecryptFailure::UnknownKeyVersion(version.get())))?;
        envelope::open(&key.cipher, &key.ad, env).map_err(|f| self.failed(f))
    }
}

/// All configured columns with their ciphers, built once from the config.
pub struct Keyring {
    columns: HashMap<ColumnId, ColumnCipher>,
    check_value: String,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("columns", &self.columns.len())
            .field("keys", &"<redacted>")
            .finish()
    }
}

impl Keyring {
    /// Loads the master key `[keys]` names, verifies `[keys] check` (or
    /// warns once that it is absent), and derives one cipher per domain.
    pub fn from_config(config: &Config) -> Result<Keyring, CryptoError> {
        let keys = config.keys.as_ref().ok_or(CryptoError::NoKeys)?;
        let mut masters = Vec::new();
        for source in keys.sources() {
            let version = KeyVersion::new(source.version)
                .ok_or_else(|| CryptoError::MasterKey("key versions start at 1".into()))?;
            let (master, name) = MasterKey::load_source(&source)?;
            let actual = master.check_value();
            match source.check {
                Some(expected) => {
                    let expected = keys::parse_check_value(expected)?;
                    if expected != actual {
                        return Err(CryptoError::CheckMismatch {
                            expected,
                            actual,
                            source_name: name,
                        });
                    }
                }
                None => tracing::warn!(
                    check = %actual,
                    version = source.version,
                    "[keys] has no check value for this key version: a wrong master key would \
                     not be detected; add `check = \"{actual}\"` next to its source"
                ),
            }
            masters.push((version, master));
        }
        let refs: Vec<(KeyVersion, &MasterKey)> = masters.iter().map(|(v, m)| (*v, m)).collect();
        let mut keyring = Keyring::build(&refs, &config.encrypt, |domain| {
            config.domain_key_versions(domain)
        });
        if let Some((_, m)) = masters
            .iter()
            .find(|(v, _)| v.get() == keys.active_version())
        {
            keyring.check_value = m.check_value();
        }
        Ok(keyring)
    }

    /// Builds the keyring from a master key already loaded and checked
    /// (version 1 only).
    pub fn from_master_key(master: &MasterKey, columns: &[EncryptColumn]) -> Keyring {
        Keyring::build(&[(KeyVersion::V1, master)], columns, |_| (1, vec![1]))
    }

    /// Builds the keyring: each domain gets the versions `versions_of`
    /// names (the one it writes with, the ones it reads and searches).
    fn build(
        masters: &[(KeyVersion, &MasterKey)],
        columns: &[EncryptColumn],
        versions_of: impl Fn(&str) -> (u16, Vec<u16>),
    ) -> Keyring {
        let mut domains: HashMap<String, Arc<DomainKeys>> = HashMap::new();
        let mut map = HashMap::new();
        let mut check_value = String::new();
        for col in columns {
            let name = col.domain_name();
            let domain = domains
                .entry(name.clone())
                .or_insert_with(|| {
                    let (write, readable) = versions_of(&name);
                    let refs: Vec<(KeyVersion, &MasterKey)> = masters
                        .iter()
                        .filter(|(v, _)| readable.contains(&v.get()))
                        .map(|(v, m)| (*v, *m))
                        .collect();
                    let write = KeyVersion::new(write).unwrap_or(KeyVersion::V1);
                    Arc::new(DomainKeys::new(
                        &refs,
                        write,
                        Domain::new(name),
                        col.value_type,
                    ))
                })
                .clone();
            let id = col.id();
            let cipher = ColumnCipher {
                name: id.to_string(),
                id: id.clone(),
                value_type: col.value_type,
                storage: col.storage,
                migrating: col.migrating,
                domain,
            };
            map.insert(id, cipher);
        }
        if let Some((_, m)) = masters.first() {
            check_value = m.check_value();
        }
        Keyring {
            columns: map,
            check_value,
        }
    }

    /// The cipher of a configured column.
    pub fn column(&self, schema: &str, table: &str, column: &str) -> Option<&ColumnCipher> {
        self.columns.get(&ColumnId {
            schema: schema.to_string(),
            table: table.to_string(),
            column: column.to_string(),
        })
    }

    /// The cipher of a configured column by its id (no allocation: this is
    /// on the path of every encrypted value).
    pub fn column_by_id(&self, id: &ColumnId) -> Option<&ColumnCipher> {
        self.columns.get(id)
    }

    /// Resolves `[schema.]table.column` as the DBA commands take it
    /// (schema `public` by default).
    pub fn resolve(&self, name: &str) -> Result<&ColumnCipher, CryptoError> {
        let parts: Vec<&str> = name.split('.').collect();
        let found = match parts.as_slice() {
            [table, column] => self.column("public", table, column),
            [schema, table, column] => self.column(schema, table, column),
            _ => None,
        };
        found.ok_or_else(|| CryptoError::UnknownColumn(name.to_string()))
    }

    /// Every configured column.
    pub fn columns(&self) -> impl Iterator<Item = &ColumnCipher> {
        self.columns.values()
    }

    /// The key check value of the loaded master key.
    pub fn check_value(&self) -> &str {
        &self.check_value
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn config(key_file: &std::path::Path, check: Option<&str>) -> Config {
        let check = check
            .map(|c| format!("check = \"{c}\"\n"))
            .unwrap_or_default();
        let text = format!(
            "[listen]\naddress = \"127.0.0.1:1\"\n[upstream]\naddress = \"127.0.0.1:2\"\n\
             [keys]\nmaster_key_file = {:?}\n{check}\
             [[encrypt]]\ntable = \"a\"\ncolumn = \"email\"\ndomain = \"email\"\n\
             [[encrypt]]\ntable = \"crm.b\"\ncolumn = \"mail\"\ndomain = \"email\"\n\
             [[encrypt]]\ntable = \"a\"\ncolumn = \"other\"\n",
            key_file.display()
        );
        Config::parse(&text, "t").unwrap()
    }

    fn key_file() -> (tempfile::NamedTempFile, String) {
        let key = MasterKey::generate().unwrap();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "{}", key.to_base64().as_str()).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(0o600)).unwrap();
        (f, key.check_value())
    }

    #[test]
    fn from_config_checks_the_key() {
        let (f, check) = key_file();
        assert!(Keyring::from_config(&config(f.path(), Some(&check))).is_ok());
        assert!(Keyring::from_config(&config(f.path(), None)).is_ok());
        let err = Keyring::from_config(&config(f.path(), Some("kcv1:0000000000000000")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("does not match") && err.contains(&check),
            "{err}"
        );
        assert!(Keyring::from_config(&config(f.path(), Some("nonsense"))).is_err());
    }

    #[test]
    fn shared_domain_gives_equal_bytes_and_others_differ() {
        let (f, _) = key_file();
        let ring = Keyring::from_config(&config(f.path(), None)).unwrap();
        let st = SessionSettings::new();
        let enc = |name: &str| {
            ring.resolve(name)
                .unwrap()
                .encrypt(Format::Text, b"ada@example.com", Storage::Bytea, &st)
                .unwrap()
        };
        assert_eq!(enc("a.email"), enc("crm.b.mail"));
        assert_ne!(enc("a.email"), enc("public.a.other"));
        assert!(ring.resolve("a.nope").is_err());
        assert!(format!("{ring:?}").contains("<redacted>"));
    }
}
