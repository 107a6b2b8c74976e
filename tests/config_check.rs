//! `switchboard check-config` against golden files: every bad config in
//! `tests/fixtures/config/bad/` must fail with exactly the messages in its `.expected` file
//! (`UPDATE_GOLDEN=1` rewrites them), and every shipped config must pass.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

fn check(dir: &std::path::Path, file: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .current_dir(dir)
        .args(["check-config", file])
        .env_remove("SWITCHBOARD__ADMIN__LISTEN")
        .output()
        .expect("run check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn bad_configs_report_every_problem() {
    let dir = support::root().join("tests/fixtures/config/bad");
    let files = support::files_with_ext(&dir, "yaml");
    assert!(files.len() >= 7, "fixtures missing");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let (code, text) = check(&dir, &name);
        assert_eq!(code, Some(1), "{name} must be rejected:\n{text}");
        let golden = f.with_extension("expected");
        if update {
            std::fs::write(&golden, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if want != text {
            failures.push(format!("--- {name}\nexpected:\n{want}\ngot:\n{text}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_configs_are_valid() {
    let dir = support::root().join("config");
    for f in ["switchboard.yaml", "demo.yaml"] {
        let (code, text) = check(&dir, f);
        assert_eq!(code, Some(0), "{f}: {text}");
    }
}
