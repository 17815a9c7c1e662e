//! Errors of the crypto core.
//!
//! Every error names the column (or the key source) it concerns and never the
//! value: plaintext and ciphertext stay out of messages and logs. Each error
//! carries the SQLSTATE the proxy should report to the client.

use std::fmt;

use crate::config::ValueType;

/// SQLSTATE codes the crypto core reports.
pub mod sqlstate {
    /// `22P02` invalid_text_representation.
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    /// `22P03` invalid_binary_representation.
    pub const INVALID_BINARY_REPRESENTATION: &str = "22P03";
    /// `22007` invalid_datetime_format.
    pub const INVALID_DATETIME_FORMAT: &str = "22007";
    /// `22008` datetime_field_overflow.
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    /// `22003` numeric_value_out_of_range.
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    /// `22021` character_not_in_repertoire.
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    /// `0A000` feature_not_supported.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// `XX001` data_corrupted.
    pub const DATA_CORRUPTED: &str = "XX001";
    /// `XX000` internal_error.
    pub const INTERNAL_ERROR: &str = "XX000";
    /// `F0000` config_file_error.
    pub const CONFIG_FILE_ERROR: &str = "F0000";
}

/// Why a plaintext value was refused, without the value itself.
///
/// Produced by the typed codecs in [`crate::crypto::values`], which do not
/// know the column; [`CryptoError::InvalidValue`] adds it.
#[derive(Clone, PartialEq, Eq)]
pub struct ValueError {
    /// SQLSTATE to report.
    pub sqlstate: &'static str,
    /// What is wrong, in PostgreSQL's words where it has some. Never
    /// contains the value.
    pub reason: String,
}

impl ValueError {
    pub(crate) fn new(sqlstate: &'static str, reason: impl Into<String>) -> ValueError {
        ValueError {
            sqlstate,
            reason: reason.into(),
        }
    }

    pub(crate) fn syntax(ty: &str) -> ValueError {
        let sqlstate = match ty {
            "date" | "timestamp" | "timestamptz" => sqlstate::INVALID_DATETIME_FORMAT,
            _ => sqlstate::INVALID_TEXT_REPRESENTATION,
        };
        ValueError::new(sqlstate, format!("invalid input syntax for type {ty}"))
    }

    pub(crate) fn binary(ty: &str, what: &str) -> ValueError {
        ValueError::new(
            sqlstate::INVALID_BINARY_REPRESENTATION,
            format!("invalid binary value for type {ty}: {what}"),
        )
    }
}

impl fmt::Debug for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ValueError({}: {})", self.sqlstate, self.reason)
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Why a stored value could not be decrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecryptFailure {
    /// Not a pgveil envelope: too short, wrong prefix, bad base64 or hex.
    Malformed,
    /// An envelope format version this release does not know.
    UnknownFormat(u8),
    /// A key version that is not configured.
    UnknownKeyVersion(u16),
    /// Authentication failed: tampered, another domain, or another key.
    Authentication,
    /// Authentic, but the plaintext is not a valid value of the column's
    /// type (the domain's type was changed in the config).
    WrongType,
}

impl fmt::Display for DecryptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecryptFailure::Malformed => f.write_str("not a pgveil envelope"),
            DecryptFailure::UnknownFormat(v) => write!(f, "unknown envelope format version {v}"),
            DecryptFailure::UnknownKeyVersion(v) => write!(f, "key version {v} is not configured"),
            DecryptFailure::Authentication => f.write_str(
                "authentication failed (tampered value, value of another key domain, or wrong key)",
            ),
            DecryptFailure::WrongType => {
                f.write_str("decrypted value does not match the column's configured type")
            }
        }
    }
}

/// Errors of the crypto core.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The master key could not be loaded: missing variable, bad file mode,
    /// bad base64, too short. The message names the source, never the key.
    #[error("pgveil: master key: {0}")]
    MasterKey(String),
    /// The loaded key does not match `[keys] check`.
    #[error(
        "pgveil: the loaded master key does not match [keys] check: the config expects check value {expected} but the key from {source_name} has {actual}; refusing to start (a wrong key would make every search on an encrypted column silently find nothing)"
    )]
    CheckMismatch {
        /// Check value in the config.
        expected: String,
        /// Check value of the loaded key.
        actual: String,
        /// Where the key came from.
        source_name: String,
    },
    /// `[keys] check` is not a check value pgveil writes.
    #[error(
        "pgveil: [keys] check: `{0}` is not a pgveil key check value (expected `kcv1:` and 16 hex digits)"
    )]
    BadCheckValue(String),
    /// No `[keys]` section although a key is needed.
    #[error("pgveil: no [keys] section in the config")]
    NoKeys,
    /// A plaintext value was refused by the column's type.
    #[error("pgveil: column {column} ({value_type}): {error} (value not shown)")]
    InvalidValue {
        /// `schema.table.column`.
        column: String,
        /// The column's configured type.
        value_type: ValueType,
        /// Why, with its SQLSTATE.
        error: ValueError,
    },
    /// A stored value could not be decrypted.
    #[error("pgveil: column {column}: stored value cannot be decrypted: {failure}")]
    Decrypt {
        /// `schema.table.column`.
        column: String,
        /// Why.
        failure: DecryptFailure,
    },
    /// The column is not configured for encryption.
    #[error("pgveil: column {0} is not configured in [[encrypt]]")]
    UnknownColumn(String),
    /// The cipher refused to run; not reachable with valid keys.
    #[error("pgveil: column {0}: internal encryption error")]
    Internal(String),
}

impl CryptoError {
    /// SQLSTATE the proxy reports for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            CryptoError::InvalidValue { error, .. } => error.sqlstate,
            CryptoError::Decrypt { .. } => sqlstate::DATA_CORRUPTED,
            CryptoError::MasterKey(_)
            | CryptoError::CheckMismatch { .. }
            | CryptoError::BadCheckValue(_)
            | CryptoError::NoKeys
            | CryptoError::UnknownColumn(_) => sqlstate::CONFIG_FILE_ERROR,
            CryptoError::Internal(_) => sqlstate::INTERNAL_ERROR,
        }
    }
}
