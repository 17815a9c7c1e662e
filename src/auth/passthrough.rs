//! `[auth] mode = "passthrough"`: the client and PostgreSQL authenticate
//! each other end to end through pgveil, which keeps no user list.
//!
//! Channel binding cannot cross pgveil: the client's TLS ends at pgveil and
//! the database's TLS starts there. So SCRAM-SHA-256-PLUS is removed from
//! the server's offer. A libpq client on TLS with `channel_binding=prefer`
//! then sends the gs2 flag `y` ("I could bind, you could not"), which a
//! PostgreSQL reached over TLS rejects as a downgrade; the flag is signed
//! into the exchange, so pgveil cannot change it. pgveil ends that exchange
//! itself, with a message that says what to change.

use super::scram::{self, Gs2Flag};
use super::{AuthError, code, message, read_message, request_code, send};
use crate::protocol::sqlstate;
use crate::session::stream::Stream;
use crate::session::{AuditContext, audit_auth_error};

/// Sends the StartupMessage and relays authentication until
/// AuthenticationOk has reached the client.
pub async fn relay(
    client: &mut Stream,
    upstream: &mut Stream,
    startup: &[u8],
    ctx: &AuditContext<'_>,
) -> Result<(), AuthError> {
    send(upstream, startup).await?;
    loop {
        let Some((tag, body)) = read_message(upstream).await? else {
            return Err(AuthError::Login(
                "the server closed the connection during authentication".into(),
            ));
        };
        if tag == b'E' {
            let frame = message(tag, &body);
            audit_auth_error(ctx, &frame);
            return Err(AuthError::Upstream(frame));
        }
        if tag != b'R' {
            // NegotiateProtocolVersion, notices: the client's business.
            send(client, &message(tag, &body)).await?;
            continue;
        }
        let request = request_code(&body)?;
        let frame = match request {
            code::SASL => {
                let offered = super::sasl_mechanisms(&body[4..]);
                let kept: Vec<&str> = offered
                    .iter()
                    .map(String::as_str)
                    .filter(|m| *m != scram::SCRAM_PLUS)
                    .collect();
                super::sasl_offer(&kept)
            }
            _ => message(tag, &body),
        };
        send(client, &frame).await?;
        match request {
            code::OK => return Ok(()),
            code::SASL => {
                let response = super::client_response(client).await?;
                check_initial_response(&response, upstream.is_tls())?;
                send(upstream, &message(b'p', &response)).await?;
            }
            code::CLEARTEXT | code::MD5 | code::SASL_CONTINUE => {
                let response = super::client_response(client).await?;
                send(upstream, &message(b'p', &response)).await?;
            }
            // GSSAPI and SSPI decide per token whether the client answers:
            // the relay loops, which forward both directions freely, carry
            // the rest of the exchange (their audit of errors before the
            // first ReadyForQuery still applies).
            code::GSS | code::SSPI => return Ok(()),
            // SASLFinal and anything newer: no client response.
            _ => {}
        }
    }
}

/// Refuses a SASLInitialResponse that PostgreSQL would reject with a
/// cryptic message, or that asks for binding pgveil removed.
fn check_initial_response(body: &[u8], upstream_tls: bool) -> Result<(), AuthError> {
    let (mechanism, data) = super::parse_initial_response(body)?;
    let refused = |message: String| AuthError::Refused {
        code: sqlstate::INVALID_AUTHORIZATION,
        message,
    };
    if mechanism == scram::SCRAM_PLUS {
        return Err(refused(
            "pgveil: SCRAM-SHA-256-PLUS was not offered: channel binding cannot cross pgveil's \
             TLS termination"
                .into(),
        ));
    }
    if mechanism != scram::SCRAM {
        return Ok(());
    }
    // Not UTF-8: PostgreSQL rejects it in its own words.
    let Ok(data) = std::str::from_utf8(&data) else {
        return Ok(());
    };
    match scram::gs2_header(data) {
        Ok((Gs2Flag::Yes, _)) if upstream_tls => Err(refused(
            "pgveil: channel binding cannot cross pgveil's TLS termination. Your client announced \
             channel binding support (libpq's default channel_binding=prefer), which the database \
             behind pgveil, reached over TLS, rejects as a downgrade. Set channel_binding=disable \
             in the client's connection settings, or have the DBA set [auth] mode = \"scram\" in \
             pgveil, which verifies clients itself and supports channel binding"
                .into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn y_flag_refused_only_over_upstream_tls() {
        let y = &super::super::initial_response("SCRAM-SHA-256", "y,,n=,r=abc")[5..];
        let n = &super::super::initial_response("SCRAM-SHA-256", "n,,n=,r=abc")[5..];
        let plus =
            &super::super::initial_response("SCRAM-SHA-256-PLUS", "p=tls-server-end-point,,n=,r=a")
                [5..];
        let err = check_initial_response(y, true).unwrap_err();
        assert!(err.to_string().contains("channel_binding=disable"));
        assert!(err.to_string().contains("mode = \"scram\""));
        assert!(check_initial_response(y, false).is_ok());
        assert!(check_initial_response(n, true).is_ok());
        assert!(check_initial_response(plus, false).is_err());
    }
}
