//! The extended query protocol: Parse, Bind, Describe, Execute, Close and
//! Sync from the client, and the statements, portals and steps they leave
//! for the responses. The responses themselves are handled in `backend/`,
//! one module per message.
//!
//! Every client message that the server answers pushes one [`Step`] onto
//! the session's response FIFO, so the server pump knows which statement or
//! portal each ParseComplete, ParameterDescription, RowDescription or
//! DataRow belongs to, however many messages are pipelined before a Sync.
//! After an error PostgreSQL skips everything until Sync, and so do the
//! steps: they are dropped, and registrations they made are rolled back.
//!
//! A statement that may touch encrypted columns is analysed at Parse (the
//! analysis is cached across sessions); its literals are encrypted, its
//! parameters bound to encrypted columns are declared with their storage
//! type, and a Describe of the statement is added behind it so the result
//! columns are known before any row arrives, even when the client never
//! describes them. Bind then encrypts those parameters in the format the
//! client chose.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::AsyncWrite;

use super::catalog::{ensure_catalog, watched_for};
use super::copy::CopyStream;
use super::parameters;
use super::prepared::{recheck_prepared, record_prepared};
use super::query::{
    analyze_fresh, changes_settings, encrypt_edits, may_change_path, note_cursors,
    passthrough_refusal, pipelined_text_refusal, refusal_token, tainted_names,
};
use super::state::{Decoder, Pending, State, Veil};
use crate::catalog::{Catalog, Encrypted, StorageState};
use crate::crypto::SessionSettings;
use crate::protocol::messages::{extended, parse};
use crate::protocol::types;
use crate::session::SessionError;
use crate::shared::Encryption;
use crate::sql::analyze::ParamBinding;
use crate::sql::{Analysis, Refusal, rewrite, scan};

/// Result formats and the decoder built for them (`None`: nothing to decrypt).
pub(super) type CachedDecoder = (Vec<i16>, Option<Arc<Decoder>>);

/// A prepared statement as pgveil prepared it.
pub(super) struct Statement {
    /// The SQL as the client sent it, to analyse again after a reload.
    pub sql: String,
    /// Whether the analyzer saw it (it names something encrypted).
    pub analyzed: bool,
    /// Per parameter (`$n` at index n-1): the encrypted column it is bound to.
    pub params: Vec<Option<ParamBinding>>,
    /// Parameter types as the client declared them (0: unspecified).
    pub client_types: Vec<u32>,
    /// Encrypted result columns PostgreSQL reports without an origin.
    pub hints: Vec<Option<Encrypted>>,
    /// The catalog it was analysed against.
    pub catalog: Option<Arc<Catalog>>,
    /// Encrypted result columns by position, once the statement's
    /// RowDescription has arrived.
    pub columns: OnceLock<Vec<Option<Encrypted>>>,
    /// Made from a SQL `PREPARE`: its result columns are learned per portal.
    pub from_sql: bool,
    /// A COPY over encrypted columns.
    pub copy: Option<Arc<crate::sql::analyze::CopyPlan>>,
    /// The last decoder built for its rows, by result formats: a hot
    /// prepared statement builds it once, not per Execute.
    pub decoder: Mutex<Option<CachedDecoder>>,
    /// Per parameter: its `values_encrypted_total` counter.
    pub counters: Vec<Option<prometheus::IntCounter>>,
    /// See [`Extended::conflicted`].
    pub conflicted: bool,
}

impl Statement {
    fn passthrough(sql: &str) -> Statement {
        Statement {
            sql: sql.to_string(),
            analyzed: false,
            params: Vec::new(),
            client_types: Vec::new(),
            hints: Vec::new(),
            catalog: None,
            columns: OnceLock::new(),
            from_sql: false,
            copy: None,
            decoder: Mutex::new(None),
            counters: Vec::new(),
            conflicted: false,
        }
    }

    pub(super) fn encrypts_params(&self) -> bool {
        self.params.iter().any(Option::is_some) || self.conflicted
    }

    /// A name whose definition is uncertain: every Bind of it is refused.
    fn conflicted(name: &str) -> Statement {
        Statement {
            conflicted: true,
            ..Statement::passthrough(name)
        }
    }
}

/// A portal: a bound statement and the result formats the client asked for.
pub(super) struct Portal {
    pub statement: Option<Arc<Statement>>,
    pub result_formats: Vec<i16>,
    /// Encrypted result columns, from a Describe of this portal.
    pub columns: OnceLock<Vec<Option<Encrypted>>>,
}

/// The response a client message is waiting for.
pub(super) enum Step {
    /// ParseComplete. Until it arrives the registration can be undone.
    Parse {
        name: String,
        new: Arc<Statement>,
        previous: Option<Arc<Statement>>,
    },
    /// BindComplete.
    Bind {
        name: String,
        new: Arc<Portal>,
        previous: Option<Arc<Portal>>,
    },
    /// CloseComplete: the statement or portal is forgotten only then.
    Close {
        statement: Option<(String, Arc<Statement>)>,
        portal: Option<(String, Arc<Portal>)>,
    },
    /// ParameterDescription and RowDescription/NoData.
    DescribeStatement {
        statement: Option<Arc<Statement>>,
        /// Added by pgveil: the responses are not forwarded.
        injected: bool,
    },
    /// RowDescription/NoData.
    DescribePortal {
        portal: Option<Arc<Portal>>,
        injected: bool,
    },
    /// DataRows, then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute {
        portal: Option<Arc<Portal>>,
        /// Resolved on the first response: how to decrypt the rows.
        decoder: Option<Option<Arc<Decoder>>>,
    },
}

/// Extended-protocol state of one session.
#[derive(Default)]
pub(super) struct Extended {
    pub statements: HashMap<String, Arc<Statement>>,
    pub portals: HashMap<String, Arc<Portal>>,
    /// The server reported an error and no Sync has been sent since: it
    /// skips every message until Sync, so they wait for no response.
    pub skip_until_sync: bool,
    /// Extended messages were sent since the last Sync.
    pub in_batch: bool,
    /// Names whose definition pgveil cannot be sure of (a SQL `PREPARE`
    /// and a protocol Parse, or two PREPAREs, gave it different parameter
    /// encryption, and one of them may have failed): Bind and `EXECUTE` of
    /// them are refused.
    pub conflicted: std::collections::HashSet<String>,
    /// A Parse in this batch may change `standard_conforming_strings` or
    /// `client_encoding`.
    pub settings_pending: bool,
    /// DDL naming encrypted tables was parsed in this batch: until Sync,
    /// the catalog statements are judged against may be out of date, so
    /// statements naming any relation are refused.
    pub ddl_pending: bool,
}

/// Whether a statement names any relation (or cannot be read), by
/// PostgreSQL's parser.
fn names_relations(text: &str) -> bool {
    crate::sql::referee::examine(text)
        .map(|r| r.statements.iter().any(|f| !f.relations.is_empty()))
        .unwrap_or(true)
}

/// Queues a step unless the server is skipping messages until Sync.
pub(super) fn push_step(st: &mut State, step: Step) {
    st.ext.in_batch = true;
    if !st.ext.skip_until_sync {
        st.pending.push_back(Pending::Step(step));
    }
}

/// Handles one extended-protocol message from the client; returns what to
/// send upstream in its place.
pub(super) async fn on_message<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
    frame: &[u8],
) -> Result<BytesMut, SessionError> {
    match frame[0] {
        b'P' => on_parse(veil, writer, frame).await,
        b'B' => {
            let replanned = super::replan::replanned_bind(veil, writer, frame).await?;
            on_bind(veil, frame, replanned)
        }
        b'D' => on_describe(veil, frame),
        b'E' => on_execute(veil, frame),
        b'C' => on_close(veil, frame),
        // Sync (FunctionCall ends in ReadyForQuery the same way).
        _ => Ok(on_sync(veil, frame)),
    }
}

/// Describe: its answer goes to the statement or portal it names.
fn on_describe(veil: &Veil, frame: &[u8]) -> Result<BytesMut, SessionError> {
    let (kind, name) = extended::decode_target(frame)
        .map_err(|e| SessionError::Protocol(format!("malformed Describe: {e}")))?;
    let mut st = veil.state();
    let step = if kind == b'S' {
        let statement = lookup_statement(&st, name);
        Step::DescribeStatement {
            statement,
            injected: false,
        }
    } else {
        Step::DescribePortal {
            portal: st.ext.portals.get(name).cloned(),
            injected: false,
        }
    };
    push_step(&mut st, step);
    Ok(BytesMut::from(frame))
}

/// Execute: its rows decrypt per its portal; a COPY FROM STDIN over
/// encrypted columns starts encrypting the client's data.
fn on_execute(veil: &Veil, frame: &[u8]) -> Result<BytesMut, SessionError> {
    let (name, _) = extended::decode_execute(frame)
        .map_err(|e| SessionError::Protocol(format!("malformed Execute: {e}")))?;
    let mut st = veil.state();
    let portal = st.ext.portals.get(name).cloned();
    if let Some(plan) = portal
        .as_ref()
        .and_then(|p| p.statement.as_ref())
        .and_then(|s| s.copy.clone())
        .filter(|p| !p.to && !st.ext.skip_until_sync)
    {
        let enc = veil.shared.encryption();
        let max_row = veil.shared.config.limits.max_inspected_frame_bytes as usize;
        st.copy_in = Some(CopyStream::new(plan, enc.keyring.clone(), max_row));
    }
    push_step(
        &mut st,
        Step::Execute {
            portal,
            decoder: None,
        },
    );
    Ok(BytesMut::from(frame))
}

/// Close: what it names is forgotten once CloseComplete arrives.
fn on_close(veil: &Veil, frame: &[u8]) -> Result<BytesMut, SessionError> {
    let (kind, name) = extended::decode_target(frame)
        .map_err(|e| SessionError::Protocol(format!("malformed Close: {e}")))?;
    let mut st = veil.state();
    let step = if kind == b'S' {
        Step::Close {
            statement: st
                .ext
                .statements
                .get(name)
                .map(|s| (name.to_string(), s.clone())),
            portal: None,
        }
    } else {
        Step::Close {
            statement: None,
            portal: st
                .ext
                .portals
                .get(name)
                .map(|p| (name.to_string(), p.clone())),
        }
    };
    push_step(&mut st, step);
    Ok(BytesMut::from(frame))
}

/// Sync or FunctionCall: the end of a batch, answered by ReadyForQuery.
fn on_sync(veil: &Veil, frame: &[u8]) -> BytesMut {
    let mut st = veil.state();
    if frame[0] == b'S' && st.copy_in.is_some() {
        // During COPY FROM STDIN PostgreSQL ignores Sync once the
        // copy has started; until the server says so, it may not.
        if !st.copy_in.as_ref().is_some_and(|c| c.started) {
            st.pending.push_back(Pending::SyncInCopy(Instant::now()));
        }
        return BytesMut::from(frame);
    }
    if frame[0] == b'S' {
        st.ext.skip_until_sync = false;
        st.ext.in_batch = false;
        st.ext.ddl_pending = false;
    } else if st.ext.skip_until_sync {
        // A FunctionCall the server skips: no ReadyForQuery.
        return BytesMut::from(frame);
    }
    if frame[0] == b'F' || std::mem::take(&mut st.ext.settings_pending) {
        // This batch (or a function call) may change how strings
        // are read: statements on encrypted tables wait for its
        // ReadyForQuery, as after such a simple Query.
        st.settings_in_flight += 1;
        st.pending.push_back(Pending::SettingsSync(Instant::now()));
    } else {
        st.pending.push_back(Pending::Passthrough(Instant::now()));
    }
    BytesMut::from(frame)
}

/// The statement a Bind or Describe names: prepared through the protocol,
/// or with SQL `PREPARE` (both share PostgreSQL's namespace).
fn lookup_statement(st: &State, name: &str) -> Option<Arc<Statement>> {
    if st.ext.conflicted.contains(name) {
        return Some(Arc::new(Statement::conflicted(name)));
    }
    if let Some(s) = st.ext.statements.get(name) {
        return Some(s.clone());
    }
    let spec = st.prepared.get(name)?;
    Some(Arc::new(Statement {
        sql: String::new(),
        analyzed: true,
        params: spec
            .iter()
            .map(|c| {
                c.clone().map(|column| ParamBinding {
                    expand: false,
                    column,
                    array: false,
                })
            })
            .collect(),
        client_types: Vec::new(),
        hints: Vec::new(),
        catalog: None,
        columns: OnceLock::new(),
        from_sql: true,
        copy: None,
        decoder: Mutex::new(None),
        counters: Vec::new(),
        conflicted: false,
    }))
}

/// Registers a statement under its name, queueing the step that confirms it.
fn register(veil: &Veil, name: &str, statement: Statement, steps: Vec<Step>) -> Arc<Statement> {
    let new = Arc::new(statement);
    let mut st = veil.state();
    if st.ext.skip_until_sync {
        // The server skips this Parse: nothing changes.
        return new;
    }
    let previous = st.ext.statements.insert(name.to_string(), new.clone());
    push_step(
        &mut st,
        Step::Parse {
            name: name.to_string(),
            new: new.clone(),
            previous,
        },
    );
    for s in steps {
        push_step(&mut st, s);
    }
    new
}

async fn on_parse<W: AsyncWrite + Unpin>(
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

fn on_bind(
    veil: &Veil,
    frame: &[u8],
    replanned: Option<Refusal>,
) -> Result<BytesMut, SessionError> {
    let bind = extended::decode_bind(frame)
        .map_err(|e| SessionError::Protocol(format!("malformed Bind: {e}")))?;
    let (statement, settings) = {
        let st = veil.state();
        (lookup_statement(&st, bind.statement), st.settings.clone())
    };
    let mut out = None;
    if let (Some(r), Some(s)) = (replanned, statement.as_ref()) {
        let relation = refusal_token(veil, &s.sql, r, "extended");
        out = Some(extended::encode_bind(bind.portal, &relation, &[], &[]));
    } else if let Some(s) = statement.as_ref().filter(|s| s.conflicted) {
        let r = Refusal::general(
            format!(
                "prepared statement \"{}\" was defined twice (SQL PREPARE and protocol Parse) and pgveil cannot tell which definition the database holds; close it and prepare it again under a new name",
                bind.statement
            ),
            "unsupported",
        );
        let relation = refusal_token(veil, &s.sql, r, "extended");
        out = Some(extended::encode_bind(bind.portal, &relation, &[], &[]));
    } else if let Some(s) = statement.as_ref().filter(|s| s.encrypts_params()) {
        let enc = veil.shared.encryption();
        let mut values: Vec<(i16, Option<Vec<u8>>)> = Vec::with_capacity(bind.params.len());
        for (i, v) in bind.params.iter().enumerate() {
            let format = extended::format_of(&bind.param_formats, i);
            match (s.params.get(i).and_then(Option::as_ref), v) {
                (Some(_), None) => values.push((0, None)),
                (Some(b), Some(v)) => {
                    let declared = s.client_types.get(i).copied().unwrap_or(0);
                    match parameters::encrypt_param(
                        enc.keyring.as_deref(),
                        b,
                        declared,
                        format,
                        v,
                        &settings,
                    ) {
                        Ok(c) => {
                            match s.counters.get(i) {
                                Some(Some(counter)) => counter.inc(),
                                _ => veil
                                    .shared
                                    .metrics
                                    .values_encrypted_total
                                    .with_label_values(&[&b.column.id.to_string()])
                                    .inc(),
                            }
                            values.push((1, Some(c)));
                        }
                        Err(r) => {
                            let relation = refusal_token(veil, &s.sql, r, "extended");
                            out = Some(extended::encode_bind(bind.portal, &relation, &[], &[]));
                            break;
                        }
                    }
                }
                (None, v) => values.push((format, v.map(<[u8]>::to_vec))),
            }
        }
        if out.is_none() {
            let params: Vec<(i16, Option<&[u8]>)> =
                values.iter().map(|(f, v)| (*f, v.as_deref())).collect();
            out = Some(extended::encode_bind(
                bind.portal,
                bind.statement,
                &params,
                &bind.result_formats,
            ));
        }
    }
    let mut out = out.unwrap_or_else(|| BytesMut::from(frame));
    let from_sql = statement.as_ref().is_some_and(|s| s.from_sql);
    let portal = Arc::new(Portal {
        statement,
        result_formats: bind.result_formats.clone(),
        columns: OnceLock::new(),
    });
    let mut st = veil.state();
    if st.ext.skip_until_sync {
        // The server skips this Bind: nothing changes.
        return Ok(out);
    }
    let previous = st
        .ext
        .portals
        .insert(bind.portal.to_string(), portal.clone());
    push_step(
        &mut st,
        Step::Bind {
            name: bind.portal.to_string(),
            new: portal.clone(),
            previous,
        },
    );
    if from_sql {
        // A SQL PREPARE'd statement: its result columns are not known yet.
        out.extend_from_slice(&extended::encode_describe(b'P', bind.portal));
        push_step(
            &mut st,
            Step::DescribePortal {
                portal: Some(portal),
                injected: true,
            },
        );
    }
    Ok(out)
}
