//! Cost of judging one statement: the fast path that lets a statement
//! naming nothing encrypted pass (`sql::scan::needs_analysis`), and a full
//! analysis on a plan-cache miss (`sql::analyze`: PostgreSQL's parser as
//! referee, sqlparser, classification). A cache hit is one LRU lookup by
//! text. Figures in docs/BENCHMARKS.md.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pgveil::sql::differential::Fixture;

fn bench(c: &mut Criterion) {
    let f = Fixture::crm();
    let passthrough = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
    c.bench_function("fast path: passthrough statement", |b| {
        b.iter(|| pgveil::sql::scan::needs_analysis(black_box(passthrough), &f.watched, &[]))
    });
    for (name, sql) in [
        (
            "lookup by email",
            "SELECT id, email, phone, birth_date FROM customers WHERE email = 'ada@example.com'",
        ),
        (
            "insert four values",
            "INSERT INTO customers (id, email, phone, birth_date) VALUES (7, 'ada@example.com', '+44 20 7946 0001', '1815-12-10')",
        ),
        (
            "two-table join",
            "SELECT c.id, l.phone FROM customers c JOIN leads l ON l.email = c.email WHERE c.email IN ('a@x', 'b@x') AND c.score > 3",
        ),
    ] {
        c.bench_function(&format!("analysis miss: {name}"), |b| {
            b.iter(|| f.analyze(black_box(sql)))
        });
        c.bench_function(&format!("referee alone: {name}"), |b| {
            b.iter(|| pgveil::sql::referee::examine(black_box(sql)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
