//! Parameter values bound to encrypted columns, encrypted at Bind in the
//! format the client chose: one value, every stored form of it for a
//! search, or an array element by element (`protocol/array.rs`).

use super::query::stale_forms;
use crate::crypto::{Format, Keyring, SessionSettings};
use crate::protocol::{array, types};
use crate::sql::Refusal;
use crate::sql::analyze::ParamBinding;

/// Encrypts one bound parameter value. The result is sent in binary
/// format: the raw envelope for `bytea` storage, the prefixed text for
/// `text` storage (a text value's binary form is its text).
pub(super) fn encrypt_param(
    keyring: Option<&Keyring>,
    binding: &ParamBinding,
    declared: u32,
    format: i16,
    value: &[u8],
    settings: &SessionSettings,
) -> Result<Vec<u8>, Refusal> {
    let col = &binding.column;
    let name = col.id.to_string();
    let cipher = keyring
        .and_then(|k| k.column_by_id(&col.id))
        .ok_or_else(|| Refusal::general(format!("no key for column {name}"), "unsupported"))?;
    let storage = col
        .storage
        .storage()
        .ok_or_else(|| Refusal::on_column(&name, "storing ciphertext in this type", "storage"))?;
    let type_name = col.value_type.name();
    let bad = |e: crate::crypto::CryptoError| Refusal::bad_value(&name, type_name, e.sqlstate());
    let app = types::pg_type(col.value_type).0;
    let fits =
        |oid: u32| oid == 0 || oid == app || (types::is_text_like(oid) && types::is_text_like(app));
    let format = if format == 1 {
        if !(fits(declared) || binding.array && fits_array(declared, app)) {
            return Err(Refusal::on_column(
                &name,
                format!("a binary parameter of type OID {declared} (the column holds {type_name})"),
                "unsupported",
            ));
        }
        Format::Binary
    } else {
        Format::Text
    };
    let elem_oid = match storage {
        crate::config::Storage::Bytea => 17,
        crate::config::Storage::Text => 25,
    };
    if cipher.form_count() != col.forms {
        // Prepared before a reload changed the key versions or `migrating`:
        // a search written for one form would miss the others.
        return Err(stale_forms(&name));
    }
    if !binding.array {
        if binding.expand {
            // Every stored form, in the order the statement was written for.
            let forms = cipher
                .forms(format, value, storage, settings)
                .map_err(bad)?;
            let forms: Vec<Option<Vec<u8>>> = forms.into_iter().map(Some).collect();
            return Ok(array::encode_binary(elem_oid, &forms).to_vec());
        }
        return cipher
            .encrypt(format, value, storage, settings)
            .map_err(bad);
    }
    let malformed = |e: array::ArrayError| {
        Refusal::on_column(&name, format!("an array parameter: {e}"), "unsupported")
    };
    let elements: Vec<Option<Vec<u8>>> = match format {
        Format::Text => array::parse_text(value).map_err(malformed)?,
        Format::Binary => {
            if value.len() >= 12 {
                let elem = u32::from_be_bytes([value[8], value[9], value[10], value[11]]);
                if !fits(elem) {
                    return Err(Refusal::on_column(
                        &name,
                        format!("an array of type OID {elem} (the column holds {type_name})"),
                        "unsupported",
                    ));
                }
            }
            array::parse_binary(value)
                .map_err(malformed)?
                .into_iter()
                .map(|e| e.map(<[u8]>::to_vec))
                .collect()
        }
    };
    let mut sealed = Vec::with_capacity(elements.len());
    for e in elements {
        match e {
            None => sealed.push(None),
            // `= ANY` / `<> ALL` over every form of every element.
            Some(v) if binding.expand => sealed.extend(
                cipher
                    .forms(format, &v, storage, settings)
                    .map_err(bad)?
                    .into_iter()
                    .map(Some),
            ),
            Some(v) => sealed.push(Some(
                cipher.encrypt(format, &v, storage, settings).map_err(bad)?,
            )),
        }
    }
    Ok(array::encode_binary(elem_oid, &sealed).to_vec())
}

fn fits_array(declared: u32, app: u32) -> bool {
    declared == types::array_of(app)
        || (types::is_text_like(app) && matches!(declared, 1009 | 1015 | 1014))
}
