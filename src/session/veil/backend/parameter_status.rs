//! ParameterStatus: the session settings pgveil parses and prints values
//! with (`DateStyle`, `TimeZone`, ...), and whether strings are read as
//! pgveil reads them (`standard_conforming_strings`, `client_encoding`).

use bytes::BytesMut;

use crate::protocol::messages::parameter_status;
use crate::session::veil::state::State;

/// Records a setting the server reports; the frame is forwarded.
pub(super) fn on_status(st: &mut State, frame: BytesMut) -> BytesMut {
    if let Ok((name, value)) = parameter_status::decode(&frame) {
        st.settings.set(name, value);
        if name == "standard_conforming_strings" {
            st.standard_strings = value == "on";
        }
        if name == "search_path" {
            // Reported by PostgreSQL 18 and later: however it was changed
            // (a function, `UPDATE pg_settings`), names now resolve by it.
            if st.reported_path.as_deref().is_some_and(|p| p != value) {
                st.path_changed = true;
            }
            st.reported_path = Some(value.to_string());
        }
        if name == "client_encoding" {
            st.utf8 = matches!(
                value.to_ascii_uppercase().as_str(),
                "UTF8" | "UTF-8" | "UNICODE"
            );
        }
    }
    frame
}
