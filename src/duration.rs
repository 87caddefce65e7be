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
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("invalid duration `{text}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration `{text}`: expected a number and a unit, like 500ms, 10s or 2m"))?;
    // Only digits and dots reach here, so the value is finite (or +inf) and never negative.
    Ok(Duration::try_from_secs_f64(value * scale).unwrap_or(Duration::MAX))
}

/// Formats a duration the way [`parse_duration`] reads it: `90s`, `500ms`, `1.5s`.
pub(crate) fn format(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", format!("{:.3}", d.as_secs_f64()).trim_end_matches('0'))
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
    }
}
