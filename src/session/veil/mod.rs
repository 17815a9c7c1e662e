//! The message loop when columns are configured for encryption.
//!
//! Two pumps share one [`State`]: the client pump analyses Query and Parse
//! messages and rewrites or refuses them; the server pump decrypts result
//! rows by column origin and tracks session settings. Every request that
//! ends in ReadyForQuery pushes one [`Pending`] entry, in order, so the
//! server pump always knows which request a response belongs to.
//!
//! The catalog is learned on the client's own upstream connection before
//! its first statement, with an internal Query whose responses the server
//! pump consumes instead of forwarding.

mod copy;
mod extended;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::stream::Stream;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::SessionError;
use crate::catalog::{self, Catalog, Encrypted, Rows};
use crate::crypto::{Format, Keyring, SessionSettings};
use crate::protocol::messages::{
    ErrorResponse, data_row, parameter_status, query, row_description,
};
use crate::protocol::{Chunk, FrameError, Framer, sqlstate, types};
use crate::server::Shared;
use crate::sql::analyze::{Watched, view_columns};
use crate::sql::{Refusal, rewrite, scan};

const READ_BUFFER: usize = 16 * 1024;
/// Flush the output buffer once it holds this much.
const FLUSH_AT: usize = 64 * 1024;

/// What a response stream (ending in ReadyForQuery) answers.
enum Pending {
    /// Authentication and the first ReadyForQuery.
    Startup,
    /// Extended-protocol Sync, FunctionCall: forwarded; holds when the
    /// request arrived.
    Passthrough(Instant),
    /// A simple Query from the client.
    Query(QueryState),
    /// A Sync (or FunctionCall) after messages that may change string or
    /// encoding settings: until its ReadyForQuery they are unknown.
    SettingsSync(Instant),
    /// pgveil's own catalog query: consumed, not forwarded.
    Catalog(CatalogLoad),
    /// One extended-protocol message's response.
    Step(extended::Step),
    /// A Sync sent during COPY FROM STDIN: PostgreSQL ignores it once the
    /// COPY has started (CopyInResponse), else it answers it.
    SyncInCopy(Instant),
}

struct QueryState {
    /// Per statement: positional hints for columns without an origin.
    hints: Vec<Vec<Option<Encrypted>>>,
    index: usize,
    catalog: Option<Arc<Catalog>>,
    /// When the client's Query arrived.
    started: Instant,
    /// Time pgveil itself spent on this Query (analysis, rewriting,
    /// encryption, decryption).
    overhead: Duration,
    /// The Query may change how later statements must be read
    /// (`standard_conforming_strings`, `client_encoding`).
    changes_settings: bool,
    /// Per statement: its COPY plan, for `COPY ... TO STDOUT`.
    copies: Vec<Option<Arc<crate::sql::analyze::CopyPlan>>>,
}

impl QueryState {
    fn pending(
        hints: Vec<Vec<Option<Encrypted>>>,
        catalog: Option<Arc<Catalog>>,
        started: Instant,
    ) -> Pending {
        Pending::Query(QueryState {
            hints,
            index: 0,
            catalog,
            started,
            overhead: started.elapsed(),
            changes_settings: false,
            copies: Vec::new(),
        })
    }
}

struct CatalogLoad {
    results: Vec<Rows>,
    current: Rows,
    error: Option<String>,
    done: Option<oneshot::Sender<Result<Vec<Rows>, String>>>,
}

/// How to decrypt the rows of the current result.
struct Decoder {
    columns: Vec<Option<(Encrypted, Format)>>,
    /// Ciphers as of the RowDescription: a reload mid-result does not
    /// change how its rows decrypt.
    keyring: Option<Arc<Keyring>>,
    /// Per column: its `values_decrypted_total` counter, looked up once.
    counters: Vec<Option<prometheus::IntCounter>>,
    /// Per column with several stored forms: its
    /// `plaintext_values_read_total` counter.
    plain_counters: Vec<Option<prometheus::IntCounter>>,
}

impl Decoder {
    fn new(
        veil: &Veil,
        columns: Vec<Option<(Encrypted, Format)>>,
        keyring: Option<Arc<Keyring>>,
    ) -> Decoder {
        let counters = columns
            .iter()
            .map(|c| {
                c.as_ref().map(|(e, _)| {
                    veil.shared
                        .metrics
                        .values_decrypted_total
                        .with_label_values(&[&e.id.to_string()])
                })
            })
            .collect();
        let plain_counters = columns
            .iter()
            .map(|c| {
                c.as_ref().filter(|(e, _)| e.forms > 1).map(|(e, _)| {
                    veil.shared
                        .metrics
                        .plaintext_values_read_total
                        .with_label_values(&[&e.id.to_string()])
                })
            })
            .collect();
        Decoder {
            columns,
            keyring,
            counters,
            plain_counters,
        }
    }
}

/// State shared by the two pumps of one session.
struct State {
    settings: SessionSettings,
    standard_strings: bool,
    pending: VecDeque<Pending>,
    decoder: Option<Decoder>,
    /// After a decrypt failure: drop everything until ReadyForQuery.
    discard_until_ready: bool,
    /// Names of relations used in extended-protocol refusals, so the
    /// database's "does not exist" error can be replaced by the refusal.
    refusal_tokens: Vec<(String, Refusal)>,
    /// SQL-level prepared statements (`PREPARE`) and, per parameter, the
    /// encrypted column it is bound to.
    prepared: HashMap<String, Vec<Option<Encrypted>>>,
    /// How each SQL prepared statement was analysed, to re-check it after
    /// a configuration reload.
    prepared_meta: HashMap<String, PreparedMeta>,
    /// Extended-protocol statements and portals.
    ext: extended::Extended,
    /// The configuration generation this session last checked against.
    generation: u64,
    /// The encrypted columns as of that generation.
    columns_signature: String,
    /// Time spent waiting for catalog loads since the last Query was queued.
    catalog_wait: Duration,
    /// `client_encoding` is UTF8 (pgveil tokenizes statements as UTF-8).
    utf8: bool,
    /// Queries sent that may change string or encoding settings and whose
    /// ReadyForQuery has not arrived: until then the settings are unknown.
    settings_in_flight: usize,
    /// Set by the client pump for the next queued Query.
    next_changes_settings: bool,
    /// The watched names for (catalog generation, config generation):
    /// built once, not per statement.
    watched: Option<((u64, u64), Arc<Watched>)>,
    /// COPY FROM STDIN data from the client being encrypted.
    copy_in: Option<copy::CopyStream>,
    /// COPY TO STDOUT data from the database being decrypted.
    copy_out: Option<copy::CopyStream>,
    /// A response did not match what pgveil expected: the session ends
    /// rather than guess how to read what follows.
    desync: bool,
    /// A Query that pgveil forwarded unanalysed said `PREPARE`: after a
    /// reload that changes encrypted columns, that statement may bind
    /// plaintext into one.
    unanalysed_prepare: bool,
    /// Names of SQL prepared statements pgveil forwarded unanalysed (they
    /// name nothing encrypted), so `EXECUTE` of them is known to be plain.
    plain_prepared: std::collections::HashSet<String>,
}

/// A prepared statement to re-check: name, PREPARE text, edits, parameters.
type StaleEntry = (
    String,
    String,
    Vec<(std::ops::Range<usize>, String)>,
    Vec<Option<Encrypted>>,
);

/// A `PREPARE` as analysed.
struct PreparedMeta {
    generation: u64,
    text: String,
    summary: Vec<(std::ops::Range<usize>, String)>,
    spec: Vec<Option<Encrypted>>,
}

fn edit_summary(plan: &crate::sql::StatementPlan) -> Vec<(std::ops::Range<usize>, String)> {
    plan.edits
        .iter()
        .map(|e| {
            (
                e.range.start - plan.range.start..e.range.end - plan.range.start,
                e.column.id.to_string(),
            )
        })
        .collect()
}

/// One session's encryption context.
pub struct Veil {
    peer: std::net::SocketAddr,
    shared: Arc<Shared>,
    database: String,
    user: String,
    /// Catalog cache key: (database, user), or a key of this session's own
    /// once it has changed its `search_path` (name resolution differs).
    cache_key: Mutex<(String, String)>,
    state: Mutex<State>,
}

impl Veil {
    fn key(&self) -> (String, String) {
        self.cache_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn make_key_private(&self) {
        let mut token = [0u8; 8];
        let _ = getrandom::fill(&mut token);
        let suffix: String = token.iter().map(|b| format!("{b:02x}")).collect();
        *self.cache_key.lock().unwrap_or_else(|p| p.into_inner()) =
            (self.database.clone(), format!("{}#{suffix}", self.user));
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a pump panicked; the other still needs the
        // state to finish, and the data is consistent per message.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs an encrypting session until either side closes.
pub async fn run(
    mut client: Stream,
    mut upstream: Stream,
    startup_packet: &[u8],
    shared: Arc<Shared>,
    user: &str,
    database: &str,
    peer: std::net::SocketAddr,
) -> Result<(), SessionError> {
    let veil = Veil {
        peer,
        shared: shared.clone(),
        database: database.to_string(),
        user: user.to_string(),
        cache_key: Mutex::new((database.to_string(), user.to_string())),
        state: Mutex::new(State {
            settings: SessionSettings::new(),
            standard_strings: true,
            pending: VecDeque::from([Pending::Startup]),
            decoder: None,
            discard_until_ready: false,
            refusal_tokens: Vec::new(),
            prepared: HashMap::new(),
            prepared_meta: HashMap::new(),
            ext: extended::Extended::default(),
            generation: shared.encryption().generation,
            columns_signature: shared.encryption().columns_signature.clone(),
            catalog_wait: Duration::ZERO,
            utf8: true,
            settings_in_flight: 0,
            next_changes_settings: false,
            watched: None,
            copy_in: None,
            copy_out: None,
            desync: false,
            unanalysed_prepare: false,
            plain_prepared: std::collections::HashSet::new(),
        }),
    };
    if String::from_utf8_lossy(startup_packet)
        .to_ascii_lowercase()
        .contains("search_path")
    {
        // Set at connection time (`options=-c search_path=...`): this
        // session resolves names differently from others of its user.
        veil.make_key_private();
    }
    let limits = &shared.config.limits;
    let mut client_framer = Framer::new(limits.max_frame_bytes, limits.max_inspected_frame_bytes);
    let mut server_framer = Framer::new(limits.max_frame_bytes, limits.max_inspected_frame_bytes);
    let outcome = {
        let (mut cr, mut cw) = tokio::io::split(&mut client);
        let (mut ur, mut uw) = tokio::io::split(&mut upstream);
        tokio::select! {
            r = client_pump(&veil, &mut cr, &mut uw, &mut client_framer) => r.map(|e| (true, e)),
            r = server_pump(&veil, &mut ur, &mut cw, &mut server_framer) => r.map(|e| (false, e)),
        }
    };
    let outcome = match outcome {
        Err(SessionError::Reload(message)) => {
            let msg = ErrorResponse::fatal(sqlstate::ADMIN_SHUTDOWN, message.clone());
            let _ = super::write_flush(&mut client, &msg.to_bytes()).await;
            return Err(SessionError::Reload(message));
        }
        other => other?,
    };
    match outcome {
        (_, None) => Ok(()),
        (from_client, Some(e)) => Err(super::report_malformed(&mut client, from_client, e).await),
    }
}

async fn flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    out: &mut BytesMut,
    bytes_total: &prometheus::IntCounter,
) -> Result<(), SessionError> {
    if !out.is_empty() {
        w.write_all(out).await?;
        w.flush().await?;
        bytes_total.inc_by(out.len() as u64);
        out.clear();
    }
    Ok(())
}

/// The names that send a statement to the analyzer, for this catalog and
/// configuration, cached in the session.
fn watched_for(
    veil: &Veil,
    catalog: Option<&Arc<Catalog>>,
    enc: &crate::server::Encryption,
) -> Arc<Watched> {
    let key = (catalog.map_or(0, |c| c.generation), enc.generation);
    if let Some((k, w)) = &veil.state().watched
        && *k == key
        && key.0 != 0
    {
        return w.clone();
    }
    let empty = Catalog::default();
    let w = Arc::new(Watched::new(
        catalog.map_or(&empty, |c| c.as_ref()),
        &enc.configured,
        &enc.encrypted_columns,
    ));
    veil.state().watched = Some((key, w.clone()));
    w
}

/// A pump's byte counter, read buffer and output buffer.
fn pump_state(veil: &Veil, direction: &str) -> (prometheus::IntCounter, BytesMut, BytesMut) {
    (
        veil.shared
            .metrics
            .bytes_total
            .with_label_values(&[direction]),
        BytesMut::with_capacity(READ_BUFFER),
        BytesMut::with_capacity(READ_BUFFER),
    )
}

/// Client → server. Returns the frame error that ended it, if any.
async fn client_pump<R, W>(
    veil: &Veil,
    reader: &mut R,
    writer: &mut W,
    framer: &mut Framer,
) -> Result<Option<FrameError>, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (bytes_total, mut buf, mut out) = pump_state(veil, "client_to_server");
    let mut started = false;
    loop {
        loop {
            let copying = veil.state().copy_in.is_some();
            let inspect = |tag: u8| {
                matches!(tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'S' | b'F')
                    || (copying && matches!(tag, b'd' | b'c' | b'f'))
            };
            match framer.next(&mut buf, inspect) {
                Ok(Some(Chunk::Forward(bytes))) => {
                    out.extend_from_slice(&bytes);
                    if out.len() >= FLUSH_AT {
                        flush(writer, &mut out, &bytes_total).await?;
                    }
                }
                Ok(Some(Chunk::Frame(frame))) => {
                    if !started {
                        // The first statement: learn the catalog first.
                        flush(writer, &mut out, &bytes_total).await?;
                        ensure_catalog(veil, writer).await;
                        started = true;
                    }
                    if copying && !matches!(frame[0], b'd' | b'c' | b'f' | b'S') {
                        // Anything else ends copy-in mode (PostgreSQL fails
                        // the COPY on it).
                        veil.state().copy_in = None;
                    }
                    match frame[0] {
                        b'd' | b'c' | b'f' => {
                            out.extend_from_slice(&on_copy_in(veil, &frame));
                        }
                        b'Q' => {
                            flush(writer, &mut out, &bytes_total).await?;
                            let rewritten = on_query(veil, writer, &frame).await?;
                            out.extend_from_slice(&rewritten);
                        }
                        b'P' => {
                            // Parse may wait for a catalog load.
                            flush(writer, &mut out, &bytes_total).await?;
                            let replaced = extended::on_message(veil, writer, &frame).await?;
                            out.extend_from_slice(&replaced);
                        }
                        _ => {
                            let replaced = extended::on_message(veil, writer, &frame).await?;
                            out.extend_from_slice(&replaced);
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    flush(writer, &mut out, &bytes_total).await?;
                    return Ok(Some(e));
                }
            }
        }
        flush(writer, &mut out, &bytes_total).await?;
        if !super::fill(reader, &mut buf, READ_BUFFER).await? {
            return Ok(None);
        }
        reconcile_reload(veil)?;
    }
}

/// After a configuration reload, before forwarding anything more: a
/// statement this session prepared under other encrypted columns could
/// bind plaintext into a newly encrypted column, or ciphertext where there
/// is no longer a key. pgveil cannot re-prepare it behind the client's
/// back, so it ends the session (the client reconnects and prepares again).
fn reconcile_reload(veil: &Veil) -> Result<(), SessionError> {
    let enc = veil.shared.encryption();
    let statements: Vec<(String, Arc<extended::Statement>)> = {
        let mut st = veil.state();
        if st.generation == enc.generation {
            return Ok(());
        }
        st.generation = enc.generation;
        if st.columns_signature == enc.columns_signature {
            return Ok(());
        }
        st.columns_signature = enc.columns_signature.clone();
        if !st.prepared.is_empty() || st.unanalysed_prepare {
            warn!(target: "audit", client = %veil.peer, database = %veil.database, user = %veil.user,
                  "session ended: encrypted columns changed under SQL prepared statements");
            return Err(SessionError::Reload(
                "pgveil: configuration reloaded; encrypted columns changed under this session's prepared statements, reconnect to prepare them again".into(),
            ));
        }
        st.ext
            .statements
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let catalog = veil.shared.catalog_cached(&veil.key()).unwrap_or_default();
    let watched = Watched::new(&catalog, &enc.configured, &enc.encrypted_columns);
    for (name, statement) in statements {
        if statement.analyzed || scan::needs_analysis(&statement.sql, &watched, &[]) {
            warn!(target: "audit", client = %veil.peer, database = %veil.database, user = %veil.user,
                  statement = %name, "session ended: encrypted columns changed under a prepared statement");
            return Err(SessionError::Reload(format!(
                "pgveil: configuration reloaded; encrypted columns changed under prepared statement \"{name}\", reconnect to prepare it again"
            )));
        }
    }
    Ok(())
}

/// Catalog for this session's database, loading it if needed. `None` when
/// it cannot be loaded (then statements needing analysis are refused).
async fn ensure_catalog<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
) -> Option<Arc<Catalog>> {
    if let Some(c) = veil.shared.catalog_cached(&veil.key()) {
        return Some(c);
    }
    if veil.state().ext.in_batch {
        // A Query inside an unsynced extended-protocol batch would run in
        // its implicit transaction, or be skipped after an error in it.
        return None;
    }
    let (tx, rx) = oneshot::channel();
    veil.state()
        .pending
        .push_back(Pending::Catalog(CatalogLoad {
            results: Vec::new(),
            current: Vec::new(),
            error: None,
            done: Some(tx),
        }));
    let enc = veil.shared.encryption();
    let config = &enc.config;
    let q = query::encode(&catalog::load_query(config));
    if super::write_flush(writer, &q).await.is_err() {
        return None;
    }
    let rows = match rx.await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => {
            warn!(database = %veil.database, error = %e, "catalog query failed");
            return None;
        }
        Err(_) => return None,
    };
    let mut catalog = match Catalog::build(config, &rows) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "catalog rows unexpected");
            return None;
        }
    };
    map_views(&mut catalog, &enc);
    for id in &catalog.inactive {
        info!(database = %veil.database, column = %id, "configured column not present in this database; inactive until it is created");
    }
    for id in &catalog.defaults {
        warn!(database = %veil.database, column = %id, "configured column has a DEFAULT: the database stores that default in plaintext");
    }
    catalog.generation = veil.shared.next_catalog_generation();
    let catalog = Arc::new(catalog);
    veil.shared.store_catalog(veil.key(), catalog.clone());
    Some(catalog)
}

/// Maps view columns to base columns; views pgveil cannot follow become opaque.
fn map_views(catalog: &mut Catalog, shared: &crate::server::Encryption) {
    let watched = Watched::new(catalog, &shared.configured, &shared.encrypted_columns);
    let definitions: Vec<(usize, String)> = catalog
        .relations_mut()
        .iter_mut()
        .enumerate()
        .filter_map(|(i, r)| r.definition.take().map(|d| (i, d)))
        .collect();
    // Views over views: map again with what the previous pass learned,
    // until nothing changes (bounded by the number of views).
    for _ in 0..=definitions.len() {
        let snapshot = catalog.clone();
        let mut changed = false;
        for (i, def) in &definitions {
            let Some(rel) = catalog.relations_mut().get_mut(*i) else {
                continue;
            };
            match view_columns(def, &snapshot, &watched, &shared.configured) {
                Ok(cols) => {
                    for (c, enc) in rel.columns.iter_mut().zip(cols) {
                        if c.encrypted != enc {
                            c.encrypted = enc;
                            changed = true;
                        }
                    }
                    rel.opaque = None;
                }
                Err(r) => {
                    if rel.opaque.is_none() {
                        changed = true;
                    }
                    rel.opaque = Some(r.operation.clone());
                }
            }
        }
        if !changed {
            break;
        }
    }
}

/// Handles a simple Query: passes it, rewrites it, or replaces it with a
/// refusal the database raises. Returns the frame to send.
async fn on_query<W: AsyncWrite + Unpin>(
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
    let shared = &veil.shared;
    let enc = shared.encryption();
    let mut catalog = shared.catalog_cached(&veil.key());
    if catalog.is_none() {
        catalog = ensure_catalog(veil, writer).await;
    }
    let watched = watched_for(veil, catalog.as_ref(), &enc);
    let lower = text.to_ascii_lowercase();
    if lower.contains("search_path") {
        // Name resolution may change: this session gets a catalog of its own.
        veil.make_key_private();
    }
    let changes_settings = changes_settings(&lower);
    veil.state().next_changes_settings = changes_settings;
    let prepared = veil.state().prepared.clone();
    let tainted: Vec<String> = prepared.keys().cloned().collect();
    if !scan::needs_analysis(text, &watched, &tainted) {
        shared
            .metrics
            .statements_total
            .with_label_values(&["simple", "passthrough"])
            .inc();
        if let Some(r) = unknown_execute(veil, text, &lower) {
            return Ok(refuse(veil, text, &[], r, catalog, started));
        }
        if lower
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == "prepare")
        {
            let names = prepared_names(text);
            let mut st = veil.state();
            st.unanalysed_prepare = true;
            st.plain_prepared.extend(names);
        }
        push_query(veil, Vec::new(), catalog, started);
        return Ok(BytesMut::from(frame));
    }
    let (utf8, in_flight) = {
        let st = veil.state();
        (st.utf8, st.settings_in_flight)
    };
    if !utf8 || !utf8_text {
        let r = Refusal::general(
            "statements on encrypted tables need client_encoding UTF8 (other encodings can hide quotes and backslashes)",
            "unparsed",
        );
        return Ok(refuse(veil, text, &[], r, catalog, started));
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
        return Ok(refuse(veil, text, &[], r, catalog, started));
    }
    let Some(cat) = catalog else {
        let r = Refusal::general(
            "the catalog of this database could not be read, so the statement cannot be checked",
            "catalog",
        );
        return Ok(refuse(veil, text, &[], r, None, started));
    };
    if let Some(r) = recheck_prepared(veil, text, &cat, &enc) {
        return Ok(refuse(veil, text, &[], r, Some(cat), started));
    }
    if let Some(r) = unknown_execute(veil, text, &lower) {
        return Ok(refuse(veil, text, &[], r, Some(cat), started));
    }
    let (analysis, cat) = analyze_fresh(veil, writer, text, cat, &enc, &prepared).await;
    if analysis.stale {
        // A configured table this database does not have (yet): perhaps
        // created earlier in this same Query. pgveil cannot know its
        // columns, so it refuses rather than guess.
        let r = Refusal::general(
            "a configured table that is not in this database's catalog; create it in its own statement first",
            "catalog",
        );
        return Ok(refuse(veil, text, &[], r, Some(cat), started));
    }
    if analysis.statements.iter().any(|s| s.refresh_catalog) {
        shared.invalidate_catalog(&veil.key());
    }
    let (standard_strings, settings) = {
        let st = veil.state();
        (st.standard_strings, st.settings.clone())
    };
    if !standard_strings && text.contains('\\') {
        let r = Refusal::general(
            "backslashes in a statement on encrypted tables while standard_conforming_strings is off",
            "unparsed",
        );
        return Ok(refuse(veil, text, &[], r, Some(cat), started));
    }
    let copy_from = analysis
        .statements
        .iter()
        .any(|s| s.copy.as_ref().is_some_and(|c| !c.to));
    if copy_from && analysis.statements.len() + usize::from(analysis.refusal.is_some()) > 1 {
        // One encrypting stream per Query: its data must not be mistaken
        // for another COPY's.
        let r = Refusal::general(
            "COPY FROM STDIN into encrypted columns together with other statements in one Query; send it on its own",
            "copy",
        );
        return Ok(refuse(veil, text, &[], r, Some(cat), started));
    }
    let encrypted = encrypt_edits(veil, &enc, text, &analysis.statements, &settings);
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
            return Ok(BytesMut::from(frame));
        }
        return Ok(refuse(
            veil,
            text,
            &analysis.statements,
            r,
            Some(cat),
            started,
        ));
    }
    let replacements = encrypted.unwrap_or_default();
    let new_text = if replacements.is_empty() {
        None
    } else {
        match rewrite::splice(text, replacements) {
            Some(t) => Some(t),
            None => {
                let r = Refusal::general("pgveil could not rewrite this statement", "unparsed");
                return Ok(refuse(veil, text, &[], r, None, started));
            }
        }
    };
    let hints = analysis
        .statements
        .iter()
        .map(|s| s.outputs.clone())
        .collect();
    record_prepared(veil, text, &analysis.statements);
    push_query(veil, hints, Some(cat), started);
    if analysis.statements.iter().any(|s| s.copy.is_some()) {
        start_copies(veil, &analysis.statements);
    }
    let kind = if new_text.is_some() {
        "rewritten"
    } else {
        "passthrough"
    };
    shared
        .metrics
        .statements_total
        .with_label_values(&["simple", kind])
        .inc();
    Ok(match new_text {
        Some(t) => query::encode(&t),
        None => BytesMut::from(frame),
    })
}

/// The names `PREPARE` statements in `text` create, by PostgreSQL's parser.
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
fn unknown_execute(veil: &Veil, text: &str, lower: &str) -> Option<Refusal> {
    if !lower.contains("execute") {
        return None;
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
                || st.plain_prepared.contains(name)
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

/// Whether a statement (lower-cased) may change how PostgreSQL reads
/// strings: `standard_conforming_strings`, `client_encoding`, `set_config`,
/// `RESET`, `DISCARD`.
fn changes_settings(lower: &str) -> bool {
    [
        "standard_conforming_strings",
        "client_encoding",
        "set_config",
    ]
    .iter()
    .any(|k| lower.contains(k))
        || lower
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == "reset" || w == "discard")
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
    }
    st.pending.push_back(pending);
}

/// A Query with COPY statements over encrypted columns: their plans go
/// with the Query's response; COPY FROM STDIN starts encrypting the
/// client's data.
fn start_copies(veil: &Veil, plans: &[crate::sql::StatementPlan]) {
    let enc = veil.shared.encryption();
    let max_row = veil.shared.config.limits.max_inspected_frame_bytes as usize;
    let mut st = veil.state();
    let copies: Vec<_> = plans.iter().map(|p| p.copy.clone()).collect();
    if let Some(plan) = copies.iter().flatten().find(|p| !p.to) {
        st.copy_in = Some(copy::CopyStream::new(
            plan.clone(),
            enc.keyring.clone(),
            max_row,
        ));
    }
    if let Some(Pending::Query(q)) = st.pending.back_mut() {
        q.copies = copies;
    }
}

/// CopyData, CopyDone or CopyFail from the client during an encrypting
/// COPY FROM STDIN. Returns what to send upstream.
fn on_copy_in(veil: &Veil, frame: &[u8]) -> BytesMut {
    let mut guard = veil.state();
    let st = &mut *guard;
    let settings = &st.settings;
    let Some(stream) = st.copy_in.as_mut() else {
        return BytesMut::from(frame);
    };
    let tag = frame[0];
    if stream.failed {
        // pgveil already failed this COPY: the rest of the data (which may
        // hold plaintext) goes nowhere.
        if tag != b'd' {
            st.copy_in = None;
        }
        return BytesMut::new();
    }
    let result = match tag {
        b'd' => stream.feed(&frame[5..], settings),
        b'c' => stream.finish(settings),
        _ => {
            st.copy_in = None;
            return BytesMut::from(frame);
        }
    };
    match result {
        Ok(rows) => {
            let mut out = if rows.is_empty() {
                BytesMut::new()
            } else {
                copy::copy_data(&rows)
            };
            if tag == b'c' {
                st.copy_in = None;
                out.extend_from_slice(frame);
            }
            out
        }
        Err(e) => {
            stream.failed = true;
            if tag == b'c' {
                st.copy_in = None;
            }
            drop(guard);
            let refusal = Refusal {
                column: None,
                operation: e.message,
                hint: "Nothing of this COPY was stored. Fix the data and run it again.".into(),
                reason: "copy",
                sqlstate: e.sqlstate,
            };
            let relation = refusal_token(veil, "COPY", refusal, "simple");
            copy::copy_fail(&format!("pgveil: {relation}"))
        }
    }
}

/// Keeps the session's map of SQL-level prepared statements current.
fn record_prepared(veil: &Veil, text: &str, plans: &[crate::sql::StatementPlan]) {
    let generation = veil.shared.encryption().generation;
    let mut st = veil.state();
    if st.ext.skip_until_sync {
        // The server skips this message: nothing is prepared.
        return;
    }
    for plan in plans {
        if let Some((name, spec)) = &plan.prepared {
            // The name is now this SQL statement's, whatever pgveil noted
            // for it from the extended protocol before, unless this PREPARE
            // fails (the name is taken): then pgveil cannot tell which.
            let protocol = st.ext.statements.remove(name);
            let differs = st.prepared.get(name).is_some_and(|old| old != spec)
                || protocol.is_some_and(|p| {
                    p.params
                        .iter()
                        .map(|b| b.as_ref().map(|b| &b.column))
                        .collect::<Vec<_>>()
                        != spec.iter().map(Option::as_ref).collect::<Vec<_>>()
                });
            if differs {
                st.ext.conflicted.insert(name.clone());
            }
            st.prepared.insert(name.clone(), spec.clone());
            st.prepared_meta.insert(
                name.clone(),
                PreparedMeta {
                    generation,
                    text: text.get(plan.range.clone()).unwrap_or_default().to_string(),
                    summary: edit_summary(plan),
                    spec: spec.clone(),
                },
            );
        }
        // DEALLOCATE is deliberately not applied: it may fail or be rolled
        // back in the database, and a name pgveil forgot while PostgreSQL
        // still holds it would let EXECUTE through unanalysed.
    }
}

/// After a reload, a SQL prepared statement named in `text` is analysed
/// again; if the new configuration would encrypt it differently, it is
/// refused (the database still holds the old plan), so a newly encrypted
/// column never receives plaintext through it.
fn recheck_prepared(
    veil: &Veil,
    text: &str,
    catalog: &Catalog,
    enc: &crate::server::Encryption,
) -> Option<Refusal> {
    let lower = text.to_lowercase();
    let words: std::collections::HashSet<&str> = lower
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .collect();
    let stale: Vec<StaleEntry> = {
        let st = veil.state();
        st.prepared_meta
            .iter()
            .filter(|(name, meta)| {
                meta.generation < enc.generation && words.contains(name.as_str())
            })
            .map(|(name, meta)| {
                (
                    name.clone(),
                    meta.text.clone(),
                    meta.summary.clone(),
                    meta.spec.clone(),
                )
            })
            .collect()
    };
    for (name, prepare_text, summary, spec) in stale {
        let watched = Watched::new(catalog, &enc.configured, &enc.encrypted_columns);
        let analysis = crate::sql::analyze(
            &prepare_text,
            catalog,
            &watched,
            &enc.configured,
            &HashMap::new(),
        );
        let same = analysis.refusal.is_none()
            && analysis.statements.first().is_some_and(|p| {
                edit_summary(p) == summary && p.prepared.as_ref().map(|(_, s)| s) == Some(&spec)
            });
        if !same {
            return Some(Refusal::general(
                format!(
                    "prepared statement {name} was prepared before a configuration reload that changes its encryption; DEALLOCATE and PREPARE it again"
                ),
                "reload",
            ));
        }
        if let Some(meta) = veil.state().prepared_meta.get_mut(&name) {
            meta.generation = enc.generation;
        }
    }
    None
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
pub(crate) fn stale_forms(column: &str) -> Refusal {
    Refusal::on_column(
        column,
        "a statement analysed before the key versions or `migrating` changed (retry it)",
        "reload",
    )
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
    shared
        .metrics
        .statements_total
        .with_label_values(&["simple", "refused"])
        .inc();
    shared
        .metrics
        .refused_statements_total
        .with_label_values(&[refusal.reason])
        .inc();
    warn!(target: "audit", client = %veil.peer, database = %veil.database, user = %veil.user,
          reason = refusal.reason, column = refusal.column.as_deref().unwrap_or(""),
          fingerprint = %crate::sql::referee::fingerprint(text, Some(before.len())), "statement refused");
    let (settings, standard_strings) = {
        let st = veil.state();
        (st.settings.clone(), st.standard_strings)
    };
    let mut parts = Vec::new();
    let mut hints = Vec::new();
    record_prepared(veil, text, before);
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
    parts.push(refusal.raise_statement());
    hints.push(Vec::new());
    push_query(veil, hints, catalog, started);
    query::encode(&parts.join("; "))
}

/// Counts and logs a refusal in the extended protocol and returns the name
/// of a relation that does not exist: a statement using it fails in the
/// database, in place, and the server pump swaps that error for the refusal.
fn refusal_token(veil: &Veil, text: &str, refusal: Refusal, protocol: &str) -> String {
    let shared = &veil.shared;
    shared
        .metrics
        .statements_total
        .with_label_values(&[protocol, "refused"])
        .inc();
    shared
        .metrics
        .refused_statements_total
        .with_label_values(&[refusal.reason])
        .inc();
    warn!(target: "audit", client = %veil.peer, database = %veil.database, user = %veil.user,
          reason = refusal.reason, column = refusal.column.as_deref().unwrap_or(""),
          fingerprint = %crate::sql::referee::fingerprint(text, Some(0)), "statement refused");
    let mut token = [0u8; 12];
    let _ = getrandom::fill(&mut token);
    let token: String = token.iter().map(|b| format!("{b:02x}")).collect();
    let relation = format!("pgveil_refused_{token}");
    veil.state()
        .refusal_tokens
        .push((relation.clone(), refusal));
    relation
}

/// A statement that would be refused, forwarded because
/// `policy.on_unsupported = "passthrough"`: counted and logged.
fn passthrough_refusal(veil: &Veil, text: &str, r: &Refusal, protocol: &str) {
    let shared = &veil.shared;
    shared
        .metrics
        .refused_statements_total
        .with_label_values(&[r.reason])
        .inc();
    warn!(target: "audit", client = %veil.peer, database = %veil.database, user = %veil.user,
          reason = r.reason, column = r.column.as_deref().unwrap_or(""),
          fingerprint = %crate::sql::referee::fingerprint(text, None),
          "statement would be refused; forwarded because policy.on_unsupported = passthrough");
    shared
        .metrics
        .statements_total
        .with_label_values(&[protocol, "passthrough"])
        .inc();
}

/// Analyses a statement, reloading the catalog once if the analysis says it
/// is stale (a configured table created since it was read).
async fn analyze_fresh<W: AsyncWrite + Unpin>(
    veil: &Veil,
    writer: &mut W,
    text: &str,
    mut cat: Arc<Catalog>,
    enc: &crate::server::Encryption,
    prepared: &HashMap<String, Vec<Option<Encrypted>>>,
) -> (Arc<crate::sql::Analysis>, Arc<Catalog>) {
    let shared = &veil.shared;
    let watched = watched_for(veil, Some(&cat), enc);
    let mut analysis = shared.analyze_cached(text, &cat, &watched, &enc.configured, prepared);
    if analysis.stale && !veil.state().ext.in_batch {
        shared.invalidate_catalog(&veil.key());
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
fn encrypt_edits(
    veil: &Veil,
    enc: &crate::server::Encryption,
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

/// Server → client.
async fn server_pump<R, W>(
    veil: &Veil,
    reader: &mut R,
    writer: &mut W,
    framer: &mut Framer,
) -> Result<Option<FrameError>, SessionError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (bytes_total, mut buf, mut out) = pump_state(veil, "server_to_client");
    loop {
        loop {
            let (all, rows, copying) = {
                let mut st = veil.state();
                let all = matches!(st.pending.front(), Some(Pending::Catalog(_)))
                    || st.discard_until_ready;
                let rows = st.decoder.is_some() || execute_rows(veil, &mut st);
                (all, rows, st.copy_out.is_some())
            };
            let inspect = |tag: u8| {
                all || matches!(
                    tag,
                    b'Z' | b'T'
                        | b'C'
                        | b'I'
                        | b'E'
                        | b'S'
                        | b'1'
                        | b'2'
                        | b'3'
                        | b't'
                        | b'n'
                        | b's'
                        | b'G'
                        | b'H'
                ) || (rows && tag == b'D')
                    || (copying && matches!(tag, b'd' | b'c'))
            };
            match framer.next(&mut buf, inspect) {
                Ok(Some(Chunk::Forward(bytes))) => out.extend_from_slice(&bytes),
                Ok(Some(Chunk::Frame(frame))) => {
                    if let Some(f) = on_server_frame(veil, frame)? {
                        out.extend_from_slice(&f);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    flush(writer, &mut out, &bytes_total).await?;
                    return Ok(Some(e));
                }
            }
            if out.len() >= FLUSH_AT {
                flush(writer, &mut out, &bytes_total).await?;
            }
        }
        flush(writer, &mut out, &bytes_total).await?;
        if !super::fill(reader, &mut buf, READ_BUFFER).await? {
            return Ok(None);
        }
    }
}

/// One inspected server frame; returns what to forward.
fn on_server_frame(veil: &Veil, frame: BytesMut) -> Result<Option<BytesMut>, SessionError> {
    let tag = frame[0];
    let mut guard = veil.state();
    let st = &mut *guard;
    if let Some(Pending::Catalog(load)) = st.pending.front_mut() {
        match tag {
            b'D' => {
                if let Ok(cells) = data_row::decode(&frame) {
                    load.current.push(
                        cells
                            .iter()
                            .map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned()))
                            .collect(),
                    );
                }
                return Ok(None);
            }
            b'C' => {
                let rows = std::mem::take(&mut load.current);
                load.results.push(rows);
                return Ok(None);
            }
            b'E' => {
                load.error = Some("catalog query failed".into());
                return Ok(None);
            }
            b'Z' => {
                if let Some(Pending::Catalog(mut load)) = st.pending.pop_front() {
                    let result = match load.error.take() {
                        Some(e) => Err(e),
                        None => Ok(std::mem::take(&mut load.results)),
                    };
                    if let Some(done) = load.done.take() {
                        let _ = done.send(result);
                    }
                }
                return Ok(None);
            }
            b'S' | b'N' | b'A' => {}
            _ => return Ok(None),
        }
    }
    if tag == b'E' && matches!(st.pending.front(), Some(Pending::Startup)) {
        super::audit_auth_error(
            &super::AuditContext {
                peer: veil.peer,
                database: &veil.database,
                user: &veil.user,
            },
            &frame,
        );
    }
    if let Some(out) = on_copy_frame(veil, st, &frame) {
        return Ok(out);
    }
    if matches!(st.pending.front(), Some(Pending::Step(_))) {
        match tag {
            b'1' | b'2' | b'3' | b't' | b'T' | b'n' | b'D' | b'C' | b'I' | b's' => {
                // Bookkeeping happens even while the rest of a response is
                // dropped: the statements and portals are real.
                let discarding = st.discard_until_ready;
                let out = on_step_frame(veil, st, frame);
                if st.desync {
                    return Err(SessionError::Protocol(
                        "pgveil lost track of the server's responses".into(),
                    ));
                }
                return Ok(out.filter(|_| !discarding));
            }
            b'E' | b'Z' => extended::abandon_steps(st),
            _ => {}
        }
    }
    if st.discard_until_ready && !matches!(tag, b'Z' | b'S' | b'N' | b'A') {
        return Ok(None);
    }
    match tag {
        b'Z' => {
            let metrics = &veil.shared.metrics;
            match st.pending.pop_front() {
                Some(Pending::Query(q)) => {
                    if q.changes_settings {
                        st.settings_in_flight = st.settings_in_flight.saturating_sub(1);
                    }
                    metrics
                        .statement_duration_seconds
                        .with_label_values(&["simple"])
                        .observe(q.started.elapsed().as_secs_f64());
                    metrics
                        .proxy_overhead_seconds
                        .observe(q.overhead.as_secs_f64());
                }
                Some(Pending::SyncInCopy(started)) => {
                    // The COPY never started: this Sync was a real one.
                    st.ext.skip_until_sync = false;
                    st.ext.in_batch = false;
                    if st.copy_in.as_ref().is_some_and(|c| !c.started) {
                        st.copy_in = None;
                    }
                    metrics
                        .statement_duration_seconds
                        .with_label_values(&["extended"])
                        .observe(started.elapsed().as_secs_f64())
                }
                Some(Pending::Passthrough(started)) => metrics
                    .statement_duration_seconds
                    .with_label_values(&["extended"])
                    .observe(started.elapsed().as_secs_f64()),
                Some(Pending::SettingsSync(started)) => {
                    st.settings_in_flight = st.settings_in_flight.saturating_sub(1);
                    metrics
                        .statement_duration_seconds
                        .with_label_values(&["extended"])
                        .observe(started.elapsed().as_secs_f64());
                }
                _ => {}
            }
            st.decoder = None;
            st.discard_until_ready = false;
            Ok(Some(frame))
        }
        b'S' => {
            if let Ok((name, value)) = parameter_status::decode(&frame) {
                st.settings.set(name, value);
                if name == "standard_conforming_strings" {
                    st.standard_strings = value == "on";
                }
                if name == "client_encoding" {
                    st.utf8 = matches!(
                        value.to_ascii_uppercase().as_str(),
                        "UTF8" | "UTF-8" | "UNICODE"
                    );
                }
            }
            Ok(Some(frame))
        }
        b'T' => {
            let Some(Pending::Query(q)) = st.pending.front() else {
                return Ok(Some(frame));
            };
            let Ok(mut fields) = row_description::decode(&frame) else {
                return Ok(Some(frame));
            };
            let hints = q.hints.get(q.index).cloned().unwrap_or_default();
            let cols = encrypted_columns(q.catalog.as_deref(), &hints, &fields);
            if cols.iter().all(Option::is_none) {
                st.decoder = None;
                return Ok(Some(frame));
            }
            let columns = cols
                .iter()
                .zip(&fields)
                .map(|(c, f)| {
                    c.clone().map(|e| {
                        let format = if f.format == 1 {
                            Format::Binary
                        } else {
                            Format::Text
                        };
                        (e, format)
                    })
                })
                .collect();
            present_columns(&mut fields, &cols);
            st.decoder = Some(Decoder::new(
                veil,
                columns,
                veil.shared.encryption().keyring.clone(),
            ));
            Ok(Some(row_description::encode(&fields)))
        }
        b'D' => {
            let Some(decoder) = &st.decoder else {
                return Ok(Some(frame));
            };
            let t0 = Instant::now();
            let result = decrypt_row(veil, decoder, &st.settings, &frame);
            if let Some(Pending::Query(q)) = st.pending.front_mut() {
                q.overhead += t0.elapsed();
            }
            match result {
                Ok(row) => Ok(Some(row)),
                Err(msg) => {
                    st.decoder = None;
                    st.discard_until_ready = true;
                    Ok(Some(msg.to_bytes()))
                }
            }
        }
        b'C' | b'I' => {
            st.decoder = None;
            if let Some(Pending::Query(q)) = st.pending.front_mut() {
                q.index += 1;
            }
            Ok(Some(frame))
        }
        b'E' => {
            st.decoder = None;
            if let Some(pos) = st
                .refusal_tokens
                .iter()
                .position(|(t, _)| frame.windows(t.len()).any(|w| w == t.as_bytes()))
            {
                let (_, refusal) = st.refusal_tokens.remove(pos);
                let msg = ErrorResponse::error(refusal.sqlstate, refusal.message());
                return Ok(Some(msg.to_bytes()));
            }
            Ok(Some(scrub_error(frame)))
        }
        _ => Ok(Some(frame)),
    }
}

/// COPY-related server messages. `None`: not a COPY matter, handle as
/// usual; `Some(out)`: handled, forward `out`.
fn on_copy_frame(veil: &Veil, st: &mut State, frame: &BytesMut) -> Option<Option<BytesMut>> {
    match frame[0] {
        b'E' | b'Z' => {
            st.copy_out = None;
            None
        }
        b'G' => {
            if let Some(c) = st.copy_in.as_mut() {
                c.started = true;
            }
            // Syncs sent since the COPY began are ignored by the server.
            st.pending.retain(|p| !matches!(p, Pending::SyncInCopy(_)));
            Some(Some(frame.clone()))
        }
        b'H' => {
            let plan = match st.pending.front() {
                Some(Pending::Query(q)) => q.copies.get(q.index).cloned().flatten(),
                Some(Pending::Step(extended::Step::Execute { portal, .. })) => portal
                    .as_ref()
                    .and_then(|p| p.statement.as_ref())
                    .and_then(|s| s.copy.clone()),
                _ => None,
            };
            let max_row = veil.shared.config.limits.max_inspected_frame_bytes as usize;
            st.copy_out = plan.filter(|p| p.to).map(|p| {
                copy::CopyStream::new(p, veil.shared.encryption().keyring.clone(), max_row)
            });
            Some(Some(frame.clone()))
        }
        b'd' | b'c' if st.copy_out.is_some() => {
            if st.discard_until_ready {
                return Some(None);
            }
            let settings = &st.settings;
            let stream = st.copy_out.as_mut()?;
            let result = if frame[0] == b'd' {
                stream.feed(&frame[5..], settings)
            } else {
                stream.finish(settings)
            };
            match result {
                Ok(rows) => {
                    let mut out = if rows.is_empty() {
                        BytesMut::new()
                    } else {
                        copy::copy_data(&rows)
                    };
                    if frame[0] == b'c' {
                        st.copy_out = None;
                        out.extend_from_slice(frame);
                    }
                    Some((!out.is_empty()).then_some(out))
                }
                Err(e) => {
                    warn!(target: "audit", client = %veil.peer, database = %veil.database,
                          user = %veil.user, error = %e.message, "COPY TO: decrypt failed");
                    veil.shared
                        .metrics
                        .decrypt_errors_total
                        .with_label_values(&["copy"])
                        .inc();
                    st.copy_out = None;
                    st.discard_until_ready = true;
                    let msg = ErrorResponse::error(e.sqlstate, format!("pgveil: {}", e.message));
                    Some(Some(msg.to_bytes()))
                }
            }
        }
        _ => None,
    }
}

/// Which result columns hold ciphertext: by origin (table OID and column
/// number), else by the analyzer's positional hints.
fn encrypted_columns(
    catalog: Option<&Catalog>,
    hints: &[Option<Encrypted>],
    fields: &[row_description::Field],
) -> Vec<Option<Encrypted>> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            catalog
                .and_then(|c| c.origin(f.table_oid, f.column).cloned())
                .or_else(|| hints.get(i).cloned().flatten())
        })
        .collect()
}

/// Reports encrypted columns with the type the application sees.
fn present_columns(fields: &mut [row_description::Field], cols: &[Option<Encrypted>]) {
    for (f, c) in fields.iter_mut().zip(cols) {
        if let Some(e) = c {
            let (oid, size) = types::pg_type(e.value_type);
            f.type_oid = oid;
            f.type_size = size;
            f.type_modifier = -1;
        }
    }
}

/// Whether the rows about to arrive answer an Execute whose portal has
/// encrypted columns (resolved once per Execute).
fn execute_rows(veil: &Veil, st: &mut State) -> bool {
    let Some(Pending::Step(extended::Step::Execute { portal, decoder })) = st.pending.front_mut()
    else {
        return false;
    };
    decoder
        .get_or_insert_with(|| {
            portal
                .as_deref()
                .and_then(|p| extended::portal_decoder(veil, p))
        })
        .is_some()
}

/// A response to an extended-protocol step.
fn on_step_frame(veil: &Veil, st: &mut State, frame: BytesMut) -> Option<BytesMut> {
    use extended::Step;
    let tag = frame[0];
    match tag {
        b'1' | b'2' | b'3' => {
            let Some(Pending::Step(step)) = st.pending.pop_front() else {
                return Some(frame);
            };
            match (tag, step) {
                (b'1', Step::Parse { .. }) | (b'2', Step::Bind { .. }) => {}
                (b'3', step @ Step::Close { .. }) => extended::closed(st, step),
                _ => extended::out_of_step(st, tag),
            }
            Some(frame)
        }
        b't' => match st.pending.front() {
            Some(Pending::Step(Step::DescribeStatement {
                statement,
                injected,
            })) => {
                if *injected {
                    return None;
                }
                Some(
                    statement
                        .as_deref()
                        .and_then(|s| extended::present_parameters(s, &frame))
                        .unwrap_or(frame),
                )
            }
            _ => {
                extended::out_of_step(st, tag);
                Some(frame)
            }
        },
        b'T' | b'n' => {
            let Some(Pending::Step(step)) = st.pending.pop_front() else {
                return Some(frame);
            };
            let (injected, out) = match step {
                Step::DescribeStatement {
                    statement,
                    injected,
                } => {
                    let out = match statement {
                        Some(s) if tag == b'T' => extended::describe_rows(
                            veil,
                            frame,
                            s.catalog.clone(),
                            &s.hints,
                            &s.columns,
                        ),
                        Some(s) => {
                            let _ = s.columns.set(Vec::new());
                            frame
                        }
                        None => frame,
                    };
                    (injected, out)
                }
                Step::DescribePortal { portal, injected } => {
                    let out = match portal {
                        Some(p) if tag == b'T' => {
                            let (catalog, hints) = p
                                .statement
                                .as_ref()
                                .map(|s| (s.catalog.clone(), s.hints.clone()))
                                .unwrap_or_default();
                            extended::describe_rows(veil, frame, catalog, &hints, &p.columns)
                        }
                        Some(p) => {
                            let _ = p.columns.set(Vec::new());
                            frame
                        }
                        None => frame,
                    };
                    (injected, out)
                }
                _ => {
                    extended::out_of_step(st, tag);
                    (false, frame)
                }
            };
            (!injected).then_some(out)
        }
        b'D' => {
            let decoder = match st.pending.front() {
                Some(Pending::Step(Step::Execute {
                    decoder: Some(Some(d)),
                    ..
                })) => d.clone(),
                _ => return Some(frame),
            };
            match decrypt_row(veil, &decoder, &st.settings, &frame) {
                Ok(row) => Some(row),
                Err(msg) => {
                    // The rest of this response is dropped; the client
                    // sees the error where the row was.
                    st.discard_until_ready = true;
                    Some(msg.to_bytes())
                }
            }
        }
        _ => {
            // CommandComplete, EmptyQueryResponse, PortalSuspended.
            match st.pending.pop_front() {
                Some(Pending::Step(Step::Execute { .. })) => {}
                _ => extended::out_of_step(st, tag),
            }
            Some(frame)
        }
    }
}

fn decrypt_row(
    veil: &Veil,
    decoder: &Decoder,
    settings: &SessionSettings,
    frame: &[u8],
) -> Result<BytesMut, ErrorResponse> {
    let corrupt = |col: &str| {
        veil.shared
            .metrics
            .decrypt_errors_total
            .with_label_values(&[col])
            .inc();
        warn!(target: "audit", client = %veil.peer, database = %veil.database,
              user = %veil.user, column = %col, "decrypt failed: stored value is not a valid envelope");
        ErrorResponse::error(
            "XX001",
            format!("pgveil: a stored value in encrypted column {col} could not be decrypted"),
        )
    };
    let cells = data_row::decode(frame).map_err(|_| corrupt("?"))?;
    // Built in place: plaintext is about half the size of ciphertext.
    let mut out = BytesMut::with_capacity(frame.len());
    out.extend_from_slice(&frame[..7]);
    let put = |out: &mut BytesMut, cell: Option<&[u8]>| match cell {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(v) => {
            out.extend_from_slice(&(v.len() as i32).to_be_bytes());
            out.extend_from_slice(v);
        }
    };
    for (i, cell) in cells.iter().enumerate() {
        let spec = decoder.columns.get(i).and_then(|c| c.as_ref());
        match (cell, spec) {
            (Some(v), Some((enc, format))) => {
                let name = || enc.id.to_string();
                let cipher = decoder
                    .keyring
                    .as_deref()
                    .and_then(|k| k.column_by_id(&enc.id))
                    .ok_or_else(|| corrupt(&name()))?;
                let storage = enc.storage.storage().ok_or_else(|| corrupt(&name()))?;
                let hex;
                let stored: &[u8] = match (storage, format) {
                    (crate::config::Storage::Bytea, Format::Text) => {
                        hex = crate::crypto::envelope::bytea_from_hex(v)
                            .map_err(|_| corrupt(&name()))?;
                        &hex
                    }
                    _ => v,
                };
                match cipher.decrypt_or_plain(storage, stored, *format, settings) {
                    Ok((plain, false)) => {
                        if let Some(Some(c)) = decoder.counters.get(i) {
                            c.inc();
                        }
                        put(&mut out, Some(&plain));
                    }
                    Ok((plain, true)) => {
                        // A row `pgveil migrate encrypt` has not reached yet.
                        if let Some(Some(c)) = decoder.plain_counters.get(i) {
                            c.inc();
                        }
                        put(&mut out, Some(&plain));
                    }
                    Err(e) => {
                        let name = name();
                        veil.shared
                            .metrics
                            .decrypt_errors_total
                            .with_label_values(&[&name])
                            .inc();
                        warn!(target: "audit", client = %veil.peer, database = %veil.database,
                              user = %veil.user, column = %name, error = %e, "decrypt failed");
                        return Err(ErrorResponse::error(e.sqlstate(), format!("pgveil: {e}")));
                    }
                }
            }
            (c, _) => put(&mut out, *c),
        }
    }
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    Ok(out)
}

/// PostgreSQL quotes the stored value in some errors (a unique violation's
/// `Key (email)=(\x01…)`); ciphertext must not reach the client either.
fn scrub_error(frame: BytesMut) -> BytesMut {
    let text = String::from_utf8_lossy(&frame[5..]);
    if !text.contains("\\x01") && !text.contains(crate::crypto::envelope::TEXT_PREFIX) {
        return frame;
    }
    let mut fields = Vec::new();
    for field in frame[5..].split(|b| *b == 0) {
        if field.is_empty() {
            continue;
        }
        let (code, value) = (field[0], String::from_utf8_lossy(&field[1..]).into_owned());
        let value = if code == b'D' || code == b'M' {
            redact(&value)
        } else {
            value
        };
        fields.push((code, value));
    }
    let mut b = BytesMut::new();
    let body: usize = fields.iter().map(|(_, v)| v.len() + 2).sum::<usize>() + 1;
    b.extend_from_slice(&[frame[0]]);
    b.extend_from_slice(&((body + 4) as i32).to_be_bytes());
    for (c, v) in fields {
        b.extend_from_slice(&[c]);
        b.extend_from_slice(v.as_bytes());
        b.extend_from_slice(&[0]);
    }
    b.extend_from_slice(&[0]);
    b
}

fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let prefix = crate::crypto::envelope::TEXT_PREFIX;
    loop {
        let hex = rest.find("\\x01");
        let txt = rest.find(prefix);
        let at = match (hex, txt) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => break,
        };
        out.push_str(&rest[..at]);
        out.push_str("<encrypted>");
        let tail = &rest[at..];
        let skip = tail.find([')', ',', ' ', '"']).unwrap_or(tail.len());
        rest = &tail[skip..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_hex_and_text_ciphertext() {
        let s = "Key (email)=(\\x01ab12cd) already exists.";
        assert_eq!(redact(s), "Key (email)=(<encrypted>) already exists.");
    }
}
