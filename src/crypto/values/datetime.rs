//! `date`, `timestamp`, `timestamptz`: canonical plaintexts are PostgreSQL's
//! binary formats (days, or microseconds, since 2000-01-01; timestamptz in
//! UTC; infinities as the extreme integers).
//!
//! Text input accepts the ISO 8601 forms drivers send (see `docs/FORMAT.md`);
//! text output follows PostgreSQL's `EncodeDateOnly`/`EncodeDateTime` for
//! every `DateStyle`, with the session's `TimeZone` for `timestamptz`.

use super::super::error::{ValueError, sqlstate};
use super::settings::{DateOrder, OutputStyle};
use super::{Format, SessionSettings};
use crate::config::ValueType;

const POSTGRES_EPOCH_JDATE: i64 = 2_451_545;
const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// First valid date (4714-11-24 BC, Julian day 0), in days from 2000-01-01.
const MIN_DATE: i64 = -POSTGRES_EPOCH_JDATE;
/// First date past the end (5874898-01-01).
const END_DATE: i64 = 2_147_483_494 - POSTGRES_EPOCH_JDATE;
/// First valid timestamp, microseconds from 2000-01-01.
const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// First timestamp past the end (294277-01-01 00:00).
const END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;
/// Latest offset PostgreSQL accepts in input (15:59:59).
const MAX_TZ_DISP: i64 = 15 * 3600 + 59 * 60 + 59;

/// A parsed date/time: calendar fields plus an optional explicit offset.
struct Parsed {
    year: i64,
    month: i64,
    day: i64,
    /// Microseconds since local midnight (may be 24:00:00 or include :60).
    time: i64,
    /// Seconds east of UTC, when the input named an offset.
    offset: Option<i64>,
}

enum Input {
    Infinity,
    NegInfinity,
    Value(Parsed),
}

fn syntax(ty: &str) -> ValueError {
    ValueError::syntax(ty)
}

fn field_overflow() -> ValueError {
    ValueError::new(
        sqlstate::DATETIME_FIELD_OVERFLOW,
        "date/time field value out of range",
    )
}

fn out_of_range(ty: &str) -> ValueError {
    ValueError::new(
        sqlstate::DATETIME_FIELD_OVERFLOW,
        format!(
            "{} out of range",
            if ty == "date" { "date" } else { "timestamp" }
        ),
    )
}

/// PostgreSQL's `date2j`, with astronomical years (1 BC = 0).
fn date2j(y: i64, m: i64, d: i64) -> i64 {
    let (m, y) = if m > 2 {
        (m + 1, y + 4800)
    } else {
        (m + 13, y + 4799)
    };
    let century = y.div_euclid(100);
    let mut julian = y * 365 - 32167;
    julian += y.div_euclid(4) - century + century.div_euclid(4);
    julian += 7834 * m / 256 + d;
    julian
}

/// PostgreSQL's `j2date` for a Julian day >= 0.
fn j2date(jd: i64) -> (i64, i64, i64) {
    let mut julian = jd + 32044;
    let mut quad = julian / 146_097;
    let extra = (julian - quad * 146_097) * 4 + 3;
    julian += 60 + quad * 3 + extra / 146_097;
    quad = julian / 1461;
    julian -= quad * 1461;
    let mut y = julian * 4 / 1461;
    julian = if y != 0 {
        (julian + 305) % 365
    } else {
        (julian + 306) % 366
    } + 123;
    y += quad * 4;
    let year = y - 4800;
    let q = julian * 2141 / 65536;
    let day = julian - 7834 * q / 256;
    let month = (q + 10) % 12 + 1;
    (year, month, day)
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A tiny cursor over ASCII input.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn digits(&mut self) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.s.get(start..self.pos).unwrap_or(&[])
    }
    fn spaces(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|c| c == b' ' || c == b'\t') {
            self.pos += 1;
        }
        self.pos - start
    }
    fn rest(&self) -> &'a [u8] {
        self.s.get(self.pos..).unwrap_or(&[])
    }
    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }
}

fn num(d: &[u8]) -> i64 {
    d.iter().fold(0i64, |acc, c| acc * 10 + i64::from(c - b'0'))
}

/// Parses the accepted text forms. `ty` names the type in errors.
fn parse(input: &[u8], ty: &str) -> Result<Input, ValueError> {
    let s = super::trim_pg_space(input);
    let lower = s.to_ascii_lowercase();
    match lower.as_slice() {
        b"infinity" | b"+infinity" => return Ok(Input::Infinity),
        b"-infinity" => return Ok(Input::NegInfinity),
        b"epoch" => {
            return Ok(Input::Value(Parsed {
                year: 1970,
                month: 1,
                day: 1,
                time: 0,
                offset: Some(0),
            }));
        }
        b"now" | b"today" | b"tomorrow" | b"yesterday" | b"allballs" => {
            return Err(ValueError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "special {ty} values that depend on the current time are not supported \
                     for encrypted columns; send the value itself"
                ),
            ));
        }
        _ => {}
    }
    let mut c = Cursor { s, pos: 0 };
    // Date: YYYY-MM-DD, at least four year digits.
    let year = c.digits();
    if year.len() < 4 || year.len() > 9 || !c.eat(b'-') {
        return Err(syntax(ty));
    }
    let month = c.digits();
    if month.is_empty() || month.len() > 2 || !c.eat(b'-') {
        return Err(syntax(ty));
    }
    let day = c.digits();
    if day.is_empty() || day.len() > 2 {
        return Err(syntax(ty));
    }
    let mut p = Parsed {
        year: num(year),
        month: num(month),
        day: num(day),
        time: 0,
        offset: None,
    };
    // Time, after `T` or spaces.
    let before = c.pos;
    let sep = c.eat(b'T') || c.eat(b't') || c.spaces() > 0;
    if sep && c.peek().is_some_and(|d| d.is_ascii_digit()) {
        p.time = parse_time(&mut c, ty)?;
    } else {
        c.pos = before;
    }
    // Offset or zone name.
    c.spaces();
    match c.peek() {
        Some(b'+' | b'-') => p.offset = Some(parse_offset(&mut c, ty)?),
        Some(b'Z' | b'z') if !c.rest().to_ascii_lowercase().starts_with(b"zulu") => {
            c.pos += 1;
            p.offset = Some(0);
        }
        Some(ch) if ch.is_ascii_alphabetic() => {
            let word: Vec<u8> = c
                .rest()
                .iter()
                .take_while(|b| b.is_ascii_alphabetic())
                .map(u8::to_ascii_lowercase)
                .collect();
            match word.as_slice() {
                b"utc" | b"gmt" | b"z" | b"zulu" => {
                    c.pos += word.len();
                    p.offset = Some(0);
                }
                b"bc" | b"ad" => {}
                _ => {
                    return Err(ValueError::new(
                        sqlstate::INVALID_DATETIME_FORMAT,
                        format!(
                            "invalid input syntax for type {ty}: only numeric UTC offsets \
                             and UTC/GMT/Z are accepted as time zones"
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
    // Era.
    c.spaces();
    let rest = c.rest().to_ascii_lowercase();
    let bc = match rest.as_slice() {
        b"bc" => true,
        b"ad" | b"" => false,
        _ => return Err(syntax(ty)),
    };
    c.pos = c.s.len();
    debug_assert!(c.at_end());
    if bc {
        if p.year == 0 {
            return Err(field_overflow());
        }
        p.year = 1 - p.year;
    }
    if p.month < 1 || p.month > 12 || p.day < 1 || p.day > days_in_month(p.year, p.month) {
        return Err(field_overflow());
    }
    Ok(Input::Value(p))
}

/// `hh:mm[:ss[.frac]]` as microseconds since midnight.
fn parse_time(c: &mut Cursor<'_>, ty: &str) -> Result<i64, ValueError> {
    let h = c.digits();
    if h.is_empty() || h.len() > 2 || !c.eat(b':') {
        return Err(syntax(ty));
    }
    let m = c.digits();
    if m.len() != 2 {
        return Err(syntax(ty));
    }
    let (mut sec, mut fsec) = (0i64, 0i64);
    if c.eat(b':') {
        let s = c.digits();
        if s.len() != 2 {
            return Err(syntax(ty));
        }
        sec = num(s);
        if c.eat(b'.') {
            let f = c.digits();
            if f.is_empty() {
                return Err(syntax(ty));
            }
            fsec = fraction_to_usec(f);
        }
    }
    let (h, m) = (num(h), num(m));
    if h > 24 || m > 59 || sec > 60 || (h == 24 && (m > 0 || sec > 0 || fsec > 0)) {
        return Err(field_overflow());
    }
    Ok(((h * 60 + m) * 60 + sec) * USECS_PER_SEC + fsec)
}

/// PostgreSQL: `rint(strtod("0.<digits>") * 1000000)`, ties to even.
fn fraction_to_usec(digits: &[u8]) -> i64 {
    if digits.len() <= 6 {
        let mut v = num(digits);
        for _ in digits.len()..6 {
            v *= 10;
        }
        return v;
    }
    let text = format!("0.{}", String::from_utf8_lossy(digits));
    let frac: f64 = text.parse().unwrap_or(0.0);
    // Bounded by 1_000_000, so the cast is exact.
    (frac * 1_000_000.0).round_ties_even() as i64
}

/// `+hh`, `+hhmm`, `+hhmmss`, `+hh:mm`, `+hh:mm:ss`, as seconds east of UTC.
fn parse_offset(c: &mut Cursor<'_>, ty: &str) -> Result<i64, ValueError> {
    let sign = if c.eat(b'-') {
        -1
    } else {
        c.eat(b'+');
        1
    };
    let first = c.digits();
    let (h, mut m, mut s) = match first.len() {
        1 | 2 => (num(first), 0, 0),
        4 => (num(&first[..2]), num(&first[2..]), 0),
        6 => (num(&first[..2]), num(&first[2..4]), num(&first[4..])),
        _ => return Err(syntax(ty)),
    };
    if first.len() <= 2 && c.eat(b':') {
        let mm = c.digits();
        if mm.len() != 2 {
            return Err(syntax(ty));
        }
        m = num(mm);
        if c.eat(b':') {
            let ss = c.digits();
            if ss.len() != 2 {
                return Err(syntax(ty));
            }
            s = num(ss);
        }
    }
    if m > 59 || s > 59 {
        return Err(field_overflow());
    }
    let total = h * 3600 + m * 60 + s;
    if total > MAX_TZ_DISP {
        return Err(ValueError::new(
            "22009",
            "time zone displacement out of range",
        ));
    }
    Ok(sign * total)
}

fn local_usecs(p: &Parsed, ty: &str) -> Result<i64, ValueError> {
    let days = date2j(p.year, p.month, p.day) - POSTGRES_EPOCH_JDATE;
    if !(MIN_DATE..END_DATE).contains(&days) {
        return Err(out_of_range(ty));
    }
    days.checked_mul(USECS_PER_DAY)
        .and_then(|d| d.checked_add(p.time))
        .ok_or_else(|| out_of_range(ty))
}

fn check_timestamp(t: i64, ty: &str) -> Result<Vec<u8>, ValueError> {
    if !(MIN_TIMESTAMP..END_TIMESTAMP).contains(&t) {
        return Err(out_of_range(ty));
    }
    Ok(t.to_be_bytes().to_vec())
}

pub(super) fn date_from_text(input: &[u8]) -> Result<Vec<u8>, ValueError> {
    let days = match parse(input, "date")? {
        Input::Infinity => i64::from(i32::MAX),
        Input::NegInfinity => i64::from(i32::MIN),
        Input::Value(p) => {
            let d = date2j(p.year, p.month, p.day) - POSTGRES_EPOCH_JDATE;
            if !(MIN_DATE..END_DATE).contains(&d) {
                return Err(out_of_range("date"));
            }
            d
        }
    };
    let days = i32::try_from(days).map_err(|_| out_of_range("date"))?;
    Ok(days.to_be_bytes().to_vec())
}

pub(super) fn date_from_binary(input: &[u8]) -> Result<Vec<u8>, ValueError> {
    let bytes: [u8; 4] = input
        .try_into()
        .map_err(|_| ValueError::binary("date", "expected 4 bytes"))?;
    let d = i32::from_be_bytes(bytes);
    if d != i32::MAX && d != i32::MIN && !(MIN_DATE..END_DATE).contains(&i64::from(d)) {
        return Err(out_of_range("date"));
    }
    Ok(bytes.to_vec())
}

pub(super) fn timestamp_from_text(input: &[u8]) -> Result<Vec<u8>, ValueError> {
    match parse(input, "timestamp")? {
        Input::Infinity => Ok(i64::MAX.to_be_bytes().to_vec()),
        Input::NegInfinity => Ok(i64::MIN.to_be_bytes().to_vec()),
        // A timestamp without time zone ignores an offset, as PostgreSQL does
        // ("epoch" is 1970-01-01 00:00:00 either way).
        Input::Value(p) => check_timestamp(local_usecs(&p, "timestamp")?, "timestamp"),
    }
}

pub(super) fn timestamptz_from_text(
    input: &[u8],
    settings: &SessionSettings,
) -> Result<Vec<u8>, ValueError> {
    match parse(input, "timestamptz")? {
        Input::Infinity => Ok(i64::MAX.to_be_bytes().to_vec()),
        Input::NegInfinity => Ok(i64::MIN.to_be_bytes().to_vec()),
        Input::Value(p) => {
            let local = local_usecs(&p, "timestamptz")?;
            let offset = match p.offset {
                Some(o) => o,
                None => i64::from(settings.time_zone().offset()?),
            };
            let utc = local
                .checked_sub(offset * USECS_PER_SEC)
                .ok_or_else(|| out_of_range("timestamptz"))?;
            check_timestamp(utc, "timestamptz")
        }
    }
}

pub(super) fn timestamp_from_binary(ty: ValueType, input: &[u8]) -> Result<Vec<u8>, ValueError> {
    let bytes: [u8; 8] = input
        .try_into()
        .map_err(|_| ValueError::binary(ty.name(), "expected 8 bytes"))?;
    let t = i64::from_be_bytes(bytes);
    if t == i64::MAX || t == i64::MIN {
        return Ok(bytes.to_vec());
    }
    check_timestamp(t, ty.name())
}

/// Year as PostgreSQL prints it: at least 4 digits, BC years positive.
fn push_year(out: &mut String, year: i64) {
    let y = if year > 0 { year } else { 1 - year };
    out.push_str(&format!("{y:04}"));
}

fn push_date(out: &mut String, style: OutputStyle, order: DateOrder, y: i64, m: i64, d: i64) {
    match style {
        OutputStyle::Iso => {
            push_year(out, y);
            out.push_str(&format!("-{m:02}-{d:02}"));
        }
        OutputStyle::Sql | OutputStyle::Postgres => {
            let sep = if style == OutputStyle::Sql { '/' } else { '-' };
            if order == DateOrder::Dmy {
                out.push_str(&format!("{d:02}{sep}{m:02}{sep}"));
            } else {
                out.push_str(&format!("{m:02}{sep}{d:02}{sep}"));
            }
            push_year(out, y);
        }
        OutputStyle::German => {
            out.push_str(&format!("{d:02}.{m:02}."));
            push_year(out, y);
        }
    }
}

/// `hh:mm:ss[.ffffff]` with trailing zeros of the fraction trimmed.
fn push_time(out: &mut String, time: i64) {
    let secs = time / USECS_PER_SEC;
    let fsec = time % USECS_PER_SEC;
    out.push_str(&format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    ));
    if fsec != 0 {
        let f = format!("{fsec:06}");
        out.push('.');
        out.push_str(f.trim_end_matches('0'));
    }
}

/// PostgreSQL's `EncodeTimezone` for an offset in seconds east of UTC.
fn push_offset(out: &mut String, east: i64) {
    let a = east.abs();
    let (h, m, s) = (a / 3600, (a / 60) % 60, a % 60);
    out.push(if east >= 0 { '+' } else { '-' });
    out.push_str(&format!("{h:02}"));
    if s != 0 {
        out.push_str(&format!(":{m:02}:{s:02}"));
    } else if m != 0 {
        out.push_str(&format!(":{m:02}"));
    }
}

pub(super) fn date_output(
    format: Format,
    canonical: &[u8],
    settings: &SessionSettings,
) -> Result<Vec<u8>, ValueError> {
    let bytes: [u8; 4] = canonical
        .try_into()
        .map_err(|_| super::bad_canonical("date"))?;
    let d = i32::from_be_bytes(bytes);
    if format == Format::Binary {
        return Ok(bytes.to_vec());
    }
    match d {
        i32::MAX => return Ok(b"infinity".to_vec()),
        i32::MIN => return Ok(b"-infinity".to_vec()),
        _ => {}
    }
    let ds = settings.date_style()?;
    let jd = i64::from(d) + POSTGRES_EPOCH_JDATE;
    if jd < 0 {
        return Err(super::bad_canonical("date"));
    }
    let (y, m, day) = j2date(jd);
    let mut out = String::with_capacity(16);
    push_date(&mut out, ds.style, ds.order, y, m, day);
    if y <= 0 {
        out.push_str(" BC");
    }
    Ok(out.into_bytes())
}

pub(super) fn timestamp_output(
    ty: ValueType,
    format: Format,
    canonical: &[u8],
    settings: &SessionSettings,
) -> Result<Vec<u8>, ValueError> {
    let bytes: [u8; 8] = canonical
        .try_into()
        .map_err(|_| super::bad_canonical(ty.name()))?;
    let t = i64::from_be_bytes(bytes);
    if format == Format::Binary {
        return Ok(bytes.to_vec());
    }
    match t {
        i64::MAX => return Ok(b"infinity".to_vec()),
        i64::MIN => return Ok(b"-infinity".to_vec()),
        _ => {}
    }
    let ds = settings.date_style()?;
    let with_tz = ty == ValueType::Timestamptz;
    let (local, east, abbrev) = if with_tz {
        let (east, abbrev) = match settings.time_zone() {
            super::TimeZone::Fixed { utc_offset, abbrev } => {
                (i64::from(*utc_offset), abbrev.as_str())
            }
            tz @ super::TimeZone::Unsupported(_) => {
                tz.offset()?;
                (0, "")
            }
        };
        let local = t
            .checked_add(east * USECS_PER_SEC)
            .ok_or_else(|| out_of_range(ty.name()))?;
        (local, east, abbrev)
    } else {
        (t, 0, "")
    };
    let days = local.div_euclid(USECS_PER_DAY);
    let time = local.rem_euclid(USECS_PER_DAY);
    let jd = days + POSTGRES_EPOCH_JDATE;
    if jd < 0 {
        return Err(super::bad_canonical(ty.name()));
    }
    let (y, m, d) = j2date(jd);
    let mut out = String::with_capacity(40);
    match ds.style {
        OutputStyle::Iso => {
            push_date(&mut out, ds.style, ds.order, y, m, d);
            out.push(' ');
            push_time(&mut out, time);
            if with_tz {
                push_offset(&mut out, east);
            }
        }
        OutputStyle::Sql | OutputStyle::German => {
            push_date(&mut out, ds.style, ds.order, y, m, d);
            out.push(' ');
            push_time(&mut out, time);
            if with_tz {
                out.push(' ');
                out.push_str(abbrev);
            }
        }
        OutputStyle::Postgres => {
            const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            let wday = usize::try_from((jd + 1).rem_euclid(7)).unwrap_or(0);
            let month = usize::try_from(m - 1).unwrap_or(0);
            out.push_str(DAYS.get(wday).copied().unwrap_or("???"));
            out.push(' ');
            let mon = MONTHS.get(month).copied().unwrap_or("???");
            if ds.order == DateOrder::Dmy {
                out.push_str(&format!("{d:02} {mon}"));
            } else {
                out.push_str(&format!("{mon} {d:02}"));
            }
            out.push(' ');
            push_time(&mut out, time);
            out.push(' ');
            push_year(&mut out, y);
            if with_tz {
                out.push(' ');
                out.push_str(abbrev);
            }
        }
    }
    if y <= 0 {
        out.push_str(" BC");
    }
    Ok(out.into_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ts(s: &str) -> i64 {
        i64::from_be_bytes(
            timestamp_from_text(s.as_bytes())
                .unwrap()
                .try_into()
                .unwrap(),
        )
    }

    fn tstz(s: &str) -> i64 {
        let st = SessionSettings::new();
        i64::from_be_bytes(
            timestamptz_from_text(s.as_bytes(), &st)
                .unwrap()
                .try_into()
                .unwrap(),
        )
    }

    fn show(ty: ValueType, canon: &[u8], ds: &str, tz: &str) -> String {
        let st = SessionSettings::new()
            .with("DateStyle", ds)
            .with("TimeZone", tz);
        let out = match ty {
            ValueType::Date => date_output(Format::Text, canon, &st),
            _ => timestamp_output(ty, Format::Text, canon, &st),
        };
        String::from_utf8(out.unwrap()).unwrap()
    }

    #[test]
    fn calendar_round_trips() {
        for jd in [
            0,
            1,
            59,
            60,
            2_451_545,
            2_451_604,
            2_147_483_493,
            1_721_425,
            1_721_426,
        ] {
            let (y, m, d) = j2date(jd);
            assert_eq!(date2j(y, m, d), jd, "{y}-{m}-{d}");
        }
        assert_eq!(j2date(2_451_545), (2000, 1, 1));
        assert_eq!(j2date(0), (-4713, 11, 24));
    }

    #[test]
    fn parses_iso_forms() {
        assert_eq!(ts("2000-01-01 00:00:00"), 0);
        assert_eq!(ts("2000-01-01T00:00:01.5"), 1_500_000);
        assert_eq!(ts("2000-01-01 00:00:01.5+05"), 1_500_000);
        assert_eq!(ts("2000-01-01"), 0);
        assert_eq!(ts("2000-1-2 24:00"), 2 * USECS_PER_DAY);
        assert_eq!(ts("1999-12-31 23:59:60"), 0);
        assert_eq!(ts("2000-01-01 00:00:00.0000005"), 0);
        assert_eq!(ts("2000-01-01 00:00:00.0000015"), 2);
        assert_eq!(tstz("2000-01-01 01:00:00+01"), 0);
        assert_eq!(tstz("2000-01-01T01:30:00+0130"), 0);
        assert_eq!(tstz("1999-12-31T23:00:00-01:00"), 0);
        assert_eq!(tstz("2000-01-01 00:00:00Z"), 0);
        assert_eq!(tstz("2000-01-01 00:00:00 UTC"), 0);
        assert_eq!(tstz("epoch"), -946_684_800 * USECS_PER_SEC);
        assert_eq!(ts("infinity"), i64::MAX);
        assert_eq!(ts("-Infinity"), i64::MIN);
        assert_eq!(
            date_from_text(b"0001-01-01 BC").unwrap(),
            (-730_485i32).to_be_bytes()
        );
    }

    #[test]
    fn rejects_other_forms() {
        let e = |s: &str| timestamp_from_text(s.as_bytes()).unwrap_err().sqlstate;
        assert_eq!(e("01/02/2003"), "22007");
        assert_eq!(e("03-01-02"), "22007");
        assert_eq!(e("2003-02-30"), "22008");
        assert_eq!(e("2003-13-01"), "22008");
        assert_eq!(e("2003-01-01 25:00"), "22008");
        assert_eq!(e("2003-01-01 12:00 Europe/Berlin"), "22007");
        assert_eq!(e("2003-01-01 12:00 junk"), "22007");
        assert_eq!(e("now"), "0A000");
        assert_eq!(e("294277-01-01"), "22008");
        assert_eq!(e("2003-01-01 12:00+16"), "22009");
    }

    #[test]
    fn prints_every_date_style() {
        let t = ts("2003-01-31 12:34:56.789");
        let c = t.to_be_bytes();
        assert_eq!(
            show(ValueType::Timestamp, &c, "ISO, MDY", "UTC"),
            "2003-01-31 12:34:56.789"
        );
        assert_eq!(
            show(ValueType::Timestamp, &c, "SQL, MDY", "UTC"),
            "01/31/2003 12:34:56.789"
        );
        assert_eq!(
            show(ValueType::Timestamp, &c, "SQL, DMY", "UTC"),
            "31/01/2003 12:34:56.789"
        );
        assert_eq!(
            show(ValueType::Timestamp, &c, "Postgres, MDY", "UTC"),
            "Fri Jan 31 12:34:56.789 2003"
        );
        assert_eq!(
            show(ValueType::Timestamp, &c, "German, DMY", "UTC"),
            "31.01.2003 12:34:56.789"
        );
        assert_eq!(
            show(ValueType::Timestamptz, &c, "ISO, MDY", "UTC"),
            "2003-01-31 12:34:56.789+00"
        );
        assert_eq!(
            show(ValueType::Timestamptz, &c, "ISO, MDY", "<+0530>-05:30"),
            "2003-01-31 18:04:56.789+05:30"
        );
        assert_eq!(
            show(ValueType::Timestamptz, &c, "Postgres, DMY", "Etc/UTC"),
            "Fri 31 Jan 12:34:56.789 2003 UTC"
        );
        let d = date_from_text(b"0044-03-15 BC").unwrap();
        assert_eq!(
            show(ValueType::Date, &d, "ISO, MDY", "UTC"),
            "0044-03-15 BC"
        );
        assert_eq!(
            show(ValueType::Date, &d, "SQL, MDY", "UTC"),
            "03/15/0044 BC"
        );
        assert_eq!(
            show(ValueType::Date, &d, "Postgres, DMY", "UTC"),
            "15-03-0044 BC"
        );
    }

    #[test]
    fn named_zone_is_refused_only_when_needed() {
        let st = SessionSettings::new().with("TimeZone", "Europe/Berlin");
        assert!(timestamptz_from_text(b"2003-01-01 12:00+01", &st).is_ok());
        let e = timestamptz_from_text(b"2003-01-01 12:00", &st).unwrap_err();
        assert_eq!(e.sqlstate, "0A000");
        assert!(timestamp_output(ValueType::Timestamp, Format::Text, &[0; 8], &st).is_ok());
        assert!(timestamp_output(ValueType::Timestamptz, Format::Text, &[0; 8], &st).is_err());
    }
}
