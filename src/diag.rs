//! Diagnostics and value syntaxes shared by the config and the vendor profiles: the
//! problem list every validation fills (file, key path, value — all at once), typed
//! deserialisation that records every unknown key, durations and byte sizes.
//!
//! A leaf: it imports nothing of Switchboard's, so `config` and `normalize` can both use it
//! without importing each other for it.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path, e.g. `vendors[0].timeouts.connect`; empty for whole-file problems.
    pub path: String,
    /// What is wrong, including the offending value.
    pub message: String,
}

/// Collects problems with their key paths.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}

fn join(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty() || rest == ".") {
        (_, true) => base.to_string(),
        (true, false) => rest.to_string(),
        (false, false) if rest.starts_with('[') => format!("{base}{rest}"),
        (false, false) => format!("{base}.{rest}"),
    }
}

/// `endpoints.0.match` (serde_ignored's form) -> `endpoints[0].match` (ours).
fn index_style(path: &str) -> String {
    let mut out = String::new();
    for seg in path.split('.') {
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Deserialises one section, recording *every* unknown key and the first type error.
pub(crate) fn typed<T: DeserializeOwned>(v: &Value, path: &str, p: &mut Problems) -> Option<T> {
    let mut unknown: Vec<String> = Vec::new();
    let mut record = |ignored: serde_ignored::Path<'_>| unknown.push(ignored.to_string());
    let de = serde_ignored::Deserializer::new(v, &mut record);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    for u in unknown {
        p.push(join(path, &index_style(&u)), "unknown key");
    }
    match result {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.inner().to_string();
            p.push(join(path, &e.path().to_string()), inner);
            None
        }
    }
}

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
