//! The analyzer's unit tests: statements against a small catalog of two
//! configured tables, and what is encrypted, bound or refused.

use super::*;
use crate::catalog::{Column, Relation, RelationKind, StorageState};
use crate::config::{ColumnId, ValueType};

/// Positions of the edits, for tests.
fn edit_texts<'t>(text: &'t str, a: &Analysis) -> Vec<&'t str> {
    a.statements
        .iter()
        .flat_map(|s| s.edits.iter().map(|e| &text[e.range.clone()]))
        .collect()
}

fn enc(table: &str, column: &str, domain: &str, ty: ValueType) -> Encrypted {
    Encrypted {
        id: ColumnId {
            schema: "public".into(),
            table: table.into(),
            column: column.into(),
        },
        domain: domain.into(),
        value_type: ty,
        storage: StorageState::Bytea,
        forms: 1,
    }
}

fn col(name: &str, attnum: i16, e: Option<Encrypted>) -> Column {
    Column {
        name: name.into(),
        attnum,
        type_name: if e.is_some() {
            "bytea".into()
        } else {
            "int4".into()
        },
        has_default: false,
        generated: false,
        encrypted: e,
    }
}

fn catalog() -> Catalog {
    catalog_with(1)
}

/// The test catalog, `customers.email` holding each value in
/// `email_forms` stored forms.
fn catalog_with(email_forms: usize) -> Catalog {
    Catalog::from_relations(
        vec![
            Relation {
                oid: 100,
                schema: "public".into(),
                name: "customers".into(),
                kind: RelationKind::Table,
                columns: vec![
                    col("id", 1, None),
                    col(
                        "email",
                        2,
                        Some(Encrypted {
                            forms: email_forms,
                            ..enc("customers", "email", "email", ValueType::Text)
                        }),
                    ),
                    col(
                        "birth_date",
                        3,
                        Some(enc("customers", "birth_date", "bd", ValueType::Date)),
                    ),
                    col("score", 4, None),
                ],
                opaque: None,
                definition: None,
            },
            Relation {
                oid: 200,
                schema: "public".into(),
                name: "leads".into(),
                kind: RelationKind::Table,
                columns: vec![
                    col("id", 1, None),
                    col(
                        "email",
                        2,
                        Some(enc("leads", "email", "email", ValueType::Text)),
                    ),
                    col(
                        "phone",
                        3,
                        Some(enc("leads", "phone", "phone", ValueType::Text)),
                    ),
                ],
                opaque: None,
                definition: None,
            },
        ],
        vec!["public".into()],
    )
}

fn cols(names: &[&str]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for t in ["customers", "leads", "t"] {
        for n in names {
            out.push(("public".to_string(), t.to_string(), n.to_string()));
        }
    }
    out
}

fn run(sql: &str) -> Analysis {
    let c = catalog();
    let configured = vec![
        ("public".to_string(), "customers".to_string()),
        ("public".to_string(), "leads".to_string()),
    ];
    let w = Watched::new(&c, &configured, &cols(&["email", "birth_date", "phone"]));
    analyze(sql, &c, &w, &configured, &HashMap::new())
}

fn ok_edits(sql: &str) -> Vec<String> {
    let a = run(sql);
    assert!(a.refusal.is_none(), "{sql}: {:?}", a.refusal);
    edit_texts(sql, &a).into_iter().map(String::from).collect()
}

fn refused(sql: &str) -> Refusal {
    run(sql)
        .refusal
        .unwrap_or_else(|| panic!("not refused: {sql}"))
}

/// The catalog with `customers.email` holding each value in two stored
/// forms (a migration or rotation in progress).
fn run_forms(sql: &str) -> Analysis {
    let c = catalog_with(2);
    let configured = vec![
        ("public".to_string(), "customers".to_string()),
        ("public".to_string(), "leads".to_string()),
    ];
    let w = Watched::new(&c, &configured, &cols(&["email", "birth_date", "phone"]));
    analyze(sql, &c, &w, &configured, &HashMap::new())
}

#[test]
fn several_stored_forms_match_every_form_or_are_refused() {
    let forms = |sql: &str| -> Vec<Forms> {
        let a = run_forms(sql);
        assert!(a.refusal.is_none(), "{sql}: {:?}", a.refusal);
        a.statements[0].edits.iter().map(|e| e.forms).collect()
    };
    assert_eq!(
        forms("SELECT id FROM customers WHERE email = 'a'"),
        vec![Forms::Any]
    );
    assert_eq!(
        forms("SELECT id FROM customers WHERE email <> 'a'"),
        vec![Forms::All]
    );
    assert_eq!(
        forms("SELECT id FROM customers WHERE email IN ('a', 'b')"),
        vec![Forms::List, Forms::List]
    );
    assert_eq!(
        forms("SELECT id FROM customers WHERE email = ANY(ARRAY['a'])"),
        vec![Forms::List]
    );
    // Stores write one form.
    assert_eq!(
        forms("INSERT INTO customers (email) VALUES ('a')"),
        vec![Forms::One]
    );
    assert_eq!(
        forms("UPDATE customers SET email = 'b' WHERE id = 1"),
        vec![Forms::One]
    );
    // Another column keeps one form.
    assert_eq!(
        forms("SELECT id FROM leads WHERE email = 'a'"),
        vec![Forms::One]
    );
    for sql in [
        "SELECT id FROM customers WHERE 'a' = email",
        "SELECT id FROM customers WHERE email IS DISTINCT FROM 'a'",
        "SELECT id FROM customers WHERE email = ALL(ARRAY['a'])",
        "SELECT id FROM customers WHERE email IN (SELECT 'a')",
    ] {
        let r = run_forms(sql)
            .refusal
            .unwrap_or_else(|| panic!("not refused: {sql}"));
        assert_eq!(r.reason, "migrating", "{sql}");
    }
    // Parameters: rewritten to match an array of every form.
    let a = run_forms("SELECT id FROM customers WHERE email = $1 AND id = $2");
    assert!(a.refusal.is_none(), "{:?}", a.refusal);
    let p = &a.statements[0];
    assert!(p.params.get(&1).is_some_and(|b| b.expand && !b.array));
    assert!(
        p.replacements.iter().any(|(_, t)| t == "ANY($1)"),
        "{:?}",
        p.replacements
    );
    let a = run_forms("SELECT id FROM customers WHERE email IN ($1, $2::text)");
    let texts: Vec<&str> = a.statements[0]
        .replacements
        .iter()
        .map(|(_, t)| t.as_str())
        .collect();
    assert!(texts.contains(&"($1)[1], ($1)[2]"), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("(CAST((") && t.contains("AS bytea[]))[2]")),
        "{texts:?}"
    );
    let a = run_forms("SELECT id FROM customers WHERE email = ANY($1)");
    assert!(
        a.statements[0]
            .params
            .get(&1)
            .is_some_and(|b| b.expand && b.array)
    );
    assert!(a.statements[0].replacements.is_empty());
    let r = run_forms("SELECT id FROM customers WHERE email = $1 OR email <> $1").refusal;
    assert_eq!(r.map(|r| r.reason), Some("migrating"));
    // Review regressions: each would have matched one form only, or
    // stored the forms beyond the window.
    for sql in [
        "SELECT id FROM customers c, (SELECT $1 AS x) v WHERE c.email IN (v.x)",
        "SELECT id FROM customers c, (VALUES ($1)) v(x) WHERE c.email = v.x",
        "SELECT * FROM (SELECT email FROM leads UNION ALL SELECT email FROM customers) u WHERE email = 'a'",
        "INSERT INTO leads (email) SELECT email FROM customers",
        "CREATE VIEW v AS SELECT id FROM customers WHERE email = 'a'",
        "CREATE INDEX i ON customers (id) WHERE email = 'a'",
    ] {
        let r = run_forms(sql)
            .refusal
            .unwrap_or_else(|| panic!("not refused: {sql}"));
        assert_eq!(r.reason, "migrating", "{sql}");
    }
    // The other direction is fine: one form into a column with more.
    assert!(
        run_forms("INSERT INTO customers (email) SELECT email FROM leads")
            .refusal
            .is_none()
    );
}

#[test]
fn insert_values_with_and_without_column_list() {
    assert_eq!(
        ok_edits("INSERT INTO customers (id, email) VALUES (1, 'a@x'), (2, E'b@x')"),
        vec!["'a@x'", "E'b@x'"]
    );
    assert_eq!(
        ok_edits("insert into customers values (1, 'a@x', DATE '2020-01-01', 5)"),
        vec!["'a@x'", "DATE '2020-01-01'"]
    );
    assert_eq!(
        ok_edits(
            "insert into customers (birth_date) values ('2020-01-01'::date), (CAST('2020-01-02' AS date)), (NULL), (DEFAULT)"
        ),
        vec!["'2020-01-01'::date", "CAST('2020-01-02' AS date)"]
    );
}

#[test]
fn where_equality_in_and_any() {
    assert_eq!(
        ok_edits(
            "select id from customers where email = 'a@x' or email in ('b', $$c$$) or email = any(array['d'])"
        ),
        vec!["'a@x'", "'b'", "$$c$$", "'d'"]
    );
    assert_eq!(
        ok_edits("select * from customers c where c.email <> 'z'"),
        vec!["'z'"]
    );
    assert_eq!(
        ok_edits(
            "select * from customers where email is not distinct from 'q' and email is not null"
        ),
        vec!["'q'"]
    );
}

#[test]
fn joins_within_a_domain() {
    assert!(ok_edits("select c.id from customers c join leads l on c.email = l.email").is_empty());
    assert!(ok_edits("select c.id from customers c join leads l using (email)").is_empty());
    assert_eq!(
        refused("select 1 from customers c join leads l on c.email = l.phone").reason,
        "mixed_domains"
    );
}

#[test]
fn refuses_what_ciphertext_cannot_serve() {
    assert_eq!(
        refused("select * from customers where email like 'a%'").reason,
        "pattern"
    );
    assert_eq!(
        refused("select * from customers where birth_date < '2000-01-01'").reason,
        "order"
    );
    assert_eq!(
        refused("select * from customers order by email").reason,
        "order"
    );
    assert_eq!(
        refused("select email e from customers order by e").reason,
        "order"
    );
    assert_eq!(
        refused("select email from customers order by 1").reason,
        "order"
    );
    assert_eq!(
        refused("select lower(email) from customers").reason,
        "function"
    );
    assert_eq!(
        refused("select email || 'x' from customers").reason,
        "function"
    );
    assert_eq!(
        refused("select * from customers where email = score::text").reason,
        "plaintext_comparison"
    );
    assert_eq!(
        refused("select * from customers where email between 'a' and 'b'").reason,
        "order"
    );
    assert_eq!(refused("copy customers from '/tmp/f'").reason, "copy");
    let a = run("copy customers (id, email) from stdin with (format csv, force_null (email))");
    let plan = a.statements[0].copy.clone().expect("a COPY plan");
    assert!(
        !plan.to && plan.columns[1].1.is_some() && plan.options.force_null == vec![false, true]
    );
    let a = run("copy (select email, id from customers) to stdout");
    assert!(
        a.statements[0]
            .copy
            .as_ref()
            .is_some_and(|p| p.to && p.columns[0].1.is_some())
    );
    assert_eq!(
        refused("select * from customers where email = 'a' ||").reason,
        "unparsed"
    );
}

#[test]
fn counts_and_grouping_are_fine() {
    assert!(ok_edits("select email, count(*) from customers group by email").is_empty());
    assert!(ok_edits("select count(distinct email) from customers").is_empty());
    assert!(ok_edits("select distinct email from customers").is_empty());
    assert_eq!(
        refused("select max(email) from customers").reason,
        "function"
    );
}

#[test]
fn update_delete_returning() {
    assert_eq!(
        ok_edits("update customers set email = 'n@x' where email = 'o@x' returning email"),
        vec!["'n@x'", "'o@x'"]
    );
    assert_eq!(
        ok_edits("delete from customers where email = 'a' returning id"),
        vec!["'a'"]
    );
    assert!(
        ok_edits("update customers c set email = l.email from leads l where l.id = c.id")
            .is_empty()
    );
    assert_eq!(
        refused("update customers set email = lower('X')").reason,
        "plaintext_comparison"
    );
}

#[test]
fn on_conflict_and_insert_select() {
    assert_eq!(
        ok_edits(
            "insert into customers (id, email) values (1, 'a') on conflict (email) do update set email = excluded.email"
        ),
        vec!["'a'"]
    );
    assert!(ok_edits("insert into leads (email) select email from customers").is_empty());
    assert_eq!(
        ok_edits(
            "insert into customers (id, email) select v.i, v.e from (values (1, 'a'), (2, 'b')) as v(i, e)"
        ),
        vec!["'a'", "'b'"]
    );
    assert_eq!(
        refused("insert into leads (phone) select email from customers").reason,
        "mixed_domains"
    );
}

#[test]
fn union_output_gets_a_hint() {
    let a = run("select email from customers union select email from leads");
    assert!(a.refusal.is_none());
    assert!(a.statements[0].outputs[0].is_some());
    let a = run("select (select email from customers limit 1), 1");
    assert!(a.statements[0].outputs[0].is_some());
    assert!(a.statements[0].outputs[1].is_none());
}

#[test]
fn subqueries_and_ctes() {
    assert_eq!(
        ok_edits("with w as (select id, email from customers) select id from w where email = 'a'"),
        vec!["'a'"]
    );
    assert_eq!(
        ok_edits(
            "select id from customers where email in (select email from leads where phone = '1')"
        ),
        vec!["'1'"]
    );
    assert_eq!(
        ok_edits("select x.e from (select email as e from customers) x where x.e = 'k'"),
        vec!["'k'"]
    );
}

#[test]
fn untouched_statements_are_not_analysed() {
    let a =
        run("select 1; set search_path = crm, public; select * from other where email like 'x'");
    assert!(a.refusal.is_none());
    assert!(a.statements[1].sets_search_path);
}

#[test]
fn multi_statement_stops_at_refusal() {
    let a = run(
        "insert into customers (email) values ('a'); select * from customers where email like 'b%'; select 1",
    );
    assert_eq!(a.statements.len(), 1);
    assert!(a.refusal.is_some());
}

#[test]
fn refusal_message_has_no_value() {
    let r = refused("select * from customers where email like 'secret-value%'");
    assert!(!r.message().contains("secret"));
    assert!(r.message().starts_with("pgveil:"));
    assert!(r.message().contains("public.customers.email"));
}

#[test]
fn quoted_and_qualified_names() {
    assert_eq!(
        ok_edits("select 1 from public.customers where \"email\" = 'a'"),
        vec!["'a'"]
    );
    assert_eq!(
        ok_edits("SELECT 1 FROM Customers WHERE EMAIL = 'a'"),
        vec!["'a'"]
    );
    // A different, quoted table is not the configured one.
    assert!(
        run("select 1 from \"Customers\" where email like 'a'")
            .refusal
            .is_none()
    );
}

#[test]
fn prepare_records_parameters_and_execute_encrypts_arguments() {
    let sql = "PREPARE f(int, text) AS SELECT id FROM customers WHERE id = $1 AND email = $2";
    let a = run(sql);
    assert!(a.refusal.is_none(), "{:?}", a.refusal);
    let plan = &a.statements[0];
    let (name, spec) = plan.prepared.clone().unwrap();
    assert_eq!(name, "f");
    assert!(spec[0].is_none());
    assert_eq!(spec[1].as_ref().unwrap().id.column, "email");
    let retyped: Vec<&str> = plan
        .replacements
        .iter()
        .map(|(r, _)| &sql[r.clone()])
        .collect();
    assert_eq!(retyped, vec!["text"]);

    let c = catalog();
    let configured = vec![("public".to_string(), "customers".to_string())];
    let w = Watched::new(&c, &configured, &cols(&["email"]));
    let mut prepared = HashMap::new();
    prepared.insert("f".to_string(), spec);
    let exec = "EXECUTE f(1, 'a@x')";
    let a = analyze(exec, &c, &w, &configured, &prepared);
    assert!(a.refusal.is_none(), "{:?}", a.refusal);
    assert_eq!(edit_texts(exec, &a), vec!["'a@x'"]);
    for exec in [
        "EXPLAIN ANALYZE EXECUTE f(1, 'a@x')",
        "EXPLAIN (ANALYZE) EXECUTE f (1, 'a@x')",
    ] {
        let a = analyze(exec, &c, &w, &configured, &prepared);
        assert!(a.refusal.is_none(), "{exec}: {:?}", a.refusal);
        assert_eq!(edit_texts(exec, &a), vec!["'a@x'"], "{exec}");
    }
    let a = analyze("EXECUTE f(1, lower('A'))", &c, &w, &configured, &prepared);
    assert!(a.refusal.is_some());
    let a = analyze("DEALLOCATE f", &c, &w, &configured, &prepared);
    assert_eq!(a.statements[0].deallocated, Some(Some("f".to_string())));
}

/// Parameters bound to encrypted columns, and the text each cast
/// replacement puts in place of what.
type Bindings = (Vec<(usize, String, bool)>, Vec<(String, String)>);

fn bindings(sql: &str) -> Bindings {
    let a = run(sql);
    assert!(a.refusal.is_none(), "{sql}: {:?}", a.refusal);
    let plan = &a.statements[0];
    let params = plan
        .params
        .iter()
        .map(|(n, b)| (*n, b.column.id.column.clone(), b.array))
        .collect();
    let casts = plan
        .replacements
        .iter()
        .map(|(r, t)| (sql[r.clone()].to_string(), t.clone()))
        .collect();
    (params, casts)
}

#[test]
fn parameters_are_bound_directly_through_casts_and_values_lists() {
    let (p, c) = bindings("select id from customers where email = $1 and id = $2");
    assert_eq!(p, vec![(1, "email".to_string(), false)]);
    assert!(c.is_empty());
    let (p, c) = bindings(
        "select id from customers where email = $1::text or email = CAST($2 AS VARCHAR(255))",
    );
    assert_eq!(p.len(), 2);
    assert_eq!(
        c,
        vec![
            ("$1::text".to_string(), "CAST(($1) AS bytea)".to_string()),
            (
                "CAST($2 AS VARCHAR(255))".to_string(),
                "CAST(($2) AS bytea)".to_string()
            )
        ]
    );
    let (_, c) = bindings("select 1 from customers where email = ($1::text)::varchar");
    assert_eq!(
        c,
        vec![(
            "($1::text)::varchar".to_string(),
            "CAST(($1) AS bytea)".to_string()
        )]
    );
    // SQLAlchemy 2's bulk insert.
    let sql = "INSERT INTO customers (email, birth_date, id) SELECT p0::VARCHAR, p1::DATE, p2::INTEGER FROM \
               (VALUES ($1::VARCHAR, $2::DATE, $3::INTEGER, 0), ($4::VARCHAR, $5::DATE, $6::INTEGER, 1)) \
               AS imp_sen(p0, p1, p2, sen_counter) ORDER BY sen_counter RETURNING customers.id";
    let (p, c) = bindings(sql);
    let bound: Vec<usize> = p.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(bound, vec![1, 2, 4, 5]);
    assert!(c.contains(&("p0::VARCHAR".to_string(), "CAST((p0) AS bytea)".to_string())));
    assert!(c.contains(&("$5::DATE".to_string(), "CAST(($5) AS bytea)".to_string())));
    assert!(!c.iter().any(|(from, _)| from.contains("INTEGER")));
    // IN lists and arrays.
    let (p, _) = bindings("select 1 from customers where email in ($1, $2)");
    assert_eq!(p.len(), 2);
    let (p, c) = bindings("select 1 from customers where email = any($1::text[])");
    assert_eq!(p, vec![(1, "email".to_string(), true)]);
    assert_eq!(
        c,
        vec![(
            "$1::text[]".to_string(),
            "CAST(($1) AS bytea[])".to_string()
        )]
    );
}

#[test]
fn parameters_used_as_plaintext_or_cast_away_are_refused() {
    for sql in [
        "select 1 from customers where email = $1 and id = $1",
        "select $1 from customers where email = $1",
        "select 1 from customers where email = $1::int",
        "select 1 from customers where email = lower($1)",
        "select 1 from customers where email = $1 and birth_date = $1",
        "insert into customers (email, id) values ($1, $1)",
    ] {
        assert!(run(sql).refusal.is_some(), "{sql}");
    }
}

#[test]
fn origin_less_ciphertext_beside_unknown_wildcard_is_refused() {
    let r = refused("select *, (select email from customers limit 1) from other_table");
    assert_eq!(r.reason, "unsupported");
}

#[test]
fn review_findings_fail_closed() {
    // Unknown CTE columns flowing into encrypted targets.
    assert!(
        run("with x as (select * from staging) insert into customers (id, email) select * from x")
            .refusal
            .is_some()
    );
    assert!(
        run("with x as (select * from staging) insert into customers (id, email) table x")
            .refusal
            .is_some()
    );
    // CREATE TABLE AS / SELECT INTO creating a configured table.
    assert!(
        run("create table customers as select 1 as id, 'x'::text as email")
            .refusal
            .is_some()
    );
    assert!(run("select * into leads from staging").refusal.is_some());
    // Type changes and generated columns on encrypted columns.
    assert!(
        run("alter table leads alter column email type bytea using 'x'::bytea")
            .refusal
            .is_some()
    );
    assert!(run("create table leads (id int, name text, email text generated always as (name || '') stored)").refusal.is_some());
    // Constraint expressions over encrypted columns.
    assert!(
        run("alter table customers add constraint c check (email <> 'x')")
            .refusal
            .is_some()
    );
    // Literals in a view definition or an index predicate are encrypted.
    let sql = "create view v13 as select id from customers where email = 'p13'";
    assert_eq!(ok_edits(sql), vec!["'p13'"]);
    assert_eq!(
        ok_edits("create index i on customers (id) where email = 'p14'"),
        vec!["'p14'"]
    );
    assert_eq!(
        ok_edits(
            "insert into customers (id, email) values (1, 'a') on conflict (id) where email <> 'p27' do nothing"
        ),
        vec!["'a'", "'p27'"]
    );
    // Cursors and prepared statements cannot carry positional hints.
    assert!(
        run("declare c cursor for select email from customers union select email from leads")
            .refusal
            .is_some()
    );
    assert!(
        run("prepare p as select email from customers union select email from leads")
            .refusal
            .is_some()
    );
    // Ciphertext copied into plain targets through a tuple assignment.
    assert!(
        run("update customers set (id, score) = (select 1, email from customers c2 limit 1)")
            .refusal
            .is_some()
    );
    // A parameter used for an encrypted column and a plain one.
    assert!(
        run("prepare q as insert into customers (email, score) values ($1, $1)")
            .refusal
            .is_some()
    );
}

#[test]
fn defaults_on_encrypted_columns_are_refused() {
    assert!(
        refused("alter table customers alter column email set default 'x@y'")
            .message()
            .contains("DEFAULT")
    );
    assert!(
        refused("create table leads (id int, email bytea default 'a')")
            .message()
            .contains("DEFAULT")
    );
    assert!(
        run("alter table customers alter column score set default 0")
            .refusal
            .is_none()
    );
}

#[test]
fn whole_row_references_are_refused() {
    assert_eq!(
        refused("select to_json(c) from customers c").reason,
        "function"
    );
    assert_eq!(
        refused("select row_to_json(c.*) from customers c").reason,
        "function"
    );
    assert!(
        run("select distinct on (email) id from customers")
            .refusal
            .is_none()
    );
    assert_eq!(
        refused("select distinct on (lower(email)) id from customers").reason,
        "function"
    );
}

#[test]
fn numbers_and_negative_literals() {
    let c = Catalog::from_relations(
        vec![Relation {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            kind: RelationKind::Table,
            columns: vec![col("n", 1, Some(enc("t", "n", "n", ValueType::Int4)))],
            opaque: None,
            definition: None,
        }],
        vec!["public".into()],
    );
    let configured = vec![("public".to_string(), "t".to_string())];
    let w = Watched::new(&c, &configured, &cols(&["n"]));
    let sql = "select 1 from t where n = -5 or n = 7::int4";
    let a = analyze(sql, &c, &w, &configured, &HashMap::new());
    assert!(a.refusal.is_none(), "{:?}", a.refusal);
    assert_eq!(edit_texts(sql, &a), vec!["-5", "7::int4"]);
}

#[test]
fn tables_never_become_configured_ones_with_their_rows() {
    for sql in [
        "ALTER TABLE public.staging RENAME TO customers",
        "ALTER TABLE staging RENAME TO leads",
        "ALTER TABLE other.customers SET SCHEMA public",
        "ALTER TABLE public.stg INHERIT public.customers",
        "ALTER TABLE public.customers ATTACH PARTITION public.stg FOR VALUES IN (1)",
    ] {
        let r = refused(sql);
        assert!(r.message().contains("pgveil"), "{sql}: {r:?}");
    }
    // Detaching, and renaming unrelated tables, pass.
    assert!(
        run("ALTER TABLE public.customers DETACH PARTITION public.p1")
            .refusal
            .is_none()
    );
    assert!(
        run("ALTER TABLE public.stg RENAME TO stg2")
            .refusal
            .is_none()
    );
}

#[test]
fn renames_and_moves_reload_the_catalog() {
    let a = run("ALTER SCHEMA public RENAME TO p2");
    // `public` holds the configured tables: refused.
    assert!(a.refusal.is_some());
    let a = run("ALTER VIEW v2 SET SCHEMA x");
    assert!(
        a.refusal.is_none() && a.statements[0].refresh_catalog,
        "{a:?}"
    );
}

#[test]
fn functional_notation_and_unknown_columns_of_encrypted_tables_are_refused() {
    refused("SELECT c.row_to_json FROM customers c");
    refused("SELECT (c).to_json FROM customers c");
    assert!(
        run("SELECT c.xmin, c.ctid FROM customers c")
            .refusal
            .is_none()
    );
}

#[test]
fn functions_running_sql_from_strings_are_refused() {
    for sql in [
        "SELECT * FROM crosstab('select 1, 2, 3') AS t(a int, b int)",
        "SELECT * FROM ts_stat('select to_tsvector(email) from customers')",
        "SELECT cron.schedule('j', '* * * * *', 'delete from customers')",
        "SELECT * FROM connectby('customers', 'id', 'score', '1', 0) AS t(a int, b int, c int)",
    ] {
        refused(sql);
    }
}

#[test]
fn long_identifiers_are_cut_as_postgresql_cuts_them() {
    let name = "a".repeat(70);
    let i = sqlparser::ast::Ident::new(name);
    assert_eq!(norm(&i).len(), 63);
}

#[test]
fn rows_after_altering_ddl_in_one_query_are_refused() {
    // Dropping a column shifts positions: the INSERT would be judged by
    // the old ones (plaintext into `email`).
    refused(
        "ALTER TABLE customers DROP COLUMN id; INSERT INTO customers VALUES ('secret', '2000-01-01', 1)",
    );
    refused("ALTER TABLE leads DROP COLUMN phone; INSERT INTO customers (email) VALUES ('x')");
    // Further DDL, and statements on unrelated tables, pass.
    assert!(
        run("ALTER TABLE customers ADD COLUMN note text; CREATE INDEX ON customers (note); SELECT 1 FROM notes")
            .refusal
            .is_none()
    );
}
