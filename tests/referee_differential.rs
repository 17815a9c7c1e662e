//! Differential test of the analyzer against PostgreSQL's own parser: random
//! statements built from SQL's awkward corners (every string and comment
//! form, dollar quotes, string continuations, Unicode escapes, COPY data,
//! several statements, parameters) go through `sql::analyze`, and whatever
//! it accepts must be read the same way by PostgreSQL's lexer and parser
//! (`sql::differential::check`). The fuzz target
//! `fuzz/fuzz_targets/analyze_differential.rs` checks the same on inputs a
//! coverage-guided fuzzer finds; this test runs a bounded number of cases
//! on every CI run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use pgveil::sql::differential::{Fixture, check};
use proptest::prelude::*;

const PIECES: &[&str] = &[
    "SELECT",
    "INSERT INTO",
    "UPDATE",
    "DELETE FROM",
    "COPY",
    "FROM",
    "STDIN",
    "TO STDOUT",
    "WHERE",
    "VALUES",
    "SET",
    "AND",
    "OR",
    "IN",
    "RETURNING",
    "EXPLAIN",
    "PREPARE p AS",
    "EXECUTE p",
    "WITH w AS",
    "customers",
    "leads",
    "notes",
    "public.customers",
    "\"customers\"",
    "U&\"customers\"",
    "email",
    "phone",
    "id",
    "score",
    "c.email",
    "(email)",
    "(id, email)",
    "*",
    "=",
    "<>",
    "||",
    "::text",
    "::bytea",
    ",",
    "(",
    ")",
    ";",
    ";\n",
    "\n",
    "'a@x'",
    "'it''s'",
    "E'a\\'b'",
    "E'\\\\'",
    "$$x$$",
    "$t$x;y$t$",
    "$t$a$$b$t$",
    "'a' 'b'",
    "'a'\n'b'",
    "U&'\\0061'",
    "B'101'",
    "X'1F'",
    "0x1F",
    "1.5e3",
    "-1",
    "42",
    "$1",
    "$2",
    "?",
    "-- c\n",
    "/* c */",
    "/* /* nested */ still */",
    "NULL",
    "true",
    "DO $$ begin end $$",
    "\\.",
    "\t",
    "1\tsecret",
    "lower(email)",
    "count(*)",
    "upper($1)",
];

fn statement() -> impl Strategy<Value = String> {
    let piece = proptest::sample::select(PIECES);
    let sep = proptest::sample::select(&[" ", "", "\n"][..]);
    proptest::collection::vec((piece, sep), 1..14).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(p, s)| format!("{p}{s}"))
            .collect::<String>()
    })
}

const LITERALS: &[&str] = &[
    "'a@x'",
    "E'a\\'@x'",
    "$$a@x$$",
    "$q$a@x$q$",
    "U&'a\\0040x'",
    "'a' 'x'",
    "'a'\n'x'",
    "'a@x'::text",
    "CAST('a@x' AS text)",
    "$1",
    "'a@x' /* c */",
    "('a@x')",
    "-- c\n'a@x'",
    "'a@x' -- c",
    "/* /* */ */ 'a@x'",
    "'a;x'",
    "$t$a;x$t$",
];

const SHAPES: &[&str] = &[
    "SELECT id FROM customers WHERE email = {}",
    "INSERT INTO customers (id, email) VALUES (1, {})",
    "UPDATE customers SET email = {} WHERE id = 1",
    "SELECT count(*) FROM (SELECT (email) FROM customers) x WHERE x.email = {}",
    "COPY notes FROM STDIN;\nINSERT INTO customers (id, email) VALUES (1, {})",
    "SELECT 1; INSERT INTO customers (id, email) VALUES (1, {})",
    "EXPLAIN ANALYZE INSERT INTO customers (id, email) VALUES (1, {})",
    "SELECT * FROM customers c JOIN leads l USING (email) WHERE c.email = {}",
    "SELECT id FROM customers WHERE email IN ({}, 'b@x')",
    "WITH w AS (SELECT {} AS e) SELECT id FROM customers, w WHERE email = w.e",
];

/// Every awkward literal in every common shape: all agree with PostgreSQL,
/// and most are served (the check is not vacuous).
#[test]
fn awkward_literals_in_common_shapes() {
    let f = Fixture::crm();
    let mut served = 0;
    let mut total = 0;
    for shape in SHAPES {
        for lit in LITERALS {
            let sql = shape.replace("{}", lit);
            let analysis = f.analyze(&sql);
            check(&sql, &analysis).unwrap_or_else(|e| panic!("{e}"));
            total += 1;
            if analysis.refusal.is_none()
                && analysis
                    .statements
                    .iter()
                    .any(|p| !p.edits.is_empty() || !p.params.is_empty())
            {
                served += 1;
            }
        }
    }
    assert!(served * 2 > total, "only {served} of {total} served");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn random_statements_are_read_as_postgresql_reads_them(sql in statement()) {
        let f = Fixture::crm();
        let analysis = f.analyze(&sql);
        prop_assert!(check(&sql, &analysis).is_ok(), "{:?}", check(&sql, &analysis));
    }
}
