//! Authentication, from the StartupMessage to AuthenticationOk, before the
//! relay loops take over.
//!
//! - [`passthrough`]: client and PostgreSQL authenticate end to end; pgveil
//!   only removes SCRAM-SHA-256-PLUS from the offer (binding cannot cross
//!   its TLS termination) and explains the one failure that causes.
//! - [`terminate`]: `[auth] mode = "scram"`; pgveil verifies the client
//!   against PostgreSQL's stored verifier and logs in upstream with the key
//!   recovered from the client's proof.
//! - [`lookup`]: fetches and caches those verifiers as `auth_user`.
//! - [`login`]: pgveil as a PostgreSQL client (upstream logins, lookups).
//! - [`scram`]: the SCRAM and MD5 arithmetic.
//!
//! Messages in this phase are few and small: they are read whole, exactly,
//! so nothing past AuthenticationOk is consumed before the relay starts.

pub mod login;
pub mod lookup;
pub mod passthrough;
pub mod scram;
pub mod terminate;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::messages::ErrorResponse;

/// Largest message accepted during authentication (PostgreSQL caps SASL
/// and GSS tokens well below this).
const MAX_AUTH_MESSAGE: usize = 256 * 1024;

/// AuthenticationOk and friends: the request codes of an `R` message.
pub mod code {
    /// AuthenticationOk.
    pub const OK: i32 = 0;
    /// AuthenticationCleartextPassword.
    pub const CLEARTEXT: i32 = 3;
    /// AuthenticationMD5Password.
    pub const MD5: i32 = 5;
    /// AuthenticationGSS.
    pub const GSS: i32 = 7;
    /// AuthenticationGSSContinue.
    pub const GSS_CONTINUE: i32 = 8;
    /// AuthenticationSSPI.
    pub const SSPI: i32 = 9;
    /// AuthenticationSASL.
    pub const SASL: i32 = 10;
    /// AuthenticationSASLContinue.
    pub const SASL_CONTINUE: i32 = 11;
    /// AuthenticationSASLFinal.
    pub const SASL_FINAL: i32 = 12;
}

/// Why authentication did not complete. None carries a password, proof,
/// verifier or key.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Either side broke the protocol.
    #[error("protocol violation during authentication: {0}")]
    Protocol(String),
    /// The client went away.
    #[error("client closed during authentication")]
    ClientClosed,
    /// pgveil refuses the client; the message goes to it as a FATAL.
    #[error("{message}")]
    Refused {
        /// SQLSTATE.
        code: &'static str,
        /// Message, starting `pgveil:` or in PostgreSQL's own wording.
        message: String,
    },
    /// PostgreSQL refused the login; its ErrorResponse, raw, for the client.
    #[error("the server refused the login")]
    Upstream(Vec<u8>),
    /// pgveil's own login upstream failed for a reason of its own.
    #[error("{0}")]
    Login(String),
    /// The upstream could not be reached (or its TLS could not be set up).
    #[error("{0}")]
    Unreachable(String),
}

impl AuthError {
    /// The FATAL the client should receive, if any.
    pub fn client_message(&self) -> Option<Vec<u8>> {
        match self {
            AuthError::Refused { code, message } => Some(
                ErrorResponse::fatal(code, message.clone())
                    .to_bytes()
                    .to_vec(),
            ),
            AuthError::Upstream(frame) => Some(frame.clone()),
            AuthError::Protocol(m) => Some(
                ErrorResponse::fatal(
                    crate::protocol::sqlstate::PROTOCOL_VIOLATION,
                    format!("pgveil: {m}"),
                )
                .to_bytes()
                .to_vec(),
            ),
            AuthError::Login(m) | AuthError::Unreachable(m) => Some(
                ErrorResponse::fatal(
                    crate::protocol::sqlstate::UNABLE_TO_CONNECT,
                    format!("pgveil: {m}"),
                )
                .to_bytes()
                .to_vec(),
            ),
            AuthError::Io(_) | AuthError::ClientClosed => None,
        }
    }
}

/// Reads one typed message whole: `(tag, body)`, `None` at a clean EOF
/// before its first byte. Reads exactly the message, never beyond it.
pub async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<(u8, Vec<u8>)>, AuthError> {
    let mut header = [0u8; 5];
    if stream.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    stream.read_exact(&mut header[1..]).await?;
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len < 4 || len as usize > MAX_AUTH_MESSAGE {
        return Err(AuthError::Protocol(format!(
            "message of type {:?} with invalid length {len}",
            header[0] as char
        )));
    }
    let mut body = vec![0u8; len as usize - 4];
    stream.read_exact(&mut body).await?;
    Ok(Some((header[0], body)))
}

/// Encodes a typed message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An `R` message with its code and payload.
pub fn auth_request(code: i32, payload: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(payload);
    message(b'R', &body)
}

/// The code of an `R` message body.
pub fn request_code(body: &[u8]) -> Result<i32, AuthError> {
    body.get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| AuthError::Protocol("short authentication request".into()))
}

/// The mechanism names of an AuthenticationSASL payload.
pub fn sasl_mechanisms(payload: &[u8]) -> Vec<String> {
    payload
        .split(|b| *b == 0)
        .take_while(|m| !m.is_empty())
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

/// An AuthenticationSASL message offering `mechanisms`.
pub fn sasl_offer(mechanisms: &[&str]) -> Vec<u8> {
    let mut payload = Vec::new();
    for m in mechanisms {
        payload.extend_from_slice(m.as_bytes());
        payload.push(0);
    }
    payload.push(0);
    auth_request(code::SASL, &payload)
}

/// A SASLInitialResponse body: mechanism and initial data (empty when the
/// client sent none, length -1). Bytes, as the protocol allows any.
pub fn parse_initial_response(body: &[u8]) -> Result<(String, Vec<u8>), AuthError> {
    let bad = || AuthError::Protocol("malformed SASLInitialResponse".into());
    let nul = body.iter().position(|b| *b == 0).ok_or_else(bad)?;
    let mechanism = String::from_utf8_lossy(&body[..nul]).into_owned();
    let rest = &body[nul + 1..];
    let len = rest
        .get(..4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(bad)?;
    let data = &rest[4..];
    match len {
        -1 if data.is_empty() => Ok((mechanism, Vec::new())),
        n if n >= 0 && n as usize == data.len() => Ok((mechanism, data.to_vec())),
        _ => Err(bad()),
    }
}

/// A SASLInitialResponse message.
pub fn initial_response(mechanism: &str, data: &str) -> Vec<u8> {
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(data.len() as i32).to_be_bytes());
    body.extend_from_slice(data.as_bytes());
    message(b'p', &body)
}

/// Reads the client's next message, which must be a `p` response.
pub(crate) async fn client_response<S: AsyncRead + Unpin>(
    client: &mut S,
) -> Result<Vec<u8>, AuthError> {
    match read_message(client).await? {
        Some((b'p', body)) => Ok(body),
        // libpq closes (or sends Terminate) to prompt for a password.
        Some((b'X', _)) | None => Err(AuthError::ClientClosed),
        Some((tag, _)) => Err(AuthError::Protocol(format!(
            "expected a password message, got type {:?}",
            tag as char
        ))),
    }
}

/// Writes and flushes (TLS streams buffer until flushed).
pub(crate) async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
) -> Result<(), AuthError> {
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_messages_round_trip() {
        let offer = sasl_offer(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        assert_eq!(offer[0], b'R');
        let body = &offer[5..];
        assert_eq!(request_code(body).unwrap(), code::SASL);
        assert_eq!(
            sasl_mechanisms(&body[4..]),
            vec![
                "SCRAM-SHA-256-PLUS".to_string(),
                "SCRAM-SHA-256".to_string()
            ]
        );
        let p = initial_response("SCRAM-SHA-256", "n,,n=,r=abc");
        let (m, d) = parse_initial_response(&p[5..]).unwrap();
        assert_eq!(
            (m.as_str(), d.as_slice()),
            ("SCRAM-SHA-256", &b"n,,n=,r=abc"[..])
        );
        assert_eq!(
            parse_initial_response(b"X\0\xff\xff\xff\xff").unwrap().1,
            b""
        );
        assert!(parse_initial_response(b"SCRAM\0\x00\x00\x00\x09abc").is_err());
        assert!(parse_initial_response(b"SCRAM").is_err());
        assert!(parse_initial_response(b"SCRAM\0\xff\xff\xff\xfe").is_err());
        assert!(request_code(b"\0").is_err());
    }
}
