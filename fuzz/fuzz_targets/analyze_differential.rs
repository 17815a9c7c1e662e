//! `pgveil::sql::analyze` on arbitrary text against PostgreSQL's own lexer
//! and parser: whatever the analyzer accepts must be read the same way by
//! PostgreSQL (`pgveil::sql::differential::check`): the same statements,
//! every encrypted literal a PostgreSQL constant, every bound parameter a
//! `$n` PostgreSQL sees. No panic on any input.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgveil::sql::differential::{Fixture, check};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.contains('\0') {
        return;
    }
    let fixture = Fixture::crm();
    let analysis = fixture.analyze(text);
    if let Err(e) = check(text, &analysis) {
        panic!("{e}");
    }
});
