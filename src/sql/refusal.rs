//! Why a statement is refused, and how that reaches the client.
//!
//! A refusal must behave exactly like a database error, on the database
//! side too: the statement never runs and the upstream transaction fails as
//! PostgreSQL would fail it. So pgveil does not answer the client itself:
//! it sends the database a statement that raises the refusal (SQLSTATE
//! 0A000), and the error, the transaction state and ReadyForQuery all come
//! from PostgreSQL. Refusal texts never contain values.

use std::fmt;

/// A statement pgveil will not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The configured column concerned (`schema.table.column`), if one.
    pub column: Option<String>,
    /// What was attempted, e.g. `LIKE` or `ORDER BY`.
    pub operation: String,
    /// What to do instead.
    pub hint: String,
    /// Metric label: a short, fixed reason.
    pub reason: &'static str,
    /// SQLSTATE: 0A000, or the bad-input code of a value that does not
    /// parse as the column's type.
    pub sqlstate: &'static str,
}

impl Refusal {
    /// A refusal about an operation on an encrypted column.
    pub fn on_column(column: &str, operation: impl Into<String>, reason: &'static str) -> Refusal {
        Refusal {
            column: Some(column.to_string()),
            operation: operation.into(),
            hint: hint_for(reason).to_string(),
            reason,
            sqlstate: "0A000",
        }
    }

    /// A refusal not tied to one column.
    pub fn general(operation: impl Into<String>, reason: &'static str) -> Refusal {
        Refusal {
            column: None,
            operation: operation.into(),
            hint: hint_for(reason).to_string(),
            reason,
            sqlstate: "0A000",
        }
    }

    /// A value that is not valid input for its column's type.
    pub fn bad_value(column: &str, type_name: &str, sqlstate: &'static str) -> Refusal {
        Refusal {
            column: Some(column.to_string()),
            operation: format!("invalid input for type {type_name}"),
            hint: format!("The value for encrypted column {column} must be a valid {type_name}."),
            reason: "invalid_value",
            sqlstate,
        }
    }

    /// The primary message, starting `pgveil:`.
    pub fn message(&self) -> String {
        match &self.column {
            Some(c) if self.reason == "invalid_value" => {
                format!("pgveil: {} in encrypted column {c}", self.operation)
            }
            Some(c) => format!(
                "pgveil: {} is not supported on encrypted column {c}",
                self.operation
            ),
            None => format!("pgveil: {}", self.operation),
        }
    }

    /// A statement that makes PostgreSQL raise this refusal.
    pub fn raise_statement(&self) -> String {
        format!(
            "DO $pgveil$ BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}, HINT = {}; END $pgveil$",
            quote(self.sqlstate),
            quote(&self.message()),
            quote(&self.hint)
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// A string literal safe whatever `standard_conforming_strings` says:
/// backslashes and dollar signs are removed, quotes doubled.
fn quote(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .filter(|c| *c != '\\' && *c != '$' && !c.is_control())
        .collect();
    format!("'{}'", cleaned.replace('\'', "''"))
}

fn hint_for(reason: &str) -> &'static str {
    match reason {
        "pattern" => {
            "Encrypted columns support equality only. Search by exact value, or keep a separate non-sensitive search column."
        }
        "order" => {
            "Ciphertext has no meaningful order. Sort by another column, or sort in the application after decryption."
        }
        "function" => {
            "Functions and operators would run on ciphertext. Apply them in the application after decryption."
        }
        "mixed_domains" => {
            "Only columns of the same key domain can be compared. Give both columns the same `domain` in proxy.toml."
        }
        "plaintext_comparison" => {
            "Compare encrypted columns with literal values or with columns of the same key domain."
        }
        "storage" => {
            "Store encrypted columns as bytea (or text/varchar); see docs/SQL.md for the migration."
        }
        "unparsed" => {
            "pgveil could not analyse this statement, so it cannot be sure no plaintext reaches the database. Simplify it or see docs/SQL.md."
        }
        "copy" => {
            "COPY of encrypted columns works with FROM STDIN and TO STDOUT through pgveil (psql: \\copy), in text, csv or binary with UTF8 data. See docs/SQL.md."
        }
        "view_write" => "Write to the base table instead of the view.",
        _ => "See docs/SQL.md for what pgveil supports on encrypted columns.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_statement_is_quoted() {
        let r = Refusal::on_column("public.c.email", "it's $$ \\ LIKE", "pattern");
        let sql = r.raise_statement();
        assert!(sql.contains("it''s"));
        assert!(!sql.contains("$$ "));
        assert!(!sql[2..].contains('\\'));
        assert!(sql.starts_with("DO $pgveil$"));
    }
}
