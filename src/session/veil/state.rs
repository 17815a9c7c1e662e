//! What the two pumps of one encrypting session share: the response FIFO
//! ([`Pending`], one entry per request that ends in ReadyForQuery), the
//! session settings, and the registries of prepared statements, kept in
//! one [`State`] behind the session's [`Veil`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::copy;
use super::extended;
use super::prepared::PreparedMeta;
use crate::catalog::{Catalog, Encrypted, Rows};
use crate::crypto::{Format, Keyring, SessionSettings};
use crate::shared::{Age, Shared};
use crate::sql::Refusal;
use crate::sql::analyze::Watched;

/// What a response stream (ending in ReadyForQuery) answers.
pub(super) enum Pending {
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

/// A simple Query's response in progress: how to read each statement's
/// result.
pub(super) struct QueryState {
    /// Per statement: positional hints for columns without an origin.
    pub(super) hints: Vec<Vec<Option<Encrypted>>>,
    /// The statement whose result arrives next.
    pub(super) index: usize,
    pub(super) catalog: Option<Arc<Catalog>>,
    /// When the client's Query arrived.
    pub(super) started: Instant,
    /// Time pgveil itself spent on this Query (analysis, rewriting,
    /// encryption, decryption).
    pub(super) overhead: Duration,
    /// The Query may change how later statements must be read
    /// (`standard_conforming_strings`, `client_encoding`).
    pub(super) changes_settings: bool,
    /// Per statement: its COPY plan, for `COPY ... TO STDOUT`.
    pub(super) copies: Vec<Option<Arc<crate::sql::analyze::CopyPlan>>>,
}

impl QueryState {
    pub(super) fn pending(
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

/// pgveil's own catalog query in progress: the result sets so far, for
/// the client pump waiting on `done`.
pub(super) struct CatalogLoad {
    pub(super) results: Vec<Rows>,
    pub(super) current: Rows,
    pub(super) error: Option<String>,
    pub(super) done: Option<oneshot::Sender<Result<Vec<Rows>, String>>>,
    /// It is pgveil's `LISTEN`: its outcome sets [`State::listen`].
    pub(super) listen: bool,
}

impl CatalogLoad {
    pub(super) fn new(done: Option<oneshot::Sender<Result<Vec<Rows>, String>>>) -> CatalogLoad {
        CatalogLoad {
            results: Vec::new(),
            current: Vec::new(),
            error: None,
            done,
            listen: false,
        }
    }

    pub(super) fn listen() -> CatalogLoad {
        CatalogLoad {
            listen: true,
            ..CatalogLoad::new(None)
        }
    }
}

/// Whether this session's connection listens for schema change
/// notifications (see [`crate::catalog::CHANGE_CHANNEL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listen {
    /// Not asked yet: asked before the first request.
    NotYet,
    /// `LISTEN` sent, its answer not read yet.
    Sent,
    /// Listening.
    Active,
    /// The server refused (a hot standby does): `[catalog] max_age_ms`
    /// alone bounds how long a change goes unnoticed.
    Refused,
    /// The client may have run `UNLISTEN` or `DISCARD ALL`: asked again
    /// once the session is idle.
    Dropped,
}

/// How to decrypt the rows of the current result.
pub(super) struct Decoder {
    pub(super) columns: Vec<Option<(Encrypted, Format)>>,
    /// Ciphers as of the RowDescription: a reload mid-result does not
    /// change how its rows decrypt.
    pub(super) keyring: Option<Arc<Keyring>>,
    /// Per column: its `values_decrypted_total` counter, looked up once.
    pub(super) counters: Vec<Option<prometheus::IntCounter>>,
    /// Per column with several stored forms: its
    /// `plaintext_values_read_total` counter.
    pub(super) plain_counters: Vec<Option<prometheus::IntCounter>>,
}

impl Decoder {
    pub(super) fn new(
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
pub(super) struct State {
    pub(super) settings: SessionSettings,
    pub(super) standard_strings: bool,
    pub(super) pending: VecDeque<Pending>,
    pub(super) decoder: Option<Decoder>,
    /// After a decrypt failure: drop everything until ReadyForQuery.
    pub(super) discard_until_ready: bool,
    /// Names of relations used in extended-protocol refusals, so the
    /// database's "does not exist" error can be replaced by the refusal.
    pub(super) refusal_tokens: Vec<(String, Refusal)>,
    /// SQL-level prepared statements (`PREPARE`) and, per parameter, the
    /// encrypted column it is bound to.
    pub(super) prepared: HashMap<String, Vec<Option<Encrypted>>>,
    /// How each SQL prepared statement was analysed, to re-check it after
    /// a configuration reload.
    pub(super) prepared_meta: HashMap<String, PreparedMeta>,
    /// Extended-protocol statements and portals.
    pub(super) ext: extended::Extended,
    /// The configuration generation this session last checked against.
    pub(super) generation: u64,
    /// The encrypted columns as of that generation.
    pub(super) columns_signature: String,
    /// Time spent waiting for catalog loads since the last Query was queued.
    pub(super) catalog_wait: Duration,
    /// `client_encoding` is UTF8 (pgveil tokenizes statements as UTF-8).
    pub(super) utf8: bool,
    /// Queries sent that may change string or encoding settings and whose
    /// ReadyForQuery has not arrived: until then the settings are unknown.
    pub(super) settings_in_flight: usize,
    /// Set by the client pump for the next queued Query.
    pub(super) next_changes_settings: bool,
    /// The watched names for (catalog generation, config generation):
    /// built once, not per statement.
    pub(super) watched: Option<((u64, u64), Arc<Watched>)>,
    /// COPY FROM STDIN data from the client being encrypted.
    pub(super) copy_in: Option<copy::CopyStream>,
    /// COPY TO STDOUT data from the database being decrypted.
    pub(super) copy_out: Option<copy::CopyStream>,
    /// A response did not match what pgveil expected: the session ends
    /// rather than guess how to read what follows.
    pub(super) desync: bool,
    /// A Query that pgveil forwarded unanalysed said `PREPARE`: after a
    /// reload that changes encrypted columns, that statement may bind
    /// plaintext into one.
    pub(super) unanalysed_prepare: bool,
    /// Names of SQL prepared statements pgveil forwarded unanalysed (they
    /// name nothing encrypted), so `EXECUTE` of them is known to be plain.
    /// With each, the Query that prepared it and the catalog generation
    /// it was judged by: after a catalog change, PostgreSQL re-plans it
    /// from its text, and what it names may have become encrypted.
    pub(super) plain_prepared: HashMap<String, (Arc<str>, u64)>,
    /// DDL was sent since the current transaction began (outside a
    /// transaction block: since the last ReadyForQuery). Until the
    /// transaction ends, this session's catalog is its own: other
    /// sessions do not see the DDL, and a rollback may undo it.
    pub(super) txn_ddl: bool,
    /// The catalog loaded inside such a transaction, for one Query or
    /// batch: a savepoint rollback or an error may undo part of it, so it
    /// is read again after each ReadyForQuery.
    pub(super) txn_catalog: Option<Arc<Catalog>>,
    /// The `search_path` the server last reported (PostgreSQL 18 and
    /// later report it), and whether it changed since: then names
    /// resolve differently, and this session loads a catalog of its own.
    pub(super) reported_path: Option<String>,
    /// Cursors declared by analysed statements (over encrypted tables): a
    /// `FETCH` from one is analysed too, so its rows are described and
    /// decrypted on every protocol path.
    pub(super) cursors: std::collections::HashSet<String>,
    pub(super) path_changed: bool,
    /// A statement that may change a setting ran since the session was
    /// last idle outside a transaction: the transaction's end may restore
    /// the old value, so it is not harmless to pipeline behind.
    pub(super) settings_changed_in_txn: bool,
    /// pgveil's `LISTEN` on this connection.
    pub(super) listen: Listen,
    /// The last ReadyForQuery said idle (no transaction block).
    pub(super) idle: bool,
}

impl State {
    /// pgveil should send its `LISTEN` before the next request: never
    /// asked, or dropped by the client, and nothing in flight that could
    /// leave it inside a transaction block.
    pub(super) fn wants_listen(&self) -> bool {
        matches!(self.listen, Listen::NotYet | Listen::Dropped)
            && self.idle
            && self.pending.is_empty()
            && !self.ext.in_batch
    }

    /// This session's own catalog, when a transaction that ran DDL is open
    /// (`Some(None)`: it must be loaded); `None`: the shared one applies.
    fn own_catalog(&self) -> Option<Option<Arc<Catalog>>> {
        self.txn_ddl.then(|| self.txn_catalog.clone())
    }
}

/// One session's encryption context.
pub(super) struct Veil {
    pub(super) peer: std::net::SocketAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) database: String,
    pub(super) user: String,
    /// Catalog cache key: (database, user), or a key of this session's own
    /// once it has changed its `search_path` (name resolution differs).
    cache_key: Mutex<(String, String)>,
    state: Mutex<State>,
}

impl Veil {
    /// A session that has just authenticated: its first response is the
    /// ReadyForQuery that ends the startup.
    pub(super) fn new(
        peer: std::net::SocketAddr,
        shared: Arc<Shared>,
        user: &str,
        database: &str,
    ) -> Veil {
        Veil {
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
                plain_prepared: HashMap::new(),
                txn_ddl: false,
                txn_catalog: None,
                reported_path: None,
                cursors: std::collections::HashSet::new(),
                path_changed: false,
                settings_changed_in_txn: false,
                listen: Listen::NotYet,
                idle: true,
            }),
        }
    }

    /// The catalog cache key this session reads and stores under now.
    pub(super) fn key(&self) -> (String, String) {
        self.cache_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Gives this session a catalog of its own: it set a `search_path` (or
    /// may have), so names resolve differently from other sessions of its
    /// user. Once private, the key stays the same and its catalog is
    /// dropped instead, so the next statement loads it again (one cache
    /// entry per session at most, removed when the session ends).
    pub(super) fn make_key_private(&self) {
        let key = self.key();
        if key.1.contains('#') {
            self.shared.forget_own_catalog(&key);
            return;
        }
        let mut token = [0u8; 8];
        let _ = getrandom::fill(&mut token);
        let suffix: String = token.iter().map(|b| format!("{b:02x}")).collect();
        *self.cache_key.lock().unwrap_or_else(|p| p.into_inner()) =
            (self.database.clone(), format!("{}#{suffix}", self.user));
    }

    /// The client may have dropped pgveil's `LISTEN` (see
    /// [`super::watch::drops_listen`]): asked again once idle.
    pub(super) fn listen_dropped(&self, st: &mut State) {
        if st.listen == Listen::Active {
            self.shared.catalog_listener_removed(&self.database);
        }
        if st.listen != Listen::Refused {
            st.listen = Listen::Dropped;
        }
    }

    /// The session ends: its private catalog, if any, goes with it.
    pub(super) fn release(&self) {
        if self.state().listen == Listen::Active {
            self.shared.catalog_listener_removed(&self.database);
        }
        let key = self.key();
        if key.1.contains('#') {
            self.shared.forget_own_catalog(&key);
        }
    }

    /// The catalog this session's next statement is judged against: its
    /// own inside a transaction that ran DDL, else the shared one.
    /// One older than `[catalog] max_age_ms` counts as absent, unless
    /// the session is inside an unsynced batch, where none can be loaded.
    pub(super) fn cached_catalog(&self) -> Option<Arc<Catalog>> {
        let (own, path_changed, age) = {
            let mut st = self.state();
            let age = if st.ext.in_batch {
                Age::Any
            } else {
                Age::Fresh
            };
            (st.own_catalog(), std::mem::take(&mut st.path_changed), age)
        };
        if path_changed {
            self.make_key_private();
        }
        own.unwrap_or_else(|| self.shared.catalog_cached(&self.key(), age))
    }

    /// [`Veil::cached_catalog`] for a caller that holds the state lock
    /// (reading results of statements already judged: any age will do).
    pub(super) fn cached_catalog_locked(&self, st: &State) -> Option<Arc<Catalog>> {
        st.own_catalog()
            .unwrap_or_else(|| self.shared.catalog_cached(&self.key(), Age::Any))
    }

    /// Keeps a catalog just loaded (the load started at `epoch`); `false`
    /// when it may predate another session's change and must be loaded
    /// again.
    pub(super) fn keep_catalog(&self, catalog: Arc<Catalog>, epoch: u64) -> bool {
        {
            let mut st = self.state();
            if st.txn_ddl {
                st.txn_catalog = Some(catalog);
                return true;
            }
        }
        self.shared.store_catalog(self.key(), catalog, epoch)
    }

    /// DDL is about to be sent: the catalog is read again before the next
    /// statement that needs it, and, until the transaction ends, this
    /// session keeps its catalog to itself.
    pub(super) fn note_ddl(&self) {
        {
            let mut st = self.state();
            st.txn_ddl = true;
            st.txn_catalog = None;
        }
        self.shared.invalidate_catalog(&self.key());
    }

    /// Forgets the catalog this session judges by (a statement named a
    /// configured table the catalog does not have).
    pub(super) fn forget_catalog(&self) {
        self.state().txn_catalog = None;
        self.shared.invalidate_catalog(&self.key());
    }

    /// The state both pumps share.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a pump panicked; the other still needs the
        // state to finish, and the data is consistent per message.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
