//! Cost of judging one statement: the fast path that lets a statement
//! naming nothing encrypted pass (`sql::scan::needs_analysis`), and a full
//! analysis on a plan-cache miss (`sql::analyze`: PostgreSQL's parser as
//! referee, sqlparser, classification). A cache hit is one LRU lookup by
//! text and is measured with `bench/crm.sh`. Figures in docs/BENCHMARKS.md.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pgveil::catalog::{Catalog, Column, Encrypted, Relation, RelationKind, StorageState};
use pgveil::config::{ColumnId, ValueType};
use pgveil::sql::analyze::Watched;

fn col(name: &str, attnum: i16, enc: Option<(&str, ValueType)>) -> Column {
    Column {
        name: name.into(),
        attnum,
        type_name: if enc.is_some() { "bytea" } else { "int4" }.into(),
        has_default: false,
        generated: false,
        encrypted: enc.map(|(domain, value_type)| Encrypted {
            id: ColumnId {
                schema: "public".into(),
                table: "customers".into(),
                column: name.into(),
            },
            domain: domain.into(),
            value_type,
            storage: StorageState::Bytea,
            forms: 1,
        }),
    }
}

fn catalog() -> Catalog {
    let table = |oid, name: &str| Relation {
        oid,
        schema: "public".into(),
        name: name.into(),
        kind: RelationKind::Table,
        columns: vec![
            col("id", 1, None),
            col("email", 2, Some(("email", ValueType::Text))),
            col("phone", 3, Some(("phone", ValueType::Text))),
            col("birth_date", 4, Some(("bd", ValueType::Date))),
            col("score", 5, None),
        ],
        opaque: None,
        definition: None,
    };
    Catalog::from_relations(
        vec![table(100, "customers"), table(200, "leads")],
        vec!["public".into()],
    )
}

fn bench(c: &mut Criterion) {
    let cat = catalog();
    let configured = vec![
        ("public".to_string(), "customers".to_string()),
        ("public".to_string(), "leads".to_string()),
    ];
    let columns: Vec<(String, String, String)> = ["customers", "leads"]
        .iter()
        .flat_map(|t| {
            ["email", "phone", "birth_date"]
                .iter()
                .map(move |c| ("public".to_string(), t.to_string(), c.to_string()))
        })
        .collect();
    let watched = Watched::new(&cat, &configured, &columns);
    let prepared = HashMap::new();

    let passthrough = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
    c.bench_function("fast path: passthrough statement", |b| {
        b.iter(|| pgveil::sql::scan::needs_analysis(black_box(passthrough), &watched, &[]))
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
            b.iter(|| pgveil::sql::analyze(black_box(sql), &cat, &watched, &configured, &prepared))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
