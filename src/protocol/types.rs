//! PostgreSQL type OIDs and sizes of the types an encrypted column can
//! present to the application.

use crate::config::ValueType;

/// `(type OID, typlen)` as RowDescription reports them.
pub fn pg_type(t: ValueType) -> (u32, i16) {
    match t {
        ValueType::Text => (25, -1),
        ValueType::Varchar => (1043, -1),
        ValueType::Int2 => (21, 2),
        ValueType::Int4 => (23, 4),
        ValueType::Int8 => (20, 8),
        ValueType::Bool => (16, 1),
        ValueType::Uuid => (2950, 16),
        ValueType::Date => (1082, 4),
        ValueType::Timestamp => (1114, 8),
        ValueType::Timestamptz => (1184, 8),
        ValueType::Numeric => (1700, -1),
    }
}

/// The array type OID of a type an encrypted column can present.
pub fn array_of(oid: u32) -> u32 {
    match oid {
        25 => 1009,
        1043 => 1015,
        21 => 1005,
        23 => 1007,
        20 => 1016,
        16 => 1000,
        2950 => 2951,
        1082 => 1182,
        1114 => 1115,
        1184 => 1185,
        1700 => 1231,
        17 => 1001,
        _ => 0,
    }
}

/// Types whose binary form is the UTF-8 text itself.
pub fn is_text_like(oid: u32) -> bool {
    matches!(oid, 25 | 1043 | 1042 | 19 | 705)
}
