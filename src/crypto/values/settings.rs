//! Session settings that change how PostgreSQL prints values, as reported
//! by the server in ParameterStatus.
//!
//! `DateStyle` and `TimeZone` affect the types pgveil encrypts.
//! `IntervalStyle` and `extra_float_digits` are accepted and ignored: no
//! encryptable type is an interval or a float (`numeric` is printed exactly
//! whatever `extra_float_digits` says).

use super::super::error::{ValueError, sqlstate};

/// `DateStyle`'s output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStyle {
    /// `ISO`: `2003-01-31 12:00:00+01`.
    Iso,
    /// `SQL`: `01/31/2003 12:00:00 CET`.
    Sql,
    /// `Postgres`: `Fri Jan 31 12:00:00 2003 CET`.
    Postgres,
    /// `German`: `31.01.2003 12:00:00 CET`.
    German,
}

/// `DateStyle`'s field order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateOrder {
    /// Month, day, year (PostgreSQL's default).
    Mdy,
    /// Day, month, year.
    Dmy,
    /// Year, month, day.
    Ymd,
}

/// A parsed `DateStyle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateStyle {
    /// Output format.
    pub style: OutputStyle,
    /// Field order.
    pub order: DateOrder,
}

impl DateStyle {
    /// PostgreSQL's default, `ISO, MDY`.
    pub const ISO_MDY: DateStyle = DateStyle {
        style: OutputStyle::Iso,
        order: DateOrder::Mdy,
    };

    /// Parses a `DateStyle` as the server reports it (`ISO, MDY`).
    pub fn parse(value: &str) -> Option<DateStyle> {
        let mut style = None;
        let mut order = None;
        for part in value.split(',').map(str::trim) {
            match part.to_ascii_lowercase().as_str() {
                "iso" => style = Some(OutputStyle::Iso),
                "sql" => style = Some(OutputStyle::Sql),
                "postgres" => style = Some(OutputStyle::Postgres),
                "german" => style = Some(OutputStyle::German),
                "mdy" | "us" | "noneuropean" => order = Some(DateOrder::Mdy),
                "dmy" | "euro" | "european" => order = Some(DateOrder::Dmy),
                "ymd" => order = Some(DateOrder::Ymd),
                _ => return None,
            }
        }
        Some(DateStyle {
            style: style?,
            order: order.unwrap_or(DateOrder::Mdy),
        })
    }
}

/// A session `TimeZone` pgveil can convert to and from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeZone {
    /// A zone with one constant offset: `UTC`, `Etc/GMT+5`, `<+05>-05`.
    Fixed {
        /// Seconds east of UTC.
        utc_offset: i32,
        /// Abbreviation PostgreSQL prints in non-ISO styles.
        abbrev: String,
    },
    /// A zone with rules (`Europe/Berlin`): not supported yet; the name
    /// is kept for the error message.
    Unsupported(String),
}

impl TimeZone {
    /// UTC.
    pub fn utc() -> TimeZone {
        TimeZone::Fixed {
            utc_offset: 0,
            abbrev: "UTC".into(),
        }
    }

    /// Parses a `TimeZone` as the server reports it.
    pub fn parse(value: &str) -> TimeZone {
        parse_fixed(value.trim()).unwrap_or_else(|| TimeZone::Unsupported(value.to_string()))
    }

    /// Seconds east of UTC, or the error to report when the zone has rules.
    pub fn offset(&self) -> Result<i32, ValueError> {
        match self {
            TimeZone::Fixed { utc_offset, .. } => Ok(*utc_offset),
            TimeZone::Unsupported(name) => Err(unsupported_zone(name)),
        }
    }
}

fn unsupported_zone(name: &str) -> ValueError {
    ValueError::new(
        sqlstate::FEATURE_NOT_SUPPORTED,
        format!(
            "session TimeZone `{name}` is not supported for encrypted timestamptz values; \
             use UTC or a fixed offset (SET TIME ZONE 'UTC'), or send values with an explicit offset"
        ),
    )
}

fn parse_fixed(v: &str) -> Option<TimeZone> {
    let lower = v.to_ascii_lowercase();
    let fixed = |off: i32, abbrev: &str| TimeZone::Fixed {
        utc_offset: off,
        abbrev: abbrev.to_string(),
    };
    let bare = lower.strip_prefix("etc/").unwrap_or(&lower);
    match bare {
        "utc" | "uct" | "universal" | "zulu" => return Some(fixed(0, "UTC")),
        "gmt" | "gmt0" | "gmt+0" | "gmt-0" | "greenwich" => return Some(fixed(0, "GMT")),
        _ => {}
    }
    // Etc/GMT+5 is five hours WEST of Greenwich (POSIX sign convention).
    if let Some(rest) = lower.strip_prefix("etc/gmt") {
        let (sign, digits) = split_sign(rest)?;
        let h: i32 = digits.parse().ok()?;
        if digits.is_empty() || digits.len() > 2 || h > 14 {
            return None;
        }
        let east = -sign * h * 3600;
        return Some(fixed(east, &numeric_abbrev(east)));
    }
    // POSIX: <ABBR>offset or ALPHA offset, offset west of Greenwich, no DST part.
    let (abbrev, rest) = if let Some(r) = v.strip_prefix('<') {
        let end = r.find('>')?;
        (r.get(..end)?.to_string(), r.get(end + 1..)?)
    } else {
        let n = v.bytes().take_while(u8::is_ascii_alphabetic).count();
        if n < 3 {
            return None;
        }
        (v.get(..n)?.to_string(), v.get(n..)?)
    };
    let west = parse_posix_offset(rest)?;
    Some(fixed(-west, &abbrev))
}

fn split_sign(s: &str) -> Option<(i32, &str)> {
    match s.as_bytes().first() {
        Some(b'+') => Some((1, s.get(1..)?)),
        Some(b'-') => Some((-1, s.get(1..)?)),
        Some(b'0'..=b'9') => Some((1, s)),
        _ => None,
    }
}

/// `[+-]hh[:mm[:ss]]` in seconds; nothing may follow (no DST rules).
fn parse_posix_offset(s: &str) -> Option<i32> {
    let (sign, rest) = split_sign(s)?;
    let mut total = 0i32;
    let mut parts = rest.split(':');
    for (i, limit) in [(0, 167), (1, 59), (2, 59)] {
        let Some(p) = parts.next() else {
            if i == 0 {
                return None;
            }
            break;
        };
        if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let n: i32 = p.parse().ok()?;
        if n > limit {
            return None;
        }
        total += n * [3600, 60, 1][i];
    }
    if parts.next().is_some() {
        return None;
    }
    Some(sign * total)
}

/// `+05`, `-0330` style abbreviation of tzdata's numeric zones.
fn numeric_abbrev(east: i32) -> String {
    let sign = if east < 0 { '-' } else { '+' };
    let a = east.unsigned_abs();
    let (h, m) = (a / 3600, (a % 3600) / 60);
    if m == 0 {
        format!("{sign}{h:02}")
    } else {
        format!("{sign}{h:02}{m:02}")
    }
}

/// The settings a session's values are printed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSettings {
    date_style: Result<DateStyle, String>,
    time_zone: TimeZone,
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            date_style: Ok(DateStyle::ISO_MDY),
            time_zone: TimeZone::utc(),
        }
    }
}

impl SessionSettings {
    /// `ISO, MDY` and `UTC`.
    pub fn new() -> SessionSettings {
        SessionSettings::default()
    }

    /// Records a ParameterStatus. Unknown names are ignored; values that
    /// cannot be honoured are kept and reported only when a value needs them.
    pub fn set(&mut self, name: &str, value: &str) {
        if name.eq_ignore_ascii_case("DateStyle") {
            self.date_style = DateStyle::parse(value).ok_or_else(|| value.to_string());
        } else if name.eq_ignore_ascii_case("TimeZone") {
            self.time_zone = TimeZone::parse(value);
        }
    }

    /// Builder form of [`SessionSettings::set`].
    pub fn with(mut self, name: &str, value: &str) -> SessionSettings {
        self.set(name, value);
        self
    }

    /// The `DateStyle`, or the error to report if it was not understood.
    pub fn date_style(&self) -> Result<DateStyle, ValueError> {
        self.date_style.clone().map_err(|raw| {
            ValueError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!("session DateStyle `{raw}` is not supported for encrypted columns"),
            )
        })
    }

    /// The `TimeZone`.
    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn parses_date_styles() {
        assert_eq!(DateStyle::parse("ISO, MDY"), Some(DateStyle::ISO_MDY));
        assert_eq!(
            DateStyle::parse("SQL, DMY"),
            Some(DateStyle {
                style: OutputStyle::Sql,
                order: DateOrder::Dmy
            })
        );
        assert_eq!(DateStyle::parse("Nonsense"), None);
    }

    #[test]
    fn parses_fixed_zones() {
        assert_eq!(TimeZone::parse("Etc/UTC").offset().unwrap(), 0);
        assert_eq!(TimeZone::parse("Etc/GMT+5").offset().unwrap(), -5 * 3600);
        assert_eq!(TimeZone::parse("<+05>-05").offset().unwrap(), 5 * 3600);
        assert_eq!(
            TimeZone::parse("<-0330>+03:30").offset().unwrap(),
            -(3 * 3600 + 1800)
        );
        assert_eq!(TimeZone::parse("EST5").offset().unwrap(), -5 * 3600);
        assert!(TimeZone::parse("Europe/Berlin").offset().is_err());
        assert!(TimeZone::parse("EST5EDT").offset().is_err());
    }
}
