//! The PostgreSQL wire protocol, as far as pgveil needs it. No I/O here:
//! the session layer reads bytes from sockets and hands them to these types.
//!
//! pgveil forwards every frame it does not need to change byte for byte, so
//! this module mostly finds frame boundaries ([`framer`]); it decodes only the
//! startup packet ([`startup`]) and the few messages it must inspect.

pub mod array;
pub mod framer;
pub mod messages;
pub mod reader;
pub mod startup;
pub mod types;

pub use framer::{Chunk, FrameError, Framer};
pub use reader::{ReadError, Reader};

/// SQLSTATE codes pgveil emits itself.
pub mod sqlstate {
    /// `protocol_violation`: malformed or oversized input.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// `sqlclient_unable_to_establish_sqlconnection`: the upstream is unreachable.
    pub const UNABLE_TO_CONNECT: &str = "08001";
    /// `too_many_connections`.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// `feature_not_supported`: statements pgveil refuses.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// `admin_shutdown`.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// `invalid_authorization_specification`.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// `invalid_password`.
    pub const INVALID_PASSWORD: &str = "28P01";
}
