//! The log audit: every line pgveil logged during the test suite (each test
//! binary writes its in-process pgveil's log, DEBUG and up, to
//! `target/test-logs/<binary>-<pid>.log`; see `support::init_test_logging`)
//! must be free of the test passwords, the master key and the plaintext
//! values the encrypted-column tests write.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine;

/// Everything no log line may contain, with a label for the report.
fn secrets() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in support::TEST_PASSWORDS {
        out.push(("a test password".to_owned(), (*p).to_owned()));
    }
    out.push((
        "the master key (base64)".to_owned(),
        support::TEST_KEY.to_owned(),
    ));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(support::TEST_KEY)
        .unwrap();
    out.push((
        "the master key (raw bytes)".to_owned(),
        String::from_utf8_lossy(&raw).into_owned(),
    ));
    for m in support::PLAINTEXT_MARKERS {
        out.push(("a plaintext marker".to_owned(), (*m).to_owned()));
    }
    out
}

/// Not part of `cargo test`: test binaries run in an unspecified order, so
/// this runs after the suite, `cargo test --test log_audit -- --ignored`
/// (`.ci/run`). It fails when there is no non-empty log to read, so it is
/// never vacuous.
#[test]
#[ignore = "run after the whole suite: cargo test --test log_audit -- --ignored"]
fn no_log_line_carries_a_password_key_or_plaintext() {
    let dir = support::test_log_dir();
    let secrets = secrets();
    let mut files = 0usize;
    let mut non_empty = 0usize;
    let mut lines = 0usize;
    let mut findings = Vec::new();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run the test suite first)", dir.display()));
    let mut paths: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    paths.sort();
    for path in &paths {
        let bytes = std::fs::read(path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        files += 1;
        if !text.trim().is_empty() {
            non_empty += 1;
        }
        for (n, line) in text.lines().enumerate() {
            lines += 1;
            for (label, secret) in &secrets {
                if line.contains(secret.as_str()) && findings.len() < 20 {
                    let shown: String = line.chars().take(300).collect();
                    findings.push(format!(
                        "{}:{}: {label} ({secret:?}): {shown}",
                        path.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    println!(
        "log audit: {files} files ({non_empty} non-empty), {lines} lines scanned in {}",
        dir.display()
    );
    assert!(
        non_empty > 0,
        "no non-empty log file in {}: run `cargo test` first",
        dir.display()
    );
    assert!(
        findings.is_empty(),
        "log lines carry secrets or plaintext:\n{}",
        findings.join("\n")
    );
}
