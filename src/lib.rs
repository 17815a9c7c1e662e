//! pgveil: a transparent PostgreSQL wire-protocol proxy that deterministically
//! encrypts configured customer columns.
//!
//! # Layout
//!
//! From the ground up, each layer using only those below it:
//!
//! - [`protocol`] — framing and the few message codecs pgveil needs; no I/O.
//! - [`crypto`] — master keys, the HKDF key hierarchy, the AES-SIV envelope and
//!   typed plaintext encodings; no I/O beyond reading the key file.
//! - [`config`] — `proxy.toml`.
//! - [`catalog`] — what a database says about the configured tables.
//! - [`sql`] — the analyzer and rewriter; works on text and catalog facts.
//! - [`tls`] — TLS settings for both hops and the channel-binding hash.
//! - [`shared`] — state shared by every session of a server: the
//!   [`shared::Encryption`] snapshot and its reload, catalog and plan caches,
//!   TLS settings, metrics and readiness. Below `auth`, `session` and
//!   `admin`, which use it; it holds `auth`'s verifier cache
//!   ([`auth::lookup::Lookup`]) as a field but calls nothing above it.
//! - [`auth`] — authentication before the relay: end to end (passthrough) or
//!   terminated by pgveil with SCRAM (`[auth] mode = "scram"`).
//! - [`session`] — one client connection: startup and TLS negotiation, then
//!   the message loop.
//! - [`server`] — the listener, connection limit, graceful shutdown and
//!   SIGHUP; builds the [`shared::Shared`] state it hands to each session.
//! - [`logging`] — `tracing` set-up from `[log]`.
//! - [`localpg`] — local PostgreSQL server binaries (demo, tests).
//! - [`metrics`], [`admin`] — Prometheus metrics and the health endpoint.
//!
//! See `docs/ARCHITECTURE.md` for the path of a message through these layers.

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod copy;
pub mod crypto;
pub mod localpg;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shared;
pub mod sql;
pub mod tls;
