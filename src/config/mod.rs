//! Configuration: the YAML file plus `SWITCHBOARD__…` environment overrides, loaded with the
//! `config` crate, checked as a whole and turned into the validated model the rest of the
//! program uses. Every problem is reported at once with file, key path and value.
//!
//! This module owns parsing and validation only; it opens no sockets and starts nothing.

mod model;
mod raw;

pub use crate::diag::{parse_duration, parse_size, Problem};
pub use model::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// Every problem found while loading one file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file that was loaded.
    pub file: PathBuf,
    /// All problems, in file order where known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {} problem{}",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.path.is_empty() {
                writeln!(f, "  {}: {}", self.file.display(), p.message)?;
            } else {
                writeln!(f, "  {}: {}: {}", self.file.display(), p.path, p.message)?;
            }
        }
        Ok(())
    }
}

/// Loads `file`, applies `SWITCHBOARD__` environment overrides, and validates everything.
pub fn load(file: &Path) -> Result<Config, ConfigError> {
    let err = |problems| ConfigError {
        file: file.to_path_buf(),
        problems,
    };
    if !file.is_file() {
        return Err(err(vec![Problem {
            path: String::new(),
            message: "file not found".into(),
        }]));
    }
    let built = ::config::Config::builder()
        .add_source(::config::File::from(file).format(::config::FileFormat::Yaml))
        .add_source(
            ::config::Environment::with_prefix("SWITCHBOARD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        )
        .build()
        .and_then(|c| c.try_deserialize::<serde_json::Value>());
    let value = match built {
        Ok(v) => v,
        Err(e) => {
            return Err(err(vec![Problem {
                path: String::new(),
                message: format!("cannot read YAML: {e}"),
            }]))
        }
    };
    let base_dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    model::validate(&value, file, &base_dir).map_err(|p| err(p.0))
}
