//! Unit tests of `proxy.toml` parsing and validation.

use super::*;

#[test]
fn domain_key_versions_follow_pins_and_lists() {
    let text = |extra: &str| {
        format!(
            "[listen]\naddress = \"127.0.0.1:1\"\n[upstream]\naddress = \"127.0.0.1:2\"\n\
                 [keys]\nmaster_key_env = \"K\"\nactive = 1\n\
                 [[keys.versions]]\nversion = 2\nmaster_key_env = \"K\"\n\
                 [[encrypt]]\ntable = \"t\"\ncolumn = \"a\"\ndomain = \"a\"\n{extra}\n\
                 [[encrypt]]\ntable = \"t\"\ncolumn = \"b\"\ndomain = \"b\"\n"
        )
    };
    let c = Config::parse(&text(""), "t").unwrap();
    assert_eq!(c.domain_key_versions("a"), (1, vec![1, 2]));
    // Pinning `a` to 2 keeps `b` at one version.
    let c = Config::parse(&text("key_version = 2"), "t").unwrap();
    assert_eq!(c.domain_key_versions("a"), (2, vec![1, 2]));
    assert_eq!(c.domain_key_versions("b"), (1, vec![1]));
    let c = Config::parse(&text("key_version = 2\nkey_versions = [2]"), "t").unwrap();
    assert_eq!(c.domain_key_versions("a"), (2, vec![2]));
    assert!(
        Config::parse(&text("key_versions = [2]"), "t").is_err(),
        "must include the write version"
    );
    assert!(Config::parse(&text("key_versions = [3]"), "t").is_err());
}

const MINIMAL: &str =
    "[listen]\naddress = \"127.0.0.1:6432\"\n[upstream]\naddress = \"127.0.0.1:5432\"\n";

#[test]
fn parses_minimal() {
    let c = Config::parse(MINIMAL, "t").unwrap();
    assert_eq!(c.listen.max_connections, 1000);
    assert_eq!(c.policy.on_unsupported, OnUnsupported::Reject);
}

#[test]
fn rejects_unknown_key_with_name_and_line() {
    let text = format!("{MINIMAL}bogus_key = 1\n");
    let err = Config::parse(&text, "t").unwrap_err().to_string();
    // The key lands in [upstream], line 5.
    assert!(err.contains("bogus_key"), "{err}");
    assert!(err.contains("line 5"), "{err}");
}

#[test]
fn accepts_full_contract() {
    let text = r#"
[listen]
address = "127.0.0.1:6432"
max_connections = 1000
[listen.tls]
cert = "c.pem"
key = "k.pem"
required = true
client_ca = "ca.pem"
[upstream]
address = "db.example:5432"
connect_timeout_ms = 5000
[upstream.tls]
mode = "verify-full"
ca = "ca.pem"
server_name = "db"
[keys]
master_key_env = "PGVEIL_MASTER_KEY"
[metrics]
address = "127.0.0.1:9187"
[log]
level = "info"
format = "json"
[policy]
on_unsupported = "passthrough"
[[encrypt]]
table = "customers"
column = "email"
type = "text"
domain = "email"
[[encrypt]]
table = "crm.leads"
column = "email"
domain = "email"
"#;
    let c = Config::parse(text, "t").unwrap();
    assert_eq!(c.encrypt.len(), 2);
    assert_eq!(c.encrypt[1].id().to_string(), "crm.leads.email");
    assert_eq!(c.encrypt[0].id().schema, "public");
}

#[test]
fn rejects_domain_with_two_types() {
    let text = format!(
        "{MINIMAL}[keys]\nmaster_key_env = \"K\"\n[[encrypt]]\ntable = \"a\"\ncolumn = \"x\"\ndomain = \"d\"\n[[encrypt]]\ntable = \"b\"\ncolumn = \"y\"\ntype = \"date\"\ndomain = \"d\"\n"
    );
    let err = Config::parse(&text, "t").unwrap_err().to_string();
    assert!(err.contains("encrypt[2].type"), "{err}");
    assert!(err.contains("line 12"), "{err}");
}

#[test]
fn rejects_bad_address_with_line() {
    let text = "[listen]\naddress = \"nope\"\n[upstream]\naddress = \"127.0.0.1:5432\"\n";
    let err = Config::parse(text, "t").unwrap_err().to_string();
    assert!(
        err.contains("line 2") && err.contains("listen.address"),
        "{err}"
    );
}

#[test]
fn rejects_encrypt_without_keys() {
    let text = format!("{MINIMAL}[[encrypt]]\ntable = \"a\"\ncolumn = \"x\"\n");
    assert!(Config::parse(&text, "t").is_err());
}

#[test]
fn splits_ipv6() {
    assert_eq!(
        split_host_port("[::1]:5432").unwrap(),
        ("::1".to_string(), 5432)
    );
}
