//! Timestamps: PostgreSQL's microsecond epoch and ISO text to RFC 3339, without a date library.

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats microseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_unix_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z", sod / 3600, (sod / 60) % 60, sod % 60)
}

/// Formats a PostgreSQL timestamp (microseconds since 2000-01-01 UTC) as RFC 3339.
pub fn format_pg_micros(pg_micros: i64) -> String {
    format_unix_micros(pg_micros.saturating_add(PG_EPOCH_OFFSET_MICROS))
}

fn digits(s: &[u8]) -> Option<i64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Parses PostgreSQL's ISO `timestamptz` output (`2026-11-23 08:01:29.9381+00`, offsets like
/// `+05:30`) into microseconds since the Unix epoch. `None` for anything else (BC, infinity).
pub fn parse_iso_timestamptz(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let (date, rest) = text.split_once(' ')?;
    let mut date_parts = date.splitn(3, '-');
    let year = digits(date_parts.next()?.as_bytes())?;
    let month = digits(date_parts.next()?.as_bytes())? as u32;
    let day = digits(date_parts.next()?.as_bytes())? as u32;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || b.len() < date.len() + 9 {
        return None;
    }
    let time = rest.as_bytes();
    let hour = digits(time.get(0..2)?)?;
    let minute = digits(time.get(3..5)?)?;
    let second = digits(time.get(6..8)?)?;
    let mut i = 8;
    let mut micros = 0i64;
    if time.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while time.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let frac = &time[start..i];
        if frac.is_empty() || frac.len() > 6 {
            return None;
        }
        micros = digits(frac)? * 10i64.pow(6 - frac.len() as u32);
    }
    let sign = match time.get(i) {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return None,
    };
    let offset_text = std::str::from_utf8(&time[i + 1..]).ok()?;
    let mut offset_secs = 0i64;
    for (n, part) in offset_text.split(':').enumerate() {
        let unit = [3600, 60, 1].get(n)?;
        offset_secs += digits(part.as_bytes())? * unit;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - sign * offset_secs;
    Some(secs * 1_000_000 + micros)
}

/// Whether `text` only holds characters of an ISO date-time (digits, `-`, `:`, `.`, `+`, space).
fn iso_charset(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'.' | b'+' | b' '))
}

/// Rewrites PostgreSQL's ISO `timestamptz` text as RFC 3339 (`T` separator, `Z` for UTC,
/// `+hh:mm` offsets). Returns `None` when the text is not in that form (BC dates, infinity).
pub fn rfc3339_from_pg_timestamptz(text: &str, out: &mut Vec<u8>) -> bool {
    let Some(space) = text.find(' ') else {
        return false;
    };
    if space < 10 || !iso_charset(text) {
        return false;
    }
    let rest = &text[space + 1..];
    let Some(sign) = rest.find(['+', '-']) else {
        return false;
    };
    let (time, offset) = rest.split_at(sign);
    out.extend_from_slice(&text.as_bytes()[..space]);
    out.push(b'T');
    out.extend_from_slice(time.as_bytes());
    match offset {
        "+00" | "-00" | "+00:00" => out.push(b'Z'),
        _ if offset.len() == 3 => {
            out.extend_from_slice(offset.as_bytes());
            out.extend_from_slice(b":00");
        }
        _ => out.extend_from_slice(offset.as_bytes()),
    }
    true
}

/// Rewrites PostgreSQL's ISO `timestamp` text with a `T` separator; `None` for BC and infinity.
pub fn iso_from_pg_timestamp(text: &str, out: &mut Vec<u8>) -> bool {
    match text.find(' ') {
        Some(space) if space >= 10 && iso_charset(text) => {
            out.extend_from_slice(&text.as_bytes()[..space]);
            out.push(b'T');
            out.extend_from_slice(&text.as_bytes()[space + 1..]);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_unix_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_pg_micros(0), "2000-01-01T00:00:00.000000Z");
        assert_eq!(format_unix_micros(1_795_428_000_123_456), "2026-11-23T10:00:00.123456Z");
        assert_eq!(format_unix_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn parses_postgres_output() {
        assert_eq!(parse_iso_timestamptz("2026-11-23 10:00:00.123456+00"), Some(1_795_428_000_123_456));
        assert_eq!(parse_iso_timestamptz("2026-11-23 10:00:00.1+00"), Some(1_795_428_000_100_000));
        assert_eq!(parse_iso_timestamptz("2026-11-23 15:30:00+05:30"), Some(1_795_428_000_000_000));
        assert_eq!(parse_iso_timestamptz("2026-11-23 05:00:00-05"), Some(1_795_428_000_000_000));
        assert_eq!(parse_iso_timestamptz("infinity"), None);
        assert_eq!(parse_iso_timestamptz("0001-01-01 00:00:00+00 BC"), None);
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(micros in -62_135_596_800_000_000i64..253_402_300_799_999_999i64) {
            let text = format_unix_micros(micros);
            let pg = text.replace('T', " ").replace('Z', "+00");
            prop_assert_eq!(parse_iso_timestamptz(&pg), Some(micros));
        }
    }

    fn rfc(text: &str) -> Option<String> {
        let mut out = Vec::new();
        rfc3339_from_pg_timestamptz(text, &mut out).then(|| String::from_utf8(out).unwrap())
    }

    #[test]
    fn rewrites_timestamptz() {
        assert_eq!(rfc("2026-11-23 10:00:00.123456+00").as_deref(), Some("2026-11-23T10:00:00.123456Z"));
        assert_eq!(rfc("2026-11-23 10:00:00+05:30").as_deref(), Some("2026-11-23T10:00:00+05:30"));
        assert_eq!(rfc("2026-11-23 10:00:00-03").as_deref(), Some("2026-11-23T10:00:00-03:00"));
        assert_eq!(rfc("infinity"), None);
        assert_eq!(rfc("-infinity"), None);
        assert_eq!(rfc("0044-03-15 12:00:00+00 BC"), None);
    }

    #[test]
    fn rewrites_timestamp() {
        let mut out = Vec::new();
        assert!(iso_from_pg_timestamp("2026-11-23 10:00:00.5", &mut out));
        assert_eq!(out, b"2026-11-23T10:00:00.5");
        assert!(!iso_from_pg_timestamp("infinity", &mut Vec::new()));
        assert!(!iso_from_pg_timestamp("0044-03-15 12:00:00 BC", &mut Vec::new()));
    }
}
