//! The `pgveil` binary's commands, run as a DBA would run them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};

fn pgveil(args: &[&str], config_text: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, config_text).unwrap();
    Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("PGVEIL_CONFIG")
        .output()
        .unwrap()
}

const GOOD: &str =
    "[listen]\naddress = \"127.0.0.1:6432\"\n[upstream]\naddress = \"db.internal:5432\"\n";

#[test]
fn check_prints_what_it_understood() {
    let out = pgveil(&["check"], GOOD);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("127.0.0.1:6432"), "{stdout}");
    assert!(stdout.contains("db.internal:5432"), "{stdout}");
}

#[test]
fn check_rejects_unknown_key_naming_it_and_its_line() {
    let text = format!("{GOOD}[log]\nlevel = \"info\"\ncolour = true\n");
    let out = pgveil(&["check"], &text);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("colour"), "{stderr}");
    assert!(stderr.contains("line 7"), "{stderr}");
}

#[test]
fn check_lists_encrypted_columns() {
    let text = format!(
        "{GOOD}[keys]\nmaster_key_env = \"K\"\n[[encrypt]]\ntable = \"crm.customers\"\ncolumn = \"email\"\ndomain = \"email\"\n"
    );
    let out = pgveil(&["check"], &text);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("crm.customers.email"), "{stdout}");
}

#[test]
fn check_fails_on_missing_file() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["check", "--config", "/nonexistent/proxy.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/proxy.toml"));
}

#[test]
fn config_path_from_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.toml");
    std::fs::write(&path, GOOD).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .arg("check")
        .env("PGVEIL_CONFIG", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn keygen_prints_key_then_check_value() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .arg("keygen")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let key = lines.next().unwrap();
    assert_eq!(key.len(), 44, "{key}");
    assert!(lines.next().unwrap().starts_with("check = \"kcv1:"));
}

#[test]
fn check_refuses_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("k");
    std::fs::write(&key_path, "cGd2ZWlsLXRlc3Qta2V5LTMyLWJ5dGVzLWxvbmchISE=").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "{GOOD}[keys]\nmaster_key_file = \"{}\"\ncheck = \"kcv1:0000000000000000\"\n",
        key_path.display()
    );
    let out = pgveil(&["check"], &text);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("check"), "{stderr}");
    assert!(!stderr.contains("cGd2ZWls"), "key printed: {stderr}");
}

#[test]
fn demo_self_check_sees_plaintext_through_pgveil_and_none_directly() {
    let out = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["demo", "--check"])
        .env_remove("PGVEIL_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("self-check passed"));
}

#[test]
fn healthcheck_fails_cleanly_when_nothing_listens() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_pgveil"))
        .args(["healthcheck", "--address", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting"));
}
