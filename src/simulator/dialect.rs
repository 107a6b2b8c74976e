//! A vendor's error dialect for the simulator: the documented examples kept in the vendor's
//! profile (`examples:` in `config/profiles/<vendor>.yaml`), exactly as the vendor's own
//! documentation shows them. The simulator reads only that section.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

/// One documented vendor response.
#[derive(Debug, Clone, Deserialize)]
pub struct Example {
    /// Name used by scenarios (`vendor_error: NAME`), usually the vendor's code.
    pub name: String,
    /// HTTP status.
    pub status: u16,
    /// Response headers (`{now+N}` allowed in values).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Raw body as the vendor sends it.
    #[serde(default)]
    pub body: String,
}

/// All examples of one vendor, by name.
#[derive(Debug, Clone, Default)]
pub struct Dialect {
    /// Vendor name.
    pub vendor: String,
    /// Examples by name.
    pub examples: BTreeMap<String, Example>,
}

impl Dialect {
    /// Loads `<dir>/<vendor>.yaml`'s examples; `generic` (or a missing section) has none.
    pub fn load(dir: &Path, vendor: &str) -> Result<Self, String> {
        if vendor == "generic" {
            return Ok(Dialect {
                vendor: vendor.into(),
                examples: BTreeMap::new(),
            });
        }
        let file = dir.join(format!("{vendor}.yaml"));
        if !file.is_file() {
            return Err(format!(
                "no profile {vendor:?} (looked for {})",
                file.display()
            ));
        }
        let v: Value = ::config::Config::builder()
            .add_source(::config::File::from(file.as_path()).format(::config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| format!("{}: {e}", file.display()))?;
        let list: Vec<Example> = match v.get("examples") {
            None | Some(Value::Null) => Vec::new(),
            Some(ex) => serde_path_to_error::deserialize(ex)
                .map_err(|e| format!("{}: examples{}: {}", file.display(), e.path(), e.inner()))?,
        };
        Ok(Dialect {
            vendor: vendor.into(),
            examples: list.into_iter().map(|e| (e.name.clone(), e)).collect(),
        })
    }
}

/// Replaces `{now+N}` / `{now}` with epoch seconds, so reset headers stay in the future.
pub fn expand(value: &str) -> String {
    let Some(start) = value.find("{now") else {
        return value.to_string();
    };
    let Some(len) = value[start..].find('}') else {
        return value.to_string();
    };
    let inner = &value[start + 4..start + len];
    let offset: i64 = inner.trim_start_matches('+').parse().unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format!(
        "{}{}{}",
        &value[..start],
        now + offset,
        &value[start + len + 1..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_epoch_templates() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let v: i64 = expand("{now+60}").parse().unwrap_or(0);
        assert!((now + 59..=now + 61).contains(&v));
        assert_eq!(expand("60"), "60");
    }
}
