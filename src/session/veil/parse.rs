//! Parse: a statement that may touch encrypted columns is analysed (the
//! analysis is cached across sessions), its literals encrypted, its
//! parameters bound to encrypted columns declared with their storage type,
//! and a Describe added behind it; one that names nothing watched is
//! forwarded as it is. A refused one is replaced by a Parse that fails in
//! the database, so the pipeline fails where PostgreSQL's own error would.

use std::sync::{Arc, Mutex, OnceLock};

use bytes::BytesMut;
use tokio::io::AsyncWrite;

use super::catalog::{ensure_catalog, watched_for};
use super::extended::{Statement, Step, names_relations, push_step, register};
use super::prepared::{recheck_prepared, record_prepared};
use super::query::{
    analyze_fresh, changes_settings, encrypt_edits, may_change_path, note_cursors,
    passthrough_refusal, pipelined_text_refusal, refusal_token, tainted_names,
};
use super::state::Veil;
use crate::catalog::{Catalog, Encrypted, StorageState};
use crate::crypto::SessionSettings;
use crate::protocol::messages::{extended, parse};
use crate::protocol::types;
use crate::session::SessionError;
use crate::shared::Encryption;
use crate::sql::{Analysis, Refusal, rewrite, scan};

pub(super) async fn on_parse<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
    frame: &[u8],
) -> Result<BytesMut, SessionError> {
    let parsed = parse::decode(frame)
        .map_err(|e| SessionError::Protocol(format!("malformed Parse: {e}")))?;
    let shared = &veil.shared;
    let enc = shared.encryption();
    let mut catalog = veil.cached_catalog();
    let in_batch = veil.state().ext.in_batch;
    if catalog.is_none() && !in_batch {
        catalog = ensure_catalog(veil, writer).await;
    }
    let watched = watched_for(veil, catalog.as_ref(), &enc);
    let prepared = veil.state().prepared.clone();
    let tainted = tainted_names(veil, parsed.query);
    let text = parsed.query;
    let lower = text.to_ascii_lowercase();
    let settings_pending = {
        let changes = changes_settings(&lower);
        let mut st = veil.state();
        if super::watch::drops_listen(&lower) {
            veil.listen_dropped(&mut st);
        }
        let pending = st.ext.settings_pending;
        if changes && !st.ext.skip_until_sync {
            st.ext.settings_pending = true;
            st.settings_changed_in_txn = true;
        }
        pending
    };
    if veil.state().ext.ddl_pending && names_relations(text) {
        return Ok(refuse_parse(
            veil,
            parsed.name,
            text,
            Refusal::general(
                "a statement after DDL on encrypted tables in the same pipeline; send Sync after \
                 the DDL first",
                "catalog",
            ),
        ));
    }
    // SQL `EXECUTE` sent through Parse: the same checks as in a Query.
    if let Some(r) = super::query::unknown_execute(veil, text, &lower, catalog.as_ref()) {
        return Ok(refuse_parse(veil, parsed.name, text, r));
    }
    if !scan::needs_analysis(text, &watched, &tainted) {
        shared
            .metrics
            .statements_total
            .with_label_values(&["extended", "passthrough"])
            .inc();
        let mut statement = Statement::passthrough(text);
        // Judged by this catalog: see `replan.rs`.
        statement.catalog = catalog;
        register(veil, parsed.name, statement, Vec::new());
        return Ok(BytesMut::from(frame));
    }
    let refuse = |r: Refusal| Ok(refuse_parse(veil, parsed.name, text, r));
    let (cat, settings) = match check_parse(veil, text, catalog, in_batch, settings_pending, &enc) {
        Ok(checked) => checked,
        Err(r) => return refuse(r),
    };
    let (analysis, cat) = analyze_fresh(veil, writer, text, cat, &enc, &prepared).await;
    if let Some(r) = check_parse_analysis(veil, &analysis) {
        return refuse(r);
    }
    let encrypted = encrypt_edits(veil, &enc, text, &analysis.statements, &settings);
    let replacements = match encrypted.and_then(|r| match &analysis.refusal {
        Some(refusal) => Err(refusal.clone()),
        None => Ok(r),
    }) {
        Ok(r) => r,
        Err(r) => {
            if enc.config.policy.on_unsupported == crate::config::OnUnsupported::Passthrough
                && r.reason != "invalid_value"
            {
                passthrough_refusal(veil, text, &r, "extended");
                register(veil, parsed.name, Statement::passthrough(text), Vec::new());
                return Ok(BytesMut::from(frame));
            }
            return refuse(r);
        }
    };
    let new_text = if replacements.is_empty() {
        None
    } else {
        match rewrite::splice(text, replacements) {
            Some(t) => Some(t),
            None => {
                return refuse(Refusal::general(
                    "pgveil could not rewrite this statement",
                    "unparsed",
                ));
            }
        }
    };
    let (statement, declared) = analysed_statement(veil, &parsed, &analysis, cat);
    Ok(forward_parse(
        veil,
        frame,
        &parsed,
        statement,
        new_text.as_deref(),
        &declared,
    ))
}

/// What a watched statement must satisfy before it is analysed: the
/// catalog, and the session settings as they stand now (its literals are
/// encrypted with these), or the refusal.
fn check_parse(
    veil: &Veil,
    text: &str,
    catalog: Option<Arc<Catalog>>,
    in_batch: bool,
    settings_pending: bool,
    enc: &Encryption,
) -> Result<(Arc<Catalog>, SessionSettings), Refusal> {
    let lower = text.to_ascii_lowercase();
    if may_change_path(&lower) {
        veil.make_key_private();
    }
    let (utf8, in_flight, standard_strings, settings, pipelined) = {
        let st = veil.state();
        (
            st.utf8,
            st.settings_in_flight,
            st.standard_strings,
            st.settings.clone(),
            pipelined_text_refusal(&st, text),
        )
    };
    if let Some(r) = pipelined {
        return Err(r);
    }
    if !utf8 {
        return Err(Refusal::general(
            "statements on encrypted tables need client_encoding UTF8 (other encodings can hide quotes and backslashes)",
            "unparsed",
        ));
    }
    if in_flight > 0 || settings_pending {
        return Err(Refusal::general(
            "a change to standard_conforming_strings or client_encoding is still in flight; wait for its result",
            "unparsed",
        ));
    }
    if !standard_strings && text.contains('\\') {
        return Err(Refusal::general(
            "backslashes in a statement on encrypted tables while standard_conforming_strings is off",
            "unparsed",
        ));
    }
    let Some(cat) = catalog else {
        return Err(Refusal::general(
            if in_batch {
                "the table definitions changed in this pipeline; send Sync before preparing statements on encrypted tables"
            } else {
                "the catalog of this database could not be read, so the statement cannot be checked"
            },
            "catalog",
        ));
    };
    if let Some(r) = recheck_prepared(veil, text, &cat, enc) {
        return Err(r);
    }
    Ok((cat, settings))
}

/// What an analysed statement must satisfy before its literals are
/// encrypted: `Some` is the refusal. DDL marks the rest of the pipeline.
fn check_parse_analysis(veil: &Veil, analysis: &Analysis) -> Option<Refusal> {
    if analysis.stale {
        return Some(Refusal::general(
            "a configured table that is not in this database's catalog; create it in its own statement first",
            "catalog",
        ));
    }
    if analysis.statements.len() > 1 {
        return Some(Refusal::general(
            "several statements in one prepared statement",
            "unparsed",
        ));
    }
    if analysis.statements.iter().any(|s| s.refresh_catalog) {
        veil.note_ddl();
        veil.state().ext.ddl_pending = true;
    }
    None
}

/// The statement an analysed Parse prepares, and the parameter types to
/// declare for it: parameters bound to encrypted columns take the storage
/// type (an array of it when they carry every stored form).
fn analysed_statement(
    veil: &Veil,
    parsed: &parse::Parse<'_>,
    analysis: &Analysis,
    cat: Arc<Catalog>,
) -> (Statement, Vec<u32>) {
    let text = parsed.query;
    let plan = analysis.statements.first();
    let bindings = plan.map(|p| p.params.clone()).unwrap_or_default();
    let count = bindings
        .keys()
        .max()
        .copied()
        .unwrap_or(0)
        .max(parsed.param_types.len());
    let mut params = vec![None; count];
    let mut declared = parsed.param_types.clone();
    declared.resize(count, 0);
    for (n, b) in &bindings {
        let storage = if b.column.storage == StorageState::Bytea {
            17
        } else {
            25
        };
        if let (Some(p), Some(d)) = (params.get_mut(n - 1), declared.get_mut(n - 1)) {
            *p = Some(b.clone());
            *d = if b.array || b.expand {
                types::array_of(storage)
            } else {
                storage
            };
        }
    }
    record_prepared(veil, text, &analysis.statements, Some(&cat));
    note_cursors(veil, text);
    let statement = Statement {
        sql: text.to_string(),
        analyzed: true,
        params,
        client_types: parsed.param_types.clone(),
        hints: plan.map(|p| p.outputs.clone()).unwrap_or_default(),
        catalog: Some(cat),
        columns: OnceLock::new(),
        from_sql: false,
        copy: plan.and_then(|p| p.copy.clone()),
        decoder: Mutex::new(None),
        counters: Vec::new(),
        conflicted: false,
    };
    let statement = Statement {
        counters: statement
            .params
            .iter()
            .map(|b| {
                b.as_ref().map(|b| {
                    veil.shared
                        .metrics
                        .values_encrypted_total
                        .with_label_values(&[&b.column.id.to_string()])
                })
            })
            .collect(),
        ..statement
    };
    (statement, declared)
}

/// Registers an analysed statement and returns what to send for its Parse:
/// the rewritten Parse (or the original one), followed by a Describe of the
/// statement whose answer pgveil consumes.
fn forward_parse(
    veil: &Veil,
    frame: &[u8],
    parsed: &parse::Parse<'_>,
    statement: Statement,
    new_text: Option<&str>,
    declared: &[u32],
) -> BytesMut {
    let text = parsed.query;
    if !parsed.name.is_empty() && statement.encrypts_params() {
        // `EXECUTE name(...)` in SQL reaches the same statement: its
        // literals must be encrypted the same way.
        let spec: Vec<Option<Encrypted>> = statement
            .params
            .iter()
            .map(|b| b.as_ref().map(|b| b.column.clone()))
            .collect();
        let mut st = veil.state();
        if !st.ext.skip_until_sync {
            let name = parsed.name.to_string();
            if let Some(old) = st.prepared.insert(name.clone(), spec.clone())
                && old != spec
            {
                st.ext.conflicted.insert(name);
            }
        }
    }
    let changed = new_text.is_some() || statement.encrypts_params();
    let statement = register(veil, parsed.name, statement, Vec::new());
    veil.shared
        .metrics
        .statements_total
        .with_label_values(&[
            "extended",
            if changed { "rewritten" } else { "passthrough" },
        ])
        .inc();
    let mut out = if changed {
        extended::encode_parse(parsed.name, new_text.unwrap_or(text), declared)
    } else {
        BytesMut::from(frame)
    };
    // Learn the result columns now, whatever the client describes later.
    out.extend_from_slice(&extended::encode_describe(b'S', parsed.name));
    let mut st = veil.state();
    push_step(
        &mut st,
        Step::DescribeStatement {
            statement: Some(statement),
            injected: true,
        },
    );
    out
}

/// Replaces a Parse by one that fails in the database (so the pipeline
/// fails there, as PostgreSQL's own error would make it), whose error the
/// server pump swaps for the refusal.
fn refuse_parse(veil: &Veil, name: &str, text: &str, refusal: Refusal) -> BytesMut {
    let relation = refusal_token(veil, text, refusal, "extended");
    register(veil, name, Statement::passthrough(""), Vec::new());
    extended::encode_parse(name, &format!("SELECT 1 FROM {relation}"), &[])
}
