//! Verifier lookup for `[auth] mode = "scram"`: pgveil logs in as
//! `auth_user` and runs `auth_query` for the connecting user, as PgBouncer
//! does, and keeps the answer for `cache_ttl_ms` so a burst of connections
//! costs one lookup.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::login::{LoginSecret, login, startup_message};
use super::scram::Secret;
use super::{AuthError, message, read_message, send};
use crate::config::Auth;
use crate::server::Shared;

/// Cached lookups by user name.
#[derive(Default)]
pub struct Lookup {
    cache: Mutex<HashMap<String, (Instant, Option<Secret>)>>,
}

/// Users kept in the cache at most; beyond that it is cleared.
const CACHE_USERS: usize = 10_000;

impl Lookup {
    /// The stored secret of `user`: `None` when the role does not exist,
    /// cannot log in, or has no password pgveil can use.
    pub async fn secret(&self, shared: &Shared, user: &str) -> Result<Option<Secret>, AuthError> {
        let auth = &shared.config.auth;
        let ttl = Duration::from_millis(auth.cache_ttl_ms);
        if let Ok(cache) = self.cache.lock()
            && let Some((at, secret)) = cache.get(user)
            && at.elapsed() < ttl
        {
            return Ok(secret.clone());
        }
        let secret = fetch(shared, auth, user).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_USERS {
                cache.clear();
            }
            cache.insert(user.to_string(), (Instant::now(), secret.clone()));
        }
        Ok(secret)
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

async fn fetch(shared: &Shared, auth: &Auth, user: &str) -> Result<Option<Secret>, AuthError> {
    let auth_user = auth
        .auth_user
        .as_ref()
        .map(|u| u.get_ref().as_str())
        .unwrap_or_default();
    let tls = shared.tls();
    let mut upstream = crate::session::startup::connect_upstream(shared, tls.upstream.as_deref())
        .await
        .map_err(|e| AuthError::Login(e.to_string()))?;
    let startup = startup_message(&[
        ("user", auth_user),
        ("database", &auth.auth_database),
        ("application_name", "pgveil-auth-lookup"),
    ]);
    let password = password(auth)?;
    let logged_in = login(
        &mut upstream,
        &startup,
        LoginSecret::Password {
            password: &password,
            user: auth_user,
        },
    )
    .await;
    match logged_in {
        Ok(_) => {}
        Err(AuthError::Upstream(frame)) => {
            return Err(AuthError::Login(format!(
                "auth_user {auth_user} could not log in: {}",
                error_text(&frame[5.min(frame.len())..])
            )));
        }
        Err(e) => return Err(e),
    }
    wait_ready(&mut upstream).await?;
    send(&mut upstream, &query_messages(&auth.auth_query, user)).await?;
    let mut secret = None;
    loop {
        let Some((tag, body)) = read_message(&mut upstream).await? else {
            return Err(AuthError::Login(
                "the server closed the lookup connection".into(),
            ));
        };
        match tag {
            b'D' => secret = last_column(&body).and_then(|s| Secret::parse(&s)),
            b'E' => {
                return Err(AuthError::Login(format!(
                    "auth_query failed: {}",
                    error_text(&body)
                )));
            }
            b'Z' => break,
            _ => {}
        }
    }
    let _ = send(&mut upstream, &message(b'X', &[])).await;
    Ok(secret)
}

/// Skips ParameterStatus and BackendKeyData up to the first ReadyForQuery.
async fn wait_ready(upstream: &mut crate::session::stream::Stream) -> Result<(), AuthError> {
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

/// The last column of a DataRow as text (`passwd` of `usename, passwd`).
fn last_column(body: &[u8]) -> Option<String> {
    let count = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut pos = 2usize;
    let mut last = None;
    for _ in 0..count {
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len < 0 {
            last = None;
            continue;
        }
        let end = pos.checked_add(len as usize)?;
        last = Some(String::from_utf8_lossy(body.get(pos..end)?).into_owned());
        pos = end;
    }
    last
}

/// `SQLSTATE: message` of an ErrorResponse body, for logs.
pub fn error_text(body: &[u8]) -> String {
    let mut code = "";
    let mut text = String::new();
    for field in body.split(|b| *b == 0) {
        match field.split_first() {
            Some((b'C', v)) => code = std::str::from_utf8(v).unwrap_or_default(),
            Some((b'M', v)) => text = String::from_utf8_lossy(v).into_owned(),
            _ => {}
        }
    }
    format!("{code}: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_row_last_column() {
        let mut row = vec![0, 2];
        for v in [&b"alice"[..], b"md5d41d8cd98f00b204e9800998ecf8427e"] {
            row.extend_from_slice(&(v.len() as i32).to_be_bytes());
            row.extend_from_slice(v);
        }
        assert_eq!(
            last_column(&row).as_deref(),
            Some("md5d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(last_column(&[0, 1, 255, 255, 255, 255]), None);
        assert_eq!(last_column(&[0, 1, 0, 0, 0, 9, b'x']), None);
        assert_eq!(last_column(&[]), None);
    }
}
