//! `pgveil::protocol::startup` on arbitrary bytes: the one parser that sees
//! a client's bytes before any framing.
//!
//! Each input is tried twice: as is (so the length checks are exercised),
//! and with a correct length prefix (so the fuzzer gets past them to the
//! parameter list and the request codes). Checks: no panic; a packet
//! accepted has a valid length; a StartupMessage accepted names a user and
//! protocol major version 3; a CancelRequest carries a 4 to 256 byte key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgveil::protocol::startup::{
    self, CANCEL_REQUEST_CODE, InitialPacket, MAX_STARTUP_PACKET, check_length, parse,
};

fn check(packet: &[u8]) {
    if packet.len() >= 4 {
        let length = i32::from_be_bytes(packet[..4].try_into().unwrap());
        if let Ok(n) = check_length(length) {
            assert!((8..=MAX_STARTUP_PACKET).contains(&n));
            assert_eq!(n as i32, length);
        }
    }
    let Ok(parsed) = parse(packet) else { return };
    assert!((8..=MAX_STARTUP_PACKET).contains(&packet.len()));
    let length = i32::from_be_bytes(packet[..4].try_into().unwrap());
    assert_eq!(length as usize, packet.len());
    let code = i32::from_be_bytes(packet[4..8].try_into().unwrap());
    match parsed {
        InitialPacket::SslRequest => assert_eq!(packet.len(), 8),
        InitialPacket::GssEncRequest => assert_eq!(packet.len(), 8),
        InitialPacket::CancelRequest => {
            assert_eq!(code, CANCEL_REQUEST_CODE);
            assert!((12 + 4..=12 + 256).contains(&packet.len()));
        }
        InitialPacket::Startup(params) => {
            assert_eq!(params.major, 3);
            assert_eq!(
                i32::from(params.major) << 16 | i32::from(params.minor),
                code
            );
            assert!(!params.user.is_empty());
            assert!(!params.database.is_empty());
            assert_eq!(packet.last(), Some(&0), "parameter list not terminated");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if data.len() + 4 <= startup::MAX_STARTUP_PACKET + 16 {
        let mut packet = ((data.len() + 4) as i32).to_be_bytes().to_vec();
        packet.extend_from_slice(data);
        check(&packet);
    }
});
