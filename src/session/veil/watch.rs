//! What may change how PostgreSQL reads the next statement: settings
//! (`standard_conforming_strings`, `client_encoding`, `search_path`)
//! changed by name or not, and requests still in flight that may have
//! changed them.

use super::state::{Pending, State};
use crate::sql::Refusal;

/// Whether a statement (lower-cased) may change how PostgreSQL reads
/// strings or resolves names: `standard_conforming_strings`,
/// `client_encoding`, `search_path`, by name, through `set_config`, an
/// `UPDATE` of `pg_settings`, `RESET` or `DISCARD`, or with names
/// written in Unicode escapes (`U&"..."`, which can spell any of these).
/// Such a statement is run on its own, and statements on encrypted tables
/// wait for its result. A function or view that changes a setting
/// without naming it is caught by [`pipelined_text_refusal`] and, for
/// the two string settings, by the ParameterStatus the server sends.
pub(super) fn changes_settings(lower: &str) -> bool {
    [
        "standard_conforming_strings",
        "client_encoding",
        "search_path",
        "set_config",
        "pg_settings",
        "u&\"",
    ]
    .iter()
    .any(|k| lower.contains(k))
        || lower
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == "reset" || w == "discard")
}

/// Whether a statement (lower-cased) may stop pgveil's `LISTEN` on the
/// connection: `UNLISTEN` (`*` drops every channel) or `DISCARD ALL`.
pub(super) fn drops_listen(lower: &str) -> bool {
    (lower.contains("unlisten") || lower.contains("discard"))
        && lower
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == "unlisten" || w == "discard")
}

/// Whether a statement may change the session's `search_path` (then the
/// session gets a catalog of its own, loaded after the change).
pub(super) fn may_change_path(lower: &str) -> bool {
    // `SET ROLE` and `SET SESSION AUTHORIZATION` change what `"$user"` in
    // the path resolves to.
    if changes_settings(lower) {
        return true;
    }
    if !(lower.contains("role") || lower.contains("authorization")) {
        return false;
    }
    lower.split(';').any(|statement| {
        let words: Vec<&str> = statement
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .collect();
        matches!(
            words.as_slice(),
            ["set", "role", ..] | ["set", "local" | "session", "role", ..]
        ) || words.windows(2).any(|w| w == ["session", "authorization"])
    })
}

/// Whether a request still in flight may change settings: anything that
/// runs SQL, except transaction control executed through the extended
/// protocol (pgjdbc sends `BEGIN` in the same batch as the statement).
/// Parse, Bind, Describe and Close run nothing; a Sync's own answer is
/// only the end of its batch.
fn may_change_settings(p: &Pending, ends_restore: bool) -> bool {
    use super::extended::Step;
    match p {
        Pending::Catalog(_) | Pending::Passthrough(_) => false,
        Pending::Step(Step::Execute { portal, .. }) => !portal
            .as_ref()
            .and_then(|p| p.statement.as_ref())
            .is_some_and(|s| !ends_restore && is_transaction_control(&s.sql)),
        Pending::Step(_) => false,
        _ => true,
    }
}

/// `BEGIN`, `COMMIT`, `ROLLBACK` and their kin, alone: they change no
/// setting, unless a setting was changed in the transaction they end
/// (`ends_restore` above: its end may restore the old value).
fn is_transaction_control(sql: &str) -> bool {
    let sql = sql.trim().trim_end_matches(';').trim();
    if sql.contains(';') {
        return false;
    }
    let first = sql
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(
        first.as_str(),
        "begin" | "start" | "commit" | "end" | "rollback" | "savepoint" | "release" | "abort"
    )
}

/// A statement on encrypted tables sent while earlier ones are still
/// running: any of them may have changed `standard_conforming_strings` or
/// `client_encoding` (a function, a view over `pg_settings`), which
/// changes how backslashes and non-ASCII bytes are read, and the server's
/// ParameterStatus saying so has not arrived yet. Text without either
/// reads the same under every setting, so only such text is refused.
pub(super) fn pipelined_text_refusal(st: &State, text: &str) -> Option<Refusal> {
    let ends_restore = st.settings_changed_in_txn;
    let earlier = st
        .pending
        .iter()
        .any(|p| may_change_settings(p, ends_restore));
    (earlier && (text.contains('\\') || !text.is_ascii())).then(|| {
        Refusal::general(
            "a statement on encrypted tables with backslashes or non-ASCII text sent before earlier statements answered (they may change how strings are read); wait for their results",
            "unparsed",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisten_and_discard_drop_the_listen() {
        assert!(super::drops_listen("unlisten *"));
        assert!(super::drops_listen("select 1; discard all"));
        assert!(!super::drops_listen("listen pgveil_catalog"));
        assert!(!super::drops_listen("select unlistened from t"));
    }

    #[test]
    fn settings_changes_are_seen_however_spelled() {
        for s in [
            "set standard_conforming_strings = off",
            "update pg_settings set setting = 'off' where name = 'standard_' || 'conforming_strings'",
            "select set_config('search_' || 'path', 'x', false)",
            "set u&\"search\\005fpath\" = x",
            "reset all",
            "discard all",
        ] {
            assert!(changes_settings(s), "{s}");
        }
        assert!(!changes_settings(
            "select role, name from users where reset_at is null"
        ));
    }

    #[test]
    fn role_changes_change_the_path() {
        assert!(may_change_path("set role tenant_b"));
        assert!(may_change_path("set local role tenant_b"));
        assert!(may_change_path("set session authorization bob"));
        assert!(!may_change_path("select role from users"));
        assert!(!may_change_path("update users set role = 'admin'"));
    }

    #[test]
    fn transaction_control_is_told_apart() {
        for s in [
            "BEGIN",
            "begin isolation level serializable",
            "COMMIT;",
            "ROLLBACK TO SAVEPOINT a",
            "END",
        ] {
            assert!(is_transaction_control(s), "{s}");
        }
        for s in [
            "BEGIN; SELECT set_config('a', 'b', false)",
            "SELECT 1",
            "SET x = 1",
        ] {
            assert!(!is_transaction_control(s), "{s}");
        }
    }
}
