//! pgwire's message decoders, each on one whole, isolated frame, as pgveil
//! would call them: the framer has already checked the header and split the
//! frame off, so the decoder sees exactly one message and nothing after it.
//!
//! This target does not test pgveil; it finds the malformed bodies on which
//! pgwire 0.42 panics (or allocates without bound), i.e. what pgveil must
//! reject itself or guard before handing a frame to pgwire. Expect crashes
//! until pgwire fixes them; see fuzz/README.md for the ones known.
//!
//! Input layout: byte 0 picks the decoder, byte 1 bit 0 picks protocol 3.0
//! or 3.2 for the decode context, byte 2 is the type byte for the two
//! dispatching decoders (`PgWireFrontendMessage`, `PgWireBackendMessage`),
//! and the rest is the message body.

#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::copy::{
    CopyBothResponse, CopyData, CopyDone, CopyFail, CopyInResponse, CopyOutResponse,
};
use pgwire::messages::data::{DataRow, NoData, ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Close, CloseComplete, Describe, Execute, Flush, Parse, ParseComplete,
    PortalSuspended, Sync,
};
use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse, NotificationResponse,
    ReadyForQuery,
};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::{
    Authentication, BackendKeyData, NegotiateProtocolVersion, ParameterStatus, Password,
    PasswordMessageFamily, SASLInitialResponse, SASLResponse, Startup,
};
use pgwire::messages::terminate::Terminate;
use pgwire::messages::{
    DecodeContext, Message, PgWireBackendMessage, PgWireFrontendMessage, ProtocolVersion,
};

type Decoder = fn(&[u8], u8, &DecodeContext);

/// Frames `body` as one message of type `T` and decodes it.
fn typed<T: Message>(body: &[u8], _tag: u8, ctx: &DecodeContext) {
    let mut buf = BytesMut::with_capacity(body.len() + 5);
    if let Some(tag) = T::message_type() {
        buf.put_u8(tag);
    }
    buf.put_i32((body.len() + 4) as i32);
    buf.put_slice(body);
    let _ = T::decode(&mut buf, ctx);
}

/// A password-family message, then each of its context-dependent readings.
fn password_family(body: &[u8], _tag: u8, ctx: &DecodeContext) {
    let mut buf = regular_frame(b'p', body);
    if let Ok(Some(msg)) = PasswordMessageFamily::decode(&mut buf, ctx) {
        let _ = match body.first().map(|b| b % 3) {
            Some(0) => msg.into_password().map(drop),
            Some(1) => msg.into_sasl_initial_response().map(drop),
            _ => msg.into_sasl_response().map(drop),
        };
    }
}

/// Any frontend message after startup, dispatched on its type byte.
fn frontend(body: &[u8], tag: u8, ctx: &DecodeContext) {
    let mut ctx = DecodeContext::new(ctx.protocol_version);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    let _ = PgWireFrontendMessage::decode(&mut regular_frame(tag, body), &ctx);
}

/// Any backend message, dispatched on its type byte.
fn backend(body: &[u8], tag: u8, ctx: &DecodeContext) {
    let _ = PgWireBackendMessage::decode(&mut regular_frame(tag, body), ctx);
}

fn regular_frame(tag: u8, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(body.len() + 5);
    buf.put_u8(tag);
    buf.put_i32((body.len() + 4) as i32);
    buf.put_slice(body);
    buf
}

const DECODERS: &[(&str, Decoder)] = &[
    // Frontend, the ones pgveil inspects first.
    ("Query", typed::<Query>),
    ("Parse", typed::<Parse>),
    ("Bind", typed::<Bind>),
    ("Describe", typed::<Describe>),
    ("Close", typed::<Close>),
    ("Execute", typed::<Execute>),
    ("Sync", typed::<Sync>),
    ("Flush", typed::<Flush>),
    ("Terminate", typed::<Terminate>),
    ("CopyData", typed::<CopyData>),
    ("CopyDone", typed::<CopyDone>),
    ("CopyFail", typed::<CopyFail>),
    ("Password", typed::<Password>),
    ("SASLInitialResponse", typed::<SASLInitialResponse>),
    ("SASLResponse", typed::<SASLResponse>),
    ("PasswordMessageFamily", password_family),
    ("Startup", typed::<Startup>),
    ("CancelRequest", typed::<CancelRequest>),
    // Backend, the ones pgveil inspects first.
    ("RowDescription", typed::<RowDescription>),
    ("DataRow", typed::<DataRow>),
    ("ParameterDescription", typed::<ParameterDescription>),
    ("CommandComplete", typed::<CommandComplete>),
    ("ErrorResponse", typed::<ErrorResponse>),
    ("NoticeResponse", typed::<NoticeResponse>),
    ("ReadyForQuery", typed::<ReadyForQuery>),
    ("BackendKeyData", typed::<BackendKeyData>),
    (
        "NegotiateProtocolVersion",
        typed::<NegotiateProtocolVersion>,
    ),
    ("Authentication", typed::<Authentication>),
    ("ParameterStatus", typed::<ParameterStatus>),
    ("NotificationResponse", typed::<NotificationResponse>),
    ("NoData", typed::<NoData>),
    ("EmptyQueryResponse", typed::<EmptyQueryResponse>),
    ("ParseComplete", typed::<ParseComplete>),
    ("BindComplete", typed::<BindComplete>),
    ("CloseComplete", typed::<CloseComplete>),
    ("PortalSuspended", typed::<PortalSuspended>),
    ("CopyInResponse", typed::<CopyInResponse>),
    ("CopyOutResponse", typed::<CopyOutResponse>),
    ("CopyBothResponse", typed::<CopyBothResponse>),
    // The dispatchers, on any type byte.
    ("PgWireFrontendMessage", frontend),
    ("PgWireBackendMessage", backend),
];

fuzz_target!(|data: &[u8]| {
    let [which, flags, tag, body @ ..] = data else {
        return;
    };
    let (_name, decode) = DECODERS[*which as usize % DECODERS.len()];
    let version = if flags & 1 == 0 {
        ProtocolVersion::PROTOCOL3_0
    } else {
        ProtocolVersion::PROTOCOL3_2
    };
    decode(body, *tag, &DecodeContext::new(version));
});
