//! How the runner writes durations, times and digests for people, and reads durations back.
//! A leaf: it uses nothing else in the crate, so that every module may use it.

use std::time::{Duration, UNIX_EPOCH};

/// Parses `500ms`, `25s`, `2m`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("`{text}` is not a duration like 500ms, 25s or 2m ({error})"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// A duration cut to the millisecond, for people.
pub fn whole_ms(duration: Duration) -> Duration {
    Duration::from_millis(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX))
}

/// A time stored as milliseconds since the Unix epoch, in RFC 3339 (UTC); one past the
/// year 9999, which RFC 3339 cannot write, as it is stored.
pub fn unix_ms(ms: u64) -> String {
    if ms < 253_402_300_800_000 {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    } else {
        format!("{ms} ms after the Unix epoch")
    }
}

/// Lower-case hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("25").is_err());
        assert!(parse_duration("soon").is_err());
        assert_eq!(format_duration(Duration::from_secs(25)), "25s");
        assert_eq!(
            whole_ms(Duration::from_micros(1_500_700)),
            Duration::from_millis(1500)
        );
        assert_eq!(hex(&[0, 0xab, 0x1f]), "00ab1f");
        assert_eq!(unix_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            unix_ms(u64::MAX),
            format!("{} ms after the Unix epoch", u64::MAX)
        );
    }
}
