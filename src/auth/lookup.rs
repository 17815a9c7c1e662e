//! Verifier lookup for `[auth] mode = "scram"`: pgveil keeps one session
//! logged in as `auth_user` and runs `auth_query` on it for the connecting
//! user, as PgBouncer does. Answers are kept for `cache_ttl_ms`.
//!
//! Lookups are serialised on that one session and the cache is checked
//! again once a lookup has the session, so a burst of connections for one
//! user costs one query, and a flood of unknown names costs one query each
//! (one round trip, no login) rather than a connection and a SCRAM login.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::login::{LoginSecret, login, startup_message};
use super::scram::Secret;
use super::{AuthError, message, read_message, send};
use crate::config::Auth;
use crate::session::stream::Stream;
use crate::shared::Shared;

/// Cached lookups by user name, and the `auth_user` session.
#[derive(Default)]
pub struct Lookup {
    cache: Mutex<HashMap<String, (Instant, Option<Secret>)>>,
    session: tokio::sync::Mutex<Option<Stream>>,
}

/// Users kept in the cache at most; the oldest entry makes room.
const CACHE_USERS: usize = 10_000;
/// One lookup (connect, login and query included) gives up after this.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

impl Lookup {
    /// The stored secret of `user`: `None` when the role does not exist,
    /// cannot log in, or has no password pgveil can use.
    pub async fn secret(&self, shared: &Shared, user: &str) -> Result<Option<Secret>, AuthError> {
        let ttl = Duration::from_millis(shared.config.auth.cache_ttl_ms);
        if let Some(hit) = self.cached(user, ttl) {
            return Ok(hit);
        }
        let mut session = self.session.lock().await;
        // Another connection may have looked the user up while this waited.
        if let Some(hit) = self.cached(user, ttl) {
            return Ok(hit);
        }
        let fetched = tokio::time::timeout(LOOKUP_TIMEOUT, async {
            // A kept session may have been closed by the server (idle
            // timeouts, restarts): one retry on a fresh one.
            if let Some(s) = session.as_mut()
                && let Ok(secret) = query(s, &shared.config.auth.auth_query, user).await
            {
                return Ok(secret);
            }
            *session = None;
            let mut fresh = open(shared).await?;
            let secret = query(&mut fresh, &shared.config.auth.auth_query, user).await?;
            *session = Some(fresh);
            Ok(secret)
        })
        .await
        .map_err(|_| AuthError::Login("the verifier lookup timed out".into()))
        .and_then(|r| r);
        if fetched.is_err() {
            *session = None;
        }
        let secret = fetched?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_USERS
                && let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                cache.remove(&oldest);
            }
            cache.insert(user.to_string(), (Instant::now(), secret.clone()));
        }
        Ok(secret)
    }

    fn cached(&self, user: &str, ttl: Duration) -> Option<Option<Secret>> {
        let cache = self.cache.lock().ok()?;
        let (at, secret) = cache.get(user)?;
        (at.elapsed() < ttl).then(|| secret.clone())
    }

    /// Drops a user's cached secret (after a failed login, the password may
    /// have changed).
    pub fn forget(&self, user: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(user);
        }
    }
}

fn password(auth: &Auth) -> Result<Zeroizing<Vec<u8>>, AuthError> {
    let raw = match (&auth.auth_password_env, &auth.auth_password_file) {
        (Some(var), _) => std::env::var(var)
            .map_err(|_| AuthError::Login(format!("auth_password_env: {var} is not set")))?
            .into_bytes(),
        (_, Some(path)) => std::fs::read(path)
            .map_err(|e| AuthError::Login(format!("auth_password_file {}: {e}", path.display())))?,
        (None, None) => Vec::new(),
    };
    let mut raw = Zeroizing::new(raw);
    while matches!(raw.last(), Some(b'\n' | b'\r')) {
        raw.pop();
    }
    Ok(raw)
}

/// Opens and logs in the `auth_user` session, up to its ReadyForQuery.
async fn open(shared: &Shared) -> Result<Stream, AuthError> {
    let auth = &shared.config.auth;
    let auth_user = auth
        .auth_user
        .as_ref()
        .map(|u| u.get_ref().as_str())
        .unwrap_or_default();
    let tls = shared.tls();
    let mut upstream = crate::session::startup::connect_upstream(shared, tls.upstream.as_deref())
        .await
        .map_err(|e| AuthError::Login(e.to_string()))?;
    let verified = tls.upstream.as_ref().is_some_and(|t| t.verified(&upstream));
    let startup = startup_message(&[
        ("user", auth_user),
        ("database", &auth.auth_database),
        ("application_name", "pgveil-auth-lookup"),
    ]);
    let password = password(auth)?;
    let secret = LoginSecret::Password {
        password: &password,
        user: auth_user,
    };
    match login(&mut upstream, &startup, secret, verified).await {
        Ok(_) => {}
        Err(AuthError::Upstream(frame)) => {
            return Err(AuthError::Login(format!(
                "auth_user {auth_user} could not log in: {}",
                error_text(frame.get(5..).unwrap_or_default())
            )));
        }
        Err(e) => return Err(e),
    }
    wait_ready(&mut upstream).await?;
    Ok(upstream)
}

/// Runs `auth_query` for `user`. The answer must be one row whose first
/// column is exactly the user name; its last column is the secret.
async fn query(
    session: &mut Stream,
    auth_query: &str,
    user: &str,
) -> Result<Option<Secret>, AuthError> {
    send(session, &query_messages(auth_query, user)).await?;
    let mut rows = Vec::new();
    let mut failed = None;
    loop {
        let Some((tag, body)) = read_message(session).await? else {
            return Err(AuthError::Login(
                "the server closed the lookup connection".into(),
            ));
        };
        match tag {
            b'D' => rows.push(columns(&body)),
            b'E' => failed = Some(error_text(&body)),
            b'Z' => break,
            _ => {}
        }
    }
    if let Some(e) = failed {
        return Err(AuthError::Login(format!("auth_query failed: {e}")));
    }
    let matching: Vec<_> = rows
        .into_iter()
        .filter(|r| r.first().and_then(|c| c.as_deref()) == Some(user))
        .collect();
    match matching.as_slice() {
        [] => Ok(None),
        [row] if row.len() >= 2 => Ok(row
            .last()
            .and_then(|c| c.as_deref())
            .and_then(Secret::parse)),
        [_] => Err(AuthError::Login(
            "auth_query must return (user name, password) columns".into(),
        )),
        _ => Err(AuthError::Login(
            "auth_query returned several rows for one user".into(),
        )),
    }
}

/// Skips ParameterStatus and BackendKeyData up to the first ReadyForQuery.
async fn wait_ready(upstream: &mut Stream) -> Result<(), AuthError> {
    loop {
        match read_message(upstream).await? {
            Some((b'Z', _)) => return Ok(()),
            Some((b'E', body)) => {
                return Err(AuthError::Login(format!(
                    "auth_user session failed: {}",
                    error_text(&body)
                )));
            }
            Some(_) => {}
            None => {
                return Err(AuthError::Login(
                    "the server closed the lookup connection".into(),
                ));
            }
        }
    }
}

/// Parse, Bind (the user name as text `$1`), Execute, Sync.
fn query_messages(query: &str, user: &str) -> Vec<u8> {
    let mut parse = vec![0u8];
    parse.extend_from_slice(query.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut bind = vec![0u8, 0, 0, 0, 0, 1];
    bind.extend_from_slice(&(user.len() as i32).to_be_bytes());
    bind.extend_from_slice(user.as_bytes());
    bind.extend_from_slice(&[0, 0]);
    let mut out = message(b'P', &parse);
    out.extend_from_slice(&message(b'B', &bind));
    out.extend_from_slice(&message(b'E', &[0, 0, 0, 0, 0]));
    out.extend_from_slice(&message(b'S', &[]));
    out
}

/// The columns of a DataRow as text (`None` for NULL); an empty list for a
/// malformed row.
fn columns(body: &[u8]) -> Vec<Option<String>> {
    let parse = || -> Option<Vec<Option<String>>> {
        let count = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
        let mut pos = 2usize;
        let mut out = Vec::new();
        for _ in 0..count {
            let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
            pos += 4;
            if len < 0 {
                out.push(None);
                continue;
            }
            let end = pos.checked_add(len as usize)?;
            out.push(Some(
                String::from_utf8_lossy(body.get(pos..end)?).into_owned(),
            ));
            pos = end;
        }
        Some(out)
    };
    parse().unwrap_or_default()
}

/// `SQLSTATE: message` of an ErrorResponse body, for logs.
pub fn error_text(body: &[u8]) -> String {
    use crate::protocol::messages::error_response::field;
    format!(
        "{}: {}",
        field(body, b'C').unwrap_or_default(),
        field(body, b'M').unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_columns() {
        let mut row = vec![0, 2];
        for v in [&b"alice"[..], b"md5d41d8cd98f00b204e9800998ecf8427e"] {
            row.extend_from_slice(&(v.len() as i32).to_be_bytes());
            row.extend_from_slice(v);
        }
        assert_eq!(
            columns(&row),
            vec![
                Some("alice".to_string()),
                Some("md5d41d8cd98f00b204e9800998ecf8427e".to_string())
            ]
        );
        assert_eq!(columns(&[0, 1, 255, 255, 255, 255]), vec![None]);
        assert!(columns(&[0, 1, 0, 0, 0, 9, b'x']).is_empty());
        assert!(columns(&[]).is_empty());
    }
}
