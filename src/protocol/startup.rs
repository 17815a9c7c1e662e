//! The first packet a client sends: StartupMessage, SSLRequest,
//! GSSENCRequest or CancelRequest (F). It has no type byte, only a length and
//! a code, and is the one place where a client can send garbage before the
//! framer takes over.

use super::reader::{ReadError, Reader};

/// PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// SSLRequest code.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// First byte of a TLS ClientHello, as sent by `sslnegotiation=direct`.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Why an initial packet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupError {
    /// Length outside 8..=10000.
    #[error("invalid startup packet length {0}")]
    BadLength(i32),
    /// Unknown code or protocol major version.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2")]
    UnsupportedProtocol {
        /// Major version.
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// Malformed parameter list.
    #[error("invalid startup packet layout: {0}")]
    Layout(#[from] ReadError),
    /// StartupMessage without a `user`.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
}

/// A decoded initial packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitialPacket {
    /// Client asks for TLS.
    SslRequest,
    /// Client asks for GSSAPI encryption.
    GssEncRequest,
    /// Cancel a query on another connection; forwarded raw, because
    /// protocol 3.2 keys may be up to 256 bytes long.
    CancelRequest,
    /// The real StartupMessage.
    Startup(StartupParams),
}

/// What pgveil reads from a StartupMessage (the packet itself is forwarded
/// unchanged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupParams {
    /// Protocol major version (3).
    pub major: u16,
    /// Protocol minor version (0 or 2, or anything the server negotiates).
    pub minor: u16,
    /// `user`.
    pub user: String,
    /// `database`, defaulting to the user name as PostgreSQL does.
    pub database: String,
    /// `application_name`, if given.
    pub application_name: Option<String>,
}

/// Validates the length prefix of an initial packet before reading its body.
pub fn check_length(length: i32) -> Result<usize, StartupError> {
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&length) {
        return Err(StartupError::BadLength(length));
    }
    Ok(length as usize)
}

/// Decodes a whole initial packet, length prefix included.
pub fn parse(packet: &[u8]) -> Result<InitialPacket, StartupError> {
    let mut r = Reader::new(packet);
    let length = r.i32()?;
    check_length(length)?;
    if packet.len() != length as usize {
        return Err(StartupError::BadLength(length));
    }
    let code = r.i32()?;
    match code {
        SSL_REQUEST_CODE => {
            r.finish()?;
            Ok(InitialPacket::SslRequest)
        }
        GSSENC_REQUEST_CODE => {
            r.finish()?;
            Ok(InitialPacket::GssEncRequest)
        }
        CANCEL_REQUEST_CODE => {
            // Process id plus a key of 4 (3.0) to 256 (3.2) bytes.
            let _pid = r.i32()?;
            let key = r.rest();
            if key.len() < 4 || key.len() > 256 {
                return Err(StartupError::BadLength(length));
            }
            Ok(InitialPacket::CancelRequest)
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            parse_params(&mut r, major, minor).map(InitialPacket::Startup)
        }
    }
}

fn parse_params(r: &mut Reader<'_>, major: u16, minor: u16) -> Result<StartupParams, StartupError> {
    let mut user = None;
    let mut database = None;
    let mut application_name = None;
    loop {
        let name = r.cstr()?;
        if name.is_empty() {
            break;
        }
        let value = r.cstr()?;
        match name {
            "user" => user = Some(value.to_string()),
            "database" => database = Some(value.to_string()),
            "application_name" => application_name = Some(value.to_string()),
            _ => {}
        }
    }
    r.finish()?;
    let user = user.filter(|u| !u.is_empty()).ok_or(StartupError::NoUser)?;
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    Ok(StartupParams {
        major,
        minor,
        user,
        database,
        application_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: i32, body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as i32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn parses_startup_30_and_32() {
        for minor in [0, 2] {
            let p = packet(3 << 16 | minor, b"user\0alice\0database\0crm\0\0");
            match parse(&p).unwrap() {
                InitialPacket::Startup(s) => {
                    assert_eq!((s.major, s.minor), (3, minor as u16));
                    assert_eq!(s.user, "alice");
                    assert_eq!(s.database, "crm");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn database_defaults_to_user() {
        let p = packet(3 << 16, b"user\0bob\0\0");
        assert!(matches!(parse(&p).unwrap(), InitialPacket::Startup(s) if s.database == "bob"));
    }

    #[test]
    fn parses_requests() {
        assert_eq!(
            parse(&packet(SSL_REQUEST_CODE, b"")).unwrap(),
            InitialPacket::SslRequest
        );
        assert_eq!(
            parse(&packet(GSSENC_REQUEST_CODE, b"")).unwrap(),
            InitialPacket::GssEncRequest
        );
        let mut body = 42i32.to_be_bytes().to_vec();
        body.extend_from_slice(&[9u8; 32]);
        assert_eq!(
            parse(&packet(CANCEL_REQUEST_CODE, &body)).unwrap(),
            InitialPacket::CancelRequest
        );
    }

    #[test]
    fn rejects_bad_lengths() {
        assert!(check_length(7).is_err());
        assert!(check_length(10_001).is_err());
        assert!(check_length(-1).is_err());
    }

    #[test]
    fn rejects_protocol_2() {
        let p = packet(2 << 16, b"user\0x\0\0");
        assert!(matches!(
            parse(&p),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
    }

    #[test]
    fn rejects_unterminated_params() {
        let p = packet(3 << 16, b"user\0alice");
        assert!(matches!(parse(&p), Err(StartupError::Layout(_))));
    }

    #[test]
    fn rejects_missing_user() {
        let p = packet(3 << 16, b"database\0x\0\0");
        assert_eq!(parse(&p), Err(StartupError::NoUser));
    }

    #[test]
    fn rejects_trailing_bytes_after_ssl_request() {
        assert!(parse(&packet(SSL_REQUEST_CODE, b"xx")).is_err());
    }
}
