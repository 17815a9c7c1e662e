//! Unit tests of the referee: what PostgreSQL's own parser says of statements.

use super::*;

#[test]
fn splits_where_postgresql_splits() {
    let r = examine(
        "COPY public.notes(body) FROM STDIN;\nINSERT INTO sales.accounts(company, owner_email) VALUES ('c', 'secret@x')",
    )
    .unwrap();
    assert_eq!(r.statements.len(), 2);
    assert_eq!(r.statements[1].kind, "InsertStmt");
    assert_eq!(r.statements[1].literals.len(), 2);
    assert!(r.statements[1].relations.contains(&RelName {
        schema: Some("sales".into()),
        name: "accounts".into()
    }));
}

#[test]
fn finds_references_anywhere() {
    let r = examine("EXPLAIN ANALYZE EXECUTE p('c', 'x')").unwrap();
    assert_eq!(r.statements[0].prepared, vec!["p".to_string()]);
    let r = examine("CREATE TABLE public.kid () INHERITS (sales.people)").unwrap();
    assert!(r.statements[0].relations.iter().any(|n| n.name == "people"));
    let r = examine("CREATE TABLE k () INHERITS (p); CREATE TABLE t (a int REFERENCES p); ALTER TABLE s INHERIT p; CREATE VIEW v AS SELECT 1").unwrap();
    let effects: Vec<DdlEffect> = r.statements.iter().map(|f| f.effect).collect();
    assert_eq!(
        effects,
        [
            DdlEffect::Derives,
            DdlEffect::None,
            DdlEffect::Derives,
            DdlEffect::Derives
        ]
    );
    let r = examine("ALTER SCHEMA sales RENAME TO s2").unwrap();
    assert_eq!(r.statements[0].effect, DdlEffect::Renames);
    assert_eq!(r.statements[0].renamed_schemas, vec!["sales".to_string()]);
    let r = examine("select * from schema_to_xml('sales', true, false, '')").unwrap();
    assert!(
        r.statements[0]
            .functions
            .iter()
            .any(|f| refused_function(f))
    );
    let r = examine("SELECT \"Ab\"\"c\".x FROM \"Ab\"\"c\"").unwrap();
    assert_eq!(r.statements[0].relations[0].name, "Ab\"c");
}

#[test]
fn finds_what_ddl_stores() {
    let r = examine("CREATE TABLE t (a text CHECK (contact_email <> 'x'))").unwrap();
    assert_eq!(
        r.statements[0].stored_columns,
        vec!["contact_email".to_string()]
    );
    let r = examine("CREATE INDEX i ON t ((lower(email))) WHERE phone = 'x'").unwrap();
    assert_eq!(r.statements[0].stored_columns, vec!["email".to_string()]);
    let r = examine("CREATE TABLE p1 PARTITION OF sales.people FOR VALUES IN ('x')").unwrap();
    assert!(r.statements[0].partition_strings);
    let r = examine("ALTER TABLE sales.people ATTACH PARTITION p1 FOR VALUES IN ('x')").unwrap();
    assert!(r.statements[0].partition_strings);
    let r = examine("CREATE TABLE p (a int, e text) PARTITION BY LIST (e)").unwrap();
    assert_eq!(r.statements[0].partition_keys, vec!["e".to_string()]);
    let r = examine("CREATE STATISTICS s ON id, contact_email FROM t").unwrap();
    assert!(r.statements[0].column_refs.is_empty());
    let r = examine("CREATE TABLE p2 PARTITION OF t FOR VALUES FROM (1) TO (5)").unwrap();
    assert!(!r.statements[0].partition_strings);
}

#[test]
fn names_scan_skips_constants_and_comments() {
    let hit = |sql: &str| scan_names(sql, |w| w == "email").unwrap();
    assert!(!hit("NOTIFY people_changed, 'email updated'").hit);
    assert!(!hit("select 1 -- email").hit);
    assert!(hit("select \"email\" from x").hit);
    assert!(hit("select EMAIL from x").hit);
    assert!(hit("select 1 from U&\"\\0065mail\"").hit);
    assert!(hit("DO $$ begin end $$").bodies);
    assert!(scan_names("select 'unterminated", |_| false).is_none());
    assert_eq!(scan_names(" \n", |_| true), Some(NameScan::default()));
    assert!(examine("").unwrap().statements.is_empty());
    assert!(
        examine("/* only */ -- comments")
            .unwrap()
            .statements
            .is_empty()
    );
}

#[test]
fn fingerprint_has_no_values_and_stops_at_a_boundary() {
    let f = fingerprint(
        "SELECT * FROM c WHERE email = 'ada@x' AND id IN (1, 2)",
        None,
        &|_| false,
    );
    assert!(!f.contains("ada"), "{f}");
    assert!(f.contains("$1"), "{f}");
    let f = fingerprint(
        "COPY sales.people (id, email) FROM STDIN;\n1\tsecret@x\n\\.\n",
        None,
        &|_| false,
    );
    assert!(!f.contains("secret"), "{f}");
    let f = fingerprint("select 1; select 'secret'", Some(0), &|_| false);
    assert!(!f.contains("secret"), "{f}");
    let f = fingerprint(
        "create table t (a varchar(20) default 'secret')",
        None,
        &|_| false,
    );
    assert!(!f.contains("secret") && !f.contains("20"), "{f}");
}

#[test]
fn fingerprint_masks_values_in_the_wrong_quotes() {
    let known = |n: &str| n == "email" || n == "people";
    let f = fingerprint(
        r#"SELECT "p"."id" FROM "people" p WHERE "email" = "ada" OR /* c */ "email" = U&"bob" OR x = "a b""#,
        None,
        &known,
    );
    assert_eq!(
        f,
        r#"SELECT "p"."id" FROM "people" p WHERE "email" = "?" OR "email" = "?" OR x = "?""#
    );
    let f = fingerprint(r#"INSERT INTO t ("email") VALUES ("carol")"#, None, &known);
    assert!(!f.contains("carol") && f.contains(r#"("email")"#), "{f}");
    let f = fingerprint(r#"SELECT "s" /* x */ . "t""#, None, &|_| false);
    assert!(f.contains(r#""s""#) && f.contains(r#""t""#), "{f}");
}
