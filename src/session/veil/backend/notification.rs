//! NotificationResponse: the client's, except on pgveil's own channel,
//! where it says that DDL was committed somewhere in this database.

use bytes::BytesMut;
use tracing::debug;

use crate::catalog::CHANGE_CHANNEL;
use crate::session::veil::state::Veil;

/// Forwards a notification, or consumes one of pgveil's: every catalog
/// of this database is then out of date and read again before the next
/// statement that needs it.
pub(super) fn on_notification(veil: &Veil, frame: BytesMut) -> Option<BytesMut> {
    if channel(&frame) != Some(CHANGE_CHANNEL.as_bytes()) {
        return Some(frame);
    }
    veil.shared.metrics.catalog_notifications_total.inc();
    debug!(database = %veil.database, "schema change notified: catalog out of date");
    veil.shared.invalidate_catalog(&veil.key());
    None
}

/// The channel of a NotificationResponse (`A`, length, sender pid,
/// channel, payload), when the frame has one.
fn channel(frame: &[u8]) -> Option<&[u8]> {
    let body = frame.get(9..)?;
    let end = body.iter().position(|b| *b == 0)?;
    body.get(..end)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_channel() {
        let mut f = vec![b'A', 0, 0, 0, 0, 0, 0, 0, 7];
        f.extend_from_slice(b"pgveil_catalog\0\0");
        assert_eq!(super::channel(&f), Some(&b"pgveil_catalog"[..]));
        assert_eq!(super::channel(b"A\0\0\0\x04"), None);
        assert_eq!(super::channel(b"A\0\0\0\x08\0\0\0\x01abc"), None);
    }
}
