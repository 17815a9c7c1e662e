//! The simple-Query path: a Query that names nothing watched passes
//! untouched; one that does is analysed, its literals are encrypted and
//! spliced in, or it is replaced by statements that make the database
//! raise the refusal. Refusal tokens, encryption of literals and the
//! analysis with a fresh catalog are shared with the extended protocol.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tracing::warn;

use super::catalog::{ensure_catalog, watched_for};
use super::copy::start_copies;
use super::prepared::{recheck_prepared, record_prepared};
use super::state::{Pending, QueryState, Veil};
use super::watch::drops_listen;
pub(super) use super::watch::{changes_settings, may_change_path, pipelined_text_refusal};
use crate::catalog::{Catalog, Encrypted};
use crate::crypto::{Format, Keyring, SessionSettings};
use crate::protocol::messages::query;
use crate::session::SessionError;
use crate::shared::Encryption;
use crate::sql::{Analysis, Refusal, rewrite, scan};

/// A simple Query as received: its frame, its text, and when it arrived.
struct Received<'a> {
    frame: &'a [u8],
    text: &'a str,
    started: Instant,
}

/// Handles a simple Query: passes it, rewrites it, or replaces it with a
/// refusal the database raises. Returns the frame to send.
pub(super) async fn on_query<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
    frame: &[u8],
) -> Result<BytesMut, SessionError> {
    let started = Instant::now();
    let bytes = match query::decode_bytes(frame) {
        Ok(b) => b,
        Err(e) => return Err(SessionError::Protocol(format!("malformed Query: {e}"))),
    };
    // pgveil reads SQL as UTF-8. Text in another client encoding is
    // scanned as far as it can be (names are ASCII): if it names nothing
    // watched it passes untouched, else it is refused below.
    let lossy;
    let (text, utf8_text) = match std::str::from_utf8(bytes) {
        Ok(t) => (t, true),
        Err(_) => {
            lossy = String::from_utf8_lossy(bytes).into_owned();
            (lossy.as_str(), false)
        }
    };
    let q = Received {
        frame,
        text,
        started,
    };
    {
        // A simple Query destroys the unnamed statement and portal: a
        // reload no longer concerns them.
        let mut st = veil.state();
        if !st.ext.in_batch {
            st.ext.statements.remove("");
            st.ext.portals.remove("");
        }
    }
    let shared = &veil.shared;
    let enc = shared.encryption();
    let mut catalog = veil.cached_catalog();
    if catalog.is_none() {
        catalog = ensure_catalog(veil, writer).await;
    }
    let watched = watched_for(veil, catalog.as_ref(), &enc);
    let lower = text.to_ascii_lowercase();
    if may_change_path(&lower) {
        // Name resolution may change: this session gets a catalog of its own.
        veil.make_key_private();
    }
    let changes_settings = changes_settings(&lower);
    {
        let mut st = veil.state();
        st.next_changes_settings = changes_settings;
        if drops_listen(&lower) {
            veil.listen_dropped(&mut st);
        }
    }
    let prepared = veil.state().prepared.clone();
    let tainted = tainted_names(veil, text);
    if !scan::needs_analysis(text, &watched, &tainted) {
        return Ok(pass_unwatched(veil, &q, &lower, catalog));
    }
    let cat = match check_unanalysed(veil, &q, &lower, utf8_text, changes_settings, catalog, &enc) {
        Ok(cat) => cat,
        Err(refused) => return Ok(refused),
    };
    let (analysis, cat) = analyze_fresh(veil, writer, text, cat, &enc, &prepared).await;
    let settings = match check_analysis(veil, text, &analysis) {
        Ok(settings) => settings,
        Err(r) => return Ok(refuse(veil, text, &[], r, Some(cat), started)),
    };
    Ok(forward_analysed(veil, &q, &analysis, cat, &enc, &settings))
}

/// A Query that names nothing watched: forwarded as it is, unless it
/// executes a prepared statement nobody prepared through pgveil.
fn pass_unwatched(
    veil: &Veil,
    q: &Received<'_>,
    lower: &str,
    catalog: Option<Arc<Catalog>>,
) -> BytesMut {
    let (text, started) = (q.text, q.started);
    veil.shared
        .metrics
        .statements_total
        .with_label_values(&["simple", "passthrough"])
        .inc();
    if let Some(r) = unknown_execute(veil, text, lower, catalog.as_ref()) {
        return refuse(veil, text, &[], r, catalog, started);
    }
    if lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| w == "prepare")
    {
        let names = prepared_names(text);
        let judged = (
            Arc::<str>::from(text),
            catalog.as_ref().map_or(0, |c| c.generation),
        );
        let mut st = veil.state();
        st.unanalysed_prepare = true;
        st.plain_prepared
            .extend(names.into_iter().map(|n| (n, judged.clone())));
    }
    push_query(veil, Vec::new(), catalog, started);
    BytesMut::from(q.frame)
}

/// What a watched Query must satisfy before it is analysed: the catalog,
/// or the refusal to send in its place.
fn check_unanalysed(
    veil: &Veil,
    q: &Received<'_>,
    lower: &str,
    utf8_text: bool,
    changes_settings: bool,
    catalog: Option<Arc<Catalog>>,
    enc: &Encryption,
) -> Result<Arc<Catalog>, BytesMut> {
    let (text, started) = (q.text, q.started);
    let (utf8, in_flight, pipelined) = {
        let st = veil.state();
        (
            st.utf8,
            st.settings_in_flight,
            pipelined_text_refusal(&st, text),
        )
    };
    if let Some(r) = pipelined {
        return Err(refuse(veil, text, &[], r, catalog, started));
    }
    if !utf8 || !utf8_text {
        let r = Refusal::general(
            "statements on encrypted tables need client_encoding UTF8 (other encodings can hide quotes and backslashes)",
            "unparsed",
        );
        return Err(refuse(veil, text, &[], r, catalog, started));
    }
    // A statement that changes how strings are read is safe to analyse on
    // its own (PostgreSQL parses it before it runs), but not together with
    // statements after it in the same Query.
    let several = crate::sql::source::Source::new(text).is_none_or(|s| s.statements().len() > 1);
    if (changes_settings && several) || in_flight > 0 {
        let r = Refusal::general(
            "a change to standard_conforming_strings or client_encoding is in the same Query or still in flight; send it on its own and wait for its result",
            "unparsed",
        );
        return Err(refuse(veil, text, &[], r, catalog, started));
    }
    let Some(cat) = catalog else {
        let r = Refusal::general(
            "the catalog of this database could not be read, so the statement cannot be checked",
            "catalog",
        );
        return Err(refuse(veil, text, &[], r, None, started));
    };
    if let Some(r) = recheck_prepared(veil, text, &cat, enc) {
        return Err(refuse(veil, text, &[], r, Some(cat), started));
    }
    if let Some(r) = unknown_execute(veil, text, lower, Some(&cat)) {
        return Err(refuse(veil, text, &[], r, Some(cat), started));
    }
    Ok(cat)
}

/// What an analysed Query must satisfy before its literals are encrypted:
/// the session settings to encrypt them with, or the refusal.
fn check_analysis(
    veil: &Veil,
    text: &str,
    analysis: &Analysis,
) -> Result<SessionSettings, Refusal> {
    if analysis.stale {
        // A configured table this database does not have (yet): perhaps
        // created earlier in this same Query. pgveil cannot know its
        // columns, so it refuses rather than guess.
        return Err(Refusal::general(
            "a configured table that is not in this database's catalog; create it in its own statement first",
            "catalog",
        ));
    }
    if analysis.statements.iter().any(|s| s.refresh_catalog) {
        veil.note_ddl();
    }
    let (standard_strings, settings) = {
        let st = veil.state();
        (st.standard_strings, st.settings.clone())
    };
    if !standard_strings && text.contains('\\') {
        return Err(Refusal::general(
            "backslashes in a statement on encrypted tables while standard_conforming_strings is off",
            "unparsed",
        ));
    }
    let copy_from = analysis
        .statements
        .iter()
        .any(|s| s.copy.as_ref().is_some_and(|c| !c.to));
    if copy_from && analysis.statements.len() + usize::from(analysis.refusal.is_some()) > 1 {
        // One encrypting stream per Query: its data must not be mistaken
        // for another COPY's.
        return Err(Refusal::general(
            "COPY FROM STDIN into encrypted columns together with other statements in one Query; send it on its own",
            "copy",
        ));
    }
    Ok(settings)
}

/// Encrypts an analysed Query's literals and returns the frame to send:
/// the rewritten Query, the original one, or a refusal.
fn forward_analysed(
    veil: &Veil,
    q: &Received<'_>,
    analysis: &Analysis,
    cat: Arc<Catalog>,
    enc: &Encryption,
    settings: &SessionSettings,
) -> BytesMut {
    let (frame, text, started) = (q.frame, q.text, q.started);
    let encrypted = encrypt_edits(veil, enc, text, &analysis.statements, settings);
    let refusal = match (&encrypted, &analysis.refusal) {
        (Err(r), _) | (Ok(_), Some(r)) => Some(r.clone()),
        _ => None,
    };
    if let Some(r) = refusal {
        if enc.config.policy.on_unsupported == crate::config::OnUnsupported::Passthrough
            && r.reason != "invalid_value"
        {
            passthrough_refusal(veil, text, &r, "simple");
            push_query(veil, Vec::new(), Some(cat), started);
            if analysis.statements.iter().any(|s| s.copy.is_some()) {
                start_copies(veil, &analysis.statements);
            }
            return BytesMut::from(frame);
        }
        return refuse(veil, text, &analysis.statements, r, Some(cat), started);
    }
    let replacements = encrypted.unwrap_or_default();
    let new_text = if replacements.is_empty() {
        None
    } else {
        match rewrite::splice(text, replacements) {
            Some(t) => Some(t),
            None => {
                let r = Refusal::general("pgveil could not rewrite this statement", "unparsed");
                return refuse(veil, text, &[], r, None, started);
            }
        }
    };
    let hints = analysis
        .statements
        .iter()
        .map(|s| s.outputs.clone())
        .collect();
    record_prepared(veil, text, &analysis.statements, Some(&cat));
    note_cursors(veil, text);
    push_query(veil, hints, Some(cat), started);
    if analysis.statements.iter().any(|s| s.copy.is_some()) {
        start_copies(veil, &analysis.statements);
    }
    let kind = if new_text.is_some() {
        "rewritten"
    } else {
        "passthrough"
    };
    veil.shared
        .metrics
        .statements_total
        .with_label_values(&["simple", kind])
        .inc();
    match new_text {
        Some(t) => query::encode(&t),
        None => BytesMut::from(frame),
    }
}

/// The names `PREPARE` statements in `text` create, by PostgreSQL's parser.
/// Remembers the cursors an analysed statement declares.
pub(super) fn note_cursors(veil: &Veil, text: &str) {
    if !text.to_ascii_lowercase().contains("declare") {
        return;
    }
    let Ok(referee) = crate::sql::referee::examine(text) else {
        return;
    };
    let mut st = veil.state();
    for facts in referee.statements {
        if facts.kind == "DeclareCursorStmt" {
            st.cursors.extend(facts.cursors);
        }
    }
}

/// The names that make a statement need analysis although it names
/// nothing watched: SQL prepared statements over encrypted tables, and,
/// for a `FETCH`, cursors declared over them.
pub(super) fn tainted_names(veil: &Veil, text: &str) -> Vec<String> {
    let st = veil.state();
    let mut names: Vec<String> = st.prepared.keys().cloned().collect();
    let fetch = text
        .trim_start()
        .get(..5)
        .is_some_and(|w| w.eq_ignore_ascii_case("fetch"));
    if fetch {
        names.extend(st.cursors.iter().cloned());
    }
    names
}

fn prepared_names(text: &str) -> Vec<String> {
    crate::sql::referee::examine(text)
        .map(|r| {
            r.statements
                .into_iter()
                .filter(|f| f.kind == "PrepareStmt")
                .flat_map(|f| f.prepared)
                .collect()
        })
        .unwrap_or_default()
}

/// `EXECUTE` of a prepared statement this session never prepared through
/// pgveil: PostgreSQL would fail it and write the statement, arguments
/// included, to its log; pgveil fails it in its place (SQLSTATE 26000, as
/// PostgreSQL would) without sending the arguments.
pub(super) fn unknown_execute(
    veil: &Veil,
    text: &str,
    lower: &str,
    catalog: Option<&Arc<Catalog>>,
) -> Option<Refusal> {
    if !lower.contains("execute") {
        return None;
    }
    if let Some(r) = super::replan::replanned_sql(veil, text, catalog) {
        return Some(r);
    }
    let referee = crate::sql::referee::examine(text).ok()?;
    let st = veil.state();
    let mut earlier: Vec<&str> = Vec::new();
    for facts in &referee.statements {
        if facts.kind == "PrepareStmt" {
            earlier.extend(facts.prepared.iter().map(String::as_str));
            continue;
        }
        if !facts.nodes.contains("ExecuteStmt") {
            continue;
        }
        for name in &facts.prepared {
            let known = st.prepared.contains_key(name)
                || st.plain_prepared.contains_key(name)
                || st.ext.statements.contains_key(name)
                || earlier.contains(&name.as_str());
            if !known {
                return Some(Refusal {
                    sqlstate: "26000",
                    ..Refusal::general(
                        format!("prepared statement \"{name}\" does not exist"),
                        "unknown_prepared",
                    )
                });
            }
        }
    }
    None
}

/// Queues the response expectations of a Query. Its overhead is the time
/// since `started`, less any catalog load (a database round trip, not
/// pgveil's own work).
fn push_query(
    veil: &Veil,
    hints: Vec<Vec<Option<Encrypted>>>,
    catalog: Option<Arc<Catalog>>,
    started: Instant,
) {
    let mut st = veil.state();
    if st.txn_ddl {
        // This Query may roll back to a savepoint or fail: the next one
        // reads the catalog again.
        st.txn_catalog = None;
    }
    let waited = std::mem::take(&mut st.catalog_wait);
    let mut pending = QueryState::pending(hints, catalog, started);
    let changes = std::mem::take(&mut st.next_changes_settings);
    if let Pending::Query(q) = &mut pending {
        q.overhead = q.overhead.saturating_sub(waited);
        q.changes_settings = changes;
    }
    if st.ext.skip_until_sync {
        // The server ignores this Query (it skips everything until Sync).
        return;
    }
    if changes {
        st.settings_in_flight += 1;
        st.settings_changed_in_txn = true;
    }
    st.pending.push_back(pending);
}

/// Replaces a Query with the statements before the refused one (rewritten
/// as planned) followed by a statement that makes the database raise the
/// refusal, so the transaction fails exactly as PostgreSQL would fail it.
fn refuse(
    veil: &Veil,
    text: &str,
    before: &[crate::sql::StatementPlan],
    refusal: Refusal,
    catalog: Option<Arc<Catalog>>,
    started: Instant,
) -> BytesMut {
    let shared = &veil.shared;
    let enc = shared.encryption();
    count_refusal(veil, text, &refusal, "simple", before.len());
    let (settings, standard_strings) = {
        let st = veil.state();
        (st.settings.clone(), st.standard_strings)
    };
    let mut parts = Vec::new();
    let mut hints = Vec::new();
    record_prepared(veil, text, before, catalog.as_deref());
    for plan in before {
        if plan.copy.is_some() {
            // Its data would follow unencrypted: the refusal replaces it
            // and everything after it.
            break;
        }
        let mut replacements: Vec<(std::ops::Range<usize>, String)> = plan
            .replacements
            .iter()
            .map(|(r, t)| {
                (
                    r.start - plan.range.start..r.end - plan.range.start,
                    t.clone(),
                )
            })
            .collect();
        let mut ok = true;
        for edit in &plan.edits {
            match encrypt_literal(
                enc.keyring.as_deref(),
                edit,
                text,
                &settings,
                standard_strings,
            ) {
                Ok(lit) => replacements.push((
                    edit.range.start - plan.range.start..edit.range.end - plan.range.start,
                    lit,
                )),
                Err(_) => ok = false,
            }
        }
        let Some(stmt) = text.get(plan.range.clone()) else {
            break;
        };
        match (ok, rewrite::splice(stmt, replacements)) {
            (true, Some(s)) => {
                parts.push(s);
                hints.push(plan.outputs.clone());
            }
            _ => break,
        }
    }
    if parts.is_empty() {
        // Only the refusal runs: whatever settings the client's text would
        // have changed stay as they are, so nothing is in flight (a client
        // that pipelines its next Query is not refused for it).
        veil.state().next_changes_settings = false;
    }
    parts.push(refusal.raise_statement());
    hints.push(Vec::new());
    push_query(veil, hints, catalog, started);
    query::encode(&parts.join("; "))
}

/// Counts and logs a refusal in the extended protocol and returns the name
/// of a relation that does not exist: a statement using it fails in the
/// database, in place, and the server pump swaps that error for the refusal.
pub(super) fn refusal_token(veil: &Veil, text: &str, refusal: Refusal, protocol: &str) -> String {
    count_refusal(veil, text, &refusal, protocol, 0);
    let mut token = [0u8; 12];
    let _ = getrandom::fill(&mut token);
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let relation = format!("pgveil_refused_{token}");
    veil.state()
        .refusal_tokens
        .push((relation.clone(), refusal));
    relation
}

/// Counts a refusal and writes its audit line; the fingerprint covers the
/// statements up to the refused one (index `refused`), never after it.
fn count_refusal(veil: &Veil, text: &str, refusal: &Refusal, protocol: &str, refused: usize) {
    let metrics = &veil.shared.metrics;
    metrics
        .statements_total
        .with_label_values(&[protocol, "refused"])
        .inc();
    metrics
        .refused_statements_total
        .with_label_values(&[refusal.reason])
        .inc();
    warn!(target: "audit", client = %veil.peer, database = %veil.database, user = %veil.user,
          reason = refusal.reason, column = refusal.column.as_deref().unwrap_or(""),
          fingerprint = %audit_fingerprint(veil, text, Some(refused)), "statement refused");
}

/// The audit fingerprint of `text`, keeping the quoted names this session
/// watches (see [`crate::sql::referee::fingerprint`]).
fn audit_fingerprint(veil: &Veil, text: &str, through: Option<usize>) -> String {
    let watched = veil.state().watched.as_ref().map(|(_, w)| w.clone());
    crate::sql::referee::fingerprint(text, through, &|name: &str| {
        watched.as_ref().is_some_and(|w| w.is_name(name))
    })
}

/// A statement that would be refused, forwarded because
/// `policy.on_unsupported = "passthrough"`: counted and logged.
pub(super) fn passthrough_refusal(veil: &Veil, text: &str, r: &Refusal, protocol: &str) {
    let shared = &veil.shared;
    shared
        .metrics
        .refused_statements_total
        .with_label_values(&[r.reason])
        .inc();
    warn!(target: "audit", client = %veil.peer, database = %veil.database, user = %veil.user,
          reason = r.reason, column = r.column.as_deref().unwrap_or(""),
          fingerprint = %audit_fingerprint(veil, text, None),
          "statement would be refused; forwarded because policy.on_unsupported = passthrough");
    shared
        .metrics
        .statements_total
        .with_label_values(&[protocol, "passthrough"])
        .inc();
}

/// Analyses a statement, reloading the catalog once if the analysis says it
/// is stale (a configured table created since it was read).
pub(super) async fn analyze_fresh<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
    text: &str,
    mut cat: Arc<Catalog>,
    enc: &Encryption,
    prepared: &HashMap<String, Vec<Option<Encrypted>>>,
) -> (Arc<crate::sql::Analysis>, Arc<Catalog>) {
    let shared = &veil.shared;
    let watched = watched_for(veil, Some(&cat), enc);
    let mut analysis = shared.analyze_cached(text, &cat, &watched, &enc.configured, prepared);
    if analysis.stale && !veil.state().ext.in_batch {
        veil.forget_catalog();
        if let Some(fresh) = ensure_catalog(veil, writer).await {
            cat = fresh;
            let watched = watched_for(veil, Some(&cat), enc);
            analysis = shared.analyze_cached(text, &cat, &watched, &enc.configured, prepared);
        }
    }
    if analysis.statements.iter().any(|s| s.sets_search_path) {
        veil.make_key_private();
    }
    (analysis, cat)
}

/// Encrypts every literal the plans found: the text replacements to make
/// (declared parameter types and casts included).
pub(super) fn encrypt_edits(
    veil: &Veil,
    enc: &Encryption,
    text: &str,
    plans: &[crate::sql::StatementPlan],
    settings: &SessionSettings,
) -> Result<Vec<(std::ops::Range<usize>, String)>, Refusal> {
    let standard_strings = veil.state().standard_strings;
    let mut replacements = Vec::new();
    for plan in plans {
        replacements.extend(plan.replacements.iter().cloned());
        for edit in &plan.edits {
            let lit = encrypt_literal(
                enc.keyring.as_deref(),
                edit,
                text,
                settings,
                standard_strings,
            )?;
            veil.shared
                .metrics
                .values_encrypted_total
                .with_label_values(&[&edit.column.id.to_string()])
                .inc();
            replacements.push((edit.range.clone(), lit));
        }
    }
    Ok(replacements)
}

fn encrypt_literal(
    keyring: Option<&Keyring>,
    edit: &crate::sql::Edit,
    text: &str,
    settings: &SessionSettings,
    standard_strings: bool,
) -> Result<String, Refusal> {
    use crate::sql::analyze::Forms;
    let column = edit.column.id.to_string();
    let cipher = keyring
        .and_then(|k| k.column_by_id(&edit.column.id))
        .ok_or_else(|| Refusal::general(format!("no key for column {column}"), "unsupported"))?;
    let storage =
        edit.column.storage.storage().ok_or_else(|| {
            Refusal::on_column(&column, "storing ciphertext in this type", "storage")
        })?;
    let bad = |e: crate::crypto::CryptoError| {
        Refusal::bad_value(&column, edit.column.value_type.name(), e.sqlstate())
    };
    if cipher.form_count() != edit.column.forms {
        // Analysed before a reload changed the key versions or `migrating`.
        return Err(stale_forms(&column));
    }
    if edit.forms == Forms::One || edit.column.forms <= 1 {
        let stored = cipher
            .encrypt(Format::Text, edit.text.as_bytes(), storage, settings)
            .map_err(bad)?;
        return Ok(rewrite::ciphertext_literal(
            &stored,
            storage,
            standard_strings,
        ));
    }
    let forms = cipher
        .forms(Format::Text, edit.text.as_bytes(), storage, settings)
        .map_err(bad)?;
    let plaintext_form = cipher.migrating().then(|| forms.len() - 1);
    let mut literals = Vec::with_capacity(forms.len());
    for (i, form) in forms.iter().enumerate() {
        literals.push(if Some(i) == plaintext_form {
            // The plaintext as the client wrote it (quoting and escapes are
            // right for the session's settings by construction).
            text.get(edit.range.clone())
                .ok_or_else(|| Refusal::general("a literal pgveil cannot locate", "unparsed"))?
                .to_string()
        } else {
            rewrite::ciphertext_literal(form, storage, standard_strings)
        });
    }
    let list = literals.join(", ");
    Ok(match edit.forms {
        Forms::Any => format!("ANY(ARRAY[{list}])"),
        Forms::All => format!("ALL(ARRAY[{list}])"),
        Forms::List | Forms::One => list,
    })
}

/// The configuration changed between analysis and execution: the number of
/// stored forms the statement was written for no longer holds.
pub(super) fn stale_forms(column: &str) -> Refusal {
    Refusal::on_column(
        column,
        "a statement analysed before the key versions or `migrating` changed (retry it)",
        "reload",
    )
}
