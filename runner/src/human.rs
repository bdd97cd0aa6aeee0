//! How the runner writes durations, sizes, times and digests for people, and reads
//! durations and sizes back.
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

/// Parses a size in bytes: `512MiB`, `2GiB`, `1500000`, `64KiB`; `K`, `M`, `G`, `T` and
/// `KB`... are the same binary units (as in Kubernetes' `Mi` and `Gi`, which it reads too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let error = || format!("`{text}` is not a size like 512MiB, 2GiB or 1500000 (bytes)");
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let number: u64 = text[..digits].parse().map_err(|_| error())?;
    let shift = match text[digits..].trim_start() {
        "" | "B" => 0,
        "K" | "KB" | "KiB" | "Ki" => 10,
        "M" | "MB" | "MiB" | "Mi" => 20,
        "G" | "GB" | "GiB" | "Gi" => 30,
        "T" | "TB" | "TiB" | "Ti" => 40,
        _ => return Err(error()),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A size in bytes, for people: `1.5 GiB`, `512 MiB`, `100 bytes`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = "bytes";
    for next in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if unit == "bytes" {
        format!("{bytes} bytes")
    } else {
        format!("{} {unit}", format!("{value:.1}").trim_end_matches(".0"))
    }
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
        assert_eq!(parse_size("1500000"), Ok(1_500_000));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("512Mi"), Ok(512 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("").is_err());
        assert!(parse_size("1.5GiB").is_err());
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert_eq!(format_size(100), "100 bytes");
        assert_eq!(format_size(1536 << 20), "1.5 GiB");
        assert_eq!(format_size(512 << 20), "512 MiB");
        assert_eq!(unix_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            unix_ms(u64::MAX),
            format!("{} ms after the Unix epoch", u64::MAX)
        );
    }
}
