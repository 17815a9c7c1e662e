//! The messages pgveil builds or decodes itself, one file each.

pub mod error_response;

pub use error_response::{ErrorResponse, Severity};
