//! Subcommands of the `pgveil` binary that are more than a call into the library.

pub mod demo;
pub mod guard;
pub mod healthcheck;
pub mod keys;
pub mod migrate;
