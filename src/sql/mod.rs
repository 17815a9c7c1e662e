//! Statement analysis: which literals to encrypt, which result columns hold
//! ciphertext, and which statements to refuse. Works on SQL text and
//! catalog facts only; it knows nothing of frames or connections.
//!
//! - [`scan`]: the cheap test that lets most statements pass unparsed.
//! - [`source`]: tokens with byte offsets, so literals can be spliced.
//! - [`analyze`]: the fail-closed analyzer.
//! - [`referee`]: PostgreSQL's own lexer and parser, against which the
//!   analyzer's reading is checked.
//! - [`differential`]: the invariants tying the analyzer's reading to
//!   PostgreSQL's, for the differential test and the fuzz target.
//! - [`refusal`]: why a statement is refused, and how the refusal reaches
//!   the client through the database itself.
//! - [`rewrite`]: splicing ciphertext literals into the original text.

pub mod analyze;
pub mod differential;
pub mod referee;
pub mod refusal;
pub mod rewrite;
pub mod scan;
pub mod source;

pub use analyze::{Analysis, Edit, StatementPlan, analyze};
pub use refusal::Refusal;
