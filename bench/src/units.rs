//! fio's units: sizes with binary suffixes (`4k` = 4096, as fio's default `kb_base=1024`)
//! and times in seconds unless suffixed (`4`, `4s`, `500ms`, `2m`, `1h`).

use std::time::Duration;

/// Parses a size: a number with an optional `k`, `m`, `g`, `t` or `p` suffix (any case,
/// optionally followed by `i` and/or `b`), each a power of 1024 as in fio.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("'{text}' is not a size (examples: 4096, 4k, 1M, 2G)"));
    }
    let value: u64 = number.parse().map_err(|_| format!("'{text}' is too large"))?;
    let suffix = suffix.to_ascii_lowercase();
    let unit_letters = suffix.trim_end_matches('b').trim_end_matches('i');
    let shift = match unit_letters {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(format!("'{text}': unknown size suffix '{suffix}' (use k, m, g, t)")),
    };
    value.checked_mul(1 << shift).ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses a duration: seconds unless suffixed with `us`, `ms`, `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (number, suffix) = trimmed.split_at(digits_end);
    if number.is_empty() {
        return Err(format!("'{text}' is not a time (examples: 4, 4s, 500ms, 2m)"));
    }
    let value: u64 = number.parse().map_err(|_| format!("'{text}' is too large"))?;
    let duration = match suffix.to_ascii_lowercase().as_str() {
        "us" | "usec" => Duration::from_micros(value),
        "ms" | "msec" => Duration::from_millis(value),
        "" | "s" | "sec" => Duration::from_secs(value),
        "m" | "min" => Duration::from_secs(value.saturating_mul(60)),
        "h" => Duration::from_secs(value.saturating_mul(3600)),
        other => return Err(format!("'{text}': unknown time suffix '{other}'")),
    };
    Ok(duration)
}

/// Formats bytes the way fio does in its normal output: `814MiB`, `4096B`, `1024KiB`.
pub fn binary_size(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    scaled(bytes, 1024.0, &UNITS)
}

/// Formats bytes with decimal units, as fio's figures in parentheses: `854MB`.
pub fn decimal_size(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    scaled(bytes, 1000.0, &UNITS)
}

/// Formats a count as fio does for IOPS: `52.1k`, `812`.
pub fn count(value: f64) -> String {
    if value < 1000.0 {
        return format!("{value:.0}");
    }
    scaled(value, 1000.0, &["", "k", "M", "G"])
}

fn scaled(mut value: f64, base: f64, units: &[&str]) -> String {
    // fio keeps at most four integer digits and moves to the next unit beyond that.
    let mut unit = 0;
    while value >= 10_000.0 && unit + 1 < units.len() {
        value /= base;
        unit += 1;
    }
    let decimals = match value {
        _ if unit == 0 => 0,
        v if v < 10.0 => 2,
        v if v < 100.0 => 1,
        _ => 0,
    };
    format!("{value:.decimals$}{}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_fio() {
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("4k").unwrap(), 4096);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("4KiB").unwrap(), 4096);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("2g").unwrap(), 2 << 30);
        assert_eq!(parse_size("1tb").unwrap(), 1 << 40);
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(parse_size("").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("4x").unwrap_err().contains("suffix"));
        assert!(parse_size("-4k").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("16777216p").unwrap_err().contains("too large"));
    }

    #[test]
    fn durations_default_to_seconds() {
        assert_eq!(parse_duration("4").unwrap(), Duration::from_secs(4));
        assert_eq!(parse_duration("4s").unwrap(), Duration::from_secs(4));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("4d").is_err());
    }

    #[test]
    fn sizes_print_like_fio() {
        assert_eq!(binary_size(814.0 * 1048576.0), "814MiB");
        assert_eq!(binary_size(4096.0), "4096B");
        assert_eq!(decimal_size(854e6), "854MB");
        assert_eq!(count(52_100.0), "52.1k");
        assert_eq!(count(812.0), "812");
    }
}
