//! The messages pgveil builds or decodes itself, one file each. Everything
//! else passes through as raw frames.

pub mod data_row;
pub mod error_response;
pub mod extended;
pub mod parameter_status;
pub mod parse;
pub mod query;
pub mod row_description;

pub use error_response::{ErrorResponse, Severity};
