//! Humane units in project files: durations (`500ms`, `2s`, `1m30s`, `1h`)
//! and sizes (`64MiB`, `1GiB`, `512KiB`, `1048576`).

use std::time::Duration;

/// Why a duration or size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("`{0}` is not a duration")]
    BadDuration(String),
    #[error("`{0}` has no unit")]
    DurationWithoutUnit(String),
    #[error("`{0}` is not a size")]
    BadSize(String),
    #[error("`{0}` is too large")]
    Overflow(String),
}

/// The forms [`parse_duration`] accepts, for help messages.
pub const DURATION_FORMS: &str =
    "a number with a unit: `ms`, `s`, `m`, `h` or `d`, e.g. `500ms`, `2s`, `1m30s`, `1h`, `30d`";

/// The forms [`parse_size`] accepts, for help messages.
pub const SIZE_FORMS: &str = "a number of bytes (`1048576`) or a number with a unit: `KiB`, `MiB`, `GiB` (powers of 1024) or `KB`, `MB`, `GB` (powers of 1000), e.g. `64MiB`";

/// Parse a duration: one or more `<digits><unit>` parts, units `ms`, `s`,
/// `m`, `h`, `d`, largest first (`1h30m`, `1m30s`, `1s500ms`, `30d`).
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let bad = || UnitError::BadDuration(text.to_string());
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(bad());
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UnitError::DurationWithoutUnit(text.to_string()));
    }
    let mut rest = trimmed;
    let mut total_ms: u64 = 0;
    // Each unit may appear once, in decreasing order of size.
    let mut last_unit_ms = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| UnitError::Overflow(text.to_string()))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        if unit_ms >= last_unit_ms {
            return Err(bad());
        }
        last_unit_ms = unit_ms;
        rest = &rest[unit_len..];
        let part_ms = number
            .checked_mul(unit_ms)
            .ok_or_else(|| UnitError::Overflow(text.to_string()))?;
        total_ms = total_ms
            .checked_add(part_ms)
            .ok_or_else(|| UnitError::Overflow(text.to_string()))?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Parse a size in bytes: a plain number of bytes, or a number with a unit.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let bad = || UnitError::BadSize(text.to_string());
    let trimmed = text.trim();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let number: u64 = trimmed[..digits]
        .parse()
        .map_err(|_| UnitError::Overflow(text.to_string()))?;
    let unit_bytes: u64 = match trimmed[digits..].trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    number
        .checked_mul(unit_bytes)
        .ok_or_else(|| UnitError::Overflow(text.to_string()))
}

/// A duration the way a user writes it (`1m30s`), for messages.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0ms".to_string();
    }
    let mut out = String::new();
    for (unit, unit_ms) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= unit_ms {
            out.push_str(&format!("{}{unit}", ms / unit_ms));
            ms %= unit_ms;
        }
    }
    out
}

/// A size the way a user writes it (`64MiB`), for messages.
pub fn format_size(size_bytes: u64) -> String {
    for (unit, unit_bytes) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if size_bytes >= unit_bytes && size_bytes.is_multiple_of(unit_bytes) {
            return format!("{}{unit}", size_bytes / unit_bytes);
        }
    }
    size_bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(
            parse_duration("1h0m5s10ms"),
            Ok(Duration::from_millis(3_605_010))
        );
        assert_eq!(
            parse_duration("30"),
            Err(UnitError::DurationWithoutUnit("30".into()))
        );
        for bad in ["", "s", "2x", "1.5s", "1s1m", "1s1s", "-1s", "2 s", "1m30"] {
            assert!(parse_duration(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(
            parse_duration("99999999999999999999h"),
            Err(UnitError::Overflow("99999999999999999999h".into()))
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        for bad in ["", "MiB", "64mib", "64 XB", "-1", "1.5GiB"] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
        assert!(matches!(
            parse_size("99999999999TiB"),
            Err(UnitError::Overflow(_))
        ));
    }

    proptest! {
        #[test]
        fn durations_round_trip(ms in 0u64..10_000_000_000) {
            let d = Duration::from_millis(ms);
            let text = format_duration(d);
            if ms > 0 {
                prop_assert_eq!(parse_duration(&text), Ok(d));
            }
        }

        #[test]
        fn sizes_round_trip(bytes in 0u64..(1u64 << 50)) {
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }
}
