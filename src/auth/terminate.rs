//! `[auth] mode = "scram"`: pgveil is the client's authentication server.
//!
//! It verifies the client against the verifier PostgreSQL stores (fetched
//! by [`super::lookup`]), offering SCRAM-SHA-256-PLUS bound to its own
//! certificate when the client is on TLS. A valid proof yields the client's
//! `ClientKey`, which is all a SCRAM login needs: pgveil then logs in to
//! PostgreSQL as that user (bound to the database's certificate when
//! offered) without ever learning the password. An MD5 verifier works the
//! same way with the MD5 challenge.

use tracing::{info, warn};

use super::login::{LoginSecret, login};
use super::scram::{self, Secret, ServerExchange, Verifier};
use super::{AuthError, auth_request, code, send};
use crate::protocol::sqlstate;
use crate::session::stream::Stream;
use crate::session::{AuditContext, audit_auth_error};
use crate::shared::Shared;

/// Authenticates the client, then opens and logs in the upstream
/// connection. Returns it once AuthenticationOk has reached the client.
pub async fn authenticate(
    client: &mut Stream,
    startup: &[u8],
    end_point: Option<&[u8]>,
    shared: &Shared,
    ctx: &AuditContext<'_>,
) -> Result<Stream, AuthError> {
    let user = ctx.user;
    let outcome = |label: &str| shared.metrics.auth_total.with_label_values(&[label]).inc();
    let secret = match shared.auth_lookup.secret(shared, user).await {
        Ok(s) => s,
        Err(e) => {
            outcome("lookup_error");
            warn!(client = %ctx.peer, %user, error = %e, "verifier lookup failed");
            return Err(AuthError::Refused {
                code: sqlstate::UNABLE_TO_CONNECT,
                message: "pgveil: authentication is unavailable: the credential lookup failed \
                          (see pgveil's log)"
                    .into(),
            });
        }
    };
    let verified = match secret {
        Some(Secret::Md5(inner)) => verify_md5(client, &inner)
            .await
            .map(|ok| ok.then_some(Verified::Md5(inner))),
        Some(Secret::Scram(v)) => verify_scram(client, v, end_point).await,
        // Unknown users run the whole exchange against a verifier nobody
        // matches, so the answer does not reveal that the role is missing.
        None => match Verifier::unmatchable(user) {
            Ok(v) => verify_scram(client, v, end_point).await.map(|_| None),
            Err(e) => Err(refuse_scram(e)),
        },
    };
    let verified = match verified {
        Ok(Some(v)) => v,
        Ok(None) => {
            outcome("failed");
            shared.auth_lookup.forget(user);
            warn!(target: "audit", client = %ctx.peer, database = %ctx.database, %user,
                  sqlstate = %sqlstate::INVALID_PASSWORD, "authentication failed");
            return Err(AuthError::Refused {
                code: sqlstate::INVALID_PASSWORD,
                message: format!("password authentication failed for user \"{user}\""),
            });
        }
        Err(e) => {
            outcome("failed");
            return Err(e);
        }
    };
    let tls = shared.tls();
    let mut upstream = crate::session::startup::connect_upstream(shared, tls.upstream.as_deref())
        .await
        .map_err(|e| {
            outcome("upstream_error");
            shared.metrics.upstream_connect_errors_total.inc();
            warn!(client = %ctx.peer, error = %e, "upstream unreachable");
            AuthError::Unreachable(e.to_string())
        })?;
    let secret = match &verified {
        Verified::Scram(key, v) => LoginSecret::Scram(key, v),
        Verified::Md5(inner) => LoginSecret::Md5(inner),
    };
    let verified = tls.upstream.as_ref().is_some_and(|t| t.verified(&upstream));
    match login(&mut upstream, startup, secret, verified).await {
        Ok(for_client) => {
            outcome("ok");
            send(client, &for_client).await?;
            Ok(upstream)
        }
        Err(e) => {
            outcome("upstream_error");
            shared.auth_lookup.forget(user);
            if let AuthError::Upstream(frame) = &e {
                audit_auth_error(ctx, frame);
            } else {
                info!(client = %ctx.peer, %user, error = %e, "upstream login failed");
            }
            Err(e)
        }
    }
}

/// What a verified client left pgveil to log in with.
enum Verified {
    Scram(scram::ClientKey, Verifier),
    Md5(String),
}

/// Runs the SCRAM exchange; `Ok(None)` when the proof is wrong.
async fn verify_scram(
    client: &mut Stream,
    verifier: Verifier,
    end_point: Option<&[u8]>,
) -> Result<Option<Verified>, AuthError> {
    let offered_plus = end_point.filter(|_| client.is_tls());
    let mechanisms: &[&str] = match offered_plus {
        Some(_) => &[scram::SCRAM_PLUS, scram::SCRAM],
        None => &[scram::SCRAM],
    };
    send(client, &super::sasl_offer(mechanisms)).await?;
    let body = super::client_response(client).await?;
    let (mechanism, first) = super::parse_initial_response(&body)?;
    let first = String::from_utf8(first)
        .map_err(|_| AuthError::Protocol("SCRAM client-first message is not UTF-8".into()))?;
    let (exchange, server_first) =
        ServerExchange::start(&mechanism, &first, offered_plus, verifier.clone())
            .map_err(refuse_scram)?;
    send(
        client,
        &auth_request(code::SASL_CONTINUE, server_first.as_bytes()),
    )
    .await?;
    let body = super::client_response(client).await?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| AuthError::Protocol("SASLResponse is not UTF-8".into()))?;
    match exchange.finish(text) {
        Ok((key, server_final)) => {
            send(
                client,
                &auth_request(code::SASL_FINAL, server_final.as_bytes()),
            )
            .await?;
            Ok(Some(Verified::Scram(key, verifier)))
        }
        Err(scram::ScramError::WrongProof) => Ok(None),
        Err(e) => Err(refuse_scram(e)),
    }
}

fn refuse_scram(e: scram::ScramError) -> AuthError {
    AuthError::Refused {
        code: sqlstate::PROTOCOL_VIOLATION,
        message: format!("pgveil: {e}"),
    }
}

/// The MD5 challenge against a stored MD5 hash.
async fn verify_md5(client: &mut Stream, inner: &str) -> Result<bool, AuthError> {
    let salt = scram::random::<4>().map_err(refuse_scram)?;
    send(client, &auth_request(code::MD5, &salt)).await?;
    let body = super::client_response(client).await?;
    let response = body.strip_suffix(&[0]).unwrap_or(&body);
    let response = std::str::from_utf8(response).unwrap_or_default();
    Ok(scram::md5_matches(
        response,
        &scram::md5_response(inner, &salt),
    ))
}
