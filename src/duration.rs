//! Durations as operators write them: `500ms`, `10s`, `2m`, `1h`; a bare number is seconds.
//!
//! A duration too long to represent saturates at the longest one (which every deadline in
//! conjure treats as "never"), rather than failing or, worse, overflowing an instant later.

use std::time::Duration;

/// Parses `500ms`, `10s`, `1.5s`, `2m`, `1h`, `250us`, or a bare number of seconds. Values too
/// long to represent saturate at [`Duration::MAX`].
///
/// ```
/// use std::time::Duration;
/// assert_eq!(conjure::parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(conjure::parse_duration("2m"), Ok(Duration::from_secs(120)));
/// assert_eq!(conjure::parse_duration("3"), Ok(Duration::from_secs(3)));
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    // Nanoseconds per unit. Integer arithmetic throughout: exact for every unit (`1.1ms` is
    // 1,100,000 ns, where a float is not), and no float parser in the shipped binary.
    let scale: u128 = match unit {
        "" | "s" => 1_000_000_000,
        "ms" => 1_000_000,
        "us" => 1_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(format!("invalid duration `{text}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    let invalid = || format!("invalid duration `{text}`: expected a number and a unit, like 500ms, 10s or 2m");
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    // Saturating: a number too long for u128 nanoseconds is longer than Duration::MAX anyway.
    let mut nanos: u128 = 0;
    for d in whole.bytes() {
        nanos = nanos.saturating_mul(10).saturating_add(u128::from(d - b'0'));
    }
    nanos = nanos.saturating_mul(scale);
    // Fraction digits beyond the 20th are below a nanosecond for every unit: dropped.
    let mut part: u128 = 0;
    let mut denominator: u128 = 1;
    for d in fraction.bytes().take(20) {
        part = part * 10 + u128::from(d - b'0');
        denominator *= 10;
    }
    nanos = nanos.saturating_add(part * scale / denominator);
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    Ok(if secs == u64::MAX { Duration::MAX } else { Duration::new(secs, (nanos % 1_000_000_000) as u32) })
}

/// Formats a duration the way [`parse_duration`] reads it: `90s`, `500ms`, `1.5s`.
pub(crate) fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        // Milliseconds, without trailing zeros: 1.5s, 2.25s, 1.001s.
        let millis = format!("{:03}", d.subsec_millis());
        match millis.trim_end_matches('0') {
            "" => format!("{}s", d.as_secs()),
            m => format!("{}.{m}s", d.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_scales_as_it_says() {
        let cases = [
            ("7", Duration::from_secs(7)),
            ("7s", Duration::from_secs(7)),
            ("7ms", Duration::from_millis(7)),
            ("7us", Duration::from_micros(7)),
            ("7m", Duration::from_secs(7 * 60)),
            ("7min", Duration::from_secs(7 * 60)),
            ("7h", Duration::from_secs(7 * 3600)),
            ("0.25s", Duration::from_millis(250)),
            (" 3s ", Duration::from_secs(3)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn huge_durations_saturate() {
        let years = Duration::from_secs(3600 * 24 * 365 * 1000);
        assert!(parse_duration("2562047788015216h").is_ok_and(|d| d > years));
        assert_eq!(parse_duration("99999999999999999999999h"), Ok(Duration::MAX));
        assert_eq!(parse_duration(&"9".repeat(400)), Ok(Duration::MAX));
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("inf").is_err());
        assert!(parse_duration("NaN").is_err());
    }

    #[test]
    fn units_and_errors() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10x").unwrap_err().contains("unknown unit `x`"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("s").is_err());
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_millis(2250)), "2.25s");
        assert_eq!(format(Duration::from_millis(1001)), "1.001s");
        assert_eq!(format(Duration::from_micros(1_000_100)), "1s");
        assert_eq!(parse_duration("1.1ms"), Ok(Duration::from_micros(1100)));
        assert_eq!(parse_duration(".5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5."), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("0.000000001s"), Ok(Duration::from_nanos(1)));
        assert!(parse_duration(".").is_err());
        assert!(parse_duration("..").is_err());
    }
}
