//! Human value syntaxes shared by the config and the profiles: durations and byte sizes.

use std::time::Duration;

/// Parses `250ms`, `30s`, `1m`, `1h` (and combinations `humantime` accepts).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. 250ms, 30s, 1m, 1h)"))
}

/// Parses a byte size: a plain integer, or a number with `B`, `KiB`, `MiB` (or `KB`, `MB`,
/// taken as binary units too, since nobody means 1000 here).
pub fn parse_size(v: &serde_json::Value) -> Result<u64, String> {
    let bad = || format!("invalid size {v} (expected bytes, or e.g. 64KiB, 1MiB)");
    match v {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(bad),
        serde_json::Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: u64 = num.parse().map_err(|_| bad())?;
            let mult = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "kib" | "kb" | "k" => 1024,
                "mib" | "mb" | "m" => 1024 * 1024,
                _ => return Err(bad()),
            };
            n.checked_mul(mult).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("2 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&json!(10)), Ok(10));
        assert_eq!(parse_size(&json!("64KiB")), Ok(65536));
        assert_eq!(parse_size(&json!("1MiB")), Ok(1 << 20));
        assert!(parse_size(&json!("1GiB")).is_err());
        assert!(parse_size(&json!(-1)).is_err());
        assert!(parse_size(&json!("lots")).is_err());
    }
}
