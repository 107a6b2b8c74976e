//! Command-line helpers that are not servers: `normalize`.

use std::io::Read;
use std::path::Path;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::normalize::{self, Profile, VendorResponse, MAX_ERROR_BODY};

/// Parses `Name: value` header arguments.
pub fn parse_headers(args: &[String]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for a in args {
        let (k, v) = a
            .split_once(':')
            .ok_or_else(|| format!("invalid --header {a:?} (expected 'Name: value')"))?;
        let name = HeaderName::from_bytes(k.trim().as_bytes())
            .map_err(|_| format!("invalid header name {k:?}"))?;
        let value =
            HeaderValue::from_str(v.trim()).map_err(|_| format!("invalid header value {v:?}"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// `switchboard normalize`: the response an app would get for this vendor response.
pub fn normalize(
    vendor: &str,
    status: u16,
    header_args: &[String],
    path: &str,
    profiles: &Path,
    file: Option<&Path>,
) -> Result<String, String> {
    if !(100..=599).contains(&status) {
        return Err(format!("invalid --status {status}"));
    }
    let profile = Profile::load(profiles, vendor).map_err(|problems| {
        let lines: Vec<String> = problems
            .into_iter()
            .map(|(p, m)| format!("  {p}: {m}"))
            .collect();
        format!(
            "profile {vendor:?} in {}:\n{}",
            profiles.display(),
            lines.join("\n")
        )
    })?;
    let headers = parse_headers(header_args)?;
    let mut body = Vec::new();
    match file {
        None => {}
        Some(p) if p == Path::new("-") => {
            std::io::stdin()
                .take(MAX_ERROR_BODY as u64 + 1)
                .read_to_end(&mut body)
                .map_err(|e| format!("stdin: {e}"))?;
        }
        Some(p) => {
            std::fs::File::open(p)
                .and_then(|f| f.take(MAX_ERROR_BODY as u64 + 1).read_to_end(&mut body))
                .map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    let truncated = body.len() > MAX_ERROR_BODY;
    body.truncate(MAX_ERROR_BODY);
    let resp = VendorResponse {
        status,
        headers: &headers,
        body: &body,
        truncated,
        path,
    };
    let now = SystemTime::now();
    let normalized = if (200..300).contains(&status) {
        match normalize::success_error(&profile, vendor, "sb-normalize", &resp, now) {
            Some(n) => n,
            None => {
                return Ok(format!(
                "HTTP {status}: not an error for profile {vendor:?}; passed through untouched\n"
            ))
            }
        }
    } else {
        normalize::normalize(&profile, vendor, "sb-normalize", &resp, now)
    };
    let env = &normalized.envelope;
    let status_line = http::StatusCode::from_u16(env.status())
        .map(|s| {
            format!(
                "HTTP/1.1 {} {}",
                s.as_u16(),
                s.canonical_reason().unwrap_or("")
            )
        })
        .unwrap_or_else(|_| format!("HTTP/1.1 {}", env.status()));
    let mut out = format!(
        "{}\ncontent-type: application/json\n",
        status_line.trim_end()
    );
    for (k, v) in env.headers() {
        out.push_str(&format!("{k}: {v}\n"));
    }
    let json = serde_json::to_string_pretty(env).map_err(|e| e.to_string())?;
    out.push('\n');
    out.push_str(&json);
    out.push('\n');
    Ok(out)
}
