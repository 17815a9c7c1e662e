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

use super::copy::CopyStream;
use super::parameters;
use super::query::refusal_token;
use super::state::{Decoder, Pending, State, Veil};
use crate::catalog::{Catalog, Encrypted};
use crate::protocol::messages::extended;
use crate::session::SessionError;
use crate::sql::Refusal;
use crate::sql::analyze::ParamBinding;

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
    pub(super) fn passthrough(sql: &str) -> Statement {
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
pub(super) fn names_relations(text: &str) -> bool {
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
        b'P' => super::parse::on_parse(veil, writer, frame).await,
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
pub(super) fn register(
    veil: &Veil,
    name: &str,
    statement: Statement,
    steps: Vec<Step>,
) -> Arc<Statement> {
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
