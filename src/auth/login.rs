//! pgveil logging in to PostgreSQL as a client: for a verified client in
//! `scram` mode (with the key recovered from its proof) and for `auth_user`
//! (with its password).

use super::scram::{self, ClientExchange, ClientKey, Credential, Verifier};
use super::{AuthError, code, initial_response, message, read_message, request_code, send};
use crate::session::stream::Stream;

/// What pgveil proves the login with.
pub enum LoginSecret<'a> {
    /// A password (auth_user), answering SCRAM, MD5 or cleartext requests.
    Password {
        /// The password.
        password: &'a [u8],
        /// The role, for MD5.
        user: &'a str,
    },
    /// A verified client's SCRAM key and verifier.
    Scram(&'a ClientKey, &'a Verifier),
    /// A verified client's stored MD5 hash.
    Md5(&'a str),
}

/// Sends `startup` and authenticates. Returns what the server sent up to and
/// including AuthenticationOk that the real client must also see
/// (NegotiateProtocolVersion, notices, AuthenticationOk itself).
///
/// `verified` says the upstream hop is TLS with a verified certificate: only
/// then is a password sent in cleartext. Once a SCRAM exchange has begun,
/// AuthenticationOk is accepted only after the server's signature checked
/// out, so a party relaying between pgveil and the database cannot skip
/// the proof that the server holds the verifier.
pub async fn login(
    upstream: &mut Stream,
    startup: &[u8],
    secret: LoginSecret<'_>,
    verified: bool,
) -> Result<Vec<u8>, AuthError> {
    send(upstream, startup).await?;
    let mut for_client = Vec::new();
    let mut exchange: Option<ClientExchange<'_>> = None;
    let mut server_proved = false;
    let end_point = upstream
        .peer_certificate()
        .and_then(crate::tls::end_point_hash);
    let tls = upstream.is_tls();
    loop {
        let Some((tag, body)) = read_message(upstream).await? else {
            return Err(AuthError::Login(
                "the server closed the connection during login".into(),
            ));
        };
        match tag {
            b'R' => {}
            b'E' => return Err(AuthError::Upstream(message(tag, &body))),
            b'v' | b'N' => {
                for_client.extend_from_slice(&message(tag, &body));
                continue;
            }
            other => {
                return Err(AuthError::Protocol(format!(
                    "unexpected message type {:?} from the server during login",
                    other as char
                )));
            }
        }
        let payload = &body[4.min(body.len())..];
        match request_code(&body)? {
            code::OK => {
                if exchange.is_some() && !server_proved {
                    return Err(AuthError::Login(
                        "the server ended the SCRAM exchange without proving it holds the \
                         verifier"
                            .into(),
                    ));
                }
                for_client.extend_from_slice(&message(tag, &body));
                return Ok(for_client);
            }
            code::SASL => {
                let offered = super::sasl_mechanisms(payload);
                let credential = match &secret {
                    LoginSecret::Password { password, .. } => Credential::Password(password),
                    LoginSecret::Scram(key, verifier) => Credential::Key(key, verifier),
                    LoginSecret::Md5(_) => {
                        return Err(AuthError::Login(
                            "the server asks for SCRAM, but this role's password is stored as \
                             MD5 (set password_encryption = 'scram-sha-256' and reset it)"
                                .into(),
                        ));
                    }
                };
                if exchange.is_some() {
                    return Err(out_of_order());
                }
                let (ex, mechanism, first) =
                    ClientExchange::start(credential, &offered, end_point.clone(), tls)
                        .map_err(scram_failed)?;
                send(upstream, &initial_response(mechanism, &first)).await?;
                exchange = Some(ex);
            }
            code::SASL_CONTINUE => {
                let ex = exchange.as_mut().ok_or_else(out_of_order)?;
                let text = std::str::from_utf8(payload).map_err(|_| out_of_order())?;
                let fin = ex.respond(text).map_err(scram_failed)?;
                send(upstream, &message(b'p', fin.as_bytes())).await?;
            }
            code::SASL_FINAL => {
                let ex = exchange.as_ref().ok_or_else(out_of_order)?;
                let text = std::str::from_utf8(payload).map_err(|_| out_of_order())?;
                ex.verify(text).map_err(scram_failed)?;
                server_proved = true;
            }
            code::MD5 => {
                let salt = payload.get(..4).ok_or_else(out_of_order)?;
                let response = match &secret {
                    LoginSecret::Password { password, user } => {
                        scram::md5_response(&scram::md5_inner(password, user), salt)
                    }
                    LoginSecret::Md5(inner) => scram::md5_response(inner, salt),
                    LoginSecret::Scram(..) => {
                        return Err(AuthError::Login(
                            "the server asks for MD5, which a SCRAM verifier cannot answer".into(),
                        ));
                    }
                };
                send(upstream, &password_message(&response)).await?;
            }
            code::CLEARTEXT => match &secret {
                LoginSecret::Password { .. } if !verified => {
                    return Err(AuthError::Login(
                        "the server asks for auth_user's password in cleartext; pgveil sends it \
                         only over TLS with a verified certificate ([upstream.tls] mode \
                         verify-ca or verify-full). Use scram-sha-256 in pg_hba.conf"
                            .into(),
                    ));
                }
                LoginSecret::Password { password, .. } => {
                    let mut body = password.to_vec();
                    body.push(0);
                    send(upstream, &message(b'p', &body)).await?;
                }
                _ => {
                    return Err(AuthError::Login(
                        "the server asks for a cleartext password, which pgveil never knows in \
                         scram mode; use scram-sha-256 (or md5) in pg_hba.conf for pgveil's address"
                            .into(),
                    ));
                }
            },
            other => {
                return Err(AuthError::Login(format!(
                    "the server asks for an authentication method pgveil cannot perform (code {other})"
                )));
            }
        }
    }
}

fn password_message(text: &str) -> Vec<u8> {
    let mut body = text.as_bytes().to_vec();
    body.push(0);
    message(b'p', &body)
}

fn out_of_order() -> AuthError {
    AuthError::Protocol("authentication message out of order".into())
}

fn scram_failed(e: scram::ScramError) -> AuthError {
    AuthError::Login(format!("SCRAM login to the server failed: {e}"))
}

/// A protocol 3.0 StartupMessage with these parameters.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A hostile peer in the database's place (not PostgreSQL: what someone
    /// relaying between pgveil and the database could send).
    async fn against(
        script: Vec<u8>,
        secret: LoginSecret<'_>,
        verified: bool,
    ) -> Result<Vec<u8>, AuthError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let peer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(&script).await.unwrap();
            let mut sink = vec![0u8; 4096];
            while let Ok(n) = s.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut stream = Stream::Plain(tcp);
        let startup = startup_message(&[("user", "u")]);
        let r = login(&mut stream, &startup, secret, verified).await;
        drop(stream);
        let _ = peer.await;
        r
    }

    #[tokio::test]
    async fn ok_in_the_middle_of_scram_and_cleartext_requests_are_refused() {
        let pw = LoginSecret::Password {
            password: b"secret",
            user: "u",
        };
        let mut script = super::super::sasl_offer(&["SCRAM-SHA-256"]);
        script.extend_from_slice(&super::super::auth_request(code::OK, &[]));
        let err = against(script, pw, true).await.unwrap_err();
        assert!(err.to_string().contains("without proving"), "{err}");

        let pw = LoginSecret::Password {
            password: b"secret",
            user: "u",
        };
        let script = super::super::auth_request(code::CLEARTEXT, &[]);
        let err = against(script, pw, false).await.unwrap_err();
        assert!(err.to_string().contains("cleartext"), "{err}");

        // Trust: OK straight away is fine (no exchange began).
        let pw = LoginSecret::Password {
            password: b"secret",
            user: "u",
        };
        let script = super::super::auth_request(code::OK, &[]);
        assert!(against(script, pw, false).await.is_ok());
    }
}
