//! UTC timestamps for reports, without a date crate for one line.

/// `Sun Nov 22 13:05:00 2026 UTC` for seconds since the Unix epoch.
pub fn utc_string(epoch_seconds: u64) -> String {
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = (epoch_seconds / 86_400) as i64;
    let seconds_of_day = epoch_seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{} {} {day:2} {:02}:{:02}:{:02} {year} UTC",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        seconds_of_day / 3600,
        seconds_of_day / 60 % 60,
        seconds_of_day % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::utc_string;

    #[test]
    fn known_dates() {
        assert_eq!(utc_string(0), "Thu Jan  1 00:00:00 1970 UTC");
        assert_eq!(utc_string(1_795_352_700), "Sun Nov 22 13:05:00 2026 UTC");
        assert_eq!(utc_string(951_782_400), "Tue Feb 29 00:00:00 2000 UTC");
    }
}
