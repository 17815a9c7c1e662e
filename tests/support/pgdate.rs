//! A `date` in PostgreSQL's binary form, so tests need no date crate.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::error::Error;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};

/// A `date` in binary form: days since 2000-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days(pub i32);

impl Days {
    /// Parses `YYYY-MM-DD`.
    pub fn parse(s: &str) -> Days {
        let mut it = s.split('-').map(|p| p.parse::<i64>().unwrap());
        let (y, m, d) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
        // Days from civil (proleptic Gregorian), shifted to 2000-01-01.
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (m + 9) % 12;
        let doy = (153 * mp + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        Days((era * 146_097 + doe - 719_468 - 10_957) as i32)
    }
}

impl ToSql for Days {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_i32(self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
    to_sql_checked!();
}

impl<'a> FromSql<'a> for Days {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Days, Box<dyn Error + Sync + Send>> {
        Ok(Days(i32::from_be_bytes(raw.try_into()?)))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
}

/// `YYYY-MM-DD` of a day number.
pub fn days_text(days: i32) -> String {
    // Civil from days (inverse of Days::parse).
    let z = i64::from(days) + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
