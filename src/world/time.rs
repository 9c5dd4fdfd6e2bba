//! Wall-clock time as milliseconds since the Unix epoch, and RFC 3339 UTC text.
//!
//! The core takes `now` as a parameter instead of reading the clock, so tests can drive
//! time; only the event loop calls [`now_ms`].

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 → (year, month, day). Howard Hinnant's civil_from_days.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01. Howard Hinnant's days_from_civil.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-04-12T20:15:00.123Z`: RFC 3339, UTC, millisecond precision.
pub fn rfc3339(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let (h, mi, s) = (sod / 3600, sod / 60 % 60, sod % 60);
    if !(0..=9999).contains(&y) {
        return format!(
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
            ms % 1000
        );
    }
    // Every event is stamped: digits by hand, without `fmt`'s machinery.
    let mut out = String::with_capacity(24);
    let fields = [
        (y as u64, 4, '-'),
        (u64::from(mo), 2, '-'),
        (u64::from(d), 2, 'T'),
        (h as u64, 2, ':'),
        (mi as u64, 2, ':'),
        (s as u64, 2, '.'),
        (ms % 1000, 3, 'Z'),
    ];
    for (n, width, after) in fields {
        for p in (0..width).rev() {
            out.push(char::from(b'0' + (n / 10u64.pow(p) % 10) as u8));
        }
        out.push(after);
    }
    out
}

/// Parse an RFC 3339 timestamp into epoch milliseconds. Accepts the seed's offset-less
/// form (`2026-04-12T20:15:00`, read as UTC), a space instead of `T`, fractional seconds
/// of any length, and `Z` or a `±HH:MM` offset.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = b.get(r)?;
        if !t.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(t).ok()?.parse().ok()
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ms = 0u64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 3 {
                frac_ms = frac_ms * 10 + u64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..3 {
            frac_ms *= 10;
        }
    }
    let offset_s: i64 = match &b[i..] {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() - i == 6 && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)? as i64;
            let om = num(i + 4..i + 6)? as i64;
            let off = oh * 3600 + om * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(se) - offset_s;
    u64::try_from(secs).ok().map(|s| s * 1000 + frac_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2026-04-12T20:15:00Z, the seed's example.
        assert_eq!(rfc3339(1_776_024_900_000), "2026-04-12T20:15:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        // Past year 9999 the year has more digits, as `fmt` writes it.
        assert_eq!(rfc3339(253_402_300_800_001), "10000-01-01T00:00:00.001Z");
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn hand_written_digits_match_fmt() {
        let by_fmt = |ms: u64| {
            let secs = (ms / 1000) as i64;
            let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
            let sod = secs.rem_euclid(86_400);
            format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                sod / 3600,
                sod / 60 % 60,
                sod % 60,
                ms % 1000
            )
        };
        let mut ms = 7u64;
        while ms < 300_000_000_000_000 {
            assert_eq!(rfc3339(ms), by_fmt(ms));
            ms = ms * 3 + 12_345;
        }
    }

    #[test]
    fn parses_what_it_formats_and_the_seed_forms() {
        for ms in [0, 1_776_024_900_000, 951_782_400_123, 4_102_444_799_999] {
            assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        }
        assert_eq!(
            parse_rfc3339("2026-04-12T20:15:00"),
            Some(1_776_024_900_000)
        );
        assert_eq!(
            parse_rfc3339("2026-04-12 20:15:00Z"),
            Some(1_776_024_900_000)
        );
        assert_eq!(
            parse_rfc3339("2026-04-12T22:15:00+02:00"),
            Some(1_776_024_900_000)
        );
        assert_eq!(
            parse_rfc3339("2026-04-12T20:15:00.5Z"),
            Some(1_776_024_900_500)
        );
        assert_eq!(
            parse_rfc3339("2026-04-12T20:15:00.123456Z"),
            Some(1_776_024_900_123)
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-04-12T25:00:00Z",
            "2026-04-12T20:15:00.Z",
            "2026-04-12T20:15:00+2",
            "2026-04-12X20:15:00",
            "１２３４-04-12T20:15:00",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
