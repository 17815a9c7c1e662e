//! ErrorResponse: the end of a response's useful part. A refusal pgveil
//! delegated to the database (a statement naming a refusal token) gets the
//! refusal's own error back; any other error has the ciphertext it quotes
//! redacted. During startup it is written to the audit log.

use bytes::BytesMut;

use super::steps::abandon_steps;
use crate::protocol::messages::ErrorResponse;
use crate::session::veil::state::{Pending, State, Veil};
use crate::session::{AuditContext, audit_auth_error};

/// An ErrorResponse: returns what to forward (nothing while the rest of a
/// response is being dropped).
pub(super) fn on_error(veil: &Veil, st: &mut State, frame: BytesMut) -> Option<BytesMut> {
    if matches!(st.pending.front(), Some(Pending::Startup)) {
        audit_auth_error(
            &AuditContext {
                peer: veil.peer,
                database: &veil.database,
                user: &veil.user,
            },
            &frame,
        );
    }
    // An error ends a COPY TO, and PostgreSQL skips the steps queued
    // behind it until Sync.
    st.copy_out = None;
    if matches!(st.pending.front(), Some(Pending::Step(_))) {
        abandon_steps(st);
    }
    if st.discard_until_ready {
        return None;
    }
    st.decoder = None;
    if let Some(pos) = st
        .refusal_tokens
        .iter()
        .position(|(t, _)| frame.windows(t.len()).any(|w| w == t.as_bytes()))
    {
        let (_, refusal) = st.refusal_tokens.remove(pos);
        let msg = ErrorResponse::error(refusal.sqlstate, refusal.message());
        return Some(msg.to_bytes());
    }
    Some(scrub_error(frame))
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

/// Replaces each quoted ciphertext (hex `bytea` or prefixed text) with
/// `<encrypted>`, up to the delimiter that ends the quoted value.
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
