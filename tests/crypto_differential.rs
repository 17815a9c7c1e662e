//! Differential test of the typed codecs against a real PostgreSQL.
//!
//! The same values are written into a plaintext table of the real type and
//! through the codec; PostgreSQL's text output (simple protocol) and binary
//! output (extended protocol) must equal the codec's byte for byte, and
//! PostgreSQL's binary form of each value must encrypt to exactly the bytes
//! the codec produced from the text input. Run under several DateStyle /
//! TimeZone settings. For `numeric` the comparison is with `trim_scale(v)`
//! (see docs/FORMAT.md: display scale is normalised).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use pgveil::config::{Config, Storage};
use pgveil::crypto::{Format, Keyring, MasterKey, SessionSettings};
use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::types::{FromSql, Type};

/// The raw bytes of a binary-format column.
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

const CASES: &[(&str, &[&str])] = &[
    ("text", &["ada@example.com", "", "Zoë ☃ 日本", "  spaced  "]),
    ("varchar", &["ada@example.com", "x"]),
    ("int2", &["-32768", "0", "32767", " 42 ", "+7"]),
    ("int4", &["-2147483648", "2147483647", "-1"]),
    (
        "int8",
        &["-9223372036854775808", "9223372036854775807", "123"],
    ),
    ("bool", &["t", "f", "yes", "off", "TRUE", "0"]),
    (
        "uuid",
        &[
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "{A0EEBC99-9C0B4EF8-BB6D6BB9-BD380A11}",
            "a0eebc999c0b4ef8bb6d6bb9bd380a11",
        ],
    ),
    (
        "date",
        &[
            "2024-02-29",
            "infinity",
            "-infinity",
            "0044-03-15 BC",
            "5874897-12-31",
            "4714-11-24 BC",
            "1999-1-2",
            "epoch",
            "2003-01-01 12:00+05",
            "0001-01-01",
        ],
    ),
    (
        "timestamp",
        &[
            "2024-02-29 13:45:30.123456",
            "2024-02-29T13:45:30.5",
            "infinity",
            "0001-01-01 00:00:00 BC",
            "294276-12-31 23:59:59.999999",
            "4714-11-24 00:00:00 BC",
            "2000-01-01 24:00",
            "2003-01-01 12:00:00.0000005",
            "2003-01-01 12:00:00.0000015",
            "2003-01-01 12:00:00.9999995",
            "1999-12-31 23:59:60",
            "epoch",
            "2003-01-01 12:00:00+05",
        ],
    ),
    (
        "timestamptz",
        &[
            "2024-02-29T13:45:30.5+02:00",
            "2024-02-29 13:45:30",
            "2003-01-01 00:00:00Z",
            "1900-06-01 12:00:00-03:30",
            "1900-06-01 12:00:00 +0330",
            "0100-01-01 00:00:00+00 BC",
            "epoch",
            "-infinity",
            "2003-07-01 12:00 UTC",
            "2003-07-01 12:00:00.25-11:15:30",
        ],
    ),
    (
        "numeric",
        &[
            "1.50",
            "1.5",
            "-0.00012",
            "NaN",
            "Infinity",
            "-inf",
            "12345678901234567890.5",
            "1e20",
            "0",
            "-0.0",
            "1.5E-3",
            "  +12.3400e2 ",
            "0.000000000001",
            "99999999.99990000",
        ],
    ),
];

/// (DateStyle, TimeZone) to run under.
const SETTINGS: &[(&str, &str)] = &[
    ("ISO, MDY", "UTC"),
    ("SQL, DMY", "<+05:30>-05:30"),
    ("Postgres, MDY", "Etc/GMT+3"),
    ("German, DMY", "Etc/UTC"),
    ("ISO, YMD", "<-0930>+09:30"),
];

fn keyring() -> Keyring {
    let mut toml = String::from(
        "[listen]\naddress = \"127.0.0.1:1\"\n[upstream]\naddress = \"127.0.0.1:2\"\n\
         [keys]\nmaster_key_env = \"UNUSED\"\n",
    );
    for (ty, _) in CASES {
        toml.push_str(&format!(
            "[[encrypt]]\ntable = \"diff\"\ncolumn = \"{ty}\"\ntype = \"{ty}\"\n"
        ));
    }
    let config = Config::parse(&toml, "diff").unwrap();
    Keyring::from_master_key(
        &MasterKey::from_bytes(vec![3; 32]).unwrap(),
        &config.encrypt,
    )
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn show(client: &tokio_postgres::Client, name: &str) -> String {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .unwrap()
        .get::<_, String>(0)
}

#[tokio::test]
async fn codec_matches_postgres_byte_for_byte() {
    let pg = support::cluster();
    let client = pg.connect().await;
    let ring = keyring();
    let mut checked = 0;
    for (date_style, time_zone) in SETTINGS {
        client
            .batch_execute(&format!(
                "SET DateStyle = {}; SET TimeZone = {}",
                quote(date_style),
                quote(time_zone)
            ))
            .await
            .unwrap();
        // What the server reports, as the proxy sees it in ParameterStatus.
        let settings = SessionSettings::new()
            .with("DateStyle", &show(&client, "DateStyle").await)
            .with("TimeZone", &show(&client, "TimeZone").await);
        for (ty, values) in CASES {
            let col = ring.resolve(&format!("diff.{ty}")).unwrap();
            client
                .batch_execute(&format!(
                    "DROP TABLE IF EXISTS d; CREATE TEMP TABLE d (i int, v {ty})"
                ))
                .await
                .unwrap();
            for (i, v) in values.iter().enumerate() {
                client
                    .batch_execute(&format!("INSERT INTO d VALUES ({i}, {}::{ty})", quote(v)))
                    .await
                    .unwrap();
            }
            let expr = if *ty == "numeric" {
                "trim_scale(v)"
            } else {
                "v"
            };
            let sql = format!("SELECT {expr} FROM d ORDER BY i");
            let text_rows: Vec<String> = client
                .simple_query(&sql)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_string()),
                    _ => None,
                })
                .collect();
            let binary_rows: Vec<Vec<u8>> = client
                .query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, Raw>(0).0)
                .collect();
            assert_eq!(text_rows.len(), values.len());
            for (i, v) in values.iter().enumerate() {
                let ctx = format!("{ty} {v:?} under {date_style} / {time_zone}");
                let stored = col
                    .encrypt(Format::Text, v.as_bytes(), Storage::Bytea, &settings)
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let text = col
                    .decrypt(Storage::Bytea, &stored, Format::Text, &settings)
                    .unwrap();
                assert_eq!(
                    String::from_utf8(text).unwrap(),
                    text_rows[i],
                    "text output: {ctx}"
                );
                let binary = col
                    .decrypt(Storage::Bytea, &stored, Format::Binary, &settings)
                    .unwrap();
                assert_eq!(binary, binary_rows[i], "binary output: {ctx}");
                let from_pg = col
                    .encrypt(Format::Binary, &binary_rows[i], Storage::Bytea, &settings)
                    .unwrap();
                assert_eq!(
                    from_pg, stored,
                    "PostgreSQL's value encrypts differently: {ctx}"
                );
                // PostgreSQL's own text output parses back to the same value
                // under ISO (other styles are output-only).
                if date_style.starts_with("ISO") {
                    let again = col
                        .encrypt(
                            Format::Text,
                            text_rows[i].as_bytes(),
                            Storage::Bytea,
                            &settings,
                        )
                        .unwrap_or_else(|e| panic!("{ctx}: re-parse: {e}"));
                    assert_eq!(again, stored, "re-parse: {ctx}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 300, "{checked}");
}

/// Binary input as PostgreSQL's recv accepts it, including a numeric whose
/// dscale hides digits, and the integer widths.
#[tokio::test]
async fn binary_numeric_with_scale_matches_postgres() {
    let pg = support::cluster();
    let client = pg.connect().await;
    let ring = keyring();
    let col = ring.resolve("diff.numeric").unwrap();
    let st = SessionSettings::new();
    for v in ["1.50", "100.000", "-7.25", "0.0100"] {
        let row = client
            .query_one(
                &format!("SELECT {v}::numeric, trim_scale({v}::numeric)"),
                &[],
            )
            .await
            .unwrap();
        let (raw, trimmed) = (row.get::<_, Raw>(0).0, row.get::<_, Raw>(1).0);
        let a = col
            .encrypt(Format::Binary, &raw, Storage::Text, &st)
            .unwrap();
        let b = col
            .encrypt(Format::Binary, &trimmed, Storage::Text, &st)
            .unwrap();
        assert_eq!(a, b, "{v}");
        assert_eq!(
            col.decrypt(Storage::Text, &a, Format::Binary, &st).unwrap(),
            trimmed
        );
    }
}
