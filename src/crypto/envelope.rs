//! Envelope format v1 and its two storage encodings.
//!
//! ```text
//! offset  size  field
//! 0       1     format version, 0x01
//! 1       2     key version, unsigned big-endian, >= 1
//! 3       16    SIV tag (RFC 5297 V)
//! 19      n     AES-CTR ciphertext of the canonical plaintext (n >= 0)
//! ```
//!
//! The associated data (one S2V component) is the 3-byte header, the type
//! class byte of the domain's value type, and the domain name in UTF-8.
//!
//! Storage: `bytea` holds the envelope as is; `text` holds [`TEXT_PREFIX`]
//! followed by the envelope in standard base64 with padding. See
//! `docs/FORMAT.md`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::error::DecryptFailure;
use super::hierarchy::{DomainCipher, KeyVersion, SIV_TAG_LEN};
use crate::config::Storage;

/// Format version byte of this envelope layout.
pub const FORMAT_V1: u8 = 0x01;
/// Length of the header: format version and key version.
pub const HEADER_LEN: usize = 3;
/// Length of an envelope holding an empty plaintext.
pub const MIN_ENVELOPE_LEN: usize = HEADER_LEN + SIV_TAG_LEN;
/// Prefix of the text storage encoding.
pub const TEXT_PREFIX: &str = "pgv:";

/// The 3-byte header of a v1 envelope.
pub fn header(version: KeyVersion) -> [u8; HEADER_LEN] {
    let v = version.get().to_be_bytes();
    [FORMAT_V1, v[0], v[1]]
}

/// Builds the associated data of a domain: header, type class, domain name.
pub fn associated_data(version: KeyVersion, type_class: u8, domain: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(HEADER_LEN + 1 + domain.len());
    ad.extend_from_slice(&header(version));
    ad.push(type_class);
    ad.extend_from_slice(domain.as_bytes());
    ad
}

/// Reads the key version of an envelope, checking the format version and
/// the minimum length.
pub fn key_version(envelope: &[u8]) -> Result<KeyVersion, DecryptFailure> {
    if envelope.len() < MIN_ENVELOPE_LEN {
        return Err(DecryptFailure::Malformed);
    }
    let (format, v) = match envelope {
        [format, hi, lo, ..] => (*format, u16::from_be_bytes([*hi, *lo])),
        _ => return Err(DecryptFailure::Malformed),
    };
    if format != FORMAT_V1 {
        return Err(DecryptFailure::UnknownFormat(format));
    }
    KeyVersion::new(v).ok_or(DecryptFailure::UnknownKeyVersion(v))
}

/// Seals a canonical plaintext into a v1 envelope. `ad` must be
/// [`associated_data`] for `version`.
pub fn seal(
    cipher: &DomainCipher,
    version: KeyVersion,
    ad: &[u8],
    canonical: &[u8],
) -> Result<Vec<u8>, aes_siv::Error> {
    let mut out = Vec::with_capacity(MIN_ENVELOPE_LEN + canonical.len());
    out.extend_from_slice(&header(version));
    out.extend_from_slice(&[0u8; SIV_TAG_LEN]);
    out.extend_from_slice(canonical);
    let (head, data) = out.split_at_mut(MIN_ENVELOPE_LEN);
    let tag = cipher.seal_detached(ad, data)?;
    head[HEADER_LEN..].copy_from_slice(&tag);
    Ok(out)
}

/// Opens a v1 envelope whose header has been checked with [`key_version`],
/// returning the canonical plaintext.
pub fn open(cipher: &DomainCipher, ad: &[u8], envelope: &[u8]) -> Result<Vec<u8>, DecryptFailure> {
    let (head, data) = envelope
        .split_at_checked(MIN_ENVELOPE_LEN)
        .ok_or(DecryptFailure::Malformed)?;
    // The header is part of `ad`; a header that differs fails authentication.
    if head.get(..HEADER_LEN) != ad.get(..HEADER_LEN) {
        return Err(DecryptFailure::Authentication);
    }
    let mut tag = [0u8; SIV_TAG_LEN];
    tag.copy_from_slice(&head[HEADER_LEN..]);
    let mut plain = data.to_vec();
    cipher
        .open_detached(ad, &mut plain, &tag)
        .map_err(|_| DecryptFailure::Authentication)?;
    Ok(plain)
}

/// Encodes an envelope for storage: as is for `bytea`, prefixed base64 for
/// `text`. The result is the column value's bytes (binary format of
/// `bytea`, or the text of a `text`/`varchar` value).
pub fn encode_storage(storage: Storage, envelope: Vec<u8>) -> Vec<u8> {
    match storage {
        Storage::Bytea => envelope,
        Storage::Text => {
            let mut s = String::with_capacity(TEXT_PREFIX.len() + envelope.len().div_ceil(3) * 4);
            s.push_str(TEXT_PREFIX);
            STANDARD.encode_string(&envelope, &mut s);
            s.into_bytes()
        }
    }
}

/// Decodes a stored value into its envelope. Strict: wrong prefix,
/// non-canonical base64 or trailing bytes are [`DecryptFailure::Malformed`].
pub fn decode_storage(storage: Storage, stored: &[u8]) -> Result<Vec<u8>, DecryptFailure> {
    match storage {
        Storage::Bytea => Ok(stored.to_vec()),
        Storage::Text => {
            let b64 = stored
                .strip_prefix(TEXT_PREFIX.as_bytes())
                .ok_or(DecryptFailure::Malformed)?;
            STANDARD.decode(b64).map_err(|_| DecryptFailure::Malformed)
        }
    }
}

/// Whether a stored value looks like a pgveil envelope (text prefix, or v1
/// header for bytea). Does not authenticate it.
pub fn looks_like_envelope(storage: Storage, stored: &[u8]) -> bool {
    match storage {
        Storage::Bytea => key_version(stored).is_ok(),
        Storage::Text => stored.starts_with(TEXT_PREFIX.as_bytes()),
    }
}

/// PostgreSQL's hex text form of a `bytea` value: `\x` and lowercase hex.
pub fn bytea_to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("\\x");
    for b in bytes {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

/// Parses PostgreSQL's hex text form of a `bytea` value (`\x` then pairs of
/// hex digits, whitespace allowed between pairs, as `byteain` accepts).
pub fn bytea_from_hex(text: &[u8]) -> Result<Vec<u8>, DecryptFailure> {
    let hex = text
        .strip_prefix(b"\\x")
        .or_else(|| text.strip_prefix(b"\\X"))
        .ok_or(DecryptFailure::Malformed)?;
    let mut out = Vec::with_capacity(hex.len() / 2);
    let mut it = hex.iter().copied().filter(|c| !c.is_ascii_whitespace());
    while let Some(hi) = it.next() {
        let lo = it.next().ok_or(DecryptFailure::Malformed)?;
        let hi = hex_val(hi).ok_or(DecryptFailure::Malformed)?;
        let lo = hex_val(lo).ok_or(DecryptFailure::Malformed)?;
        out.push(hi << 4 | lo);
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn hex_round_trip() {
        let b = vec![0u8, 1, 0xab, 0xff];
        let h = bytea_to_hex(&b);
        assert_eq!(h, "\\x0001abff");
        assert_eq!(bytea_from_hex(h.as_bytes()).unwrap(), b);
        assert_eq!(bytea_from_hex(b"\\x00 01\nAB ff").unwrap(), b);
        assert!(bytea_from_hex(b"\\x0").is_err());
        assert!(bytea_from_hex(b"0001").is_err());
        assert!(bytea_from_hex(b"\\x0g").is_err());
    }

    #[test]
    fn rejects_short_and_unknown_envelopes() {
        assert_eq!(key_version(&[1, 0, 1]), Err(DecryptFailure::Malformed));
        let mut e = vec![0u8; MIN_ENVELOPE_LEN];
        e[0] = 2;
        assert_eq!(key_version(&e), Err(DecryptFailure::UnknownFormat(2)));
        e[0] = 1;
        assert_eq!(key_version(&e), Err(DecryptFailure::UnknownKeyVersion(0)));
        e[2] = 1;
        assert_eq!(key_version(&e), Ok(KeyVersion::V1));
    }

    #[test]
    fn rejects_bad_text_storage() {
        assert!(decode_storage(Storage::Text, b"AQAB").is_err());
        assert!(decode_storage(Storage::Text, b"pgv:AQAB!").is_err());
        // Non-canonical trailing bits.
        assert!(decode_storage(Storage::Text, b"pgv:AR==").is_err());
        assert_eq!(decode_storage(Storage::Text, b"pgv:AQ==").unwrap(), vec![1]);
    }
}
