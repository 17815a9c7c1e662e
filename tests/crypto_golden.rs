//! Golden vectors of the at-rest format (envelope v1).
//!
//! What pgveil stores today must decrypt with every later release, and the
//! same plaintext must keep encrypting to the same bytes (or equality
//! searches would miss old rows). These vectors fix a master key, domain,
//! type and plaintext and the exact stored bytes for each type and both
//! storage encodings; this test fails if any of them changes.
//!
//! `tests/golden/envelope_v1.toml` is written once by
//! `cargo test --test crypto_golden -- --ignored print_golden` and then only
//! ever appended to, never regenerated.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use pgveil::config::{Config, Storage, ValueType};
use pgveil::crypto::envelope::{bytea_from_hex, bytea_to_hex};
use pgveil::crypto::{Format, Keyring, MasterKey, SessionSettings};
use serde::Deserialize;

/// Master key of the vectors: bytes 0x00..=0x1f.
const MASTER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const GOLDEN: &str = include_str!("golden/envelope_v1.toml");

/// (type, domain, text input, PostgreSQL binary input in hex or "").
const CASES: &[(&str, &str, &str, &str)] = &[
    (
        "text",
        "golden.email",
        "ada@example.com",
        "616461406578616d706c652e636f6d",
    ),
    ("text", "golden.email", "", ""),
    ("text", "golden.email", "Zoë ☃ 日本", ""),
    ("varchar", "golden.varchar", "ada@example.com", ""),
    ("int2", "golden.int2", "-32768", "8000"),
    ("int4", "golden.int4", "42", "0000002a"),
    (
        "int8",
        "golden.int8",
        "9223372036854775807",
        "7fffffffffffffff",
    ),
    ("bool", "golden.bool", "true", "01"),
    ("bool", "golden.bool", "f", "00"),
    (
        "uuid",
        "golden.uuid",
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        "a0eebc999c0b4ef8bb6d6bb9bd380a11",
    ),
    ("date", "golden.date", "2024-02-29", "00002279"),
    ("date", "golden.date", "infinity", "7fffffff"),
    ("date", "golden.date", "0044-03-15 BC", ""),
    (
        "timestamp",
        "golden.timestamp",
        "2024-02-29 13:45:30.123456",
        "",
    ),
    (
        "timestamp",
        "golden.timestamp",
        "-infinity",
        "8000000000000000",
    ),
    (
        "timestamptz",
        "golden.timestamptz",
        "2024-02-29T13:45:30.5+02:00",
        "",
    ),
    (
        "numeric",
        "golden.numeric",
        "1.50",
        "000200000000000200011388",
    ),
    ("numeric", "golden.numeric", "-0.00012", ""),
    ("numeric", "golden.numeric", "NaN", "00000000c0000000"),
    ("numeric", "golden.numeric", "12345678901234567890.5", ""),
];

#[derive(Debug, Deserialize)]
struct Golden {
    master_key: String,
    vector: Vec<Vector>,
}

#[derive(Debug, Deserialize)]
struct Vector {
    #[serde(rename = "type")]
    value_type: String,
    domain: String,
    input: String,
    canonical: String,
    bytea: String,
    text: String,
    output: String,
}

fn keyring() -> Keyring {
    let mut toml = String::from(
        "[listen]\naddress = \"127.0.0.1:1\"\n[upstream]\naddress = \"127.0.0.1:2\"\n\
         [keys]\nmaster_key_env = \"UNUSED\"\n",
    );
    let mut seen = std::collections::BTreeSet::new();
    for (ty, domain, _, _) in CASES {
        if seen.insert(*ty) {
            toml.push_str(&format!(
                "[[encrypt]]\ntable = \"golden\"\ncolumn = \"{ty}\"\ntype = \"{ty}\"\ndomain = \"{domain}\"\n"
            ));
        }
    }
    let config = Config::parse(&toml, "golden").unwrap();
    let master = MasterKey::from_base64(MASTER_KEY, "golden").unwrap();
    Keyring::from_master_key(&master, &config.encrypt)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn compute(ring: &Keyring, ty: &str, input: &str) -> Vector {
    let col = ring.resolve(&format!("golden.{ty}")).unwrap();
    let st = SessionSettings::new();
    let bytea = col
        .encrypt(Format::Text, input.as_bytes(), Storage::Bytea, &st)
        .unwrap();
    let text = col
        .encrypt(Format::Text, input.as_bytes(), Storage::Text, &st)
        .unwrap();
    let canonical = col.open_envelope(&bytea).unwrap();
    let output = col
        .decrypt(Storage::Bytea, &bytea, Format::Text, &st)
        .unwrap();
    Vector {
        value_type: ty.to_string(),
        domain: col.domain().to_string(),
        input: input.to_string(),
        canonical: hex(&canonical),
        bytea: bytea_to_hex(&bytea),
        text: String::from_utf8(text).unwrap(),
        output: String::from_utf8(output).unwrap(),
    }
}

#[test]
fn golden_vectors_are_unchanged() {
    let golden: Golden = toml::from_str(GOLDEN).unwrap();
    assert_eq!(golden.master_key, MASTER_KEY);
    assert_eq!(
        golden.vector.len(),
        CASES.len(),
        "a golden vector was added or removed"
    );
    let ring = keyring();
    let st = SessionSettings::new();
    for v in &golden.vector {
        let got = compute(&ring, &v.value_type, &v.input);
        assert_eq!(got.domain, v.domain, "{v:?}");
        assert_eq!(
            got.canonical, v.canonical,
            "canonical encoding changed: {v:?}"
        );
        assert_eq!(got.bytea, v.bytea, "bytea envelope changed: {v:?}");
        assert_eq!(got.text, v.text, "text storage changed: {v:?}");
        assert_eq!(got.output, v.output, "text output changed: {v:?}");
        // And the stored bytes decrypt, from both encodings.
        let col = ring.resolve(&format!("golden.{}", v.value_type)).unwrap();
        let stored = bytea_from_hex(v.bytea.as_bytes()).unwrap();
        assert_eq!(
            hex(&col.open_stored(Storage::Bytea, &stored).unwrap()),
            v.canonical
        );
        assert_eq!(
            hex(&col.open_stored(Storage::Text, v.text.as_bytes()).unwrap()),
            v.canonical
        );
        let out = col
            .decrypt(Storage::Text, v.text.as_bytes(), Format::Text, &st)
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), v.output);
    }
}

#[test]
fn binary_input_gives_the_same_bytes_as_text_input() {
    let ring = keyring();
    let st = SessionSettings::new();
    for (ty, _, input, binary) in CASES {
        if binary.is_empty() {
            continue;
        }
        let col = ring.resolve(&format!("golden.{ty}")).unwrap();
        let from_text = col
            .encrypt(Format::Text, input.as_bytes(), Storage::Bytea, &st)
            .unwrap();
        let from_binary = col
            .encrypt(Format::Binary, &unhex(binary), Storage::Bytea, &st)
            .unwrap();
        assert_eq!(from_text, from_binary, "{ty} {input}");
    }
}

#[test]
fn golden_types_cover_every_value_type() {
    let all = [
        ValueType::Text,
        ValueType::Varchar,
        ValueType::Int2,
        ValueType::Int4,
        ValueType::Int8,
        ValueType::Bool,
        ValueType::Uuid,
        ValueType::Date,
        ValueType::Timestamp,
        ValueType::Timestamptz,
        ValueType::Numeric,
    ];
    for ty in all {
        assert!(
            CASES.iter().any(|c| c.0 == ty.name()),
            "no golden vector for {ty}"
        );
    }
}

/// Writes the golden file's content; run once, review, commit.
#[test]
#[ignore]
fn print_golden() {
    let ring = keyring();
    let mut out = String::from(
        "# pgveil envelope format v1: golden vectors. NEVER regenerate or edit existing entries.\n",
    );
    out.push_str(&format!("master_key = \"{MASTER_KEY}\"\n"));
    for (ty, _, input, _) in CASES {
        let v = compute(&ring, ty, input);
        out.push_str(&format!(
            "\n[[vector]]\ntype = {:?}\ndomain = {:?}\ninput = {:?}\ncanonical = {:?}\nbytea = {}\ntext = {:?}\noutput = {:?}\n",
            v.value_type, v.domain, v.input, v.canonical, toml_literal(&v.bytea), v.text, v.output
        ));
    }
    println!("{out}");
}

fn toml_literal(s: &str) -> String {
    format!("'{s}'")
}
