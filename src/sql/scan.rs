//! The fast path: most statements of a CRM never name an encrypted table,
//! and they pass without a parse. The scan uses PostgreSQL's own lexer and
//! errs only toward analysis: any identifier or keyword equal to a watched
//! name (configured table, view over one, encrypted column, prepared
//! statement or cursor created from such SQL, a function that reads tables
//! it does not name), or a Unicode-escaped identifier, sends the statement
//! to the analyzer. Constants and comments are not names, except in text
//! that holds code in strings (`DO`, function bodies), where every word
//! counts; text PostgreSQL's lexer cannot read is judged by its words.

use super::analyze::Watched;
use super::referee;

/// Whether `text` must be analysed.
pub fn needs_analysis(text: &str, watched: &Watched, tainted: &[String]) -> bool {
    if watched.names.is_empty() && tainted.is_empty() {
        return false;
    }
    // A name PostgreSQL's lexer would find is, lower-cased, a substring of
    // the lower-cased text: most statements are ruled out here, without
    // the lexer.
    let lower = text.to_lowercase();
    let may_name = |n: &String| n.contains('"') || lower.contains(n.as_str());
    // Code in an escape string (`DO E'...'`) may spell a name in escapes.
    let escaped_code = lower.contains("e'")
        && (lower.contains("do") || lower.contains("function") || lower.contains("procedure"));
    let may_hit = lower.contains("u&")
        || escaped_code
        || referee::REFUSED_HINTS.iter().any(|h| lower.contains(h))
        || watched.names.iter().any(may_name)
        || tainted
            .iter()
            .map(|t| t.to_lowercase())
            .any(|t| may_name(&t))
        || (lower.contains("rename") && watched.schemas.iter().any(may_name));
    if !may_hit {
        return false;
    }
    let named = |w: &str| {
        watched.names.iter().any(|n| n == w)
            || tainted.iter().any(|n| n == w)
            || referee::refused_function(w)
    };
    // With standard_conforming_strings off a backslash escapes a quote, and
    // in a multi-byte client encoding a byte pgveil reads as a backslash
    // (or could not read at all) may be part of a character: where either
    // can occur, PostgreSQL's tokens may differ from the lexer's here, so
    // every word counts.
    if (text.contains('\\') || text.contains('\u{FFFD}')) && words_hit(text, watched, tainted) {
        return true;
    }
    match referee::scan_names(text, named) {
        Some(scan) => {
            scan.hit
                || (scan.bodies && words_hit(text, watched, tainted))
                || (scan.bodies && bodies_hit(text, scan, watched, tainted))
                || (scan.renames && names_schema(text, watched))
        }
        None => words_hit(text, watched, tainted),
    }
}

/// Whether the decoded code in `text`'s escape or Unicode strings names a
/// watched or tainted word (or PostgreSQL cannot parse it).
fn bodies_hit(text: &str, scan: referee::NameScan, watched: &Watched, tainted: &[String]) -> bool {
    scan.escaped
        && referee::code_bodies(text)
            .is_none_or(|bodies| bodies.iter().any(|b| words_hit(b, watched, tainted)))
}

/// Whether `text` names a schema holding configured tables.
fn names_schema(text: &str, watched: &Watched) -> bool {
    referee::scan_names(text, |w| watched.schemas.iter().any(|s| s == w)).is_none_or(|s| s.hit)
}

/// Whether any watched or tainted name occurs as a word anywhere in `text`
/// (strings and comments included).
fn words_hit(text: &str, watched: &Watched, tainted: &[String]) -> bool {
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
            schemas: vec!["crm".into()],
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
    fn strings_and_comments_are_not_names_outside_code_bodies() {
        assert!(!needs_analysis(
            "NOTIFY c, 'email changed' -- customers",
            &watched(),
            &[]
        ));
        assert!(needs_analysis(
            "DO $$ BEGIN DELETE FROM customers; END $$",
            &watched(),
            &[]
        ));
        assert!(needs_analysis(
            "select 'unterminated customers",
            &watched(),
            &[]
        ));
        assert!(needs_analysis(
            "select schema_to_xml('crm', true, false, '')",
            &watched(),
            &[]
        ));
    }

    #[test]
    fn decodes_code_in_escape_and_unicode_strings() {
        for sql in [
            "DO E'BEGIN DELETE FROM \\x63ustomers; END'",
            "DO U&'BEGIN DELETE FROM !0063ustomers; END' UESCAPE '!'",
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS E'DELETE FROM \\143ustomers'",
            "select cron.schedule('x', '* * * * *', 'select 1')",
            "select * from crosstab('select 1')",
        ] {
            assert!(needs_analysis(sql, &watched(), &[]), "{sql}");
        }
        assert!(!needs_analysis(
            "DO E'BEGIN PERFORM 1; END'",
            &watched(),
            &[]
        ));
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
