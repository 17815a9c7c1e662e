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
