//! Durations as operators write them: `500ms`, `10s`, `2m`, `1h`; a bare number is seconds.

use std::time::Duration;

/// Parses `500ms`, `10s`, `1.5s`, `2m`, `1h`, or a bare number of seconds.
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
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("invalid duration `{text}`: out of range"))
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
