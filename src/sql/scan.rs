//! The fast path: most statements of a CRM never name an encrypted table,
//! and they pass without a parse. The scan errs only toward analysis: any
//! word equal to a watched name (configured table, view over one, encrypted
//! column, SQL-level prepared statement or cursor created from such SQL),
//! or a Unicode-escaped identifier it cannot read, sends the statement to
//! the analyzer.

use super::analyze::Watched;

/// Whether `text` must be analysed.
pub fn needs_analysis(text: &str, watched: &Watched, tainted: &[String]) -> bool {
    if watched.names.is_empty() && tainted.is_empty() {
        return false;
    }
    let lower = text.to_lowercase();
    if lower.contains("u&\"") {
        return true;
    }
    lower
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .any(|w| watched.names.iter().any(|n| n == w) || tainted.iter().any(|n| n == w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watched() -> Watched {
        Watched {
            names: vec!["customers".into(), "email".into()],
            columns: Vec::new(),
        }
    }

    #[test]
    fn passes_unrelated_statements() {
        assert!(!needs_analysis(
            "select * from pgbench_accounts where aid = 1",
            &watched(),
            &[]
        ));
    }

    #[test]
    fn catches_names_in_any_case_and_quoting() {
        for sql in [
            "SELECT * FROM Customers",
            "select \"email\" from x",
            "select 1 from crm.customers",
            "select 1 from U&\"\\0063ustomers\"",
        ] {
            assert!(needs_analysis(sql, &watched(), &[]), "{sql}");
        }
    }

    #[test]
    fn catches_tainted_prepared_statements() {
        assert!(needs_analysis(
            "EXECUTE find_customer('x')",
            &watched(),
            &["find_customer".into()]
        ));
    }
}
