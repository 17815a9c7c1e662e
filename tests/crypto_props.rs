//! Property tests of the crypto core: round trips of every type in both
//! formats and both storage encodings, determinism, tamper detection and
//! domain separation.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use pgveil::config::{Config, Storage};
use pgveil::crypto::{ColumnCipher, Format, Keyring, MasterKey, SessionSettings};
use proptest::prelude::*;

const TYPES: &[&str] = &[
    "text",
    "varchar",
    "int2",
    "int4",
    "int8",
    "bool",
    "uuid",
    "date",
    "timestamp",
    "timestamptz",
    "numeric",
];

/// Built once: deriving keys per case would dominate the run time.
static RING: std::sync::LazyLock<Keyring> = std::sync::LazyLock::new(keyring);

fn keyring() -> Keyring {
    let mut toml = String::from(
        "[listen]\naddress = \"127.0.0.1:1\"\n[upstream]\naddress = \"127.0.0.1:2\"\n\
         [keys]\nmaster_key_env = \"UNUSED\"\n",
    );
    for ty in TYPES {
        // Two columns per type: `a_<ty>` and `b_<ty>` in different domains.
        for side in ["a", "b"] {
            toml.push_str(&format!(
                "[[encrypt]]\ntable = \"p\"\ncolumn = \"{side}_{ty}\"\ntype = \"{ty}\"\n"
            ));
        }
    }
    let config = Config::parse(&toml, "props").unwrap();
    Keyring::from_master_key(
        &MasterKey::from_bytes(vec![42; 32]).unwrap(),
        &config.encrypt,
    )
}

fn col<'a>(ring: &'a Keyring, side: &str, ty: &str) -> &'a ColumnCipher {
    ring.column("public", "p", &format!("{side}_{ty}")).unwrap()
}

fn settings() -> SessionSettings {
    SessionSettings::new()
}

fn storage() -> impl Strategy<Value = Storage> {
    prop_oneof![Just(Storage::Bytea), Just(Storage::Text)]
}

fn date_text() -> impl Strategy<Value = String> {
    (1i32..=9999, 1u32..=12, 1u32..=28, any::<bool>()).prop_map(|(y, m, d, bc)| {
        // PostgreSQL's dates start in 4714 BC.
        let y = if bc { y % 4700 + 1 } else { y };
        format!("{y:04}-{m:02}-{d:02}{}", if bc { " BC" } else { "" })
    })
}

fn time_text() -> impl Strategy<Value = String> {
    (0u32..24, 0u32..60, 0u32..60, 0u32..1_000_000, 0usize..=6).prop_map(|(h, m, s, us, digits)| {
        let frac = if digits == 0 {
            String::new()
        } else {
            format!(".{}", &format!("{us:06}")[..digits])
        };
        format!("{h:02}:{m:02}:{s:02}{frac}")
    })
}

fn offset_text() -> impl Strategy<Value = String> {
    (
        -15i32..=15,
        prop_oneof![Just(0u32), Just(30), Just(45)],
        any::<bool>(),
    )
        .prop_map(|(h, m, colon)| {
            let sign = if h < 0 { '-' } else { '+' };
            if colon {
                format!("{sign}{:02}:{m:02}", h.abs())
            } else {
                format!("{sign}{:02}{m:02}", h.abs())
            }
        })
}

fn numeric_text() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        "[0-9]{1,30}",
        proptest::option::of("[0-9]{0,20}"),
        proptest::option::of(-40i32..40),
    )
        .prop_map(|(neg, int, frac, exp)| {
            let mut s = String::new();
            if neg {
                s.push('-');
            }
            s.push_str(&int);
            if let Some(f) = frac {
                s.push('.');
                s.push_str(&f);
            }
            if let Some(e) = exp {
                s.push_str(&format!("e{e}"));
            }
            s
        })
}

/// A valid text input for each type.
fn value() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        "[^\u{0}]{0,64}".prop_map(|s| ("text", s)),
        "[^\u{0}]{0,64}".prop_map(|s| ("varchar", s)),
        any::<i16>().prop_map(|v| ("int2", v.to_string())),
        any::<i32>().prop_map(|v| ("int4", v.to_string())),
        any::<i64>().prop_map(|v| ("int8", v.to_string())),
        prop_oneof![Just("t"), Just("false"), Just("yes"), Just("0")]
            .prop_map(|v| ("bool", v.to_string())),
        any::<[u8; 16]>().prop_map(|b| {
            let h: String = b.iter().map(|x| format!("{x:02X}")).collect();
            ("uuid", h)
        }),
        date_text().prop_map(|d| ("date", d)),
        (date_text(), time_text()).prop_map(|(d, t)| {
            // Era goes last.
            let (d, bc) = d
                .strip_suffix(" BC")
                .map_or((d.clone(), ""), |x| (x.to_string(), " BC"));
            ("timestamp", format!("{d} {t}{bc}"))
        }),
        (date_text(), time_text(), offset_text()).prop_map(|(d, t, o)| {
            let (d, bc) = d
                .strip_suffix(" BC")
                .map_or((d.clone(), ""), |x| (x.to_string(), " BC"));
            ("timestamptz", format!("{d}T{t}{o}{bc}"))
        }),
        numeric_text().prop_map(|n| ("numeric", n)),
        prop_oneof![Just("infinity"), Just("-infinity")].prop_flat_map(|s| {
            prop_oneof![Just("date"), Just("timestamp"), Just("timestamptz")]
                .prop_map(move |ty| (ty, s.to_string()))
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Text in → stored → text out → stored again is the same bytes, and the
    /// same for binary; encryption is deterministic.
    #[test]
    fn round_trips_in_both_formats((ty, input) in value(), storage in storage()) {
        let ring = &*RING;
        let st = settings();
        let c = col(ring, "a", ty);
        let stored = c.encrypt(Format::Text, input.as_bytes(), storage, &st).unwrap();
        prop_assert_eq!(&c.encrypt(Format::Text, input.as_bytes(), storage, &st).unwrap(), &stored);
        let text = c.decrypt(storage, &stored, Format::Text, &st).unwrap();
        prop_assert_eq!(&c.encrypt(Format::Text, &text, storage, &st).unwrap(), &stored);
        let binary = c.decrypt(storage, &stored, Format::Binary, &st).unwrap();
        prop_assert_eq!(&c.encrypt(Format::Binary, &binary, storage, &st).unwrap(), &stored);
        // The other storage holds the same envelope.
        let other = match storage { Storage::Bytea => Storage::Text, Storage::Text => Storage::Bytea };
        let stored2 = c.encrypt(Format::Text, input.as_bytes(), other, &st).unwrap();
        prop_assert_eq!(c.open_stored(other, &stored2).unwrap(), c.open_stored(storage, &stored).unwrap());
    }

    /// Flipping any single bit of a stored value makes decryption fail.
    #[test]
    fn any_flipped_bit_is_detected((ty, input) in value(), storage in storage(), bit in any::<proptest::sample::Index>()) {
        let ring = &*RING;
        let st = settings();
        let c = col(ring, "a", ty);
        let mut stored = c.encrypt(Format::Text, input.as_bytes(), storage, &st).unwrap();
        let i = bit.index(stored.len() * 8);
        stored[i / 8] ^= 1 << (i % 8);
        prop_assert!(c.decrypt(storage, &stored, Format::Text, &st).is_err());
    }

    /// A value of one domain never decrypts in another, and never encrypts
    /// to the same bytes.
    #[test]
    fn domains_are_separated((ty, input) in value(), storage in storage()) {
        let ring = &*RING;
        let st = settings();
        let (a, b) = (col(ring, "a", ty), col(ring, "b", ty));
        let sa = a.encrypt(Format::Text, input.as_bytes(), storage, &st).unwrap();
        let sb = b.encrypt(Format::Text, input.as_bytes(), storage, &st).unwrap();
        prop_assert_ne!(&sa, &sb);
        prop_assert!(b.decrypt(storage, &sa, Format::Text, &st).is_err());
        prop_assert!(a.decrypt(storage, &sb, Format::Text, &st).is_err());
    }

    /// Arbitrary bytes never decrypt and never panic.
    #[test]
    fn garbage_is_refused(bytes in proptest::collection::vec(any::<u8>(), 0..80), storage in storage()) {
        let ring = &*RING;
        let c = col(ring, "a", "text");
        prop_assert!(c.decrypt(storage, &bytes, Format::Text, &settings()).is_err());
    }

    /// Arbitrary client input never panics: it is accepted or refused.
    #[test]
    fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40), ty in proptest::sample::select(TYPES)) {
        let ring = &*RING;
        let c = col(ring, "a", ty);
        let _ = c.encrypt(Format::Text, &bytes, Storage::Bytea, &settings());
        let _ = c.encrypt(Format::Binary, &bytes, Storage::Bytea, &settings());
    }
}

#[test]
fn errors_name_the_column_not_the_value() {
    let ring = &*RING;
    let c = col(ring, "a", "date");
    let err = c
        .encrypt(
            Format::Text,
            b"secret-31/02/2003",
            Storage::Bytea,
            &settings(),
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("public.p.a_date"), "{msg}");
    assert!(!msg.contains("secret"), "{msg}");
    assert_eq!(err.sqlstate(), "22007");
    let err = c
        .decrypt(
            Storage::Bytea,
            b"\x01\x00\x01garbage-garbage-garbage",
            Format::Text,
            &settings(),
        )
        .unwrap_err();
    assert_eq!(err.sqlstate(), "XX001");
    assert!(err.to_string().contains("public.p.a_date"));
}
