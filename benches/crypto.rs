//! Cost of encrypting and decrypting one value through the whole path
//! (canonical encoding, envelope, storage encoding). Target: < 1 µs each
//! for a 32-byte text value.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use criterion::{Criterion, criterion_group, criterion_main};
use pgveil::config::{Config, Storage};
use pgveil::crypto::{Format, Keyring, MasterKey, SessionSettings};

fn keyring() -> Keyring {
    let toml = "[listen]\naddress = \"127.0.0.1:1\"\n[upstream]\naddress = \"127.0.0.1:2\"\n\
                [keys]\nmaster_key_env = \"UNUSED\"\n\
                [[encrypt]]\ntable = \"customers\"\ncolumn = \"email\"\n\
                [[encrypt]]\ntable = \"customers\"\ncolumn = \"born\"\ntype = \"date\"\n\
                [[encrypt]]\ntable = \"customers\"\ncolumn = \"balance\"\ntype = \"numeric\"\n";
    let config = Config::parse(toml, "bench").unwrap();
    Keyring::from_master_key(
        &MasterKey::from_bytes(vec![7; 32]).unwrap(),
        &config.encrypt,
    )
}

fn bench(c: &mut Criterion) {
    let ring = keyring();
    let st = SessionSettings::new();
    let col = ring.column("public", "customers", "email").unwrap();
    let value = b"ada.lovelace@analytical-eng.org!"; // 32 bytes
    assert_eq!(value.len(), 32);

    for storage in [Storage::Text, Storage::Bytea] {
        let stored = col.encrypt(Format::Text, value, storage, &st).unwrap();
        c.bench_function(&format!("encrypt text32 -> {storage}"), |b| {
            b.iter(|| {
                col.encrypt(Format::Text, black_box(value), storage, &st)
                    .unwrap()
            })
        });
        c.bench_function(&format!("decrypt {storage} -> text32"), |b| {
            b.iter(|| {
                col.decrypt(storage, black_box(&stored), Format::Text, &st)
                    .unwrap()
            })
        });
    }

    let date = ring.column("public", "customers", "born").unwrap();
    c.bench_function("encrypt date text -> bytea", |b| {
        b.iter(|| {
            date.encrypt(Format::Text, black_box(b"1815-12-10"), Storage::Bytea, &st)
                .unwrap()
        })
    });
    let num = ring.column("public", "customers", "balance").unwrap();
    c.bench_function("encrypt numeric text -> bytea", |b| {
        b.iter(|| {
            num.encrypt(Format::Text, black_box(b"123456.78"), Storage::Bytea, &st)
                .unwrap()
        })
    });

    // Baselines: the raw crate, and building a cipher per call (the design
    // the per-domain pool avoids).
    let key = [7u8; 64];
    let mut raw = Aes256Siv::new((&key).into());
    let ad = b"\x01\x00\x01\x01customers.email";
    c.bench_function("raw aes-siv encrypt 32", |b| {
        b.iter(|| raw.encrypt([black_box(ad)], black_box(value)).unwrap())
    });
    c.bench_function("aes-siv construct per call + encrypt 32", |b| {
        b.iter(|| {
            let mut s = Aes256Siv::new((&key).into());
            s.encrypt([black_box(ad)], black_box(value)).unwrap()
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
